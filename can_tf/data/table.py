"""The data table every part of can-tf reads: one row per image, labels in canonical order.

Columns, in this order: ``image_index`` (the image's name, unique), ``path`` (absolute path str),
``patient_id`` (str), ``view`` (``"PA"``, ``"AP"`` or ``""``), ``age`` (float years, NaN unknown),
``sex`` (``"M"``, ``"F"`` or ``""``), then one float32 column per class (1.0 positive, 0.0 negative,
NaN unknown). :func:`load_table` builds it from a :class:`~can_tf.config.DataConfig`: a ChestX-ray14
folder or label file, a generic CSV, or the built-in phantom data set when ``source`` is None.

Example:
    >>> from can_tf.config import DataConfig
    >>> df, class_names = load_table(DataConfig(source="/data/ChestX-ray14", views=["PA"]))
    >>> prevalence = class_prevalence(df, class_names)  # positives / known labels, per class
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from can_tf.data.errors import DataError, preview

logger = logging.getLogger(__name__)

BASE_COLUMNS = ("image_index", "path", "patient_id", "view", "age", "sex")
# format -> (module, loader): each loader(source, class_names, *, image_root=None, **options) -> table.
READERS = {
    "chestxray14": ("can_tf.data.chestxray14", "load_chestxray14"),
    "csv": ("can_tf.data.csv_dataset", "load_csv"),
    "chexpert": ("can_tf.data.chexpert", "load_chexpert"),
    "mimic": ("can_tf.data.mimic", "load_mimic"),
    "padchest": ("can_tf.data.padchest", "load_padchest"),
    "vindr": ("can_tf.data.vindr", "load_vindr"),
    "nih-google": ("can_tf.data.nih_google", "load_nih_google"),
    "packed": ("can_tf.data.packed", "load_packed"),  # TFRecord shards written by `can-tf data pack`
}
FORMATS = ("auto", *READERS)
# Tried in this order by data.format=auto (each module's detect(path)); NIH and plain CSV come last.
_DETECTED = ("packed", "nih-google", "mimic", "chexpert", "padchest", "vindr")
VIEWS = ("PA", "AP")
SEXES = ("M", "F")
MAX_AGE = 120.0  # years; NIH's first release had ages like 414 that are typos, not patients

_AGE_UNITS = {"": 1.0, "Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.0}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Schemes that TensorFlow itself lacks and the tensorflow-io package registers for it.
_TENSORFLOW_IO_SCHEMES = ("s3", "hdfs", "viewfs", "har", "az", "http", "https")


def read_string_table(path: os.PathLike, what: str, *, nrows: Optional[int] = None, usecols=None) -> pd.DataFrame:
    """Reads a CSV as strings (blank cells stay ``""``, headers stripped), with errors naming ``what``.

    ``what`` is how the message names the file, e.g. ``"label file"`` or ``"CSV"``; ``nrows`` and
    ``usecols`` are pandas' (``nrows=0``: the header only; ``usecols``: skip columns not needed).
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=nrows, usecols=usecols)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} {path} is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw


def line_numbers(lines, limit: int = 3) -> str:
    """``line 4, line 9 and 2 more``: 1-based line numbers of a file (header = line 1) for messages.

    Example:
        >>> line_numbers([4, 9, 12, 30, 31])
        'line 4, line 9, line 12 and 2 more'
    """
    lines = [int(n) for n in lines]
    shown = ", ".join(f"line {n}" for n in lines[:limit])
    rest = len(lines) - limit
    return f"{shown} and {rest:,} more" if rest > 0 else shown


def check_image_names(names: pd.Series, lines: np.ndarray, where: str, column: str) -> None:
    """Every row of a label file names its image, once; else a DataError naming file, lines, column."""
    lines = np.asarray(lines)
    blank = (names == "").to_numpy()
    if blank.any():
        raise DataError(f"{where}, {line_numbers(lines[blank])}, column {column!r}: blank (every row names its image)")
    repeated = names.duplicated(keep=False).to_numpy()
    if repeated.any():
        first = names[repeated].iloc[0]
        raise DataError(f"{where}, column {column!r}: {first} is listed on "
                        f"{line_numbers(lines[(names == first).to_numpy()])}; each image is listed once "
                        f"({int(names[repeated].nunique()):,} image(s) repeated)")


