"""What an export starts from: a trained model with its class names, input size and thresholds.

:func:`load_source` accepts a run directory (``best.keras`` + ``config.yaml`` + ``thresholds.json``
if present) or a ``.keras`` file (a run's ``config.yaml`` beside it is used when there is one);
:meth:`ExportSource.from_model` wraps a model already in memory. :func:`sample_images` finds the real
images every export is checked (and int8 TFLite calibrated) on: the given files, or the run's own
training split.

Example:
    >>> from can_tf.export.source import load_source, sample_images
    >>> source = load_source("runs/small-1a2b3c4d")  # doctest: +SKIP
    >>> source.class_names[:2], source.image_size  # doctest: +SKIP
    (['Atelectasis', 'Cardiomegaly'], 64)
    >>> batch = sample_images(source, limit=4)  # doctest: +SKIP
    >>> batch.images.shape  # doctest: +SKIP
    (4, 64, 64, 1)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from can_tf.export.versioning import ExportError
from can_tf.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from can_tf.runtime import load_keras_model

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass
class ExportSource:
    """A model to export and what travels with it.

    Attributes:
        model: the Keras model as trained (dict of logits with a ``"fused"`` entry) or an inference
            model (one probabilities output from a sigmoid layer).
        class_names: output order of the model.
        image_size: the square input size ``S`` of the model (it takes ``(B, S, S, channels)``).
        thresholds: per-class decision thresholds in ``class_names`` order, or None.
        thresholds_path: the ``thresholds.json`` they came from (see :meth:`threshold_set`).
        config_path: the run's ``config.yaml``, copied into SavedModel exports when known.
        run_dir: the run directory, when the model came from one (its split gives sample images).
        provenance: where the model comes from (data, splits, preset, epoch, versions), or None.
        aspect: how non-square images are made square (the run's ``data.aspect``).
        max_pixels: the largest image accepted (the run's ``data.max_pixels``).
        temperatures: the run's calibration (:class:`~can_tf.evaluation.calibration.Temperatures`,
            fitted by ``can-tf evaluate``), or None. Baked into every export: its logits are the
            fused logits divided by them, its probabilities their sigmoid (what ``predict`` gives).
    """

    model: object
    class_names: list
    image_size: int
    thresholds: Optional[list] = None
    thresholds_path: Optional[Path] = None
    config_path: Optional[Path] = None
    run_dir: Optional[Path] = None
    model_path: Optional[Path] = None
    provenance: Optional[dict] = None  # the run's record (can_tf.provenance), carried into every export
    aspect: str = "stretch"
    max_pixels: int = DEFAULT_MAX_PIXELS
    temperatures: Optional[object] = None

    def threshold_set(self):
        """The thresholds as a :class:`~can_tf.evaluation.thresholds.Thresholds` (what every export
        writes as its ``thresholds.json``), or None. Values given in memory count as ``fixed``."""
        if self.thresholds is None:
            return None
        if getattr(self, "_threshold_set", None) is None:
            from can_tf.evaluation.thresholds import Thresholds

            self._threshold_set = Thresholds(tuple(self.class_names), "fixed", list(self.thresholds))
        return self._threshold_set

    @classmethod
    def from_model(cls, model, class_names: Optional[Sequence[str]] = None, thresholds=None) -> "ExportSource":
        """Wraps a model in memory; the input size is read from the model's input shape."""
        from can_tf.labels import CLASS_NAMES

        image_size = model.inputs[0].shape[1]
        if not image_size or model.inputs[0].shape[2] != image_size:
            raise ExportError(f"the model's input must be square with a fixed size, got {model.inputs[0].shape}")
        return cls(model=model, class_names=list(class_names or CLASS_NAMES), image_size=int(image_size),
                   thresholds=None if thresholds is None else [float(t) for t in thresholds])

    @property
    def input_channels(self) -> int:
        return int(self.model.inputs[0].shape[-1])

    @property
    def num_weights(self) -> int:
        """Scalars in the weights the exported graph needs (what a correct export must hold once)."""
        return int(sum(np.prod(v.shape) for v in self.logits_model().weights))

    def logits_model(self):
        """A single-output Keras view: input image -> fused logits ``(B, C)`` (float32), divided
        by :attr:`temperatures` when the run is calibrated.

        It shares the trained layers (and variables); only the layers the fused output needs are in
        it, so the branch heads used only by the training loss are not exported.
        """
        key = self._temperature_values()
        if getattr(self, "_logits_model", None) is None or self._logits_key != key:
            self._logits_model, self._logits_key = _logits_view(self.model, key), key
            width = self._logits_model.outputs[0].shape[-1]
            if width != len(self.class_names):
                raise ExportError(
                    f"the model has {width} outputs but {len(self.class_names)} class names "
                    f"({', '.join(self.class_names)})"
                )
        return self._logits_model

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """The Keras model's probabilities for float32 ``(N, S, S, channels)`` images in [0, 255].

        This is the reference every export is compared with: ``can_tf.models.inference_model``
        when the model is a training model, the model itself when it already is one.
        """
        import keras
        import tensorflow as tf

        from can_tf.images import check_pixels

        images = check_pixels(images)
        key = self._temperature_values()
        if getattr(self, "_reference", None) is None or self._reference_key != key:
            from can_tf.models import inference_model

            self._reference, self._reference_key = inference_model(self.model, key), key
        reference = self._reference
        # Full float32 maths: on a GPU, TensorFloat-32 alone would move probabilities by ~1e-3.
        tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        try:
            outputs = [keras.ops.convert_to_numpy(reference(images[i:i + batch_size], training=False))
                       for i in range(0, len(images), batch_size)]
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(tf32)
        return np.concatenate(outputs).astype(np.float32)


    def _temperature_values(self) -> Optional[tuple]:
        if self.temperatures is None:
            return None
        if list(self.temperatures.class_names) != list(self.class_names):
            raise ExportError(f"the calibration is for classes {', '.join(self.temperatures.class_names)}, "
                              f"not the model's {', '.join(self.class_names)}; run `can-tf evaluate` again")
        return tuple(float(t) for t in self.temperatures.values)


def _logits_view(model, temperatures: Optional[tuple] = None):
    import keras

    output = model.output
    if isinstance(output, dict):
        if "fused" not in output:
            raise ExportError(f"the model's outputs {sorted(output)} have no 'fused' entry")
        logits = output["fused"]
    else:
        # An inference model: its probabilities come from a sigmoid; export the tensor before it.
        layer = output._keras_history.operation if hasattr(output, "_keras_history") else None
        activation = getattr(layer, "activation", None)
        if layer is None or getattr(activation, "__name__", "") != "sigmoid":
            raise ExportError(
                "cannot find the logits of this model: expected a dict output with 'fused' logits "
                "(a can-tf training model) or a final sigmoid layer (can_tf.models.inference_model)"
            )
        if isinstance(layer, keras.layers.Activation):
            logits = layer.input
        else:
            raise ExportError(
                f"the model's last layer {layer.name!r} applies the sigmoid itself; export the "
                f"training model (best.keras) so that logits are available"
            )
    if temperatures is not None and any(t != 1.0 for t in temperatures):
        logits = keras.ops.divide(keras.ops.cast(logits, "float32"), np.asarray(temperatures, np.float32))
    return keras.Model(model.inputs, logits, name="fused_logits")


def load_source(path: PathLike) -> ExportSource:
    """Loads a run directory or a ``.keras`` file for export.

    Raises:
        ExportError: naming the path when it is neither, or what is missing or unreadable.
    """
    from can_tf.config import ConfigError
    from can_tf.run import RunError, is_run_dir, open_run, run_of_model

    path = Path(path)
    if path.is_dir():
        if not is_run_dir(path):
            raise ExportError(f"{path} is a folder but not a run directory (no config.yaml); give a run "
                              f"directory or a .keras file")
        try:
            run = open_run(path)
        except RunError as e:
            raise ExportError(str(e)) from None
        model_path = run.best_model
    elif path.is_file() and path.suffix == ".keras":
        model_path, run = path, run_of_model(path)
    elif not path.exists():
        raise ExportError(f"{path} does not exist; give a run directory or a .keras file")
    else:
        raise ExportError(f"{path} is not a run directory or a .keras file")
    model = load_keras_model(model_path, error=ExportError)  # the runtime's loader, export's error
    source = ExportSource.from_model(model)
    source.model_path = model_path
    if run is not None:
        try:
            config = run.config()
            source.provenance = run.provenance()
            thresholds = None
            if run.thresholds_path.is_file():
                thresholds = run.thresholds(list(config.data.class_names))
            source.temperatures = run.temperatures(list(config.data.class_names))
        except ConfigError as e:
            raise ExportError(f"cannot read the run's config {run.config_path}: {e}") from None
        except (RunError, ValueError) as e:
            raise ExportError(f"cannot use run {run.root}: {e}") from None
        source.run_dir, source.config_path = run.root, run.config_path
        source.class_names = list(config.data.class_names)
        source.aspect, source.max_pixels = config.data.aspect, config.data.max_pixels
        if config.data.image_size != source.image_size:
            raise ExportError(
                f"{run.config_path} says data.image_size={config.data.image_size} but {model_path} takes "
                f"{source.image_size} px images"
            )
        if thresholds is not None:
            source.thresholds = [float(v) for v in thresholds.values]
            source.thresholds_path = run.thresholds_path
            source._threshold_set = thresholds
    source.logits_model()  # checks the outputs against the class names now, not mid-export
    return source


@dataclasses.dataclass
class SampleImages:
    """Real images for checking and calibrating an export.

    Attributes:
        paths: the image files.
        images: float32 ``(N, S, S, 1)`` in [0, 255], preprocessed exactly as the training
            pipeline does it (and as the SavedModel's bytes signature does it).
    """

    paths: list
    images: np.ndarray


def image_paths(spec: Union[PathLike, Sequence[PathLike]]) -> list:
    """Image files from a folder (recursively, sorted), one image, a ``.txt`` list, or a list.

    Raises:
        ExportError: naming the path when it holds no images or does not exist.
    """
    if isinstance(spec, (list, tuple)):
        return [Path(p) for p in spec]
    spec = Path(spec)
    if spec.is_dir():
        found = sorted(p for p in spec.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ExportError(f"{spec} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if spec.is_file() and spec.suffix.lower() == ".txt":
        lines = [line.strip() for line in spec.read_text().splitlines() if line.strip()]
        return [Path(p) if Path(p).is_absolute() else spec.parent / p for p in lines]
    if spec.is_file():
        return [spec]
    raise ExportError(f"image source {spec} does not exist (give a folder, an image or a .txt list)")


def sample_images(source: ExportSource, images=None, *, limit: int = 8, split: str = "train") -> SampleImages:
    """Loads up to ``limit`` real images: ``images`` if given, else the run's ``split``.

    Raises:
        ExportError: when no images are given and the model did not come from a run directory, or
            when an image cannot be read (naming it).
    """
    if images is not None:
        paths = image_paths(images)
    elif source.run_dir is not None:
        paths = _run_split_paths(source, split)
    else:
        raise ExportError(
            "no images to check the export on: the model did not come from a run directory, so give "
            "some with --calibration-data (a folder, an image or a .txt list)"
        )
    paths = paths[:limit]
    if not paths:
        raise ExportError("no images to check the export on")
    return SampleImages(paths=paths, images=preprocess_files(
        paths, source.image_size, aspect=source.aspect, max_pixels=source.max_pixels))


def _run_split_paths(source: ExportSource, split: str) -> list:
    from can_tf.data.splits import read_splits
    from can_tf.data.table import load_table
    from can_tf.run import read_config

    try:
        config = read_config(source.config_path)
        df, _ = load_table(config.data)
        frame = read_splits(source.run_dir / "splits", df)[split]
    except Exception as e:  # data errors name their file; keep that message
        raise ExportError(
            f"cannot read the {split} images of run {source.run_dir} ({type(e).__name__}: {e}); "
            f"give images with --calibration-data"
        ) from None
    return [Path(p) for p in frame["path"]]


def preprocess_files(paths: Sequence[PathLike], image_size: int, *, aspect: str = "stretch",
                     max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image files -> float32 ``(N, S, S, 1)`` through the image door (:func:`can_tf.images.load_image`).

    Raises:
        ExportError: naming the first file that cannot be read and why.
    """
    from can_tf.errors import ImageError
    from can_tf.images import load_image

    out = []
    for path in paths:
        try:
            out.append(load_image(path, image_size, aspect=aspect, max_pixels=max_pixels).pixels)
        except ImageError as e:
            raise ExportError(str(e)) from None
    return np.stack(out).astype(np.float32)
