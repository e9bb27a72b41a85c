"""``can-tf data check``: scan a data set before training and report everything wrong at once.

The loaders stop at the first fatal problem; the check goes on and lists them all: label rows
without an image, image files that cannot be read, label-file problems (unknown label names,
duplicate rows, unusable ages, patient ids), per-class positive counts, and patients that appear in
more than one of the given split lists.

*Problems* make the data unusable as it is (``CheckReport.ok`` is False, the command exits 1);
*warnings* (listed images not downloaded, the same file name in two folders, unusable ages) are
reported but are normal for, e.g., a partial download of NIH's archives. With ``strict=True``
(``--strict``) warnings fail the check too: ``ok`` is False and the verdict line says so.

Example:
    >>> from can_tf.data.check import check_dataset
    >>> report = check_dataset("/data/ChestX-ray14")  # also checks NIH's split lists found there
    >>> report.ok
    True
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from can_tf.data.errors import DataError, preview
from can_tf.data.splits import OFFICIAL_LISTS
from can_tf.data.table import image_names, resolve_source
from can_tf.labels import CLASS_NAMES

PathLike = Union[str, os.PathLike]


@dataclass
class CheckReport:
    """What :func:`check_dataset` found. ``problems`` and ``warnings`` are one line each."""

    source: str
    format: str = ""
    label_file: str = ""
    image_root: str = ""
    rows: int = 0  # rows of the label file / CSV
    images_found: int = 0
    images_missing: int = 0
    missing_examples: list = field(default_factory=list)
    duplicate_files: int = 0  # names found in more than one folder below the image root
    images_checked: int = 0
    unreadable: list = field(default_factory=list)  # [image name, reason]
    label_problems: list = field(default_factory=list)  # fatal for loading
    label_warnings: list = field(default_factory=list)
    class_counts: dict = field(default_factory=dict)  # positives among the images found
    split_lists: dict = field(default_factory=dict)  # list name -> number of images listed
    leaking_patients: dict = field(default_factory=dict)  # patient id -> list names it appears in
    unknown_listed: dict = field(default_factory=dict)  # list name -> images not in the label file
    unlisted_images: int = 0  # images found that are in none of the split lists
    error: str = ""  # why the data could not be read at all
    strict: bool = False  # warnings fail the check too (``--strict``)

    @property
    def problems(self) -> list:
        found = [self.error] if self.error else []
        found += self.label_problems
        if not self.error and self.rows and not self.images_found:
            found.append(f"none of the {self.rows:,} listed images was found below {self.image_root}")
        found += [f"unreadable image {name}: {reason}" for name, reason in self.unreadable]
        if self.leaking_patients:
            found.append(
                f"{len(self.leaking_patients):,} patient(s) appear in more than one split list: "
                + "; ".join(f"{p} in {', '.join(lists)}" for p, lists in list(self.leaking_patients.items())[:5])
                + (" ..." if len(self.leaking_patients) > 5 else "")
            )
        found += [f"{name}: {count:,} listed image(s) not in the label file"
                  for name, count in self.unknown_listed.items()]
        return found

    @property
    def warnings(self) -> list:
        found = list(self.label_warnings)
        if self.images_missing:
            found.append(f"{self.images_missing:,} of {self.rows:,} listed images are not on disk "
                         f"(e.g. {preview(self.missing_examples, 3)})")
        if self.duplicate_files:
            found.append(f"{self.duplicate_files:,} image name(s) occur in more than one folder below "
                         f"{self.image_root} (the first found is used; set the image root to pick one)")
        if self.unlisted_images:
            found.append(f"{self.unlisted_images:,} image(s) found are in none of the split lists")
        return found

    @property
    def ok(self) -> bool:
        """No problem, and under ``strict`` no warning either: what the command's exit code says."""
        return not self.problems and not (self.strict and self.warnings)

    @property
    def verdict(self) -> str:
        """The last line of :meth:`summary`; it agrees with :attr:`ok` (and so the exit code).

        Example:
            >>> CheckReport("x", images_missing=1, rows=2, images_found=1).verdict
            'result: OK, 1 warning(s)'
            >>> CheckReport("x", images_missing=1, rows=2, images_found=1, strict=True).verdict
            'result: FAILED (--strict): 1 warning(s)'
        """
        problems, warnings = len(self.problems), len(self.warnings)
        if problems:
            return f"result: FAILED: {problems} problem(s), {warnings} warning(s)"
        if self.strict and warnings:
            return f"result: FAILED (--strict): {warnings} warning(s)"
        return f"result: OK, {warnings} warning(s)"

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "problems": self.problems, "warnings": self.warnings,
                "result": self.verdict}

    def summary(self) -> str:
        """A short human-readable report, ending with the verdict."""
        lines = [f"data check: {self.source} ({self.format or 'unknown format'})"]
        if self.label_file:
            lines.append(f"  label file: {self.label_file} ({self.rows:,} rows)")
        if not self.error:
            lines.append(f"  images: {self.images_found:,} found below {self.image_root}, "
                         f"{self.images_missing:,} listed but missing; {self.images_checked:,} checked, "
                         f"{len(self.unreadable):,} unreadable")
        if self.class_counts:
            lines.append("  positives among images found: "
                         + ", ".join(f"{name} {count:,}" for name, count in self.class_counts.items()))
        if self.split_lists:
            lines.append("  split lists: " + ", ".join(f"{n} ({c:,} images)" for n, c in self.split_lists.items())
                         + f"; {len(self.leaking_patients):,} patient(s) in more than one list")
        for title, items in (("problem", self.problems), ("warning", self.warnings)):
            lines += [f"  {title.upper()}: {item}" for item in items]
        lines.append(self.verdict)
        return "\n".join(lines)


