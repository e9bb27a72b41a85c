"""PadChest (Bustos et al. 2020, BIMCV) as distributed: one label file and 16-bit PNGs in numbered folders.

Layout:
    The label file ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (also shipped gzipped,
    ``.csv.gz``; an older release drops the date) has one row per image (160,868 rows). Columns read
    here: ``ImageID`` (the PNG's file name, unique), ``ImageDir`` (the numbered folder 0..54 of the
    zip it came in), ``PatientID``, ``PatientBirth`` (year of birth, e.g. ``1948.0``),
    ``StudyDate_DICOM`` (``YYYYMMDD``), ``PatientSex_DICOM`` (``M``, ``F``, ``O`` or blank),
    ``Projection`` (``PA``, ``AP``, ``AP_horizontal``, ``L``, ``COSTAL``, ``EXCLUDE``, ``UNK``, ...),
    ``MethodLabel`` (``Physician``: labels read off the report by a physician, 27% of rows;
    ``RNN_model``: by the publisher's report labeller) and ``Labels``, a Python list literal such as
    ``['pleural effusion', 'cardiomegaly']`` (``['normal']`` for a normal study; entries may carry
    stray spaces, e.g. ``' loculated pleural effusion'``; blank for ~300 rows). The other columns
    (report text, localizations, DICOM fields) are not read. Images are ``<root>/<ImageDir>/<ImageID>``;
    they are found by name in one walk of the image root (``find_images``: one ``scandir`` per
    folder, about a second for 160k files, against 160k ``stat`` calls), so the numbered folders and a
    flat folder of (e.g. resized) PNGs both work.

Labels:
    Each ``Labels`` entry, stripped and lower-cased, is looked up in
    ``DATASET_LABELS["padchest"]`` (:mod:`can_tf.data.label_space`): a label maps onto a can-tf
    class where it names that class's finding or a more specific kind of it in PadChest's own
    taxonomy ('lobar atelectasis' -> Atelectasis, 'loculated pleural effusion' -> Effusion, 'rib
    fracture' -> Fracture, 'normal' -> No Finding). 'hydropneumothorax' counts as both Pneumothorax
    and Effusion (:data:`ALSO`). Look-alikes that are not the finding stay unmapped
    (:data:`NEAR_MISSES`: 'pseudonodule' is not a nodule, 'subcutaneous emphysema' not emphysema,
    ...). PadChest has ~190 labels (findings, diagnoses, devices): those not mapped are ignored and
    counted per label in ``df.attrs["unmapped_labels"]`` (label -> rows). A label string that is
    not PadChest's at all cannot be told from an unmapped one without the full vocabulary, so it is
    counted there too, never an error.

    The label list of an image is complete (every finding its report names), so a mapped class the
    list does not name is **negative** (0). Unknown (NaN) instead: every class of a row whose
    ``Labels`` is blank or an empty list (torchxrayvision drops those rows; here they stay, all
    NaN, counted in ``df.attrs["unlabelled_images"]``), and the absent classes of a row whose list
    holds 'unchanged' or 'exclude' (:data:`INCOMPLETE`: the report compares with an earlier study or
    is not about this image, so it need not name what is there; the labels it does name stay 1).

    ``method="physician"`` keeps only the physician-labelled rows (``MethodLabel == "Physician"``);
    the default ``"all"`` keeps every row. The 21 images torchxrayvision found unreadable
    (truncated or broken PNGs, :data:`KNOWN_BAD_IMAGES`) are left out and counted in
    ``df.attrs["known_bad_images"]``.

Other columns:
    ``view``: ``Projection`` ``PA`` -> ``PA``; ``AP`` and ``AP_horizontal`` (AP supine) -> ``AP``;
    anything else (lateral ``L``, ``COSTAL``, ...) -> ``""`` (kept: ``data.views`` filters).
    ``age``: the study's year minus ``PatientBirth`` (whole years, so up to a year off; NaN where
    either is missing or the result is outside 0..120). ``sex``: ``M``/``F``; ``O`` and blank -> ``""``.
    ``patient_id``: ``PatientID``. There is no official split (no ``official_split`` column);
    ``data.split`` splits by patient.

Example:
    >>> from can_tf.data.padchest import load_padchest
    >>> df = load_padchest("/data/PadChest", ["Effusion", "Cardiomegaly", "Fracture"], method="physician")
    >>> list(df.columns[6:])
    ['Effusion', 'Cardiomegaly', 'Fracture']
    >>> counts = df.attrs["unmapped_labels"]  # label -> rows, e.g. {'COPD signs': ..., 'scoliosis': ...}
"""

