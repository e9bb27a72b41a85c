"""The one place that runs a saved can-tf model: Keras, SavedModel or LiteRT (TFLite).

Contract: a :class:`Runtime` takes preprocessed images, float32 ``(B, S, S, 1)`` in [0, 255]
(what :mod:`can_tf.inputs` and the training pipeline produce; the model scales them itself), and
:meth:`Runtime.predict` returns float32 probabilities ``(B, C)``. Every runtime says what it runs:
``image_size`` (``S``), ``num_classes`` (``C``), ``input_dtype`` (what the model's input tensor
holds: float32, or uint8 / int8 for TFLite models that take integer pixels) and ``format``
(``"keras"``, ``"saved_model"`` or ``"tflite"``).

- :class:`KerasRuntime`: a ``.keras`` file or a model in memory; dict-of-logits training models are
  reduced to their fused probabilities by :func:`can_tf.models.inference_model`.
- :class:`SavedModelRuntime`: a SavedModel folder's ``serving_images`` signature; given a TF Serving
  base folder (numbered version folders), the highest version.
- :class:`LiteRTRuntime`: a ``.tflite`` file or flatbuffer bytes in ``ai_edge_litert``. The
  interpreter is resized only when the batch size changes; uint8/int8 inputs are quantised with
  the input tensor's ``(scale, zero_point)`` (an integer input of scale 0 takes raw pixels, rounded
  and clipped), integer outputs are dequantised. A model with an RGB input ``(1, S, S, 3)`` (the
  export's ``rgb_input`` variant, which converts to gray itself) gets the gray images as R = G = B.

:func:`open_runtime` picks the runtime for a path. Whatever cannot be loaded raises
:class:`~can_tf.errors.ModelFileError`, one line naming the path. Class names, thresholds and
other metadata are not the runtime's business: :class:`can_tf.predictor.Predictor` adds them.

Example:
    >>> import numpy as np
    >>> from can_tf.runtime import open_runtime, quantize
    >>> quantize(np.array([0.4, 127.5, 300.0], np.float32), np.uint8)  # raw pixels, scale 0
    array([  0, 128, 255], dtype=uint8)
    >>> runtime = open_runtime("exports/tflite/models/can_none.tflite")  # doctest: +SKIP
    >>> runtime.format, runtime.image_size, runtime.num_classes  # doctest: +SKIP
    ('tflite', 224, 14)
    >>> runtime.predict(np.zeros((2, 224, 224, 1), np.float32)).shape  # doctest: +SKIP
    (2, 14)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from can_tf.errors import ModelFileError

PathLike = Union[str, os.PathLike]

FORMATS = ("keras", "saved_model", "tflite")
SIGNATURE = "serving_images"


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message``: errors stay one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---- (de)quantisation -------------------------------------------------------------------------
def quantize(values: np.ndarray, dtype, quantization=(0.0, 0)) -> np.ndarray:
    """Float pixels -> what an input tensor of ``dtype`` holds.

    Float dtypes are a cast. Integer dtypes use ``(scale, zero_point)``; scale 0 (not quantised,
    e.g. the uint8 pixels a model casts itself) means raw values, rounded and clipped to the range.
    """
    dtype = np.dtype(dtype)
    values = np.asarray(values, np.float32)
    if np.issubdtype(dtype, np.floating):
        return values.astype(dtype)
    scale, zero_point = quantization
    if not scale:
        scale, zero_point = 1.0, 0
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, quantization=(0.0, 0)) -> np.ndarray:
    """An output tensor -> float32 (``(q - zero_point) * scale`` for quantised integer tensors)."""
    values = np.asarray(values)
    scale, zero_point = quantization
    if np.issubdtype(values.dtype, np.floating) or not scale:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


# ---- the runtimes -----------------------------------------------------------------------------
class Runtime:
    """Runs one model on images in [0, 255]; subclasses set the attributes and implement ``_run``."""

    format: str = ""
    path: str = ""
    image_size: Optional[int] = None
    num_classes: int = 0
    input_dtype = np.dtype(np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 ``(B, S, S, 1)`` in [0, 255] -> float32 probabilities ``(B, C)``.

        Raises:
            ValueError: the images are not ``(B, S, S, 1)`` (at ``image_size`` when it is known).
            can_tf.errors.DataError: they are not pixels in [0, 255] (NaN, inf, out of range;
                see :func:`can_tf.images.check_pixels`).
        """
        from can_tf.images import check_pixels

        images = np.asarray(images, dtype=np.float32)
        size = self.image_size
        if images.ndim != 4 or images.shape[-1] != 1 or (size and images.shape[1:3] != (size, size)):
            raise ValueError(f"images must have shape (B, {size or 'S'}, {size or 'S'}, 1), got {images.shape}")
        if len(images) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        return self._run(check_pixels(images))

    __call__ = predict

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FunctionRuntime(Runtime):
    """A plain function ``images -> probabilities`` as a runtime (tests, stand-ins)."""

    def __init__(self, fn: Callable, *, image_size: int, num_classes: int, format: str = ""):
        self._fn, self.image_size, self.num_classes, self.format = fn, int(image_size), int(num_classes), format

    def _run(self, images):
        return np.asarray(self._fn(images), dtype=np.float32)


