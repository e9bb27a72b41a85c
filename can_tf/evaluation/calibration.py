"""Calibration of multi-label probabilities: ECE, reliability diagrams and temperature scaling.

A model is *calibrated* when, among the images it gives probability ``p`` for a finding, a
fraction ``p`` has it. AUROC cannot see calibration (it only ranks), but a clinician reading
"0.8" can, so it is measured and, where needed, corrected.

Reliability diagram and ECE. The probabilities of one class are put into ``n_bins`` equal-width
bins on [0, 1]: bin ``b`` holds ``edges[b] <= p < edges[b + 1]``, the last bin also holds
``p == 1.0``. Per bin, the mean probability (confidence) is set against the fraction of positive
labels (accuracy); the diagram plots one against the other, and the expected calibration error is
their gap weighted by how many images fall in the bin::

    ECE = sum_b (n_b / N) * |mean(p in b) - mean(y in b)|

Unknown (NaN) labels are skipped. Equal-width bins are the usual choice for reporting; note that
the ECE of a rare finding is dominated by the first bin, which is why the Brier score
``mean((p - y)^2)`` is reported beside it.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017), applied
to sigmoid outputs, one binary problem per class::

    p' = sigmoid(logit(p) / T)

``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident one. ``T`` is
fitted by minimising the binary negative log-likelihood of the known labels over ``log T`` (the
NLL is convex in ``1 / T``, so the 1-D search has one minimum), either one temperature per class
(``scope="class"``) or one shared by all classes (``scope="global"``). Fit it on the
*validation* split and report on another one: temperatures fitted on the reported split make its
calibration look better than it is. Dividing a logit by a positive ``T`` keeps the order of the
images within each class, so AUROC (and any ranking metric) is unchanged; thresholds chosen
before calibration, however, must be chosen again on the calibrated probabilities.

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.calibration import expected_calibration_error, fit_temperature
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(scale=2.0, size=(4000, 1))
    >>> y = (rng.random((4000, 1)) < 1 / (1 + np.exp(-z))).astype("float32")
    >>> p = 1 / (1 + np.exp(-3 * z))  # an over-confident model: logits three times too large
    >>> t = fit_temperature(y, p, ["Edema"], fitted_on="val split, 4000 images")
    >>> 2.7 < t.values[0] < 3.3
    True
    >>> before = expected_calibration_error(y[:, 0], p[:, 0])
    >>> after = expected_calibration_error(y[:, 0], t.apply(p)[:, 0])
    >>> after < 0.5 * before
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from can_tf.evaluation.metrics import (
    EvaluationError,
    class_mismatch,
    check_predictions,
    check_probabilities,
    mean_over_defined,
)
from can_tf.files import atomic_write_text, read_json

SCOPES = ("class", "global")
_FORMAT_VERSION = 1
_METHOD = "temperature"
# The probabilities nearest 0 and 1 whose logits are finite in float64: exact 0/1 are moved there
# only so that no inf (and no warning) appears, and are put back afterwards.
_P_LOW = float(np.nextafter(0.0, 1.0))
_P_HIGH = float(np.nextafter(1.0, 0.0))


def _bin_table(labels, probabilities, n_bins: int):
    """Validated known labels/probabilities and their bin index, with the edges."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise EvaluationError(f"n_bins must be a positive integer, got {n_bins!r}")
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    for what, values in (("labels", labels), ("probabilities", probabilities)):
        if values.ndim != 1:
            raise EvaluationError(f"{what} must be a 1-D array, got shape {values.shape}")
    if labels.shape != probabilities.shape:
        raise EvaluationError(
            f"labels ({labels.shape[0]}) and probabilities ({probabilities.shape[0]}) "
            f"differ in length"
        )
    _raise_first(~(np.isnan(labels) | (labels == 0.0) | (labels == 1.0)), labels, "labels",
                 "must be 1, 0 or NaN (unknown)")
    _raise_first(~np.isfinite(probabilities), probabilities, "probabilities", "is not finite")
    _raise_first((probabilities < 0.0) | (probabilities > 1.0), probabilities, "probabilities",
                 "is outside [0, 1]")
    known = ~np.isnan(labels)
    labels, probabilities = labels[known], probabilities[known]
    # k / n_bins is the float nearest each edge (linspace gives 0.6000000000000001 for 3 / 5).
    edges = np.arange(n_bins + 1) / n_bins
    # Assigned by the edges that are reported, so a value on an edge goes where the table says.
    index = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, n_bins - 1)
    return labels, probabilities, index, edges


