"""Publication figures: ROC / PR small multiples with patient-bootstrap bands, reliability, forest.

Every function returns a :class:`matplotlib.figure.Figure` built with the object-oriented API on
the Agg canvas (no pyplot, no global backend), so it works headless and leaves a caller's own
plotting alone. :func:`save_figure` writes SVG, PDF and PNG atomically; :func:`figure_svg` gives
SVG text ready to inline in HTML (text drawn as paths, no fonts or files referenced, element ids
made unique to the figure so several figures can share one page).

Bands. A curve's uncertainty is shown as a pointwise percentile band from the same
patient-clustered bootstrap as the report's intervals (:mod:`can_tf.evaluation.bootstrap`): each
replicate draws patients with replacement, and every image weighs as many times as its patient was
drawn. The curve of a replicate is read off at a fixed grid (101 points) so replicates can be
compared point by point:

- ROC: the true positive rate at each false positive rate ``f`` of the grid. The ROC curve is the
  polyline through the points ``(FP_k / N, TP_k / P)``, one per distinct score taken as the
  threshold (``score >= t`` is positive), from (0, 0); tied scores give a diagonal segment. At a
  vertical step the highest TPR reached at that FPR is taken, elsewhere the polyline is linearly
  interpolated.
- PR: the precision at each recall ``r`` of the grid, taken from the highest threshold whose recall
  is ``>= r``: the step function whose area is the average precision (scikit-learn's AUPRC).

``TP_k`` and ``FP_k`` of a replicate are cumulative sums of image weights in score order, so a
block of replicates is a single weighted cumulative sum over the sorted images, one row per
replicate. A replicate without a positive or a negative patient of a class has no curve and is left
out of that class's band (``n_used`` counts the rest). The band is the percentile interval of the
replicate values at each grid point; it is a pointwise band, not a simultaneous one.

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.figures import curve_band, roc_grid
    >>> rng = np.random.default_rng(0)
    >>> y = (rng.random((400, 3)) < 0.3).astype("float32")
    >>> p = np.clip(0.35 * y + 0.65 * rng.random((400, 3)), 0, 1)
    >>> band = curve_band(y[:, 0], p[:, 0], np.arange(400) // 2, kind="roc", n_boot=50)
    >>> band.grid.shape, band.n_used, bool(np.all(band.low <= band.high))
    ((101,), 50, True)
    >>> fig = roc_grid(y, p, np.arange(400) // 2, ["Edema", "Mass", "Nodule"], n_boot=50)
    >>> len(fig.axes)
    3
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from can_tf.evaluation.bootstrap import (
    check_settings,
    draw_patient_counts,
    patient_codes,
    resampling_strata,
    stratum_generators,
)
from can_tf.evaluation.metrics import (
    EvaluationError,
    check_predictions,
    per_class_auprc,
    per_class_auroc,
    undefined_reason,
)
from can_tf.files import atomic_write_bytes

PathLike = Union[str, os.PathLike]

KINDS = ("roc", "pr")
GRID_POINTS = 101
FORMATS = ("svg", "pdf", "png")

# Replicates per block x images is kept below this: ~4M float64 = 32 MB per array.
_BLOCK_ELEMENTS = 4_000_000

# Sizes in points. Nothing below 7 pt, so a figure stays legible printed at column width.
_STYLE = {
    "font.size": 8.0,
    "axes.titlesize": 8.0,
    "axes.labelsize": 7.5,
    "xtick.labelsize": 7.0,
    "ytick.labelsize": 7.0,
    "legend.fontsize": 7.5,
    "figure.titlesize": 9.0,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "lines.linewidth": 1.3,
    "svg.fonttype": "path",
}
# Saved files carry no date and a fixed hash salt, so the same figure gives the same bytes.
_SAVE_STYLE = {"svg.fonttype": "path", "svg.hashsalt": "can-tf", "pdf.fonttype": 42}
_SAVE_METADATA = {
    "svg": {"Date": None, "Creator": None, "Format": None, "Type": None},
    "pdf": {"CreationDate": None, "Creator": None, "Producer": None},
    "png": {"Software": None},
}

_CURVE_COLOR = "#1f5f9e"
_BAND_COLOR = "#9ec3e6"
_AFTER_COLOR = "#c2410c"
_GREY = "0.55"
_PANEL_SIZE = (2.3, 2.25)  # inches per small-multiple panel
_TITLE_WIDTH = 27  # characters that fit on one title line of a panel


@dataclasses.dataclass(frozen=True)
class CurveBand:
    """One class's curve and its bootstrap band on a fixed grid.

    ``grid`` is the FPR (ROC) or recall (PR) grid; ``curve`` the curve of the data as given read
    off at the grid, ``low`` / ``high`` the pointwise percentile band (NaN when no replicate was
    usable); ``x`` / ``y`` the full-resolution vertices for drawing (FPR/TPR for ROC,
    recall/precision per distinct threshold for PR, highest threshold first).
    """

    kind: str
    grid: np.ndarray
    curve: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_used: int
    n_boot: int
    confidence: float
    x: np.ndarray
    y: np.ndarray

    def contains_curve(self, tolerance: float = 1e-12) -> np.ndarray:
        """Boolean per grid point: does the band contain the point curve?"""
        return (self.low - tolerance <= self.curve) & (self.curve <= self.high + tolerance)


# ------------------------------------------------------------------------------------------------
# Curves on a grid, vectorised over bootstrap replicates
# ------------------------------------------------------------------------------------------------
def curve_on_grid(labels, scores, weights, grid, kind: str = "roc") -> np.ndarray:
    """Weighted ROC (TPR at each FPR of ``grid``) or PR (precision at each recall) curves.

    Args:
        labels: ``(n,)`` known labels, 1 / 0 (no NaN).
        scores: ``(n,)`` scores; ``score >= t`` is positive at threshold ``t``.
        weights: ``(R, n)`` non-negative image weights, one row per curve (bootstrap
            multiplicities; a row of ones is the plain curve).
        grid: ``(G,)`` increasing values in [0, 1].
        kind: ``"roc"`` or ``"pr"``.

    Returns:
        ``(R, G)`` curve values; a row whose weights hold no positive or no negative is NaN.
    """
    if kind not in KINDS:
        raise EvaluationError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if weights.shape[1] != labels.size or scores.size != labels.size:
        raise EvaluationError(
            f"weights have {weights.shape[1]} columns, labels {labels.size} and scores "
            f"{scores.size} entries; they must agree"
        )
    order, ends = _threshold_order(scores)
    positive = labels[order]
    return _grid_values(positive, ends, weights[:, order], grid, kind)


def curve_band(
    labels,
    scores,
    patient_ids=None,
    *,
    kind: str = "roc",
    grid_points: int = GRID_POINTS,
    n_boot: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    strata_labels=None,
) -> CurveBand:
    """One class's ROC or PR curve with its patient-bootstrap band (see the module docstring).

    Args:
        labels: ``(N,)`` 1 / 0 / NaN; NaN rows are skipped.
        scores: ``(N,)`` probabilities.
        patient_ids: ``(N,)`` patient of each image, or ``None`` (every image its own patient).
        kind: ``"roc"`` or ``"pr"``.
        grid_points: size of the FPR / recall grid over [0, 1].
        n_boot, seed, confidence: bootstrap settings, as in
            :func:`~can_tf.evaluation.bootstrap.bootstrap_metrics`.
        strata_labels: the ``(N, C)`` labels of all classes: patients are then resampled within
            their :func:`~can_tf.evaluation.bootstrap.resampling_strata`, as the report's intervals
            are; ``None`` stratifies on this class's labels alone.

    Raises :class:`EvaluationError` when the class is undefined (no positive or no negative).
    """
    if kind not in KINDS:
        raise EvaluationError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    check_settings(n_boot, confidence)
    if grid_points < 2:
        raise EvaluationError(f"grid_points must be at least 2, got {grid_points!r}")
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    reason = undefined_reason(labels)
    if reason is not None:
        raise EvaluationError(f"curve undefined: {reason}")
    codes, num_patients = patient_codes(patient_ids, labels.size)
    strata_labels = labels[:, None] if strata_labels is None else np.asarray(strata_labels, np.float64)
    if strata_labels.shape[0] != labels.size:
        raise EvaluationError(f"strata_labels has {strata_labels.shape[0]} rows but there are "
                              f"{labels.size} images")
    strata = resampling_strata(strata_labels, codes, num_patients)
    known = ~np.isnan(labels)
    labels, scores, codes = labels[known], scores[known], codes[known]
    grid = np.linspace(0.0, 1.0, int(grid_points))

    order, ends = _threshold_order(scores)
    positive, codes = labels[order], codes[order]
    ones = np.ones((1, labels.size))
    curve = _grid_values(positive, ends, ones, grid, kind)[0]
    x, y = _vertices(positive, ends, kind)

    # Draws are made for all patients, known label or not, so every class of one figure sees the
    # same replicates (as the report's intervals do).
    rng = stratum_generators(seed, strata)
    values = np.empty((n_boot, grid.size))
    block = max(1, min(n_boot, _BLOCK_ELEMENTS // max(num_patients, labels.size)))
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        counts = draw_patient_counts(rng, stop - start, num_patients, strata)
        values[start:stop] = _grid_values(positive, ends, counts[:, codes], grid, kind)
    usable = ~np.isnan(values[:, 0])
    lo_q, hi_q = 100.0 * (1.0 - confidence) / 2.0, 100.0 * (1.0 + confidence) / 2.0
    if usable.any():
        low, high = np.percentile(values[usable], [lo_q, hi_q], axis=0)
    else:
        low = high = np.full(grid.size, np.nan)
    return CurveBand(kind=kind, grid=grid, curve=curve, low=low, high=high,
                     n_used=int(usable.sum()), n_boot=int(n_boot), confidence=float(confidence),
                     x=x, y=y)


def _threshold_order(scores: np.ndarray):
    """Images by descending score and the last index of each run of tied scores (one threshold)."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    return order, ends


