"""NIH ChestX-ray14's Google-2019 adjudicated labels: four findings, a test and a validation set.

Majkowska et al., "Chest radiograph interpretation with deep learning models: assessment with
radiologist-adjudicated reference standards and population-adjusted evaluation" (Radiology 2020)
relabelled 4,374 NIH ChestX-ray14 images for four findings. Google distributes the labels (Cloud
Healthcare API public data sets, "Four findings expert labels"); the NIH box folder has the same
files with a prefix. The images are not in the release: they are the NIH PNGs, found by name.

Layout as distributed (either spelling; ``.csv.gz`` also read)::

    four_findings_expert_labels/            NIH box folder: one flat folder
        test_labels.csv                     four_findings_expert_labels_test_labels.csv        1,962 images
        validation_labels.csv               four_findings_expert_labels_validation_labels.csv  2,412 images
        individual_readers.csv              four_findings_expert_labels_individual_readers.csv

``test_labels.csv`` and ``validation_labels.csv`` are NIH's ``Data_Entry_2017`` metadata with
four columns added: ``Image Index``, ``Finding Labels`` (NIH's text-mined labels, ignored here),
``Follow-up #``, ``Patient ID`` (``13`` for ``00000013_005.png``), ``Patient Age``,
``Patient Gender`` (``M``/``F``), ``View Position`` (``PA``/``AP``), ``OriginalImage[Width``,
``Height]``, ``OriginalImagePixelSpacing[x``, ``y]``, then ``Fracture``, ``Pneumothorax``,
``Airspace opacity``, ``Nodule or mass``. Each label cell holds the adjudicated ``YES`` or ``NO``
(three radiologists, up to five rounds of review, majority vote where no consensus); a blank cell
means the image was not adjudicated for that finding (unknown, NaN). Any other value is an error
naming file, line and column. Only ``Image Index`` and the four findings are required; without
``Patient ID`` the patient is the number of the image name (``00000013_005.png`` -> ``13``, NIH's
own spelling), and without age, sex or view those stay unknown.

``individual_readers.csv`` holds one row per reader per image (``Image ID``, ``Reader ID``,
``Patient ID``, the four findings with ``Nodule/mass`` so spelt, values ``YES``/``NO``/``HEDGE``,
``HEDGE`` = uncertain, allowed for nodule/mass and pneumothorax). It is out of scope: the reader
neither reads it nor derives labels from single readers; given as the source it is an error.

Labels: the four findings map onto can-tf's ``Fracture``, ``Pneumothorax``, ``Airspace Opacity``
and ``Nodule or Mass`` (:data:`can_tf.data.label_space.DATASET_LABELS` ``["nih-google"]``). NIH's
``Mass`` and ``Nodule`` follow from the composite: negative where ``Nodule or mass`` is ``NO``,
unknown where it is ``YES`` (it does not say which). Every other class is unknown (NaN).

Split: ``official_split`` is ``"test"`` for the test file's rows and ``"val"`` for the validation
file's; there are no training rows, this is an evaluation set. An image in both files, or a
patient with images in both, is an error (the publisher's split is by patient).

``source`` is the folder (the files are looked for in it, then in its ``four_findings_expert_labels``
subfolder; a folder that also holds an NIH ``Data_Entry_2017*`` file is detected as ChestX-ray14,
set ``data.format=nih-google`` there) or one of the two label files (then only that file is read).
Images are found by name below ``image_root`` (default: the source folder, or the label file's
folder), indexed in one walk (:func:`can_tf.data.chestxray14.find_images`): the NIH archives put
them in ``images_0NN/images/`` and an existence check per row would need to know which. Rows whose
image is not there are counted and left out, as for NIH.

Example:
    >>> from can_tf.data.nih_google import load_nih_google
    >>> df = load_nih_google("/data/four_findings_expert_labels", ["Pneumothorax", "Nodule or Mass", "Mass"],
    ...                      image_root="/data/ChestX-ray14")
    >>> df.loc[0, ["image_index", "patient_id", "view", "official_split", "Pneumothorax", "Mass"]].tolist()
    ['00000013_008.png', '13', 'AP', 'test', 0.0, 0.0]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.data.chestxray14 import LABEL_FILE_NAMES as NIH_LABEL_FILE_NAMES
from can_tf.data.chestxray14 import _patient_mismatch, _rows, find_images
from can_tf.data.errors import DataError, preview
from can_tf.data.label_space import ALL_CLASSES, relabel
from can_tf.data.table import (check_image_names, check_images_in_one_file, drop_missing_images, line_numbers,
                               make_table, normalise_sex, normalise_view, on_distinct, parse_ages, read_string_table)
from can_tf.labels import CLASS_NAMES, match_class_names

logger = logging.getLogger(__name__)

DATASET = "nih-google"
FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")  # the publisher's spelling
IMAGE_COLUMN, PATIENT_COLUMN = "Image Index", "Patient ID"
AGE_COLUMN, SEX_COLUMN, VIEW_COLUMN = "Patient Age", "Patient Gender", "View Position"
SUBFOLDER = "four_findings_expert_labels"
PREFIX = SUBFOLDER + "_"
# split -> file stem, as Google names the files in four_findings_expert_labels/ (NIH adds PREFIX)
SPLIT_FILES = {"test": "test_labels", "val": "validation_labels"}
READERS_FILE = "individual_readers"
LABEL_VALUES = {"YES": 1.0, "NO": 0.0, "": np.nan}


def detect(path: Path) -> bool:
    """True for the four-findings label files or a folder holding them (names, then the header).

    A bare ``test_labels.csv`` / ``validation_labels.csv`` (Google's spelling, also used by the
    all-findings release) counts only where its header has the four findings.
    """
    path = Path(path)
    if path.is_dir():
        if any((path / name).is_file() for name in NIH_LABEL_FILE_NAMES):
            return False  # an NIH folder that also holds these files: ChestX-ray14 unless told otherwise
        return bool(find_label_files(path))
    stem = _stem(path.name)
    if stem is None:
        return False
    if stem.startswith(PREFIX):
        return stem[len(PREFIX):] in (*SPLIT_FILES.values(), READERS_FILE)
    return stem in SPLIT_FILES.values() and _has_findings(path)


def find_label_files(root: os.PathLike) -> dict:
    """``{split: path}`` of the label files in ``root``, else in ``root/four_findings_expert_labels``.

    Per split the first found of: ``four_findings_expert_labels_<stem>.csv`` in ``root``,
    ``<stem>.csv`` in ``root`` (with the four findings in its header), the same two in the
    subfolder; ``.csv.gz`` after ``.csv``.
    """
    root = Path(root)
    found = {}
    for split, stem in SPLIT_FILES.items():
        for folder in (root, root / SUBFOLDER):
            for name in (PREFIX + stem, stem):
                for suffix in (".csv", ".csv.gz"):
                    candidate = folder / (name + suffix)
                    if split not in found and candidate.is_file() and (name != stem or _has_findings(candidate)):
                        found[split] = candidate
    return found


def load_nih_google(source: os.PathLike, class_names: Sequence[str] = CLASS_NAMES, *,
                    image_root: Optional[os.PathLike] = None, keep_missing: bool = False) -> pd.DataFrame:
    """Loads the four-findings adjudicated labels into the data table (see :mod:`can_tf.data.table`).

    Args:
        source: the folder with the label files, or the test or the validation label file.
        class_names: the can-tf classes to produce (any of :data:`can_tf.data.label_space.ALL_CLASSES`,
            matched case-insensitively); those the four findings do not give are NaN.
        image_root: where the NIH images are (searched below); default the source folder.
        keep_missing: keep rows without an image (``path == ""``) instead of dropping them.

    Returns:
        The table with an ``official_split`` column (``"test"``/``"val"``).

    Raises:
        DataError: no label file, missing columns, a value other than YES/NO/blank, a blank or
            repeated image, an image or a patient in both files, or no image found; the message
            names the file, the line (header = line 1) and the column.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        root, files = source, find_label_files(source)
        if not files:
            names = [p + s + ".csv" for p in (PREFIX, "") for s in SPLIT_FILES.values()]
            raise DataError(f"no NIH-Google four-findings label file in {source} or {source / SUBFOLDER}: "
                            f"expected {preview(names)}")
    elif source.is_file():
        root, files = source.parent, {_split_of(source): source}
    else:
        raise DataError(f"NIH-Google label source {source} does not exist")
    where = " and ".join(str(p) for p in files.values())
    class_names = match_class_names(class_names, ALL_CLASSES, what=f"data.class_names for {where}")

    parts = [_read_split(path, split) for split, path in files.items()]
    _check_across(parts)
    table = pd.concat(parts, ignore_index=True)

    images = find_images(image_root if image_root is not None else root)
    labels = relabel({f: table[f].to_numpy(np.float32) for f in FINDINGS}, DATASET, class_names)
    df = make_table(table["image_index"], table["image_index"].map(images.paths).fillna(""),
                    table["patient_id"], labels, class_names,
                    view=table["view"], age=table["age"].to_numpy(np.float64), sex=table["sex"])
    df["official_split"] = table["split"].to_numpy(dtype=object).astype(str)
    df.attrs = {"format": DATASET, "data_root": str(root), "label_file": where, "image_root": images.root,
                "duplicate_images": len(images.duplicates), "class_names": list(class_names)}
    if keep_missing:
        df.attrs["missing_images"] = int((df["path"] == "").sum())
        return df
    return drop_missing_images(df, where, images.root)