from __future__ import annotations

import ast
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.data.chestxray14 import find_images
from can_tf.data.errors import DataError, preview
from can_tf.data.label_space import ALL_CLASSES, DATASET_LABELS, relabel
from can_tf.data.table import (MAX_AGE, check_image_names, drop_missing_images, line_numbers, make_table, normalise_sex,
                               normalise_view, on_distinct, read_string_table)
from can_tf.labels import CLASS_NAMES, match_class_names

logger = logging.getLogger(__name__)

DATASET = "padchest"
LABEL_FILE_PREFIX = "padchest_chest_x_ray_images_labels"  # compared lower-case
LABEL_FILE_NAMES = tuple(
    name + suffix
    for name in ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", "PADCHEST_chest_x_ray_images_labels_160K.csv")
    for suffix in ("", ".gz")
)
IMAGE_COLUMN, DIR_COLUMN, PATIENT_COLUMN, LABELS_COLUMN = "ImageID", "ImageDir", "PatientID", "Labels"
BIRTH_COLUMN, DATE_COLUMN, SEX_COLUMN = "PatientBirth", "StudyDate_DICOM", "PatientSex_DICOM"
PROJECTION_COLUMN, METHOD_COLUMN = "Projection", "MethodLabel"
REQUIRED_COLUMNS = (IMAGE_COLUMN, PATIENT_COLUMN, LABELS_COLUMN)
# Read when present; a trimmed file without them loads with blank view/sex and unknown age.
OPTIONAL_COLUMNS = (DIR_COLUMN, BIRTH_COLUMN, DATE_COLUMN, SEX_COLUMN, PROJECTION_COLUMN, METHOD_COLUMN)
METHODS = ("all", "physician")
PHYSICIAN = "Physician"
AP_PROJECTIONS = {"AP_HORIZONTAL": "AP"}  # AP supine; everything else goes through normalise_view

# A label that is also a second mapped label (hydropneumothorax: air and fluid in the pleural space).
ALSO = {"hydropneumothorax": ("pleural effusion",)}
# A list with one of these does not describe the whole image: absent classes are unknown, not negative.
INCOMPLETE = ("unchanged", "exclude")
# PadChest labels that read like a mapped finding but are not it, and so stay unmapped (with why).
NEAR_MISSES = {
    "pseudonodule": "a nodule-like shadow that is not a nodule",
    "nipple shadow": "a pseudonodule",
    "end on vessel": "a pseudonodule",
    "subcutaneous emphysema": "air in the soft tissues, not pulmonary emphysema",
    "pericardial effusion": "fluid around the heart, not in the pleural space",
    "breast mass": "outside the thorax",
    "soft tissue mass": "outside the thorax",
    "pleural plaques": "not pleural thickening in PadChest's taxonomy",
    "calcified pleural plaques": "not pleural thickening in PadChest's taxonomy",
    "empyema": "a pleural collection named for its content; NIH/CheXpert readers would not call every one effusion",
    "air bronchogram": "a sign of consolidation, not the finding",
    "interstitial pattern": "a pattern PadChest files under infiltrates; not NIH's Infiltration as such",
    "ground glass pattern": "a pattern, not NIH's Infiltration as such",
    "alveolar pattern": "a pattern, not NIH's Infiltration as such",
    "reticular interstitial pattern": "a pattern, not NIH's Infiltration as such",
    "reticulonodular interstitial pattern": "a pattern, not NIH's Infiltration as such",
    "miliary opacities": "a pattern, not NIH's Infiltration as such",
    "post radiotherapy changes": "PadChest files it under pulmonary fibrosis; not the same finding",
    "asbestosis signs": "PadChest files it under pulmonary fibrosis; not the same finding",
    "fibrotic band": "a scar, not pulmonary fibrosis",
    "vertebral compression": "PadChest files it under degenerative changes, not fracture",
    "vertebral anterior compression": "PadChest files it under degenerative changes, not fracture",
    "copd signs": "a diagnosis, not emphysema as such",
    "bullas": "not emphysema as such",
    "kerley lines": "a sign, not pulmonary edema as such",
    "heart insufficiency": "a diagnosis, not pulmonary edema or cardiomegaly as such",
    "lung metastasis": "a diagnosis, not a nodule or mass as such",
    "tuberculosis sequelae": "no can-tf class",
}
# Unreadable PNGs in the distributed archives (truncated, broken chunks), as listed by torchxrayvision.
KNOWN_BAD_IMAGES = frozenset({
    "216840111366964012819207061112010307142602253_04-014-084.png",
    "216840111366964012989926673512011074122523403_00-163-058.png",
    "216840111366964012959786098432011033083840143_00-176-115.png",
    "216840111366964012558082906712009327122220177_00-102-064.png",
    "216840111366964012339356563862009072111404053_00-043-192.png",
    "216840111366964013076187734852011291090445391_00-196-188.png",
    "216840111366964012373310883942009117084022290_00-064-025.png",
    "216840111366964012283393834152009033102258826_00-059-087.png",
    "216840111366964012373310883942009170084120009_00-097-074.png",
    "216840111366964012819207061112010315104455352_04-024-184.png",
    "216840111366964012819207061112010306085429121_04-020-102.png",
    "216840111366964012989926673512011083134050913_00-168-009.png",
    "216840111366964012373310883942009152114636712_00-102-045.png",
    "216840111366964012819207061112010281134410801_00-129-131.png",
    "216840111366964012487858717522009280135853083_00-075-001.png",
    "216840111366964012989926673512011151082430686_00-157-045.png",
    "216840111366964013686042548532013208193054515_02-026-007.png",
    "216840111366964013590140476722013058110301622_02-056-111.png",
    "216840111366964013590140476722013043111952381_02-065-198.png",
    "216840111366964013829543166512013353113303615_02-092-190.png",
    "216840111366964013962490064942014134093945580_01-178-104.png",
})


