"""ChestX-ray14 as the NIH ships it: the ``Data_Entry_2017*.csv`` label file and images below a root.

The label file may be ``Data_Entry_2017.csv`` (first release) or ``Data_Entry_2017_v2020.csv``
(2020 revision), plain or gzipped. Images may sit anywhere below the image root: the NIH archives
unpack to ``images_001/images/...``, a partial download has only some of them. Label rows without
an image on disk are counted and left out; no image at all is an error.

Example:
    >>> from can_tf.data.chestxray14 import load_chestxray14
    >>> df = load_chestxray14("/data/ChestX-ray14")
    >>> df.attrs["missing_images"]  # label rows whose image is not on disk
    0
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.data.errors import DataError, preview
from can_tf.data.table import (drop_missing_images, make_table, normalise_sex, normalise_view, parse_ages,
                               read_string_table)
from can_tf.images import IMAGE_SUFFIXES
from can_tf.labels import CLASS_NAMES, NO_FINDING, match_class_names

logger = logging.getLogger(__name__)

LABEL_FILE_NAMES = tuple(
    name + suffix
    for name in ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
    for suffix in ("", ".gz")
)
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
# Optional: a trimmed label file without them still loads (blank view/sex, unknown age).
VIEW_COLUMN, AGE_COLUMN, SEX_COLUMN = "View Position", "Patient Age", "Patient Gender"


@dataclass
class ImageIndex:
    """Image file name -> absolute path for every image below ``root``, found in one walk.

    A name found in several folders maps to the shallowest, then alphabetically first, path;
    the others are kept in ``duplicates`` so they can be reported.
    """

    root: str
    paths: dict = field(default_factory=dict)
    duplicates: dict = field(default_factory=dict)  # name -> paths not used


@dataclass
class LabelProblem:
    """Something wrong in the label file. ``fatal`` problems stop loading; the rest are warnings."""

    kind: str
    message: str
    fatal: bool


def find_label_file(root: os.PathLike) -> Path:
    """Finds the NIH label file in ``root`` (preferring the 2020 revision), else below it."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ChestX-ray14 folder {root} does not exist or is not a folder")
    for name in LABEL_FILE_NAMES:
        if (root / name).is_file():
            return root / name
    found = sorted(
        (Path(folder) / name for folder, _, files in os.walk(root) for name in files if name in LABEL_FILE_NAMES),
        key=lambda p: (len(p.parts), LABEL_FILE_NAMES.index(p.name), str(p)),
    )
    if not found:
        raise DataError(
            f"no NIH label file in {root}: expected one of {', '.join(LABEL_FILE_NAMES)} "
            f"(or set data.label_file)"
        )
    return found[0]


