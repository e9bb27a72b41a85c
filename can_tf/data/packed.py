"""Packed data sets: images decoded once into TFRecord shards, read back at disk speed.

A PNG pipeline decodes every 512-1024 px file on every epoch (or once into a cache that lives as
long as the process). :func:`pack` does that work once: each image of a data table goes through
the image door exactly as in training (:func:`can_tf.data.pipeline.load_file`: kind by content,
luminance, ``data.aspect``, antialiased resize, rounding) and is stored as its ``S x S`` uint8 gray
bytes in a ``tf.train.Example`` with its labels (float32, NaN kept), patient id, view, sex, age,
original path, image name and its ``(shard, record)`` key. Reading a record is then a copy:
:func:`packed_dataset` gives the same ``(images, labels)`` batches as
:func:`~can_tf.data.pipeline.make_dataset` on the files, with the same augmentation and tail
(:func:`~can_tf.data.pipeline.finish_batches`).

Layout of a packed folder::

    index.json                          written last: its presence means the folder is complete
    shard-00000-of-00037.tfrecord       ~shard_mb each
    ...
    train_val_list.txt, test_list.txt   NIH's official split lists, copied when the source has them

Sizes: a record is its image (``S * S`` bytes) plus about 200 bytes of metadata, so the number of
shards is known before the first image is decoded: ``records_per_shard = shard_bytes // (S*S +
RECORD_OVERHEAD)``. At 224 px that is 3,100 records in a 150 MB shard, and NIH's 112,120 images
make 37 shards, 5.6 GB, the size of the in-memory cache.

``index.json`` holds, per shard, the file name, record count, byte size, SHA-256 and the metadata
of its rows (column-wise), so :func:`read_packed_table` rebuilds the data table without opening
a shard and patient splits (:mod:`can_tf.data.splits`) work unchanged; the table carries two more
columns, ``shard`` and ``record``, the key :func:`packed_dataset` filters the records by.

Integrity: a shard whose size or SHA-256 differs from the index (a truncated copy, a partial
upload) raises :class:`~can_tf.data.errors.DataError` naming the file before any record is read.
Each shard is hashed once per process (about 1.5 GB/s; :func:`verify_shards`); ``verify="size"``
skips the hash. A record that fails its CRC while it is read (a shard changed after it was
verified, or read with ``verify="size"``) stops the read with TensorFlow's ``DataLossError``, which
names no file: :func:`name_bad_shard` checks the shards again and names the one at fault (the
trainer does this for ``fit``). Shards and the index are written atomically (temporary file, then
rename), so a killed ``pack`` leaves no folder that looks complete.

Paths go through ``tf.io.gfile``, so ``gs://`` (built into TensorFlow), ``s3://`` (tensorflow-io)
and ``ram://`` URLs work as ``data.source`` (:func:`can_tf.data.table.resolve_source`) and as the
pack's output. Of a remote folder, NIH's split lists are copied into a local folder,
``<cache>/packed-lists/<hash of the URL>/`` (:func:`~can_tf.data.phantom.cache_root`), which the
table names as its ``data_root``, so that ``data.split=official`` reads them. Multi-worker input
(``tf.distribute``) gives each input pipeline its own shard files (:func:`shard_files_for_worker`),
so workers never read each other's files.

Example:
    >>> import numpy as np, pandas as pd, tempfile
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> Image.fromarray(np.full((8, 8), 200, np.uint8)).save(f"{folder}/a.png")
    >>> df = pd.DataFrame({"image_index": ["a.png"], "path": [f"{folder}/a.png"], "patient_id": ["1"],
    ...                    "view": ["PA"], "age": [50.0], "sex": ["F"], "Effusion": [np.nan]})
    >>> result = pack(df, f"{folder}/packed", class_names=["Effusion"], image_size=4)
    >>> result.images, result.shards
    (1, ['shard-00000-of-00001.tfrecord'])
    >>> table, classes = read_packed_table(f"{folder}/packed")
    >>> images, labels = next(iter(packed_dataset(f"{folder}/packed", table, classes, 1, training=False)))
    >>> float(images[0, 0, 0, 0]), bool(np.isnan(labels[0, 0]))
    (200.0, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.data.errors import DataError, preview

logger = logging.getLogger(__name__)

FORMAT_NAME = "can-tf packed"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SHARD_NAME = "shard-{:05d}-of-{:05d}.tfrecord"
# Bytes a record takes besides its pixels: the Example's metadata (path, names, labels) and
# TFRecord's 16-byte framing. An estimate: it only sets how many records go into a shard.
RECORD_OVERHEAD = 512
VERIFY_MODES = ("sha256", "size")
_KEY_SHIFT = 2 ** 32  # key = shard * 2^32 + record: unique while a shard holds under 4 billion records
_HASH_CHUNK = 8 * 2 ** 20
_PROGRESS_EVERY = 256  # images between on_progress calls
_DECODE_BATCH = 32  # images handed from the decode stage to the writer at a time
# Copied beside the shards so data.split=official works on a packed NIH folder.
_SIDE_FILES = ("train_val_list.txt", "test_list.txt")
_verified: dict = {}  # (file, size, mtime) -> sha256 already checked in this process
_indexes: dict = {}  # (index file, size, mtime) -> the parsed index


@dataclasses.dataclass
class PackResult:
    """What :func:`pack` wrote."""

    out_dir: str
    images: int  # records written
    shards: list  # shard file names, in order
    bytes: int  # total size of the shards
    seconds: float  # wall time of decoding and writing
    skipped: list = dataclasses.field(default_factory=list)  # bad image files left out (on_bad_image=skip)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    @property
    def bytes_per_image(self) -> float:
        return self.bytes / self.images if self.images else 0.0


# ---- paths (local or remote, through tf.io.gfile) ------------------------------------------------
def _join(folder: str, name: str) -> str:
    return f"{str(folder).rstrip('/')}/{name}"


def _is_remote(path: str) -> bool:
    from can_tf.data.table import is_url  # one rule for what a URL is

    return is_url(str(path))


def _publish(path: str, write_fn: Callable[[str], None]) -> None:
    """``write_fn(tmp)`` writes the whole file; it then appears at ``path`` in one rename."""
    if not _is_remote(path):
        from can_tf.files import atomic_write

        atomic_write(path, write_fn)
        return
    import tensorflow as tf

    folder, _, name = path.rpartition("/")
    tmp = f"{folder}/.{name}.tmp-{time.time_ns()}"
    try:
        write_fn(tmp)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def _sha256(path: str) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- writing -------------------------------------------------------------------------------------
def _example(image: np.ndarray, labels: np.ndarray, row: dict, shard: int, record: int) -> bytes:
    import tensorflow as tf

    def text(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode("utf-8")]))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def ints(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "labels": floats(labels.tolist()),
        "age": floats([float(row["age"])]),
        "shard": ints(shard),
        "record": ints(record),
    }
    for name in ("image_index", "path", "patient_id", "view", "sex"):
        feature[name] = text(row[name])
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _column_values(values: pd.Series) -> list:
    """A table column as JSON values: floats with NaN as null, everything else as text."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        array = values.to_numpy(dtype=np.float64)
        return [None if np.isnan(v) else float(v) for v in array]
    return values.astype(str).tolist()