def _cumulative(positive: np.ndarray, ends: np.ndarray, weights: np.ndarray):
    """Weighted TP and FP at each threshold, ``(R, K)`` each, from one cumulative sum per label."""
    tp = np.cumsum(weights * positive, axis=1)[:, ends]
    fp = np.cumsum(weights * (1.0 - positive), axis=1)[:, ends]
    return tp, fp


def _grid_values(positive, ends, weights, grid, kind) -> np.ndarray:
    tp, fp = _cumulative(positive, ends, weights)
    total_pos, total_neg = tp[:, -1], fp[:, -1]
    out = np.full((weights.shape[0], grid.size), np.nan)
    usable = np.flatnonzero((total_pos > 0) & (total_neg > 0))
    if usable.size == 0:
        return out
    tp, fp = tp[usable], fp[usable]
    tp_total, fp_total = total_pos[usable, None], total_neg[usable, None]
    zeros = np.zeros((usable.size, 1))
    if kind == "roc":
        fpr = np.hstack([zeros, fp / fp_total])
        tpr = np.hstack([zeros, tp / tp_total])
        # Last vertex with FPR <= f: at a vertical step that is its top.
        j = _rowwise_searchsorted(fpr, grid, side="right") - 1
        k = np.minimum(j + 1, fpr.shape[1] - 1)
        fj, fk = np.take_along_axis(fpr, j, 1), np.take_along_axis(fpr, k, 1)
        tj, tk = np.take_along_axis(tpr, j, 1), np.take_along_axis(tpr, k, 1)
        span = fk - fj
        step = np.divide(grid[None, :] - fj, span, out=np.zeros_like(span), where=span > 0)
        out[usable] = tj + step * (tk - tj)
    else:
        predicted = tp + fp
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        # Thresholds that call nothing positive in this replicate (zero-weight images on top)
        # have no precision; recall -1 keeps them sorted first and never selected.
        recall = np.where(predicted > 0, tp / tp_total, -1.0)
        j = _rowwise_searchsorted(recall, grid, side="left")
        out[usable] = np.take_along_axis(precision, np.minimum(j, recall.shape[1] - 1), 1)
    return out


