"""Per-class AUROC by patient group (sex, age band, view, any metadata column), with intervals.

Chest X-ray classifiers can rank one group's images worse than another's and so under-diagnose
that group (Seyyed-Kalantari et al., Nature Medicine 2021). This module splits the evaluation set
by an attribute and, for each group and class, reports the group's AUROC with its
patient-bootstrap interval (:func:`~can_tf.evaluation.bootstrap.bootstrap_metrics` on the group's
rows, so it resamples the group's patients and keeps all their images), and the gap

    gap = AUROC(group, class) - AUROC(all rows, class)

A negative gap means the model separates that group's positives from its negatives less well than
it does overall. A "Mean" row per group averages the classes that are defined in that group; its
gap compares with the overall mean (over the classes defined overall), so where the two average
different classes, read the per-class gaps.

A group's AUROC rests on its positives and negatives only. With very few of either the interval is
so wide (and the percentile interval so unreliable) that a gap means nothing, so every row carries
a ``status``:

- ``"ok"``;
- ``"too small: 3 positives, 40 negatives (needs 5 of each)"`` when the known labels hold at least
  one of each but fewer than ``min_positives`` / ``min_negatives``. The point AUROC and its interval
  are still reported (in the dict and the CSV; the Markdown table shows the point with a ``*``
  instead of an interval), so nothing is hidden, but the row is flagged and must not be read as a
  finding;
- ``"undefined: <reason>"`` (:func:`~can_tf.evaluation.metrics.undefined_reason`) when the group has
  no positive or no negative label for the class: AUROC, interval and gap are ``None``.

Groups are never dropped for being small; a group exists where at least one row carries its label.
Blank, NaN or missing metadata forms the group ``"unknown"``, listed last.

Seeds: each group's replicates are drawn with :func:`group_seed` ``(seed, attribute, group)``, a
64-bit number hashed (SHA-256) from the three, so groups do not share one stream of draws, the
result does not depend on which other attributes or groups are analysed, and the same ``seed``
always gives the same intervals. To reproduce one group's intervals, call ``bootstrap_metrics`` on
its rows with ``seed=group_seed(seed, attribute, group)``.

Example:
    >>> import numpy as np
    >>> y = np.array([[1], [0], [1], [0], [1], [0], [0], [1]], dtype="float32")
    >>> p = np.array([[0.9], [0.2], [0.7], [0.4], [0.6], [0.8], [0.1], [0.3]])
    >>> sex = np.array(["F", "F", "F", "F", "M", "M", "M", "M"], dtype=object)
    >>> a = subgroup_metrics(y, p, np.arange(8), ["Edema"], {"sex": sex}, n_boot=50,
    ...                      min_positives=1, min_negatives=1)
    >>> a.overall["Edema"]
    0.75
    >>> [(r.group, r.auroc.point, r.gap, r.status) for r in a.rows_for("sex") if r.class_name != "Mean"]
    [('F', 1.0, 0.25, 'ok'), ('M', 0.5, -0.25, 'ok')]
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import os
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.evaluation.bootstrap import Interval, bootstrap_metrics
from can_tf.evaluation.metrics import (
    EvaluationError,
    check_predictions,
    mean_over_defined,
    per_class_auroc,
    undefined_reason,
)
from can_tf.files import atomic_write_text

# (label, low inclusive, high exclusive), in years.
AGE_BANDS = (
    ("0-19", 0, 20),
    ("20-39", 20, 40),
    ("40-59", 40, 60),
    ("60-79", 60, 80),
    ("80+", 80, math.inf),
)
DEFAULT_ATTRIBUTES = ("sex", "age", "view")
UNKNOWN = "unknown"
MEAN = "Mean"

_CSV_COLUMNS = (
    "attribute", "group", "class", "images", "patients", "positives", "negatives",
    "auroc", "auroc_low", "auroc_high", "n_used", "gap", "status",
)
# Columns of the data table that are never labels (can_tf.data.table.BASE_COLUMNS and friends).
_METADATA_COLUMNS = ("image_index", "path", "patient_id", "view", "age", "sex", "official_split")


@dataclasses.dataclass(frozen=True)
class SubgroupRow:
    """One class (or ``"Mean"``) in one group of one attribute.

    ``images`` and ``patients`` count the group's rows; ``positives`` / ``negatives`` count the
    class's known labels there (the Mean row sums them over all classes). ``auroc`` is the group's
    :class:`~can_tf.evaluation.bootstrap.Interval`; ``gap`` is ``auroc.point`` minus the overall
    AUROC of the same class, ``None`` when either is undefined.
    """

    attribute: str
    group: str
    class_name: str
    images: int
    patients: int
    positives: int
    negatives: int
    auroc: Interval
    gap: Optional[float]
    status: str

    @property
    def too_small(self) -> bool:
        return self.status.startswith("too small")

    @property
    def undefined(self) -> bool:
        return self.status.startswith("undefined")

    def to_dict(self) -> dict:
        return {
            "attribute": self.attribute,
            "group": self.group,
            "class": self.class_name,
            "images": self.images,
            "patients": self.patients,
            "positives": self.positives,
            "negatives": self.negatives,
            "auroc": self.auroc.to_dict(),
            "gap": self.gap,
            "status": self.status,
        }


@dataclasses.dataclass(frozen=True)
class SubgroupAnalysis:
    """Per-group, per-class AUROC with intervals and gaps; build it with :func:`subgroup_metrics`.

    ``overall`` maps each class and ``"Mean"`` to the AUROC on all rows (``None`` if undefined);
    ``rows`` holds, per attribute in order, per group in order, one row per class then the Mean row.
    """

    attributes: tuple
    class_names: tuple
    n_boot: int
    seed: int
    confidence: float
    min_positives: int
    min_negatives: int
    overall: dict
    rows: tuple

    def rows_for(self, attribute: str) -> list:
        """The rows of one attribute, in table order; raises EvaluationError for an unknown name."""
        if attribute not in self.attributes:
            raise EvaluationError(
                f"no subgroup attribute {attribute!r} in this analysis; it has "
                f"{', '.join(self.attributes)}"
            )
        return [row for row in self.rows if row.attribute == attribute]

    def groups(self, attribute: str) -> list:
        """The group labels of one attribute, in table order."""
        return list(dict.fromkeys(row.group for row in self.rows_for(attribute)))

    def to_dict(self) -> dict:
        """A JSON-ready dict (undefined values are ``None``, never NaN)."""
        return {
            "attributes": list(self.attributes),
            "n_boot": self.n_boot,
            "seed": self.seed,
            "confidence": self.confidence,
            "min_positives": self.min_positives,
            "min_negatives": self.min_negatives,
            "overall": dict(self.overall),
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_csv(self, path: os.PathLike) -> os.PathLike:
        """Writes one line per row (full precision, empty cells for ``None``), atomically."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_CSV_COLUMNS)
        for row in self.rows:
            writer.writerow([
                row.attribute, row.group, row.class_name, row.images, row.patients, row.positives,
                row.negatives, _csv_number(row.auroc.point), _csv_number(row.auroc.low),
                _csv_number(row.auroc.high), row.auroc.n_used, _csv_number(row.gap), row.status,
            ])
        return atomic_write_text(path, buffer.getvalue())

    def to_markdown(self) -> str:
        """One table per attribute: a row per class and the Mean, a column per group.

        A cell reads ``0.812 [0.70, 0.90] (-0.031)``: AUROC, interval, gap to the Overall column.
        """
        percent = f"{100 * self.confidence:g}%"
        lines = [
            "## AUROC by subgroup",
            "",
            f"Cells: AUROC [{percent} patient-bootstrap interval] (gap = group - overall); "
            f"{self.n_boot} replicates per group, seed {self.seed}.",
        ]
        flags = set()
        for attribute in self.attributes:
            rows = self.rows_for(attribute)
            groups = self.groups(attribute)
            cell = {(r.group, r.class_name): r for r in rows}
            first = {g: cell[(g, MEAN)] for g in groups}
            lines += ["", f"### {attribute}", ""]
            lines.append("| | Overall | " + " | ".join(_escape(g) for g in groups) + " |")
            lines.append("|---|---|" + "---|" * len(groups))
            lines.append("| Images | | " + " | ".join(f"{first[g].images:,}" for g in groups) + " |")
            lines.append(
                "| Patients | | " + " | ".join(f"{first[g].patients:,}" for g in groups) + " |"
            )
            for name in (MEAN, *self.class_names):
                label = f"**{MEAN} AUROC**" if name == MEAN else _escape(name)
                cells = []
                for g in groups:
                    text, flag = _markdown_cell(cell[(g, name)], len(self.class_names))
                    cells.append(text)
                    flags.update(flag)
                lines.append(
                    f"| {label} | {_fmt(self.overall[name])} | " + " | ".join(cells) + " |"
                )
        notes = {
            "*": f"\\* too small to measure: fewer than {self.min_positives} positives or "
                 f"{self.min_negatives} negatives in the group; the point is shown, not a finding "
                 f"(counts and interval in the CSV/JSON).",
            "n/a": "n/a: undefined, the group has no positive or no negative label for the class.",
            "†": "† mean over fewer classes than the table lists (the others are undefined there).",
        }
        footnotes = [notes[k] for k in ("*", "n/a", "†") if k in flags]
        if footnotes:
            lines += [""] + footnotes
        return "\n".join(lines) + "\n"