def _raise_first(bad: np.ndarray, values: np.ndarray, what: str, why: str) -> None:
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise EvaluationError(
            f"{what}: value {float(values[index])!r} at index {index} {why} "
            f"({int(bad.sum())} bad value(s))"
        )


def reliability_bins(labels, probabilities, n_bins: int = 10) -> dict:
    """Reliability-diagram table of one class: per equal-width bin, count, confidence, accuracy.

    Args:
        labels: ``(N,)`` labels 1 / 0 / NaN (unknown, skipped).
        probabilities: ``(N,)`` probabilities in [0, 1].
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        ``{"edges": [n_bins + 1 floats], "count": [ints], "mean_probability": [float or None],
        "fraction_positive": [float or None]}``; ``None`` marks an empty bin.

    Example:
        >>> r = reliability_bins([0, 1, 1, np.nan], [0.1, 0.7, 0.9, 0.5], n_bins=2)
        >>> r["edges"], r["count"], r["mean_probability"], r["fraction_positive"]
        ([0.0, 0.5, 1.0], [1, 2], [0.1, 0.8], [0.0, 1.0])
    """
    labels, probabilities, index, edges = _bin_table(labels, probabilities, n_bins)
    count = np.bincount(index, minlength=n_bins)
    sum_p = np.bincount(index, weights=probabilities, minlength=n_bins)
    sum_y = np.bincount(index, weights=labels, minlength=n_bins)
    mean_p = [float(s / n) if n else None for s, n in zip(sum_p, count)]
    frac_y = [float(s / n) if n else None for s, n in zip(sum_y, count)]
    return {
        "edges": [float(e) for e in edges],
        "count": [int(n) for n in count],
        "mean_probability": mean_p,
        "fraction_positive": frac_y,
    }


def expected_calibration_error(labels, probabilities, n_bins: int = 10) -> Optional[float]:
    """ECE of one class with equal-width bins (see the module docstring); NaN labels skipped.

    Returns ``None`` when no label is known.

    Example:
        >>> # bin [0, 0.5): p 0.1, y 0 -> gap 0.1; bin [0.5, 1]: mean p 0.8, y 1 -> gap 0.2
        >>> ece = expected_calibration_error([0, 1, 1, np.nan], [0.1, 0.7, 0.9, 0.5], n_bins=2)
        >>> round(ece, 4)  # (1 * 0.1 + 2 * 0.2) / 3
        0.1667
    """
    labels, probabilities, index, _ = _bin_table(labels, probabilities, n_bins)
    if labels.size == 0:
        return None
    count = np.bincount(index, minlength=n_bins)
    # sum_b (n_b/N) |mean p - mean y| = sum_b |sum p - sum y| / N: no division by empty bins.
    gap = np.bincount(index, weights=probabilities - labels, minlength=n_bins)
    return float(np.abs(gap).sum() / count.sum())


def brier_score(labels, probabilities) -> Optional[float]:
    """Mean squared error ``mean((p - y)^2)`` over the known labels; ``None`` when none is known.

    Example:
        >>> round(brier_score([0, 1, np.nan], [0.2, 0.6, 0.9]), 6)  # (0.2^2 + 0.4^2) / 2
        0.1
    """
    labels, probabilities, _, _ = _bin_table(labels, probabilities, 1)
    if labels.size == 0:
        return None
    return float(np.mean((probabilities - labels) ** 2))


