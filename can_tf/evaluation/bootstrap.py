"""Patient-clustered bootstrap confidence intervals for per-class AUROC and AUPRC.

Images of one patient are correlated (follow-up films, same anatomy), so resampling images would
understate the uncertainty. Each bootstrap replicate draws *patients* with replacement and keeps all
of their images; a patient drawn k times counts k times. The interval is the percentile interval of
the replicate values; the point estimate is the metric on the data as given
(:mod:`can_tf.evaluation.metrics`).

A replicate in which a class has no positives (or no negatives) among its known labels cannot
score that class: that replicate is dropped *for that class only* and ``n_used`` says how many were
kept. The mean over classes is computed per replicate over the classes that are defined in the
full data; a replicate missing any of them is dropped for the mean, so every mean replicate averages
the same set of classes as the point estimate.

Speed: a replicate is a vector of patient multiplicities. For each class the positives and the
negatives are sorted by score once, and each positive's rank among the negatives (and positives) is
found once; a replicate then needs only cumulative weights at those ranks (a weighted Mann-Whitney
count for AUROC, a weighted step-wise precision-recall area for AUPRC), computed for a block of
replicates at a time with one sparse product and a short cumulative sum. This gives exactly
scikit-learn's values on the resampled data (tested), at a fraction of the cost of calling it per
replicate (25,000 images x 14 classes x 1000 replicates: seconds instead of minutes).

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.bootstrap import bootstrap_ci
    >>> rng = np.random.default_rng(0)
    >>> y = (rng.random((300, 1)) < 0.3).astype("float32")
    >>> p = np.clip(0.3 * y + 0.7 * rng.random((300, 1)), 0, 1)
    >>> patients = np.arange(300) // 2  # two images per patient
    >>> r = bootstrap_ci(y, p, patients, ["Edema"], n_boot=200, seed=0)
    >>> ci = r.per_class["Edema"]
    >>> ci.low < ci.point < ci.high, ci.n_used
    (True, 200)
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from can_tf.evaluation.metrics import (
    EvaluationError,
    check_predictions,
    per_class_auprc,
    per_class_auroc,
    mean_over_defined,
)

METRICS = ("auroc", "auprc")

# Replicates per block x max(patients, images) is kept below this: ~4M float64 = 32 MB per array.
_BLOCK_ELEMENTS = 4_000_000


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval.

    ``point``, ``low`` and ``high`` are ``None`` when undefined; ``n_used`` is the number of
    bootstrap replicates the interval was computed from (0 when undefined).
    """

    point: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n_used: int

    @property
    def defined(self) -> bool:
        return self.point is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """Per-class and mean intervals for one metric (``"auroc"`` or ``"auprc"``)."""

    metric: str
    class_names: tuple
    per_class: dict  # class name -> Interval
    mean: Interval
    num_classes_averaged: int
    n_boot: int
    confidence: float
    seed: int
    num_patients: int
    by_patient: bool

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "per_class": {name: self.per_class[name].to_dict() for name in self.class_names},
            "mean": self.mean.to_dict(),
            "num_classes_averaged": self.num_classes_averaged,
            "n_boot": self.n_boot,
            "confidence": self.confidence,
            "seed": self.seed,
            "num_patients": self.num_patients,
            "by_patient": self.by_patient,
        }