# ---- one label file -----------------------------------------------------------------------------
def _read_split(path: Path, split: str) -> pd.DataFrame:
    """One label file -> image_index, patient_id, view, age, sex, split, line, file and the findings."""
    where = str(path)
    raw = read_string_table(path, "NIH-Google label file")
    required = (IMAGE_COLUMN, *FINDINGS)
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise DataError(f"NIH-Google label file {where} lacks column(s) {preview(missing)} (needs "
                        f"{preview(required)}); its columns are {preview(raw.columns, limit=12)}")
    if raw.empty:
        raise DataError(f"NIH-Google label file {where} has a header but no rows")

    names = raw[IMAGE_COLUMN].str.strip()
    check_image_names(names, np.arange(2, len(raw) + 2), where, IMAGE_COLUMN)

    out = pd.DataFrame({"image_index": names.to_numpy(), "line": np.arange(2, len(raw) + 2),
                        "file": where, "split": split})
    for finding in FINDINGS:
        out[finding] = _parse_labels(raw[finding], finding, where)

    derived = _patient_from_name(names)
    if PATIENT_COLUMN in raw.columns:
        given = raw[PATIENT_COLUMN].str.strip()
        mismatch = _patient_mismatch(names, given) & (given != "").to_numpy()
        if mismatch.any():
            logger.warning("%s: %s with a 'Patient ID' that differs from the patient number in the image name",
                           where, _rows(mismatch, names))
        out["patient_id"] = np.where(given == "", derived, given)
    else:
        out["patient_id"] = derived
    out["view"] = normalise_view(raw[VIEW_COLUMN]) if VIEW_COLUMN in raw.columns else ""
    out["sex"] = normalise_sex(raw[SEX_COLUMN]) if SEX_COLUMN in raw.columns else ""
    if AGE_COLUMN in raw.columns:
        ages, bad = parse_ages(raw[AGE_COLUMN])
        if bad.any():
            logger.warning("%s: %s with an unusable 'Patient Age' (e.g. %r); taken as unknown",
                           where, _rows(bad, names), raw[AGE_COLUMN][bad].iloc[0])
        out["age"] = ages
    else:
        out["age"] = np.nan
    return out


