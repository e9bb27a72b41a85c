"""The tf.data input pipeline: files + labels -> batches of grayscale images and multi-hot labels.

For each row of the data table: read the file, decode it with ``tf.io`` (PNG 8- or 16-bit, JPEG;
gray, gray+alpha, RGB, RGBA, palette), reduce it to one luminance channel, resize it with
antialiasing, store it as uint8, then (training only) shuffle and augment, batch, prefetch.

Choices, and why:

- **Gray values** follow :mod:`can_tf.data.images` exactly: colour -> ITU-R 601 luminance (what
  ``PIL.Image.convert("L")`` gives), alpha dropped, 16-bit scaled by ``255 / 65535``. Images leave
  the pipeline as float32 in [0, 255] with one channel; the model replicates channels and applies its
  backbone's preprocessing, so the same pipeline feeds every backbone.
- **Aspect ratio**: a non-square image is resized to ``image_size`` x ``image_size`` directly
  (stretched), not padded or cropped. NIH images are square, and for other chest films the
  distortion is small (aspect 0.8-1.25), whereas padding adds black bars a network can learn from
  and cropping can cut off a costophrenic angle or an apex, where findings sit.
- **Resizing** is bilinear with antialiasing (``tf.image.resize(..., antialias=True)``): plain
  bilinear on a 4-16x downscale aliases fine structure such as rib edges and small nodules.
- **uint8 after resizing**, always: the cache then holds 1 byte per pixel (224 px: 50 kB an
  image, so 112,120 NIH images fit in 5.6 GB of memory), and the values are the same whatever the
  cache setting (rounding changes a value by at most half a grey level).
- **Cache** (``"memory"`` or a file prefix) sits after decode + resize and before shuffling and
  augmentation, so each epoch re-augments but never re-decodes. A file cache's name gets the image
  size and a digest of the file list appended, so train, val and test (or another image size) given
  the same prefix never read each other's cache. A training cache holds its files in the seeded
  shuffle order, so its digest covers the seed too: another ``seed`` builds its own cache instead of
  silently reusing the first seed's order.
- **Shuffling** (training only) is seeded: the file list is shuffled in full before decoding;
  with a cache, a second shuffle after it (a buffer of up to 256 MB of images) reshuffles each epoch.
- **Augmentation** (training with ``augment=True``): see :mod:`can_tf.data.augment` (small
  rotation, shift, zoom, exposure; no flips). Seeds come from ``tf.data.Dataset.random`` with a new
  stream each epoch, so epochs differ but runs with the same seed repeat exactly.
- **deterministic=True** keeps element order fixed through the parallel stages; the order and the
  augmentations are then identical on every run. ``False`` lets parallel decoding and augmentation
  hand over elements as they finish (faster when files arrive unevenly): the shuffle is seeded
  either way, but the hand-over order is not, and a cache freezes it for every later epoch, so each
  run trains on a slightly different order. TensorFlow op determinism (``train.deterministic``, see
  :mod:`can_tf.training.determinism`) overrides ``False`` to ``True`` in every stage. Evaluation
  pipelines (``training=False``) always keep the table's row order, so predictions line up with rows.
- **Sharding**: with an ``input_context`` (``tf.distribute``), each input pipeline keeps every
  ``num_input_pipelines``-th file (``Dataset.shard``, before reading any file) and batches
  ``input_context.get_per_replica_batch_size(batch_size)`` images.
- **Bad images** are found before the pipeline starts, by :func:`can_tf.data.images.scan_images`
  over the table's files (about 0.25 ms a 512 px PNG with 2 threads, 0.15 s for 546 images: a
  TensorFlow decode error mid-epoch would not name the file). ``on_bad_image="stop"`` raises a
  :class:`~can_tf.data.errors.DataError` listing the bad files and why; ``"skip"`` drops them and
  warns (:class:`BadImageWarning`) with their names and count.
- **Labels** go through untouched: float32, NaN where unknown (the losses mask NaN).

Example:
    >>> from can_tf.data.pipeline import make_dataset
    >>> ds = make_dataset(df, class_names, image_size=224, batch_size=32, training=True,
    ...                   augment=True, cache="memory", seed=0)  # doctest: +SKIP
    >>> images, labels = next(iter(ds))  # doctest: +SKIP
    >>> images.shape, labels.shape  # doctest: +SKIP
    (TensorShape([32, 224, 224, 1]), TensorShape([32, 14]))
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from can_tf.data.errors import DataError

CACHE_MODES = ("none", "memory")  # or a file path prefix
BAD_IMAGE_MODES = ("stop", "skip")
SHUFFLE_BUFFER_BYTES = 256 * 2 ** 20  # post-cache shuffle buffer, in bytes of uint8 images
_MAX_LISTED = 10  # bad files named in a message; the count covers the rest

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_PNG_BIT_DEPTH_OFFSET = 24  # signature (8) + IHDR length (4) + type (4) + width (4) + height (4)
# ITU-R 601-2 luma weights, as PIL.Image.convert("L") uses them.
_LUMA = (0.299, 0.587, 0.114)


class BadImageWarning(UserWarning):
    """Images were skipped because they could not be read (``on_bad_image="skip"``)."""


# ---- decoding ---------------------------------------------------------------------------------
def decode_gray(contents, path=""):
    """Encoded PNG/JPEG bytes -> float32 (H, W, 1) luminance in [0, 255] (graph-compatible).

    ``path`` only names the file in the error raised when the bytes are neither PNG nor JPEG.
    """
    import tensorflow as tf

    is_png = tf.equal(tf.strings.substr(contents, 0, len(_PNG_SIGNATURE)), _PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, len(_JPEG_SOI)), _JPEG_SOI)
    check = tf.debugging.Assert(tf.logical_or(is_png, is_jpeg), ["not a PNG or JPEG image:", path])

    def png16():
        image = tf.io.decode_png(contents, channels=0, dtype=tf.uint16)
        return tf.cast(image, tf.float32) * (255.0 / 65535.0)

    def png8():  # ~15% faster than decoding every PNG as 16-bit
        return tf.cast(tf.io.decode_png(contents, channels=0), tf.float32)

    def png():
        # The IHDR chunk's bit depth byte sits at a fixed offset in every PNG.
        sixteen_bit = tf.equal(tf.strings.substr(contents, _PNG_BIT_DEPTH_OFFSET, 1), b"\x10")
        return tf.cond(sixteen_bit, png16, png8)

    def jpeg():
        return tf.cast(tf.io.decode_jpeg(contents, channels=0), tf.float32)

    with tf.control_dependencies([check]):
        image = tf.cond(is_png, png, jpeg)
    gray = to_gray(image)
    gray.set_shape([None, None, 1])
    return gray


def to_gray(image):
    """float32 pixels (..., H, W, C) with C of 1-4 -> (..., H, W, 1) luminance (graph-compatible).

    RGB and RGBA become the weighted sum of R, G, B (alpha ignored); gray and gray+alpha keep
    their first channel.
    """
    import tensorflow as tf

    def luminance():
        return tf.reduce_sum(image[..., :3] * tf.constant(_LUMA, tf.float32), axis=-1, keepdims=True)

    return tf.cond(tf.shape(image)[-1] >= 3, luminance, lambda: image[..., :1])


def resize_gray(gray, image_size: int):
    """float32 gray pixels (..., H, W, 1) -> (..., S, S, 1): antialiased resize, rounded to [0, 255].

    The one resize shared by training, prediction and the exported serving signatures.
    """
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


def decode_and_resize(contents, image_size: int, path=""):
    """Encoded bytes -> uint8 (S, S, 1): decoded, gray, antialiased resize, rounded."""
    import tensorflow as tf

    return tf.cast(resize_gray(decode_gray(contents, path), image_size), tf.uint8)


def load_image(path, image_size: int) -> np.ndarray:
    """One file as the pipeline sees it: float32 (S, S, 1) in [0, 255] (eager; for tools and tests).

    Example:
        >>> load_image("00000001_000.png", 64).shape  # doctest: +SKIP
        (64, 64, 1)
    """
    import tensorflow as tf

    contents = tf.io.read_file(str(path))
    return tf.cast(decode_and_resize(contents, image_size, str(path)), tf.float32).numpy()


# ---- checks ------------------------------------------------------------------------------------
def _check_arguments(df, class_names, image_size, batch_size, cache, on_bad_image):
    if on_bad_image not in BAD_IMAGE_MODES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_MODES}, got {on_bad_image!r}")
    if not isinstance(cache, str) or not cache:
        raise ValueError(f"cache must be 'none', 'memory' or a file path prefix, got {cache!r}")
    if int(image_size) < 1 or int(batch_size) < 1:
        raise ValueError(f"image_size and batch_size must be positive, got {image_size} and {batch_size}")
    missing = [c for c in ["path", *class_names] if c not in df.columns]
    if missing:
        raise DataError(f"the data table has no column(s) {missing}; it has {list(df.columns)}")


def _drop_bad_images(df, on_bad_image: str):
    """Scans the table's files; stops naming the bad ones, or drops them with a warning."""
    from can_tf.data.images import scan_images

    paths = df["path"].astype(str)
    bad = scan_images(paths.unique().tolist())
    if not bad:
        return df
    listed = "\n".join(f"  {p}: {r}" for p, r in list(bad.items())[:_MAX_LISTED])
    more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    if on_bad_image == "stop":
        raise DataError(
            f"{len(bad)} of {paths.nunique()} image files cannot be read:\n{listed}{more}\n"
            f"(fix or remove them, or set data.on_bad_image=skip to train without them)"
        )
    kept = df[~paths.isin(list(bad))]
    warnings.warn(
        f"skipping {len(bad)} of {paths.nunique()} image files that cannot be read "
        f"({len(kept)} rows left):\n{listed}{more}",
        BadImageWarning,
        stacklevel=3,
    )
    if kept.empty:
        raise DataError(f"none of the {paths.nunique()} image files can be read:\n{listed}{more}")
    return kept