def _rowwise_searchsorted(rows: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    # One exact search per replicate (a few microseconds each); offsetting rows into one sorted
    # array would round values near a grid point and could pick the neighbouring vertex.
    return np.stack([np.searchsorted(row, values, side=side) for row in rows])


def _vertices(positive, ends, kind):
    tp, fp = (a[0] for a in _cumulative(positive, ends, np.ones((1, positive.size))))
    if kind == "roc":
        return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]
    return tp / tp[-1], tp / (tp + fp)


def _operating_point(labels, scores, threshold: float, kind: str):
    called = scores >= threshold
    pos, neg = labels == 1.0, labels == 0.0
    tpr = called[pos].mean()
    if kind == "roc":
        return float(called[neg].mean()), float(tpr)
    if not called.any():
        return None
    return float(tpr), float(called[pos].sum() / called.sum())


# ------------------------------------------------------------------------------------------------
# ROC and PR small multiples
# ------------------------------------------------------------------------------------------------
def roc_grid(y_true, y_prob, patient_ids, class_names: Sequence[str], *, thresholds=None,
             n_boot: int = 200, seed: int = 0, confidence: float = 0.95,
             columns: Optional[int] = None):
    """One ROC panel per class with its patient-bootstrap band, chance line and operating point.

    Args:
        y_true: ``(N, C)`` labels 1 / 0 / NaN (NaN skipped per class).
        y_prob: ``(N, C)`` probabilities.
        patient_ids: ``(N,)`` patient of each image, or ``None``.
        class_names: the ``C`` class names.
        thresholds: optional ``C`` thresholds; each class's operating point (``score >= t``)
            is marked with a dot. ``None`` / NaN entries mark nothing for that class.
        n_boot, seed, confidence: bootstrap settings of the band.
        columns: panels per row (default: up to 4, 5 from 13 classes on).

    An undefined class gets a panel that says ``undefined: <reason>``.
    """
    return _curve_grid("roc", y_true, y_prob, patient_ids, class_names, thresholds=thresholds,
                       n_boot=n_boot, seed=seed, confidence=confidence, columns=columns)


def pr_grid(y_true, y_prob, patient_ids, class_names: Sequence[str], *, thresholds=None,
            n_boot: int = 200, seed: int = 0, confidence: float = 0.95,
            columns: Optional[int] = None):
    """One precision-recall panel per class: curve, bootstrap band, prevalence, operating point.

    Arguments as :func:`roc_grid`; the dashed line is the class's prevalence among its known
    labels (the precision of a model that ranks at random).
    """
    return _curve_grid("pr", y_true, y_prob, patient_ids, class_names, thresholds=thresholds,
                       n_boot=n_boot, seed=seed, confidence=confidence, columns=columns)


