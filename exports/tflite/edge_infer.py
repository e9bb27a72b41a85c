"""Runs a can-tf ``.tflite`` model on chest radiographs: ai-edge-litert, numpy and Pillow only.

Reads ``labels.txt`` and ``thresholds.json`` from inside the model when it carries them (a can-tf
export packs them as its TFLite metadata's associated files: the ``.tflite`` is also a ZIP
archive), else from the model's folder, and ``<model stem>.json`` from the model's folder when
present; turns each image into what the model was trained on, feeds it as uint8 or float32 pixels
in [0, 255] as the model's input says (a model with an RGB input, the ``_rgb`` export for the LiteRT
Task Library, gets the gray image as R = G = B and converts it back itself), and prints the
findings (``--json``: one JSON object a line; the threshold source is named in each result). PNG, JPEG and (with ``pip install pydicom``)
DICOM files are recognised by their first bytes, not their names.

Preprocessing follows can-tf's TensorFlow pipeline as closely as numpy and Pillow allow: one float
luminance channel (``0.299 R + 0.587 G + 0.114 B``; gray and gray+alpha keep their first channel;
alpha is dropped; 16-bit PNGs scaled by 255/65535), the export's aspect policy (``stretch``,
``pad`` or ``crop``), an antialiased bilinear resize to the model's square input, rounded to
[0, 255]. Pillow's resize is close to, not bit-identical with, TensorFlow's.

Each file is checked before it is decoded: empty, not an image, truncated, or a header claiming
more than ``max_pixels`` pixels (a "decompression bomb") is refused with its reason, and the other
files are still run. The exit status is 1 when any file could not be read.

Usage::

    pip install ai-edge-litert numpy pillow
    python edge_infer.py can_int8_uint8.tflite xray.png xray2.jpg
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 40_000_000
ASPECTS = ("stretch", "pad", "crop")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its fixed CRC: the last 8 bytes of a whole PNG
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL_BYTES = 1024  # some writers append padding after the end-of-image marker
_DICOM_MAGIC_OFFSET = 128

# The same reasons as the can-tf library, `can-tf predict` and the TF Serving signature.
EMPTY_FILE = "empty file"
NOT_AN_IMAGE = "not a PNG, JPEG or DICOM image"
TRUNCATED_PNG = "truncated PNG (the file ends before its IEND chunk)"
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker)"
TOO_LARGE = "image too large: {height} x {width} = {pixels} pixels, over the limit of {max_pixels}"
NEEDS_PYDICOM = "DICOM needs pydicom (pip install pydicom)"

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as can-tf's pipeline uses them
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageRefused(Exception):
    """An image file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UsageError(Exception):
    """The model or its companion files cannot be used (one ``error:`` line, exit 1)."""