def check_images_in_one_file(first: pd.DataFrame, second: pd.DataFrame, column: str) -> None:
    """No image in two label files of one data set (each split its own file); both frames carry
    ``image_index``, ``file`` and ``line`` columns."""
    both = second["image_index"].isin(first["image_index"]).to_numpy()
    if both.any():
        row = second.loc[both].iloc[0]
        other = first.loc[first["image_index"] == row["image_index"]].iloc[0]
        raise DataError(f"{row['file']}, line {row['line']}, column {column!r}: {row['image_index']} is "
                        f"also in {other['file']} (line {other['line']}); an image belongs to one split "
                        f"({int(both.sum()):,} image(s) in both)")


def make_table(image_index, path, patient_id, labels: np.ndarray, class_names: Sequence[str], *,
               view=None, age=None, sex=None) -> pd.DataFrame:
    """Assembles the agreed columns in the agreed order; ``labels`` is (rows, classes)."""
    n = len(image_index)
    df = pd.DataFrame({
        "image_index": pd.Series(image_index, dtype=str).to_numpy(),
        "path": pd.Series(path, dtype=str).to_numpy(),
        "patient_id": pd.Series(patient_id, dtype=str).to_numpy(),
        "view": np.full(n, "", dtype=object) if view is None else np.asarray(view, dtype=object),
        "age": np.full(n, np.nan) if age is None else np.asarray(age, dtype=np.float64),
        "sex": np.full(n, "", dtype=object) if sex is None else np.asarray(sex, dtype=object),
    })
    for i, name in enumerate(class_names):
        df[name] = np.asarray(labels[:, i], dtype=np.float32)
    for column in ("view", "sex"):
        df[column] = df[column].astype(str)
    return df


def on_distinct(values: pd.Series, fn) -> np.ndarray:
    """Applies ``fn`` (Series -> array) to the distinct values only and spreads the result back.

    Columns such as view, sex or age hold a few hundred distinct strings in 112k rows; pandas string
    methods loop in Python, so working on the distinct values is what keeps loading fast.
    """
    codes, distinct = pd.factorize(values.fillna("").astype(str))
    return np.asarray(fn(pd.Series(distinct, dtype=object)))[codes]


def normalise_view(values: pd.Series) -> np.ndarray:
    """``PA``/``AP`` in any case; anything else (blank, lateral) becomes ``""``."""
    def normalise(distinct):
        upper = distinct.str.strip().str.upper()
        return np.where(upper.isin(VIEWS), upper, "").astype(object)
    return on_distinct(values, normalise)


def normalise_sex(values: pd.Series) -> np.ndarray:
    """``M``/``F`` (also ``male``/``female``); anything else becomes ``""``."""
    def normalise(distinct):
        upper = distinct.str.strip().str.upper().str[:1]
        return np.where(upper.isin(SEXES), upper, "").astype(object)
    return on_distinct(values, normalise)


