"""What ``predict`` and ``explain`` accept as input: image files, folders, CSV lists, DICOM.

:func:`expand_inputs` turns the command line's ``INPUT...`` into a list of image paths;
:func:`read_any_image` reads one of them as uint8 grayscale (PNG/JPEG through
:func:`can_tf.data.images.read_image`, DICOM through pydicom); :func:`load_images` reads a batch,
resizes it to the model's input size, and reports the files it could not read instead of stopping.
:func:`check_finite_pixels` is the door every array of pixels passes: NaN or inf is refused there,
naming the image, before any model sees it.

Scaling happens once: images leave this module as float32 in [0, 255], exactly what the training
pipeline hands the model; the model's own preprocessing does the rest.

Example:
    >>> from can_tf.inputs import expand_inputs, load_images
    >>> paths = expand_inputs(["scans/"])  # doctest: +SKIP
    >>> batch = load_images(paths[:8], image_size=224)  # doctest: +SKIP
    >>> batch.images.shape, batch.errors  # doctest: +SKIP
    ((8, 224, 224, 1), {})
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from can_tf.data.errors import DataError, preview

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_EXTRA_HINT = "pip install 'can-tf[dicom]'"
_DICOM_MAGIC_OFFSET = 128  # DICOM Part 10 files carry "DICM" after a 128-byte preamble


# ---- INPUT... -> paths ------------------------------------------------------------------------
def expand_inputs(inputs: Iterable[str], path_column: str = "path", image_root: Optional[str] = None) -> list:
    """Expands image files, folders (recursively) and CSV files into a list of image paths.

    - an image file (``.png``, ``.jpg``, ``.jpeg``, ``.dcm``, ``.dicom``, or any file given by name)
      is kept as given, even if it does not exist: reading it later reports it by name, so one bad
      path does not stop a batch;
    - a folder contributes every image below it, sorted;
    - a ``.csv`` file contributes its ``path_column`` column (or ``Image Index``, NIH style);
      relative paths are taken from ``image_root`` when given (``data.image_root`` in ``fit``),
      else from the CSV's folder.

    Raises:
        DataError: a folder holds no images, or a CSV lacks the path column (naming file and column).
    """
    paths = []
    for item in inputs:
        item = str(item)
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif path.suffix.lower() in (".csv", ".gz") and path.name.lower().endswith((".csv", ".csv.gz")):
            paths.extend(_paths_from_csv(path, path_column, image_root))
        else:
            paths.append(item)
    return paths


def _paths_from_csv(path: Path, path_column: str, image_root: Optional[str] = None) -> list:
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read input list {path}: {e}") from None
    column = path_column if path_column in table.columns else (
        "Image Index" if "Image Index" in table.columns else None)
    if column is None:
        raise DataError(
            f"input list {path} has no column {path_column!r} (columns: {', '.join(table.columns)}); "
            f"name the image paths' column {path_column!r}"
        )
    base = Path(image_root) if image_root is not None else path.parent
    paths = []
    for row, value in enumerate(table[column], start=2):
        value = value.strip()
        if not value:
            raise DataError(f"{path}, row {row}: empty {column!r}")
        paths.append(value if os.path.isabs(value) else str(base / value))
    return paths


# ---- pixel values -----------------------------------------------------------------------------
def check_finite_pixels(images, names: Optional[Sequence[str]] = None) -> np.ndarray:
    """``images`` ``(B, ...)`` as float32; a DataError when any image holds NaN or inf.

    A non-finite pixel must be refused before the model: whether it reaches the output depends on
    the CPU's kernels (on AVX-512 CPUs such as AMD Zen 5, oneDNN's max-pooling drops NaN), so a
    broken image could be scored as if it were fine. Values beyond float32's range become inf in
    the conversion and are refused too. ``names`` (one per image, e.g. file paths) name the
    culprits; without them the batch indices do.

    Raises:
        DataError: one line naming the images (up to five, then a count) with non-finite values.

    Example:
        >>> images = np.zeros((4, 2, 2, 1), "float32")
        >>> images[2, 0, 0, 0] = np.nan
        >>> try:
        ...     check_finite_pixels(images)
        ... except DataError as e:
        ...     print(e)
        the image at batch index 2 holds NaN or inf pixel values; pixels must be finite, in [0, 255]
        >>> check_finite_pixels(images[:2]).dtype
        dtype('float32')
    """
    with np.errstate(over="ignore"):  # an overflow to inf is reported below, naming the image
        images = np.asarray(images, dtype=np.float32)
    if images.ndim == 0 or images.size == 0:
        return images
    if names is not None and len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if finite.all():
        return images
    bad = np.flatnonzero(~finite).tolist()
    one = len(bad) == 1
    if names is not None:
        which = f"image{'' if one else 's'} {preview([str(names[i]) for i in bad])}"
    else:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        which = f"the image{'' if one else 's'} at batch ind{'ex' if one else 'ices'} {shown}"
    verb = "holds" if one else "hold"
    raise DataError(f"{which} {verb} NaN or inf pixel values; pixels must be finite, in [0, 255]")


# ---- reading ----------------------------------------------------------------------------------
def is_dicom(path: str | os.PathLike) -> bool:
    """By suffix, or by the ``DICM`` magic for files named without one."""
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(_DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Reads a DICOM radiograph as uint8 ``(H, W)``, as a viewer would display it.

    The modality LUT (rescale slope/intercept) and then the VOI LUT or window are applied, the
    result is stretched to 0..255, and MONOCHROME1 images (where high values are dark) are
    inverted so that bone is bright as in every other input.

    Raises:
        DataError: pydicom is not installed (with the install command), the file is not a
            single-frame grayscale DICOM image, or its pixel values are not all finite.
    """
    try:
        import pydicom
    except ImportError:
        raise DataError(
            f"cannot read DICOM file {path}: pydicom is not installed; {DICOM_EXTRA_HINT}"
        ) from None
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise DataError(f"cannot read DICOM file {path}: {type(exc).__name__}: {exc}") from None
    if int(getattr(dataset, "SamplesPerPixel", 1)) != 1 or pixels.ndim != 2:
        raise DataError(
            f"DICOM file {path}: expected a single-frame grayscale image, got pixel array of shape "
            f"{pixels.shape} ({getattr(dataset, 'PhotometricInterpretation', '?')})"
        )
    values = apply_modality_lut(pixels, dataset)
    values = apply_voi_lut(values, dataset, index=0)
    values = values.astype(np.float64)
    # Float Pixel Data may hold NaN/inf: stretched to 0..255 it would silently turn the image black.
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise DataError(f"DICOM file {path}: {bad} of {values.size} pixel values are not finite (NaN or inf)")
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 255.0 - scaled
    return np.round(scaled).astype(np.uint8)


