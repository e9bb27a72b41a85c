"""CheXpert (Irvin et al. 2019, Stanford ML Group) as distributed: ``train.csv`` and ``valid.csv``.

Layout: the two label files sit beside the image folder ``CheXpert-v1.0`` (full size) or
``CheXpert-v1.0-small`` (downsampled), or, in some copies, inside that folder::

    CheXpert/                         (or CheXpert-v1.0-small/ holding the CSVs itself)
    ├── train.csv                     224,316 rows
    ├── valid.csv                     234 rows (200 studies, labelled by 3 radiologists)
    └── CheXpert-v1.0-small/
        ├── train/patient00001/study1/view1_frontal.jpg
        └── valid/patient64541/study1/view1_frontal.jpg

Columns: ``Path`` (relative to the folder that *holds* ``CheXpert-v1.0*``, e.g.
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), ``Sex`` (``Male``,
``Female``, ``Unknown``), ``Age`` (years), ``Frontal/Lateral`` (``Frontal``, ``Lateral``),
``AP/PA`` (``AP``, ``PA``, ``LL``, ``RL`` or blank for laterals), then the 14 observations
(:data:`OBSERVATIONS`) written ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or
blank (not mentioned in the report); ``1``, ``0`` and ``-1`` are accepted too, anything else is an
error naming file, line (header = line 1) and column.

Table: ``image_index`` is ``Path`` as written; ``patient_id`` the ``patientNNNNN`` component of
it; ``view`` the ``AP/PA`` value of a frontal image (``AP``/``PA``; ``LL``, ``RL`` and every lateral
image get ``""`` and are kept: filter with ``data.views``); ``sex`` ``M``/``F``/``""``; ``age``
in years (NaN when blank or unusable, with a warning). Labels go through
:func:`can_tf.data.label_space.relabel` (``Pleural Effusion`` is can-tf's ``Effusion``; a class
CheXpert does not label, e.g. ``Hernia``, is NaN).

Label rules (:func:`parse_observations`, shared with :mod:`can_tf.data.mimic`):

- **uncertain (-1)**: Irvin et al.'s policies, per observation: ``"ignore"`` (U-Ignore, the
  default: -1 becomes NaN and is masked in the loss), ``"zeros"`` (U-Zeros: -1 becomes 0) or
  ``"ones"`` (U-Ones: -1 becomes 1). ``uncertainty`` is one policy for all, or a dict
  ``{observation or can-tf class: policy}`` whose other observations get ``"ignore"``; the paper's
  best mix is ``{"Atelectasis": "ones", "Edema": "ones", "Cardiomegaly": "zeros", ...}``.
- **blank (not mentioned)**: negative by default (``blank="negative"``), as Irvin et al. train:
  their training labels are 0, 1 or u, a finding the report does not mention counting as absent
  (most CheXpert training code does this too). torchxrayvision keeps blanks unknown (NaN) and only
  zeroes them on ``No Finding`` images; ``blank="unknown"`` gives that (NaN, masked). ``valid.csv``
  has no blanks or uncertain labels (radiologists' 0/1), so neither option changes it.

Split: the publisher's official split is ``train.csv`` -> ``"train"``, ``valid.csv`` -> ``"val"``
(column ``official_split``). The 500-study test set's labels were not part of this release, so
there is no ``"test"`` here: evaluate on another data set. A label file given directly gets its
split from its name (``valid*`` -> val, ``test*`` -> test, anything else -> train). A patient in
both files, or an image listed twice, is an error.

Images: checked with one ``os.path.isfile`` per row, after one check per top folder
(``CheXpert-v1.0-small/train``): the label file names every image, and walking the tree instead
would list ~250k patient and study folders to find the 224k files, more system calls than
stat-ing each listed file; a folder that is absent (images not downloaded) costs nothing per row.
Missing images are counted (``df.attrs["missing_images"]``) and left out.

Example:
    >>> from can_tf.data.chexpert import load_chexpert
    >>> df = load_chexpert("/data/CheXpert", ["Effusion", "Edema"], uncertainty={"Edema": "ones"})
    >>> df.loc[0, ["patient_id", "view", "sex", "Effusion", "official_split"]].tolist()
    ['patient00001', 'AP', 'F', 0.0, 'train']
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from can_tf.data.errors import DataError, preview
from can_tf.data.label_space import ALL_CLASSES, DATASET_LABELS, relabel
from can_tf.data.table import (drop_missing_images, make_table, normalise_sex, normalise_view, on_distinct,
                               parse_ages, read_string_table)
from can_tf.labels import match_class_names

logger = logging.getLogger(__name__)

# The 14 observations, in the publisher's column order.
OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
PATH_COLUMN, SEX_COLUMN, AGE_COLUMN = "Path", "Sex", "Age"
FRONTAL_LATERAL_COLUMN, AP_PA_COLUMN = "Frontal/Lateral", "AP/PA"
REQUIRED_COLUMNS = (PATH_COLUMN, SEX_COLUMN, AGE_COLUMN, FRONTAL_LATERAL_COLUMN, AP_PA_COLUMN, *OBSERVATIONS)
LABEL_FILE_NAMES = {"train.csv": "train", "valid.csv": "val"}
FOLDER_PREFIX = "CheXpert-v1.0"  # CheXpert-v1.0 and CheXpert-v1.0-small

# Cell -> code: 1 positive, 0 negative, -1 uncertain, 2 blank (not mentioned).
UNCERTAIN, BLANK = -1, 2
LABEL_CODES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": UNCERTAIN, "-1": UNCERTAIN, "": BLANK}
# "error": no uncertain label is expected (e.g. radiologists' labels); a -1 is refused, naming its cell.
UNCERTAINTY_POLICIES = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0, "error": None}
BLANK_POLICIES = {"negative": 0.0, "unknown": np.nan}

Policy = Union[str, Mapping[str, str], None]


# ---- label parsing (shared with MIMIC-CXR-JPG) ---------------------------------------------------
def uncertainty_policies(uncertainty: Policy = "ignore", dataset: str = "chexpert") -> dict:
    """``{observation: "ignore" | "zeros" | "ones" | "error"}`` for the 14 observations.

    ``uncertainty`` is one policy for all, or a dict keyed by CheXpert observation or can-tf class
    (``"Effusion"`` is ``"Pleural Effusion"``; case and separators are free); observations it does
    not name get ``"ignore"``. ``U-Ones`` style spellings are accepted.

    Example:
        >>> uncertainty_policies({"effusion": "U-Ones", "Edema": "zeros"})["Pleural Effusion"]
        'ones'
    """
    if uncertainty is None or isinstance(uncertainty, str):
        policy = _policy_name(uncertainty or "ignore", "uncertainty")
        return {name: policy for name in OBSERVATIONS}
    if not isinstance(uncertainty, Mapping):
        raise DataError(f"the uncertainty option must be 'ignore', 'zeros', 'ones' or a dict "
                        f"{{class: policy}}, not {uncertainty!r}")
    mapping = DATASET_LABELS[dataset]
    to_observation = {name: [name] for name in OBSERVATIONS}
    for observation, target in mapping.items():
        if target not in to_observation:
            to_observation[target] = [o for o, t in mapping.items() if t == target]
    names = match_class_names(list(uncertainty), list(to_observation),
                              what=f"the uncertainty option ({dataset} observations)")
    policies = {name: "ignore" for name in OBSERVATIONS}
    for given, name in zip(uncertainty, names):
        policy = _policy_name(uncertainty[given], f"uncertainty[{given!r}]")
        for observation in to_observation[name]:
            policies[observation] = policy
    return policies


def parse_observations(raw: pd.DataFrame, where: str, *, uncertainty: Policy = "ignore",
                       blank: str = "negative", dataset: str = "chexpert") -> dict:
    """The 14 observation columns of a CheXpert-labelled file -> ``{observation: float32 array}``.

    1 -> 1.0, 0 -> 0.0, -1 -> per ``uncertainty`` (:func:`uncertainty_policies`), blank -> per
    ``blank`` (``"negative"``: 0.0, ``"unknown"``: NaN). Each column is factorised, so only its few
    distinct strings are looked at, whatever the number of rows.

    Raises:
        DataError: a missing column, a cell outside the vocabulary (``where, line N, column 'X':
            '2' is not one of 1, 0, -1 or blank``), or an unknown policy name.
    """
    policies = uncertainty_policies(uncertainty, dataset)
    if blank not in BLANK_POLICIES:
        raise DataError(f"unknown blank policy {blank!r}: use one of {', '.join(map(repr, BLANK_POLICIES))}")
    missing = [name for name in OBSERVATIONS if name not in raw.columns]
    if missing:
        raise DataError(f"{where} lacks observation column(s) {preview(missing)}; its columns are "
                        f"{preview(raw.columns, limit=20)}")
    columns = {}
    for name in OBSERVATIONS:
        codes, distinct = pd.factorize(raw[name])
        looked_up = pd.Series(distinct, dtype=object).str.strip().map(LABEL_CODES)
        bad = looked_up.isna().to_numpy()
        if bad.any():
            rows = np.flatnonzero(np.isin(codes, np.flatnonzero(bad)))
            more = f" ({len(rows) - 1:,} more such cell(s) in this column)" if len(rows) > 1 else ""
            raise DataError(f"{where}, line {rows[0] + 2}, column {name!r}: {raw[name].iloc[rows[0]]!r} "
                            f"is not one of 1, 0, -1 or blank{more}")
        if policies[name] == "error" and (looked_up == UNCERTAIN).any():
            rows = np.flatnonzero(np.isin(codes, np.flatnonzero((looked_up == UNCERTAIN).to_numpy())))
            raise DataError(f"{where}, line {rows[0] + 2}, column {name!r}: {raw[name].iloc[rows[0]]!r} (uncertain) is "
                            f"not allowed by uncertainty 'error' ({len(rows):,} such cell(s) in this column); "
                            f"choose 'ignore', 'zeros' or 'ones' for it")
        values = {1: 1.0, 0: 0.0, UNCERTAIN: UNCERTAINTY_POLICIES[policies[name]], BLANK: BLANK_POLICIES[blank]}
        columns[name] = looked_up.map(values).to_numpy(dtype=np.float32)[codes]
    return columns


def _policy_name(value, what: str) -> str:
    text = str(value).strip().lower()
    text = text[2:] if text.startswith("u-") else text
    if text not in UNCERTAINTY_POLICIES:
        raise DataError(f"unknown uncertainty policy {value!r} for {what}: use one of "
                        f"{', '.join(map(repr, UNCERTAINTY_POLICIES))} (U-Ignore, U-Zeros, U-Ones; 'error' refuses any -1)")
    return text


# ---- helpers shared with MIMIC-CXR-JPG -----------------------------------------------------------
def read_header(path: os.PathLike) -> list:
    """The first line of a CSV (plain or ``.gz``) as stripped column names; ``[]`` if unreadable."""
    path = Path(path)
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
            line = f.readline()
    except (OSError, EOFError):
        return []
    return [c.strip() for c in next(csv.reader([line]), [])]


def locate_listed_images(base: os.PathLike, relative: pd.Series) -> np.ndarray:
    """Absolute path of each relative image path below ``base``, ``""`` where no file is there.

    The distinct two-level top folders (``CheXpert-v1.0-small/train``, ``files/p10``) are checked
    first; only rows below one that exists are stat-ed, one ``os.path.isfile`` each.
    """
    base = os.path.abspath(base)
    names = relative.to_numpy(dtype=str)
    if len(names) and (np.strings.find(names, "\\") >= 0).any():
        names = np.strings.replace(names, "\\", "/")
    absolute = (base + os.sep) + names.astype(object)
    found = np.zeros(len(names), dtype=bool)
    if len(names):
        # the folder at most two levels down that holds each file ("" = base itself); numpy's
        # string functions and a truncating cast keep this ~0.1 s on 377k paths
        first = np.strings.find(names, "/")
        second = np.strings.find(names, "/", first + 1)
        stop = np.where(second >= 0, second, np.where(first >= 0, first, 0))
        width = int(stop.max())
        top = names.astype(f"U{max(width, 1)}") if width else np.full(len(names), "", dtype="U1")
        short = np.flatnonzero(stop < width)
        if len(short):
            top[short] = np.strings.slice(names[short], 0, stop[short])
        codes, tops = pd.factorize(top)
        top_exists = np.array([os.path.isdir(os.path.join(base, str(t))) for t in tops], dtype=bool)
        candidates = np.flatnonzero(top_exists[codes])
        isfile = os.path.isfile
        found[candidates] = [isfile(p) for p in absolute[candidates]]
    return np.where(found, absolute, "").astype(object)


def duplicate_message(values: pd.Series, files: np.ndarray, lines: np.ndarray, column: str) -> Optional[str]:
    """``"f, line 9, column 'Path': 'x' is listed again (first at f, line 3)"`` for the first repeat."""
    repeated = values.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return None
    r = int(np.flatnonzero(repeated)[0])
    first = int(np.flatnonzero((values == values.iloc[r]).to_numpy())[0])
    count = int(repeated.sum())
    more = f"; {count - 1:,} more repeated row(s)" if count > 1 else ""
    return (f"{files[r]}, line {lines[r]}, column {column!r}: {values.iloc[r]!r} is listed again "
            f"(first at {files[first]}, line {lines[first]}){more}")


def class_names_for(class_names: Sequence[str], where: str) -> list:
    """``data.class_names`` matched to can-tf's class spelling (``effusion`` -> ``Effusion``)."""
    return match_class_names(list(class_names), ALL_CLASSES, what=f"data.class_names for {where}")


