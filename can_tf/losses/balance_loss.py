"""The multi-label balance loss (our reconstruction of the CAN paper's loss; see DESIGN.md).

For class c with training prevalence pi_c, beta+_c = 1 - pi_c, beta-_c = pi_c and focusing gamma::

    balance(y, z) = - mean over known (c) [ beta+_c (1 - p)^gamma y log p
                                            + beta-_c p^gamma (1 - y) log(1 - p) ],   p = sigmoid(z)

beta balances each disease's positives against its negatives; the focal factor down-weights the
easy samples that dominate each class. gamma = 0 is class-weighted BCE
(:mod:`can_tf.losses.weighted_bce`); pi = 0.5 with gamma = 0 is BCE / 2.

Normalisation: ``call`` returns one value per sample, the mean over that sample's known classes
(NaN labels do not count; a sample with no known label gives 0). Keras's reduction then averages
("sum_over_batch_size") or sums ("sum") those over the batch, so a fully unknown sample still counts
in the batch size; with no NaN labels this is the plain mean over all (sample, class) entries.

Example:
    >>> import numpy as np
    >>> from can_tf.losses import BalanceLoss
    >>> loss = BalanceLoss(class_prevalence=[0.2], gamma=2.0)
    >>> # y = 1, z = 0: p = 0.5, beta+ = 0.8, (1 - p)^2 = 0.25, -log p = 0.6931
    >>> # -> 0.8 * 0.25 * 0.6931 = 0.1386
    >>> round(float(loss(np.array([[1.0]]), np.array([[0.0]]))), 4)
    0.1386
"""

from __future__ import annotations

import keras
from keras import ops

from can_tf.losses.bce import check_gamma, masked_binary_crossentropy
from can_tf.losses.prevalence import check_class_prevalence, class_balance_weights


def balance_loss(y_true, y_pred, class_prevalence, gamma=2.0):
    """Per-sample multi-label balance loss from logits, NaN labels masked.

    Args:
        y_true: labels (B, C) of 1, 0 or NaN.
        y_pred: logits (B, C), any float dtype (computed in float32).
        class_prevalence: (C,) training-split positive fractions.
        gamma: focusing parameter >= 0.

    Returns:
        float32 (B,).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    positive_weight, negative_weight = class_balance_weights(class_prevalence, y_pred.shape[-1])
    return masked_binary_crossentropy(y_true, y_pred, positive_weight, negative_weight, gamma)


@keras.saving.register_keras_serializable(package="can_tf")
class BalanceLoss(keras.losses.Loss):
    """Multi-label balance loss from logits with NaN labels masked (see the module docstring).

    Args:
        class_prevalence: one training-split positive fraction per class (0 and 1 are clamped).
        gamma: focusing parameter >= 0.
        reduction: Keras reduction over the per-sample values.
        name: loss name.
        dtype: dtype of the returned loss (the maths is float32 regardless).
    """

    def __init__(self, class_prevalence, gamma=2.0, reduction="sum_over_batch_size",
                 name="balance_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.class_prevalence = check_class_prevalence(class_prevalence).tolist()
        self.gamma = check_gamma(gamma)

    def call(self, y_true, y_pred):
        return balance_loss(y_true, y_pred, self.class_prevalence, self.gamma)

    def get_config(self):
        config = super().get_config()
        config.update({"class_prevalence": self.class_prevalence, "gamma": self.gamma})
        return config
