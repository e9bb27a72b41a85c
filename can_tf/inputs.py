"""What ``predict`` and ``explain`` accept as input: image files, folders and CSV lists.

:func:`expand_inputs` turns the command line's ``INPUT...`` into a list of image paths;
:func:`load_images` reads a batch of them through the image door (:func:`can_tf.images.load_image`:
checked, decoded once, made square by the model's aspect policy, resized as in training) and reports
the files it could not read instead of stopping.

Images leave this module as float32 in [0, 255], exactly what the training pipeline hands the
model; the model's own preprocessing does the rest.

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

from can_tf.data.errors import DataError
from can_tf.errors import ImageError
from can_tf.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, load_image, sniff


# ---- INPUT... -> paths ------------------------------------------------------------------------
def expand_inputs(inputs: Iterable[str], path_column: str = "path", image_root: Optional[str] = None) -> list:
    """Expands image files, folders (recursively) and CSV files into a list of image paths.

    - an image file (``.png``, ``.jpg``, ``.jpeg``, ``.dcm``, ``.dicom``, or any file given by name)
      is kept as given, even if it does not exist: reading it later reports it by name, so one bad
      path does not stop a batch;
    - a folder contributes every image below it, sorted: files named as images, and files without a
      suffix whose first bytes say PNG, JPEG or DICOM (DICOM files are often named by their UID);
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
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and _looks_like_image(p))
            if not found:
                raise DataError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif path.suffix.lower() in (".csv", ".gz") and path.name.lower().endswith((".csv", ".csv.gz")):
            paths.extend(_paths_from_csv(path, path_column, image_root))
        else:
            paths.append(item)
    return paths


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.suffix or path.name.startswith("."):
        return False
    try:
        with open(path, "rb") as f:
            return sniff(f.read(256)) is not None
    except OSError:
        return False


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


@dataclasses.dataclass
class ImageBatch:
    """Images that could be read (in input order) and the reasons the others could not."""

    paths: list  # the paths whose images are in ``images``
    images: np.ndarray  # float32 (B, S, S, 1) in [0, 255]
    originals: list  # uint8 arrays at full resolution, made square as the model saw them, for overlays
    errors: dict  # path -> reason
    sizes: list = dataclasses.field(default_factory=list)  # (height, width) of each file as decoded


def load_images(paths: Sequence[str], image_size: int, *, aspect: str = "stretch",
                max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, keep_originals: bool = False,
                workers: Optional[int] = None) -> ImageBatch:
    """Reads ``paths`` at the model's size through :func:`can_tf.images.load_image`; an unreadable
    file goes into ``errors`` (path -> one-line message) and the rest are kept. ``keep_originals``
    also keeps each image as decoded (uint8, full size) for overlays. Files are read in a thread
    pool (decoding releases the GIL).
    """
    paths = [str(p) for p in paths]
    workers = workers or min(8, (os.cpu_count() or 1) + 2)

    def read(path):
        try:
            return load_image(path, image_size, aspect=aspect, max_pixels=max_pixels,
                              keep_original=keep_originals), None
        except ImageError as exc:
            return None, str(exc)
        except Exception as exc:  # a reader bug must not lose the whole batch either
            return None, str(ImageError(path, f"internal error: {type(exc).__name__}: {exc}"))

    if len(paths) > 1 and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(read, paths))
    else:
        results = [read(p) for p in paths]
    good, images, originals, sizes, errors = [], [], [], [], {}
    for path, (loaded, error) in zip(paths, results):
        if error is not None:
            errors[path] = error
            continue
        good.append(path)
        images.append(loaded.pixels)
        sizes.append(loaded.size)
        if keep_originals:
            originals.append(loaded.original)
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 1), np.float32)
    return ImageBatch(paths=good, images=stacked.astype(np.float32), originals=originals, errors=errors,
                      sizes=sizes)
