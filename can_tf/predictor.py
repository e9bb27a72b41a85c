"""One way to run any saved can-tf model: a run directory, a ``.keras`` file, a SavedModel or TFLite.

:class:`Predictor` hides the format: whatever was loaded, :meth:`Predictor.predict` takes float32
images ``(B, S, S, 1)`` in [0, 255] (what :mod:`can_tf.inputs` and the training pipeline produce)
and returns probabilities ``(B, C)``. The model does its own preprocessing, so pixels are scaled
exactly once. :meth:`Predictor.predict_files` adds reading, batching and per-file error reporting,
and applies the per-class thresholds chosen by ``can-tf evaluate`` when they were saved with the
model.

Formats, by what ``MODEL`` points at:

- a run directory (holds ``config.yaml`` and ``best.keras``): the best checkpoint, with the run's
  class names, image size and ``thresholds.json``;
- a ``.keras`` file: Keras model (CAN or baseline; dict-of-logits training models are reduced to
  their fused probabilities by :func:`can_tf.models.inference_model`);
- a SavedModel folder (``saved_model.pb``), or a TF Serving base folder holding numbered versions
  (the highest is used): its ``serving_images`` signature;
- a ``.tflite`` file: run with ``ai_edge_litert``.

Class names, image size and thresholds are looked up beside the model (``config.yaml``,
``labels.txt``, ``thresholds.json``; for a SavedModel in its ``assets/``), so an exported folder carries
them to a machine that never saw the run.

Example:
    >>> from can_tf.predictor import Predictor
    >>> predictor = Predictor.load("runs/small-1a2b3c4d")  # doctest: +SKIP
    >>> result = predictor.predict_files(["scan1.png", "scan2.dcm"])  # doctest: +SKIP
    >>> result.to_frame()[["path", "Cardiomegaly", "findings"]]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from can_tf.inputs import check_finite_pixels
from can_tf.labels import CLASS_NAMES, NO_FINDING

THRESHOLDS_FILE = "thresholds.json"
CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
PROVENANCE_FILE = "provenance.json"
# Folders below a model where metadata may sit (TF Serving copies assets.extra/ with the model).
_METADATA_SUBDIRS = ("", "assets.extra", "assets")


class ModelFormatError(ValueError):
    """``MODEL`` is not something can-tf can load; the message names the path and what was expected."""


# ---- locating a model and its metadata --------------------------------------------------------
def model_format(path: str | os.PathLike) -> str:
    """``"run"``, ``"keras"``, ``"saved_model"`` or ``"tflite"`` for ``path``.

    Raises:
        ModelFormatError: naming the path, when it is none of them.
    """
    from can_tf.run import RunError, is_run_dir, open_run

    path = Path(path)
    if path.is_dir():
        if is_run_dir(path):
            try:
                open_run(path)
            except RunError as e:
                raise ModelFormatError(str(e)) from None
            return "run"
        if (path / "saved_model.pb").is_file() or _latest_version(path) is not None:
            return "saved_model"
        raise ModelFormatError(
            f"{path} is a folder but neither a run directory (config.yaml + best.keras) nor a "
            f"SavedModel (saved_model.pb)"
        )
    if not path.exists():
        raise ModelFormatError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix == ".tflite":
        return "tflite"
    raise ModelFormatError(
        f"cannot tell the format of model {path}: expected a run directory, a .keras file, a "
        f"SavedModel folder or a .tflite file"
    )


def _latest_version(path: Path) -> Optional[Path]:
    """TF Serving layout: ``<base>/<version>/saved_model.pb``; the highest version wins."""
    versions = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def find_metadata(model_path: str | os.PathLike, name: str) -> Optional[Path]:
    """The first ``name`` found in the model's folder (or the model folder itself and its
    ``assets.extra/``), or None."""
    path = Path(model_path)
    roots = [path] if path.is_dir() else []
    if path.is_dir() and _latest_version(path) is not None:
        roots.insert(0, _latest_version(path))
    roots.append(path.parent)
    for root in roots:
        for sub in _METADATA_SUBDIRS:
            candidate = root / sub / name if sub else root / name
            if candidate.is_file():
                return candidate
    return None


def read_provenance(model_path, run=None) -> Optional[dict]:
    """The provenance record of a model: its run's, or the ``provenance.json`` an export carries."""
    if run is not None:
        return run.provenance()
    path = find_metadata(model_path, PROVENANCE_FILE)
    if path is None:
        stem = Path(model_path).with_suffix(".provenance.json")
        path = stem if stem.is_file() else None
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"cannot read {path}: {e}") from None