def _logits(probabilities: np.ndarray) -> np.ndarray:
    """float64 logits; exact 0 / 1 become the most extreme finite logits (NaN stays NaN)."""
    p = np.clip(probabilities, _P_LOW, _P_HIGH)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so that exp never overflows.
    out = np.empty_like(x)
    negative = x < 0
    e = np.exp(-np.abs(x))
    out[~negative] = 1.0 / (1.0 + e[~negative])
    out[negative] = e[negative] / (1.0 + e[negative])
    return out


@dataclasses.dataclass(frozen=True)
class Temperatures:
    """Per-class temperatures for ``p' = sigmoid(logit(p) / T)``, with how they were fitted.

    Attributes:
        class_names: classes, in the model's output order.
        values: one temperature per class, finite and > 0 (1.0 leaves a class unchanged).
        scope: ``"class"`` (one fitted per class) or ``"global"`` (one shared value).
        fitted_on: what the temperatures were fitted on, e.g. ``"val split, 55 images"``.
        fallback: ``{class_name: reason}`` for classes that had no known label to fit on. Such a
            class gets the temperature fitted on all classes together (pooled labels) when at
            least one class has known labels, and 1.0 (no change) otherwise; the reason says
            which.

    Example:
        >>> t = Temperatures(("A", "B"), (2.0, 0.5), "class")
        >>> t.apply([[0.5, 0.5], [0.8, 0.8], [1.0, np.nan]]).astype(float).round(3).tolist()
        [[0.5, 0.5], [0.667, 0.941], [1.0, nan]]
    """

    class_names: tuple
    values: tuple
    scope: str
    fitted_on: Optional[str] = None
    fallback: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        names = tuple(self.class_names)
        if not names or len(set(names)) != len(names):
            raise EvaluationError(f"field 'class_names' must be unique names, got {list(names)}")
        if self.scope not in SCOPES:
            raise EvaluationError(
                f"field 'scope' must be one of {', '.join(SCOPES)}, got {self.scope!r}"
            )
        raw = tuple(self.values)
        if len(raw) != len(names):
            raise EvaluationError(
                f"field 'temperatures': {len(raw)} values for {len(names)} classes"
            )
        values = []
        for name, value in zip(names, raw):
            number = _positive_float(value)
            if number is None:
                raise EvaluationError(
                    f"field 'temperatures': class '{name}' has temperature {value!r}; "
                    f"it must be a finite number > 0"
                )
            values.append(number)
        if self.scope == "global" and len(set(values)) > 1:
            raise EvaluationError(
                f"field 'temperatures': scope 'global' needs one shared value, got {values}"
            )
        fallback = dict(self.fallback or {})
        unknown = sorted(set(fallback) - set(names))
        if unknown:
            raise EvaluationError(f"field 'fallback' names classes not in class_names: {unknown}")
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "values", tuple(values))
        object.__setattr__(self, "fallback", {k: str(v) for k, v in fallback.items()})

    def as_dict(self) -> dict:
        """``{class_name: temperature}``."""
        return dict(zip(self.class_names, self.values))

    def check_classes(self, class_names: Sequence[str], where: str = "the model") -> None:
        """Raises :class:`EvaluationError` unless ``class_names`` equal ours, in the same order."""
        detail = class_mismatch(self.class_names, class_names, "calibration", where)
        if detail:
            raise EvaluationError(
                f"calibration classes (field 'class_names') do not match the classes of {where} ({detail})")

    def apply_logits(self, logits) -> np.ndarray:
        """Calibrated logits ``logits / T`` per class, ``(N, C)`` float32."""
        logits = self._table(logits, "logits")
        return (logits / np.asarray(self.values)[None, :]).astype(np.float32)

    def apply(self, probabilities) -> np.ndarray:
        """Calibrated probabilities ``sigmoid(logit(p) / T)`` per class, ``(N, C)`` float32.

        NaN stays NaN (a missing prediction stays missing); exact 0 and 1 stay 0 and 1.
        """
        p = self._table(probabilities, "probabilities")
        outside = (p < 0.0) | (p > 1.0) | np.isinf(p)
        if outside.any():
            row, col = (int(i[0]) for i in np.nonzero(outside))
            value = float(p[row, col])
            raise EvaluationError(
                f"class '{self.class_names[col]}' (column {col}): probability {value!r} "
                f"at row {row} is outside [0, 1]"
            )
        out = _sigmoid(_logits(p) / np.asarray(self.values)[None, :])
        # Certain outputs stay certain; the clipped logits only kept the arithmetic finite.
        out = np.where((p == 0.0) | (p == 1.0), p, out)
        return out.astype(np.float32)

    def _table(self, values, what: str) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != len(self.class_names):
            raise EvaluationError(
                f"{what} of shape {array.shape} do not fit {len(self.class_names)} "
                f"temperatures ({', '.join(self.class_names)})"
            )
        return array

    def to_dict(self) -> dict:
        return {
            "format_version": _FORMAT_VERSION,
            "method": _METHOD,
            "scope": self.scope,
            "class_names": list(self.class_names),
            "temperatures": self.as_dict(),
            "fitted_on": self.fitted_on,
            "fallback": dict(self.fallback),
        }

    def to_text(self) -> str:
        """The content of a calibration JSON file (what :meth:`from_json` reads back)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_json(self, path: Union[str, os.PathLike]) -> Path:
        """Writes the temperatures to ``path`` atomically (an existing file is replaced)."""
        return atomic_write_text(path, self.to_text())

    @classmethod
    def from_dict(
        cls,
        data: dict,
        class_names: Optional[Sequence[str]] = None,
        where: str = "calibration",
    ) -> "Temperatures":
        """Builds temperatures from :meth:`to_dict` output; errors name ``where`` and the field.

        With ``class_names`` (the model's), also checks that the classes match, in order.
        """
        if not isinstance(data, dict):
            raise EvaluationError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for field in ("format_version", "method", "scope", "class_names", "temperatures"):
            if field not in data:
                raise EvaluationError(f"{where}: missing field '{field}'")
        if data["format_version"] != _FORMAT_VERSION:
            raise EvaluationError(
                f"{where}: field 'format_version' is {data['format_version']!r}; "
                f"this version reads {_FORMAT_VERSION}"
            )
        if data["method"] != _METHOD:
            raise EvaluationError(
                f"{where}: field 'method' is {data['method']!r}, expected {_METHOD!r}"
            )
        names = data["class_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise EvaluationError(f"{where}: field 'class_names' must be a list of names")
        by_name = data["temperatures"]
        if not isinstance(by_name, dict):
            raise EvaluationError(f"{where}: field 'temperatures' must map class names to values")
        absent = [n for n in names if n not in by_name]
        if absent:
            raise EvaluationError(f"{where}: field 'temperatures' has no value for {absent}")
        extra = [n for n in by_name if n not in names]
        if extra:
            raise EvaluationError(
                f"{where}: field 'temperatures' names classes not in 'class_names': {extra}"
            )
        fallback = data.get("fallback") or {}
        if not isinstance(fallback, dict):
            raise EvaluationError(f"{where}: field 'fallback' must map class names to reasons")
        fitted_on = data.get("fitted_on")
        try:
            temperatures = cls(
                class_names=tuple(names),
                values=tuple(by_name[n] for n in names),
                scope=data["scope"],
                fitted_on=None if fitted_on is None else str(fitted_on),
                fallback=fallback,
            )
        except EvaluationError as err:
            raise EvaluationError(f"{where}: {err}") from None
        if class_names is not None:
            try:
                temperatures.check_classes(class_names)
            except EvaluationError as err:
                raise EvaluationError(f"{where}: {err}") from None
        return temperatures

    @classmethod
    def from_json(
        cls, path: Union[str, os.PathLike], class_names: Optional[Sequence[str]] = None
    ) -> "Temperatures":
        """Reads temperatures; with ``class_names`` (the model's), checks that they match."""
        data = read_json(path, "calibration file", EvaluationError)
        return cls.from_dict(data, class_names=class_names, where=str(path))


def _positive_float(value) -> Optional[float]:
    """``value`` as a float when it is a finite number > 0, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number > 0.0 else None


def _nll(inverse_t: float, labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary NLL of ``sigmoid(logits * inverse_t)``: softplus(s) - y * s, stable."""
    s = logits * inverse_t
    return float(np.mean(np.logaddexp(0.0, s) - labels * s))


def _fit_one(labels: np.ndarray, logits: np.ndarray, bounds: tuple) -> float:
    from scipy.optimize import minimize_scalar

    # Searching log T treats "twice too confident" and "half as confident" alike.
    result = minimize_scalar(
        lambda log_t: _nll(math.exp(-log_t), labels, logits),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-7},
    )
    return float(math.exp(result.x))


def fit_temperature(
    y_true,
    y_prob,
    class_names: Sequence[str],
    scope: str = "class",
    *,
    bounds: tuple = (0.05, 20.0),
    fitted_on: Optional[str] = None,
) -> Temperatures:
    """Fits temperatures by minimising the binary NLL of the known labels (validation split).

    Args:
        y_true: ``(N, C)`` labels 1 / 0 / NaN (unknown, skipped).
        y_prob: ``(N, C)`` probabilities in [0, 1] (exact 0 / 1 count as the nearest probabilities
            whose logits are finite).
        class_names: the ``C`` class names.
        scope: ``"class"``: one temperature per class; ``"global"``: one for all classes, fitted
            on the known labels of all classes pooled.
        bounds: ``(lowest, highest)`` temperature searched.
        fitted_on: a description stored with the result, e.g. ``"val split, 55 images"``.

    A class whose known labels lack positives or negatives (or are absent) keeps a fallback
    temperature (see :class:`Temperatures`): fitted on one outcome alone, the likelihood only grows
    as every probability is pushed towards that outcome, so the fit would run to a bound and make
    the model's outputs for that class extreme in both directions, which is no calibration.
    """
    if scope not in SCOPES:
        raise EvaluationError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise EvaluationError(f"bounds must be two numbers (low, high), got {bounds!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low < high):
        raise EvaluationError(f"bounds must satisfy 0 < low < high, got {bounds!r}")
    class_names = tuple(class_names)
    y_true, y_prob = check_predictions(y_true, y_prob, class_names)
    logits = _logits(y_prob)
    known = ~np.isnan(y_true)

    pooled = None
    both = np.array([bool((y_true[known[:, c], c] == 1).any() and (y_true[known[:, c], c] == 0).any())
                     for c in range(len(class_names))])
    # The pooled fit serves the global scope and the classes without both outcomes.
    if known.any() and (scope == "global" or not both.all()):
        pooled = _fit_one(y_true[known], logits[known], (low, high))
    fallback_value = 1.0 if pooled is None else pooled
    fallback_note = (
        "1 (no calibration) used"
        if pooled is None
        else f"temperature {pooled:.4g} fitted on all classes pooled used"
    )
    values, fallback = [], {}
    for c, name in enumerate(class_names):
        rows = known[:, c]
        if not rows.any():
            values.append(fallback_value)
            fallback[name] = f"no known labels in the fitting data; {fallback_note}"
        elif scope == "class" and not both[c]:
            values.append(fallback_value)
            missing = "positive" if not (y_true[rows, c] == 1).any() else "negative"
            fallback[name] = f"no {missing} label in the fitting data; {fallback_note}"
        elif scope == "global":
            values.append(pooled)
        else:
            values.append(_fit_one(y_true[rows, c], logits[rows, c], (low, high)))
    return Temperatures(
        class_names=class_names,
        values=tuple(values),
        scope=scope,
        fitted_on=fitted_on,
        fallback=fallback,
    )


@dataclasses.dataclass
class CalibrationSummary:
    """ECE and Brier score per class before and after calibration, with reliability tables.

    Build it with :func:`calibration_summary`. Dicts are keyed by class name, in class order;
    ``None`` marks a class without known labels.
    """

    class_names: tuple
    n_bins: int
    ece_before: dict
    ece_after: dict
    brier_before: dict
    brier_after: dict
    bins_before: dict
    bins_after: dict
    temperatures: Optional[Temperatures] = None

    def mean(self) -> dict:
        """``{"ece_before", "ece_after", "num_classes"}``: means over the classes with labels."""
        before, n = mean_over_defined(self.ece_before)
        after, _ = mean_over_defined(self.ece_after)
        return {"ece_before": before, "ece_after": after, "num_classes": n}

    def to_dict(self) -> dict:
        return {
            "n_bins": self.n_bins,
            "binning": "equal-width",
            "classes": {
                name: {
                    "ece_before": self.ece_before[name],
                    "ece_after": self.ece_after[name],
                    "brier_before": self.brier_before[name],
                    "brier_after": self.brier_after[name],
                    "bins_before": self.bins_before[name],
                    "bins_after": self.bins_after[name],
                }
                for name in self.class_names
            },
            "mean": self.mean(),
            "temperatures": None if self.temperatures is None else self.temperatures.to_dict(),
        }

    def to_markdown(self) -> str:
        """Table Class | T | ECE before | ECE after | Brier before | Brier after, then the mean."""
        temps = {} if self.temperatures is None else self.temperatures.as_dict()
        lines = [
            "| Class | T | ECE before | ECE after | Brier before | Brier after |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in self.class_names:
            cells = [name, _cell(temps.get(name))]
            cells += [_cell(d[name]) for d in self._columns()]
            lines.append("| " + " | ".join(cells) + " |")
        mean = self.mean()
        means = [mean_over_defined(d)[0] for d in self._columns()]
        label = f"Mean ({mean['num_classes']} classes)"
        lines.append("| " + " | ".join([label, ""] + [_cell(v) for v in means]) + " |")
        return "\n".join(lines) + "\n"

    def _columns(self):
        return (self.ece_before, self.ece_after, self.brier_before, self.brier_after)


def _cell(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def calibration_summary(
    y_true,
    y_before,
    y_after,
    class_names: Sequence[str],
    n_bins: int = 10,
    temperatures: Optional[Temperatures] = None,
) -> CalibrationSummary:
    """Per-class ECE, Brier score and reliability tables of ``y_before`` and ``y_after``.

    Args:
        y_true: ``(N, C)`` labels 1 / 0 / NaN of the reported split.
        y_before: ``(N, C)`` probabilities as the model gives them.
        y_after: ``(N, C)`` calibrated probabilities (``y_before`` again when none is applied).
        class_names: the ``C`` class names.
        n_bins: equal-width bins for ECE and the reliability tables.
        temperatures: the temperatures that made ``y_after``, or ``None``.

    Example:
        >>> y = np.array([[0.0], [1.0], [1.0]])
        >>> p = np.array([[0.1], [0.7], [0.9]])
        >>> s = calibration_summary(y, p, p, ["Edema"], n_bins=2)
        >>> s.to_dict()["mean"]["num_classes"], round(s.to_dict()["mean"]["ece_before"], 4)
        (1, 0.1667)
    """
    class_names = tuple(class_names)
    y_true, y_before = check_predictions(y_true, y_before, class_names)
    # NaN in y_after would be a missing calibrated prediction; check_probabilities refuses it.
    y_after = check_probabilities(y_after, class_names)
    if y_after.shape != y_before.shape:
        raise EvaluationError(
            f"calibrated probabilities shape {y_after.shape} differs from {y_before.shape}"
        )
    if temperatures is not None:
        temperatures.check_classes(class_names, where="the predictions")
    fields = {key: {} for key in ("ece_before", "ece_after", "brier_before", "brier_after",
                                  "bins_before", "bins_after")}
    for c, name in enumerate(class_names):
        for when, probs in (("before", y_before[:, c]), ("after", y_after[:, c])):
            fields[f"ece_{when}"][name] = expected_calibration_error(y_true[:, c], probs, n_bins)
            fields[f"brier_{when}"][name] = brier_score(y_true[:, c], probs)
            fields[f"bins_{when}"][name] = reliability_bins(y_true[:, c], probs, n_bins)
    return CalibrationSummary(
        class_names=class_names, n_bins=int(n_bins), temperatures=temperatures, **fields
    )