def index_images(root: os.PathLike, extensions: Sequence[str] = IMAGE_SUFFIXES) -> ImageIndex:
    """Walks ``root`` once (breadth first, sorted, hidden folders skipped) and indexes images by name.

    Example:
        >>> index = index_images("/data/ChestX-ray14")
        >>> index.paths["00000001_000.png"]
        '/data/ChestX-ray14/images_001/images/00000001_000.png'
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist or is not a folder")
    extensions = tuple(e.lower() for e in extensions)
    index = ImageIndex(root=root)
    level, seen = [root], set()
    while level:
        below = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as e:
                logger.warning("cannot list %s: %s", folder, e.strerror)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    key = (entry.stat().st_dev, entry.stat().st_ino)  # a symlink loop is walked once
                    if key not in seen:
                        seen.add(key)
                        below.append(entry.path)
                elif entry.name.lower().endswith(extensions):
                    if entry.name in index.paths:
                        index.duplicates.setdefault(entry.name, []).append(entry.path)
                    else:
                        index.paths[entry.name] = entry.path
        level = below
    return index


def find_images(root: os.PathLike) -> ImageIndex:
    """:func:`index_images`, warning once when a name occurs in several folders (the first is used)."""
    images = index_images(root)
    if images.duplicates:
        name, others = next(iter(images.duplicates.items()))
        logger.warning(
            "%s image name(s) occur in more than one folder below %s; using the first found "
            "(e.g. %s over %s); set data.image_root to pick one folder",
            f"{len(images.duplicates):,}", images.root, images.paths[name], others[0])
    return images


def read_label_file(path: os.PathLike) -> pd.DataFrame:
    """Reads the label file as strings (blank cells stay ``""``), checking it has rows and columns."""
    path = Path(path)
    raw = read_string_table(path, "label file")
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(
            f"label file {path} lacks required column(s) {preview(missing)}; "
            f"its columns are {preview(raw.columns, limit=12)}"
        )
    if raw.empty:
        raise DataError(f"label file {path} has a header but no rows")
    return raw


def parse_label_file(raw: pd.DataFrame, label_file: os.PathLike, images: ImageIndex,
                     class_names: Sequence[str] = CLASS_NAMES) -> tuple[pd.DataFrame, list]:
    """Turns the raw label file into the data table, collecting every problem instead of stopping.

    Rows whose image is not in ``images`` get ``path == ""``. Returns ``(table, problems)``;
    :func:`load_chestxray14` stops at the first fatal problem, ``can-tf data check`` lists them all.
    """
    where = str(label_file)
    image_index = raw["Image Index"].str.strip()
    patient_id = raw["Patient ID"].str.strip()
    labels, problems, class_names = _parse_findings(raw["Finding Labels"], image_index, class_names, where)

    blank = (image_index == "").to_numpy()
    if blank.any():
        problems.append(LabelProblem("blank_image", f"{where}: {_rows(blank, image_index)} "
                                                    f"without an 'Image Index'", True))
    duplicated = image_index.duplicated(keep=False).to_numpy() & ~blank
    if duplicated.any():
        names = image_index[duplicated].unique().tolist()
        problems.append(LabelProblem(
            "duplicate_image",
            f"{where}: {len(names):,} image(s) listed on more than one row "
            f"({_rows(duplicated, image_index)})", True))
    no_patient = (patient_id == "").to_numpy()
    if no_patient.any():
        problems.append(LabelProblem("blank_patient", f"{where}: {_rows(no_patient, image_index)} "
                                                      f"without a 'Patient ID'", True))
    else:
        # NIH names images <patient>_<follow-up>.png; a different patient id points at a shifted row.
        mismatch = _patient_mismatch(image_index, patient_id)
        if mismatch.any():
            problems.append(LabelProblem(
                "patient_mismatch",
                f"{where}: {_rows(mismatch, image_index)} with a 'Patient ID' that differs from the "
                f"patient number in the image name", False))

    ages = sex = view = None
    if AGE_COLUMN in raw.columns:
        ages, bad_age = parse_ages(raw[AGE_COLUMN])
        if bad_age.any():
            problems.append(LabelProblem(
                "bad_age", f"{where}: {_rows(bad_age, image_index)} with an unusable 'Patient Age' "
                           f"(e.g. {raw[AGE_COLUMN][bad_age].iloc[0]!r}); taken as unknown", False))
    if SEX_COLUMN in raw.columns:
        sex = normalise_sex(raw[SEX_COLUMN])
    if VIEW_COLUMN in raw.columns:
        view = normalise_view(raw[VIEW_COLUMN])

    paths = image_index.map(images.paths).fillna("")
    table = make_table(image_index, paths, patient_id, labels, class_names, view=view, age=ages, sex=sex)
    table.attrs = {"label_file": where, "image_root": images.root,
                   "duplicate_images": len(images.duplicates), "class_names": list(class_names)}
    return table, problems


def load_chestxray14(root: Optional[os.PathLike] = None, *, label_file: Optional[os.PathLike] = None,
                     image_root: Optional[os.PathLike] = None, class_names: Sequence[str] = CLASS_NAMES,
                     keep_missing: bool = False) -> pd.DataFrame:
    """Loads ChestX-ray14 into the data table (see :mod:`can_tf.data.table`).

    Args:
        root: the data folder (label file, split lists and images below it).
        label_file: the label file, if not the ``Data_Entry_2017*`` found in ``root``.
        image_root: where the images are, if not below ``root``.
        class_names: the label columns to produce, a subset of the 14 in any order.
        keep_missing: keep label rows without an image (``path == ""``) instead of dropping them.

    Raises:
        DataError: unknown label names, missing columns, an empty file, duplicate rows, or no image
            found; the message names the file and the row or column at fault.

    Example:
        >>> df = load_chestxray14("/data/ChestX-ray14", image_root="/data/ChestX-ray14/images_001")
        >>> df.loc[0, ["image_index", "patient_id", "view", "Cardiomegaly"]].tolist()
        ['00000001_000.png', '1', 'PA', 1.0]
    """
    if root is None and label_file is None:
        raise DataError("load_chestxray14 needs the data folder or the label file")
    label_file = Path(label_file) if label_file else find_label_file(root)
    root = Path(root) if root is not None else label_file.parent
    raw = read_label_file(label_file)
    images = find_images(image_root if image_root is not None else root)
    table, problems = parse_label_file(raw, label_file, images, class_names)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        more = f" ({len(fatal) - 1} more problem(s); `can-tf data check` lists them)" if len(fatal) > 1 else ""
        raise DataError(fatal[0].message + more)
    for problem in problems:
        logger.warning("%s", problem.message)
    table.attrs["data_root"] = str(root)
    if keep_missing:
        table.attrs["missing_images"] = int((table["path"] == "").sum())
        return table
    return drop_missing_images(table, str(label_file), images.root)


# ---- label parsing ------------------------------------------------------------------------------
def _parse_findings(findings: pd.Series, image_index: pd.Series, class_names: Sequence[str],
                    where: str) -> tuple[np.ndarray, list, list]:
    """Pipe-separated 'Finding Labels' -> multi-hot (rows, classes) float32, problems, class names.

    ``class_names`` (``data.class_names``) are matched to the 14 NIH names and any other label the
    file uses by :func:`can_tf.labels.match_class_names` (``cardiomegaly`` is ``Cardiomegaly``; an
    unknown name raises naming the closest), and returned spelt as matched.

    A label file has a few hundred distinct label strings, so each distinct string is parsed once
    and rows pick their row of the small result by code: no per-row Python work on 112k rows.
    """
    codes, distinct = pd.factorize(findings.fillna("").astype(str).str.strip())
    used = {t.strip() for text in distinct for t in text.split("|") if t.strip()} - {NO_FINDING}
    class_names = match_class_names(class_names, [*CLASS_NAMES, *sorted(used - set(CLASS_NAMES))],
                                    what=f"data.class_names in {where}")
    known = set(CLASS_NAMES) | set(class_names)
    column = {name: i for i, name in enumerate(class_names)}
    table = np.zeros((len(distinct), len(class_names)), dtype=np.float32)
    unknown, blank, contradictory = {}, [], []
    for u, text in enumerate(distinct):
        tokens = [t.strip() for t in text.split("|") if t.strip()]
        if not tokens:
            blank.append(u)
        if NO_FINDING in tokens and len(tokens) > 1:
            contradictory.append(u)
        for token in tokens:
            if token in column:
                table[u, column[token]] = 1.0
            elif token != NO_FINDING and token not in known:
                unknown.setdefault(token, []).append(u)

    problems = []
    for token, uniques in unknown.items():
        rows = np.isin(codes, uniques)
        guess = difflib.get_close_matches(token, sorted(known), n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        problems.append(LabelProblem(
            "unknown_label",
            f"{where}: unknown label {token!r} in 'Finding Labels' at {_rows(rows, image_index)}; "
            f"known labels are {', '.join(CLASS_NAMES)} and {NO_FINDING!r}{hint}", True))
    if blank:
        problems.append(LabelProblem(
            "blank_labels", f"{where}: {_rows(np.isin(codes, blank), image_index)} with empty "
                            f"'Finding Labels' (write {NO_FINDING!r} for a normal image)", True))
    if contradictory:
        problems.append(LabelProblem(
            "contradictory_labels", f"{where}: {_rows(np.isin(codes, contradictory), image_index)} "
                                    f"list {NO_FINDING!r} together with findings", True))
    return table[codes], problems, class_names


def _patient_mismatch(image_index: pd.Series, patient_id: pd.Series) -> np.ndarray:
    """Rows whose numeric image-name prefix (``00000001`` of ``00000001_000.png``) is not the patient id.

    numpy's vectorised string functions keep this a fraction of a second on the full label file.
    """
    names = image_index.to_numpy(dtype=str)
    head, underscore, _ = np.strings.partition(names, "_")
    ids = patient_id.to_numpy(dtype=str)
    comparable = (underscore == "_") & np.strings.isdigit(head) & np.strings.isdigit(ids) \
        & (np.strings.str_len(head) < 18) & (np.strings.str_len(ids) < 18)
    prefix = np.where(comparable, head, "0").astype(np.int64)
    number = np.where(comparable, ids, "0").astype(np.int64)
    return comparable & (prefix != number)


def _rows(mask: np.ndarray, image_index: pd.Series, limit: int = 3) -> str:
    """'line 5 (00000003_000.png), line 9 (...) and 12 more rows' for the rows where ``mask`` holds.

    Lines count from 1 with the header as line 1, as an editor shows the file.
    """
    rows = np.flatnonzero(mask)
    shown = ", ".join(f"line {r + 2} ({image_index.iloc[r] or 'blank'})" for r in rows[:limit])
    rest = len(rows) - limit
    return f"{shown} and {rest:,} more row(s)" if rest > 0 else shown