def _curve_grid(kind, y_true, y_prob, patient_ids, class_names, *, thresholds, n_boot, seed,
                confidence, columns):
    class_names = tuple(class_names)
    y_true, y_prob = check_predictions(y_true, y_prob, class_names)
    thresholds = _check_thresholds(thresholds, class_names)
    points = (per_class_auroc if kind == "roc" else per_class_auprc)(y_true, y_prob, class_names)
    metric = "AUROC" if kind == "roc" else "AUPRC"
    pct = f"{confidence * 100:g}%"
    with _style():
        fig, axes, columns = _panels(len(class_names), columns, legend_rows=1)
        for c, (name, ax) in enumerate(zip(class_names, axes)):
            labels = y_true[:, c]
            reason = undefined_reason(labels)
            if reason is not None:
                _undefined_panel(ax, name, f"undefined: {reason}")
                continue
            band = curve_band(labels, y_prob[:, c], patient_ids, kind=kind, n_boot=n_boot,
                              seed=seed, confidence=confidence, strata_labels=y_true)
            ax.set_title(_panel_title(name, f"{metric} {points[name]:.3f}"), parse_math=False)
            ax.fill_between(band.grid, band.low, band.high, color=_BAND_COLOR, alpha=0.6,
                            linewidth=0, zorder=1)
            known = ~np.isnan(labels)
            if kind == "roc":
                ax.plot([0, 1], [0, 1], color=_GREY, linestyle="--", linewidth=0.8, zorder=0)
                ax.plot(band.x, band.y, color=_CURVE_COLOR, zorder=3)
            else:
                prevalence = float(labels[known].mean())
                ax.axhline(prevalence, color=_GREY, linestyle="--", linewidth=0.8, zorder=0)
                ax.step(np.r_[0.0, band.x], np.r_[band.y[0], band.y], where="pre",
                        color=_CURVE_COLOR, zorder=3)
            if thresholds[c] is not None:
                point = _operating_point(labels[known], y_prob[known, c], thresholds[c], kind)
                if point is not None:
                    ax.plot(*point, marker="o", markersize=4.5, color="#111111",
                            markeredgecolor="white", markeredgewidth=0.6, linestyle="none",
                            zorder=4)
            _unit_axes(ax)
        xlabel, ylabel = (("False positive rate", "True positive rate") if kind == "roc"
                          else ("Recall (sensitivity)", "Precision (PPV)"))
        _outer_labels(axes, len(class_names), columns, xlabel, ylabel)
        handles = _legend_handles(kind, pct, n_boot, thresholds)
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    return fig


def _check_thresholds(thresholds, class_names) -> list:
    if thresholds is None:
        return [None] * len(class_names)
    if isinstance(thresholds, Mapping):
        values = [thresholds.get(name) for name in class_names]
    else:
        values = list(np.asarray(thresholds, dtype=object).reshape(-1))
    if len(values) != len(class_names):
        raise EvaluationError(
            f"thresholds has {len(values)} entries but there are {len(class_names)} classes"
        )
    out = []
    for name, value in zip(class_names, values):
        value = None if value is None else float(value)
        if value is None or np.isnan(value):
            out.append(None)
            continue
        if not 0.0 <= value <= 1.0:
            raise EvaluationError(f"thresholds: class '{name}' threshold {value!r} is outside [0, 1]")
        out.append(value)
    return out


def _legend_handles(kind, pct, n_boot, thresholds):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], color=_CURVE_COLOR, label="curve"),
        Patch(color=_BAND_COLOR, alpha=0.6, label=f"{pct} band ({n_boot} patient bootstraps)"),
        Line2D([], [], color=_GREY, linestyle="--", linewidth=0.8,
               label="chance" if kind == "roc" else "prevalence"),
    ]
    if any(t is not None for t in thresholds):
        handles.append(Line2D([], [], marker="o", markersize=4.5, color="#111111",
                              linestyle="none", label="operating point (threshold)"))
    return handles