def read_any_image(path: str | os.PathLike) -> np.ndarray:
    """PNG/JPEG (via :func:`can_tf.data.images.read_image`) or DICOM as uint8 ``(H, W)``."""
    if is_dicom(path):
        return read_dicom(path)
    from can_tf.data.images import read_image

    return read_image(path)


def model_input(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """One file as the model must see it: float32 ``(S, S)`` in [0, 255].

    PNG and JPEG go through the training pipeline's own decode and resize
    (:func:`can_tf.data.pipeline.load_image`), so a file predicts here exactly as it did in
    evaluation. A DICOM image is rendered to 8-bit gray (:func:`read_dicom`) and then resized by
    the same function.

    Raises:
        DataError: naming the file and why it cannot be read.
    """
    from can_tf.data.pipeline import decode_and_resize, load_image

    if is_dicom(path):
        import tensorflow as tf

        encoded = tf.io.encode_png(read_dicom(path)[..., None])
        return tf.cast(decode_and_resize(encoded, image_size, str(path)), tf.float32).numpy()[..., 0]
    from can_tf.data.images import verify_image

    reason = verify_image(path)
    if reason is not None:
        raise DataError(f"cannot read image {path}: {reason}")
    try:
        return load_image(path, image_size)[..., 0]
    except Exception as exc:  # tf.errors.* for a file that passed the cheap checks but fails decoding
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


@dataclasses.dataclass
class ImageBatch:
    """Images that could be read (in input order) and the reasons the others could not."""

    paths: list  # the paths whose images are in ``images``
    images: np.ndarray  # float32 (B, S, S, 1) in [0, 255]
    originals: list  # uint8 (H, W) arrays as read, for overlays
    errors: dict  # path -> reason


def load_images(paths: Sequence[str], image_size: int, *, keep_originals: bool = False,
                workers: Optional[int] = None) -> ImageBatch:
    """Reads ``paths`` at the model's size (:func:`model_input`); an unreadable file goes into
    ``errors`` and the rest are kept. ``keep_originals`` also keeps each image as read (uint8,
    full size) for overlays. Files are read in a thread pool (decoding releases the GIL).
    """
    paths = [str(p) for p in paths]
    workers = workers or min(8, (os.cpu_count() or 1) + 2)

    def read(path):
        try:
            original = read_any_image(path) if keep_originals else None
            return (model_input(path, image_size), original), None
        except DataError as exc:
            return None, str(exc)
        except Exception as exc:  # a reader bug must not lose the whole batch either
            return None, f"cannot read image {path}: {type(exc).__name__}: {exc}"

    if len(paths) > 1 and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(read, paths))
    else:
        results = [read(p) for p in paths]
    good, images, originals, errors = [], [], [], {}
    for path, (read_result, error) in zip(paths, results):
        if error is not None:
            errors[path] = error
            continue
        good.append(path)
        images.append(read_result[0])
        if keep_originals:
            originals.append(read_result[1])
    stacked = (np.stack(images)[..., None] if images
               else np.zeros((0, image_size, image_size, 1), np.float32))
    return ImageBatch(paths=good, images=stacked.astype(np.float32), originals=originals, errors=errors)
