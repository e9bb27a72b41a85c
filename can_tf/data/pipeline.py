"""The tf.data input pipeline: files + labels -> batches of grayscale images and multi-hot labels.

For each row of the data table: read the file and decode it through the image door
(:mod:`can_tf.images`: kinds by content, PNG 8/16-bit or JPEG decoded by ``tf.io``, luminance, the
config's ``data.aspect`` policy for non-square images, antialiased resize, rounding), store it as
uint8, then (training only) shuffle and augment, batch, prefetch. Images leave the pipeline as
float32 in [0, 255] with one channel; the model replicates channels and applies its backbone's
preprocessing, so the same pipeline feeds every backbone.

Choices, and why:

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
- **Bad images** are found before the pipeline starts, by :func:`can_tf.images.scan_images`
  over the table's files (the door's checks, the ``data.max_pixels`` limit included) (about 0.25 ms a 512 px PNG with 2 threads, 0.15 s for 546 images: a
  TensorFlow decode error mid-epoch would not name the file). ``on_bad_image="stop"`` raises a
  :class:`~can_tf.data.errors.DataError` listing the bad files and why; ``"skip"`` drops them and
  warns (:class:`BadImageWarning`) with their names and count.
- **Labels** go through untouched: float32, NaN where unknown (the losses mask NaN).
- **No tf.data autotuning** (``options.autotune.enabled = False``; :func:`pipeline_options`): with
  it on, every iterator runs a model thread that re-tunes the pipeline after 10 ms, 20 ms, 40 ms,
  ... doubling up to 60 s, and destroying the iterator waits for that thread's next wake-up. Every
  ``fit`` call (Keras makes one iterator per call) and every validation pass then lasts until the
  next of 0.01 x (2^k - 1) s after the iterator's creation: 5 steps of 1.43 s took 10.23 s and 12
  steps 20.47 s. The parallel stages instead use every core the process may run on
  (:func:`parallel_calls`), what autotuning settles on for a CPU-bound decode, and prefetch
  :data:`PREFETCH_BATCHES` batches.

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
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from can_tf.data.errors import DataError
from can_tf.images import DEFAULT_MAX_PIXELS

CACHE_MODES = ("none", "memory")  # or a file path prefix
BAD_IMAGE_MODES = ("stop", "skip")
SHUFFLE_BUFFER_BYTES = 256 * 2 ** 20  # post-cache shuffle buffer, in bytes of uint8 images
_MAX_LISTED = 10  # bad files named in a message; the count covers the rest
# Batches ready ahead of the consumer: enough to hide the jitter of one augmented batch; the
# parallel map stages, not the buffer, set the throughput.
PREFETCH_BATCHES = 2



class BadImageWarning(UserWarning):
    """Images were skipped because they could not be read (``on_bad_image="skip"``)."""


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


def _drop_bad_images(df, on_bad_image: str, max_pixels):
    """Scans the table's files; stops naming the bad ones, or drops them with a warning."""
    from can_tf.images import scan_images

    paths = df["path"].astype(str)
    bad = scan_images(paths.unique().tolist(), max_pixels=max_pixels)
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
                shuffle_seed=None, aspect: str = "stretch") -> str:
    """A cache file name unique to this file list, image size, aspect policy, shard and (training)
    shuffle seed."""
    key = "\n".join(paths) + ("" if shuffle_seed is None else f"\nshuffle seed {shuffle_seed}")
    key += "" if aspect == "stretch" else f"\naspect {aspect}"  # stretch: the names caches had before
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    shard = ""
    if input_context is not None:
        shard = f"-shard{input_context.input_pipeline_id}of{input_context.num_input_pipelines}"
    name = f"{prefix}-{image_size}px-{digest}{shard}"
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    return name