def check_settings(n_boot, confidence: float = 0.95) -> None:
    """Raises :class:`EvaluationError` unless ``n_boot`` is a positive integer and ``confidence`` in
    (0, 1): the checks of every bootstrap in can-tf (intervals, operating points, curve bands)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise EvaluationError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must be in (0, 1), got {confidence!r}")


def bootstrap_metrics(
    y_true,
    y_prob,
    patient_ids,
    class_names: Sequence[str],
    *,
    metrics: Sequence[str] = METRICS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Bootstrap intervals for several metrics from the same replicates.

    Args:
        y_true: ``(N, C)`` labels, 1 / 0 / NaN (unknown).
        y_prob: ``(N, C)`` probabilities in [0, 1].
        patient_ids: ``(N,)`` patient of each image; ``None`` treats every image as its own
            patient (a plain image bootstrap, only right when images are independent).
        class_names: the ``C`` class names, in column order.
        metrics: any of ``"auroc"``, ``"auprc"``.
        n_boot: number of bootstrap replicates.
        confidence: interval coverage, e.g. 0.95 for the 2.5th..97.5th percentiles.
        seed: seed of the replicate draws; same inputs and seed give the same intervals.

    Returns:
        ``{metric: BootstrapResult}``.
    """
    class_names = tuple(class_names)
    y_true, y_prob = check_predictions(y_true, y_prob, class_names)
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    for metric in metrics:
        if metric not in METRICS:
            raise EvaluationError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    check_settings(n_boot, confidence)
    codes, num_patients = patient_codes(patient_ids, y_true.shape[0])

    point_fns = {"auroc": per_class_auroc, "auprc": per_class_auprc}
    points = {m: point_fns[m](y_true, y_prob, class_names) for m in metrics}
    # replicates[m][b, c]: metric m of class c in replicate b (NaN where undefined).
    replicates = {m: np.full((n_boot, len(class_names)), np.nan) for m in metrics}
    columns = [
        _SortedColumn(y_true[:, c], y_prob[:, c], codes, num_patients)
        for c in range(len(class_names))
    ]

    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, _BLOCK_ELEMENTS // max(num_patients, y_true.shape[0])))
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        counts_t = np.ascontiguousarray(draw_patient_counts(rng, stop - start, num_patients).T)
        for c, column in enumerate(columns):
            if column.trivial:
                continue
            # Image weight = how many times its patient was drawn.
            weights = column.cumulative_weights(counts_t)
            if "auroc" in metrics:
                replicates["auroc"][start:stop, c] = column.auroc(*weights)
            if "auprc" in metrics:
                replicates["auprc"][start:stop, c] = column.auprc(*weights)

    lo_q, hi_q = 100.0 * (1.0 - confidence) / 2.0, 100.0 * (1.0 + confidence) / 2.0
    results = {}
    for m in metrics:
        per_class = {}
        for c, name in enumerate(class_names):
            per_class[name] = percentile_interval(points[m][name], replicates[m][:, c], lo_q, hi_q)
        mean_point, n_averaged = mean_over_defined(points[m])
        defined_cols = [c for c, name in enumerate(class_names) if points[m][name] is not None]
        if defined_cols:
            # NaN in any averaged class drops the replicate (see module docstring).
            mean_reps = replicates[m][:, defined_cols].mean(axis=1)
        else:
            mean_reps = np.full(n_boot, np.nan)
        results[m] = BootstrapResult(
            metric=m,
            class_names=class_names,
            per_class=per_class,
            mean=percentile_interval(mean_point, mean_reps, lo_q, hi_q),
            num_classes_averaged=n_averaged,
            n_boot=int(n_boot),
            confidence=float(confidence),
            seed=int(seed),
            num_patients=num_patients,
            by_patient=patient_ids is not None,
        )
    return results