def check_dataset(source: Optional[PathLike], split_lists: Optional[Union[PathLike, Sequence[PathLike]]] = None,
                  *, format: str = "auto", label_file: Optional[PathLike] = None,
                  image_root: Optional[PathLike] = None, class_names: Optional[Sequence[str]] = None,
                  path_column: str = "path", patient_column: Optional[str] = None,
                  verify_images: bool = True, decode: bool = False, strict: bool = False) -> CheckReport:
    """Scans a data set and returns a :class:`CheckReport`; it raises only for a bad argument.

    Args:
        source: a data set's folder or label file in any layout ``data.format`` reads (ChestX-ray14,
            CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR, NIH-Google), or a generic CSV.
        class_names: the label classes to count; default: the data set's own (NIH's 14; a
            publisher's mapped classes; a CSV's columns other than path, patient, view, age, sex).
        split_lists: split list files (one image name a line), or a folder whose ``*.txt`` files
            are the lists (NIH's data folder, or a run's ``splits/``). Default: NIH's
            ``train_val_list.txt`` and ``test_list.txt`` when they are beside the label file.
        verify_images: open every image found (:func:`can_tf.images.scan_images`).
        decode: also decode the pixels (slower, catches corrupt-but-checksummed files).
        strict: warnings fail the check too (``report.ok`` False, verdict ``FAILED (--strict)``).

    Example:
        >>> report = check_dataset("runs/demo/data.csv", "runs/demo/splits", patient_column="patient")
        >>> report.leaking_patients
        {}
    """
    report = CheckReport(source=str(source), strict=strict)
    try:
        report.format, root, label_path = resolve_source(None if source is None else str(source), format,
                                                         None if label_file is None else str(label_file))
        table = _read_table(report, root, label_path, image_root, class_names, path_column, patient_column)
    except DataError as e:
        report.error = str(e)
        return report

    class_names = table.attrs.get("class_names", class_names)  # as the data set spells them
    found = (table["path"] != "").to_numpy()
    report.rows = len(table)
    report.images_found = int(found.sum())
    report.images_missing = int((~found).sum())
    report.missing_examples = table.loc[~found, "image_index"].head(3).tolist()
    report.image_root = table.attrs.get("image_root", "")
    report.duplicate_files = int(table.attrs.get("duplicate_images", 0))
    present = table.loc[found]
    report.class_counts = {name: int(np.nansum(present[name].to_numpy(dtype=np.float64)))
                           for name in class_names}
    if verify_images:
        from can_tf.images import scan_images

        bad = scan_images(present["path"].tolist(), decode=decode)
        names = dict(zip(present["path"], present["image_index"]))
        report.unreadable = [[names[path], reason] for path, reason in bad.items()]
        report.images_checked = len(present)

    lists = _split_list_files(split_lists, table.attrs.get("data_root"), label_path, report.format)
    if lists:
        _check_split_lists(report, table, lists)
    return report


