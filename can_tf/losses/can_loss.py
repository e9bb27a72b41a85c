"""The CAN loss: balance loss on the fused logits plus the attention loss on the branch logits.

::

    CAN(y, z) = balance(y, z_fused) + lambda * 1/2 * (balance(y, z_branch_1) + balance(y, z_branch_2))

The second term is our reading of the paper's "attention loss": each branch must predict the labels
on its own (through the shared cross-attention), which keeps both branches' representations useful.

Keras 3's ``compile`` cannot hand a dict of outputs to one loss, so training does not use this class:
:func:`can_tf.losses.build_loss` gives one :class:`BalanceLoss` per output with weights
(1, lambda/2, lambda/2), whose weighted sum Keras reports as ``loss``; the test suite checks that the
two agree. This class computes the same total in one call, for evaluation and custom loops.

Example:
    >>> import numpy as np
    >>> from can_tf.losses import CANLoss
    >>> y = np.array([[1.0]])
    >>> logits = {"fused": np.zeros((1, 1)), "branch_1": np.zeros((1, 1)), "branch_2": np.zeros((1, 1))}
    >>> # each balance term: 0.8 * 0.25 * 0.6931 = 0.1386; total = 0.1386 + 1.0 * 0.1386 = 0.2773
    >>> round(float(CANLoss(class_prevalence=[0.2], gamma=2.0)(y, logits)), 4)
    0.2773
"""

from __future__ import annotations

import keras

from can_tf.losses.balance_loss import balance_loss
from can_tf.losses.bce import check_gamma
from can_tf.losses.prevalence import check_class_prevalence

FUSED_OUTPUT = "fused"
BRANCH_OUTPUTS = ("branch_1", "branch_2")
CAN_OUTPUTS = (FUSED_OUTPUT,) + BRANCH_OUTPUTS


def check_attention_weight(attention_weight) -> float:
    """lambda as a float; raises ValueError unless it is a number >= 0."""
    attention_weight = float(attention_weight)
    if not attention_weight >= 0:
        raise ValueError(f"attention_weight (lambda) must be >= 0, got {attention_weight}")
    return attention_weight


def _labels_for(y_true, key):
    # fit() is given the same labels under each output key; a plain tensor serves all outputs.
    return y_true[key] if isinstance(y_true, dict) else y_true


def can_loss(y_true, y_pred, class_prevalence, gamma=2.0, attention_weight=1.0):
    """Per-sample CAN loss from a dict of logits, NaN labels masked.

    Args:
        y_true: labels (B, C), or a dict of labels keyed like ``y_pred``.
        y_pred: dict of logits (B, C) with keys "fused", "branch_1", "branch_2".
        class_prevalence: (C,) training-split positive fractions.
        gamma: focusing parameter >= 0.
        attention_weight: lambda, the weight of the attention (branch) loss.

    Returns:
        float32 (B,).
    """
    if not isinstance(y_pred, dict) or set(CAN_OUTPUTS) - set(y_pred):
        got = sorted(y_pred) if isinstance(y_pred, dict) else type(y_pred).__name__
        raise ValueError(f"the CAN loss needs y_pred as a dict of logits with keys {list(CAN_OUTPUTS)}; "
                         f"got {got}")
    attention_weight = check_attention_weight(attention_weight)

    def balance(key):
        return balance_loss(_labels_for(y_true, key), y_pred[key], class_prevalence, gamma)

    total = balance(FUSED_OUTPUT)
    if attention_weight:
        total = total + attention_weight * 0.5 * sum(balance(key) for key in BRANCH_OUTPUTS)
    return total


@keras.saving.register_keras_serializable(package="can_tf")
class CANLoss(keras.losses.Loss):
    """CAN loss (balance + attention loss) on a dict of logits {"fused", "branch_1", "branch_2"}.

    Args:
        class_prevalence: one training-split positive fraction per class (0 and 1 are clamped).
        gamma: focusing parameter >= 0 of the balance loss.
        attention_weight: lambda >= 0, the weight of the attention loss.
        reduction: Keras reduction over the per-sample values.
        name: loss name.
        dtype: dtype of the returned loss (the maths is float32 regardless).
    """

    def __init__(self, class_prevalence, gamma=2.0, attention_weight=1.0,
                 reduction="sum_over_batch_size", name="can_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.class_prevalence = check_class_prevalence(class_prevalence).tolist()
        self.gamma = check_gamma(gamma)
        self.attention_weight = check_attention_weight(attention_weight)

    def call(self, y_true, y_pred):
        return can_loss(y_true, y_pred, self.class_prevalence, self.gamma, self.attention_weight)

    def get_config(self):
        config = super().get_config()
        config.update({"class_prevalence": self.class_prevalence, "gamma": self.gamma,
                       "attention_weight": self.attention_weight})
        return config