# ------------------------------------------------------------------------------------------------
# Reliability diagrams
# ------------------------------------------------------------------------------------------------
def reliability_grid(calibration: Mapping, *, columns: Optional[int] = None):
    """One reliability panel per class from a calibration dict (see below), before and after.

    ``calibration`` holds ``"n_bins"``, ``"binning"``, ``"classes"`` ``{name: {"ece_before",
    "ece_after", "brier_before", "brier_after", "bins_before", "bins_after"}}`` (bins with
    ``"edges"``, ``"count"``, ``"mean_probability"``, ``"fraction_positive"``), ``"mean"`` and
    ``"temperatures"`` (``None`` when no temperature was fitted: only "before" is drawn).
    Each panel shows the diagonal (perfect calibration), fraction positive against mean
    probability per bin, and the bin counts as a light histogram scaled to a quarter of the
    panel; the title carries the ECE.
    """
    classes = _require(calibration, "classes", "calibration")
    if not isinstance(classes, Mapping):
        raise EvaluationError("calibration['classes'] must map class names to their bins")
    temperatures = calibration.get("temperatures")
    show_after = temperatures is not None
    names = list(classes)
    with _style():
        fig, axes, columns = _panels(len(names), columns, legend_rows=1)
        for name, ax in zip(names, axes):
            entry = classes[name]
            before = _bins(entry, "bins_before", name)
            if entry.get("ece_before") is None or not _has_points(before):
                reason = entry.get("reason") or entry.get("status") or "no binned predictions"
                reason = reason if str(reason).startswith("undefined") else f"undefined: {reason}"
                _undefined_panel(ax, name, str(reason))
                continue
            after = _bins(entry, "bins_after", name) if show_after else None
            ece = f"ECE {entry['ece_before']:.3f}"
            if show_after and entry.get("ece_after") is not None:
                ece += f" \u2192 {entry['ece_after']:.3f}"
            ax.set_title(_panel_title(name, ece), parse_math=False)
            ax.plot([0, 1], [0, 1], color=_GREY, linestyle="--", linewidth=0.8, zorder=0)
            _count_bars(ax, before, after)
            _reliability_line(ax, before, _CURVE_COLOR, "o")
            if after is not None:
                _reliability_line(ax, after, _AFTER_COLOR, "s")
            _unit_axes(ax)
        _outer_labels(axes, len(names), columns, "Mean predicted probability",
                      "Fraction positive")
        fig.legend(handles=_reliability_handles(show_after, temperatures), frameon=False,
                   loc="outside lower center", ncols=4)
        n_bins, binning = calibration.get("n_bins"), calibration.get("binning", "")
        mean = calibration.get("mean") or {}
        title = f"Reliability ({n_bins} {binning} bins)"
        if mean.get("ece_before") is not None:
            title += f"; mean ECE {mean['ece_before']:.3f}"
            if show_after and mean.get("ece_after") is not None:
                title += f" before, {mean['ece_after']:.3f} after temperature scaling"
            if mean.get("num_classes") is not None:
                title += f" ({mean['num_classes']} classes)"
        fig.suptitle(title)
    return fig


def _require(mapping, key, what):
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise EvaluationError(f"{what}: missing key {key!r}")
    return mapping[key]


def _bins(entry, key, name) -> dict:
    bins = entry.get(key)
    if bins is None:
        raise EvaluationError(f"calibration['classes'][{name!r}]: missing key {key!r}")
    for field in ("edges", "count", "mean_probability", "fraction_positive"):
        if field not in bins:
            raise EvaluationError(f"calibration['classes'][{name!r}][{key!r}]: missing key {field!r}")
    n = len(bins["count"])
    if len(bins["edges"]) != n + 1 or len(bins["mean_probability"]) != n or len(
            bins["fraction_positive"]) != n:
        raise EvaluationError(
            f"calibration['classes'][{name!r}][{key!r}]: edges must have one entry more than "
            f"count, mean_probability and fraction_positive ({n} bins)"
        )
    return bins


def _has_points(bins) -> bool:
    return any(v is not None for v in bins["fraction_positive"])


def _points(bins):
    pairs = [(m, f) for m, f in zip(bins["mean_probability"], bins["fraction_positive"])
             if m is not None and f is not None]
    return np.array(pairs, dtype=np.float64).reshape(-1, 2)


def _reliability_line(ax, bins, color, marker):
    xy = _points(bins)
    ax.plot(xy[:, 0], xy[:, 1], color=color, marker=marker, markersize=3.2, linewidth=1.0,
            zorder=3)


def _count_bars(ax, before, after):
    edges = np.asarray(before["edges"], dtype=np.float64)
    counts = np.asarray(before["count"], dtype=np.float64)
    biggest = max(counts.max(), max(after["count"]) if after is not None else 0, 1)
    widths = np.diff(edges)
    ax.bar(edges[:-1], counts / biggest * 0.25, width=widths * 0.92, align="edge",
           color="0.82", linewidth=0, zorder=0.5)
    if after is not None:
        after_counts = np.asarray(after["count"], dtype=np.float64) / biggest * 0.25
        ax.stairs(after_counts, np.asarray(after["edges"], dtype=np.float64), color=_AFTER_COLOR,
                  linewidth=0.7, alpha=0.7, zorder=0.6)


def _reliability_handles(show_after, temperatures):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=_CURVE_COLOR, marker="o", markersize=3.2, label="before")]
    if show_after:
        scope = temperatures.get("scope", "") if isinstance(temperatures, Mapping) else ""
        label = f"after temperature scaling ({scope})" if scope else "after temperature scaling"
        handles.append(Line2D([], [], color=_AFTER_COLOR, marker="s", markersize=3.2, label=label))
    handles += [
        Line2D([], [], color=_GREY, linestyle="--", linewidth=0.8, label="perfect calibration"),
        Patch(color="0.82", label="images per bin (scaled)"),
    ]
    return handles