def detect(path: Path) -> bool:
    """True for a PadChest label file (by name, else a CSV whose header has PadChest's columns)
    or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        return _label_file_in(path) is not None
    name = path.name.lower()
    if not (name.endswith(".csv") or name.endswith(".csv.gz")):
        return False
    if name.startswith(LABEL_FILE_PREFIX):
        return True
    try:
        header = pd.read_csv(path, nrows=0, dtype=str)
    except Exception:  # noqa: BLE001  (an unreadable file is simply not this layout)
        return False
    columns = {str(c).strip() for c in header.columns}
    return {IMAGE_COLUMN, DIR_COLUMN, PATIENT_COLUMN, LABELS_COLUMN} <= columns


def find_label_file(root: os.PathLike) -> Path:
    """The PadChest label file in ``root`` (the published names first, plain before gzipped)."""
    root = Path(root)
    found = _label_file_in(root)
    if found is None:
        raise DataError(f"no PadChest label file in {root}: expected {LABEL_FILE_NAMES[0]} (or .csv.gz), "
                        f"or give the label file as the data source")
    return found


def load_padchest(source: os.PathLike, class_names: Sequence[str] = CLASS_NAMES, *,
                  image_root: Optional[os.PathLike] = None, method: str = "all",
                  keep_missing: bool = False) -> pd.DataFrame:
    """Loads PadChest into the data table (see :mod:`can_tf.data.table` and this module's docstring).

    Args:
        source: the PadChest folder (label file in it, images below it) or the label file.
        class_names: the can-tf classes to produce (any of :data:`can_tf.data.label_space.ALL_CLASSES`,
            matched case-insensitively); a class PadChest does not label is NaN.
        image_root: where the images are (searched below, by name); default the label file's folder.
        method: ``"all"`` rows, or only those a ``"physician"`` labelled.
        keep_missing: keep rows without an image (``path == ""``) instead of dropping them.

    Raises:
        DataError: no label file, missing columns, a ``Labels`` cell that is not a list of strings,
            a blank or repeated image, a blank patient, a bad ``method``, or no image found; the
            message names the file, the line (header = line 1) and the column.
    """
    if method not in METHODS:
        raise DataError(f"PadChest option method={method!r}: expected one of {', '.join(METHODS)}")
    source = Path(source).expanduser()
    if source.is_dir():
        root, label_file = source, find_label_file(source)
    elif source.is_file():
        root, label_file = source.parent, source
    else:
        raise DataError(f"PadChest source {source} does not exist")
    where = str(label_file)
    class_names = match_class_names(class_names, ALL_CLASSES, what=f"data.class_names for {where}")

    raw = _read(label_file, need_method=method == "physician")
    line = np.arange(2, len(raw) + 2)
    if method == "physician":
        keep = (raw[METHOD_COLUMN].str.strip() == PHYSICIAN).to_numpy()
        if not keep.any():
            values = raw[METHOD_COLUMN].str.strip().replace("", "blank").value_counts().to_dict()
            raise DataError(f"{where}: no row has {METHOD_COLUMN} {PHYSICIAN!r} (method='physician'); "
                            f"its values are {values}")
        raw, line = raw.loc[keep].reset_index(drop=True), line[keep]

    names = raw[IMAGE_COLUMN].str.strip()
    _check_ids(names, raw[PATIENT_COLUMN].str.strip(), line, where)
    bad_image = names.isin(KNOWN_BAD_IMAGES).to_numpy()
    if bad_image.any():
        raw, line, names = raw.loc[~bad_image].reset_index(drop=True), line[~bad_image], \
            names[~bad_image].reset_index(drop=True)

    columns, unlabelled, unmapped = _parse_labels(raw[LABELS_COLUMN], line, where)
    labels = relabel(columns, DATASET, class_names)

    images = find_images(image_root if image_root is not None else root)
    view = _views(raw[PROJECTION_COLUMN]) if PROJECTION_COLUMN in raw.columns else None
    sex = normalise_sex(raw[SEX_COLUMN]) if SEX_COLUMN in raw.columns else None
    age = _ages(raw, line, where) if {BIRTH_COLUMN, DATE_COLUMN} <= set(raw.columns) else None
    df = make_table(names, names.map(images.paths).fillna(""), raw[PATIENT_COLUMN].str.strip(), labels,
                    class_names, view=view, age=age, sex=sex)
    df.attrs = {"format": DATASET, "data_root": str(root), "label_file": where, "image_root": images.root,
                "duplicate_images": len(images.duplicates), "class_names": list(class_names),
                "method": method, "unmapped_labels": unmapped, "unlabelled_images": unlabelled,
                "known_bad_images": int(bad_image.sum())}
    if unlabelled:
        logger.warning("%s: %s image(s) with a blank 'Labels' list; their labels are unknown", where,
                       f"{unlabelled:,}")
    if keep_missing:
        df.attrs["missing_images"] = int((df["path"] == "").sum())
        return df
    return drop_missing_images(df, where, images.root)


# ---- reading ------------------------------------------------------------------------------------
def _label_file_in(folder: Path) -> Optional[Path]:
    for name in LABEL_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    try:
        others = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().startswith(
            LABEL_FILE_PREFIX) and e.name.lower().endswith((".csv", ".csv.gz")))
    except OSError:
        return None
    return folder / others[0] if others else None


def _read(path: Path, need_method: bool) -> pd.DataFrame:
    """The columns this reader uses, as strings (blank cells ``""``); the report text is not read."""
    what = "PadChest label file"
    columns = list(read_string_table(path, what, nrows=0).columns)
    required = REQUIRED_COLUMNS + ((METHOD_COLUMN,) if need_method else ())
    missing = [c for c in required if c not in columns]
    if missing:
        why = " (method='physician' needs it)" if missing == [METHOD_COLUMN] else ""
        raise DataError(f"{what} {path} lacks column(s) {preview(missing)}{why}; its columns are "
                        f"{preview(columns, limit=12)}")
    wanted = set(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    raw = read_string_table(path, what, usecols=lambda c: str(c).strip() in wanted)
    if raw.empty:
        raise DataError(f"{what} {path} has a header but no rows")
    return raw


def _check_ids(names: pd.Series, patients: pd.Series, line: np.ndarray, where: str) -> None:
    check_image_names(names, line, where, IMAGE_COLUMN)
    no_patient = (patients == "").to_numpy()
    if no_patient.any():
        raise DataError(f"{where}, {line_numbers(line[no_patient])}, column {PATIENT_COLUMN!r}: blank "
                        f"(patient-wise splits need every image's patient)")


# ---- labels -------------------------------------------------------------------------------------
def _parse_labels(values: pd.Series, line: np.ndarray, where: str) -> tuple[dict, int, dict]:
    """``Labels`` -> ({mapped label: float32 1/0/NaN per row}, rows without labels, {unmapped: rows}).

    Each distinct list string is parsed once (a few tens of thousands in 160k rows) and rows pick
    their row of the small result by code.
    """
    mapping = DATASET_LABELS[DATASET]
    sources = list(mapping)
    column = {name: i for i, name in enumerate(sources)}
    codes, distinct = pd.factorize(values.astype(str).str.strip())
    rows_per = np.bincount(codes, minlength=len(distinct))
    table = np.zeros((len(distinct), len(sources)), np.float32)
    missing = np.zeros(len(distinct), bool)
    incomplete = np.zeros(len(distinct), bool)
    unmapped = Counter()
    for u, text in enumerate(distinct):
        entries = _entries(text)
        if entries is None:
            first = int(np.flatnonzero(codes == u)[0])
            raise DataError(f"{where}, line {line[first]}, column {LABELS_COLUMN!r}: {text!r} is not a list of "
                            f"label strings such as \"['pleural effusion', 'cardiomegaly']\" or \"['normal']\"")
        if not entries:
            missing[u] = True
            continue
        for spelled, key in entries.items():
            if key in column:
                table[u, column[key]] = 1.0
                for other in ALSO.get(key, ()):
                    table[u, column[other]] = 1.0
            else:
                unmapped[spelled] += int(rows_per[u])
            if key in INCOMPLETE:
                incomplete[u] = True
    table[incomplete] = np.where(table[incomplete] == 1.0, 1.0, np.nan)
    table[missing] = np.nan
    per_row = table[codes]
    return ({name: per_row[:, i] for i, name in enumerate(sources)}, int(rows_per[missing].sum()),
            dict(sorted(unmapped.items(), key=lambda kv: (-kv[1], kv[0]))))


def _entries(text: str) -> Optional[dict]:
    """``"['a', ' B ']"`` -> ``{'a': 'a', 'B': 'b'}`` (spelling -> look-up key); ``{}`` for a blank
    cell or empty list; None where the cell is not a list of strings."""
    if text in ("", "nan", "NaN", "[]"):
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return None
    out = {}
    for v in value:
        spelled = " ".join(v.split())
        if spelled:
            out.setdefault(spelled, spelled.lower())
    return out


# ---- other columns ------------------------------------------------------------------------------
def _views(projection: pd.Series) -> np.ndarray:
    def normalise(distinct):
        upper = distinct.str.strip().str.upper()
        return normalise_view(upper.replace(AP_PROJECTIONS))
    return on_distinct(projection, normalise)


def _ages(raw: pd.DataFrame, line: np.ndarray, where: str) -> np.ndarray:
    """Study year minus birth year; NaN where either is blank, with a warning where a present value
    is unusable (not a year/date, or an age outside 0..120)."""
    def year_of_birth(distinct):
        return pd.to_numeric(distinct.str.strip(), errors="coerce").to_numpy(np.float64)

    def year_of_study(distinct):
        text = distinct.str.strip()
        return np.where(text.str.fullmatch(r"\d{8}(\.0)?"), pd.to_numeric(text.str[:4], errors="coerce"), np.nan)

    birth = on_distinct(raw[BIRTH_COLUMN], year_of_birth).astype(np.float64)
    study = on_distinct(raw[DATE_COLUMN], year_of_study).astype(np.float64)
    age = study - birth
    present = ((raw[BIRTH_COLUMN].str.strip() != "") & (raw[DATE_COLUMN].str.strip() != "")).to_numpy()
    bad = present & ~((age >= 0) & (age <= MAX_AGE))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        logger.warning("%s: %s row(s) with an unusable %s/%s (e.g. line %s: %r, %r); age taken as unknown",
                       where, f"{int(bad.sum()):,}", BIRTH_COLUMN, DATE_COLUMN, line[first],
                       raw[BIRTH_COLUMN].iloc[first], raw[DATE_COLUMN].iloc[first])
    age[~present | bad] = np.nan
    return age


