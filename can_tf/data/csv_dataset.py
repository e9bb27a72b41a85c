"""Generic CSV data sets: a path column and one column per label (1, 0, or blank for unknown).

A blank label means *unknown*, not negative: it becomes NaN in the table and is masked in the
loss and in the metrics. Relative paths are resolved against ``image_root`` if given, otherwise
against the CSV's own folder. Without a patient column every image counts as its own patient
(so patient-wise splits become image-wise; give a patient column where patients have several images).

Optional columns ``view``, ``age`` and ``sex`` fill the table's columns of the same names.

Example:
    A file ``labels.csv``::

        path,patient,Atelectasis,Effusion
        img/a.png,p1,1,0
        img/b.png,p1,,1

    >>> from can_tf.data.csv_dataset import load_csv
    >>> df = load_csv("labels.csv", ["Atelectasis", "Effusion"], patient_column="patient")
    >>> df["Atelectasis"].tolist()  # blank -> NaN (unknown)
    [1.0, nan]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.data.errors import DataError, preview
from can_tf.labels import match_class_names
from can_tf.data.table import (drop_missing_images, make_table, normalise_sex, normalise_view, parse_ages,
                               read_string_table)

# The label spellings accepted; anything else (yes, 2, -1, ...) is an error naming row and column.
LABEL_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "": np.nan}


def load_csv(csv_path: os.PathLike, class_names: Sequence[str], *, path_column: str = "path",
             patient_column: Optional[str] = None, image_root: Optional[os.PathLike] = None,
             keep_missing: bool = False) -> pd.DataFrame:
    """Loads a generic CSV into the data table (see :mod:`can_tf.data.table`).

    ``image_index`` is the path as written in the CSV (unique per row), so split files written for
    this data set stay valid wherever the images are moved. Rows whose image is missing are counted
    in ``df.attrs["missing_images"]`` and dropped (kept with ``path == ""`` if ``keep_missing``).

    Raises:
        DataError: an empty file, a missing path/label/patient column, a label value other than
            1/0/blank, a blank path or patient, a path listed twice, or no image found.
    """
    csv_path = Path(csv_path)
    raw = _read(csv_path)
    where = str(csv_path)
    given = [path_column] + ([patient_column] if patient_column else [])
    if all(c in raw.columns for c in given):  # else the message below names every missing column
        # data.class_names match label columns case- and separator-insensitively; an unknown one
        # raises naming the closest column (can_tf.labels.match_class_names).
        class_names = match_class_names(
            class_names, [c for c in raw.columns if c not in (*given, "age", "view", "sex")],
            what=f"data.class_names (label columns of CSV {where})")
    needed = [path_column, *class_names] + ([patient_column] if patient_column else [])
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DataError(
            f"CSV {where} lacks column(s) {preview(missing)} (path column {path_column!r}, label "
            f"columns from data.class_names{', patient column ' + repr(patient_column) if patient_column else ''}); "
            f"its columns are {preview(raw.columns, limit=12)}"
        )

    names = raw[path_column].str.strip().str.replace("\\", "/", regex=False)
    _no_blanks(names, path_column, where)
    repeated = names.duplicated(keep=False).to_numpy()
    if repeated.any():
        raise DataError(f"CSV {where}: column {path_column!r} lists the same image more than once: "
                        f"{_cells(repeated, names, path_column)}")
    if patient_column:
        patients = raw[patient_column].str.strip()
        _no_blanks(patients, patient_column, where)
    else:
        patients = names
    labels = np.stack([_parse_labels(raw[name], name, where) for name in class_names], axis=1)

    base = Path(image_root) if image_root is not None else csv_path.parent
    absolute = [os.path.abspath(n if os.path.isabs(n) else base / n) for n in names]
    paths = [p if os.path.isfile(p) else "" for p in absolute]
    age = parse_ages(raw["age"])[0] if "age" in raw.columns else None
    view = normalise_view(raw["view"]) if "view" in raw.columns else None
    sex = normalise_sex(raw["sex"]) if "sex" in raw.columns else None
    table = make_table(names, paths, patients, labels, class_names, view=view, age=age, sex=sex)
    table.attrs = {"label_file": where, "image_root": str(base.resolve()), "data_root": str(csv_path.parent),
                   "class_names": list(class_names)}
    if keep_missing:
        table.attrs["missing_images"] = int((table["path"] == "").sum())
        return table
    return drop_missing_images(table, where, str(base))


def _read(csv_path: Path) -> pd.DataFrame:
    raw = read_string_table(csv_path, "CSV")
    if raw.empty:
        raise DataError(f"CSV {csv_path} has a header but no rows")
    return raw


def _parse_labels(values: pd.Series, column: str, where: str) -> np.ndarray:
    text = values.str.strip()
    bad = ~text.isin(list(LABEL_VALUES)).to_numpy()
    if bad.any():
        raise DataError(
            f"CSV {where}: column {column!r} must hold 1, 0 or blank (unknown); found "
            f"{_cells(bad, text, column)}"
        )
    return text.map(LABEL_VALUES).to_numpy(dtype=np.float32)


def _no_blanks(values: pd.Series, column: str, where: str) -> None:
    blank = (values == "").to_numpy()
    if blank.any():
        rows = np.flatnonzero(blank)
        raise DataError(f"CSV {where}: column {column!r} is blank at line(s) "
                        f"{preview([int(r) + 2 for r in rows])}")


def _cells(mask: np.ndarray, values: pd.Series, column: str, limit: int = 3) -> str:
    """``'yes' at line 4, '2' at line 7 and 3 more`` (lines count the header as line 1)."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(f"{values.iloc[r]!r} at line {r + 2}" for r in rows[:limit])
    rest = len(rows) - limit
    return f"{shown} and {rest} more in column {column!r}" if rest > 0 else shown
