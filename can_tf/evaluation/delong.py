"""DeLong's test for two correlated ROC curves, its patient-clustered form, and p-value corrections.

Two models scored on the same images give correlated AUROCs: an image that is hard for one is
usually hard for the other, so the variance of their difference is much smaller than the sum of
their variances. DeLong, DeLong & Clarke-Pearson (1988, Biometrics 44:837-845) estimate the
covariance from *structural components* (placement values) of the Mann-Whitney statistic.

Maths (one score column; ``m`` positives ``X_i``, ``n`` negatives ``Y_j``)::

    psi(x, y) = 1 if x > y, 1/2 if x == y, 0 if x < y      (a tie counts one half)
    AUC       = 1/(m n) sum_i sum_j psi(X_i, Y_j)
    V10(X_i)  = 1/n sum_j psi(X_i, Y_j)     fraction of negatives a positive beats
    V01(Y_j)  = 1/m sum_i psi(X_i, Y_j)     fraction of positives that beat a negative

Both component means equal the AUC. For ``k`` score columns on the same labels, with ``r, s`` two
columns::

    S10[r, s] = 1/(m-1) sum_i (V10_r(X_i) - AUC_r) (V10_s(X_i) - AUC_s)
    S01[r, s] = 1/(n-1) sum_j (V01_r(Y_j) - AUC_r) (V01_s(Y_j) - AUC_s)
    Cov(AUC)  = S10 / m + S01 / n

and for the difference of two columns ``a - b``, ``Var = Cov[a,a] + Cov[b,b] - 2 Cov[a,b]``,
``z = (AUC_a - AUC_b) / sqrt(Var)``, two-sided ``p = 2 Phi(-|z|)``, and the interval is
``difference +- Phi^-1((1 + confidence) / 2) sqrt(Var)``. The variance of the difference is summed
from the differences of the components (a sum of squares, never negative) rather than from the
three covariance entries, so identical curves give exactly 0 instead of rounding noise.

Speed (Sun & Xu 2014, IEEE Signal Processing Letters 21:1389-1393): with ``Tz`` the midrank of a
score among all ``m + n`` scores, ``Tx`` its midrank among the positives and ``Ty`` among the
negatives, ``V10(X_i) = (Tz_i - Tx_i) / n`` and ``V01(Y_j) = 1 - (Tz_j - Ty_j) / m``: midranks count
ties as one half, exactly like ``psi``. Three sorts per column make it ``O(N log N)`` instead of the
``O(m n)`` pairwise comparisons (25,000 images: tens of milliseconds). The tests check it against
the pairwise formulas and against R's pROC ``roc.test`` on its published aSAH example.

Degenerate cases: when the variance of the difference is 0 (e.g. the two score columns rank every
positive-negative pair the same way), ``z`` and ``p_value`` follow the limit of the test: a zero
difference gives ``z = 0`` and ``p_value = 1.0``; a non-zero difference gives ``z = +-inf`` and
``p_value = 0.0``. The interval then collapses to the difference.

Clustered data (Obuchowski 1997, Biometrics 53:567-578). Several images of one patient are
correlated, and treating them as independent understates the variance. The AUC and the placement
values stay the same (every positive image against every negative image, whichever patient they
come from); what changes is the unit of replication: with ``I`` clusters (patients),
``m_c`` / ``n_c`` positive / negative images in cluster ``c`` and cluster sums
``V10_c = sum of V10 over the positives of c``, ``V01_c`` likewise::

    S10[r, s] = I / ((I-1) m) sum_c (V10_r,c - m_c AUC_r) (V10_s,c - m_c AUC_s)
    S01[r, s] = I / ((I-1) n) sum_c (V01_r,c - n_c AUC_r) (V01_s,c - n_c AUC_s)
    S11[r, s] = I / (I-1)     sum_c (V10_r,c - m_c AUC_r) (V01_s,c - n_c AUC_s)
    Cov(AUC)  = S10 / m + S01 / n + (S11 + S11^T) / (m n)

which is ``I / (I-1) sum_c u_c u_c^T`` with ``u_c = (V10_c - m_c AUC) / m + (V01_c - n_c AUC) / n``,
the cluster's total influence on the AUC. A cluster may hold positives only, negatives only, or
both. What this assumes: clusters are independent of each other (no image shared by two patients,
no correlation between patients); within a cluster the correlation is arbitrary and unmodelled;
the number of clusters is large enough for the normal approximation (it is asymptotic in ``I``, and
with few patients it is optimistic); cluster sizes may differ but carry no information about the
scores. With every image its own cluster, the clustered variance is
``N/(N-1) [(m-1)/m S10/m + (n-1)/n S01/n]`` (``N = m + n``) with the unclustered ``S10``,
``S01``: the same estimator up to those finite-sample factors.

Missing labels: ``y_true`` is 1 / 0 / NaN; NaN rows (unknown label) are dropped from every
computation, with their scores and cluster ids, before anything else is checked or counted.

Multiple comparisons (one test per finding): :func:`holm` (Holm-Bonferroni step-down) controls
the *family-wise error rate*, the chance of any false rejection among all tests, under any
dependence between them; :func:`benjamini_hochberg` (step-up) controls the *false discovery
rate*, the expected share of false rejections among the rejections, valid for independent or
positively dependent tests, and rejects more. NaN p-values (undefined classes) stay NaN and do not
count as tests.

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.delong import delong_test, holm
    >>> y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, np.nan])
    >>> a = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.2, 0.1, 0.5])
    >>> b = np.array([0.6, 0.9, 0.3, 0.5, 0.7, 0.4, 0.1, 0.3, 0.2, 0.5])
    >>> r = delong_test(y, a, b)
    >>> r.auc_a, r.auc_b, r.n_positive, r.n_negative
    (0.95, 0.775, 4, 5)
    >>> round(r.z, 4), round(r.p_value, 4)
    (1.1613, 0.2455)
    >>> holm([0.01, 0.04, np.nan, 0.03]).tolist()
    [0.03, 0.06, nan, 0.06]
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Optional

import numpy as np

from can_tf.evaluation.metrics import EvaluationError


@dataclasses.dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of ``auc_a - auc_b`` for two scores of the same images.

    ``variance`` / ``std_error`` are those of the difference; ``low`` / ``high`` its
    normal-approximation interval at ``confidence``; ``p_value`` is two-sided (see the module
    docstring for the zero-variance case). ``n_clusters`` is ``None`` when images were treated as
    independent.
    """

    auc_a: float
    auc_b: float
    difference: float
    variance: float
    std_error: float
    z: float
    p_value: float
    low: float
    high: float
    confidence: float
    n_positive: int
    n_negative: int
    n_clusters: Optional[int]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def auroc_variance(y_true, scores, clusters=None) -> tuple:
    """One curve's AUROC and its DeLong variance (Obuchowski's clustered one with ``clusters``).

    Args:
        y_true: ``(N,)`` labels, 1 / 0 / NaN (NaN rows are dropped).
        scores: ``(N,)`` finite scores, higher meaning more likely positive.
        clusters: optional ``(N,)`` cluster (patient) id of each image.

    Returns:
        ``(auc, variance)`` as floats.

    Example:
        >>> auc, var = auroc_variance([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1])
        >>> auc, round(var, 6)
        (0.75, 0.125)
    """
    scores = _as_float(scores, "scores")
    if scores.ndim != 1:
        raise EvaluationError(f"scores must be 1-D (one score per image), got shape {scores.shape}")
    aucs, cov = delong_covariance(y_true, scores[:, None], clusters)
    return float(aucs[0]), float(cov[0, 0])


