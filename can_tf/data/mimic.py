"""MIMIC-CXR-JPG 2.0.0 (Johnson et al., PhysioNet) as distributed: three ``.csv.gz`` tables and ``files/``.

Layout (the ``.csv`` forms, unzipped, are read too)::

    mimic-cxr-jpg/2.0.0/
    ├── mimic-cxr-2.0.0-chexpert.csv.gz   labels per study (CheXpert labeler)
    ├── mimic-cxr-2.0.0-negbio.csv.gz     labels per study (NegBio labeler)
    ├── mimic-cxr-2.0.0-metadata.csv.gz   one row per image (377,110)
    ├── mimic-cxr-2.0.0-split.csv.gz      one row per image: the official split
    └── files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg

- label files: ``subject_id``, ``study_id`` and the 14 CheXpert observations
  (:data:`can_tf.data.chexpert.OBSERVATIONS`) written ``1.0``, ``0.0``, ``-1.0`` (uncertain) or
  blank (not mentioned), one row per *study* (227,827 of the 227,835 studies; the few without a
  report have none). ``labeler="chexpert"`` (default) or ``"negbio"`` picks the file.
- metadata: ``dicom_id``, ``subject_id``, ``study_id``, ``ViewPosition`` (``PA``, ``AP``,
  ``LATERAL``, ``LL``, ``AP AXIAL``, ..., or blank) and more (``Rows``, ``StudyDate``, ...).
- split: ``dicom_id``, ``study_id``, ``subject_id``, ``split`` (``train``, ``validate``, ``test``).
- images: ``files/p<first two digits of subject_id>/p<subject_id>/s<study_id>/<dicom_id>.jpg``
  (subject ids are 8 digits starting with 1, so the top folders are ``p10`` ... ``p19``).

Table: one row per image of the metadata, in its order. ``image_index`` is the image's path
relative to the data folder (``files/p10/.../<dicom_id>.jpg``); ``patient_id`` the
``subject_id``; ``view`` ``PA``/``AP`` from ``ViewPosition`` (``LATERAL``, ``LL`` and the rarer
positions such as ``AP AXIAL`` get ``""`` and are kept: filter with ``data.views``). Sex and age are
not in these files (they are in MIMIC-IV): ``""`` and NaN. Each image takes its study's labels
(joined on ``subject_id`` + ``study_id``), read by the CheXpert reader's
:func:`~can_tf.data.chexpert.parse_observations`, so the ``uncertainty`` (U-Ignore default,
U-Zeros, U-Ones, per class) and ``blank`` (``"negative"`` default, or ``"unknown"``) options mean
exactly what they mean for CheXpert. Images of a study with no label row are left out and counted
(``df.attrs["unlabelled_images"]``), as torchxrayvision does; ``keep_unlabelled=True`` keeps them
with every label NaN (unknown, masked).

Split: ``official_split`` from the split file, ``validate`` -> ``"val"``. Every image of the
metadata must be in the split file with the same ``subject_id`` and ``study_id``, and no patient in
two splits; otherwise a DataError names file, line (header = line 1) and column.

Images: one ``os.path.isfile`` per row after one check per ``files/pNN`` folder (see
:func:`can_tf.data.chexpert.locate_listed_images`: walking would list ~290k patient and study folders for
the 377k files); missing images are counted (``df.attrs["missing_images"]``) and left out.

Example:
    >>> from can_tf.data.mimic import load_mimic
    >>> df = load_mimic("/data/mimic-cxr-jpg/2.0.0", ["Effusion", "Edema"], uncertainty="zeros")
    >>> df.loc[0, ["patient_id", "view", "Effusion", "official_split"]].tolist()
    ['10000032', 'PA', 0.0, 'train']
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.data.chexpert import (OBSERVATIONS, Policy, class_names_for, duplicate_message, locate_listed_images,
                                  parse_observations, read_header, uncertainty_policies)
from can_tf.data.errors import DataError, preview
from can_tf.data.label_space import relabel
from can_tf.data.table import drop_missing_images, make_table, normalise_view, on_distinct

logger = logging.getLogger(__name__)

LABEL_FILES = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz", "negbio": "mimic-cxr-2.0.0-negbio.csv.gz"}
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
KEY_COLUMNS = ("subject_id", "study_id")
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}


def detect(path: os.PathLike) -> bool:
    """True for a MIMIC-CXR-JPG folder (its metadata file and a label file) or one of its tables,
    judged by file names and, for a file, the CSV header only."""
    path = Path(path)
    try:
        if path.is_dir():
            return _find(path, METADATA_FILE) is not None and any(_find(path, f) for f in LABEL_FILES.values())
        if not path.is_file():
            return False
        name = path.name.lower()
        known = [n[: -len(".gz")] for n in (METADATA_FILE, SPLIT_FILE, *LABEL_FILES.values())]
        return any(name in (n, n + ".gz") for n in known) and {"subject_id", "study_id"} <= set(read_header(path))
    except OSError:
        return False


def load_mimic(source: os.PathLike, class_names: Sequence[str], *, image_root: Optional[os.PathLike] = None,
               labeler: Optional[str] = None, uncertainty: Policy = "ignore", blank: str = "negative",
               keep_unlabelled: bool = False, keep_missing: bool = False) -> pd.DataFrame:
    """Loads MIMIC-CXR-JPG into the data table (see :mod:`can_tf.data.table` and this module's docstring).

    Args:
        source: the folder holding the ``mimic-cxr-2.0.0-*.csv.gz`` files, or one of them.
        class_names: the can-tf classes to produce, in order.
        image_root: the folder holding ``files/`` (``files/`` itself is recognised too); default:
            the data folder.
        labeler: ``"chexpert"`` or ``"negbio"``; default: the label file ``source`` names, else
            ``"chexpert"``.
        uncertainty, blank: as for :func:`can_tf.data.chexpert.load_chexpert`.
        keep_unlabelled: keep images of studies without a label row (every label NaN).
        keep_missing: keep rows whose image is not on disk (``path == ""``).

    Raises:
        DataError: a missing file or column, a bad id or label value, a repeated image or study,
            an image missing from the split file or disagreeing with it, a split value other than
            train/validate/test, a patient in two splits, an unknown option; each names the file,
            line and column.
    """
    folder, labeler = _resolve(Path(source).expanduser(), labeler)
    class_names = class_names_for(class_names, "MIMIC-CXR-JPG")
    label_file = _require(folder, LABEL_FILES[labeler])
    metadata_file = _require(folder, METADATA_FILE)
    split_file = _require(folder, SPLIT_FILE)

    meta = _read(metadata_file, METADATA_COLUMNS)
    dicom = pd.Series(np.strings.strip(meta["dicom_id"].to_numpy(dtype=str)).astype(object))
    _no_blanks(dicom, metadata_file, "dicom_id")
    message = duplicate_message(dicom, np.full(len(dicom), str(metadata_file), dtype=object),
                                np.arange(2, len(dicom) + 2), "dicom_id")
    if message:
        raise DataError(message)
    subject = _ids(meta, "subject_id", metadata_file)
    study = _ids(meta, "study_id", metadata_file)

    labels_raw = _read(label_file, (*KEY_COLUMNS, *OBSERVATIONS))
    label_key = _ids(labels_raw, "subject_id", label_file) * 10**9 + _ids(labels_raw, "study_id", label_file)
    repeated = pd.Series(label_key).duplicated().to_numpy()
    if repeated.any():
        r = int(np.flatnonzero(repeated)[0])
        first = int(np.flatnonzero(label_key == label_key[r])[0])
        raise DataError(f"{label_file}, line {r + 2}, column 'study_id': study "
                        f"{labels_raw['study_id'].iloc[r].strip()!r} of subject "
                        f"{labels_raw['subject_id'].iloc[r].strip()!r} is labelled again (first at line {first + 2})")
    observations = parse_observations(labels_raw, str(label_file), uncertainty=uncertainty, blank=blank,
                                      dataset="mimic")
    row = pd.Index(label_key).get_indexer(subject * 10**9 + study)
    labelled = row >= 0
    # a study without a label row gets NaN everywhere (row -1 picks the appended NaN row)
    columns = {name: np.append(values, np.float32(np.nan))[row] for name, values in observations.items()}

    official = _official_split(split_file, metadata_file, dicom, subject, study)

    subject_text = subject.astype(str).astype(object)
    # "files/p10/p10000032/" per distinct subject, then one C-level concatenation per part
    prefix = on_distinct(pd.Series(subject_text), lambda d: "files/p" + d.str[:2] + "/p" + d + "/s")
    relative = pd.Series(prefix + study.astype(str).astype(object) + "/" + dicom.to_numpy(dtype=object) + ".jpg",
                         dtype=object)
    base = _image_base(Path(image_root) if image_root is not None else folder)
    paths = locate_listed_images(base, relative)
    labels = relabel(columns, "mimic", class_names)
    df = make_table(relative, paths, subject_text, labels, class_names, view=normalise_view(meta["ViewPosition"]))
    df["official_split"] = official
    unlabelled = int((~labelled).sum())
    if unlabelled and not keep_unlabelled:
        logger.warning("%s image(s) of %s belong to studies %s does not label (e.g. %s); left out "
                       "(keep_unlabelled=True keeps them with unknown labels)", f"{unlabelled:,}",
                       metadata_file, label_file, preview(df.loc[~labelled, "image_index"].head(3)))
        df = df.loc[labelled].reset_index(drop=True)
    df.attrs = {"format": "mimic", "data_root": str(folder), "label_file": str(label_file),
                "metadata_file": str(metadata_file), "split_file": str(split_file), "labeler": labeler,
                "image_root": str(base), "class_names": list(class_names),
                "uncertainty": uncertainty_policies(uncertainty, "mimic"), "blank": blank,
                "unlabelled_images": unlabelled}
    if keep_missing:
        df.attrs["missing_images"] = int((df["path"] == "").sum())
        return df
    return drop_missing_images(df, str(metadata_file), str(base))


# ---- files ---------------------------------------------------------------------------------------
def _resolve(source: Path, labeler: Optional[str]) -> tuple:
    """(data folder, labeler) from the source (folder or one of the tables) and the option."""
    if not source.exists():
        raise DataError(f"MIMIC-CXR-JPG source {source} does not exist")
    named = None
    if source.is_file():
        for name, file in LABEL_FILES.items():
            if source.name in (file, file[: -len(".gz")]):
                named = name
        folder = source.parent
    else:
        folder = source
    if labeler is None:
        labeler = named or "chexpert"
    if labeler not in LABEL_FILES:
        raise DataError(f"unknown MIMIC-CXR-JPG labeler {labeler!r}: use one of {', '.join(map(repr, LABEL_FILES))}")
    if named and named != labeler:
        raise DataError(f"the source {source} is the {named} label file, but labeler={labeler!r}")
    return folder, labeler


def _find(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / name, folder / name[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def _require(folder: Path, name: str) -> Path:
    found = _find(folder, name)
    if found is None:
        raise DataError(f"MIMIC-CXR-JPG folder {folder} has no {name} (nor {name[: -len('.gz')]})")
    return found


def _read(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """The named columns of a table, as strings; a missing column is an error naming the file."""
    header = read_header(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path} lacks column(s) {preview(missing)}; its columns are {preview(header, limit=20)}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda c: c.strip() in columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    if raw.empty:
        raise DataError(f"{path} has a header but no rows")
    return raw


def _ids(raw: pd.DataFrame, column: str, where: Path) -> np.ndarray:
    """A column of numeric ids (``10000032``) as int64; anything else names line and column."""
    try:  # numpy parses digit strings (surrounding blanks allowed) in C; the slow path finds the culprit
        values = raw[column].to_numpy(dtype=str).astype(np.int64)
        if (values >= 0).all() and (values < 10**9).all():
            return values
    except (ValueError, OverflowError):
        pass
    text = raw[column].str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = (values.isna() | (values < 0) | (values % 1 != 0) | (values >= 10**9)).to_numpy()
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}, line {r + 2}, column {column!r}: {raw[column].iloc[r]!r} is not a "
                        f"numeric id (e.g. 10000032)")
    return values.to_numpy(dtype=np.int64)


def _no_blanks(values: pd.Series, where: Path, column: str) -> None:
    blank = (values == "").to_numpy()
    if blank.any():
        raise DataError(f"{where}, line {int(np.flatnonzero(blank)[0]) + 2}, column {column!r}: blank")


def _official_split(split_file: Path, metadata_file: Path, dicom: pd.Series, subject: np.ndarray,
                    study: np.ndarray) -> np.ndarray:
    """``train``/``val``/``test`` per metadata image, checked against the split file."""
    raw = _read(split_file, SPLIT_COLUMNS)
    split_dicom = pd.Series(np.strings.strip(raw["dicom_id"].to_numpy(dtype=str)).astype(object))
    message = duplicate_message(split_dicom, np.full(len(raw), str(split_file), dtype=object),
                                np.arange(2, len(raw) + 2), "dicom_id")
    if message:
        raise DataError(message)
    row = pd.Index(split_dicom).get_indexer(dicom)
    absent = row < 0
    if absent.any():
        m = int(np.flatnonzero(absent)[0])
        raise DataError(f"{metadata_file}, line {m + 2}, column 'dicom_id': image {dicom.iloc[m]!r} is not in "
                        f"{split_file} ({int(absent.sum()):,} image(s) missing there)")
    for column, expected in (("subject_id", subject), ("study_id", study)):
        values = _ids(raw, column, split_file)[row]
        differ = values != expected
        if differ.any():
            m = int(np.flatnonzero(differ)[0])
            raise DataError(f"{split_file}, line {row[m] + 2}, column {column!r}: {values[m]} for image "
                            f"{dicom.iloc[m]!r}, but {metadata_file} line {m + 2} says {expected[m]} "
                            f"({int(differ.sum()):,} such image(s))")
    codes, distinct = pd.factorize(raw["split"])
    mapped = pd.Series(distinct, dtype=object).str.strip().map(SPLIT_NAMES)
    bad = mapped.isna().to_numpy()
    if bad.any():
        r = int(np.flatnonzero(np.isin(codes, np.flatnonzero(bad)))[0])
        raise DataError(f"{split_file}, line {r + 2}, column 'split': {raw['split'].iloc[r]!r} is not one of "
                        f"train, validate, test")
    official = mapped.to_numpy(dtype=object)[codes][row]
    per_patient = pd.DataFrame({"p": subject, "s": official}).groupby("p")["s"].nunique()
    straddling = per_patient.index[per_patient > 1].tolist()
    if straddling:
        raise DataError(f"{split_file}, column 'split': {len(straddling):,} subject(s) have images in two "
                        f"splits: {preview([str(s) for s in straddling])}; the official split must keep "
                        f"patients apart")
    return official.astype(str)


def _image_base(base: Path) -> Path:
    """The folder holding ``files/``: ``base``, or its parent when ``base`` is ``files/`` itself."""
    if not (base / "files").is_dir() and base.name == "files":
        return base.parent
    return base