# ---- CheXpert ------------------------------------------------------------------------------------
def is_chexpert_header(columns: Sequence[str]) -> bool:
    return {PATH_COLUMN, FRONTAL_LATERAL_COLUMN, AP_PA_COLUMN, "No Finding"} <= set(columns)


def detect(path: os.PathLike) -> bool:
    """True for a CheXpert folder (``train.csv``/``valid.csv`` in it or in its ``CheXpert-v1.0*``
    subfolder) or label file, judged by file names and the CSV header only."""
    path = Path(path)
    try:
        if path.is_dir():
            return any(is_chexpert_header(read_header(f)) for f, _ in _label_files_in(path))
        return path.is_file() and path.name.lower().endswith((".csv", ".csv.gz")) \
            and is_chexpert_header(read_header(path))
    except (OSError, DataError):
        return False


def find_label_files(source: os.PathLike) -> list:
    """``[(label file, official split)]``: ``train.csv`` and/or ``valid.csv`` of a folder, or the file."""
    source = Path(source).expanduser()
    if not source.exists():
        raise DataError(f"CheXpert source {source} does not exist")
    if source.is_file():
        name = source.name.lower()
        split = "val" if name.startswith("valid") else "test" if name.startswith("test") else "train"
        return [(source, split)]
    found = _label_files_in(source)
    if not found:
        raise DataError(f"no CheXpert label file in {source}: expected train.csv and/or valid.csv there "
                        f"or in its {FOLDER_PREFIX}* folder")
    return found