# ---- the backends -----------------------------------------------------------------------------
class _KerasBackend:
    def __init__(self, path: Path):
        import tensorflow as tf

        from can_tf.export.source import load_keras_model
        from can_tf.export.versioning import ExportError
        from can_tf.models import inference_model

        try:
            self.model = load_keras_model(path)
        except ExportError as exc:
            raise ModelFormatError(str(exc)) from None
        self.inference = inference_model(self.model)
        self.image_size = int(self.inference.inputs[0].shape[1])
        self.num_classes = int(self.inference.outputs[0].shape[-1])
        self._call = tf.function(lambda x: self.inference(x, training=False), reduce_retracing=True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(images), dtype=np.float32)


class _SavedModelBackend:
    SIGNATURE = "serving_images"

    def __init__(self, path: Path):
        import tensorflow as tf

        path = _latest_version(path) or path
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ModelFormatError(f"cannot load SavedModel {path}: {type(exc).__name__}: {exc}") from exc
        if self.SIGNATURE not in loaded.signatures:
            raise ModelFormatError(
                f"SavedModel {path} has no {self.SIGNATURE!r} signature (has: "
                f"{', '.join(loaded.signatures) or 'none'}); export it with `can-tf export`"
            )
        self._loaded = loaded  # keeps the signature's variables alive
        self._fn = loaded.signatures[self.SIGNATURE]
        (self._input_name, spec), = self._fn.structured_input_signature[1].items()
        self.image_size = spec.shape[1] if spec.shape.rank == 4 else None
        outputs = self._fn.structured_outputs
        if "probabilities" not in outputs:
            raise ModelFormatError(f"SavedModel {path}: signature {self.SIGNATURE!r} returns "
                                   f"{list(outputs)}, not 'probabilities'")
        self.num_classes = outputs["probabilities"].shape[-1]
        self._dtype = spec.dtype

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        result = self._fn(**{self._input_name: tf.constant(images, dtype=self._dtype)})
        return np.asarray(result["probabilities"], dtype=np.float32)


class _LiteRTBackend:
    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        except Exception as exc:
            raise ModelFormatError(f"cannot load TFLite model {path}: {type(exc).__name__}: {exc}") from exc
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise ModelFormatError(f"TFLite model {path} has {len(inputs)} inputs; expected one image tensor")
        self._input = inputs[0]
        outputs = self._interpreter.get_output_details()
        named = [o for o in outputs if "probabilities" in o["name"]]
        self._output = (named or outputs)[0]
        self.image_size = int(self._input["shape"][1])
        self.num_classes = int(self._output["shape"][-1])
        self._batch = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        interpreter, spec = self._interpreter, self._input
        if self._batch != len(images):
            # Resizing the batch dimension re-plans the interpreter's memory; do it only on change.
            interpreter.resize_tensor_input(spec["index"], [len(images), *images.shape[1:]], strict=False)
            interpreter.allocate_tensors()
            self._batch = len(images)
        interpreter.set_tensor(spec["index"], _quantize(images, spec))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(self._output["index"]), self._output)


def _quantize(values: np.ndarray, spec: dict) -> np.ndarray:
    dtype = spec["dtype"]
    if np.issubdtype(dtype, np.floating):
        return values.astype(dtype)
    scale, zero_point = spec["quantization"]
    info = np.iinfo(dtype)
    if scale == 0:  # an integer input that is not quantised (e.g. uint8 pixels the model casts)
        scale, zero_point = 1.0, 0
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, spec: dict) -> np.ndarray:
    if np.issubdtype(spec["dtype"], np.floating):
        return values.astype(np.float32)
    scale, zero_point = spec["quantization"]
    if scale == 0:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


