"""The one door for images: every radiograph reaches a can-tf model through this module.

Training (the tf.data pipeline), ``predict``/``explain``/``evaluate``, the SavedModel's serving
signatures and the TFLite export check all read, check, decode and resize images here, so a file
gives the same pixels and a bad file the same reason everywhere. (``exports/tflite/edge_infer.py``
runs on devices without can-tf; it follows the same rules with Pillow and the tests hold it to the
same reasons.)

The rules:

- **Kinds by content, not by name**: PNG (8 or 16 bit), JPEG and DICOM are told apart by their first
  bytes, so a JPEG named ``.png`` is read as the JPEG it is and an HTML page named ``.png`` is refused
  as ``not a PNG, JPEG or DICOM image``. Suffixes only serve to find images in a folder
  (:data:`IMAGE_SUFFIXES`).
- **Checked before decoding**, from the file's bytes alone: an empty file, an unknown kind, a PNG
  that ends before its ``IEND`` chunk, a JPEG without its end-of-image marker, and an image whose
  header claims more than ``max_pixels`` pixels (a decompression bomb: a 164 kB PNG can claim
  13000 x 13000 pixels, 0.9 GB decoded) are refused with the reasons in :data:`REASONS`.
  ``max_pixels`` is ``data.max_pixels`` of the config (default :data:`DEFAULT_MAX_PIXELS`), stored
  with the model and used by training, ``predict``, the serving signature and the edge script.
- **Decoded once**: PNG and JPEG by ``tf.io`` (:func:`decode_gray`; JPEG with the accurate integer
  IDCT, so that Pillow on a device decodes the same pixels), DICOM by pydicom
  (:func:`render_dicom`, modality then VOI LUT, stretched to 0..255, MONOCHROME1 inverted), each
  straight to float gray pixels.
- **Gray values**: colour becomes ITU-R 601 luminance (``0.299 R + 0.587 G + 0.114 B``, what
  ``PIL.Image.convert("L")`` computes), alpha is dropped, not composited (an exported radiograph with
  alpha is opaque anyway); 16-bit samples are scaled by the type's range, ``v * 255 / 65535``, not by
  the image's own maximum, so the same file always gives the same values.
- **Non-square images** follow ``data.aspect`` (:data:`ASPECTS`), chosen once in the config and
  stored with the model: ``stretch`` (the default; NIH images are square and other chest films are
  close to it, aspect 0.8-1.25), ``pad`` (centred on a black square of the longer side) or
  ``crop`` (the centred square of the shorter side). Padding adds black bars a network can learn
  from; cropping can cut off an apex or a costophrenic angle, where findings sit; so stretch is the
  default.
- **Resizing** is bilinear with antialiasing (plain bilinear on a 4-16x downscale aliases rib edges
  and small nodules), then values are rounded and clipped to [0, 255]. Images leave the door as
  float32 ``(S, S, 1)`` in [0, 255]; the model applies its backbone's own scaling.
- **Pixel arrays** handed in directly (the Python API, ``serving_images``) pass :func:`check_pixels`:
  NaN or inf, and arrays that look wrongly scaled ([0, 1], [-1, 1], 12-bit), are refused, naming
  the image (torchxrayvision's most repeated user problem is silent wrong normalisation).

Example:
    >>> from can_tf.images import read_header, too_large
    >>> read_header(b"")
    Traceback (most recent call last):
    ...
    can_tf.errors.ImageError: cannot read image <bytes>: empty file
    >>> too_large(13000, 13000, 40_000_000)
    'image too large: 13000 x 13000 = 169000000 pixels, over the limit of 40000000'
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from can_tf.errors import DataError, ImageError

PathLike = Union[str, os.PathLike]

# 40 megapixels: twice a 4300 x 4300 detector, the largest digital radiographs. A PNG is decoded as
# uint16 and converted to float32, so an RGBA image at the limit still needs under 1 GB.
DEFAULT_MAX_PIXELS = 40_000_000
ASPECTS = ("stretch", "pad", "crop")
KINDS = ("PNG", "JPEG", "DICOM")
# Only to find images in a folder; a file's kind is always read from its first bytes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DICOM_EXTRA_HINT = "pip install 'can-tf[dicom]'"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk's type and fixed CRC: the last 8 bytes of a whole PNG
JPEG_SOI = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
JPEG_TAIL_BYTES = 1024  # writers may append padding or metadata after the end-of-image marker
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128  # DICOM Part 10 files carry "DICM" after a 128-byte preamble
_PNG_BIT_DEPTH_OFFSET = 24  # signature (8) + IHDR length (4) + type (4) + width (4) + height (4)
# JPEG start-of-frame markers (baseline, progressive, lossless...): they carry the image size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL.Image.convert("L")

EMPTY = "empty file"
NOT_AN_IMAGE = "not a PNG, JPEG or DICOM image"
TRUNCATED_PNG = "truncated PNG (the file ends before its IEND chunk)"
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker)"
DICOM_NOT_SERVED = "DICOM is not accepted by serving_default (send PNG or JPEG)"
TOO_LARGE = "image too large: {} x {} = {} pixels, over the limit of {}"
# The reasons every runtime gives in the same words (file-level; decoding errors add the decoder's).
REASONS = (EMPTY, NOT_AN_IMAGE, TRUNCATED_PNG, TRUNCATED_JPEG, TOO_LARGE)


def too_large(height: int, width: int, max_pixels: int) -> str:
    """The refusal of an image whose header claims more than ``max_pixels`` pixels."""
    return TOO_LARGE.format(int(height), int(width), int(height) * int(width), int(max_pixels))


def reason_in(message: str) -> Optional[str]:
    """The reason inside a TensorFlow error from the serving signature (``assertion failed: [...]``).

    Example:
        >>> reason_in("Graph execution error: ... assertion failed: [empty file] [[{{node Assert}}]]")
        'empty file'
        >>> reason_in("assertion failed: [pixels must be in [0, 255]] [[{{node Assert}}]]")
        'pixels must be in [0, 255]'
    """
    # The reason may hold brackets itself ("[0, 255]"): it ends where TensorFlow's node list starts.
    match = re.search(r"assertion failed: \[(.*?)\](?=\s*\[\[|\s*$)", str(message), flags=re.S)
    if match is None:  # eager execution words it differently
        match = re.search(r"Summarized data: b['\"](.*?)['\"]\s*$", str(message), flags=re.S | re.M)
    return match.group(1) if match else None


def check_aspect(aspect: str) -> str:
    if aspect not in ASPECTS:
        raise ValueError(f"aspect must be one of {', '.join(ASPECTS)}; got {aspect!r}")
    return aspect


# ---- the header: kind, size and completeness, before any decoding ---------------------------------
@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What a file's bytes say before decoding."""

    kind: str  # one of KINDS
    height: int
    width: int
    channels: int  # as stored (PNG colour type, JPEG components); 1 for DICOM
    bit_depth: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def sniff(data: bytes) -> Optional[str]:
    """``"PNG"``, ``"JPEG"``, ``"DICOM"`` or None from a file's first bytes (its magic number)."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SOI):
        return "JPEG"
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return "DICOM"
    return None


def read_header(data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, path: str = "<bytes>") -> ImageHeader:
    """Checks a whole file's bytes without decoding its pixels; returns its header.

    Raises:
        ImageError: ``path`` and one of :data:`REASONS`, or ``corrupt <kind> (...)`` /
            ``unsupported <kind> (...)`` when the header itself is unusable.
    """
    if not data:
        raise ImageError(path, EMPTY)
    kind = sniff(data)
    if kind is None:
        raise ImageError(path, NOT_AN_IMAGE)
    if kind == "PNG":
        if not data.endswith(PNG_IEND):
            raise ImageError(path, TRUNCATED_PNG)
        header = _png_header(data, path)
    elif kind == "JPEG":
        if JPEG_EOI not in data[-JPEG_TAIL_BYTES:]:
            raise ImageError(path, TRUNCATED_JPEG)
        header = _jpeg_header(data, path)
    else:
        header = _dicom_header(data, path)
    if header.height < 1 or header.width < 1:
        raise ImageError(path, f"corrupt {kind} (its header says {header.height} x {header.width} pixels)")
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageError(path, too_large(header.height, header.width, max_pixels))
    return header


def _png_header(data: bytes, path: str) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError(path, "corrupt PNG (no IHDR chunk after the signature)")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, colour_type = data[24], data[25]
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour_type)
    if channels is None:
        raise ImageError(path, f"corrupt PNG (colour type {colour_type})")
    return ImageHeader("PNG", height, width, channels, bit_depth)


def _jpeg_header(data: bytes, path: str) -> ImageHeader:
    i, n = 2, len(data)
    while i + 3 < n:
        if data[i] != 0xFF:
            raise ImageError(path, "corrupt JPEG (marker expected in its header)")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 10 > n:
                break
            height, width = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            components = data[i + 9]
            if components not in (1, 3):
                raise ImageError(path, f"unsupported JPEG ({components} colour components; gray or RGB expected)")
            return ImageHeader("JPEG", height, width, components, data[i + 4])
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + length
    raise ImageError(path, "corrupt JPEG (no frame header)")


def _dicom_header(data: bytes, path: str) -> ImageHeader:
    pydicom = _pydicom(path)
    import io

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageError(path, f"corrupt DICOM ({type(exc).__name__}: {exc})") from None
    samples = int(getattr(dataset, "SamplesPerPixel", 1))
    if samples != 1 or int(getattr(dataset, "NumberOfFrames", 1) or 1) != 1:
        raise ImageError(path, f"unsupported DICOM (expected a single-frame grayscale image, got "
                               f"{samples} samples per pixel, {getattr(dataset, 'NumberOfFrames', 1)} frames)")
    return ImageHeader("DICOM", rows, columns, 1, int(getattr(dataset, "BitsStored", 16)))


def _pydicom(path: str):
    try:
        import pydicom
    except ImportError:
        raise ImageError(path, f"DICOM needs pydicom: {DICOM_EXTRA_HINT}") from None
    return pydicom


def read_file(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> tuple:
    """``(bytes, ImageHeader)`` of an image file, checked as :func:`read_header` does.

    Raises:
        ImageError: naming the file (``file not found``, ``cannot read file (...)``, or a header reason).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "not a regular file") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from None
    return data, read_header(data, max_pixels, str(path))