def load_keras_model(path: PathLike, error: Optional[Callable[[str], Exception]] = None):
    """Loads a ``.keras`` file with can-tf's custom layers registered, without compiling it.

    Raises:
        ``error`` (default :class:`~can_tf.errors.ModelFileError`): ``cannot load the Keras model <path>: ...``.
    """
    import keras

    import can_tf.models  # noqa: F401  registers the custom layers and models for deserialisation

    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as e:  # Keras raises ValueError, TypeError, OSError, zipfile errors...
        message = f"cannot load the Keras model {path}: {_reason(e)}"
        raise (error or ModelFileError)(message) from None


class KerasRuntime(Runtime):
    """A Keras model (a ``.keras`` path or a model in memory); ``model`` is the loaded model.

    ``temperatures`` (per-class, from the run's ``calibration.json``) divide the fused logits before
    the sigmoid, inside the graph, as every export does it.
    """

    format = "keras"

    def __init__(self, model, temperatures=None):
        import tensorflow as tf

        from can_tf.models import inference_model

        if isinstance(model, (str, os.PathLike)):
            self.path = str(model)
            model = load_keras_model(model)
        self.model = model
        self.inference = inference_model(model, temperatures)
        self.image_size = int(self.inference.inputs[0].shape[1])
        self.num_classes = int(self.inference.outputs[0].shape[-1])
        self.input_dtype = np.dtype(getattr(self.inference.inputs[0], "dtype", "float32"))
        self._call = tf.function(lambda x: self.inference(x, training=False), reduce_retracing=True)

    def _run(self, images):
        return np.asarray(self._call(images), dtype=np.float32)


def latest_version(path: Path) -> Optional[Path]:
    """TF Serving layout: ``<base>/<version>/saved_model.pb``; the highest version, or None."""
    path = Path(path)
    if not path.is_dir():
        return None
    versions = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


class SavedModelRuntime(Runtime):
    """A SavedModel's ``serving_images`` signature (a TF Serving base folder: its highest version)."""

    format = "saved_model"

    def __init__(self, path: PathLike):
        import tensorflow as tf

        path = latest_version(Path(path)) or Path(path)
        self.path = str(path)
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ModelFileError(f"cannot load SavedModel {path}: {_reason(exc)}") from None
        if SIGNATURE not in loaded.signatures:
            raise ModelFileError(
                f"SavedModel {path} has no {SIGNATURE!r} signature (has: "
                f"{', '.join(loaded.signatures) or 'none'}); export it with `can-tf export`"
            )
        self._loaded = loaded  # keeps the signature's variables alive
        self._fn = loaded.signatures[SIGNATURE]
        (self._input_name, spec), = self._fn.structured_input_signature[1].items()
        outputs = self._fn.structured_outputs
        if "probabilities" not in outputs:
            raise ModelFileError(f"SavedModel {path}: signature {SIGNATURE!r} returns "
                                   f"{list(outputs)}, not 'probabilities'")
        self.num_classes = outputs["probabilities"].shape[-1]
        self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
        self._dtype = spec.dtype
        self.image_size = spec.shape[1] if spec.shape.rank == 4 else None
        if not self.image_size and "metadata" in loaded.signatures:
            # can-tf exports take any H x W and resize; the model's own size is in their metadata.
            metadata = loaded.signatures["metadata"]()
            if "image_size" in metadata:
                self.image_size = int(metadata["image_size"].numpy())

    def _run(self, images):
        import tensorflow as tf

        result = self._fn(**{self._input_name: tf.constant(images, dtype=self._dtype)})
        return np.asarray(result["probabilities"], dtype=np.float32)


