"""Per-class AUROC and AUPRC for multi-label predictions, with unknown labels and undefined classes.

Labels are a float array ``(N, C)`` of 1.0 / 0.0 / NaN (NaN = unknown, skipped for that class only);
probabilities are ``(N, C)`` in [0, 1]. A class whose known labels hold no positives or no negatives
has no ROC curve: its AUROC and AUPRC are *undefined* (``None``), reported with the reason, never
0.5 and never an exception. Means are taken over the defined classes only, and the number of classes
averaged is always returned with the mean so a reader can tell "mean of 14" from "mean of 13".

AUROC is scikit-learn's ``roc_auc_score``; AUPRC is its ``average_precision_score`` (the step-wise
area, no interpolation).

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.metrics import per_class_auroc
    >>> y = np.array([[1, 0], [0, 0], [1, np.nan], [0, 0]], dtype="float32")
    >>> p = np.array([[0.9, 0.2], [0.3, 0.1], [0.6, 0.5], [0.7, 0.3]])
    >>> per_class_auroc(y, p, ["A", "B"])
    {'A': 0.75, 'B': None}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


from can_tf.errors import EvaluationError  # noqa: E402  (defined there, re-exported)


def check_predictions(y_true, y_prob, class_names: Sequence[str]):
    """Validates labels and probabilities; returns them as float64 arrays ``(N, C)``.

    Raises :class:`EvaluationError` naming the class column (and first row) at fault when shapes
    disagree, a label is not 0, 1 or NaN, or a probability is NaN/inf or outside [0, 1].

    Example:
        >>> y, p = check_predictions([[1.0], [0.0]], [[0.8], [0.1]], ["Edema"])
        >>> y.shape, p.dtype
        ((2, 1), dtype('float64'))
    """
    class_names = list(class_names)
    y_true = _as_table(y_true, class_names, "labels")
    y_prob = check_probabilities(y_prob, class_names)
    if y_true.shape != y_prob.shape:
        raise EvaluationError(
            f"labels shape {y_true.shape} and probabilities shape {y_prob.shape} differ"
        )
    if y_true.shape[0] == 0:
        raise EvaluationError("no images to evaluate (0 rows)")

    bad_label = ~(np.isnan(y_true) | (y_true == 0.0) | (y_true == 1.0))
    _raise_first(bad_label, y_true, class_names, "label", "must be 1, 0 or NaN (unknown)")
    return y_true, y_prob


def check_probabilities(y_prob, class_names: Sequence[str]) -> np.ndarray:
    """Validates probabilities ``(N, C)``: finite and in [0, 1]; returns them as float64.

    Raises :class:`EvaluationError` naming the class column and the first row at fault.
    """
    class_names = list(class_names)
    y_prob = _as_table(y_prob, class_names, "probabilities")
    _raise_first(~np.isfinite(y_prob), y_prob, class_names, "probability", "is not finite")
    outside = (y_prob < 0.0) | (y_prob > 1.0)
    _raise_first(outside, y_prob, class_names, "probability", "is outside [0, 1]")
    return y_prob


def _as_table(values, class_names: list, what: str) -> np.ndarray:
    if len(set(class_names)) != len(class_names):
        raise EvaluationError(f"class_names contains duplicates: {class_names}")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise EvaluationError(
            f"{what} must be a 2-D array (images, classes), got shape {array.shape}"
        )
    if array.shape[1] != len(class_names):
        raise EvaluationError(
            f"{what} have {array.shape[1]} columns but {len(class_names)} class names were "
            f"given ({', '.join(class_names)})"
        )
    return array


def _raise_first(bad: np.ndarray, values: np.ndarray, class_names, what: str, why: str) -> None:
    if not bad.any():
        return
    col = int(np.flatnonzero(bad.any(axis=0))[0])
    row = int(np.flatnonzero(bad[:, col])[0])
    count = int(bad[:, col].sum())
    value = float(values[row, col])
    raise EvaluationError(
        f"class '{class_names[col]}' (column {col}): {what} {value!r} at row {row} {why} "
        f"({count} bad value(s) in this column)"
    )


def class_mismatch(saved: Sequence[str], wanted: Sequence[str], what: str, where: str) -> Optional[str]:
    """How the class names ``saved`` in a file of ``what`` (``"thresholds"``, ``"calibration"``) differ
    from those of ``where`` (e.g. ``"the model"``), or None when they are equal, in order."""
    saved, wanted = tuple(saved), tuple(wanted)
    if saved == wanted:
        return None
    missing = [n for n in saved if n not in wanted]
    extra = [n for n in wanted if n not in saved]
    detail = []
    if missing:
        detail.append(f"only in the {what}: {missing}")
    if extra:
        detail.append(f"only in {where}: {extra}")
    if not detail:
        detail.append(f"same classes in a different order: {what} {list(saved)}")
    return "; ".join(detail)


def undefined_reason(labels: np.ndarray) -> Optional[str]:
    """Why AUROC/AUPRC cannot be computed from one class's labels, or ``None`` if they can.

    Example:
        >>> undefined_reason(np.array([0.0, 0.0, np.nan]))
        'no positive labels among 2 known'
    """
    labels = np.asarray(labels, dtype=np.float64)
    known = labels[~np.isnan(labels)]
    if known.size == 0:
        return "no known labels"
    positives = int((known == 1.0).sum())
    if positives == 0:
        return f"no positive labels among {known.size} known"
    if positives == known.size:
        return f"no negative labels among {known.size} known"
    return None


def per_class_auroc(y_true, y_prob, class_names: Sequence[str]) -> dict:
    """AUROC per class, ``{class_name: float or None}``; ``None`` marks an undefined class."""
    return _per_class(roc_auc_score, y_true, y_prob, class_names)


def per_class_auprc(y_true, y_prob, class_names: Sequence[str]) -> dict:
    """AUPRC (average precision) per class, ``{class_name: float or None}``."""
    return _per_class(average_precision_score, y_true, y_prob, class_names)


def _per_class(score_fn, y_true, y_prob, class_names) -> dict:
    y_true, y_prob = check_predictions(y_true, y_prob, class_names)
    result = {}
    for c, name in enumerate(class_names):
        labels = y_true[:, c]
        if undefined_reason(labels) is not None:
            result[name] = None
            continue
        known = ~np.isnan(labels)
        result[name] = float(score_fn(labels[known], y_prob[known, c]))
    return result


def mean_over_defined(values: Mapping[str, Optional[float]]) -> tuple:
    """``(mean, n_classes_averaged)`` over the classes whose value is defined.

    Returns ``(None, 0)`` when no class is defined.

    Example:
        >>> mean_over_defined({"A": 0.8, "B": None, "C": 0.6})
        (0.7, 2)
    """
    defined = [v for v in values.values() if v is not None and not math.isnan(v)]
    if not defined:
        return None, 0
    return float(np.mean(defined)), len(defined)


@dataclasses.dataclass(frozen=True)
class ClassificationMetrics:
    """Point estimates of per-class AUROC/AUPRC with label counts and undefined reasons.

    Build it with :func:`compute_metrics`. Dicts are keyed by class name, in class order.
    """

    class_names: tuple
    auroc: dict
    auprc: dict
    positives: dict
    negatives: dict
    unknown: dict
    undefined: dict  # class name -> reason, only for undefined classes
    mean_auroc: Optional[float]
    mean_auprc: Optional[float]
    num_classes_averaged: int

    def to_dict(self) -> dict:
        """A JSON-ready dict (undefined values are ``None``)."""
        return {
            "classes": [
                {
                    "name": name,
                    "auroc": self.auroc[name],
                    "auprc": self.auprc[name],
                    "positives": self.positives[name],
                    "negatives": self.negatives[name],
                    "unknown": self.unknown[name],
                    "undefined_reason": self.undefined.get(name),
                }
                for name in self.class_names
            ],
            "mean_auroc": self.mean_auroc,
            "mean_auprc": self.mean_auprc,
            "num_classes_averaged": self.num_classes_averaged,
        }


def compute_metrics(y_true, y_prob, class_names: Sequence[str]) -> ClassificationMetrics:
    """Per-class AUROC, AUPRC, label counts and the means over defined classes.

    Example:
        >>> y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype="float32")
        >>> p = np.array([[0.9, 0.2], [0.3, 0.1], [0.6, 0.5], [0.7, 0.3]])
        >>> m = compute_metrics(y, p, ["A", "B"])
        >>> m.auroc["A"], m.undefined["B"], m.num_classes_averaged
        (0.75, 'no positive labels among 4 known', 1)
    """
    class_names = tuple(class_names)
    y_true, y_prob = check_predictions(y_true, y_prob, class_names)
    auroc = per_class_auroc(y_true, y_prob, class_names)
    auprc = per_class_auprc(y_true, y_prob, class_names)
    undefined = {}
    for c, name in enumerate(class_names):
        reason = undefined_reason(y_true[:, c])
        if reason is not None:
            undefined[name] = reason
    mean_auroc, n_averaged = mean_over_defined(auroc)
    mean_auprc, _ = mean_over_defined(auprc)
    return ClassificationMetrics(
        class_names=class_names,
        auroc=auroc,
        auprc=auprc,
        positives={n: int((y_true[:, c] == 1.0).sum()) for c, n in enumerate(class_names)},
        negatives={n: int((y_true[:, c] == 0.0).sum()) for c, n in enumerate(class_names)},
        unknown={n: int(np.isnan(y_true[:, c]).sum()) for c, n in enumerate(class_names)},
        undefined=undefined,
        mean_auroc=mean_auroc,
        mean_auprc=mean_auprc,
        num_classes_averaged=n_averaged,
    )
