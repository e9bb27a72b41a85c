"""Class prevalence (training-split positive fraction per class) and the weights derived from it.

``class_prevalence`` comes from :func:`can_tf.data.table.class_prevalence` on the TRAIN split: one
value in [0, 1] per class, in the order of ``class_names``. The class-balanced losses weigh a class's
positives by ``1 - pi`` and its negatives by ``pi`` (see :func:`class_balance_weights`).

A class with prevalence exactly 0 or 1 (no positives, or no negatives, in the training split) would
get a zero weight on one side and so silently drop that side from the loss. Such values are clamped
to ``[PREVALENCE_EPSILON, 1 - PREVALENCE_EPSILON]`` with a warning naming the class.

Example:
    >>> from can_tf.losses.prevalence import check_class_prevalence
    >>> check_class_prevalence([0.2, 0.5]).tolist()
    [0.2, 0.5]
"""

from __future__ import annotations

import warnings

import numpy as np
from keras import ops

PREVALENCE_EPSILON = 1e-3


def check_class_prevalence(class_prevalence, num_classes=None) -> np.ndarray:
    """Validates a per-class prevalence and returns it as float64 ``(C,)``, clamped away from 0 and 1.

    Args:
        class_prevalence: sequence or array of C values in [0, 1].
        num_classes: if given, the number of classes the labels have; a different length is an error.

    Raises:
        ValueError: not one-dimensional, empty, not finite, outside [0, 1], or the wrong length.
    """
    if class_prevalence is None:
        raise ValueError(
            "class_prevalence is required for this loss: pass one training-split positive "
            "fraction per class (can_tf.data.table.class_prevalence(train_df, class_names))"
        )
    try:
        values = np.asarray(class_prevalence, dtype="float64")
    except (TypeError, ValueError):
        raise ValueError(
            f"class_prevalence must be a sequence of numbers, got {class_prevalence!r}"
        ) from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"class_prevalence must be a non-empty 1-D sequence (one value per class), "
            f"got shape {values.shape}"
        )
    if num_classes is not None and values.size != num_classes:
        raise ValueError(
            f"class_prevalence has {values.size} values but the labels have {num_classes} classes "
            f"(last axis of y_pred); expected one prevalence per class"
        )
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"class_prevalence[{i}] = {float(values[i])!r} is not a fraction in [0, 1]")
    edge = np.flatnonzero((values < PREVALENCE_EPSILON) | (values > 1 - PREVALENCE_EPSILON))
    if edge.size:
        warnings.warn(
            f"class_prevalence at class index(es) {edge.tolist()} is 0 or 1 (a class without "
            f"positives or without negatives in the training split); clamped to "
            f"[{PREVALENCE_EPSILON}, {1 - PREVALENCE_EPSILON}]",
            stacklevel=2,
        )
    return np.clip(values, PREVALENCE_EPSILON, 1 - PREVALENCE_EPSILON)


def class_balance_weights(class_prevalence, num_classes=None):
    """Per-class (positive weight, negative weight) = (1 - pi, pi) as float32 tensors of shape (C,).

    Rare classes thus weigh their few positives up and their many negatives down, so that each
    side of each class contributes about equally: pi * (1 - pi) summed over positives equals
    (1 - pi) * pi summed over negatives.
    """
    values = check_class_prevalence(class_prevalence, num_classes)
    prevalence = ops.convert_to_tensor(values, dtype="float32")
    return 1.0 - prevalence, prevalence