def _label_files_in(folder: Path) -> list:
    candidates = [folder] + sorted(p for p in folder.glob(FOLDER_PREFIX + "*") if p.is_dir())
    for candidate in candidates:
        found = [(candidate / name, split) for name, split in LABEL_FILE_NAMES.items() if (candidate / name).is_file()]
        if found:
            return found
    return []


def read_label_file(path: Path) -> pd.DataFrame:
    raw = read_string_table(path, "CheXpert label file")
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"{path} is not a CheXpert label file: it lacks column(s) {preview(missing, limit=20)}; "
                        f"its columns are {preview(raw.columns, limit=20)}")
    if raw.empty:
        raise DataError(f"CheXpert label file {path} has a header but no rows")
    return raw


def load_chexpert(source: os.PathLike, class_names: Sequence[str], *, image_root: Optional[os.PathLike] = None,
                  uncertainty: Policy = "ignore", blank: str = "negative", keep_missing: bool = False) -> pd.DataFrame:
    """Loads CheXpert into the data table (see :mod:`can_tf.data.table` and this module's docstring).

    Args:
        source: the folder holding ``train.csv``/``valid.csv`` (or holding the ``CheXpert-v1.0*``
            folder that holds them), or one label file.
        class_names: the can-tf classes to produce, in order.
        image_root: the folder ``Path`` is relative to (the one holding ``CheXpert-v1.0*``; the
            ``CheXpert-v1.0*`` folder itself is recognised too); default: beside the label files.
        uncertainty: ``"ignore"`` | ``"zeros"`` | ``"ones"`` or ``{class: policy}``.
        blank: ``"negative"`` (default, as Irvin et al.) or ``"unknown"`` (NaN).
        keep_missing: keep rows whose image is not on disk (``path == ""``).

    Raises:
        DataError: missing columns, a label value outside 1/0/-1/blank, a blank or repeated ``Path``,
            a ``Path`` without a ``patientNNNNN`` folder, a patient in both files, an unknown
            uncertainty policy or class; each names the file, line and column.
    """
    files = find_label_files(source)
    class_names = class_names_for(class_names, "CheXpert")
    parts, file_of, line_of = [], [], []
    for path, split in files:
        raw = read_label_file(path)
        where = str(path)
        part = _parse_file(raw, where, uncertainty=uncertainty, blank=blank)
        part["official_split"] = split
        parts.append(part)
        file_of.append(np.full(len(part), where, dtype=object))
        line_of.append(np.arange(2, len(part) + 2))
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    file_of, line_of = np.concatenate(file_of), np.concatenate(line_of)

    message = duplicate_message(table["image_index"], file_of, line_of, PATH_COLUMN)
    if message:
        raise DataError(message)
    if len(files) > 1:
        splits_per_patient = table.groupby("patient_id", sort=True)["official_split"].nunique()
        straddling = splits_per_patient.index[splits_per_patient > 1].tolist()
        if straddling:
            raise DataError(f"{len(straddling):,} patient(s) are in both {' and '.join(str(f) for f, _ in files)} "
                            f"(column {PATH_COLUMN!r}): {preview(straddling)}; the official split must keep "
                            f"patients apart")

    label_dir = files[0][0].parent
    base = _image_base(Path(image_root) if image_root is not None else label_dir, table["image_index"])
    paths = locate_listed_images(base, table["image_index"])
    labels = relabel({name: table[name].to_numpy() for name in OBSERVATIONS}, "chexpert", class_names)
    df = make_table(table["image_index"], paths, table["patient_id"], labels, class_names,
                    view=table["view"], age=table["age"], sex=table["sex"])
    df["official_split"] = table["official_split"].astype(str).to_numpy()
    df.attrs = {"format": "chexpert", "data_root": str(label_dir), "label_file": str(files[0][0]),
                "label_files": [str(f) for f, _ in files], "image_root": str(base),
                "class_names": list(class_names), "uncertainty": uncertainty_policies(uncertainty),
                "blank": blank}
    if keep_missing:
        df.attrs["missing_images"] = int((df["path"] == "").sum())
        return df
    return drop_missing_images(df, " and ".join(str(f) for f, _ in files), str(base))