def _cache_file(prefix: str, paths: Sequence[str], image_size: int, input_context,
                shuffle_seed=None) -> str:
    """A cache file name unique to this file list, image size, shard and (training) shuffle seed."""
    key = "\n".join(paths) + ("" if shuffle_seed is None else f"\nshuffle seed {shuffle_seed}")
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    shard = ""
    if input_context is not None:
        shard = f"-shard{input_context.input_pipeline_id}of{input_context.num_input_pipelines}"
    name = f"{prefix}-{image_size}px-{digest}{shard}"
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    return name


# ---- the pipeline ------------------------------------------------------------------------------
def make_dataset(
    df,
    class_names: Sequence[str],
    image_size: int,
    batch_size: int,
    *,
    training: bool,
    augment: bool = False,
    cache: str = "none",
    deterministic: bool = False,
    seed: int = 0,
    on_bad_image: str = "stop",
    input_context=None,
    drop_remainder: bool = False,
):
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches from a data table.

    Args:
        df: the data table (columns ``path`` and one per class; see :mod:`can_tf.data.table`).
        class_names: label columns, in output order.
        image_size: side of the square images produced, in pixels.
        batch_size: global batch size; per replica with an ``input_context``.
        training: shuffle (seeded) and, with ``augment``, augment; otherwise keep row order.
        augment: apply :func:`can_tf.data.augment.augment_radiographs` (training only).
        cache: ``"none"``, ``"memory"`` or a file path prefix (see the module docstring).
        deterministic: same order and augmentations on every run.
        seed: seed of the shuffle and the augmentations.
        on_bad_image: ``"stop"`` (raise :class:`DataError` naming the files) or ``"skip"``
            (drop them, warn with their names and count).
        input_context: a ``tf.distribute.InputContext``: shard by input pipeline.
        drop_remainder: drop a last, smaller batch.

    Returns:
        A dataset of ``images`` float32 (B, S, S, 1) in [0, 255] and ``labels`` float32 (B, C),
        NaN where a label is unknown.

    Example:
        >>> ds = make_dataset(df, ["Effusion"], 64, 8, training=False)  # doctest: +SKIP
    """
    import tensorflow as tf

    from can_tf.data.augment import augment_radiographs

    class_names = list(class_names)
    _check_arguments(df, class_names, image_size, batch_size, cache, on_bad_image)
    df = _drop_bad_images(df, on_bad_image)
    paths = df["path"].astype(str).tolist()
    labels = df[class_names].to_numpy(dtype=np.float32)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    ordered = deterministic or not training

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        # File names are tiny, so the whole list is shuffled; with a cache this order is frozen
        # into it, and the post-cache shuffle below varies the order between epochs.
        ds = ds.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=cache == "none")

    def load(path, label):
        return decode_and_resize(tf.io.read_file(path), image_size, path), label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered)
    if cache == "memory":
        ds = ds.cache()
    elif cache != "none":
        ds = ds.cache(_cache_file(cache, paths, image_size, input_context,
                                  shuffle_seed=seed if training else None))
    if training and cache != "none":
        buffer = int(min(len(paths), max(1024, SHUFFLE_BUFFER_BYTES // (image_size * image_size))))
        ds = ds.shuffle(max(1, buffer), seed=seed + 1, reshuffle_each_iteration=True)
    ds = ds.map(lambda image, label: (tf.cast(image, tf.float32), label))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if training and augment:
        augment_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, augment_seeds).map(
            lambda batch, s: (augment_radiographs(batch[0], s), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=ordered,
        )
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = ordered
    return ds.with_options(options)