# ---- many files at once: data check and the pipeline's up-front scan --------------------------
def verify_image(path: PathLike, *, decode: bool = False,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Optional[str]:
    """None when ``path`` is a usable image, else the reason (a fraction of a millisecond a file).

    The header checks of :func:`read_header`, and for PNG every chunk's CRC (``PIL.Image.verify``,
    which does not decompress). ``decode=True`` also decodes the pixels, which catches the rare
    corrupt-but-checksummed file at several times the cost.

    Example:
        >>> verify_image("does/not/exist.png")
        'file not found'
    """
    try:
        data, header = read_file(path, max_pixels)
        if header.kind == "PNG":
            _check_png_crcs(data, str(path))
        if decode:
            decode_file(data, header, str(path))
    except ImageError as exc:
        return exc.reason
    return None


def _check_png_crcs(data: bytes, path: str) -> None:
    import io

    from PIL import Image  # lazy: keeps `import can_tf.images` light

    Image.MAX_IMAGE_PIXELS = None  # our own limit has been checked; Pillow's would pre-empt it
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as exc:  # Pillow raises SyntaxError, OSError, ValueError, zlib.error...
        raise ImageError(path, f"corrupt PNG ({type(exc).__name__}: {exc})") from None


def scan_images(paths: Iterable[PathLike], *, decode: bool = False, workers: Optional[int] = None,
                max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> dict:
    """Runs :func:`verify_image` over many files in a thread pool; returns ``{path: reason}``.

    Only bad files are in the result, keyed by the path as given. Threads help: the work is mostly
    file I/O and zlib, which release the GIL.

    Example:
        >>> scan_images(["missing.png"])
        {'missing.png': 'file not found'}
    """
    paths = list(paths)
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) + 2)

    def check(p):
        return verify_image(p, decode=decode, max_pixels=max_pixels)

    if len(paths) < 64 or workers <= 1:
        reasons = [check(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(check, paths, chunksize=32))
    return {p: r for p, r in zip(paths, reasons) if r is not None}


# ---- decoding (once) ---------------------------------------------------------------------------
def render_dicom(data: bytes, path: str = "<bytes>") -> np.ndarray:
    """A DICOM file's bytes as float32 ``(H, W)`` gray in 0..255 (whole numbers), as a viewer shows it.

    The modality LUT (rescale slope/intercept), then the VOI LUT or window, stretched to 0..255;
    MONOCHROME1 (high values dark) is inverted so that bone is bright as in every other input.

    Raises:
        ImageError: pydicom missing (with the install command), a broken file, or non-finite values.
    """
    pydicom = _pydicom(path)
    import io

    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageError(path, f"corrupt DICOM ({type(exc).__name__}: {exc})") from None
    if pixels.ndim != 2:
        raise ImageError(path, f"unsupported DICOM (pixel array of shape {pixels.shape}; one gray frame expected)")
    values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset, index=0).astype(np.float64)
    # Float Pixel Data may hold NaN/inf: stretched to 0..255 it would silently turn the image black.
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ImageError(path, f"{bad} of {values.size} pixel values are not finite (NaN or inf)")
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 255.0 - scaled
    # Whole grey levels, as an 8-bit display (and every PNG or JPEG) gives them.
    return np.round(scaled).astype(np.float32)