# ------------------------------------------------------------------------------------------------
# Forest plot of subgroup AUROC
# ------------------------------------------------------------------------------------------------
def forest_plot(subgroups: Mapping, class_name: str = "Mean"):
    """Subgroup AUROC with intervals, one line per group, grouped by attribute.

    ``subgroups`` is a subgroup-analysis dict (``"attributes"``, ``"overall"``, ``"rows"`` with
    ``"attribute"``, ``"group"``, ``"class"``, ``"images"``, ``"auroc"`` ``{"point", "low",
    "high"}``, ``"status"``, ...); only the rows of ``class_name`` are drawn. The overall AUROC is
    the dashed vertical line. A group flagged "too small" is drawn hollow and grey, an undefined one
    as a grey cross at the overall line; both keep their status text, so no group disappears.
    """
    rows = _require(subgroups, "rows", "subgroups")
    attributes = list(subgroups.get("attributes") or [])
    rows = [r for r in rows if r.get("class") == class_name]
    if not rows:
        raise EvaluationError(f"subgroups: no rows for class {class_name!r}")
    for row in rows:
        if row.get("attribute") not in attributes:
            attributes.append(row.get("attribute"))
    overall = (subgroups.get("overall") or {}).get(class_name)
    pct = f"{float(subgroups.get('confidence', 0.95)) * 100:g}%"

    # Top to bottom: a header line per attribute, then its groups.
    lines = []
    for attribute in attributes:
        group_rows = [r for r in rows if r.get("attribute") == attribute]
        if group_rows:
            lines.append(("header", attribute))
            lines += [("row", r) for r in group_rows]
    values = [overall] if overall is not None else []
    for kind, row in lines:
        if kind == "row":
            auroc = row.get("auroc") or {}
            values += [v for v in (auroc.get("point"), auroc.get("low"), auroc.get("high"))
                       if v is not None]
    lo = min(values) if values else 0.5
    hi = max(values) if values else 1.0
    pad = max(0.02, 0.08 * (hi - lo))
    xlim = (max(0.0, lo - pad), min(1.0, hi + pad))
    if xlim[1] - xlim[0] < 0.1:
        centre = 0.5 * (xlim[0] + xlim[1])
        xlim = (max(0.0, centre - 0.05), min(1.0, centre + 0.05))
    anchor = overall if overall is not None else 0.5 * (xlim[0] + xlim[1])

    with _style():
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        height = 1.0 + 0.26 * len(lines)
        fig = Figure(figsize=(8.0, height), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ys, labels, weights = [], [], []
        for i, (kind, item) in enumerate(lines):
            y = len(lines) - 1 - i
            ys.append(y)
            if kind == "header":
                labels.append(str(item))
                weights.append("bold")
                continue
            labels.append(f"{item.get('group')}  (n={_count(item.get('images'))})")
            weights.append("normal")
            _forest_row(ax, y, item, anchor, xlim)
        ax.set_yticks(ys, labels)
        for tick, weight in zip(ax.get_yticklabels(), weights):
            tick.set_fontweight(weight)
            tick.set_parse_math(False)
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(-0.7, len(lines) - 0.3)
        ax.set_xlim(*xlim)
        if overall is not None:
            ax.axvline(overall, color=_GREY, linestyle="--", linewidth=0.8, zorder=0)
        ax.grid(True, axis="x", linewidth=0.4, alpha=0.5)
        ax.set_xlabel(f"AUROC with {pct} patient-bootstrap interval")
        overall_text = f"overall {overall:.3f}" if overall is not None else "overall undefined"
        ax.set_title(f"Subgroup AUROC: {class_name} ({overall_text}, dashed)", parse_math=False)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    return fig


def difference_plot(pair: Mapping, confidence: float = 0.95, alpha: float = 0.05):
    """Per-class AUROC differences of a comparison with their paired-bootstrap intervals.

    ``pair`` is one entry of :meth:`Comparison.to_dict()
    <can_tf.evaluation.comparison.Comparison.to_dict>`'s ``"pairs"``. Zero (no difference) is the
    dashed line; a class whose Holm-corrected DeLong p is below ``alpha`` is drawn filled, the
    others hollow; the mean is the bottom row, in bold; undefined classes are listed as such.
    """
    rows = list(_require(pair, "classes", "comparison pair")) + [pair.get("mean") or {}]
    pct = f"{confidence * 100:g}%"
    values = [0.0]
    for row in rows:
        d = row.get("difference") or {}
        values += [v for v in (d.get("low"), d.get("high"), d.get("point")) if v is not None]
    span = max(0.02, max(abs(v) for v in values))
    xlim = (-1.15 * span, 1.15 * span)
    with _style():
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8.0, 1.1 + 0.26 * len(rows)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        labels = []
        for i, row in enumerate(rows):
            y = len(rows) - 1 - i
            is_mean = i == len(rows) - 1
            labels.append(f"Mean ({pair.get('num_classes_averaged')} classes)" if is_mean
                          else str(row.get("name")))
            d = row.get("difference") or {}
            point, low, high = d.get("point"), d.get("low"), d.get("high")
            if point is None:
                ax.annotate("undefined", xy=(0, y), va="center", ha="center", fontsize=7,
                            color=_GREY, fontstyle="italic", parse_math=False)
                continue
            significant = row.get("p_adjusted") is not None and row["p_adjusted"] < alpha
            color = "#111111" if is_mean else _CURVE_COLOR
            if low is not None:
                ax.plot([low, high], [y, y], color=color, linewidth=1.6 if is_mean else 1.1, zorder=2)
            filled = significant or (is_mean and low is not None and (low > 0 or high < 0))
            ax.plot(point, y, marker="D" if is_mean else "o", markersize=5 if is_mean else 4.2,
                    color=color, markerfacecolor=color if filled else "white", linestyle="none",
                    zorder=3)
            text = f"{point:+.3f}" + (f" [{low:+.3f}, {high:+.3f}]" if low is not None else "")
            if row.get("p_adjusted") is not None:
                text += f"  Holm p {row['p_adjusted']:.3g}"
            ax.annotate(text, xy=(1.01, y), xycoords=("axes fraction", "data"), va="center",
                        ha="left", fontsize=7, annotation_clip=False, parse_math=False,
                        fontweight="bold" if is_mean else "normal")
        ax.set_yticks(range(len(rows) - 1, -1, -1), labels)
        ax.get_yticklabels()[-1].set_fontweight("bold")
        for tick in ax.get_yticklabels():
            tick.set_parse_math(False)
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlim(*xlim)
        ax.axvline(0.0, color=_GREY, linestyle="--", linewidth=0.8, zorder=0)
        ax.grid(True, axis="x", linewidth=0.4, alpha=0.5)
        ax.set_xlabel(f"AUROC difference, {pair.get('a')} minus {pair.get('b')}, with {pct} paired "
                      f"patient-bootstrap interval")
        ax.set_title(f"{pair.get('a')} vs {pair.get('b')} (filled: Holm-corrected DeLong p < {alpha:g})",
                     parse_math=False)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    return fig


def _count(value) -> str:
    return f"{int(value):,}" if value is not None else "?"


def _forest_row(ax, y, row, anchor, xlim):
    auroc = row.get("auroc") or {}
    point, low, high = auroc.get("point"), auroc.get("low"), auroc.get("high")
    status = str(row.get("status", ""))
    ok = status == "ok" or status.startswith("mean over")
    color = "#111111" if ok else _GREY
    if point is None:
        ax.plot(anchor, y, marker="x", markersize=4.5, color=_GREY, linestyle="none", zorder=3)
    else:
        if low is not None and high is not None:
            ax.plot([low, high], [y, y], color=color, linewidth=1.1, zorder=2)
        ax.plot(point, y, marker="o" if ok else "D", markersize=4.2 if ok else 4.0,
                color=color, markerfacecolor=color if ok else "white", linestyle="none",
                zorder=3)
    if ok:
        text = f"{point:.3f}" if point is not None else "undefined"
        if point is not None and low is not None:
            text += f" [{low:.3f}, {high:.3f}]"
        if row.get("gap") is not None:
            text += f"  gap {row['gap']:+.3f}"
    else:
        text = status if point is None else f"{point:.3f}  {status}"
    # A long status wraps onto a second line rather than running off the figure.
    text = "\n".join(textwrap.wrap(text, 44, max_lines=2, placeholder="\u2026"))
    ax.annotate(text, xy=(1.01, y), xycoords=("axes fraction", "data"),
                va="center", ha="left", fontsize=7, color="#111111" if ok else "0.35",
                fontstyle="normal" if ok else "italic", annotation_clip=False, parse_math=False)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


# ------------------------------------------------------------------------------------------------
# Panels and style
# ------------------------------------------------------------------------------------------------
def _style():
    import matplotlib

    return matplotlib.rc_context(_STYLE)


def default_columns(num_panels: int) -> int:
    """Panels per row: all in one row up to 4, then 4 per row, 5 from 13 panels on."""
    if num_panels <= 4:
        return max(1, num_panels)
    return 4 if num_panels <= 12 else 5


def _panels(n: int, columns: Optional[int], legend_rows: int = 0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if n < 1:
        raise EvaluationError("no classes to draw")
    columns = default_columns(n) if columns is None else int(columns)
    if columns < 1:
        raise EvaluationError(f"columns must be a positive integer, got {columns!r}")
    columns = min(columns, n)
    rows = -(-n // columns)
    width, height = _PANEL_SIZE
    fig = Figure(figsize=(columns * width + 0.4, rows * height + 0.35 + 0.3 * legend_rows),
                 layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, columns)
    # Only as many axes as panels: fig.axes then lists exactly the classes, in order.
    axes = [fig.add_subplot(grid[i // columns, i % columns]) for i in range(n)]
    return fig, axes, columns


def _panel_title(name: str, value: str) -> str:
    one_line = f"{name} ({value})"
    if len(one_line) <= _TITLE_WIDTH:
        return one_line
    # Long class names move the value to a second line instead of running into the next panel.
    return f"{_shorten(name, _TITLE_WIDTH + 4)}\n({value})"


def _undefined_panel(ax, name: str, text: str):
    # Names and reasons are data, never mathtext: a "$" in them is printed as it is.
    ax.set_title(_shorten(name, _TITLE_WIDTH + 4), parse_math=False)
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 24)), transform=ax.transAxes, ha="center",
            va="center", fontsize=7.5, color="0.3", style="italic", parse_math=False)
    ax.set_facecolor("0.96")
    _unit_axes(ax)


def _unit_axes(ax):
    # A small margin keeps curves running along an edge (TPR = 1) visible.
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
    ax.set_yticks([0, 0.5, 1], ["0", "0.5", "1"])
    ax.grid(True, linewidth=0.4, alpha=0.45)


def _outer_labels(axes, n, columns, xlabel, ylabel):
    for i, ax in enumerate(axes):
        if i % columns == 0:
            ax.set_ylabel(ylabel)
        if i + columns >= n:  # nothing below this panel
            ax.set_xlabel(xlabel)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def figure_bytes(fig, fmt: str, *, dpi: int = 150) -> bytes:
    """The figure encoded as ``"svg"``, ``"pdf"`` or ``"png"``, without a date (reproducible)."""
    import matplotlib

    if fmt not in FORMATS:
        raise EvaluationError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    buffer = io.BytesIO()
    with matplotlib.rc_context(_SAVE_STYLE):
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=_SAVE_METADATA[fmt])
    return buffer.getvalue()


def save_figure(fig, stem: PathLike, formats: Sequence[str] = FORMATS, *, dpi: int = 150) -> dict:
    """Writes ``<stem>.svg``, ``<stem>.pdf``, ``<stem>.png`` (each atomically); ``{format: Path}``."""
    stem = Path(stem)
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    for fmt in formats:
        if fmt not in FORMATS:
            raise EvaluationError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return {fmt: atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"),
                                    figure_bytes(fig, fmt, dpi=dpi)) for fmt in formats}


_PROLOG = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.IGNORECASE)
_ID = re.compile(r'\bid="([^"]+)"')