def _parse_file(raw: pd.DataFrame, where: str, *, uncertainty: Policy, blank: str) -> pd.DataFrame:
    """One label file -> image_index, patient_id, view, age, sex and the 14 observation columns."""
    names = raw[PATH_COLUMN].str.strip().str.replace("\\", "/", regex=False)
    blank_path = (names == "").to_numpy()
    if blank_path.any():
        raise DataError(f"{where}, line {int(np.flatnonzero(blank_path)[0]) + 2}, column {PATH_COLUMN!r}: "
                        f"blank image path")
    patients = names.str.extract(r"(?:^|/)(patient\d+)(?:/|$)", expand=False)
    no_patient = patients.isna().to_numpy()
    if no_patient.any():
        r = int(np.flatnonzero(no_patient)[0])
        raise DataError(f"{where}, line {r + 2}, column {PATH_COLUMN!r}: {names.iloc[r]!r} has no "
                        f"patientNNNNN folder (expected e.g. CheXpert-v1.0-small/train/patient00001/"
                        f"study1/view1_frontal.jpg)")
    frontal = on_distinct(raw[FRONTAL_LATERAL_COLUMN], lambda d: d.str.strip().str.lower() == "frontal")
    view = np.where(frontal.astype(bool), normalise_view(raw[AP_PA_COLUMN]), "").astype(object)
    ages, bad_age = parse_ages(raw[AGE_COLUMN])
    if bad_age.any():
        r = int(np.flatnonzero(bad_age)[0])
        logger.warning("%s, line %d, column %r: unusable age %r (%s such row(s)); taken as unknown",
                       where, r + 2, AGE_COLUMN, raw[AGE_COLUMN].iloc[r], f"{int(bad_age.sum()):,}")
    columns = parse_observations(raw, where, uncertainty=uncertainty, blank=blank)
    return pd.DataFrame({"image_index": names.to_numpy(), "patient_id": patients.to_numpy(), "view": view,
                         "age": ages, "sex": normalise_sex(raw[SEX_COLUMN]), **columns})


def _image_base(base: Path, image_index: pd.Series) -> Path:
    """The folder ``Path`` is relative to: ``base``, or its parent when ``base`` is the
    ``CheXpert-v1.0*`` folder named by the paths (label files kept inside it)."""
    tops = set(image_index.str.partition("/")[0].unique()[:16])
    if not any((base / top).is_dir() for top in tops) and base.name in tops:
        return base.parent
    return base