def decode_file(data: bytes, header: ImageHeader, path: str = "<bytes>"):
    """A checked file's bytes as float32 gray ``(H, W, 1)`` (a tensor), decoded once."""
    import tensorflow as tf

    if header.kind == "DICOM":
        return tf.constant(render_dicom(data, path)[..., None])
    try:
        return _eager_decoder()(tf.constant(data))
    except tf.errors.OpError as exc:
        detail = (exc.message or str(exc)).strip().splitlines()[0]
        raise ImageError(path, f"corrupt {header.kind} ({detail})") from None


@functools.lru_cache(maxsize=None)
def _eager_decoder():
    import tensorflow as tf

    return tf.function(decode_gray, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


def decode_gray(contents, path=""):
    """Encoded PNG/JPEG bytes -> float32 ``(H, W, 1)`` luminance in [0, 255] (graph-compatible).

    ``path`` only names the file in the error raised when the bytes are neither PNG nor JPEG.
    """
    import tensorflow as tf

    is_png = tf.equal(tf.strings.substr(contents, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, len(JPEG_SOI)), JPEG_SOI)
    check = tf.debugging.Assert(tf.logical_or(is_png, is_jpeg), [NOT_AN_IMAGE, path])

    def png16():
        return tf.cast(tf.io.decode_png(contents, channels=0, dtype=tf.uint16), tf.float32) * (255.0 / 65535.0)

    def png8():  # ~15% faster than decoding every PNG as 16-bit
        return tf.cast(tf.io.decode_png(contents, channels=0), tf.float32)

    def png():
        # The IHDR chunk's bit depth byte sits at a fixed offset in every PNG.
        sixteen_bit = tf.equal(tf.strings.substr(contents, _PNG_BIT_DEPTH_OFFSET, 1), b"\x10")
        return tf.cond(sixteen_bit, png16, png8)

    def jpeg():
        # The accurate integer IDCT, as libjpeg's default and Pillow's: TensorFlow's own default (the
        # fast IDCT) differs from Pillow by up to 12 grey levels, so the edge script would see other pixels.
        return tf.cast(tf.io.decode_jpeg(contents, channels=0, dct_method="INTEGER_ACCURATE"), tf.float32)

    with tf.control_dependencies([check]):
        image = tf.cond(is_png, png, jpeg)
    gray = to_gray(image)
    gray.set_shape([None, None, 1])
    return gray


def to_gray(image):
    """float32 pixels ``(..., H, W, C)``, C of 1-4 -> ``(..., H, W, 1)`` luminance (graph-compatible).

    RGB and RGBA become the weighted sum of R, G, B (alpha ignored); gray and gray+alpha keep their
    first channel.
    """
    import tensorflow as tf

    def luminance():
        return tf.reduce_sum(image[..., :3] * tf.constant(_LUMA, tf.float32), axis=-1, keepdims=True)

    return tf.cond(tf.shape(image)[-1] >= 3, luminance, lambda: image[..., :1])


# ---- geometry: aspect policy and resize ---------------------------------------------------------
def apply_aspect(gray, aspect: str = "stretch"):
    """Gray pixels ``(..., H, W, 1)`` made square by ``aspect`` (graph-compatible; see the module doc).

    ``pad`` centres the image on a black square of side ``max(H, W)`` (the extra row or column, if
    odd, goes below or right); ``crop`` keeps the centred ``min(H, W)`` square (offset rounded down);
    ``stretch`` returns the pixels unchanged for the resize to stretch.
    """
    import tensorflow as tf

    check_aspect(aspect)
    if aspect == "stretch":
        return gray
    shape = tf.shape(gray)
    height, width = shape[-3], shape[-2]
    if aspect == "crop":
        side = tf.minimum(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return gray[..., top:top + side, left:left + side, :]
    side = tf.maximum(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    rank = tf.rank(gray)
    paddings = tf.concat([tf.zeros([rank - 3, 2], tf.int32),
                          [[top, side - height - top], [left, side - width - left], [0, 0]]], axis=0)
    return tf.pad(gray, paddings)


def aspect_window(height: int, width: int, aspect: str) -> tuple:
    """``(top, left, side)``: where the square the model sees lies in the decoded image's pixels.

    ``crop``: the kept square (offsets >= 0); ``pad``: the black-bordered square (offsets <= 0);
    ``stretch``: None, as the image is scaled by a different factor on each axis. A point ``(x, y)``
    of the file (a box corner, say) is at ``(x - left, y - top)`` of that square.

    Example:
        >>> aspect_window(400, 512, "pad"), aspect_window(400, 512, "crop")
        ((-56, 0, 512), (0, 56, 400))
    """
    check_aspect(aspect)
    if aspect == "stretch":
        return None
    side = min(height, width) if aspect == "crop" else max(height, width)
    sign = 1 if aspect == "crop" else -1
    return sign * (abs(height - side) // 2), sign * (abs(width - side) // 2), side


def resize_gray(gray, image_size: int):
    """float32 gray ``(..., H, W, 1)`` -> ``(..., S, S, 1)``: antialiased bilinear, rounded to [0, 255]."""
    import tensorflow as tf

    shape = tf.shape(gray)
    same_size = tf.logical_and(tf.equal(shape[-3], image_size), tf.equal(shape[-2], image_size))
    # An antialiased resize to the same size still runs its full kernel (~40% of a 512 px decode).
    resized = tf.cond(
        same_size,
        lambda: gray,
        lambda: tf.image.resize(gray, (image_size, image_size), method="bilinear", antialias=True),
    )
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def to_model_input(gray, image_size: int, aspect: str = "stretch"):
    """Decoded gray ``(..., H, W, 1)`` -> float32 ``(..., S, S, 1)`` in [0, 255]: aspect, resize, round."""
    return resize_gray(apply_aspect(gray, aspect), image_size)


def decode_and_resize(contents, image_size: int, aspect: str = "stretch", path=""):
    """Encoded PNG/JPEG bytes -> uint8 ``(S, S, 1)``: the training pipeline's map function."""
    import tensorflow as tf

    return tf.cast(to_model_input(decode_gray(contents, path), image_size, aspect), tf.uint8)


# ---- the same checks inside a graph (serving_default) ---------------------------------------------
def encoded_image_problem(contents, max_pixels: int):
    """A string tensor: ``""`` when one encoded image passes :func:`read_header`'s checks, else the
    same reason in the same words (graph-compatible; DICOM gets :data:`DICOM_NOT_SERVED`)."""
    import tensorflow as tf

    length = tf.strings.length(contents)
    # Padding keeps every fixed-offset read inside the string, whatever its length.
    padded = contents + b"\0" * (DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    is_png = tf.equal(tf.strings.substr(padded, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(padded, 0, len(JPEG_SOI)), JPEG_SOI)
    is_dicom = tf.equal(tf.strings.substr(padded, DICOM_MAGIC_OFFSET, len(DICOM_MAGIC)), DICOM_MAGIC)
    png_whole = tf.equal(tf.strings.substr(contents, tf.maximum(length - len(PNG_IEND), 0), len(PNG_IEND)), PNG_IEND)
    tail = tf.io.decode_raw(tf.strings.substr(padded, tf.maximum(length - JPEG_TAIL_BYTES, 0),
                                              tf.minimum(length, JPEG_TAIL_BYTES)), tf.uint8)
    jpeg_whole = tf.reduce_any(tf.logical_and(tf.equal(tail[:-1], JPEG_EOI[0]), tf.equal(tail[1:], JPEG_EOI[1])))

    def size_problem():
        size = image_header_size(contents)
        pixels = size[0] * size[1]
        message = tf.strings.format(TOO_LARGE, (size[0], size[1], pixels, tf.constant(max_pixels, tf.int64)))
        return tf.where(pixels > max_pixels, message, "")

    def header_problem():
        return tf.cond(tf.logical_or(tf.logical_and(is_png, png_whole), tf.logical_and(is_jpeg, jpeg_whole)),
                       size_problem, lambda: tf.where(is_png, TRUNCATED_PNG, TRUNCATED_JPEG))

    return tf.case([(tf.equal(length, 0), lambda: tf.constant(EMPTY)),
                    (tf.logical_or(is_png, is_jpeg), header_problem),
                    (is_dicom, lambda: tf.constant(DICOM_NOT_SERVED))],
                   default=lambda: tf.constant(NOT_AN_IMAGE), exclusive=False)


def image_header_size(contents):
    """``[height, width]`` int64 of one whole encoded PNG/JPEG from its header (graph-compatible).

    PNG: the IHDR chunk, which the format requires first (big-endian uint32 at bytes 16-23). JPEG:
    the start-of-frame marker, via ``tf.io.extract_jpeg_shape``.
    """
    import tensorflow as tf

    is_png = tf.equal(tf.strings.substr(contents + b"\0" * 8, 0, 8), PNG_SIGNATURE)

    def png_size():
        header = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, 16, 8), tf.uint8), tf.int64)
        width = header[0] * 2**24 + header[1] * 2**16 + header[2] * 2**8 + header[3]
        height = header[4] * 2**24 + header[5] * 2**16 + header[6] * 2**8 + header[7]
        return tf.stack([height, width])

    def jpeg_size():
        return tf.cast(tf.io.extract_jpeg_shape(contents)[:2], tf.int64)

    return tf.cond(is_png, png_size, jpeg_size)


def checked_decode(contents, image_size: int, aspect: str, max_pixels: int, label=""):
    """One encoded image -> float32 ``(S, S, 1)``, refused undecoded with the door's reasons.

    ``label`` (a string tensor, e.g. "request image 2: ") prefixes the reason in the error.
    """
    import tensorflow as tf

    problem = encoded_image_problem(contents, max_pixels)
    check = tf.debugging.Assert(tf.equal(problem, ""), [tf.strings.join([label, problem])])
    # The decode must wait for the check: ops without a data dependency may run in any order.
    with tf.control_dependencies([check]):
        contents = tf.identity(contents)
    return tf.cast(decode_and_resize(contents, image_size, aspect), tf.float32)


def pixels_to_model_input(images, image_size: int, aspect: str = "stretch"):
    """float32 pixels ``(B, H, W, 1 or 3)`` in [0, 255] -> ``(B, S, S, 1)`` (graph-compatible).

    The ``serving_images`` path: :func:`assert_pixels`, then the same luminance, aspect policy,
    antialiased resize and rounding as decoded files get; an ``S`` x ``S`` gray image with integer
    values passes through unchanged.
    """
    import tensorflow as tf

    images = assert_pixels(tf.convert_to_tensor(images, tf.float32))
    channels = tf.shape(images)[-1]
    check = tf.debugging.Assert(tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)),
                                ["images must have 1 (gray) or 3 (RGB) channels, got", channels])
    with tf.control_dependencies([check]):
        gray = to_gray(images)
    return to_model_input(tf.ensure_shape(gray, [None, None, None, 1]), image_size, aspect)


def assert_pixels(images):
    """The graph's :func:`check_pixels` for a batch ``(B, H, W, C)``: the same refusals, in one
    ``InvalidArgumentError`` naming the first image at fault by its batch index."""
    import tensorflow as tf

    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    finite = tf.reduce_all(tf.math.is_finite(flat), axis=1)
    safe = tf.where(tf.math.is_finite(flat), flat, 0.0)
    low, high = tf.reduce_min(safe, axis=1), tf.reduce_max(safe, axis=1)
    checks = [
        (finite, "holds NaN or inf pixel values; pixels must be finite, in [0, 255]"),
        (low >= -0.5, "holds negative pixel values: it looks normalised (e.g. to [-1, 1] or by mean and "
                      "std); can-tf models take raw pixel values in [0, 255]"),
        (high <= 255.5, "holds pixel values above 255: more than 8 bits (12- or 16-bit samples?); "
                        "scale them to [0, 255]"),
        (tf.logical_not(tf.logical_and(high <= 1.0, high > low)),
         "looks scaled to [0, 1]; can-tf models take raw pixel values in [0, 255]: multiply by 255"),
    ]
    asserts = []
    for ok, problem in checks:
        first = tf.argmin(tf.cast(ok, tf.int32))
        message = tf.strings.format("the image at batch index {} " + problem, first)
        asserts.append(tf.debugging.Assert(tf.reduce_all(ok), [message]))
    with tf.control_dependencies(asserts):
        return tf.identity(images)


# ---- reading files for predict, explain and export checks ----------------------------------------
@dataclasses.dataclass
class LoadedImage:
    """One file through the door: the model's input and, when asked, the image as decoded."""

    pixels: np.ndarray  # float32 (S, S, 1) in [0, 255]
    # uint8 gray at full resolution, for overlays: the image as decoded, padded or cropped by the
    # aspect policy, so that it covers exactly what the model saw.
    original: Optional[np.ndarray] = None
    size: tuple = ()  # (height, width) of the file's pixels as decoded, before the aspect policy


def load_image(path: PathLike, image_size: int, *, aspect: str = "stretch",
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, keep_original: bool = False) -> LoadedImage:
    """One file as the model sees it (checked, decoded once, aspect, resized), as in training.

    Raises:
        ImageError: naming the file and why it cannot be used.

    Example:
        >>> load_image("00000001_000.png", 64).pixels.shape  # doctest: +SKIP
        (64, 64, 1)
    """
    check_aspect(aspect)
    data, header = read_file(path, max_pixels)
    gray = decode_file(data, header, str(path))
    pixels = _resizer(int(image_size), aspect)(gray).numpy()
    original = None
    if keep_original:
        original = np.clip(np.round(apply_aspect(gray, aspect).numpy()[..., 0]), 0, 255).astype(np.uint8)
    return LoadedImage(pixels=pixels, original=original, size=(header.height, header.width))


@functools.lru_cache(maxsize=None)
def _resizer(image_size: int, aspect: str):
    import tensorflow as tf

    return tf.function(lambda gray: to_model_input(gray, image_size, aspect),
                       input_signature=[tf.TensorSpec([None, None, 1], tf.float32)], autograph=False)


def read_gray(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file as uint8 ``(H, W)`` gray at full size (rounded), for overlays and tools.

    Example:
        >>> read_gray("00000001_000.png").shape  # doctest: +SKIP
        (512, 512)
    """
    data, header = read_file(path, max_pixels)
    return np.clip(np.round(decode_file(data, header, str(path)).numpy()[..., 0]), 0, 255).astype(np.uint8)


# ---- pixel arrays handed in directly ------------------------------------------------------------
def check_pixels(images, names: Optional[Sequence[str]] = None) -> np.ndarray:
    """``images`` ``(B, ...)`` as float32 in [0, 255]; a DataError naming the images that are not.

    Refused: NaN or inf (whether a NaN reaches the output depends on the CPU's kernels: oneDNN's
    max-pooling drops it on some AVX-512 CPUs, so a broken image could be scored as if fine);
    values below 0 (normalised pixels, e.g. [-1, 1] or mean/std); values above 255 (12- or 16-bit
    samples); and images whose values all lie in [0, 1] without being constant (pixels scaled to
    [0, 1]: to a model that takes [0, 255] such an image is black). Half a grey level of slack
    allows for float rounding. ``names`` (one per image) name the culprits, else batch indices do.

    Example:
        >>> images = np.zeros((4, 2, 2, 1), "float32")
        >>> images[2, 0, 0, 0] = np.nan
        >>> try:
        ...     check_pixels(images)
        ... except DataError as e:
        ...     print(e)
        the image at batch index 2 holds NaN or inf pixel values; pixels must be finite, in [0, 255]
        >>> check_pixels(np.full((1, 2, 2, 1), 0.5) * [[[[0]], [[1]]]])
        Traceback (most recent call last):
        ...
        can_tf.errors.DataError: the image at batch index 0 looks scaled to [0, 1] (values 0 to 0.5); can-tf models take raw pixel values in [0, 255]: multiply by 255
    """
    with np.errstate(over="ignore"):  # an overflow to inf is reported below, naming the image
        images = np.asarray(images, dtype=np.float32)
    if images.ndim == 0 or images.size == 0:
        return images
    if names is not None and len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    flat = images.reshape(len(images), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        raise DataError(f"{_which(~finite, names)} {_verb(~finite)} NaN or inf pixel values; "
                        f"pixels must be finite, in [0, 255]")
    low, high = flat.min(axis=1), flat.max(axis=1)
    for bad, problem in (
        (low < -0.5, "negative pixel values (as low as {low:.3g}): it looks normalised (e.g. to [-1, 1] "
                     "or by mean and std); can-tf models take raw pixel values in [0, 255]"),
        (high > 255.5, "pixel values up to {high:.6g}: more than 8 bits (12- or 16-bit samples?); "
                       "scale them to [0, 255]"),
        ((high <= 1.0) & (high > low), "looks scaled to [0, 1] (values {low:.3g} to {high:.3g}); can-tf models "
                                       "take raw pixel values in [0, 255]: multiply by 255"),
    ):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            detail = problem.format(low=float(low[first]), high=float(high[first]))
            verb = "" if detail.startswith("looks") else ("holds " if bad.sum() == 1 else "hold ")
            raise DataError(f"{_which(bad, names)} {verb}{detail}")
    return images


def _which(bad: np.ndarray, names) -> str:
    indices = np.flatnonzero(bad).tolist()
    one = len(indices) == 1
    if names is not None:
        from can_tf.data.errors import preview

        return f"image{'' if one else 's'} {preview([str(names[i]) for i in indices])}"
    shown = ", ".join(map(str, indices[:5])) + (f" and {len(indices) - 5} more" if len(indices) > 5 else "")
    return f"the image{'' if one else 's'} at batch ind{'ex' if one else 'ices'} {shown}"


def _verb(bad: np.ndarray) -> str:
    return "holds" if bad.sum() == 1 else "hold"
