"""Reading and checking radiograph files on the Python side (PIL).

The training pipeline decodes with ``tf.io`` (see :mod:`can_tf.data.pipeline`); this module is for
everything that runs outside the graph: checking a data set before training (``can-tf data check``,
the ``on_bad_image`` scan), reading an image for ``predict``/``explain``, and tests.

Both paths produce the same grayscale values:

- 8-bit gray, RGB, RGBA, gray+alpha (LA) and palette PNGs and gray/RGB JPEGs are supported.
- Colour is reduced to luminance with the ITU-R 601 weights (``L = 0.299 R + 0.587 G + 0.114 B``,
  what ``PIL.Image.convert("L")`` does); an alpha channel is dropped, not composited, because an
  exported radiograph with alpha is opaque anyway and compositing onto a colour would change values.
- 16-bit PNGs are scaled by the full 16-bit range to 8 bits: ``round(v * 255 / 65535)``, i.e.
  ``v / 257``, so 65535 becomes 255 and 0 stays 0. The type's range is used, not the image's own
  maximum, so that the same file always gives the same values and the relative brightness of two
  images is kept (a per-image stretch would hide under- or over-exposure).

Example:
    >>> from can_tf.data.images import read_image, verify_image
    >>> verify_image("missing.png")
    'file not found'
    >>> image = read_image("xray.png")  # doctest: +SKIP
    >>> image.dtype, image.ndim  # doctest: +SKIP
    (dtype('uint8'), 2)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from can_tf.data.errors import DataError

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type + its fixed CRC: the last 8 bytes of a whole PNG
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
# Some writers append padding or metadata after a JPEG's end-of-image marker; look this far back.
_JPEG_TAIL_BYTES = 1024

# PIL modes we can reduce to gray the same way tf.io does. 16-bit gray PNGs open as "I;16*" (or "I"
# in older Pillow); PIL itself reduces 16-bit RGB(A) PNGs to 8-bit "RGB"/"RGBA" on open.
_GRAY_MODES = ("L", "1")
_COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "LA", "YCbCr", "RGBX")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
SUPPORTED_MODES = _GRAY_MODES + _COLOUR_MODES + _SIXTEEN_BIT_MODES


def sniff_format(head: bytes) -> Optional[str]:
    """``"PNG"``, ``"JPEG"`` or None from the first bytes of a file (its magic number)."""
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head.startswith(_JPEG_SOI):
        return "JPEG"
    return None


def verify_image(path: PathLike, *, decode: bool = False) -> Optional[str]:
    """Checks that ``path`` is a readable PNG/JPEG radiograph; returns None or why it is not.

    The default check is cheap enough for thousands of files (a fraction of a millisecond for a
    512 px PNG): the file exists and is not empty, its magic number says PNG or JPEG, it ends
    where a whole file ends (PNG ``IEND`` chunk, JPEG end-of-image marker: this catches truncated
    downloads), PIL can parse its header and its colour mode is supported, and for PNG every
    chunk's CRC is right (``PIL.Image.verify``, which does not decompress). ``decode=True`` also
    decodes the pixels, which catches the rare corrupt-but-checksummed file at several times the
    cost.

    Args:
        path: the image file.
        decode: also decode the pixel data.

    Returns:
        None when the file is fine, else a short reason such as ``"file not found"``,
        ``"empty file"``, ``"truncated PNG (no IEND chunk at the end)"``, ``"not a PNG or JPEG
        image"``, ``"unsupported colour mode 'CMYK'"``.

    Example:
        >>> verify_image("does/not/exist.png")
        'file not found'
    """
    from PIL import Image  # lazy: keeps `import can_tf.data` light

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot access file ({exc.strerror or exc})"
    if not path.is_file():
        return "not a regular file"
    if size == 0:
        return "empty file"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - _JPEG_TAIL_BYTES))
            tail = f.read()
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    fmt = sniff_format(head)
    if fmt is None:
        return "not a PNG or JPEG image"
    if fmt == "PNG" and not tail.endswith(_PNG_IEND):
        return "truncated PNG (no IEND chunk at the end)"
    if fmt == "JPEG" and _JPEG_EOI not in tail:
        return "truncated JPEG (no end-of-image marker)"
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in SUPPORTED_MODES or (fmt == "JPEG" and mode not in ("L", "RGB", "YCbCr")):
                return f"unsupported colour mode {mode!r}"
            if fmt == "PNG":
                image.verify()  # chunk CRCs, without decompressing
        if decode:
            with Image.open(path) as image:
                image.load()
    except Exception as exc:  # PIL raises many types (SyntaxError, OSError, ValueError, zlib.error)
        return f"unreadable {fmt} ({type(exc).__name__}: {exc})"
    return None


def scan_images(
    paths: Iterable[PathLike], *, decode: bool = False, workers: Optional[int] = None
) -> dict:
    """Runs :func:`verify_image` over many files in a thread pool; returns ``{path: reason}``.

    Only bad files are in the result, keyed by the path as given (so a caller can map reasons back
    to its rows). Threads help because the work is mostly file I/O and zlib, which release the GIL.

    Example:
        >>> scan_images(["missing.png"])
        {'missing.png': 'file not found'}
    """
    paths = list(paths)
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) + 2)
    if len(paths) < 64 or workers <= 1:
        reasons = [verify_image(p, decode=decode) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(lambda p: verify_image(p, decode=decode), paths, chunksize=32))
    return {p: r for p, r in zip(paths, reasons) if r is not None}


def to_gray_uint8(image) -> np.ndarray:
    """A PIL image as a uint8 (H, W) luminance array, with the rules in the module docstring."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.dtype.kind == "i" or values.dtype.itemsize > 2:
            # Mode "I" is 32-bit; from a PNG it still holds 16-bit samples.
            values = np.clip(values, 0, 65535)
        return np.round(values.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode == "LA":
        return np.asarray(image.getchannel(0), dtype=np.uint8).copy()
    if mode in ("1", "P", "PA", "YCbCr", "RGBX"):
        image = image.convert("RGBA" if mode in ("P", "PA") else "RGB")
        mode = image.mode
    if mode in ("RGB", "RGBA"):
        # convert("L") uses only R, G, B: the alpha channel is dropped.
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    raise ValueError(f"unsupported colour mode {mode!r}")


def read_image(path: PathLike) -> np.ndarray:
    """Reads a PNG or JPEG radiograph as a uint8 (H, W) grayscale array.

    Raises:
        DataError: naming the file, when it is missing, unreadable or of an unsupported mode.

    Example:
        >>> read_image("00000001_000.png").shape  # doctest: +SKIP
        (512, 512)
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return to_gray_uint8(image)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Exception as exc:
        reason = verify_image(path) or f"{type(exc).__name__}: {exc}"
        raise DataError(f"cannot read image {path}: {reason}") from exc