def delong_covariance(y_true, scores_2d, clusters=None):
    """AUROCs of ``k`` score columns on the same labels and their ``k x k`` covariance matrix.

    Args:
        y_true: ``(N,)`` labels, 1 / 0 / NaN (NaN rows are dropped).
        scores_2d: ``(N, k)`` finite scores, one column per model (``(N,)`` is one column).
        clusters: optional ``(N,)`` cluster (patient) id of each image; ``None`` treats images
            as independent (DeLong 1988), otherwise Obuchowski's clustered covariance.

    Returns:
        ``(aucs, cov)``: ``(k,)`` and ``(k, k)`` float64 arrays.
    """
    components = _components(y_true, scores_2d, clusters)
    aucs, influence, scale = components.aucs, components.influence, components.scale
    cov = (influence * scale) @ influence.T
    # Products of the same two rows in either order may round differently; the matrix is symmetric.
    return aucs, (cov + cov.T) / 2.0


def delong_test(y_true, score_a, score_b, clusters=None, confidence: float = 0.95) -> DeLongResult:
    """DeLong's two-sided test that two scores of the same images have equal AUROC.

    Args:
        y_true: ``(N,)`` labels, 1 / 0 / NaN (NaN rows are dropped).
        score_a: ``(N,)`` finite scores of model A.
        score_b: ``(N,)`` finite scores of model B, same images in the same order.
        clusters: optional ``(N,)`` cluster (patient) id of each image (Obuchowski 1997).
        confidence: coverage of the interval of ``auc_a - auc_b``, in (0, 1).

    Returns:
        A :class:`DeLongResult`.
    """
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must be in (0, 1), got {confidence!r}")
    a = _as_float(score_a, "score_a")
    b = _as_float(score_b, "score_b")
    if a.ndim != 1 or a.shape != b.shape:
        raise EvaluationError(
            "score_a and score_b must be 1-D of the same length, "
            f"got shapes {a.shape} and {b.shape}"
        )
    comp = _components(y_true, np.stack([a, b], axis=1), clusters)
    auc_a, auc_b = float(comp.aucs[0]), float(comp.aucs[1])
    difference = auc_a - auc_b
    # From the difference of the influences: a sum of squares, exactly 0 for identical curves.
    delta = comp.influence[0] - comp.influence[1]
    variance = float(np.sum(comp.scale * delta * delta))
    std_error = math.sqrt(variance)
    if variance > 0.0:
        z = difference / std_error
        p_value = min(1.0, 2.0 * NormalDist().cdf(-abs(z)))
    elif difference == 0.0:
        z, p_value = 0.0, 1.0
    else:
        z, p_value = math.copysign(math.inf, difference), 0.0
    half_width = NormalDist().inv_cdf((1.0 + confidence) / 2.0) * std_error
    return DeLongResult(
        auc_a=auc_a,
        auc_b=auc_b,
        difference=difference,
        variance=variance,
        std_error=std_error,
        z=z,
        p_value=p_value,
        low=difference - half_width,
        high=difference + half_width,
        confidence=float(confidence),
        n_positive=comp.n_positive,
        n_negative=comp.n_negative,
        n_clusters=comp.n_clusters,
    )


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (controls the family-wise error rate).

    With the ``m`` defined p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value
    is ``max_{j <= i} min(1, (m - j + 1) p_(j))``: monotone in the raw p-values and capped at 1.
    Rejecting where the adjusted value is ``<= alpha`` keeps the chance of any false rejection
    ``<= alpha`` under any dependence. NaN entries stay NaN and are not counted in ``m``.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.2]).tolist()
        [0.04, 0.09, 0.09, 0.2]
    """
    p, defined = _check_p_values(p_values)
    out = np.full(p.shape, np.nan)
    values = p[defined]
    m = values.size
    if m:
        order = np.argsort(values, kind="stable")
        factors = m - np.arange(m)
        adjusted = np.minimum(1.0, np.maximum.accumulate(factors * values[order]))
        result = np.empty(m)
        result[order] = adjusted
        out[defined] = result
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values, or q-values (controls the false discovery
    rate).

    With the ``m`` defined p-values sorted ascending, the q-value of the ``i``-th is
    ``min_{j >= i} min(1, m p_(j) / j)``. Rejecting where ``q <= alpha`` keeps the expected share of
    false rejections among the rejections ``<= alpha`` for independent or positively dependent
    tests. NaN entries stay NaN and are not counted in ``m``.

    Example:
        >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.2]).round(4).tolist()
        [0.04, 0.0533, 0.0533, 0.2]
    """
    p, defined = _check_p_values(p_values)
    out = np.full(p.shape, np.nan)
    values = p[defined]
    m = values.size
    if m:
        order = np.argsort(values, kind="stable")
        scaled = values[order] * m / np.arange(1, m + 1)
        adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
        result = np.empty(m)
        result[order] = adjusted
        out[defined] = result
    return out