# ---- checking and decoding -------------------------------------------------------------------
def image_kind(path: Path) -> str:
    """``"PNG"``, ``"JPEG"`` or ``"DICOM"`` from the file's bytes; raises :class:`ImageRefused`."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageRefused("file not found") from None
    except OSError as exc:
        raise ImageRefused(f"cannot access file ({exc.strerror or exc})") from None
    if not path.is_file():
        raise ImageRefused("not a regular file")
    if size == 0:
        raise ImageRefused(EMPTY_FILE)
    try:
        with open(path, "rb") as f:
            head = f.read(_DICOM_MAGIC_OFFSET + 4)
            f.seek(max(0, size - _JPEG_TAIL_BYTES))
            tail = f.read()
    except OSError as exc:
        raise ImageRefused(f"cannot read file ({exc.strerror or exc})") from None
    if head.startswith(_PNG_SIGNATURE):
        if not tail.endswith(_PNG_IEND):
            raise ImageRefused(TRUNCATED_PNG)
        return "PNG"
    if head.startswith(_JPEG_SOI):
        if _JPEG_EOI not in tail:
            raise ImageRefused(TRUNCATED_JPEG)
        return "JPEG"
    if head[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "DICOM"
    raise ImageRefused(NOT_AN_IMAGE)


def check_size(height: int, width: int, max_pixels: int) -> None:
    pixels = int(height) * int(width)
    if pixels > max_pixels:
        raise ImageRefused(TOO_LARGE.format(height=int(height), width=int(width), pixels=pixels,
                                            max_pixels=int(max_pixels)))


def _pillow_gray(path: Path, kind: str, max_pixels: int) -> np.ndarray:
    """A PNG/JPEG as float32 ``(H, W)`` luminance in [0, 255], its size checked before decoding."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit, below, names the size; Pillow's would pre-empt it
    try:
        image = Image.open(path, formats=[kind])  # reads the header only
    except Exception as exc:  # PIL raises many types (SyntaxError, OSError, ValueError, zlib.error)
        raise ImageRefused(f"corrupt {kind} ({str(exc) or type(exc).__name__})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    with image:
        width, height = image.size
        check_size(height, width, max_pixels)
        try:
            image.load()
        except Exception as exc:
            raise ImageRefused(f"corrupt {kind} ({str(exc) or type(exc).__name__})") from None
        return _to_gray(image)


def _to_gray(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.dtype.kind == "i" or values.dtype.itemsize > 2:
            values = np.clip(values, 0, 65535)  # mode "I" is 32-bit; from a PNG it holds 16-bit samples
        return values.astype(np.float32) * np.float32(255.0 / 65535.0)
    if mode == "1":
        image, mode = image.convert("L"), "L"
    if mode in ("L", "LA"):
        return np.asarray(image.getchannel(0), dtype=np.float32)
    if mode in ("P", "PA"):
        image, mode = image.convert("RGBA"), "RGBA"
    elif mode == "YCbCr":
        image, mode = image.convert("RGB"), "RGB"
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(image, dtype=np.float32)[..., :3]  # alpha dropped, not composited
        return rgb[..., 0] * np.float32(_LUMA[0]) + rgb[..., 1] * np.float32(_LUMA[1]) \
            + rgb[..., 2] * np.float32(_LUMA[2])
    raise ImageRefused(f"unsupported colour mode {mode!r}")


def _dicom_gray(path: Path, max_pixels: int) -> np.ndarray:
    """A DICOM radiograph as a viewer shows it, float32 ``(H, W)`` in [0, 255] (whole numbers)."""
    try:
        import pydicom
    except ImportError:
        raise ImageRefused(NEEDS_PYDICOM) from None
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    try:
        dataset = pydicom.dcmread(str(path))
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except Exception as exc:
        raise ImageRefused(f"corrupt DICOM ({type(exc).__name__}: {exc})") from None
    check_size(rows, columns, max_pixels)
    try:
        pixels = dataset.pixel_array
    except Exception as exc:
        raise ImageRefused(f"corrupt DICOM ({type(exc).__name__}: {exc})") from None
    if int(getattr(dataset, "SamplesPerPixel", 1)) != 1 or pixels.ndim != 2:
        raise ImageRefused(f"not a single-frame grayscale DICOM image (pixel array of shape {pixels.shape}, "
                           f"{getattr(dataset, 'PhotometricInterpretation', '?')})")
    values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset, index=0).astype(np.float64)
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ImageRefused(f"{bad} of {values.size} DICOM pixel values are not finite (NaN or inf)")
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 255.0 - scaled  # high values are dark in MONOCHROME1
    return np.round(scaled).astype(np.float32)


def load_gray(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as float32 ``(H, W)`` luminance in [0, 255]; raises :class:`ImageRefused`."""
    path = Path(path)
    kind = image_kind(path)
    if kind == "DICOM":
        return _dicom_gray(path, max_pixels)
    return _pillow_gray(path, kind, max_pixels)


def apply_aspect(gray: np.ndarray, aspect: str) -> np.ndarray:
    """``stretch``: as it is; ``pad``: centred on a black square; ``crop``: the centre square."""
    height, width = gray.shape
    if aspect == "stretch" or height == width:
        return gray
    if aspect == "pad":
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        square = np.zeros((side, side), np.float32)
        square[top:top + height, left:left + width] = gray
        return square
    if aspect == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return gray[top:top + side, left:left + side]
    raise ValueError(f"aspect must be one of {', '.join(ASPECTS)}; got {aspect!r}")


def preprocess(path, size: int, dtype=np.float32, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               aspect: str = "stretch") -> np.ndarray:
    """``(1, size, size, 1)`` pixels in [0, 255] of ``dtype`` (uint8 or float32).

    Raises:
        ImageRefused: the file cannot be used; ``.reason`` says why.
    """
    gray = apply_aspect(load_gray(path, max_pixels=max_pixels), aspect)
    if gray.shape != (size, size):
        # Pillow's bilinear filter widens its support when downscaling: an antialiased resize,
        # like tf.image.resize(antialias=True). Mode "F" keeps the float values.
        resized = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32)).resize((size, size), Image.BILINEAR)
        gray = np.asarray(resized, dtype=np.float32)
    pixels = np.clip(np.round(gray), 0.0, 255.0)[None, :, :, None]
    return pixels.astype(np.uint8) if np.dtype(dtype) == np.uint8 else pixels.astype(np.float32)


# ---- the model ---------------------------------------------------------------------------------
def _quantisation(detail) -> tuple:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)


def to_input_tensor(pixels: np.ndarray, detail) -> np.ndarray:
    """Float pixels as the model's input tensor: quantised for an int8/uint8 input with a scale."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = _quantisation(detail)
    if dtype in (np.int8, np.uint8) and scale != 0:
        info = np.iinfo(dtype)
        values = np.round(pixels.astype(np.float32) / scale + zero_point)
        return np.clip(values, info.min, info.max).astype(dtype)
    return pixels.astype(dtype)


def from_output_tensor(values: np.ndarray, detail) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = _quantisation(detail)
    if dtype in (np.int8, np.uint8) and scale != 0:
        return (values.astype(np.float64) - zero_point) * scale
    return values.astype(np.float64)


def read_metadata(model_path: Path) -> dict:
    """``max_pixels`` and ``aspect`` from ``<stem>.json`` beside the model (defaults when absent)."""
    path = model_path.with_suffix(".json")
    settings = {"max_pixels": DEFAULT_MAX_PIXELS, "aspect": "stretch"}
    if not path.is_file():
        return settings
    try:
        metadata = json.loads(path.read_text())
        given = metadata.get("input") or {}
        # Absent (older exports) or null: the default limit; an edge device always keeps one.
        settings["max_pixels"] = int(given.get("max_pixels") or DEFAULT_MAX_PIXELS)
        settings["aspect"] = str(given.get("aspect") or "stretch")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"cannot read the model's metadata {path}: {exc}") from None
    if settings["aspect"] not in ASPECTS:
        raise UsageError(f"{path}: input.aspect must be one of {', '.join(ASPECTS)}; got {settings['aspect']!r}")
    return settings


def packed_files(model_path: Path, names=("labels.txt", "thresholds.json")) -> dict:
    """``{name: bytes}`` of the files among ``names`` packed in the model (its TFLite metadata's
    associated files, a ZIP archive after the flatbuffer); {} for a model without them."""
    try:
        archive = zipfile.ZipFile(model_path)
    except zipfile.BadZipFile:  # a plain flatbuffer: no metadata files
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read {model_path}: {exc.strerror or exc}") from None
    try:
        with archive:
            present = set(archive.namelist())
            return {name: archive.read(name) for name in names if name in present}
    except Exception as exc:  # a damaged archive: bad CRC (a BadZipFile too), truncated member
        raise UsageError(f"cannot read the files packed in {model_path}: {type(exc).__name__}: {exc}") from None


def parse_thresholds(text: str, where) -> dict:
    try:
        values = json.loads(text)
        return {k: float(v) for k, v in values.get("thresholds", {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"cannot read {where}: {exc}") from None


def read_thresholds(folder: Path) -> dict:
    path = folder / "thresholds.json"
    if not path.is_file():
        return {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return parse_thresholds(text, path)


class Model:
    """A loaded ``.tflite`` model with its labels, thresholds and preprocessing settings."""

    def __init__(self, model_path: Path, threads: int = 2, max_pixels=None):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise UsageError(f"cannot load model {model_path}: file not found")
        # Files packed in the model belong to it; the ones beside it may be another model's.
        packed = packed_files(model_path)
        labels_path = model_path.parent / "labels.txt"
        if "labels.txt" in packed:
            labels_path = f"labels.txt in {model_path}"
            try:
                self.labels = packed["labels.txt"].decode("utf-8").split()
            except UnicodeDecodeError as exc:
                raise UsageError(f"cannot read {labels_path}: {exc}") from None
        else:
            try:
                self.labels = labels_path.read_text().split()
            except OSError as exc:
                raise UsageError(f"cannot read {labels_path} (the class names, beside the model): "
                                 f"{exc.strerror or exc}") from None
        if "thresholds.json" in packed:
            self.thresholds = parse_thresholds(packed["thresholds.json"].decode("utf-8", "replace"),
                                               f"thresholds.json in {model_path}")
            self.thresholds_source = "thresholds.json in the model"
        else:
            self.thresholds = read_thresholds(model_path.parent)
            self.thresholds_source = "thresholds.json"
        settings = read_metadata(model_path)
        self.aspect = settings["aspect"]
        self.max_pixels = settings["max_pixels"] if max_pixels is None else int(max_pixels)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UsageError("edge_infer needs ai-edge-litert: pip install ai-edge-litert") from None
        try:
            with _runtime_log_hidden() as hidden:  # LiteRT's "INFO: Created ... XNNPACK delegate" line
                self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except Exception as exc:  # not a flatbuffer, unsupported ops, ...
            log = " ".join("".join(hidden).split())
            raise UsageError(f"cannot load model {model_path}: {type(exc).__name__}: {exc}"
                             + (f" (LiteRT: {log})" if log else "")) from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UsageError(f"{model_path}: expected one input and one output, "
                             f"got {len(inputs)} and {len(outputs)}")
        (self.input,), (self.output,) = inputs, outputs
        _, height, width, channels = (list(self.input["shape"]) + [0, 0, 0, 0])[:4]
        if len(self.input["shape"]) != 4 or height != width or channels not in (1, 3):
            raise UsageError(f"{model_path}: expected a (1, S, S, 1) or (1, S, S, 3) input, "
                             f"got {[int(d) for d in self.input['shape']]}")
        self.size, self.channels = int(height), int(channels)
        num_outputs = int(self.output["shape"][-1])
        if num_outputs != len(self.labels):
            raise UsageError(f"{model_path} has {num_outputs} outputs but {labels_path} lists {len(self.labels)}")
        pixel_dtype = np.dtype(self.input["dtype"])
        self.pixel_dtype = np.uint8 if pixel_dtype == np.uint8 and _quantisation(self.input)[0] == 0 else np.float32

    def predict(self, image_path) -> dict:
        """Runs the model on one image; raises :class:`ImageRefused` for a file it cannot use."""
        pixels = preprocess(image_path, self.size, self.pixel_dtype, max_pixels=self.max_pixels, aspect=self.aspect)
        if self.channels == 3:
            pixels = np.repeat(pixels, 3, axis=-1)  # gray as RGB: the model's luminance gives it back
        start = time.perf_counter()
        self.interpreter.set_tensor(self.input["index"], to_input_tensor(pixels, self.input))
        self.interpreter.invoke()
        probabilities = from_output_tensor(self.interpreter.get_tensor(self.output["index"])[0], self.output)
        elapsed_ms = (time.perf_counter() - start) * 1000
        return {
            "image": str(image_path),
            "probabilities": dict(zip(self.labels, probabilities.tolist())),
            "findings": [label for label, p in zip(self.labels, probabilities)
                         if p >= self.thresholds.get(label, 0.5)],
            "thresholds": self.thresholds_source if self.thresholds else "0.5 (no thresholds.json)",
            "inference_ms": elapsed_ms,
        }


def run(model_path: Path, image_path: Path, threads: int = 2) -> dict:
    """Runs the model on one image (loads the model each call; :class:`Model` for many)."""
    return Model(model_path, threads).predict(image_path)


# ---- command line ------------------------------------------------------------------------------
@contextlib.contextmanager
def _runtime_log_hidden():
    """File descriptor 2 (where LiteRT's C++ code logs) sent to a temporary file inside the block;
    yields a list that holds the captured text afterwards, for the message when the block failed."""
    sys.stderr.flush()
    saved, captured = os.dup(2), []
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            captured.append(log.read())


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result), flush=True)
        return
    print(f"{result['image']}  ({result['inference_ms']:.1f} ms; threshold {result['thresholds']})")
    for label, p in sorted(result["probabilities"].items(), key=lambda kv: -kv[1]):
        print(f"  {label:<20} {p:.3f}{'  <- finding' if label in result['findings'] else ''}")
    sys.stdout.flush()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Chest X-ray findings from a can-tf .tflite model.")
    parser.add_argument("model", type=Path, help=".tflite file (labels.txt and thresholds.json packed in it, "
                                                 "else beside it)")
    parser.add_argument("images", type=Path, nargs="+", help="PNG, JPEG or DICOM radiographs")
    parser.add_argument("--threads", type=_positive_int, default=2)
    parser.add_argument("--json", action="store_true",
                        help="print JSON, one object per image ({'image', 'error'} for a file that cannot be read)")
    parser.add_argument("--max-pixels", type=_positive_int, default=None,
                        help="refuse images whose header claims more pixels (default: the model's "
                             f"metadata, else {DEFAULT_MAX_PIXELS})")
    args = parser.parse_args(argv)
    try:
        model = Model(args.model, args.threads, args.max_pixels)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # never a traceback
        print(f"error: {args.model}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    failed = 0
    for image_path in args.images:
        try:
            result = model.predict(image_path)
        except ImageRefused as exc:
            failed += 1
            error, line = exc.reason, f"error: cannot read image {image_path}: {exc.reason}"
        except Exception as exc:  # never a traceback: name the file and go on with the others
            failed += 1
            error = f"internal error: {type(exc).__name__}: {exc}"
            line = f"error: {image_path}: {error}"
        else:
            _print_result(result, args.json)
            continue
        if args.json:
            print(json.dumps({"image": str(image_path), "error": error}), flush=True)
        print(line, file=sys.stderr, flush=True)
    if failed:
        print(f"{failed} of {len(args.images)} images could not be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
