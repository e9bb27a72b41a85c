"""Per-class operating thresholds chosen on validation data, saved with a model, applied by predict.

A probability ``p`` for class ``c`` counts as a finding when ``p >= threshold[c]`` (the same
"score >= threshold" rule as scikit-learn's ``roc_curve``). Methods:

- ``"youden"``: maximises Youden's J = sensitivity + specificity - 1 = TPR - FPR on the
  validation set; ties go to the highest threshold (fewest false positives).
- ``"sensitivity"``: the highest threshold whose validation sensitivity is >= ``target_sensitivity``
  (the most specific threshold that still meets the target).
- ``"fixed"``: the same value (default 0.5) for every class.

A class that is undefined on the validation set (no positives or no negatives among known labels)
cannot have a threshold chosen from data: it gets ``fallback_value`` (0.5) and is flagged in
``Thresholds.fallback`` with the reason, so the user can see which findings rest on no evidence.

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.thresholds import choose_thresholds
    >>> y = np.array([[0], [0], [1], [0], [1], [0], [1]], dtype="float32")
    >>> p = np.array([[0.1], [0.2], [0.3], [0.4], [0.6], [0.7], [0.9]])
    >>> t = choose_thresholds(y, p, ["Edema"], method="youden")
    >>> t.values, t.apply(p)[:, 0].tolist()
    ([0.3], [False, False, True, True, True, True, True])
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence, Union

import numpy as np
from sklearn.metrics import roc_curve

from can_tf.evaluation.metrics import (
    EvaluationError,
    class_mismatch,
    check_predictions,
    check_probabilities,
    undefined_reason,
)
from can_tf.files import atomic_write_text, read_json

METHODS = ("youden", "sensitivity", "fixed")
_FORMAT_VERSION = 1


def youden_threshold(labels, scores) -> float:
    """Threshold maximising TPR - FPR (``score >= threshold`` is positive); NaN labels skipped.

    Raises :class:`EvaluationError` when the labels have no positives or no negatives.
    """
    fpr, tpr, thresholds = _roc(labels, scores)
    # roc_curve's first threshold is +inf (nothing predicted positive); a real threshold is wanted.
    j = (tpr - fpr)[1:]
    # Thresholds are descending, so the first maximum is the highest threshold. The tolerance makes
    # equal J computed by different roundings (2/3 - 0 vs 1 - 1/3) count as a tie.
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    return float(thresholds[1:][best])


def sensitivity_threshold(labels, scores, target: float) -> float:
    """The highest threshold whose sensitivity (TPR) is >= ``target``; NaN labels skipped."""
    if not 0.0 < target <= 1.0:
        raise EvaluationError(f"target_sensitivity must be in (0, 1], got {target!r}")
    _, tpr, thresholds = _roc(labels, scores)
    # TPR rises as the threshold falls; the last point has TPR 1, so the target is always met.
    index = int(np.flatnonzero(tpr >= target)[0])
    return float(thresholds[index])


def _roc(labels, scores):
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    reason = undefined_reason(labels)
    if reason is not None:
        raise EvaluationError(f"cannot choose a threshold: {reason}")
    known = ~np.isnan(labels)
    # Keep every point: the first threshold meeting a target may lie on a straight stretch.
    return roc_curve(labels[known], scores[known], drop_intermediate=False)


@dataclasses.dataclass
class Thresholds:
    """Per-class decision thresholds, with how they were chosen.

    Attributes:
        class_names: classes, in the model's output order.
        method: ``"youden"``, ``"sensitivity"`` or ``"fixed"``.
        values: one threshold per class (a fallback class holds ``fallback_value``).
        fallback: ``{class_name: reason}`` for classes whose threshold was not chosen from data.
        target_sensitivity: the target, for ``method="sensitivity"``.
        validation: optional ``{class_name: {"sensitivity": .., "specificity": ..}}`` measured on
            the data the thresholds were chosen on.
    """

    class_names: tuple
    method: str
    values: list
    fallback: dict = dataclasses.field(default_factory=dict)
    target_sensitivity: Optional[float] = None
    validation: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        self.values = [float(v) for v in self.values]
        if self.method not in METHODS:
            raise EvaluationError(
                f"method must be one of {', '.join(METHODS)}, got {self.method!r}"
            )
        if len(self.values) != len(self.class_names):
            raise EvaluationError(
                f"{len(self.values)} threshold values for {len(self.class_names)} classes"
            )
        for name, value in zip(self.class_names, self.values):
            if not 0.0 <= value <= 1.0:
                raise EvaluationError(f"threshold of class '{name}' is {value!r}, not in [0, 1]")
        unknown = set(self.fallback) - set(self.class_names)
        if unknown:
            raise EvaluationError(f"fallback names classes not in class_names: {sorted(unknown)}")

    def as_dict(self) -> dict:
        """``{class_name: threshold}``."""
        return dict(zip(self.class_names, self.values))

    def check_classes(self, class_names: Sequence[str], where: str = "the model") -> None:
        """Raises :class:`EvaluationError` unless ``class_names`` equal ours, in the same order."""
        detail = class_mismatch(self.class_names, class_names, "thresholds", where)
        if detail:
            raise EvaluationError(f"threshold classes do not match the classes of {where} ({detail})")

    def apply(self, probs) -> np.ndarray:
        """Boolean findings ``(N, C)``: ``probs >= threshold`` per class.

        Example:
            >>> Thresholds(("A", "B"), "fixed", [0.5, 0.5]).apply([[0.7, 0.2]]).tolist()
            [[True, False]]
        """
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim == 1 and len(self.class_names) == probs.shape[0]:
            probs = probs[None, :]
        if probs.ndim != 2 or probs.shape[1] != len(self.class_names):
            raise EvaluationError(
                f"probabilities of shape {probs.shape} do not fit {len(self.class_names)} "
                f"thresholds ({', '.join(self.class_names)})"
            )
        # A NaN would silently read as "no finding"; refuse it, naming the class and row.
        probs = check_probabilities(probs, self.class_names)
        return probs >= np.asarray(self.values)[None, :]

    def to_dict(self) -> dict:
        return {
            "format_version": _FORMAT_VERSION,
            "method": self.method,
            "target_sensitivity": self.target_sensitivity,
            "class_names": list(self.class_names),
            "thresholds": self.as_dict(),
            "fallback": dict(self.fallback),
            "validation": self.validation,
            "rule": "finding when probability >= threshold",
        }

    def to_text(self) -> str:
        """The content of a ``thresholds.json`` (what :meth:`from_json` reads back)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_json(self, path: Union[str, os.PathLike]) -> None:
        """Writes the thresholds to ``path`` (atomically; an existing file is replaced)."""
        atomic_write_text(path, self.to_text())

    @classmethod
    def from_dict(cls, data: dict, source: str = "thresholds") -> "Thresholds":
        try:
            class_names = list(data["class_names"])
            by_name = data["thresholds"]
            values = [by_name[name] for name in class_names]
            return cls(
                class_names=tuple(class_names),
                method=data["method"],
                values=values,
                fallback=dict(data.get("fallback") or {}),
                target_sensitivity=data.get("target_sensitivity"),
                validation=dict(data.get("validation") or {}),
            )
        except KeyError as err:
            raise EvaluationError(f"{source}: missing key {err}") from None
        except (TypeError, ValueError) as err:
            raise EvaluationError(f"{source}: {err}") from None

    @classmethod
    def from_json(
        cls, path: Union[str, os.PathLike], class_names: Optional[Sequence[str]] = None
    ) -> "Thresholds":
        """Reads thresholds; with ``class_names`` (the model's), checks that they match."""
        data = read_json(path, "thresholds file", EvaluationError)
        thresholds = cls.from_dict(data, source=str(path))
        if class_names is not None:
            thresholds.check_classes(class_names, where=f"the model (checking {path})")
        return thresholds