@dataclasses.dataclass(frozen=True)
class _Components:
    """Per-unit influences on the AUCs: ``cov = (influence * scale) @ influence.T``.

    Unclustered, the units are the images (``scale`` is ``1/(m(m-1))`` for a positive and
    ``1/(n(n-1))`` for a negative, ``influence`` the centred placement value); clustered, the units
    are the clusters (``scale = I/(I-1)``, ``influence`` the cluster's ``u_c``).
    """

    aucs: np.ndarray  # (k,)
    influence: np.ndarray  # (k, units)
    scale: np.ndarray  # (units,)
    n_positive: int
    n_negative: int
    n_clusters: Optional[int]


def _components(y_true, scores_2d, clusters) -> _Components:
    labels = _as_float(y_true, "y_true")
    if labels.ndim != 1:
        raise EvaluationError(f"y_true must be 1-D (one label per image), got shape {labels.shape}")
    scores = _as_float(scores_2d, "scores")
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0] or scores.shape[1] < 1:
        raise EvaluationError(
            f"scores must be (N,) or (N, k) with N = {labels.shape[0]} rows like y_true, "
            f"got shape {scores.shape}"
        )
    known = ~np.isnan(labels)
    bad = known & (labels != 0.0) & (labels != 1.0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise EvaluationError(f"y_true must be 1, 0 or NaN; row {row} is {float(labels[row])!r}")
    codes = None
    if clusters is not None:
        codes = _cluster_codes(clusters, labels.shape[0], known)
    rows = np.flatnonzero(known)
    finite = np.isfinite(scores[rows]).all(axis=1)
    if not finite.all():
        row = int(rows[np.flatnonzero(~finite)[0]])
        raise EvaluationError(f"scores must be finite; row {row} has {scores[row].tolist()}")
    positive = labels[rows] == 1.0
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        missing = "positive" if m == 0 else "negative"
        raise EvaluationError(
            f"y_true has no {missing} among its {rows.size} known labels; the AUROC is undefined"
        )
    pos, neg = scores[rows][positive].T, scores[rows][~positive].T  # (k, m), (k, n)
    v10, v01, aucs = _placements(pos, neg)

    if codes is None:
        if m < 2 or n < 2:
            raise EvaluationError(
                f"the DeLong variance needs at least 2 positives and 2 negatives, got {m} and {n}"
            )
        influence = np.concatenate([v10 - aucs[:, None], v01 - aucs[:, None]], axis=1)
        scale = np.concatenate([np.full(m, 1.0 / (m * (m - 1))), np.full(n, 1.0 / (n * (n - 1)))])
        return _Components(aucs, influence, scale, m, n, None)

    # Codes of the known rows, renumbered 0..I-1 over the clusters that still hold an image.
    _, kept = np.unique(codes[rows], return_inverse=True)
    kept = kept.reshape(-1)
    num_clusters = int(kept.max()) + 1
    if num_clusters < 2:
        raise EvaluationError("the clustered variance needs at least 2 clusters, got 1")
    pos_codes, neg_codes = kept[positive], kept[~positive]
    k = scores.shape[1]
    influence = np.zeros((k, num_clusters))
    for r in range(k):
        # u_c = (V10_c - m_c AUC) / m + (V01_c - n_c AUC) / n, summed image by image.
        influence[r] += np.bincount(pos_codes, (v10[r] - aucs[r]) / m, minlength=num_clusters)
        influence[r] += np.bincount(neg_codes, (v01[r] - aucs[r]) / n, minlength=num_clusters)
    scale = np.full(num_clusters, num_clusters / (num_clusters - 1.0))
    return _Components(aucs, influence, scale, m, n, num_clusters)


def _placements(pos: np.ndarray, neg: np.ndarray):
    """Sun & Xu's midrank placements: ``V10`` ``(k, m)``, ``V01`` ``(k, n)``, the AUCs ``(k,)``."""
    k, m = pos.shape
    n = neg.shape[1]
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    aucs = np.empty(k)
    for r in range(k):
        tz = _midranks(np.concatenate([pos[r], neg[r]]))
        tx, ty = _midranks(pos[r]), _midranks(neg[r])
        # Combined rank minus own-class rank = how many of the other class lie below (ties 1/2).
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
        # Mann-Whitney from the positives' rank sum; integer-valued halves, so exact in float64.
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    return v10, v01, aucs


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` where tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Start index of each run of equal values, and the run each sorted position belongs to.
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [x.size]])
    run = np.cumsum(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])) - 1
    ranks = np.empty(x.size)
    ranks[order] = ((starts + 1 + ends) / 2.0)[run]
    return ranks


def _as_float(values, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise EvaluationError(f"{name} must be numeric: {error}") from None


def _cluster_codes(clusters, num_images: int, known: np.ndarray) -> np.ndarray:
    ids = np.asarray(clusters, dtype=object).reshape(-1)
    if ids.shape[0] != num_images:
        raise EvaluationError(
            f"clusters has {ids.shape[0]} entries but y_true has {num_images} images"
        )
    for row in np.flatnonzero(known):
        value = ids[row]
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            raise EvaluationError(f"clusters: missing cluster id at row {int(row)}")
    # Strings so that 17 and "17" (e.g. from different loaders) name the same patient.
    _, codes = np.unique(ids.astype(str), return_inverse=True)
    return codes.reshape(-1)


def _check_p_values(p_values):
    p = _as_float(p_values, "p_values")
    if p.ndim != 1:
        raise EvaluationError(f"p_values must be 1-D, got shape {p.shape}")
    defined = ~np.isnan(p)
    bad = defined & ((p < 0.0) | (p > 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise EvaluationError(f"p_values must be in [0, 1] or NaN; entry {i} is {float(p[i])!r}")
    return p, defined