def parse_ages(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Parses ages as NIH and its mirrors write them (``58``, ``058Y``, ``7M``) into years.

    Returns ``(ages, bad)``: float years with NaN where blank or bad, and a boolean mask of the
    entries that were present but unusable (not a number, or outside 0..120 years).

    Example:
        >>> ages, bad = parse_ages(pd.Series(["58", "058Y", "6M", "", "414", "old"]))
        >>> ages.round(1).tolist()[:3], bad.tolist()
        ([58.0, 58.0, 0.5], [False, False, False, False, True, True])
    """
    def parse(distinct):
        text = distinct.str.strip()
        parts = text.str.upper().str.extract(r"^(\d+(?:\.\d*)?)\s*([YMWD]?)$")
        number = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype=np.float64)
        years = number / parts[1].fillna("").map(_AGE_UNITS).to_numpy(dtype=np.float64)
        blank = (text == "").to_numpy()
        bad = ~blank & ~((years >= 0) & (years <= MAX_AGE))
        years[bad | blank] = np.nan
        return np.stack([years, bad.astype(np.float64)], axis=1)

    parsed = on_distinct(values, parse)
    return parsed[:, 0].copy(), parsed[:, 1] > 0


def drop_missing_images(df: pd.DataFrame, listed_in: str, looked_in: str) -> pd.DataFrame:
    """Keeps the rows whose image was found (``path`` not empty) and says how many were not.

    The count goes to the log and to ``df.attrs["missing_images"]``; a table with no image found
    at all is an error that names the label file and the folder searched.
    """
    found = (df["path"] != "").to_numpy()
    missing = int((~found).sum())
    if not found.any():
        raise DataError(
            f"none of the {len(df):,} images listed in {listed_in} were found in {looked_in} "
            f"(e.g. {preview(df['image_index'].head(3))}); point data.image_root (or the data "
            f"source) at the folder holding the image files"
        )
    attrs = dict(df.attrs)
    if missing:
        logger.warning(
            "%s of the %s images listed in %s are not in %s (e.g. %s); going on with the %s found",
            f"{missing:,}", f"{len(df):,}", listed_in, looked_in,
            preview(df.loc[~found, "image_index"].head(3)), f"{int(found.sum()):,}",
        )
        df = df.loc[found].reset_index(drop=True)
    df.attrs = {**attrs, "missing_images": missing}
    return df


def is_url(source) -> bool:
    """True when ``source`` is a URL (``scheme://...``: ``gs://``, ``s3://``, ``hdfs://``, ``ram://``).

    A URL is read through TensorFlow's file systems (``tf.io.gfile``) and stays a string: a
    ``Path`` would turn ``gs://bucket`` into ``gs:/bucket``.

    Example:
        >>> is_url("gs://bucket/nih-224"), is_url("/data/nih-224"), is_url("C:/data")
        (True, False, False)
    """
    return isinstance(source, str) and _URL.match(source) is not None


def resolve_source(source: Optional[str], format: str = "auto", label_file: Optional[str] = None
                   ) -> tuple[str, Optional[Union[Path, str]], Optional[Path]]:
    """Decides how to read ``source``: returns ``(format, data_root, label_file)``.

    ``auto`` asks each publisher's reader whether ``source`` has its layout (file names, then a CSV
    header: ``detect`` in :data:`READERS`' modules); otherwise a folder is ChestX-ray14 and a
    ``.csv``/``.csv.gz`` file a generic CSV, unless it is an NIH ``Data_Entry_2017*`` label file.
    ``source=None`` means the phantom data set (the caller generates it). For the publishers'
    readers ``data_root`` is the source itself and ``label_file`` None.

    A URL (``gs://``, ``s3://``, ``hdfs://``, ``ram://``; see :func:`is_url`) must hold packed data
    (``can-tf data pack``): it is checked through ``tf.io.gfile`` and returned unchanged, a string,
    as ``("packed", source, None)``.

    Raises:
        DataError: an unknown format, a source that does not exist, a URL that is not packed data
            or whose scheme TensorFlow has no file system for, or a source no reader can read.
    """
    if format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; known: {', '.join(FORMATS)}")
    if source is None:
        if format not in ("auto", "chestxray14"):
            raise DataError(f"data.format={format!r} needs data.source set to the data set's folder or file")
        return "chestxray14", None, Path(label_file) if label_file else None
    if is_url(source):
        return "packed", _check_url(source, format), None
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {source} does not exist")
    name = path.name.lower()
    is_csv = name.endswith(".csv") or name.endswith(".csv.gz")
    if format == "auto":
        format = next((f for f in _DETECTED if _reader_module(f).detect(path)), None) or (
            "chestxray14" if path.is_dir() or name.startswith("data_entry_2017") else "csv" if is_csv else None)
        if format is None:
            raise DataError(f"data source {source} is neither a folder nor a .csv/.csv.gz file; set data.format")
    if format in _DETECTED:
        return format, path, None
    if format == "csv":
        if path.is_dir():
            raise DataError(f"data.format='csv' needs a CSV file, but {source} is a folder")
        return "csv", path.parent, path
    if path.is_dir():
        return "chestxray14", path, Path(label_file) if label_file else None
    return "chestxray14", path.parent, Path(label_file) if label_file else path


def _check_url(source: str, format: str) -> str:
    """``source``, a URL, once ``tf.io.gfile`` finds packed data there; else a one-line DataError."""
    only_packed = (f"data source {source}: only packed data (can-tf data pack) is read from a URL; "
                   f"PNG folders and CSV files must be local")
    if format not in ("auto", "packed"):
        raise DataError(f"{only_packed} (data.format={format!r} reads local files only)")
    import tensorflow as tf

    from can_tf.data.packed import is_packed

    try:
        if not tf.io.gfile.exists(source):
            raise DataError(f"data source {source} does not exist")
        packed = is_packed(source)
    except tf.errors.UnimplementedError:
        raise DataError(_no_file_system(source)) from None
    except tf.errors.OpError as e:  # permission denied, no network, no credentials
        detail = " ".join((e.message or str(e)).split())
        raise DataError(f"data source {source} cannot be read ({type(e).__name__}: {detail})") from None
    if not packed:
        raise DataError(f"{only_packed} (no index.json there)")
    return source


def _no_file_system(source: str) -> str:
    """The line for a URL whose scheme has no file system registered in TensorFlow."""
    scheme = source.split("://", 1)[0].lower()
    if scheme in _TENSORFLOW_IO_SCHEMES:
        hint = f"pip install tensorflow-io, which adds {scheme}:// to TensorFlow"
    elif scheme == "gs":
        hint = "gs:// is built into the official TensorFlow packages; this TensorFlow build lacks it"
    else:
        hint = "TensorFlow has gs:// and ram:// built in; tensorflow-io adds s3://, hdfs:// and az://"
    return f"data source {source}: TensorFlow has no file system for {scheme}:// ({hint})"


def _reader_module(format: str):
    import importlib

    return importlib.import_module(READERS[format][0])


def load_table(data_config) -> tuple[pd.DataFrame, list]:
    """Reads the data set(s) a :class:`~can_tf.config.DataConfig` names and applies its filters.

    Returns ``(df, class_names)``. ``df.attrs`` carries ``format``, ``data_root`` (where split
    lists are looked for) and ``missing_images`` (label rows without an image on disk). With
    ``data.sources`` the data sets are read one by one and stacked (:func:`merge_tables`).

    Example:
        >>> df, class_names = load_table(DataConfig())  # the built-in phantom data set
        >>> list(df.columns[:6])
        ['image_index', 'path', 'patient_id', 'view', 'age', 'sex']
    """
    if data_config.sources:
        tables = [_load_one(data_config, **spec) for spec in source_specs(data_config.sources)]
        df = merge_tables(tables)
        class_names = list(tables[0].attrs.get("class_names", data_config.class_names))
    else:
        df = _load_one(data_config, source=data_config.source, format=data_config.format,
                       image_root=data_config.image_root, options=data_config.options)
        class_names = list(df.attrs.get("class_names", data_config.class_names))
    return apply_filters(df, views=data_config.views, one_per_patient=data_config.one_per_patient), class_names


def _load_one(data_config, *, source, format="auto", image_root=None, options=None) -> pd.DataFrame:
    class_names = list(data_config.class_names)
    options = dict(options or {})
    format, root, label_file = resolve_source(source, format, data_config.label_file if source == data_config.source
                                              else None)
    if options and format in ("chestxray14", "csv"):
        raise DataError(f"data.options {sorted(options)} apply to the publishers' readers (chexpert, mimic, "
                        f"padchest, vindr, nih-google), not to format {format!r}")
    if format == "csv":
        from can_tf.data.csv_dataset import load_csv

        df = load_csv(label_file, class_names, path_column=data_config.path_column,
                      patient_column=data_config.patient_column, image_root=image_root)
    elif format == "chestxray14":
        from can_tf.data.chestxray14 import load_chestxray14

        if root is None and label_file is None:
            from can_tf.data.phantom import default_phantom_dir

            root = Path(default_phantom_dir(data_config.phantom_patients,
                                            data_config.phantom_image_size))
        df = load_chestxray14(root, label_file=label_file, image_root=image_root, class_names=class_names)
    else:
        loader = getattr(_reader_module(format), READERS[format][1])
        try:
            df = loader(root, class_names, image_root=image_root, **options)
        except TypeError as e:
            if "unexpected keyword" not in str(e):
                raise
            raise DataError(f"data.options for format {format!r}: {e}") from None
    df.attrs["format"] = format
    df.attrs.setdefault("data_root", str(root if root is not None else Path(label_file).parent))
    return df


def source_specs(sources) -> list:
    """``data.sources`` entries as ``{source, format, image_root, options}`` dicts.

    An entry is a path, ``"<format>:<path>"`` or a mapping with those keys.

    Example:
        >>> source_specs(["chexpert:/data/CheXpert", "/data/NIH"])[0]
        {'source': '/data/CheXpert', 'format': 'chexpert', 'image_root': None, 'options': {}}
    """
    specs = []
    for i, entry in enumerate(sources, start=1):
        if isinstance(entry, str):
            format, _, rest = entry.partition(":")
            spec = {"source": rest, "format": format} if format in READERS and rest else {"source": entry}
        elif isinstance(entry, dict):
            unknown = sorted(set(entry) - {"source", "format", "image_root", "options"})
            if unknown or "source" not in entry:
                raise DataError(f"data.sources entry {i} must have 'source' and may have format, image_root, "
                                f"options; got keys {sorted(entry)}")
            spec = dict(entry)
        else:
            raise DataError(f"data.sources entry {i} must be a path or a mapping, got {entry!r}")
        spec.setdefault("format", "auto")
        spec.setdefault("image_root", None)
        spec["options"] = dict(spec.get("options") or {})
        if spec["format"] not in FORMATS:
            raise DataError(f"data.sources entry {i}: format {spec['format']!r} is not one of {', '.join(FORMATS)}")
        specs.append(spec)
    return specs


def merge_tables(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stacks data tables of several data sets, keeping their patients and image names apart.

    Each table's ``image_index`` and ``patient_id`` get its data set's name as a prefix
    (``chexpert/patient00001``), numbered when one format comes twice, so a patient id that two
    data sets happen to share stays two patients and patient-wise splits stay patient-wise within
    each. ``official_split`` is kept where a table has it ("" where it has not).
    """
    tags, seen = [], {}
    for table in tables:
        format = table.attrs.get("format", "data")
        seen[format] = seen.get(format, 0) + 1
        tags.append(format if seen[format] == 1 else f"{format}{seen[format]}")
    parts = []
    for tag, table in zip(tags, tables):
        part = table.copy()
        part["image_index"] = tag + "/" + part["image_index"].astype(str)
        part["patient_id"] = tag + "/" + part["patient_id"].astype(str)
        if "official_split" not in part.columns and any("official_split" in t.columns for t in tables):
            part["official_split"] = ""
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    df.attrs = {"format": "+".join(tags), "sources": tags, "data_root": tables[0].attrs.get("data_root"),
                "missing_images": int(sum(t.attrs.get("missing_images", 0) for t in tables)),
                "class_names": list(tables[0].attrs.get("class_names", []))}
    return df


def apply_filters(df: pd.DataFrame, *, views: Optional[Sequence[str]] = None,
                  one_per_patient: bool = False) -> pd.DataFrame:
    """Keeps the requested views, then (optionally) each patient's first image.

    "First" is the smallest image name, which for NIH names (``<patient>_<follow-up>.png``) is the
    earliest follow-up; sorting makes the choice independent of the label file's row order.

    Example:
        >>> apply_filters(df, views=["PA"], one_per_patient=True)  # first PA image per patient
    """
    attrs = dict(df.attrs)
    if views:
        keep = df["view"].isin(list(views)).to_numpy()
        if not keep.any():
            counts = df["view"].replace("", "unknown").value_counts().to_dict()
            raise DataError(f"no image left after data.views={list(views)}: the data has views {counts}")
        df = df.loc[keep]
    if one_per_patient:
        first = df.sort_values(["patient_id", "image_index"], kind="stable").drop_duplicates("patient_id")
        df = df.loc[df.index.isin(first.index)]
    df = df.reset_index(drop=True)
    df.attrs = attrs
    return df


def class_prevalence(df: pd.DataFrame, class_names: Sequence[str]) -> np.ndarray:
    """Positive fraction per class among the labels that are known (NaN labels are left out).

    A class with no known label gets 0.0 (and a logged warning), so loss weights stay finite.

    Example:
        >>> df = pd.DataFrame({"A": [1.0, 0.0, np.nan, 1.0], "B": [0.0, 0.0, 0.0, 1.0]})
        >>> class_prevalence(df, ["A", "B"]).tolist()  # A: 2 of 3 known, B: 1 of 4
        [0.6666666666666666, 0.25]
    """
    missing = [name for name in class_names if name not in df.columns]
    if missing:
        raise DataError(f"the data table has no column for class(es) {preview(missing)}")
    labels = df[list(class_names)].to_numpy(dtype=np.float64)
    known = (~np.isnan(labels)).sum(axis=0)
    positives = np.nansum(labels, axis=0)
    if (known == 0).any():
        logger.warning("no known label for class(es) %s; their prevalence is taken as 0",
                       preview(np.asarray(class_names)[known == 0].tolist()))
    return np.divide(positives, known, out=np.zeros(len(class_names)), where=known > 0)


def image_names(path: os.PathLike) -> list:
    """Reads a list of image names (one per line, blanks skipped), as in NIH's split lists."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DataError(f"cannot read image list {path}: {e.strerror}") from None