def group_seed(seed: int, attribute: str, group: str) -> int:
    """The bootstrap seed of one group: 64 bits of SHA-256 over ``seed``, attribute and group.

    Example:
        >>> group_seed(0, "sex", "F") == group_seed(0, "sex", "F") != group_seed(0, "sex", "M")
        True
    """
    digest = hashlib.sha256(f"{int(seed)}\x00{attribute}\x00{group}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def subgroup_columns(df: pd.DataFrame, attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> dict:
    """Group labels per row for each attribute: ``{attribute: object array (N,)}``.

    ``"sex"`` gives ``"M"`` / ``"F"``; ``"age"`` the :data:`AGE_BANDS` label (low inclusive, high
    exclusive, so 19.99 is ``"0-19"`` and 80 is ``"80+"``); ``"view"`` ``"PA"`` / ``"AP"`` or the
    other value found; any other name that column's values as strings. Blank, NaN, missing (and a
    negative or non-numeric age) become :data:`UNKNOWN`. An attribute whose column is unknown
    throughout is still returned, as a single ``"unknown"`` group.

    Raises :class:`EvaluationError` when an attribute is not a column of ``df``.

    Example:
        >>> df = pd.DataFrame({"sex": ["F", ""], "age": [19.99, 80.0], "view": ["PA", "AP"]})
        >>> {k: v.tolist() for k, v in subgroup_columns(df).items()}
        {'sex': ['F', 'unknown'], 'age': ['0-19', '80+'], 'view': ['PA', 'AP']}
    """
    attributes = (attributes,) if isinstance(attributes, str) else tuple(attributes)
    for name in attributes:
        if name not in df.columns:
            raise EvaluationError(
                f"subgroup column {name!r} is not in the data; its columns: "
                f"{', '.join(map(str, _non_label_columns(df)))}"
            )
    result = {}
    for name in attributes:
        column = df[name]
        result[name] = _age_bands(column) if name == "age" else _as_labels(column)
    return result


def subgroup_metrics(
    y_true,
    y_prob,
    patient_ids,
    class_names: Sequence[str],
    groups: Mapping[str, Sequence],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_positives: int = 5,
    min_negatives: int = 5,
) -> SubgroupAnalysis:
    """Per-class AUROC, interval, counts, gap and status for every group of every attribute.

    Args:
        y_true: ``(N, C)`` labels, 1 / 0 / NaN (unknown).
        y_prob: ``(N, C)`` probabilities in [0, 1].
        patient_ids: ``(N,)`` patient of each image (``None``: every image its own patient).
        class_names: the ``C`` class names, in column order.
        groups: ``{attribute: (N,) group labels}``, e.g. from :func:`subgroup_columns`; blank,
            NaN or ``None`` labels count as :data:`UNKNOWN`.
        n_boot, confidence: as in :func:`~can_tf.evaluation.bootstrap.bootstrap_metrics`.
        seed: base seed; each group draws with :func:`group_seed` (see the module docstring).
        min_positives, min_negatives: fewer known positives / negatives than this in a group marks
            its class ``"too small: ..."`` (still reported).

    Returns:
        A :class:`SubgroupAnalysis`.
    """
    class_names = tuple(class_names)
    if MEAN in class_names:
        raise EvaluationError(f"class_names: a class may not be called {MEAN!r} (that row is the mean)")
    y_true, y_prob = check_predictions(y_true, y_prob, class_names)
    num_images = y_true.shape[0]
    for field, value in (("min_positives", min_positives), ("min_negatives", min_negatives)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise EvaluationError(f"{field} must be a positive integer, got {value!r}")
    if not groups:
        raise EvaluationError("groups names no attribute to split by (e.g. sex, age, view)")
    if patient_ids is not None:
        patient_ids = np.asarray(patient_ids, dtype=object).reshape(-1)
        if patient_ids.shape[0] != num_images:
            raise EvaluationError(
                f"patient_ids has {patient_ids.shape[0]} entries but there are {num_images} images"
            )
        patient_keys = patient_ids.astype(str)
    labels_by_attribute = {}
    for attribute, labels in groups.items():
        labels = _as_labels(pd.Series(np.asarray(labels, dtype=object).reshape(-1)))
        if labels.shape[0] != num_images:
            raise EvaluationError(
                f"groups[{attribute!r}] has {labels.shape[0]} labels but there are {num_images} images"
            )
        labels_by_attribute[str(attribute)] = labels

    overall = per_class_auroc(y_true, y_prob, class_names)
    overall[MEAN] = mean_over_defined(overall)[0]

    rows = []
    for attribute, labels in labels_by_attribute.items():
        for group in _ordered_groups(attribute, labels):
            mask = labels == group
            g_true, g_prob = y_true[mask], y_prob[mask]
            g_patients = None if patient_ids is None else patient_ids[mask]
            result = bootstrap_metrics(
                g_true, g_prob, g_patients, class_names, metrics=("auroc",), n_boot=n_boot,
                confidence=confidence, seed=group_seed(seed, attribute, group),
            )["auroc"]
            images = int(mask.sum())
            patients = images if patient_ids is None else int(np.unique(patient_keys[mask]).size)
            positives = (g_true == 1.0).sum(axis=0).astype(int)
            negatives = (g_true == 0.0).sum(axis=0).astype(int)
            too_small_averaged = 0
            for c, name in enumerate(class_names):
                interval = result.per_class[name]
                status = _status(
                    g_true[:, c], int(positives[c]), int(negatives[c]), min_positives, min_negatives
                )
                if interval.defined and status != "ok":
                    too_small_averaged += 1
                rows.append(SubgroupRow(
                    attribute=attribute, group=group, class_name=name, images=images,
                    patients=patients, positives=int(positives[c]), negatives=int(negatives[c]),
                    auroc=interval, gap=_gap(interval.point, overall[name]), status=status,
                ))
            k = result.num_classes_averaged
            if k == 0:
                mean_status = "undefined: no class is defined in this group"
            else:
                mean_status = f"mean over {k} of {len(class_names)} classes"
                if too_small_averaged:
                    mean_status += f", {too_small_averaged} of them too small"
            rows.append(SubgroupRow(
                attribute=attribute, group=group, class_name=MEAN, images=images,
                patients=patients, positives=int(positives.sum()), negatives=int(negatives.sum()),
                auroc=result.mean, gap=_gap(result.mean.point, overall[MEAN]), status=mean_status,
            ))

    return SubgroupAnalysis(
        attributes=tuple(labels_by_attribute),
        class_names=class_names,
        n_boot=int(n_boot),
        seed=int(seed),
        confidence=float(confidence),
        min_positives=int(min_positives),
        min_negatives=int(min_negatives),
        overall=overall,
        rows=tuple(rows),
    )


def _status(labels, positives: int, negatives: int, min_positives: int, min_negatives: int) -> str:
    reason = undefined_reason(labels)
    if reason is not None:
        return f"undefined: {reason}"
    if positives < min_positives or negatives < min_negatives:
        if min_positives == min_negatives:
            needs = f"needs {min_positives} of each"
        else:
            needs = f"needs {min_positives} positives and {min_negatives} negatives"
        return (f"too small: {positives} {_plural(positives, 'positive')}, "
                f"{negatives} {_plural(negatives, 'negative')} ({needs})")
    return "ok"


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _gap(point: Optional[float], overall: Optional[float]) -> Optional[float]:
    if point is None or overall is None:
        return None
    return float(point - overall)


def _as_labels(column: pd.Series) -> np.ndarray:
    """Values as stripped strings; blank, NaN and ``None`` become UNKNOWN."""
    values = column.to_numpy(dtype=object)
    out = np.empty(values.shape[0], dtype=object)
    for i, value in enumerate(values):
        if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
            out[i] = UNKNOWN
            continue
        text = str(value).strip()
        out[i] = text if text else UNKNOWN
    return out


def _age_bands(column: pd.Series) -> np.ndarray:
    ages = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    out = np.full(ages.shape[0], UNKNOWN, dtype=object)
    for label, low, high in AGE_BANDS:
        # NaN compares False, so unknown ages stay UNKNOWN (and so do negative ones).
        out[(ages >= low) & (ages < high)] = label
    return out


def _ordered_groups(attribute: str, labels: np.ndarray) -> list:
    """Groups present, in natural order (age bands by age, numbers by value), UNKNOWN last."""
    present = set(labels.tolist())
    known = sorted(present - {UNKNOWN})
    if attribute == "age":
        band_order = {label: i for i, (label, _, _) in enumerate(AGE_BANDS)}
        known.sort(key=lambda g: (band_order.get(g, len(band_order)), g))
    else:
        numbers = [_as_number(g) for g in known]
        if known and all(n is not None for n in numbers):
            known = [g for _, g in sorted(zip(numbers, known))]
    return known + ([UNKNOWN] if UNKNOWN in present else [])


def _as_number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _non_label_columns(df: pd.DataFrame) -> list:
    """The columns that are not class labels, for error messages.

    The class names come from ``df.attrs["class_names"]`` where a loader recorded them; otherwise a
    label column is recognised as a float column holding only 1, 0 and NaN.
    """
    class_names = set(df.attrs.get("class_names") or ())
    keep = []
    for name in df.columns:
        if name in _METADATA_COLUMNS:
            keep.append(name)
            continue
        if class_names:
            if name not in class_names:
                keep.append(name)
            continue
        column = df[name]
        if pd.api.types.is_float_dtype(column):
            values = column.to_numpy(dtype=np.float64)
            values = values[~np.isnan(values)]
            if np.isin(values, (0.0, 1.0)).all():
                continue
        keep.append(name)
    return keep


def _markdown_cell(row: SubgroupRow, num_classes: int) -> tuple:
    """The text of one table cell and the footnote marks it uses."""
    point = row.auroc.point
    if point is None:
        return "n/a", {"n/a"}
    # Adding 0.0 turns a rounded -0.0 into 0.0, so a nil gap never reads "-0.000".
    gap = "" if row.gap is None else f" ({round(row.gap, 3) + 0.0:+.3f})"
    if row.too_small:
        return f"{point:.3f}* (too small){gap}", {"*"}
    flags, mark = set(), ""
    if row.class_name == MEAN:
        if not row.status.startswith(f"mean over {num_classes} of"):
            flags.add("†")
            mark += "†"
        if "too small" in row.status:
            flags.add("*")
            mark += "*"
    if row.auroc.low is None:
        interval = " [n/a]"
    else:
        interval = f" [{row.auroc.low:.2f}, {row.auroc.high:.2f}]"
    return f"{point:.3f}{mark}{interval}{gap}", flags


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _csv_number(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))