def figure_svg(fig, *, id_prefix: Optional[str] = None) -> str:
    """The figure as SVG text to inline in HTML (see :func:`inline_svg`).

    Text is drawn as paths, so no font is referenced and the page looks the same everywhere.
    """
    return inline_svg(figure_bytes(fig, "svg").decode("utf-8"), id_prefix)


def inline_svg(svg: str, id_prefix: Optional[str] = None) -> str:
    """SVG text made safe to place inside an HTML page next to other SVGs.

    The XML prolog and doctype are removed, ``xlink:href`` becomes plain ``href`` (so the only URL
    left is the SVG namespace), and element ids (glyphs, markers, clip paths) get ``id_prefix`` --
    by default a hash of the SVG -- so two figures on one page never resolve each other's ``#id``
    references. Raises :class:`EvaluationError` for text that is not an ``<svg>`` element or that
    holds a script or a reference to anything outside itself.
    """
    text = _PROLOG.sub("", svg, count=1)
    if not text.startswith("<svg"):
        raise EvaluationError(f"not SVG text (it starts with {text[:20]!r})")
    if re.search(r"<script|<foreignObject|\son[a-z]+\s*=", text, re.IGNORECASE):
        raise EvaluationError("SVG holds a script, an event handler or foreign content")
    text = text.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    text = text.replace("xlink:href=", "href=")
    for target in re.findall(r'\bhref\s*=\s*["\']([^"\']*)', text):
        if not (target.startswith("#") or target.startswith("data:")):
            raise EvaluationError(f"SVG refers to {target[:60]!r} outside itself")
    if id_prefix is None:
        id_prefix = "f" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8] + "-"
    return scope_svg_ids(text, id_prefix)


def scope_svg_ids(svg: str, prefix: str) -> str:
    """Prefixes every ``id`` of ``svg`` and every ``#id`` / ``url(#id)`` reference to it."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", prefix or ""):
        raise EvaluationError(f"id_prefix must start with a letter and hold only A-Z, 0-9, _ . -: {prefix!r}")
    ids = set(_ID.findall(svg))
    if not ids:
        return svg

    def ref(match):
        target = match.group(2)
        return f"{match.group(1)}{prefix}{target}" if target in ids else match.group(0)

    svg = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg)
    return re.sub(r'((?:href="|url\()#)([^")]+)', ref, svg)