def _parse_labels(values: pd.Series, column: str, where: str) -> np.ndarray:
    """YES -> 1, NO -> 0, blank -> NaN (not adjudicated); case and spaces ignored; else an error."""
    text = pd.Series(on_distinct(values, lambda d: d.str.strip().str.upper()), dtype=object)
    bad = ~text.isin(list(LABEL_VALUES)).to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)
        value = values.iloc[rows[0]]
        hint = (" (HEDGE is a single reader's answer, in individual_readers.csv only)"
                if text.iloc[rows[0]] == "HEDGE" else "")
        more = f"; {len(rows) - 1:,} more such cell(s) in this column" if len(rows) > 1 else ""
        raise DataError(f"{where}, line {rows[0] + 2}, column {column!r}: {value!r} is not one of YES, NO or "
                        f"blank{hint}{more}")
    return text.map(LABEL_VALUES).to_numpy(dtype=np.float32)


def _patient_from_name(names: pd.Series) -> np.ndarray:
    """NIH's patient number from ``<patient>_<follow-up>.png`` (``00000013_005.png`` -> ``13``).

    Leading zeros go, so the id is spelt as in NIH's ``Patient ID`` column (and this file's, where a
    cell is blank); a name without ``_`` is its own patient.
    """
    def derive(distinct):
        head = distinct.str.split("_", n=1).str[0]
        digits = head.str.fullmatch(r"\d+")
        return np.where(digits, head.str.lstrip("0").replace("", "0"), head).astype(object)
    return on_distinct(names, derive)


