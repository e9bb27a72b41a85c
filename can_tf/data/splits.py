"""Train / validation / test splits, always by patient, written out so a run can be reproduced.

Two ways to split, chosen by ``data.split``:

- ``official``: NIH's ``train_val_list.txt`` / ``test_list.txt``, with a seeded patient-wise
  carve-out of ``data.val_fraction`` of the train_val patients for validation;
- ``patient``: a seeded random split of the patients by ``data.split_fractions`` (e.g. 70/10/20 of
  the patients; image counts follow).

``data.split_dir`` reuses the files an earlier run wrote. Whatever the source, no patient is ever in
two splits: :func:`assert_patient_disjoint` checks it every time.

Example:
    >>> splits = make_splits(df, data_config)
    >>> {name: len(part) for name, part in splits.items()}
    {'train': 380, 'val': 54, 'test': 112}
    >>> write_splits(splits, "runs/demo")  # runs/demo/splits/{train,val,test}.txt + summary.json
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.data.errors import DataError, preview
from can_tf.data.table import BASE_COLUMNS, image_names
from can_tf.files import atomic_write_text

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
OFFICIAL_LISTS = ("train_val_list.txt", "test_list.txt")


# ---- making splits ------------------------------------------------------------------------------
def patient_split(df: pd.DataFrame, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                  seed: int = 0) -> dict:
    """Splits the patients at random (seeded) into train/val/test by patient counts.

    The patients are sorted before shuffling, so the split depends only on the set of patients and
    the seed, not on row order. Each split with a non-zero fraction gets at least one patient when
    there are enough patients.

    Example:
        >>> splits = patient_split(df, (0.7, 0.1, 0.2), seed=0)
        >>> sorted(splits)
        ['test', 'train', 'val']
    """
    patients = np.sort(df["patient_id"].unique().astype(str))
    counts = _allocate(len(patients), fractions)
    shuffled = patients[np.random.default_rng(seed).permutation(len(patients))]
    which = np.repeat(np.arange(len(SPLIT_NAMES)), counts)
    return _by_patient(df, dict(zip(shuffled, which)))


def official_split(df: pd.DataFrame, split_root: Optional[os.PathLike] = None, *,
                   val_fraction: float = 0.1, seed: int = 0) -> dict:
    """NIH's official split: ``test_list.txt`` is test, ``train_val_list.txt`` is train + val.

    Validation is a seeded carve-out of ``val_fraction`` of the train_val *patients*. Images of the
    table in neither list are dropped with a logged count (``attrs["unlisted_images"]``). NIH's
    lists are patient-disjoint; lists that are not raise :class:`DataError` naming the patients.

    A table whose reader knows its publisher's split (an ``official_split`` column, see
    :func:`publisher_split`) uses that instead of NIH's lists.

    Args:
        split_root: the folder with the two lists; default ``df.attrs["data_root"]``.
    """
    if "official_split" in df.columns:
        return publisher_split(df, val_fraction=val_fraction, seed=seed)
    train_val, test = (set(names) for names in read_official_lists(split_root or df.attrs.get("data_root")))
    both = sorted(train_val & test)
    if both:
        raise DataError(f"{len(both):,} image(s) are in both train_val_list.txt and test_list.txt: "
                        f"{preview(both)}")
    in_train_val = df["image_index"].isin(train_val).to_numpy()
    in_test = df["image_index"].isin(test).to_numpy()
    unlisted = ~(in_train_val | in_test)
    if unlisted.any():
        logger.warning("%s image(s) are in neither train_val_list.txt nor test_list.txt (e.g. %s); "
                       "left out of the official split", f"{int(unlisted.sum()):,}",
                       preview(df.loc[unlisted, "image_index"].head(3)))
    straddling = sorted(set(df.loc[in_train_val, "patient_id"]) & set(df.loc[in_test, "patient_id"]))
    if straddling:
        raise DataError(
            f"the official lists put images of {len(straddling):,} patient(s) in both "
            f"train_val_list.txt and test_list.txt: patient(s) {preview(straddling)}; fix the lists "
            f"or use data.split=patient"
        )
    train_val_patients = np.sort(df.loc[in_train_val, "patient_id"].unique().astype(str))
    counts = _allocate(len(train_val_patients), (1.0 - val_fraction, val_fraction))
    shuffled = train_val_patients[np.random.default_rng(seed).permutation(len(train_val_patients))]
    assignment = dict(zip(shuffled, np.repeat([0, 1], counts)))
    assignment.update((patient, 2) for patient in df.loc[in_test, "patient_id"].unique())
    splits = _by_patient(df, assignment)
    for part in splits.values():
        part.attrs["unlisted_images"] = int(unlisted.sum())
    return splits


def publisher_split(df: pd.DataFrame, *, val_fraction: float = 0.1, seed: int = 0) -> dict:
    """The split a data set's publisher defines (``official_split``: ``train``, ``val`` or ``test``).

    Where the publisher has no validation set (VinDr-CXR: train and test), ``val_fraction`` of the
    training patients are carved out, seeded, as for NIH. Rows without an official split (a data set
    without one, in a merge) are an error naming how many and which data set: use data.split=patient.
    """
    values = df["official_split"].astype(str)
    unsplit = ~values.isin(SPLIT_NAMES)
    if unsplit.any():
        which = preview(sorted(set(df.loc[unsplit, "image_index"].astype(str).str.split("/").str[0])))
        raise DataError(f"{int(unsplit.sum()):,} image(s) have no official split (e.g. from {which}); the "
                        f"publisher defines none for them: use data.split=patient")
    straddling = df.groupby("patient_id")["official_split"].nunique()
    straddling = straddling[straddling > 1]
    if len(straddling):
        raise DataError(f"the official split puts {len(straddling):,} patient(s) in two splits: "
                        f"{preview(straddling.index.tolist())}; use data.split=patient")
    assignment = {}
    train_patients = np.sort(df.loc[values == "train", "patient_id"].unique().astype(str))
    if not (values == "val").any() and len(train_patients):
        counts = _allocate(len(train_patients), (1.0 - val_fraction, val_fraction))
        shuffled = train_patients[np.random.default_rng(seed).permutation(len(train_patients))]
        assignment.update(zip(shuffled, np.repeat([0, 1], counts)))
    for index, name in enumerate(SPLIT_NAMES):
        assignment.update((p, index) for p in df.loc[values == name, "patient_id"].unique() if p not in assignment)
    return _by_patient(df, assignment)


def read_official_lists(split_root: Optional[os.PathLike]) -> tuple[list, list]:
    """Reads ``train_val_list.txt`` and ``test_list.txt`` from ``split_root``."""
    if split_root is None:
        raise DataError("data.split=official needs the folder holding train_val_list.txt and "
                        "test_list.txt; the data table does not say where it came from")
    paths = [Path(split_root) / name for name in OFFICIAL_LISTS]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise DataError(f"data.split=official needs {' and '.join(absent)} in {split_root}; "
                        f"copy NIH's split lists there or use data.split=patient")
    return image_names(paths[0]), image_names(paths[1])


def make_splits(df: pd.DataFrame, data_config, *, allow_empty: Sequence[str] = ()) -> dict:
    """The splits a :class:`~can_tf.config.DataConfig` asks for, checked patient-disjoint and non-empty.

    A split may be empty only where the config asks for none (a zero fraction) or it is named in
    ``allow_empty`` (e.g. ``("test",)`` to train on a download of NIH's train_val images only).
    """
    if data_config.split_dir:
        splits = read_splits(data_config.split_dir, df)
        asked = (1.0, 1.0, 1.0)
    elif data_config.split == "official":
        splits = official_split(df, val_fraction=data_config.val_fraction, seed=data_config.seed)
        asked = (1.0, data_config.val_fraction, 1.0)
        if "official_split" in df.columns and not (df["official_split"] == "test").any():
            # The publisher keeps its test labels back (CheXpert): no test split, by design.
            logger.warning("the data set's official split has no test images; evaluate on another data set")
            asked = (1.0, data_config.val_fraction, 0.0)
    else:
        splits = patient_split(df, data_config.split_fractions, seed=data_config.seed)
        asked = tuple(data_config.split_fractions)
    assert_patient_disjoint(splits)
    for name, fraction in zip(SPLIT_NAMES, asked):
        if len(splits[name]) == 0 and fraction > 0 and name not in allow_empty:
            raise DataError(_empty_split_message(name, df, data_config))
    return splits


def assert_patient_disjoint(splits: dict) -> None:
    """Raises :class:`DataError` naming the patients found in more than one split.

    Example:
        >>> assert_patient_disjoint(make_splits(df, data_config))  # silent when disjoint
    """
    patients = {name: set(part["patient_id"].astype(str)) for name, part in splits.items()}
    shared = []
    for a, b in itertools.combinations(patients, 2):
        common = sorted(patients[a] & patients[b])
        if common:
            shared.append(f"{len(common):,} patient(s) in both {a} and {b}: {preview(common)}")
    if shared:
        raise DataError("splits are not patient-disjoint: " + "; ".join(shared))


# ---- writing and reading ------------------------------------------------------------------------
def write_splits(splits: dict, run_dir: os.PathLike, class_names: Optional[Sequence[str]] = None) -> Path:
    """Writes ``run_dir/splits/<name>.txt`` (image names, one a line) and ``splits/summary.json``.

    The summary counts images, patients, and per class positives and unknown labels, per split.
    ``class_names`` defaults to the table's label columns. Returns the ``splits`` folder.
    """
    out = Path(run_dir) / "splits"
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, part in splits.items():
        atomic_write_text(out / f"{name}.txt", "".join(f"{image}\n" for image in part["image_index"]))
        names = list(class_names) if class_names else [c for c in part.columns if c not in BASE_COLUMNS]
        labels = part[names].to_numpy(dtype=np.float64)
        summary[name] = {
            "images": int(len(part)),
            "patients": int(part["patient_id"].nunique()),
            "positives": dict(zip(names, np.nansum(labels, axis=0).astype(int).tolist())),
            "unknown": dict(zip(names, np.isnan(labels).sum(axis=0).astype(int).tolist())),
        }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return out


def read_splits(split_dir: os.PathLike, df: pd.DataFrame, *, subset: bool = False) -> dict:
    """Rebuilds the splits from ``split_dir/{train,val,test}.txt`` on the table ``df``.

    Rows keep the order of the files. An image listed that is not in ``df`` is an error (the split
    was written for other data) unless ``subset`` (``df`` is the split's data narrowed on purpose,
    e.g. by ``data.views``: the listed images it lacks are left out); images of ``df`` listed
    nowhere are left out with a logged count.

    Example:
        >>> splits = read_splits("runs/demo/splits", df)
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"split folder {split_dir} does not exist")
    by_name = df.drop_duplicates("image_index").set_index("image_index", drop=False)
    splits, seen = {}, {}
    for name in SPLIT_NAMES:
        path = split_dir / f"{name}.txt"
        if not path.is_file():
            raise DataError(f"split folder {split_dir} has no {name}.txt (expected train.txt, val.txt, test.txt)")
        names = list(dict.fromkeys(image_names(path)))
        unknown = [n for n in names if n not in by_name.index]
        if unknown and subset:
            names, unknown = [n for n in names if n in by_name.index], []
        if unknown:
            raise DataError(
                f"{path}: {len(unknown):,} listed image(s) are not in the data set ({preview(unknown)}); "
                f"these splits were written for other data; drop data.split_dir or use the matching data"
            )
        for image in names:
            if image in seen:
                raise DataError(f"image {image!r} is listed in both {seen[image]}.txt and {name}.txt in {split_dir}")
            seen[image] = name
        part = by_name.loc[names].reset_index(drop=True)
        part.attrs = dict(df.attrs)
        splits[name] = part
    unlisted = len(by_name) - len(seen)
    if unlisted:
        logger.warning("%s image(s) of the data set are in none of the split files in %s; left out",
                       f"{unlisted:,}", split_dir)
    assert_patient_disjoint(splits)
    return splits