class LiteRTRuntime(Runtime):
    """A TFLite model (a ``.tflite`` path or its flatbuffer bytes) in ``ai_edge_litert``.

    Args:
        model: the path or the bytes.
        num_threads: interpreter threads; default all CPUs.
    """

    format = "tflite"

    def __init__(self, model: Union[bytes, PathLike], num_threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter

        threads = num_threads or os.cpu_count() or 1
        in_memory = isinstance(model, (bytes, bytearray))
        self.path = f"<{len(model)} bytes in memory>" if in_memory else str(model)
        try:
            if in_memory:
                self._interpreter = Interpreter(model_content=bytes(model), num_threads=threads)
            else:
                self._interpreter = Interpreter(model_path=str(model), num_threads=threads)
        except Exception as exc:
            raise ModelFileError(f"cannot load TFLite model {self.path}: {_reason(exc)}") from None
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise ModelFileError(f"TFLite model {self.path} has {len(inputs)} inputs; expected one image tensor")
        self._input = inputs[0]
        outputs = self._interpreter.get_output_details()
        named = [o for o in outputs if "probabilities" in o["name"]]
        self._output = (named or outputs)[0]
        self.image_size = int(self._input["shape"][1])
        self.num_classes = int(self._output["shape"][-1])
        self.input_dtype = np.dtype(self._input["dtype"])
        shape = list(self._input["shape"])
        # 1 (gray) or 3 (RGB); anything else is refused when run, so ops() still reads any model.
        self.input_channels = int(shape[-1]) if len(shape) == 4 else 0
        self._batch = None  # the batch size the tensors are allocated for

    def ops(self) -> list:
        """The sorted op names the model runs (``DELEGATE`` excluded: that is the CPU delegate)."""
        return sorted({op["op_name"] for op in self._interpreter._get_ops_details()} - {"DELEGATE"})

    def _run(self, images):
        interpreter, spec = self._interpreter, self._input
        if self.input_channels == 3:
            images = np.repeat(images, 3, axis=-1)  # a gray image as RGB: R = G = B
        elif self.input_channels != 1:
            raise ModelFileError(f"TFLite model {self.path} takes input of shape {[int(d) for d in spec['shape']]}; "
                                 f"expected (1, S, S, 1) gray or (1, S, S, 3) RGB images")
        if self._batch != len(images):
            # Resizing the batch dimension re-plans the interpreter's memory; do it only on change.
            if self._batch is not None or len(images) != int(spec["shape"][0]):
                interpreter.resize_tensor_input(spec["index"], [len(images), *images.shape[1:]], strict=False)
            from can_tf.logs import native_logs_captured

            with native_logs_captured():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                interpreter.allocate_tensors()
            self._batch = len(images)
        interpreter.set_tensor(spec["index"], quantize(images, spec["dtype"], spec["quantization"]))
        interpreter.invoke()
        return dequantize(interpreter.get_tensor(self._output["index"]), self._output["quantization"])


_RUNTIMES = {"keras": KerasRuntime, "saved_model": SavedModelRuntime, "tflite": LiteRTRuntime}


def runtime_format(path: PathLike) -> str:
    """``"keras"``, ``"saved_model"`` or ``"tflite"`` for a model file or folder.

    Raises:
        ModelFileError: naming the path, when it is none of them.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or latest_version(path) is not None:
            return "saved_model"
        raise ModelFileError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
    if not path.exists():
        raise ModelFileError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix == ".tflite":
        return "tflite"
    raise ModelFileError(f"cannot tell the format of model {path}: expected a .keras file, a SavedModel "
                           f"folder or a .tflite file")


def open_runtime(path: PathLike, fmt: Optional[str] = None, **options) -> Runtime:
    """The runtime for ``path``; ``fmt`` (one of :data:`FORMATS`) defaults to what the path looks like.

    ``options`` go to the runtime (``num_threads`` for LiteRT).

    Raises:
        ModelFileError: one line naming the path, when it cannot be loaded.
    """
    fmt = fmt or runtime_format(path)
    if fmt not in _RUNTIMES:
        raise ValueError(f"unknown model format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not Path(path).exists():
        raise ModelFileError(f"model not found: {path}")
    return _RUNTIMES[fmt](path, **options)