def _check_across(parts: list) -> None:
    """No image in both files; no patient with images in both (the split is by patient)."""
    if len(parts) < 2:
        return
    test, val = parts
    check_images_in_one_file(test, val, IMAGE_COLUMN)
    shared = np.intersect1d(test["patient_id"].to_numpy(str), val["patient_id"].to_numpy(str))
    if shared.size:
        pid = str(shared[0])
        a = test.loc[test["patient_id"] == pid].iloc[0]
        b = val.loc[val["patient_id"] == pid].iloc[0]
        raise DataError(f"patient(s) {preview(shared.tolist())} have images in both {a['file']} (test) and "
                        f"{b['file']} (val), e.g. patient {pid!r}: {a['image_index']} at line {a['line']} and "
                        f"{b['image_index']} at line {b['line']}, column {PATIENT_COLUMN!r}; the publisher's "
                        f"split is by patient")


# ---- names and headers --------------------------------------------------------------------------
def _stem(name: str) -> Optional[str]:
    """``test_labels`` for ``test_labels.csv`` / ``.csv.gz`` (any case); None for other suffixes."""
    lower = name.lower()
    for suffix in (".csv.gz", ".csv"):
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return None


def _split_of(path: Path) -> str:
    """The split a label file is, from its name; the readers file or another name is an error."""
    stem = _stem(path.name) or ""
    stem = stem[len(PREFIX):] if stem.startswith(PREFIX) else stem
    if stem == READERS_FILE:
        raise DataError(f"{path} is the individual readers' file (one row per reader, YES/NO/HEDGE), which "
                        f"can-tf does not read; give {PREFIX}test_labels.csv or {PREFIX}validation_labels.csv "
                        f"(the adjudicated labels) or their folder")
    for split, name in SPLIT_FILES.items():
        if stem == name:
            return split
    raise DataError(f"cannot tell from its name whether {path} is the NIH-Google test or validation file: keep "
                    f"the published name ({PREFIX}test_labels.csv, {PREFIX}validation_labels.csv, or "
                    f"test_labels.csv / validation_labels.csv)")


def _has_findings(path: Path) -> bool:
    """The CSV header (only) has ``Image Index`` and the four findings."""
    try:
        header = pd.read_csv(path, nrows=0, dtype=str)
    except Exception:  # noqa: BLE001  (an unreadable file is simply not this layout)
        return False
    columns = {str(c).strip() for c in header.columns}
    return IMAGE_COLUMN in columns and all(f in columns for f in FINDINGS)


def _lines(mask: np.ndarray, limit: int = 3) -> str:
    """``line 4, line 9 and 2 more`` for the rows where ``mask`` holds (header = line 1)."""
    return line_numbers(np.flatnonzero(mask) + 2, limit)