def bootstrap_ci(
    y_true,
    y_prob,
    patient_ids,
    class_names: Sequence[str],
    *,
    metric: str = "auroc",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Bootstrap intervals for one metric; see :func:`bootstrap_metrics` for the arguments."""
    return bootstrap_metrics(
        y_true,
        y_prob,
        patient_ids,
        class_names,
        metrics=(metric,),
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )[metric]


def patient_replicate_weights(
    patient_ids, n_boot: int, seed: int = 0, *, num_images: Optional[int] = None
):
    """Image multiplicities of patient-bootstrap replicates, a block of replicates at a time.

    These are the replicates :func:`bootstrap_metrics` draws for the same patients, ``n_boot`` and
    ``seed``, so other statistics can share its resampling: replicate ``b`` draws ``P`` patient
    codes with replacement (codes ``0..P-1`` number the patient ids sorted as strings), and an image
    weighs as many times as its patient was drawn. A statistic that is a sum over images is then a
    matrix product, ``weights @ per_image_values``.

    Args:
        patient_ids: ``(N,)`` patient of each image; ``None`` makes every image its own patient.
        n_boot: number of replicates.
        seed: seed of the draws.
        num_images: ``N``; needed when ``patient_ids`` is ``None``, checked otherwise.

    Returns:
        An iterator of ``(start, stop, weights)``: ``weights`` is a ``(stop - start, N)`` float64
        array of image multiplicities for replicates ``start..stop-1``.

    Example:
        >>> blocks = list(patient_replicate_weights(["a", "a", "b"], n_boot=4, seed=0))
        >>> [(start, stop, w.shape) for start, stop, w in blocks]
        [(0, 4, (4, 3))]
        >>> w = blocks[0][2]
        >>> bool((w[:, 0] == w[:, 1]).all())  # "a" keeps both of its images together
        True
        >>> (w[:, 0] + w[:, 2]).tolist()  # two patients drawn in every replicate
        [2.0, 2.0, 2.0, 2.0]
    """
    check_settings(n_boot)
    if num_images is None:
        if patient_ids is None:
            raise EvaluationError("num_images is needed when patient_ids is None")
        num_images = np.asarray(patient_ids, dtype=object).reshape(-1).shape[0]
    if num_images < 1:
        raise EvaluationError("no images to resample (0 rows)")
    codes, num_patients = patient_codes(patient_ids, int(num_images))
    # Same block size and draw order as bootstrap_metrics, so the replicates are the same ones.
    block = max(1, min(n_boot, _BLOCK_ELEMENTS // max(num_patients, int(num_images))))

    def blocks():
        rng = np.random.default_rng(seed)
        for start in range(0, n_boot, block):
            stop = min(n_boot, start + block)
            counts = draw_patient_counts(rng, stop - start, num_patients)
            yield start, stop, counts[:, codes]

    return blocks()


def patient_codes(patient_ids, num_images: int):
    """Maps patient ids to codes 0..P-1; ``None`` makes every image its own patient."""
    if patient_ids is None:
        return np.arange(num_images), num_images
    ids = np.asarray(patient_ids, dtype=object).reshape(-1)
    if ids.shape[0] != num_images:
        raise EvaluationError(
            f"patient_ids has {ids.shape[0]} entries but there are {num_images} images"
        )
    for row, value in enumerate(ids):
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
            raise EvaluationError(f"patient_ids: missing patient id at row {row}")
    # Strings so that 17 and "17" (e.g. from different loaders) name the same patient.
    _, codes = np.unique(ids.astype(str), return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1


def draw_patient_counts(rng: np.random.Generator, n_rep: int, num_patients: int) -> np.ndarray:
    """``(n_rep, P)`` multiplicities: each row is P draws of patients with replacement."""
    draws = rng.integers(0, num_patients, size=(n_rep, num_patients))
    flat = draws + (np.arange(n_rep) * num_patients)[:, None]
    counts = np.bincount(flat.reshape(-1), minlength=n_rep * num_patients)
    return counts.reshape(n_rep, num_patients).astype(np.float64)


class _SortedColumn:
    """One class's known labels split into positives and negatives, each sorted by score.

    Everything a replicate needs that does not depend on its weights is found here once: each
    positive's rank among the negatives (strictly below / below or tied) and among the positives.
    A replicate needs cumulative weights only at those ranks, so the sorted images are cut there
    into segments, and a sparse segment-by-patient count matrix turns patient multiplicities
    into segment weights in one product. The cumulative sums then run over at most
    ``2 * positives + 1`` segments instead of every image, which matters most for the rare classes.
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray, patient_codes, num_patients: int):
        known = ~np.isnan(labels)
        pos_rows = np.flatnonzero(known & (labels == 1.0))
        neg_rows = np.flatnonzero(known & (labels == 0.0))
        # Undefined on the full data stays undefined in every replicate.
        self.trivial = pos_rows.size == 0 or neg_rows.size == 0
        if self.trivial:
            return
        pos_rows = pos_rows[np.argsort(scores[pos_rows], kind="stable")]
        neg_rows = neg_rows[np.argsort(scores[neg_rows], kind="stable")]
        pos_scores, neg_scores = scores[pos_rows], scores[neg_rows]
        neg_lt = np.searchsorted(neg_scores, pos_scores, side="left")
        neg_le = np.searchsorted(neg_scores, pos_scores, side="right")
        pos_lt = np.searchsorted(pos_scores, pos_scores, side="left")
        self.pos_codes = patient_codes[pos_rows]
        self.neg_segments, (self.neg_lt, self.neg_le) = _segments(
            patient_codes[neg_rows], num_patients, (neg_lt, neg_le)
        )
        self.pos_segments, (self.pos_lt,) = _segments(self.pos_codes, num_patients, (pos_lt,))

    def cumulative_weights(self, counts_t: np.ndarray):
        """Per-positive weights ``(n_pos, R)`` and cumulative weights at the cut points.

        ``counts_t`` is ``(P, R)``: patient multiplicities, one column per replicate (replicates
        along the last axis keep every row operation contiguous). ``cum_pos[k]`` / ``cum_neg[k]``
        is the weight of the images of that label below the ``k``-th cut; the last row is the total.
        """
        pos_w = counts_t[self.pos_codes]
        cum_pos = _cumsum_from_zero(np.asarray(self.pos_segments @ counts_t))
        cum_neg = _cumsum_from_zero(np.asarray(self.neg_segments @ counts_t))
        return pos_w, cum_pos, cum_neg

    def auroc(self, pos_w, cum_pos, cum_neg) -> np.ndarray:
        """Weighted Mann-Whitney AUROC per replicate: P(pos > neg) + 1/2 P(tie)."""
        total_pos, total_neg = cum_pos[-1], cum_neg[-1]
        neg_below = cum_neg[self.neg_lt]
        neg_below += cum_neg[self.neg_le]
        neg_below *= 0.5
        wins = (pos_w * neg_below).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = wins / (total_pos * total_neg)
        auc[(total_pos == 0) | (total_neg == 0)] = np.nan
        return auc

    def auprc(self, pos_w, cum_pos, cum_neg) -> np.ndarray:
        """Weighted average precision per replicate.

        Each positive adds its share of recall times the precision at its own score taken as the
        threshold (everything scoring >= it is called positive), which is scikit-learn's step-wise
        sum over distinct thresholds.
        """
        total_pos, total_neg = cum_pos[-1], cum_neg[-1]
        tp = total_pos - cum_pos[self.pos_lt]
        fp = total_neg - cum_neg[self.neg_lt]
        predicted = tp + fp
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = (pos_w * precision).sum(axis=0) / total_pos
        # Same rule as the point estimate: a class needs both positives and negatives.
        ap[(total_pos == 0) | (total_neg == 0)] = np.nan
        return ap