def _resolve_input(source, class_names, image_size, aspect, on_bad_image, max_pixels):
    """``(df, class_names, image_size, aspect, on_bad_image, max_pixels)`` from a DataConfig or a table."""
    from can_tf.images import DEFAULT_MAX_PIXELS

    if isinstance(source, pd.DataFrame):
        if class_names is None or image_size is None:
            raise ValueError("pack(df, ...) needs class_names and image_size")
        return (source, list(class_names), int(image_size), aspect or "stretch", on_bad_image or "stop",
                max_pixels or DEFAULT_MAX_PIXELS)
    from can_tf.data.table import load_table

    df, names = load_table(source)
    return (df, list(class_names or names), int(image_size or source.image_size), aspect or source.aspect,
            on_bad_image or source.on_bad_image, max_pixels or source.max_pixels)


def pack(
    source,
    out_dir: str,
    *,
    class_names: Optional[Sequence[str]] = None,
    image_size: Optional[int] = None,
    shard_mb: float = 150.0,
    aspect: Optional[str] = None,
    on_bad_image: Optional[str] = None,
    max_pixels: Optional[int] = None,
    overwrite: bool = False,
    on_progress: Optional[Callable[[int, int], None]] = None,
) -> PackResult:
    """Decodes every image of a data set once and writes it, with its row, into TFRecord shards.

    Args:
        source: a :class:`~can_tf.config.DataConfig` (read with :func:`~can_tf.data.table.load_table`;
            its ``image_size``, ``aspect``, ``on_bad_image`` and ``max_pixels`` are the defaults),
            or a data table (then ``class_names`` and ``image_size`` are required).
        out_dir: the packed folder (local, or a ``gs://``/``s3://`` URL).
        class_names: label columns stored, in order (default: the table's).
        image_size: side of the stored square images, in pixels.
        shard_mb: target shard size in MB (2^20 bytes).
        aspect: ``data.aspect`` for non-square images (default ``stretch``).
        on_bad_image: ``"stop"`` (raise naming the files) or ``"skip"`` (leave them out, warn), as
            the training pipeline does; files are scanned before any is decoded.
        max_pixels: files whose header claims more pixels are bad images.
        overwrite: replace an existing packed folder at ``out_dir``.
        on_progress: called as ``on_progress(images_done, images_total)`` while packing.

    Returns:
        A :class:`PackResult`.

    Raises:
        DataError: a bad image (named), ``out_dir`` already packed, or an empty table.

    Example:
        >>> result = pack(DataConfig(source="/data/ChestX-ray14"), "/data/nih-224", image_size=224)  # doctest: +SKIP
        >>> round(result.bytes_per_image)  # doctest: +SKIP
        50392
    """
    import tensorflow as tf

    from can_tf.data.pipeline import _check_arguments, _drop_bad_images
    from can_tf.images import check_aspect

    df, class_names, image_size, aspect, on_bad_image, max_pixels = _resolve_input(
        source, class_names, image_size, aspect, on_bad_image, max_pixels)
    if "packed_root" in df.attrs:
        raise DataError(f"{df.attrs['packed_root']} is packed already; pack the original data set instead")
    _check_arguments(df, class_names, image_size, 1, "none", on_bad_image)
    check_aspect(aspect)
    if not shard_mb > 0:
        raise ValueError(f"shard_mb must be positive, got {shard_mb!r}")
    missing = [c for c in ("image_index", "patient_id", "view", "age", "sex") if c not in df.columns]
    if missing:
        raise DataError(f"the data table has no column(s) {missing}; it has {list(df.columns)}")
    out_dir = str(out_dir).rstrip("/")
    index_path = _join(out_dir, INDEX_FILE)
    old_files = _existing_shards(out_dir, index_path, overwrite)

    start = time.perf_counter()
    if len(df) == 0:
        raise DataError("the data table has no rows to pack")
    listed = set(df["path"].astype(str))
    df = _drop_bad_images(df, on_bad_image, max_pixels).reset_index(drop=True)
    paths = df["path"].astype(str).tolist()
    skipped = sorted(listed - set(paths))
    labels = df[class_names].to_numpy(dtype=np.float32)
    per_shard = max(1, int(shard_mb * 2 ** 20) // (image_size * image_size + RECORD_OVERHEAD))
    num_shards = -(-len(df) // per_shard)
    extra = [c for c in df.columns if c not in class_names and c not in ("shard", "record")]

    stream = _decoded(paths, image_size, aspect)
    rows = df[extra].to_dict("records")
    done = 0
    shards = []
    tf.io.gfile.makedirs(out_dir)
    for shard in range(num_shards):
        lo, hi = shard * per_shard, min(len(df), (shard + 1) * per_shard)
        name = SHARD_NAME.format(shard, num_shards)

        def write(tmp, lo=lo, hi=hi, shard=shard):
            nonlocal done
            with tf.io.TFRecordWriter(tmp) as writer:
                for i in range(lo, hi):
                    writer.write(_example(next(stream), labels[i], rows[i], shard, i - lo))
                    done += 1
                    if on_progress is not None and (done % _PROGRESS_EVERY == 0 or done == len(df)):
                        on_progress(done, len(df))

        path = _join(out_dir, name)
        _publish(path, write)
        part = df.iloc[lo:hi]
        shards.append({
            "file": name, "records": hi - lo, "bytes": int(tf.io.gfile.stat(path).length), "sha256": _sha256(path),
            "rows": {**{c: _column_values(part[c]) for c in extra},
                     "labels": [[None if np.isnan(v) else float(v) for v in row] for row in labels[lo:hi]]},
        })
    _copy_side_files(df, out_dir)
    index = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "image_size": image_size, "aspect": aspect,
        "dtype": "uint8", "channels": 1, "class_names": class_names, "columns": extra,
        "records": len(df), "source": str(df.attrs.get("data_root", "")), "shards": shards,
    }
    _publish(index_path, lambda tmp: _write_text(tmp, json.dumps(index, allow_nan=False)))
    for stale in sorted(set(old_files) - {s["file"] for s in shards}):  # an overwritten, larger pack
        tf.io.gfile.remove(_join(out_dir, stale))
    return PackResult(out_dir=out_dir, images=len(df), shards=[s["file"] for s in shards],
                      bytes=sum(s["bytes"] for s in shards), seconds=time.perf_counter() - start, skipped=skipped)


def _write_text(path: str, text: str) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def _decoded(paths: Sequence[str], image_size: int, aspect: str):
    """The images of ``paths`` in order, uint8 ``(S, S, 1)``, decoded by the training pipeline's
    stage (:func:`~can_tf.data.pipeline.load_file`) in parallel.

    Batches of :data:`_DECODE_BATCH` cut the per-element cost of leaving tf.data (about 30% of a
    224 px pack); a decode failure is traced to its file by decoding that batch's files one by one.
    """
    import tensorflow as tf

    from can_tf.data.pipeline import load_file, parallel_calls, pipeline_options

    ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        lambda path: load_file(path, image_size, aspect), num_parallel_calls=parallel_calls(), deterministic=True)
    ds = ds.batch(_DECODE_BATCH).prefetch(2).with_options(pipeline_options(ordered=True))
    batches = ds.as_numpy_iterator()
    for start in range(0, len(paths), _DECODE_BATCH):
        try:
            batch = next(batches)
        except tf.errors.OpError as exc:
            raise _decode_error(paths[start:start + _DECODE_BATCH], image_size, aspect, exc) from None
        yield from batch