def _read_table(report: CheckReport, root, label_path, image_root, class_names, path_column,
                patient_column) -> pd.DataFrame:
    if report.format == "csv":
        from can_tf.data.csv_dataset import load_csv

        report.label_file = str(label_path)
        if class_names is None:
            class_names = _csv_label_columns(label_path, path_column, patient_column)
        return load_csv(label_path, class_names, path_column=path_column, patient_column=patient_column,
                        image_root=image_root, keep_missing=True)
    if report.format not in ("chestxray14",):
        from can_tf.data.label_space import dataset_classes
        from can_tf.data.table import READERS, _reader_module

        report.label_file = str(root)
        loader = getattr(_reader_module(report.format), READERS[report.format][1])
        return loader(root, list(class_names or dataset_classes(report.format)), image_root=image_root,
                      keep_missing=True)
    class_names = CLASS_NAMES if class_names is None else class_names
    from can_tf.data.chestxray14 import find_label_file, index_images, parse_label_file, read_label_file

    if root is None and label_path is None:
        from can_tf.data.phantom import default_phantom_dir

        root = Path(default_phantom_dir())
    label_path = Path(label_path) if label_path else find_label_file(root)
    report.label_file = str(label_path)
    raw = read_label_file(label_path)
    table, problems = parse_label_file(raw, label_path, index_images(image_root or root), class_names)
    report.label_problems = [p.message for p in problems if p.fatal]
    report.label_warnings = [p.message for p in problems if not p.fatal]
    table.attrs["data_root"] = str(root if root is not None else label_path.parent)
    return table


def _csv_label_columns(path, path_column, patient_column) -> list:
    """A CSV's label columns: every column but the path, the patient and the metadata columns."""
    from can_tf.data.table import read_string_table

    header = read_string_table(path, "CSV").columns
    other = {path_column, patient_column, "view", "age", "sex"}
    columns = [c for c in header if c not in other]
    if not columns:
        raise DataError(f"CSV {path} has no label columns besides {path_column!r} (columns: {', '.join(header)})")
    return columns


def _split_list_files(split_lists, data_root, label_path, format) -> list:
    """The list files to compare: those given, else NIH's two lists beside the data."""
    if split_lists is None:
        if format != "chestxray14" or data_root is None:
            return []
        official = [Path(data_root) / name for name in OFFICIAL_LISTS]
        return official if all(p.is_file() for p in official) else []
    given = [split_lists] if isinstance(split_lists, (str, os.PathLike)) else list(split_lists)
    files = []
    for item in map(Path, given):
        if item.is_dir():
            inside = sorted(item.glob("*.txt"))
            if not inside:
                raise DataError(f"split list folder {item} holds no .txt files")
            files += inside
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"split list {item} does not exist")
    return files


def _check_split_lists(report: CheckReport, table: pd.DataFrame, files: list) -> None:
    """Patients in more than one list, listed images unknown to the label file, images in no list."""
    names = {f.stem: image_names(f) for f in files}
    report.split_lists = {name: len(images) for name, images in names.items()}
    listed = pd.DataFrame({
        "image_index": np.concatenate([np.asarray(v, dtype=object) for v in names.values()]),
        "list": np.repeat(list(names), [len(v) for v in names.values()]),
    })
    patients = table.drop_duplicates("image_index").set_index("image_index")["patient_id"]
    listed["patient_id"] = listed["image_index"].map(patients)
    unknown = listed["patient_id"].isna()
    report.unknown_listed = {k: int(v) for k, v in listed.loc[unknown, "list"].value_counts().items()}
    known = listed.loc[~unknown].drop_duplicates(["patient_id", "list"])
    spread = known.groupby("patient_id")["list"].agg(list)
    leaking = spread[spread.map(len) > 1]
    report.leaking_patients = {str(p): sorted(lists) for p, lists in leaking.items()}
    found = table.loc[table["path"] != "", "image_index"]
    report.unlisted_images = int((~found.isin(listed["image_index"])).sum())
