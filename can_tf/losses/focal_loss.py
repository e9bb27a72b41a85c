"""Focal loss (Lin et al. 2017) from logits with NaN labels masked, for ablations.

Each term is ``-[w+ (1 - p)^gamma y log p + w- p^gamma (1 - y) log(1 - p)]`` with
w+ = alpha, w- = 1 - alpha when ``alpha`` is given and w+ = w- = 1 otherwise. With no NaN label it
equals ``keras.losses.BinaryFocalCrossentropy(from_logits=True, gamma=gamma,
apply_class_balancing=alpha is not None, alpha=alpha)``; Keras's own class cannot be reused because
its NaN labels poison both the value and the gradient. Unlike the balance loss, alpha is one number
for all classes rather than each class's prevalence.

Example:
    >>> import numpy as np
    >>> from can_tf.losses import FocalLoss
    >>> # y = 1, z = 0: (1 - 0.5)^2 = 0.25 times -log 0.5 = 0.6931 -> 0.1733.
    >>> round(float(FocalLoss(gamma=2.0)(np.array([[1.0]]), np.array([[0.0]]))), 4)
    0.1733
"""

from __future__ import annotations

import keras

from can_tf.losses.bce import check_gamma, masked_binary_crossentropy


def _check_alpha(alpha):
    if alpha is None:
        return None
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the focal loss's positive weight) must be in [0, 1] or None, got {alpha}")
    return alpha


def focal_loss(y_true, y_pred, gamma=2.0, alpha=None):
    """Per-sample focal loss from logits, NaN labels masked.

    Args:
        y_true: labels (B, C) of 1, 0 or NaN.
        y_pred: logits (B, C), any float dtype (computed in float32).
        gamma: focusing parameter >= 0.
        alpha: positive weight in [0, 1] (negatives get 1 - alpha), or None for no weighting.

    Returns:
        float32 (B,).
    """
    alpha = _check_alpha(alpha)
    if alpha is None:
        return masked_binary_crossentropy(y_true, y_pred, gamma=gamma)
    return masked_binary_crossentropy(y_true, y_pred, alpha, 1.0 - alpha, gamma)


@keras.saving.register_keras_serializable(package="can_tf")
class FocalLoss(keras.losses.Loss):
    """Binary focal loss from logits with NaN labels masked.

    Args:
        gamma: focusing parameter >= 0.
        alpha: positive weight in [0, 1] (negatives get 1 - alpha), or None (default) for none.
        reduction: Keras reduction over the per-sample values.
        name: loss name.
        dtype: dtype of the returned loss (the maths is float32 regardless).
    """

    def __init__(self, gamma=2.0, alpha=None, reduction="sum_over_batch_size", name="focal_loss",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.gamma = check_gamma(gamma)
        self.alpha = _check_alpha(alpha)

    def call(self, y_true, y_pred):
        return focal_loss(y_true, y_pred, self.gamma, self.alpha)

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma, "alpha": self.alpha})
        return config
