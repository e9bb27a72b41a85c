"""Losses for multi-label chest X-ray classification, all from logits with NaN labels masked.

- :class:`BalanceLoss`: the multi-label balance loss (class-wise beta from prevalence, focal gamma).
- :class:`CANLoss`: balance loss on the fused output + lambda/2 x balance on each branch.
- :class:`BCELoss`, :class:`WeightedBCELoss`, :class:`FocalLoss`: for ablations.

Every class is a ``keras.losses.Loss`` registered as ``can_tf>ClassName`` so that ``.keras`` files
load it back. :func:`build_loss` turns a :class:`can_tf.config.LossConfig` into the per-output loss
and loss-weight dicts that ``Model.compile`` takes.

Example:
    >>> from can_tf.config import LossConfig
    >>> from can_tf.losses import build_loss
    >>> losses, weights = build_loss(LossConfig(name="can", attention_weight=1.0), "can", [0.1] * 14)
    >>> sorted(losses), weights
    (['branch_1', 'branch_2', 'fused'], {'fused': 1.0, 'branch_1': 0.5, 'branch_2': 0.5})
"""

from can_tf.losses.balance_loss import BalanceLoss, balance_loss
from can_tf.losses.bce import BCELoss, masked_binary_crossentropy
from can_tf.losses.factory import LOSSES, build_loss, get_loss
from can_tf.losses.can_loss import CAN_OUTPUTS, CANLoss, can_loss
from can_tf.losses.focal_loss import FocalLoss, focal_loss
from can_tf.losses.prevalence import PREVALENCE_EPSILON, check_class_prevalence
from can_tf.losses.weighted_bce import WeightedBCELoss, weighted_binary_crossentropy

__all__ = [
    "BCELoss", "BalanceLoss", "CANLoss", "CAN_OUTPUTS", "FocalLoss", "LOSSES", "PREVALENCE_EPSILON",
    "WeightedBCELoss", "balance_loss", "build_loss", "can_loss", "check_class_prevalence",
    "focal_loss", "get_loss", "masked_binary_crossentropy", "weighted_binary_crossentropy",
]