# ---- the pipeline ------------------------------------------------------------------------------
def parallel_calls() -> int:
    """Parallel calls of the decode and augment stages: the cores this process may run on.

    Example:
        >>> parallel_calls() >= 1
        True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def pipeline_options(ordered: bool):
    """The ``tf.data.Options`` of every can-tf pipeline: element order kept when ``ordered``, and
    autotuning off, so that an iterator is torn down at once (see the module docstring).

    Example:
        >>> options = pipeline_options(ordered=True)
        >>> options.deterministic, options.autotune.enabled
        (True, False)
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = ordered
    options.autotune.enabled = False
    return options


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
    aspect: str = "stretch",
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
):
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches from a data table.

    Args:
        df: the data table (columns ``path`` and one per class; see :mod:`can_tf.data.table`).
            A table read from packed TFRecord shards (``df.attrs["packed_root"]``) is fed from
            them instead, by :func:`can_tf.data.packed.packed_dataset`.
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
        aspect: how non-square images become square (``data.aspect``, see :mod:`can_tf.images`).
        max_pixels: files whose header claims more pixels are bad images (``data.max_pixels``).

    Returns:
        A dataset of ``images`` float32 (B, S, S, 1) in [0, 255] and ``labels`` float32 (B, C),
        NaN where a label is unknown.

    Example:
        >>> ds = make_dataset(df, ["Effusion"], 64, 8, training=False)  # doctest: +SKIP
    """
    import tensorflow as tf

    from can_tf.images import check_aspect

    if "packed_root" in df.attrs:  # a table read from TFRecord shards: see can_tf.data.packed
        from can_tf.data.packed import packed_dataset

        return packed_dataset(df.attrs["packed_root"], df, class_names, batch_size, training=training,
                              image_size=image_size, augment=augment, cache=cache, deterministic=deterministic,
                              seed=seed, input_context=input_context, drop_remainder=drop_remainder, aspect=aspect)
    class_names = list(class_names)
    _check_arguments(df, class_names, image_size, batch_size, cache, on_bad_image)
    check_aspect(aspect)
    df = _drop_bad_images(df, on_bad_image, max_pixels)
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
        return load_file(path, image_size, aspect), label

    parallel = parallel_calls()
    ds = ds.map(load, num_parallel_calls=parallel, deterministic=ordered)
    if cache == "memory":
        ds = ds.cache()
    elif cache != "none":
        ds = ds.cache(_cache_file(cache, paths, image_size, input_context,
                                  shuffle_seed=seed if training else None, aspect=aspect))
    if training and cache != "none":
        buffer = int(min(len(paths), max(1024, SHUFFLE_BUFFER_BYTES // (image_size * image_size))))
        ds = ds.shuffle(max(1, buffer), seed=seed + 1, reshuffle_each_iteration=True)
    return finish_batches(ds, batch_size, augment=training and augment, seed=seed, ordered=ordered,
                          drop_remainder=drop_remainder)


def load_file(path, image_size: int, aspect: str = "stretch"):
    """One image file (a string tensor) -> uint8 ``(S, S, 1)`` through the image door: the decode
    stage of :func:`make_dataset`, shared with :func:`can_tf.data.packed.pack`."""
    import tensorflow as tf

    from can_tf.images import decode_and_resize

    return decode_and_resize(tf.io.read_file(path), image_size, aspect, path)


def finish_batches(ds, batch_size: int, *, augment: bool, seed: int, ordered: bool, drop_remainder: bool):
    """The tail every pipeline shares: uint8 ``(image, label)`` elements -> float32 batches,
    augmented when ``augment``, prefetched, with :func:`pipeline_options`."""
    import tensorflow as tf

    from can_tf.data.augment import augment_radiographs

    ds = ds.map(lambda image, label: (tf.cast(image, tf.float32), label))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment:
        augment_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, augment_seeds).map(
            lambda batch, s: (augment_radiographs(batch[0], s), batch[1]),
            num_parallel_calls=parallel_calls(),
            deterministic=ordered,
        )
    ds = ds.prefetch(PREFETCH_BATCHES)
    return ds.with_options(pipeline_options(ordered))