_BACKENDS = {"keras": _KerasBackend, "saved_model": _SavedModelBackend, "tflite": _LiteRTBackend}


# ---- results ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Predictions:
    """Per-file probabilities (NaN rows for files that could not be read) and findings."""

    paths: list
    probabilities: np.ndarray  # float32 (N, C); NaN where errors[path] is set
    class_names: list
    errors: dict  # path -> reason
    thresholds: Optional[object] = None  # Thresholds used for ``findings``, or None

    @property
    def num_predicted(self) -> int:
        return len(self.paths) - len(self.errors)

    def findings(self) -> Optional[list]:
        """Per file, the classes at or over their threshold (None without thresholds)."""
        if self.thresholds is None:
            return None
        positive = np.asarray(self.thresholds.apply(np.nan_to_num(self.probabilities, nan=0.0)), dtype=bool)
        return [
            None if path in self.errors else [n for n, p in zip(self.class_names, row) if p]
            for path, row in zip(self.paths, positive)
        ]

    def to_frame(self):
        """One row per input file: ``path``, ``error``, a column per class, ``findings``."""
        import pandas as pd

        frame = pd.DataFrame({"path": self.paths,
                              "error": [self.errors.get(p, "") for p in self.paths]})
        for c, name in enumerate(self.class_names):
            frame[name] = self.probabilities[:, c]
        findings = self.findings()
        if findings is not None:
            frame["findings"] = ["" if f is None else ("|".join(f) or NO_FINDING) for f in findings]
        return frame

    def to_json(self) -> dict:
        findings = self.findings()
        records = []
        for i, path in enumerate(self.paths):
            record = {"path": path}
            if path in self.errors:
                record["error"] = self.errors[path]
            else:
                record["probabilities"] = {n: float(p) for n, p in zip(self.class_names, self.probabilities[i])}
                if findings is not None:
                    record["findings"] = findings[i]
            records.append(record)
        return {
            "class_names": list(self.class_names),
            "thresholds": None if self.thresholds is None else self.thresholds.to_dict(),
            "predicted": self.num_predicted,
            "failed": len(self.errors),
            "predictions": records,
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Writes CSV (``.csv``) or JSON (``.json``)."""
        from can_tf.files import atomic_write_text

        path = Path(path)
        if path.suffix.lower() == ".json":
            text = json.dumps(self.to_json(), indent=2, allow_nan=False)
        elif path.suffix.lower() == ".csv":
            text = self.to_frame().to_csv(index=False, float_format="%.6f")
        else:
            raise ValueError(f"output file {path} must end in .csv or .json")
        return atomic_write_text(path, text)


# ---- the predictor ----------------------------------------------------------------------------
class Predictor:
    """Runs a saved model of any supported format on images in [0, 255].

    Build it with :meth:`load`. Attributes: ``image_size``, ``class_names``, ``thresholds`` (a
    :class:`can_tf.evaluation.thresholds.Thresholds` or None), ``format``, ``path``, and for Keras
    formats ``keras_model`` (the loaded model, e.g. for :mod:`can_tf.explanation`).

    Example:
        >>> predictor = Predictor.load("model.tflite")  # doctest: +SKIP
        >>> probs = predictor.predict(np.zeros((2, 64, 64, 1), "float32"))  # doctest: +SKIP
        >>> probs.shape  # doctest: +SKIP
        (2, 14)
    """

    def __init__(self, backend: Callable, *, image_size: int, class_names: Sequence[str],
                 thresholds=None, format: str = "", path: str = "", provenance: Optional[dict] = None):
        self._backend = backend
        self.image_size = int(image_size)
        self.class_names = list(class_names)
        self.thresholds = thresholds
        self.format = format
        self.path = path
        self.provenance = provenance

    @property
    def warning(self) -> Optional[str]:
        """The bold "not a diagnostic model" line when the model was trained on phantom data."""
        from can_tf.provenance import phantom_warning

        return phantom_warning(self.provenance)

    @property
    def keras_model(self):
        """The loaded Keras model (run directory and ``.keras`` formats only)."""
        model = getattr(self._backend, "model", None)
        if model is None:
            raise ModelFormatError(
                f"{self.path} is a {self.format} model; this needs the Keras model (a run directory "
                f"or a .keras file)"
            )
        return model

    @classmethod
    def load(cls, model_path: str | os.PathLike, *, use_thresholds: bool = True) -> "Predictor":
        """Loads ``model_path`` (run dir, ``.keras``, SavedModel folder, ``.tflite``) and its metadata."""
        from can_tf.run import read_config, read_thresholds, run_of_model

        path = Path(model_path)
        fmt = model_format(path)
        run = run_of_model(path) if fmt in ("run", "keras") else None
        weights = run.best_model if fmt == "run" else path
        backend = _BACKENDS["keras" if fmt == "run" else fmt](weights)

        config_path = run.config_path if run is not None else find_metadata(path, CONFIG_FILE)
        config = read_config(config_path) if config_path else None
        image_size = backend.image_size or (config.data.image_size if config else None)
        if not image_size:
            raise ModelFormatError(f"{path}: the model does not fix its input size and no {CONFIG_FILE} "
                                   f"beside it says it")
        labels_path = find_metadata(path, LABELS_FILE)
        if config is not None:
            class_names = list(config.data.class_names)
        elif labels_path is not None:
            class_names = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines()
                           if line.strip()]
        elif backend.num_classes == len(CLASS_NAMES):
            class_names = list(CLASS_NAMES)
        else:
            raise ModelFormatError(
                f"{path}: the model has {backend.num_classes} outputs and no {CONFIG_FILE} beside it names "
                f"its classes"
            )
        if len(class_names) != backend.num_classes:
            raise ModelFormatError(f"{config_path or labels_path} names {len(class_names)} classes but model {path} has "
                                   f"{backend.num_classes} outputs")
        thresholds = None
        if use_thresholds:
            thresholds_path = run.thresholds_path if run is not None else find_metadata(path, THRESHOLDS_FILE)
            if thresholds_path is not None and thresholds_path.is_file():
                thresholds = read_thresholds(thresholds_path, class_names)
        return cls(backend, image_size=image_size, class_names=class_names, thresholds=thresholds,
                   format=fmt, path=str(path), provenance=read_provenance(path, run))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 ``(B, S, S, 1)`` in [0, 255] -> probabilities ``(B, C)``.

        Raises:
            ValueError: the images are not ``(B, S, S, 1)`` at the model's size, or hold NaN/inf.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"images must have shape (B, {self.image_size}, {self.image_size}, 1), "
                             f"got {images.shape}")
        if len(images) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        images = check_finite_pixels(images)  # refused here, not left to a pooling kernel
        return self._backend(images)

    def predict_files(self, paths: Sequence[str], *, batch_size: int = 32,
                      on_batch: Optional[Callable[[int], None]] = None) -> Predictions:
        """Reads, batches and predicts ``paths``; unreadable files are reported, not fatal.

        ``on_batch(n)`` is called after each batch with the number of files it held (a progress bar).
        """
        from can_tf.inputs import load_images

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        paths = [str(p) for p in paths]
        probabilities = np.full((len(paths), len(self.class_names)), np.nan, np.float32)
        errors = {}
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch = load_images(chunk, self.image_size)
            errors.update(batch.errors)
            if batch.paths:
                probs = self.predict(batch.images)
                rows = [start + i for i, p in enumerate(chunk) if p not in batch.errors]
                probabilities[rows] = probs
            if on_batch is not None:
                on_batch(len(chunk))
        return Predictions(paths=paths, probabilities=probabilities, class_names=self.class_names,
                           errors=errors, thresholds=self.thresholds)
