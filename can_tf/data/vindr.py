"""VinDr-CXR (Nguyen et al. 2022, PhysioNet 1.0.0) as distributed: image-level label files and DICOMs.

Layout:
    ``<root>/annotations/image_labels_train.csv``: one row per (image, radiologist): ``image_id``
    (a hex hash), ``rad_id`` (``R1`` .. ``R17``; three radiologists read each of the 15,000 training
    images, so 45,000 rows), then one column per finding holding ``1`` (the radiologist reported it)
    or ``0``. ``<root>/annotations/image_labels_test.csv``: ``image_id`` then the same finding
    columns, one row per test image (3,000): the consensus of five radiologists, without ``rad_id``
    (a ``rad_id`` column there is read like the training file's). The 28 findings (:data:`FINDINGS`):
    22 local labels (boxed in ``annotations_*.csv``, not read here) and 6 global diagnoses ('COPD',
    'Lung tumor', 'Pneumonia', 'Tuberculosis', 'Other diseases' - spelled 'Other disease' in some
    copies, both accepted - and 'No finding'). Images: ``<root>/train/<image_id>.dicom`` and
    ``<root>/test/<image_id>.dicom``; each split folder is listed once (``os.scandir``) and an image
    is taken from ``<image_id>`` plus ``.dicom``, ``.dcm``, ``.png``, ``.jpg`` or ``.jpeg`` (in that
    order: converted copies work). ``image_root`` replaces ``<root>`` (its ``train``/``test``
    subfolders, else the folder itself). The same file names in VinDr-PCXR (the paediatric set) have
    other findings and are not this layout.

Labels:
    ``DATASET_LABELS["vindr"]`` (:mod:`can_tf.data.label_space`) maps the findings that mean the
    same as a can-tf class: Atelectasis, Cardiomegaly, Consolidation, Edema, Emphysema,
    Infiltration, Pneumonia, Pneumothorax; 'Pleural effusion' -> Effusion, 'Pleural thickening' ->
    Pleural_Thickening, 'Pulmonary fibrosis' -> Fibrosis, 'Nodule/Mass' -> Nodule or Mass (the
    composite: an NIH-trained model is scored by its larger Mass/Nodule output), 'Lung Opacity' ->
    Lung Opacity, 'No finding' -> No Finding, 'Rib fracture' and 'Clavicle fracture' -> Fracture
    (positive if either is). Not mapped, and ignored (:data:`UNMAPPED`): Aortic enlargement,
    Calcification, Enlarged PA, ILD, Lung cavity, Lung cyst, Mediastinal shift, Other lesion, COPD,
    Lung tumor, Tuberculosis, Other diseases. A column that is none of the 28 is an error, so a
    renamed finding cannot be dropped silently.

    Combining the training file's radiologists (``readers``): ``"majority"`` (default) - positive
    where more than half of the image's radiologists marked the finding (2 of 3), negative where
    fewer than half did, unknown (NaN) on a tie (1 of 2); ``"any"`` - positive where at least one
    did; ``"all"`` - positive only where every one did. Images with other than three rows (a
    reader missing) are combined the same way over the readers present and counted in
    ``df.attrs["images_without_3_readers"]``. The test file's consensus is taken as is.

Other columns:
    There are no patient ids: each image is its own patient (``patient_id`` = ``image_id``), so
    patient-wise splits of VinDr-CXR are image-wise (nothing in the files says whether two images
    share a patient). ``view`` is ``"PA"`` for every image (the publisher released PA scans only). The
    label files have no sex or age; they are in the DICOM headers (``PatientSex``, ``PatientAge``
    such as ``058Y``), read with ``read_headers=True`` (one header read per image, which is slow on
    the full set; blank where absent or unreadable); by default ``sex`` is ``""`` and ``age`` NaN.
    Official split: rows of ``image_labels_train.csv`` -> ``official_split`` ``"train"``, of
    ``image_labels_test.csv`` -> ``"test"``; an image in both files is an error.

Example:
    >>> from can_tf.data.vindr import load_vindr
    >>> df = load_vindr("/data/vindr-cxr/1.0.0", ["Effusion", "Nodule or Mass", "Fracture"], readers="any")
    >>> df["official_split"].value_counts().to_dict()
    {'train': 15000, 'test': 3000}
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.data.errors import DataError, preview
from can_tf.data.label_space import ALL_CLASSES, DATASET_LABELS, relabel
from can_tf.data.table import (check_images_in_one_file, drop_missing_images, line_numbers, make_table, parse_ages,
                               read_string_table)
from can_tf.labels import CLASS_NAMES, match_class_names

logger = logging.getLogger(__name__)

DATASET = "vindr"
ANNOTATIONS = "annotations"
LABEL_FILES = {"train": "image_labels_train.csv", "test": "image_labels_test.csv"}
IMAGE_COLUMN, READER_COLUMN = "image_id", "rad_id"
# The 28 image-level labels, in the publisher's column order (22 local findings, 6 global diagnoses).
FINDINGS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
)
SPELLINGS = {"Other disease": "Other diseases"}  # another spelling found in copies of the files
MAPPED = tuple(f for f in FINDINGS if f in DATASET_LABELS[DATASET])
UNMAPPED = tuple(f for f in FINDINGS if f not in DATASET_LABELS[DATASET])
LABEL_VALUES = {"1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}
READER_RULES = ("majority", "any", "all")
IMAGE_SUFFIXES = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")  # preferred first
VIEW = "PA"


def detect(path: Path) -> bool:
    """True for ``image_labels_train.csv`` / ``image_labels_test.csv`` whose header has VinDr-CXR's
    findings, or a folder holding one (in ``annotations/`` or in the folder itself)."""
    path = Path(path)
    if path.is_dir():
        return bool(find_label_files(path))
    return path.name in LABEL_FILES.values() and _has_findings(path)


def find_label_files(root: os.PathLike) -> dict:
    """``{split: path}`` of the VinDr-CXR label files in ``root/annotations``, else in ``root``."""
    root = Path(root)
    found = {}
    for split, name in LABEL_FILES.items():
        for folder in (root / ANNOTATIONS, root):
            candidate = folder / name
            if split not in found and candidate.is_file() and _has_findings(candidate):
                found[split] = candidate
    return found


def load_vindr(source: os.PathLike, class_names: Sequence[str] = CLASS_NAMES, *,
               image_root: Optional[os.PathLike] = None, readers: str = "majority",
               read_headers: bool = False, keep_missing: bool = False) -> pd.DataFrame:
    """Loads VinDr-CXR's image-level labels into the data table (see this module's docstring).

    Args:
        source: the VinDr-CXR folder (``annotations/``, ``train/``, ``test/``) or one label file.
        class_names: the can-tf classes to produce (any of :data:`can_tf.data.label_space.ALL_CLASSES`,
            matched case-insensitively); a class VinDr-CXR does not label is NaN.
        image_root: the folder holding ``train/`` and ``test/`` (default: the data set's folder).
        readers: how the training file's radiologists combine: ``"majority"``, ``"any"`` or ``"all"``.
        read_headers: read sex and age from each DICOM header (slow: one file read per image).
        keep_missing: keep rows without an image (``path == ""``) instead of dropping them.

    Returns:
        The table with an ``official_split`` column (``"train"``/``"test"``).

    Raises:
        DataError: no label file, missing or unknown columns, a value other than 1/0, a blank
            image or reader, a repeated row, an image in both files, a bad ``readers``, or no image
            found; the message names the file, the line (header = line 1) and the column.
    """
    if readers not in READER_RULES:
        raise DataError(f"VinDr-CXR option readers={readers!r}: expected one of {', '.join(READER_RULES)}")
    source = Path(source).expanduser()
    if source.is_dir():
        root, files = source, find_label_files(source)
        if not files:
            raise DataError(f"no VinDr-CXR label file in {source / ANNOTATIONS} or {source}: expected "
                            f"{' or '.join(LABEL_FILES.values())} with VinDr-CXR's finding columns")
    elif source.is_file():
        split = next((s for s, name in LABEL_FILES.items() if source.name == name), None)
        if split is None:
            raise DataError(f"cannot tell from its name whether {source} is the VinDr-CXR training or test "
                            f"label file: keep the published name ({' or '.join(LABEL_FILES.values())})")
        root = source.parent.parent if source.parent.name == ANNOTATIONS else source.parent
        files = {split: source}
    else:
        raise DataError(f"VinDr-CXR source {source} does not exist")
    where = " and ".join(str(p) for p in files.values())
    class_names = match_class_names(class_names, ALL_CLASSES, what=f"data.class_names for {where}")

    parts = [_read_split(path, split, readers) for split, path in files.items()]
    _check_across(parts)
    table = pd.concat(parts, ignore_index=True)
    base = Path(image_root).expanduser() if image_root is not None else root
    paths = np.concatenate([_image_paths(p["image_index"], _split_folder(base, split))
                            for p, split in zip(parts, files)]) if parts else np.array([], dtype=object)
    labels = relabel({f: table[f].to_numpy(np.float32) for f in MAPPED}, DATASET, class_names)
    age = sex = None
    if read_headers:
        age, sex = _read_headers(paths)
    df = make_table(table["image_index"], paths, table["image_index"], labels, class_names,
                    view=np.full(len(table), VIEW, dtype=object), age=age, sex=sex)
    df["official_split"] = table["split"].to_numpy(dtype=object).astype(str)
    uneven = int(table["readers"].ne(3).where(table["split"] == "train", False).sum())
    if uneven:
        logger.warning("%s: %s training image(s) have other than 3 radiologists' rows; their labels combine "
                       "the readers present (readers=%r)", where, f"{uneven:,}", readers)
    df.attrs = {"format": DATASET, "data_root": str(root), "label_file": where, "image_root": str(base.resolve()),
                "class_names": list(class_names), "readers": readers, "images_without_3_readers": uneven}
    if keep_missing:
        df.attrs["missing_images"] = int((df["path"] == "").sum())
        return df
    looked_in = " and ".join(str(_split_folder(base, s)) for s in files)
    return drop_missing_images(df, where, looked_in)


# ---- one label file -----------------------------------------------------------------------------
def _read_split(path: Path, split: str, readers: str) -> pd.DataFrame:
    """One label file -> one row per image: image_index, split, line, file, readers, mapped findings."""
    where = str(path)
    raw = read_string_table(path, "VinDr-CXR label file")
    raw.columns = [SPELLINGS.get(c, c) for c in raw.columns]
    findings = [c for c in raw.columns if c not in (IMAGE_COLUMN, READER_COLUMN)]
    unknown = [c for c in findings if c not in FINDINGS]
    if unknown:
        raise DataError(f"VinDr-CXR label file {where}: column(s) {preview(unknown)} are not VinDr-CXR findings "
                        f"(known: {', '.join(FINDINGS)})")
    required = (IMAGE_COLUMN, *MAPPED) + ((READER_COLUMN,) if split == "train" else ())
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise DataError(f"VinDr-CXR label file {where} lacks column(s) {preview(missing)}; its columns are "
                        f"{preview(raw.columns, limit=12)}")
    if raw.empty:
        raise DataError(f"VinDr-CXR label file {where} has a header but no rows")
    repeated = raw.columns[raw.columns.duplicated()].tolist()
    if repeated:
        raise DataError(f"VinDr-CXR label file {where}: column(s) {preview(repeated)} appear more than once")

    names = raw[IMAGE_COLUMN].str.strip()
    blank = (names == "").to_numpy()
    if blank.any():
        raise DataError(f"{where}, {_lines(np.flatnonzero(blank))}, column {IMAGE_COLUMN!r}: blank "
                        f"(every row names its image)")
    has_readers = READER_COLUMN in raw.columns
    if has_readers:
        rad = raw[READER_COLUMN].str.strip()
        no_reader = (rad == "").to_numpy()
        if no_reader.any():
            raise DataError(f"{where}, {_lines(np.flatnonzero(no_reader))}, column {READER_COLUMN!r}: blank "
                            f"(every row names its radiologist)")
        key = names + "\t" + rad
        what = f"image and radiologist ({IMAGE_COLUMN}, {READER_COLUMN})"
    else:
        key, what = names, f"image ({IMAGE_COLUMN})"
    twice = key.duplicated(keep=False).to_numpy()
    if twice.any():
        first = key[twice].iloc[0]
        raise DataError(f"{where}, {_lines(np.flatnonzero((key == first).to_numpy()))}: the same {what} "
                        f"{first.replace(chr(9), ', ')} is on more than one row ({int(key[twice].nunique()):,} "
                        f"repeated)")

    values = {f: _parse_values(raw[f], f, where) for f in findings}
    codes, images = pd.factorize(names)
    first_line = np.unique(codes, return_index=True)[1] + 2  # codes number images by first appearance
    count = np.bincount(codes, minlength=len(images))
    out = pd.DataFrame({"image_index": np.asarray(images, dtype=object), "split": split, "file": where,
                        "line": first_line, "readers": count})
    for f in MAPPED:
        positives = np.bincount(codes, weights=values[f], minlength=len(images))
        out[f] = _combine(positives, count, readers)
    return out


def _parse_values(values: pd.Series, column: str, where: str) -> np.ndarray:
    """``1`` -> 1, ``0`` -> 0 (spaces ignored); anything else, blank included, is an error."""
    text = values.str.strip()
    bad = ~text.isin(list(LABEL_VALUES)).to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)
        more = f"; {len(rows) - 1:,} more such cell(s) in this column" if len(rows) > 1 else ""
        raise DataError(f"{where}, line {rows[0] + 2}, column {column!r}: {values.iloc[rows[0]]!r} is not one "
                        f"of 1 or 0{more}")
    return text.map(LABEL_VALUES).to_numpy(dtype=np.float64)


def _combine(positives: np.ndarray, count: np.ndarray, readers: str) -> np.ndarray:
    """Per image: ``positives`` of ``count`` radiologists said 1 -> 1, 0 or NaN by the rule."""
    if readers == "any":
        out = (positives > 0).astype(np.float32)
    elif readers == "all":
        out = (positives == count).astype(np.float32)
    else:
        twice, total = 2 * positives, count
        out = np.where(twice > total, 1.0, np.where(twice < total, 0.0, np.nan)).astype(np.float32)
    return out


def _check_across(parts: list) -> None:
    """No image in both the training and the test file."""
    if len(parts) == 2:
        check_images_in_one_file(*parts, IMAGE_COLUMN)


# ---- images -------------------------------------------------------------------------------------
def _split_folder(base: Path, split: str) -> Path:
    folder = base / split
    return folder if folder.is_dir() else base


def _image_paths(image_ids: pd.Series, folder: Path) -> np.ndarray:
    """Absolute path per image id, ``""`` where no ``<id><suffix>`` is in ``folder`` (listed once)."""
    found = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        entries = []
    rank = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    best = {}
    for entry in entries:
        stem, dot, suffix = entry.name.rpartition(".")
        order = rank.get("." + suffix.lower()) if dot else None
        if order is not None and (stem not in best or order < best[stem]):
            best[stem] = order
            found[stem] = os.path.abspath(entry.path)
    return image_ids.map(found).fillna("").to_numpy(dtype=object)


def _read_headers(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(age, sex)`` from each DICOM's ``PatientAge``/``PatientSex``; NaN/``""`` where unavailable."""
    try:
        import pydicom
    except ImportError:
        raise DataError("VinDr-CXR option read_headers=True needs pydicom: pip install 'can-tf[dicom]'") from None
    ages, sexes = [], []
    for path in paths:
        age = sex = ""
        if path and path.lower().endswith((".dicom", ".dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientAge", "PatientSex"])
                age, sex = str(ds.get("PatientAge", "") or ""), str(ds.get("PatientSex", "") or "")
            except Exception:  # noqa: BLE001  (a broken header leaves age and sex unknown)
                pass
        ages.append(age)
        sexes.append(sex)
    age = parse_ages(pd.Series(ages, dtype=object))[0]
    sex = pd.Series(sexes, dtype=object).str.strip().str.upper().str[:1]
    return age, np.where(sex.isin(["M", "F"]), sex, "").astype(object)


def _has_findings(path: Path) -> bool:
    """The CSV header (only) has ``image_id`` and VinDr-CXR's mapped findings."""
    try:
        header = pd.read_csv(path, nrows=0, dtype=str)
    except Exception:  # noqa: BLE001  (an unreadable file is simply not this layout)
        return False
    columns = {SPELLINGS.get(str(c).strip(), str(c).strip()) for c in header.columns}
    return IMAGE_COLUMN in columns and all(f in columns for f in MAPPED)


def _lines(rows: np.ndarray, limit: int = 3) -> str:
    """``line 4, line 9 and 2 more`` for 0-based data rows (header = line 1)."""
    return line_numbers(np.asarray(rows) + 2, limit)