# ---- helpers ------------------------------------------------------------------------------------
def _allocate(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Patients per split: rounded cumulative fractions, then at least one for each non-zero one.

    Example: 10 patients at (0.7, 0.1, 0.2) -> [7, 1, 2]; 4 patients -> [2, 1, 1] (not [3, 0, 1]).
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    cuts = np.round(np.cumsum(fractions) / fractions.sum() * n).astype(int)
    counts = np.diff(np.concatenate([[0], cuts]))
    wanted = fractions > 0
    if n >= wanted.sum():
        for k in np.flatnonzero(wanted & (counts == 0)):
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    return counts


def _by_patient(df: pd.DataFrame, assignment: dict) -> dict:
    """Splits ``df`` rows by ``assignment`` (patient id -> split number); unassigned rows are left out."""
    which = df["patient_id"].astype(str).map(assignment).to_numpy(dtype=np.float64, na_value=np.nan)
    splits = {}
    for k, name in enumerate(SPLIT_NAMES):
        part = df.loc[which == k].reset_index(drop=True)
        part.attrs = dict(df.attrs)
        splits[name] = part
    return splits


def _empty_split_message(name: str, df: pd.DataFrame, data_config) -> str:
    patients = df["patient_id"].nunique()
    if data_config.split_dir:
        return f"the {name} split read from {data_config.split_dir} is empty"
    if data_config.split == "official":
        if name == "test":
            return (f"the official test split is empty: none of the {len(df):,} images present is in "
                    f"test_list.txt (only NIH's train_val images are here); use data.split=patient, "
                    f"or evaluate on other data")
        return (f"the official {name} split is empty: {patients} train_val patient(s) with "
                f"data.val_fraction={data_config.val_fraction}; use more data or data.split=patient")
    return (f"the {name} split is empty: {patients} patient(s) split by data.split_fractions="
            f"{list(data_config.split_fractions)}; use more patients (e.g. data.phantom_patients) or "
            f"larger fractions")