def choose_thresholds(
    y_true,
    y_prob,
    class_names: Sequence[str],
    *,
    method: str = "youden",
    target_sensitivity: float = 0.9,
    fixed_value: float = 0.5,
    fallback_value: float = 0.5,
) -> Thresholds:
    """Chooses one threshold per class on validation labels/probabilities.

    Args:
        y_true: ``(N, C)`` validation labels, 1 / 0 / NaN (unknown, skipped).
        y_prob: ``(N, C)`` validation probabilities.
        class_names: the ``C`` class names.
        method: ``"youden"``, ``"sensitivity"`` or ``"fixed"``.
        target_sensitivity: for ``"sensitivity"``.
        fixed_value: for ``"fixed"``.
        fallback_value: threshold of classes undefined on the validation data.
    """
    if method not in METHODS:
        raise EvaluationError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    class_names = tuple(class_names)
    y_true, y_prob = check_predictions(y_true, y_prob, class_names)
    values, fallback, validation = [], {}, {}
    for c, name in enumerate(class_names):
        labels, scores = y_true[:, c], y_prob[:, c]
        reason = undefined_reason(labels)
        if method == "fixed":
            value = fixed_value
        elif reason is not None:
            value = fallback_value
            fallback[name] = f"{reason} in the validation data; fixed {fallback_value:g} used"
        elif method == "youden":
            value = youden_threshold(labels, scores)
        else:
            value = sensitivity_threshold(labels, scores, target_sensitivity)
        values.append(value)
        if reason is None:
            validation[name] = _operating_point(labels, scores, value)
    return Thresholds(
        class_names=class_names,
        method=method,
        values=values,
        fallback=fallback,
        target_sensitivity=target_sensitivity if method == "sensitivity" else None,
        validation=validation,
    )


def _operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    known = ~np.isnan(labels)
    positive = labels[known] == 1.0
    called = scores[known] >= threshold
    return {
        "sensitivity": float(called[positive].mean()),
        "specificity": float((~called[~positive]).mean()),
    }
