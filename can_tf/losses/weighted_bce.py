"""Class-weighted binary cross-entropy, as CheXNet and CheXNet-Keras weigh it.

For class c with training prevalence pi_c the positive terms are weighted by w+ = 1 - pi_c and the
negative ones by w- = pi_c. This is Rajpurkar et al.'s (CheXNet) w+ = |N|/(|P|+|N|),
w- = |P|/(|P|+|N|), and exactly what CheXNet-Keras's ``get_class_weights`` computes with its default
multiplier 1. We chose it over the unnormalised N_neg/N_pos positive weight because both sides stay
in [0, 1] (the loss scale does not explode for a class like Hernia, pi ~ 0.002, where N_neg/N_pos
~ 500) and because it is the gamma = 0 case of the multi-label balance loss, so an ablation changes
one thing only.

Example:
    >>> import numpy as np
    >>> from can_tf.losses import WeightedBCELoss
    >>> loss = WeightedBCELoss(class_prevalence=[0.2])
    >>> # y = 1, z = 0: w+ = 1 - 0.2 = 0.8 times -log 0.5 = 0.6931 -> 0.5545.
    >>> round(float(loss(np.array([[1.0]]), np.array([[0.0]]))), 4)
    0.5545
"""

from __future__ import annotations

import keras
from keras import ops

from can_tf.losses.bce import masked_binary_crossentropy
from can_tf.losses.prevalence import check_class_prevalence, class_balance_weights


def weighted_binary_crossentropy(y_true, y_pred, class_prevalence):
    """Per-sample class-weighted BCE from logits (w+ = 1 - pi, w- = pi), NaN labels masked."""
    y_pred = ops.convert_to_tensor(y_pred)
    positive_weight, negative_weight = class_balance_weights(class_prevalence, y_pred.shape[-1])
    return masked_binary_crossentropy(y_true, y_pred, positive_weight, negative_weight)


@keras.saving.register_keras_serializable(package="can_tf")
class WeightedBCELoss(keras.losses.Loss):
    """Class-weighted binary cross-entropy from logits with NaN labels masked.

    Args:
        class_prevalence: one training-split positive fraction per class (0 and 1 are clamped).
        reduction: Keras reduction over the per-sample values.
        name: loss name.
        dtype: dtype of the returned loss (the maths is float32 regardless).
    """

    def __init__(self, class_prevalence, reduction="sum_over_batch_size", name="weighted_bce_loss",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.class_prevalence = check_class_prevalence(class_prevalence).tolist()

    def call(self, y_true, y_pred):
        return weighted_binary_crossentropy(y_true, y_pred, self.class_prevalence)

    def get_config(self):
        config = super().get_config()
        config.update({"class_prevalence": self.class_prevalence})
        return config
