"""TFLite / LiteRT export for phones and edge devices, builtin ops only.

The converted graph is image ``(1, S, S, 1)`` -> ``probabilities`` ``(1, C)`` (sigmoid of the fused
logits). The input is float32 pixels in [0, 255], or with ``uint8_input=True`` the uint8 pixels a
camera or PNG decoder gives (the model casts them).

With ``rgb_input=True`` the input is ``(1, S, S, 3)`` instead and the graph's first step is the
training pipeline's own colour conversion, :func:`can_tf.images.to_gray` (luminance
``0.299 R + 0.587 G + 0.114 B``). That is the variant for the LiteRT Task Library's
``ImageClassifier`` (and Android Studio's ML model binding, which reads the same metadata): it
accepts RGB inputs only (the grayscale file is refused with "Only RGB color space is supported for
now."). A gray radiograph handed over as RGB
(R = G = B = v) gives back v up to float rounding (the three weights sum to 1), so the variant
computes what the grayscale model computes; its file stem ends in ``_rgb``.

Quantisation modes:

- ``none``: float32 weights and maths; matches Keras to ~1e-6.
- ``float16``: float16 weights (half the size), float32 maths.
- ``dynamic``: int8 weights, activations quantised on the fly (~4x smaller, fastest on CPU).
- ``int8``: full integer model, calibrated on real training images (``TFLITE_BUILTINS_INT8``);
  input and output stay float32 (or uint8 input) with the (de)quantisation inside the model.

Conversion is restricted to TFLite's builtin ops, so it fails instead of producing a model that
needs the Flex delegate (absent on most phones); the result is also checked for Flex/custom ops by
loading it in ``ai_edge_litert``. Before the file is published it is run in ``ai_edge_litert`` on
real images and compared with the Keras model (float32 within 1e-4, float16 within 1e-2, the
int8 variants within a loose bound, their error reported).

Every published ``.tflite`` carries TFLite model metadata (:mod:`can_tf.export.tflite_metadata`,
the format the LiteRT Task Library and Android Studio's ML model binding read): name, description,
version, author, license, the input as a grayscale (RGB for ``rgb_input``) ``S x S`` image of raw
pixels 0-255 (normalisation mean 0, std 1 for float32, none for uint8), the output ``probabilities``
with ``labels.txt`` as its axis labels, and packed inside the file (it is also a ZIP archive)
``labels.txt``, ``thresholds.json`` (when the run has thresholds; the same text as the one beside
the model) and ``model_card.json`` (:mod:`can_tf.model_card`; by default the run's card, built from
its latest test-split evaluation). The file with metadata is run again on the check
images and must give exactly the outputs of the file without.

Beside the ``.tflite`` go ``labels.txt``, ``thresholds.json`` (when the run has thresholds),
``<file stem>.json`` with the input size, dtype and scaling, and ``<file stem>.provenance.json``,
the run's provenance record (which data the model learned from, see :mod:`can_tf.provenance`),
when the source has one, and ``<file stem>.model_card.json`` / ``.md``. They are written before the model is moved into place; if that fails (a
full disk), the ones this export created are removed again.

Example:
    >>> from can_tf.export import export_tflite
    >>> result = export_tflite("runs/small-1a2b3c4d", "exports/tflite/models", quantize="int8")  # doctest: +SKIP
    >>> result.path.name, result.max_abs_error < 0.1  # doctest: +SKIP
    ('can_int8.tflite', True)
    >>> export_tflite("runs/small-1a2b3c4d", "exports/tflite/models", rgb_input=True).path.name  # doctest: +SKIP
    'can_none_rgb.tflite'
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from can_tf.export import versioning
from can_tf.export.source import ExportSource, load_source, sample_images
from can_tf.export.tflite_metadata import add_metadata, labels_text
from can_tf.model_card import card_for_run, model_card_markdown, model_card_text
from can_tf.export.verify import describe_images
from can_tf.export.versioning import ExportError
from can_tf.files import make_folders, remove_empty_folders, remove_stale_temporaries
from can_tf.images import check_pixels
from can_tf.provenance import phantom_warning
from can_tf.runtime import LiteRTRuntime, quantize

PathLike = Union[str, os.PathLike]

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
QUANTIZE_TEXT = {"none": "float32 weights", "float16": "float16 weights", "dynamic": "dynamic-range int8 weights",
                 "int8": "full int8 (calibrated on training images)"}
# Largest accepted |p_tflite - p_keras|. The int8 bounds are loose on purpose (quantisation error
# depends on the model), but a broken conversion (wrong scaling, unfolded layers) is far off.
TOLERANCES = {"none": 1e-4, "float16": 1e-2, "dynamic": 0.15, "int8": 0.15}
MODEL_CARD_FILE = "model_card.json"
METADATA_AUTHOR = "can-tf"
METADATA_LICENSE = ("The weights are subject to the terms of the data they were trained on; "
                    "can-tf itself is Apache-2.0.")


def convert_tflite(source: ExportSource, quantize: str = "none", uint8_input: bool = False,
                   calibration: Optional[np.ndarray] = None, rgb_input: bool = False,
                   batch_size: Optional[int] = 1) -> bytes:
    """Converts the model to a TFLite flatbuffer (builtin ops only).

    Args:
        source: the model to convert.
        quantize: one of ``none``, ``float16``, ``dynamic``, ``int8``.
        uint8_input: the model takes uint8 pixels instead of float32.
        calibration: float32 ``(N, S, S, 1)`` real images in [0, 255]; required for ``int8``
            (repeated to three channels for an RGB input).
        rgb_input: the model takes ``(1, S, S, 3)`` RGB pixels and converts them to gray as
            :func:`can_tf.images.to_gray` does.
        batch_size: the input's batch dimension: 1 (what phones run, the default), or None for a
            model the interpreter resizes to any batch (:mod:`can_tf.litert_cache`).

    Raises:
        ExportError: an unknown mode, missing calibration images, or a model that would need ops
            outside TFLite's builtin set.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from can_tf.images import to_gray

    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}; got {quantize!r}")
    size, channels = source.image_size, source.input_channels
    logits_model = source.logits_model()
    dtype = tf.uint8 if uint8_input else tf.float32

    @tf.function(input_signature=[tf.TensorSpec([batch_size, size, size, _input_channels(rgb_input)], dtype, name="image")],
                 autograph=False)
    def serve(image):
        x = tf.cast(image, tf.float32)
        if rgb_input:
            # The pipeline's own conversion, so a colour photo of a film is read as in training; the
            # shape is static, so its channel test folds away and no IF op reaches the model.
            x = to_gray(x)
        if channels == 3:
            x = tf.repeat(x, 3, axis=-1)
        return {"probabilities": tf.sigmoid(tf.cast(logits_model(x, training=False), tf.float32))}

    # Freezing first: converting Keras 3 variables as resource variables leaves READ_VARIABLE ops
    # that full-int8 calibration cannot run (and the float model reads uninitialised values).
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], logits_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if calibration is None or not len(calibration):
            raise ExportError("--quantize int8 needs real calibration images "
                              "(the run's train split or --calibration-data)")
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        samples = _pixels(_as_input(np.asarray(calibration, np.float32), rgb_input), uint8_input)
        converter.representative_dataset = lambda: ([samples[i:i + 1]] for i in range(len(samples)))
    from can_tf.logs import native_logs_captured

    try:
        with native_logs_captured():  # the converter's C++ log lines: shown only if it fails (or -v)
            return converter.convert()
    except Exception as e:  # the converter raises ConverterError and a few others
        import tempfile

        # The converter works in the system's temporary folder.
        full = versioning.disk_full_error(e, tempfile.gettempdir(), f"the {quantize} conversion did not finish")
        raise (full or ExportError(f"TFLite conversion ({quantize}) failed with builtin ops only: {e}")) from None


