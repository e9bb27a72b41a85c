"""Sensitivity, specificity, PPV and NPV at chosen thresholds, with patient-bootstrap intervals.

At a threshold ``t`` a probability ``p`` counts as a finding when ``p >= t`` (the rule of
:mod:`can_tf.evaluation.thresholds`). Over the images whose label of the class is known (NaN
labels are skipped for that class only) this gives the confusion counts TP, FP, TN, FN and::

    sensitivity = TP / (TP + FN)      specificity = TN / (TN + FP)
    PPV         = TP / (TP + FP)      NPV         = TN / (TN + FN)

PPV and NPV depend on the prevalence of the data they are measured on; they transfer to another
population only when its prevalence is similar.

Intervals are patient-level bootstrap percentile intervals, drawn exactly as
:mod:`can_tf.evaluation.bootstrap` draws them (same seed, same replicates): patients are resampled
with replacement and keep all of their images. A metric whose denominator is 0 in the data is
undefined (``Interval(None, None, None, 0)``); a replicate whose denominator is 0 is skipped for
that metric, and ``n_used`` says how many replicates were kept.

Speed: every count is a sum over images of a 0/1 indicator, so the counts of a block of replicates
are one product ``(replicates x images) @ (images x 4 classes)``: 25,000 images x 14 classes x
1000 replicates take seconds.

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.operating_points import operating_points
    >>> y = np.array([[1], [1], [0], [0], [0], [np.nan]])
    >>> p = np.array([[0.9], [0.4], [0.6], [0.2], [0.1], [0.8]])
    >>> r = operating_points(y, p, None, ["Edema"], [0.5], n_boot=200, seed=0)
    >>> c = r.to_dict()["classes"]["Edema"]
    >>> (c["tp"], c["fp"], c["tn"], c["fn"]), c["sensitivity"]["point"], c["ppv"]["point"]
    ((1, 1, 2, 1), 0.5, 0.5)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from can_tf.evaluation.bootstrap import Interval, check_settings, patient_replicate_weights, percentile_interval
from can_tf.evaluation.metrics import EvaluationError, check_predictions
from can_tf.evaluation.thresholds import Thresholds

METRICS = ("sensitivity", "specificity", "ppv", "npv")
COUNTS = ("tp", "fp", "tn", "fn")
_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV"}


@dataclasses.dataclass(frozen=True)
class OperatingPoints:
    """Per-class confusion counts and metric intervals at one threshold per class.

    Build it with :func:`operating_points`. ``counts[name]`` is ``{"tp", "fp", "tn", "fn"}``;
    ``intervals[name]`` is ``{metric: Interval}`` for the metrics in :data:`METRICS`.
    """

    class_names: tuple
    thresholds: tuple
    counts: dict
    intervals: dict
    n_boot: int
    seed: int
    confidence: float
    by_patient: bool

    def to_dict(self) -> dict:
        classes = {}
        for name, threshold in zip(self.class_names, self.thresholds):
            entry = {"threshold": threshold, **self.counts[name]}
            entry.update({m: self.intervals[name][m].to_dict() for m in METRICS})
            classes[name] = entry
        return {
            "n_boot": self.n_boot,
            "seed": self.seed,
            "confidence": self.confidence,
            "by_patient": self.by_patient,
            "classes": classes,
        }

    def to_markdown(self) -> str:
        """A table, one row per class: threshold, each metric with its interval, the counts."""
        ci = f"{100.0 * self.confidence:g}% CI"
        header = ["Class", "Threshold"] + [f"{_TITLES[m]} [{ci}]" for m in METRICS]
        header.append("TP/FP/TN/FN")
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for name, threshold in zip(self.class_names, self.thresholds):
            counts = "/".join(str(self.counts[name][k]) for k in COUNTS)
            cells = [name, f"{threshold:.3f}"]
            cells += [_cell(self.intervals[name][m]) for m in METRICS]
            lines.append("| " + " | ".join(cells + [counts]) + " |")
        return "\n".join(lines) + "\n"


def _cell(interval: Interval) -> str:
    if interval.point is None:
        return "n/a"
    if interval.low is None:
        return f"{interval.point:.3f} [n/a]"
    return f"{interval.point:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def operating_points(
    y_true,
    y_prob,
    patient_ids,
    class_names: Sequence[str],
    thresholds,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> OperatingPoints:
    """Sensitivity, specificity, PPV, NPV per class at ``thresholds``, with bootstrap intervals.

    Args:
        y_true: ``(N, C)`` labels, 1 / 0 / NaN (unknown, skipped for that class).
        y_prob: ``(N, C)`` probabilities in [0, 1].
        patient_ids: ``(N,)`` patient of each image; ``None`` treats images as independent.
        class_names: the ``C`` class names, in column order.
        thresholds: ``C`` thresholds in [0, 1], or a
            :class:`~can_tf.evaluation.thresholds.Thresholds` (its classes must equal
            ``class_names``).
        n_boot: number of bootstrap replicates.
        seed: seed of the replicate draws (the same replicates as ``bootstrap_metrics``).
        confidence: interval coverage, e.g. 0.95 for the 2.5th..97.5th percentiles.
    """
    class_names = tuple(class_names)
    y_true, y_prob = check_predictions(y_true, y_prob, class_names)
    values = _threshold_values(thresholds, class_names)
    check_settings(n_boot, confidence)
    num_classes = len(class_names)

    known = ~np.isnan(y_true)
    positive = known & (y_true == 1.0)
    negative = known & (y_true == 0.0)
    called = y_prob >= np.asarray(values)[None, :]
    # indicators[:, c, k]: image counts towards count k (tp, fp, tn, fn) of class c.
    indicators = np.stack(
        [positive & called, negative & called, negative & ~called, positive & ~called], axis=-1
    ).astype(np.float64)
    point_counts = indicators.sum(axis=0)  # (C, 4)
    point_metrics = _rates(point_counts)  # (C, 4 metrics), NaN where undefined

    replicates = np.empty((n_boot, num_classes, len(METRICS)))
    flat = indicators.reshape(indicators.shape[0], -1)
    for start, stop, weights in patient_replicate_weights(
        patient_ids, n_boot, seed, num_images=y_true.shape[0], y_true=y_true
    ):
        counts = (weights @ flat).reshape(stop - start, num_classes, len(COUNTS))
        replicates[start:stop] = _rates(counts)

    lo_q, hi_q = 100.0 * (1.0 - confidence) / 2.0, 100.0 * (1.0 + confidence) / 2.0
    counts, intervals = {}, {}
    for c, name in enumerate(class_names):
        counts[name] = {k: int(point_counts[c, i]) for i, k in enumerate(COUNTS)}
        intervals[name] = {}
        for m, metric in enumerate(METRICS):
            point = point_metrics[c, m]
            intervals[name][metric] = percentile_interval(
                None if np.isnan(point) else float(point), replicates[:, c, m], lo_q, hi_q
            )
    return OperatingPoints(
        class_names=class_names,
        thresholds=tuple(values),
        counts=counts,
        intervals=intervals,
        n_boot=int(n_boot),
        seed=int(seed),
        confidence=float(confidence),
        by_patient=patient_ids is not None,
    )


def _threshold_values(thresholds, class_names: tuple) -> list:
    if isinstance(thresholds, Thresholds):
        thresholds.check_classes(class_names, where="the predictions")
        thresholds = thresholds.values
    try:
        values = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        raise EvaluationError(
            f"thresholds must be {len(class_names)} numbers or a Thresholds, got {thresholds!r}"
        ) from None
    if len(values) != len(class_names):
        raise EvaluationError(
            f"{len(values)} thresholds for {len(class_names)} classes ({', '.join(class_names)})"
        )
    for name, value in zip(class_names, values):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise EvaluationError(f"threshold of class '{name}' is {value!r}, not in [0, 1]")
    return values


def _rates(counts: np.ndarray) -> np.ndarray:
    """``(..., 4)`` counts (tp, fp, tn, fn) -> ``(..., 4)`` metrics in :data:`METRICS` order."""
    tp, fp, tn, fn = (counts[..., i] for i in range(4))
    numerators = np.stack([tp, tn, tp, tn], axis=-1)
    denominators = np.stack([tp + fn, tn + fp, tp + fp, tn + fn], axis=-1)
    out = np.full(numerators.shape, np.nan)
    np.divide(numerators, denominators, out=out, where=denominators > 0)
    return out