def _segments(codes: np.ndarray, num_patients: int, ranks: tuple):
    """Cuts sorted images at ``ranks``; returns the segment x patient count matrix and the ranks
    re-expressed as cut indices (cut ``k`` = start of segment ``k``; the last cut = the end)."""
    from scipy.sparse import csr_matrix

    n = codes.size
    cuts = np.unique(np.concatenate([[0, n], *ranks]))
    segment_of_image = np.searchsorted(cuts, np.arange(n), side="right") - 1
    # Duplicate (segment, patient) entries add up: a patient with two images there counts twice.
    matrix = csr_matrix(
        (np.ones(n), (segment_of_image, codes)), shape=(cuts.size - 1, num_patients)
    )
    return matrix, tuple(np.searchsorted(cuts, r) for r in ranks)


def _cumsum_from_zero(weights: np.ndarray) -> np.ndarray:
    out = np.empty((weights.shape[0] + 1, weights.shape[1]))
    out[0] = 0.0
    np.cumsum(weights, axis=0, out=out[1:])
    return out


def percentile_interval(point: Optional[float], values: np.ndarray, lo_q: float, hi_q: float) -> Interval:
    """``point`` with the percentile interval of the finite replicate ``values`` (NaN: dropped)."""
    if point is None:
        return Interval(point=None, low=None, high=None, n_used=0)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return Interval(point=float(point), low=None, high=None, n_used=0)
    low, high = np.percentile(values, [lo_q, hi_q])
    return Interval(point=float(point), low=float(low), high=float(high), n_used=int(values.size))