def tflite_ops(model: Union[bytes, PathLike]) -> list:
    """The sorted op names a TFLite model runs (``DELEGATE`` excluded: that is the CPU delegate)."""
    return LiteRTRuntime(model).ops()


def flex_ops(model: Union[bytes, PathLike]) -> list:
    """The ops of ``model`` that are not TFLite builtins (Flex delegate or custom ops)."""
    from ai_edge_litert import schema_py_generated as schema  # noqa: F401  only to know builtins

    builtin = {name for name in dir(schema.BuiltinOperator) if name.isupper()}
    return [op for op in tflite_ops(model) if op.startswith("Flex") or op not in builtin]


def run_tflite(model: Union[bytes, PathLike], images: np.ndarray, batch_size: int = 1) -> np.ndarray:
    """Runs a TFLite model in :class:`~can_tf.runtime.LiteRTRuntime`, by default one image at a
    time as a phone does (the exported shape); ``images`` float32 ``(N, S, S, 1)`` in [0, 255]
    (repeated to three channels for a model with an RGB input)."""
    runtime = LiteRTRuntime(model)
    images = check_pixels(np.asarray(images, np.float32))  # the whole batch: errors name the index
    if not len(images):
        return runtime.predict(images)
    return np.concatenate([runtime.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def _input_channels(rgb_input: bool) -> int:
    """The channels of the exported model's input: 3 for the RGB variant, else 1."""
    return 3 if rgb_input else 1


def _as_input(images: np.ndarray, rgb_input: bool) -> np.ndarray:
    # Gray images as the RGB variant is fed them: R = G = B.
    return np.repeat(images, 3, axis=-1) if rgb_input and images.shape[-1] == 1 else images


def _pixels(images: np.ndarray, uint8: bool) -> np.ndarray:
    # uint8 models see the pixels rounded to integers; the Keras reference is given the same.
    return quantize(images, np.uint8 if uint8 else np.float32)


@dataclasses.dataclass
class TFLiteExport:
    """A published ``.tflite`` file and how it compared with the Keras model."""

    path: Path
    quantize: str
    uint8_input: bool
    size_bytes: int
    max_abs_error: float
    tolerance: float
    num_images: int
    ops: list
    images: str = ""  # what the images were, from `can_tf.export.verify.describe_images`
    provenance: Optional[dict] = None
    rgb_input: bool = False

    def summary(self) -> str:
        line = (f"{self.path} ({self.size_bytes / 1e6:.2f} MB, quantize={self.quantize}, "
                f"input {'uint8' if self.uint8_input else 'float32'}{' RGB' if self.rgb_input else ''}): "
                f"max |p - p_keras| = "
                f"{self.max_abs_error:.2e} on {self.images or describe_images(self.num_images)} "
                f"(allowed {self.tolerance:g}); ops: {', '.join(self.ops)}")
        warning = phantom_warning(self.provenance)
        return f"{line}\n{warning}" if warning else line


def export_tflite(
    source: Union[PathLike, ExportSource],
    out_dir: PathLike,
    name: str = "can",
    quantize: str = "none",
    uint8_input: bool = False,
    images=None,
    *,
    num_calibration: int = 100,
    num_verify: int = 8,
    overwrite: bool = False,
    tolerance: Optional[float] = None,
    max_pixels: Optional[int] = None,
    model_card: Optional[bytes] = None,
    rgb_input: bool = False,
) -> TFLiteExport:
    """Converts, checks and publishes ``<out_dir>/<name>_<quantize>[_uint8][_rgb].tflite``.

    Args:
        source: a run directory, a ``.keras`` file, or an :class:`ExportSource`.
        out_dir: folder for the ``.tflite`` and its ``labels.txt``, ``thresholds.json``, ``.json``.
        name: file name stem.
        quantize: ``none``, ``float16``, ``dynamic`` or ``int8``.
        uint8_input: the model takes uint8 pixels ``(1, S, S, 1)``.
        images: real images (folder, image, ``.txt`` list or list of paths) for calibration and
            checking; default: the run's training split.
        num_calibration: images used to calibrate ``int8``.
        num_verify: images the result is compared with Keras on.
        overwrite: replace existing files; without it an existing ``.tflite`` is an error.
        tolerance: allowed max absolute error; default from :data:`TOLERANCES`.
        max_pixels: the image size limit written for the edge script; default: the run's
            ``data.max_pixels``.
        model_card: the model card as JSON bytes, packed into the file's metadata as
            ``model_card.json``.
        rgb_input: the model takes ``(1, S, S, 3)`` RGB pixels, converted to gray inside it (for the
            LiteRT Task Library and Android Studio, which accept RGB only); checked on the same
            images as R = G = B.

    Raises:
        ExportError: the file exists, conversion needs non-builtin ops, the check failed (with or
            without the metadata), the model card is not JSON, or the disk is full; no file is
            left behind then.

    Example:
        >>> export_tflite("runs/small-1a2b3c4d", "out", quantize="float16")  # doctest: +SKIP
    """
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}; got {quantize!r}")
    if not isinstance(source, ExportSource):
        source = load_source(source)
    out_dir = Path(out_dir)
    stem = f"{name}_{quantize}{'_uint8' if uint8_input else ''}{'_rgb' if rgb_input else ''}"
    target = out_dir / f"{stem}.tflite"
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass --overwrite to replace it")
    provenance = getattr(source, "provenance", None)
    if model_card is None:  # the run's own card: its data, its latest test evaluation, its limits
        model_card = model_card_text(card_for_run(
            source.run_dir, provenance, name=name, export=f"TFLite, {QUANTIZE_TEXT[quantize]}"
            + (", uint8 input" if uint8_input else "") + (", RGB input" if rgb_input else ""),
            thresholds=source.threshold_set(),
            temperatures=source.temperatures)).encode("utf-8")
    _check_model_card(model_card)
    samples = sample_images(source, images, limit=max(num_calibration, num_verify))
    check_images = _pixels(samples.images[:num_verify], uint8_input).astype(np.float32)
    expected = source.probabilities(np.repeat(check_images, 3, -1) if source.input_channels == 3 else check_images)

    model = convert_tflite(source, quantize, uint8_input, calibration=samples.images[:num_calibration],
                           rgb_input=rgb_input)
    bad = flex_ops(model)
    if bad:
        raise ExportError(f"the converted model needs ops outside TFLite's builtin set: {bad}")
    actual = run_tflite(model, check_images)  # an RGB input gets them as R = G = B
    error = float(np.max(np.abs(actual - expected)))
    tolerance = TOLERANCES[quantize] if tolerance is None else tolerance
    checked_on = describe_images(len(check_images), images, provenance, source.run_dir)
    if not error <= tolerance:
        raise ExportError(
            f"the {quantize} TFLite model differs from the Keras model by up to {error:.3g} "
            f"(allowed {tolerance:g}) on {checked_on}; nothing was written"
        )
    model = _with_metadata(model, source, stem, quantize, uint8_input, provenance, model_card, check_images, actual,
                           rgb_input)

    remove_stale_temporaries(out_dir)  # temporary files of killed exports
    created_folders, created_files = [], []
    max_pixels = source.max_pixels if max_pixels is None else int(max_pixels)
    companions = _companions(source, stem, quantize, uint8_input, overwrite, provenance, max_pixels, rgb_input)
    card = json.loads(bytes(model_card).decode("utf-8"))
    companions[f"{stem}.model_card.json"] = (model_card_text(card), True)
    companions[f"{stem}.model_card.md"] = (model_card_markdown(card), True)

    def write(tmp):
        # The companions go in before the model is moved into place, so a published model always has them.
        Path(tmp).write_bytes(model)
        for name, (text, replace) in companions.items():
            path = out_dir / name
            existed = path.exists()
            versioning.write_file_atomic(path, text, overwrite=replace)
            if not existed:
                created_files.append(path)

    try:
        created_folders = make_folders(out_dir)
        versioning.publish_file(target, write, overwrite=overwrite)
    except BaseException as e:
        # Only what this export created goes: an earlier model's companions stay with it.
        for path in created_files:
            path.unlink(missing_ok=True)
        remove_empty_folders(created_folders)
        full = isinstance(e, Exception) and versioning.disk_full_error(
            e, target, f"nothing was written there (the model is {len(model) / 1e6:.2f} MB)")
        if full:
            raise full from None
        raise
    if provenance is None:
        # One describing an earlier model of this name would now be wrong.
        (out_dir / f"{stem}.provenance.json").unlink(missing_ok=True)
    return TFLiteExport(path=target, quantize=quantize, uint8_input=uint8_input, size_bytes=len(model),
                        max_abs_error=error, tolerance=tolerance, num_images=len(check_images),
                        ops=tflite_ops(model), images=checked_on, provenance=provenance, rgb_input=rgb_input)


def _companions(source, stem, quantize, uint8_input, overwrite, provenance, max_pixels, rgb_input=False) -> dict:
    """``{file name: (text, replace if it exists)}`` of the files that travel with ``<stem>.tflite``."""
    files = {"labels.txt": (labels_text(source.class_names), overwrite)}
    if source.threshold_set() is not None:
        files["thresholds.json"] = (source.threshold_set().to_text(), overwrite)
    metadata = {
        "model_file": f"{stem}.tflite",
        "input": {"shape": [1, source.image_size, source.image_size, _input_channels(rgb_input)],
                  "dtype": "uint8" if uint8_input else "float32", "channels": _input_channels(rgb_input),
                  "color": "RGB (converted to gray inside the model)" if rgb_input else "grayscale",
                  "scaling": "raw pixel values 0-255 (the model normalises internally)",
                  "resize": "antialiased bilinear to the input size",
                  # The image door's rules (can_tf.images), which exports/tflite/edge_infer.py follows.
                  "aspect": source.aspect, "max_pixels": max_pixels},
        "output": {"name": "probabilities", "shape": [1, len(source.class_names)], "activation": "sigmoid"},
        "quantize": quantize,
        "labels": "labels.txt",
        "thresholds": "thresholds.json" if source.thresholds is not None else None,
        "provenance": f"{stem}.provenance.json" if provenance is not None else None,
    }
    # The per-model files describe this model only, so they are always replaced.
    files[f"{stem}.json"] = (json.dumps(metadata, indent=2) + "\n", True)
    if provenance is not None:
        files[f"{stem}.provenance.json"] = (json.dumps(provenance, indent=2) + "\n", True)
    return files


def _check_model_card(model_card) -> None:
    if model_card is None:
        return
    if not isinstance(model_card, (bytes, bytearray)):
        raise ExportError(f"model_card must be the JSON bytes of {MODEL_CARD_FILE}, got {type(model_card).__name__}")
    try:
        json.loads(bytes(model_card).decode("utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ExportError(f"model_card is not valid JSON for {MODEL_CARD_FILE}: {e}") from None


def _with_metadata(model: bytes, source, stem, quantize, uint8_input, provenance, model_card, images,
                   expected, rgb_input=False) -> bytes:
    """``model`` with its TFLite metadata, after checking it still runs and gives ``expected``."""
    from can_tf import __version__

    threshold_set = source.threshold_set()
    names = list(source.class_names)
    image = ("one grayscale" if not rgb_input else
             "one RGB (converted to gray inside the model: 0.299 R + 0.587 G + 0.114 B; a gray radiograph "
             "as R = G = B)")
    description = (f"Cross-Attention Network (can-tf) for {len(names)} findings on frontal chest radiographs "
                   f"({', '.join(names)}). Multi-label: one independent sigmoid probability per finding; "
                   f"a finding is reported when its probability is >= its threshold in thresholds.json "
                   f"(0.5 without one). Input: {image} {source.image_size} x {source.image_size} image, "
                   f"raw pixel values 0-255 ({'uint8' if uint8_input else 'float32'}), resized antialiased "
                   f"bilinear (aspect: {source.aspect}). Weights: {quantize}.")
    warning = phantom_warning(provenance)
    if warning:
        description = f"{warning.strip('*')} {description}"
    origin = source.run_dir or source.model_path
    version = f"{Path(origin).name if origin else stem} (can-tf {__version__})"
    extra = {}
    if model_card is not None:
        extra[MODEL_CARD_FILE] = (bytes(model_card), "Model card (Model Card Toolkit JSON): training data, "
                                                     "evaluation, intended uses and limitations.")
    packed = add_metadata(model, class_names=names, name=stem, description=description, version=version,
                          author=METADATA_AUTHOR, license=METADATA_LICENSE,
                          input_dtype="uint8" if uint8_input else "float32", image_size=source.image_size,
                          channels=_input_channels(rgb_input),
                          thresholds=threshold_set.to_text() if threshold_set is not None else None,
                          associated_files=extra)
    # What is published is the packed file: it must load and compute exactly what was checked.
    actual = run_tflite(packed, images)
    if not np.array_equal(actual, expected):
        raise ExportError(f"the {quantize} TFLite model gives other outputs once its metadata is added (up to "
                          f"{float(np.max(np.abs(actual - expected))):.3g} apart); nothing was written")
    return packed
