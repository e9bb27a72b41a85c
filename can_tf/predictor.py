"""One way to run any saved can-tf model: a run directory, a ``.keras`` file, a SavedModel or TFLite.

:class:`Predictor` hides the format: whatever was loaded, :meth:`Predictor.predict` takes float32
images ``(B, S, S, 1)`` in [0, 255] (what :mod:`can_tf.inputs` and the training pipeline produce)
and returns probabilities ``(B, C)``. The model does its own preprocessing, so pixels are scaled
exactly once. The model itself runs in :mod:`can_tf.runtime` (one runtime per format); the
predictor adds the metadata around it. :meth:`Predictor.predict_files` adds reading, batching and per-file error reporting,
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

from can_tf.images import DEFAULT_MAX_PIXELS, check_aspect
from can_tf.labels import CLASS_NAMES, NO_FINDING
from can_tf.runtime import FunctionRuntime, Runtime, open_runtime, runtime_format
from can_tf.runtime import latest_version as _latest_version

THRESHOLDS_FILE = "thresholds.json"
CALIBRATION_FILE = "calibration.json"
CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
PROVENANCE_FILE = "provenance.json"
# Folders below a model where metadata may sit (TF Serving copies assets.extra/ with the model).
_METADATA_SUBDIRS = ("", "assets.extra", "assets")


from can_tf.errors import ModelFileError  # noqa: E402  (defined there; raised for unloadable MODEL paths)


# ---- locating a model and its metadata --------------------------------------------------------
def model_format(path: str | os.PathLike) -> str:
    """``"run"``, ``"keras"``, ``"saved_model"`` or ``"tflite"`` for ``path``.

    Raises:
        ModelFileError: naming the path, when it is none of them.
    """
    from can_tf.run import RunError, is_run_dir, open_run

    path = Path(path)
    if path.is_dir() and is_run_dir(path):
        try:
            open_run(path)
        except RunError as e:
            raise ModelFileError(str(e)) from None
        return "run"
    try:
        return runtime_format(path)
    except ModelFileError:
        if path.is_dir():
            raise ModelFileError(f"{path} is a folder but neither a run directory (config.yaml + best.keras) "
                                 f"nor a SavedModel (saved_model.pb)") from None
        if path.exists():
            raise ModelFileError(f"cannot tell the format of model {path}: expected a run directory, a .keras "
                                 f"file, a SavedModel folder or a .tflite file") from None
        raise


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
        raise ModelFileError(f"cannot read {path}: {e}") from None


# ---- results ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Predictions:
    """Per-file probabilities (NaN rows for files that could not be read) and findings."""

    paths: list
    probabilities: np.ndarray  # float32 (N, C); NaN where errors[path] is set
    class_names: list
    errors: dict  # path -> reason
    thresholds: Optional[object] = None  # Thresholds used for ``findings``, or None
    temperatures: Optional[object] = None  # the calibration applied to ``probabilities``, or None

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
            "calibration": None if self.temperatures is None else self.temperatures.to_dict(),
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


RUNTIMES = ("auto", "keras", "litert")


def _keras_model_runtime(weights: Path, temperatures, choice: str) -> tuple:
    """``(runtime, note)`` for a ``.keras`` model: LiteRT when chosen (or ``auto`` on a CPU) and it
    matches Keras, else Keras; the note says which LiteRT file runs, or why Keras does."""
    from can_tf.errors import LiteRTUnavailable

    values = None if temperatures is None else temperatures.values
    if choice == "auto":
        import tensorflow as tf

        choice = "keras" if tf.config.list_physical_devices("GPU") else "litert"
    if choice == "keras":
        return open_runtime(weights, "keras", temperatures=values), None
    from can_tf.litert_cache import litert_runtime

    try:
        runtime = litert_runtime(weights, temperatures=temperatures)
    except LiteRTUnavailable as e:
        return open_runtime(weights, "keras", temperatures=values), f"Keras runs the model: {e}"
    return runtime, runtime.cache_note


def _image_rules(model_path: Path, config) -> tuple:
    """``(aspect, max_pixels)`` the model was trained with: its config, else a ``.tflite``'s
    ``<stem>.json`` (written by the export), else the defaults."""
    if config is not None:
        return config.data.aspect, config.data.max_pixels
    described = Path(model_path).with_suffix(".json")
    if Path(model_path).suffix.lower() == ".tflite" and described.is_file():
        try:
            spec = json.loads(described.read_text(encoding="utf-8")).get("input", {})
            return spec.get("aspect", "stretch"), int(spec.get("max_pixels", DEFAULT_MAX_PIXELS))
        except (OSError, ValueError, AttributeError) as e:
            raise ModelFileError(f"cannot read {described}: {e}") from None
    return "stretch", DEFAULT_MAX_PIXELS


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

    def __init__(self, runtime: Runtime | Callable, *, image_size: int, class_names: Sequence[str],
                 thresholds=None, format: str = "", path: str = "", provenance: Optional[dict] = None,
                 aspect: str = "stretch", max_pixels: Optional[int] = DEFAULT_MAX_PIXELS):
        if not isinstance(runtime, Runtime):  # a plain function images -> probabilities
            runtime = FunctionRuntime(runtime, image_size=image_size, num_classes=len(class_names), format=format)
        self._runtime = runtime
        self.image_size = int(image_size)
        self.class_names = list(class_names)
        self.thresholds = thresholds
        self.format = format
        self.path = path
        self.provenance = provenance
        self.aspect = check_aspect(aspect)  # the model's image rules (data.aspect, data.max_pixels)
        self.max_pixels = max_pixels
        self.temperatures = None  # the calibration this predictor applies (Keras formats), or None
        self.runtime_note = None  # which LiteRT file runs a Keras model, or why Keras runs it instead
        self._keras_path = None  # the .keras file behind a LiteRT runtime: keras_model loads it when asked
        self._keras_model = None

    @property
    def warning(self) -> Optional[str]:
        """The bold "not a diagnostic model" line when the model was trained on phantom data."""
        from can_tf.provenance import phantom_warning

        return phantom_warning(self.provenance)

    @property
    def keras_model(self):
        """The loaded Keras model (run directory and ``.keras`` formats only)."""
        model = getattr(self._runtime, "model", None)
        if model is None and self._keras_path is not None:
            from can_tf.runtime import load_keras_model

            # LiteRT runs the predictions; the Keras model (for Grad-CAM) is loaded when asked for.
            if self._keras_model is None:
                self._keras_model = load_keras_model(self._keras_path)
            model = self._keras_model
        if model is None:
            raise ModelFileError(
                f"{self.path} is a {self.format} model; this needs the Keras model (a run directory "
                f"or a .keras file)"
            )
        return model

    @classmethod
    def load(cls, model_path: str | os.PathLike, *, use_thresholds: bool = True,
             use_calibration: bool = True, runtime: str = "keras") -> "Predictor":
        """Loads ``model_path`` (run dir, ``.keras``, SavedModel folder, ``.tflite``) and its metadata.

        A run's ``calibration.json`` (temperatures fitted by ``can-tf evaluate``) is applied to a
        Keras model's logits unless ``use_calibration=False`` (what evaluation uses to fit them);
        exports have it baked into their graph already.

        ``runtime`` chooses what runs a run directory's or ``.keras`` file's model (other formats
        have their own): ``"keras"``; ``"litert"``, its float32 LiteRT conversion, converted once,
        cached beside the model and checked against Keras (:mod:`can_tf.litert_cache`; faster on a
        CPU); or ``"auto"``, LiteRT where TensorFlow sees no GPU, else Keras. Where LiteRT cannot
        stand in, Keras runs and :attr:`runtime_note` says why; it also says which file LiteRT runs.
        """
        from can_tf.run import read_config, read_temperatures, read_thresholds, run_of_model

        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        path = Path(model_path)
        fmt = model_format(path)
        run = run_of_model(path) if fmt in ("run", "keras") else None
        weights = run.best_model if fmt == "run" else path
        temperatures = None
        if use_calibration and fmt in ("run", "keras"):
            calibration = run.calibration_path if run is not None else path.parent / CALIBRATION_FILE
            if calibration.is_file():
                temperatures = read_temperatures(calibration)
        note = None
        if fmt in ("run", "keras"):
            runtime, note = _keras_model_runtime(weights, temperatures, runtime)
        else:
            runtime = open_runtime(weights, fmt)

        config_path = run.config_path if run is not None else find_metadata(path, CONFIG_FILE)
        config = read_config(config_path) if config_path else None
        image_size = runtime.image_size or (config.data.image_size if config else None)
        if not image_size:
            raise ModelFileError(f"{path}: the model does not fix its input size and no {CONFIG_FILE} "
                                   f"beside it says it")
        labels_path = find_metadata(path, LABELS_FILE)
        if config is not None:
            class_names = list(config.data.class_names)
        elif labels_path is not None:
            class_names = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines()
                           if line.strip()]
        elif runtime.num_classes == len(CLASS_NAMES):
            class_names = list(CLASS_NAMES)
        else:
            raise ModelFileError(
                f"{path}: the model has {runtime.num_classes} outputs and no {CONFIG_FILE} beside it names "
                f"its classes"
            )
        if len(class_names) != runtime.num_classes:
            raise ModelFileError(f"{config_path or labels_path} names {len(class_names)} classes but model {path} has "
                                   f"{runtime.num_classes} outputs")
        thresholds = None
        if use_thresholds:
            thresholds_path = run.thresholds_path if run is not None else find_metadata(path, THRESHOLDS_FILE)
            if thresholds_path is not None and thresholds_path.is_file():
                thresholds = read_thresholds(thresholds_path, class_names)
        if temperatures is not None and list(temperatures.class_names) != list(class_names):
            raise ModelFileError(f"{calibration} calibrates classes {', '.join(temperatures.class_names)}, but model "
                                 f"{path} has {', '.join(class_names)}; run `can-tf evaluate` again to refit it")
        aspect, max_pixels = _image_rules(path, config)
        predictor = cls(runtime, image_size=image_size, class_names=class_names, thresholds=thresholds,
                        format=fmt, path=str(path), provenance=read_provenance(path, run), aspect=aspect,
                        max_pixels=max_pixels)
        predictor.temperatures = temperatures
        predictor.runtime_note = note
        if fmt in ("run", "keras"):
            predictor._keras_path = weights
        return predictor

    @property
    def runtime(self) -> str:
        """What runs the model: ``"keras"``, ``"saved_model"`` or ``"tflite"`` (LiteRT)."""
        return self._runtime.format

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 ``(B, S, S, 1)`` in [0, 255] -> probabilities ``(B, C)``.

        Raises:
            ValueError: the images are not ``(B, S, S, 1)`` at the model's size, or hold NaN/inf.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"images must have shape (B, {self.image_size}, {self.image_size}, 1), "
                             f"got {images.shape}")
        # The runtime refuses NaN/inf pixels (not left to a pooling kernel) and handles empty batches.
        return self._runtime.predict(images)

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
            batch = load_images(chunk, self.image_size, aspect=self.aspect, max_pixels=self.max_pixels)
            errors.update(batch.errors)
            if batch.paths:
                probs = self.predict(batch.images)
                rows = [start + i for i, p in enumerate(chunk) if p not in batch.errors]
                probabilities[rows] = probs
            if on_batch is not None:
                on_batch(len(chunk))
        return Predictions(paths=paths, probabilities=probabilities, class_names=self.class_names,
                           errors=errors, thresholds=self.thresholds, temperatures=self.temperatures)
