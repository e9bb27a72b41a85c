"""Masked binary cross-entropy from logits, and the weighted, focused form every loss here shares.

For one (sample, class) entry with label y, logit z and p = sigmoid(z)::

    term(y, z) = -[ w+ (1 - p)^gamma y log p  +  w- p^gamma (1 - y) log(1 - p) ]

- BCE: w+ = w- = 1, gamma = 0.
- class-weighted BCE: w+ = 1 - pi, w- = pi, gamma = 0           (:mod:`can_tf.losses.weighted_bce`)
- multi-label balance loss: w+ = 1 - pi, w- = pi, gamma >= 0    (:mod:`can_tf.losses.balance_loss`)
- focal loss: w+ = alpha, w- = 1 - alpha (or 1, 1), gamma        (:mod:`can_tf.losses.focal_loss`)

Everything is computed in float32 from logits with ``log p = log_sigmoid(z)`` and
``log(1 - p) = log_sigmoid(-z)``, and the focusing factors as ``exp(gamma * log_sigmoid(.))``, so no
``log(0)``, ``0 ** gamma`` or overflowing ``exp`` occurs for any finite z, and float16/bfloat16
logits (mixed precision) lose nothing. The per-sample value is the mean of the terms over the
sample's *known* classes (NaN labels are masked, see :mod:`can_tf.losses.masking`); Keras then
reduces over the batch as the loss's ``reduction`` says.

Example:
    >>> import numpy as np
    >>> from can_tf.losses import BCELoss
    >>> # z = 0 -> p = 0.5 -> each term is -log 0.5 = 0.6931; the NaN entry is masked out.
    >>> round(float(BCELoss()(np.array([[1.0, np.nan]]), np.array([[0.0, 5.0]]))), 4)
    0.6931
"""

from __future__ import annotations

import keras
from keras import ops

from can_tf.losses.masking import mask_unknown_labels, masked_mean


def check_gamma(gamma) -> float:
    """The focusing parameter as a float; raises ValueError unless it is a number >= 0."""
    try:
        gamma = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma (the focusing parameter) must be a number >= 0, got {gamma!r}") from None
    if not gamma >= 0:  # also rejects NaN
        raise ValueError(f"gamma (the focusing parameter) must be >= 0, got {gamma}")
    return gamma


def masked_binary_crossentropy(y_true, y_pred, positive_weight=1.0, negative_weight=1.0, gamma=0.0):
    """Per-sample weighted, focused binary cross-entropy from logits, NaN labels masked.

    Args:
        y_true: labels (..., C): 1, 0 or NaN (unknown).
        y_pred: logits (..., C), any float dtype.
        positive_weight: w+, a scalar or per-class (C,) weight of the positive terms.
        negative_weight: w-, a scalar or per-class (C,) weight of the negative terms.
        gamma: focusing exponent >= 0; 0 gives plain (weighted) cross-entropy.

    Returns:
        float32 (...,): mean of the terms over each sample's known classes (0 if none is known).
    """
    gamma = check_gamma(gamma)
    labels, known = mask_unknown_labels(y_true)
    logits = ops.cast(y_pred, "float32")
    log_p = ops.log_sigmoid(logits)  # log p
    log_not_p = ops.log_sigmoid(-logits)  # log (1 - p)
    positive = ops.cast(positive_weight, "float32") * labels * log_p
    negative = ops.cast(negative_weight, "float32") * (1.0 - labels) * log_not_p
    if gamma:
        # (1 - p)^gamma and p^gamma through exp(gamma * log(.)): finite with a finite gradient even
        # where p rounds to 0 or 1, unlike ops.power (whose gradient at 0 is inf for gamma < 1).
        positive = positive * ops.exp(gamma * log_not_p)
        negative = negative * ops.exp(gamma * log_p)
    return masked_mean(-(positive + negative), known)


@keras.saving.register_keras_serializable(package="can_tf")
class BCELoss(keras.losses.Loss):
    """Binary cross-entropy from logits with unknown (NaN) labels masked out.

    Equal to ``keras.losses.BinaryCrossentropy(from_logits=True)`` when no label is NaN; otherwise
    each sample averages over its known classes only.

    Args:
        reduction: Keras reduction over the per-sample values ("sum_over_batch_size", "sum",
            "none", ...).
        name: loss name.
        dtype: dtype of the returned loss (the maths is float32 regardless).

    Example:
        >>> import numpy as np
        >>> loss = BCELoss()
        >>> # [1, 0] at logits [0, 0]: both terms log 2 = 0.6931.
        >>> round(float(loss(np.array([[1.0, 0.0]]), np.zeros((1, 2)))), 4)
        0.6931
    """

    def __init__(self, reduction="sum_over_batch_size", name="bce_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return masked_binary_crossentropy(y_true, y_pred)