def _decode_error(paths: Sequence[str], image_size: int, aspect: str, exc) -> DataError:
    import tensorflow as tf

    from can_tf.data.pipeline import load_file

    for path in paths:
        try:
            load_file(tf.constant(path), image_size, aspect)
        except tf.errors.OpError as single:
            exc = single
            break
    else:
        path = f"one of {preview(paths)}"
    detail = (exc.message or str(exc)).strip().splitlines()[0]
    return DataError(f"cannot decode image {path}: {detail}")


def _existing_shards(out_dir: str, index_path: str, overwrite: bool) -> list:
    """Shard files of an earlier pack at ``out_dir`` (removed after the new index is written)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(index_path):
        return []
    if not overwrite:
        raise DataError(f"{out_dir} holds a packed data set already ({INDEX_FILE}); remove it or pass overwrite")
    old = [s["file"] for s in read_index(out_dir)["shards"]]
    # Without its index the folder no longer looks complete while the new shards are written.
    tf.io.gfile.remove(index_path)
    return old


def _copy_side_files(df: pd.DataFrame, out_dir: str) -> None:
    import tensorflow as tf

    root = df.attrs.get("data_root")
    for name in _SIDE_FILES if root else ():
        source = _join(root, name)
        if tf.io.gfile.exists(source):
            tf.io.gfile.copy(source, _join(out_dir, name), overwrite=True)


# ---- reading -------------------------------------------------------------------------------------
def is_packed(path) -> bool:
    """True when ``path`` is a folder holding a packed data set's ``index.json``.

    Example:
        >>> is_packed("/nonexistent")
        False
    """
    if not _is_remote(str(path)):  # local: no TensorFlow import for data.format=auto's question
        return (Path(path) / INDEX_FILE).is_file()
    import tensorflow as tf

    return tf.io.gfile.exists(_join(str(path), INDEX_FILE))


detect = is_packed  # data.format=auto asks each reader module's detect(path)


def read_index(path) -> dict:
    """The parsed ``index.json`` of packed folder ``path``, checked for format and version.

    Parsed once per process while the file's size and time stamp stay the same (NIH's index is
    about 30 MB; a run reads it for the table and for each split's pipeline).
    """
    import tensorflow as tf

    index_path = _join(str(path), INDEX_FILE)
    try:
        stat = tf.io.gfile.stat(index_path)
        key = (index_path, stat.length, stat.mtime_nsec)
        if key in _indexes:
            return _indexes[key]
        with tf.io.gfile.GFile(index_path, "r") as f:
            index = json.loads(f.read())
    except tf.errors.NotFoundError:
        raise DataError(f"{path} has no {INDEX_FILE}: not a packed data set (write one with `can-tf data pack`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{index_path}: not valid JSON ({exc})") from None
    except tf.errors.OpError as exc:  # a remote file system: no credentials, no network, no plugin
        raise DataError(f"cannot read {index_path}: {_op_error_line(exc)}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise DataError(f"{index_path} is not a can-tf packed index (no \"format\": \"{FORMAT_NAME}\")")
    if index.get("version") != FORMAT_VERSION:
        raise DataError(f"{index_path} has version {index.get('version')!r}; this can-tf reads version "
                        f"{FORMAT_VERSION} (re-pack the data set)")
    _indexes.clear()  # one index held at a time
    _indexes[key] = index
    return index


def read_packed_table(path) -> tuple:
    """The data table of a packed folder, from its index alone: ``(df, class_names)``.

    ``df`` has the table's columns (:data:`can_tf.data.table.BASE_COLUMNS`, any extra columns such
    as ``official_split``, one per class) plus ``shard`` and ``record``; ``df.attrs`` carries
    ``format="packed"``, ``packed_root`` (``path`` as given: a URL stays a URL), ``image_size``,
    ``aspect`` and ``data_root``, where split lists are found: the folder, or for a URL holding
    NIH's lists a local copy of them (see the module docstring).

    Example:
        >>> df, class_names = read_packed_table("/data/nih-224")  # doctest: +SKIP
        >>> df[["image_index", "shard", "record"]].head(2)  # doctest: +SKIP
    """
    from can_tf.data.table import BASE_COLUMNS, make_table

    index = read_index(path)
    class_names = list(index["class_names"])
    columns = list(index["columns"])
    parts = []
    for number, shard in enumerate(index["shards"]):
        rows = shard["rows"]
        n = int(shard["records"])
        lengths = {len(values) for values in rows.values()}
        if lengths != {n}:
            raise DataError(f"{_join(str(path), INDEX_FILE)}: shard {shard['file']} lists {sorted(lengths)} "
                            f"rows for {n} records")
        labels = np.array(rows["labels"], dtype=np.float64).reshape(n, len(class_names)).astype(np.float32)
        part = make_table(rows["image_index"], rows["path"], rows["patient_id"], labels, class_names,
                          view=rows["view"], age=np.array(rows["age"], dtype=np.float64), sex=rows["sex"])
        for column in columns:
            if column not in BASE_COLUMNS:
                values = rows[column]
                numeric = all(v is None or isinstance(v, (int, float)) for v in values)
                part[column] = np.array(values, dtype=np.float64) if numeric else np.asarray(values, dtype=object)
        part["shard"] = number
        part["record"] = np.arange(n, dtype=np.int64)
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    df = df[[*BASE_COLUMNS, *[c for c in columns if c not in BASE_COLUMNS], *class_names, "shard", "record"]]
    df.attrs = {"format": "packed", "packed_root": str(path), "data_root": _split_lists_folder(str(path)),
                "image_size": int(index["image_size"]), "aspect": index["aspect"], "missing_images": 0}
    return df, class_names


def _split_lists_folder(path: str) -> str:
    """Where ``data.split=official`` finds the NIH lists of packed folder ``path``: the folder
    itself when local; for a URL, a local copy of the lists it holds, read through ``tf.io.gfile``
    (the split readers open local files), or the URL itself when it holds none."""
    if not _is_remote(path):
        return path
    import tensorflow as tf

    from can_tf.data.phantom import cache_root
    from can_tf.files import atomic_write_bytes

    present = [name for name in _SIDE_FILES if tf.io.gfile.exists(_join(path, name))]
    if not present:
        return path
    local = cache_root() / "packed-lists" / hashlib.sha256(path.rstrip("/").encode("utf-8")).hexdigest()[:16]
    for name in _SIDE_FILES:
        if name in present:
            with tf.io.gfile.GFile(_join(path, name), "rb") as f:
                atomic_write_bytes(local / name, f.read())
        else:  # the copy mirrors the folder: no list left over from an earlier version of it
            (local / name).unlink(missing_ok=True)
    return str(local)


def load_packed(source, class_names: Sequence[str], *, image_root=None) -> pd.DataFrame:
    """The data table of a packed folder with the requested classes, for :data:`can_tf.data.table.READERS`.

    Classes the folder does not carry are unknown (NaN) and logged; none at all is an error.
    """
    if image_root is not None:
        raise DataError(f"data.image_root does not apply to packed data ({source} holds its images)")
    df, packed = read_packed_table(source)
    wanted = list(class_names)
    absent = [c for c in wanted if c not in packed]
    if len(absent) == len(wanted):
        raise DataError(f"packed data {source} has classes {preview(packed)}, none of data.class_names "
                        f"({preview(wanted)})")
    if absent:
        logger.warning("packed data %s has no labels for %s; they are unknown (NaN)", source, preview(absent))
    attrs = df.attrs
    labels = {c: (df[c] if c in packed else pd.Series(np.nan, index=df.index, dtype=np.float32)) for c in wanted}
    df = pd.concat([df.drop(columns=packed), pd.DataFrame(labels)], axis=1)
    base = [c for c in df.columns if c not in wanted and c not in ("shard", "record")]
    df = df[[*base, *wanted, "shard", "record"]]
    df.attrs = attrs
    return df


def verify_shards(path, files: Sequence[str], mode: str = "sha256") -> None:
    """Checks shard files of packed folder ``path`` against its index: size, and with ``"sha256"``
    the digest (each file hashed once per process while its size and time stamp stay the same).

    Raises:
        DataError: naming the first shard that is missing, of another size, or of another digest.
    """
    import tensorflow as tf

    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {mode!r}")
    by_name = {s["file"]: s for s in read_index(path)["shards"]}
    for name in files:
        expected = by_name[name]
        file = _join(str(path), name)
        try:
            stat = tf.io.gfile.stat(file)
        except tf.errors.NotFoundError:
            raise DataError(f"shard {file} is missing (listed in {INDEX_FILE})") from None
        if stat.length != expected["bytes"]:
            raise DataError(f"shard {file} has {stat.length:,} bytes, the index says {expected['bytes']:,}: "
                            f"truncated or replaced; re-copy or re-pack it")
        key = (file, stat.length, stat.mtime_nsec)
        if mode == "sha256" and _verified.get(key) != expected["sha256"]:
            if _sha256(file) != expected["sha256"]:
                raise DataError(f"shard {file} does not match its SHA-256 in {INDEX_FILE}: corrupt; "
                                f"re-copy or re-pack it")
            _verified[key] = expected["sha256"]


def name_bad_shard(path, files: Optional[Sequence[str]] = None, error: Optional[BaseException] = None) -> DataError:
    """The error for a read of packed folder ``path`` that failed part-way, naming the shard at fault.

    TFRecord's ``DataLossError`` ("corrupted record at N") names no file. This checks the shard
    files again against the index, afresh (the per-process record of verified shards is ignored,
    since a file may have changed after it was verified): size, then SHA-256.

    Args:
        path: the packed folder (local or a URL).
        files: the shard file names the failed pipeline read; default: every shard of the index.
        error: the error the read raised; its type and first line go into the message.

    Returns:
        A :class:`~can_tf.data.errors.DataError` (to raise) naming the first shard of ``files``
        that is missing, of another size or of another digest; or, when every one matches the
        index, naming the folder and ``error``.

    Example:
        >>> try:  # doctest: +SKIP
        ...     model.fit(packed_dataset(folder, table, classes, 32, training=True, verify="size"))
        ... except tf.errors.DataLossError as e:
        ...     raise name_bad_shard(folder, error=e) from e
    """
    import tensorflow as tf

    path = str(path).rstrip("/")
    cause = "the read failed" if error is None else f"{type(error).__name__} while reading: {_op_error_line(error)}"
    by_name = {s["file"]: s for s in read_index(path)["shards"]}
    for name in by_name if files is None else files:
        expected = by_name[name]
        file = _join(path, name)
        try:
            length = tf.io.gfile.stat(file).length
        except tf.errors.NotFoundError:
            return DataError(f"shard {file} is missing ({cause}); it is listed in {INDEX_FILE}: re-copy or re-pack it")
        if length != expected["bytes"] or _sha256(file) != expected["sha256"]:
            for key in [k for k in _verified if k[0] == file]:  # verify_shards hashes it again next time
                del _verified[key]
            what = ("its SHA-256 differs from the index" if length == expected["bytes"] else
                    f"{length:,} bytes, the index says {expected['bytes']:,}: truncated or replaced")
            return DataError(f"shard {file} is corrupt ({cause}; {what}): re-copy or re-pack it")
    return DataError(f"packed data {path}: {cause}, yet every shard read matches its size and SHA-256 in "
                     f"{INDEX_FILE}; the storage returned bad bytes: retry, and re-copy the folder if it recurs")


def _op_error_line(error: BaseException) -> str:
    """The line of a TensorFlow error's message that says what failed, without the graph context TF
    adds (``{{function_node ...}}``, ``[[{{node ...}}]]``, ``[Op:...]``, and the "Graph execution
    error" header with its stack of frames that an error inside a ``tf.function`` comes with).

    Example:
        >>> _op_error_line(ValueError("Graph execution error:\\n\\nDetected at node IteratorGetNext defined at "
        ...                           "(most recent call last):\\n  File \\"x.py\\", line 1, in f\\n\\n"
        ...                           "corrupted record at 96\\n\\t [[{{node IteratorGetNext}}]] [Op:f_1]"))
        'corrupted record at 96'
    """
    text = getattr(error, "message", None) or str(error)
    lines = []
    for raw in text.splitlines():
        if raw[:1].isspace() and raw.strip().startswith("File "):
            continue  # a frame of the stack TF shows for a node of a tf.function
        line = " ".join(re.sub(r"\[\[.*?\]\]|\{\{.*?\}\}|\[Op:[^\]]*\](\s*name:\s*\S*)?", " ", raw).split())
        if line and line != "Graph execution error:" and not line.startswith("Detected at node "):
            lines.append(line)
    return lines[0] if lines else type(error).__name__


def shard_files_for_worker(files: Sequence[str], num_workers: int, worker_index: int) -> list:
    """The shard files input pipeline ``worker_index`` of ``num_workers`` reads: every
    ``num_workers``-th file, so the lists are disjoint and together cover ``files``.

    Example:
        >>> shard_files_for_worker(["a", "b", "c", "d", "e"], 2, 1)
        ['b', 'd']
    """
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index must be in [0, {num_workers}), got {worker_index}")
    files = list(files)
    if len(files) < num_workers:
        raise DataError(f"{len(files)} shard file(s) cannot give each of {num_workers} input pipelines its "
                        f"own files; re-pack with a smaller shard_mb (at least {num_workers} shards)")
    return files[worker_index::num_workers]


def packed_dataset(
    path,
    df: pd.DataFrame,
    class_names: Sequence[str],
    batch_size: int,
    *,
    training: bool,
    image_size: Optional[int] = None,
    augment: bool = False,
    cache: str = "none",
    deterministic: bool = False,
    seed: int = 0,
    input_context=None,
    drop_remainder: bool = False,
    aspect: Optional[str] = None,
    verify: str = "sha256",
):
    """The rows of ``df`` (a table from :func:`read_packed_table`, or part of one) read from the
    shards of ``path``: the same ``(images, labels)`` batches as :func:`~can_tf.data.pipeline.make_dataset`.

    Records are kept when their ``(shard, record)`` key is a row of ``df``; labels come from ``df``
    (its ``class_names`` columns, so a relabelled table is honoured). ``training=False`` gives the
    rows in ``df``'s order. Training reads the shard files in a seeded order, interleaved, through a
    seeded shuffle buffer (at most 256 MB of images, as the file pipeline's post-cache one) and, with
    ``augment``, the same augmentation. ``cache="memory"`` keeps the decoded records in memory; a
    file cache prefix is not used (the shards already are one). ``image_size`` and ``aspect``, when
    given, must be those the folder was packed with.

    Raises:
        DataError: a shard of another size or digest than the index says (named), a table without
            ``shard``/``record`` columns, or an image size or aspect other than the packed one.
    """
    import tensorflow as tf

    from can_tf.data.pipeline import SHUFFLE_BUFFER_BYTES, finish_batches, parallel_calls

    path = str(path).rstrip("/")
    index = read_index(path)
    size = int(index["image_size"])
    if image_size is not None and int(image_size) != size:
        raise DataError(f"{path} is packed at {size} px, not {image_size}: set data.image_size={size} or "
                        f"re-pack with --image-size {image_size}")
    if aspect is not None and aspect != index["aspect"]:
        raise DataError(f"{path} is packed with data.aspect={index['aspect']}, not {aspect}: re-pack it")
    class_names = list(class_names)
    missing = [c for c in ["shard", "record", *class_names] if c not in df.columns]
    if missing:
        raise DataError(f"the data table has no column(s) {missing}; read it with read_packed_table({path!r})")
    if len(df) == 0:
        raise DataError("the data table has no rows to read")
    keys = df["shard"].to_numpy(np.int64) * _KEY_SHIFT + df["record"].to_numpy(np.int64)
    if len(np.unique(keys)) != len(keys):
        raise DataError("the data table lists a packed record twice (repeated shard/record pairs)")
    labels = df[class_names].to_numpy(dtype=np.float32)
    names = [index["shards"][s]["file"] for s in sorted(df["shard"].unique())]
    verify_shards(path, names, verify)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        if input_context.num_input_pipelines > 1:
            names = shard_files_for_worker(names, input_context.num_input_pipelines, input_context.input_pipeline_id)
    files = [_join(path, name) for name in names]
    ordered = deterministic or not training
    parallel = parallel_calls()

    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys), dtype=tf.int64)), -1)
    features = {"image": tf.io.FixedLenFeature([], tf.string), "shard": tf.io.FixedLenFeature([], tf.int64),
                "record": tf.io.FixedLenFeature([], tf.int64)}
    label_tensor = tf.constant(labels)

    def parse(serialized):
        example = tf.io.parse_single_example(serialized, features)
        return table.lookup(example["shard"] * _KEY_SHIFT + example["record"]), example["image"]

    def image_and_label(row, raw):
        image = tf.reshape(tf.io.decode_raw(raw, tf.uint8), [size, size, 1])
        return image, tf.gather(label_tensor, row)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=cache == "none")
    # Evaluation reads file after file, so records come in (shard, record) order.
    cycle = min(len(files), parallel) if training else 1
    if cycle > 1:
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
                           num_parallel_calls=cycle, deterministic=ordered)
    else:
        ds = ds.flat_map(tf.data.TFRecordDataset)
    ds = ds.map(parse, num_parallel_calls=parallel, deterministic=ordered).filter(lambda row, raw: row >= 0)
    in_order = bool(np.all(np.diff(keys) > 0))
    if not training and not in_order:
        ds = _in_row_order(ds, len(keys))
    ds = ds.map(image_and_label, num_parallel_calls=parallel, deterministic=ordered)
    if cache == "memory":
        ds = ds.cache()
    if training:
        buffer = int(min(len(keys), max(1024, SHUFFLE_BUFFER_BYTES // (size * size))))
        ds = ds.shuffle(max(1, buffer), seed=seed + 1, reshuffle_each_iteration=True)
    return finish_batches(ds, batch_size, augment=training and augment, seed=seed, ordered=ordered,
                          drop_remainder=drop_remainder)


def _in_row_order(ds, rows: int):
    """``(row, raw)`` elements re-emitted by row number: for an evaluation table whose rows are not
    in the shards' order (the selected records are held in memory, as raw bytes, meanwhile)."""
    import tensorflow as tf

    def rows_in_order():
        held = [None] * rows
        for row, raw in ds.as_numpy_iterator():
            held[row] = raw
        for row, raw in enumerate(held):
            yield row, raw

    return tf.data.Dataset.from_generator(
        rows_in_order, output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string)))


@contextlib.contextmanager
def shard_read_errors_named(table_attrs: dict):
    """A packed table's shard that fails mid-read (TFRecord's ``DataLossError``, which names no
    file) leaves as the :class:`~can_tf.errors.DataError` of
    :func:`can_tf.data.packed.name_bad_shard`, naming the shard. The exception still ends ``fit``
    as before: the epochs committed earlier stay in the run directory. Other tables' errors pass
    unchanged. Used around every loop that reads a data table: ``fit``, its test prediction and
    ``evaluate``."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.DataLossError as error:
        if "packed_root" not in table_attrs:
            raise
        raise name_bad_shard(table_attrs["packed_root"], error=error) from error
