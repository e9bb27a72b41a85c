"""Losses by name, and the per-output loss dicts that ``Model.compile`` takes.

Keras 3's ``compile`` routes one loss to one output: given a single loss for a model with dict
outputs it raises ``KeyError: The path: ('fused',) in the `loss` argument, can't be found``. So the
CAN loss is compiled as three :class:`BalanceLoss` objects keyed by output name with weights
(1, lambda/2, lambda/2); Keras's reported ``loss`` is their weighted sum, which equals
:class:`CANLoss` on the same batch.

Any other loss on a CAN model is put on every output with weights (1, 0, 0). Keras 3.15 would also
accept a loss dict that leaves the branches out, but its optimizer then warns "Gradients do not
exist for variables ['branch_1/kernel', ...]. Did you forget to provide a `loss`?" at every
training run; at weight 0 the branch heads get zero gradients instead, the total is unchanged, and
``branch_1_loss`` / ``branch_2_loss`` are logged, which shows in an ablation how well each branch
predicts on its own. The cost is two losses on (B, C) logits, nothing next to the backbones.

Example:
    >>> from can_tf.config import LossConfig
    >>> from can_tf.losses import build_loss, get_loss
    >>> get_loss("focal", gamma=1.0).gamma
    1.0
    >>> losses, weights = build_loss(LossConfig(name="bce"), "baseline", None)
    >>> list(losses), weights
    (['fused'], {'fused': 1.0})
"""

from __future__ import annotations

from can_tf.config import ConfigError
from can_tf.losses.balance_loss import BalanceLoss
from can_tf.losses.bce import BCELoss
from can_tf.losses.can_loss import BRANCH_OUTPUTS, FUSED_OUTPUT, CANLoss, check_attention_weight
from can_tf.losses.focal_loss import FocalLoss
from can_tf.losses.prevalence import check_class_prevalence
from can_tf.losses.weighted_bce import WeightedBCELoss

LOSSES = ("can", "balance", "bce", "weighted_bce", "focal")
MODEL_KINDS = ("can", "baseline")


def get_loss(name, /, *, class_prevalence=None, gamma=2.0, attention_weight=1.0, alpha=None, **kwargs):
    """Builds a loss by its config name.

    Args:
        name: one of ``LOSSES``: "can", "balance", "bce", "weighted_bce", "focal".
        class_prevalence: (C,) training-split positive fractions; required by "can", "balance" and
            "weighted_bce", ignored by the others.
        gamma: focusing parameter of "can", "balance" and "focal".
        attention_weight: lambda of "can".
        alpha: optional positive weight of "focal".
        **kwargs: passed to the loss class (``reduction``, ``name`` of the loss, ``dtype``).

    Returns:
        a ``keras.losses.Loss``.

    Example:
        >>> get_loss("balance", class_prevalence=[0.1, 0.3], gamma=0.0).get_config()["gamma"]
        0.0
    """
    if name == "bce":
        return BCELoss(**kwargs)
    if name == "focal":
        return FocalLoss(gamma=gamma, alpha=alpha, **kwargs)
    if name in ("can", "balance", "weighted_bce") and class_prevalence is None:
        raise ValueError(f"loss {name!r} weighs classes by their training prevalence: pass "
                         f"class_prevalence (one positive fraction per class)")
    if name == "weighted_bce":
        return WeightedBCELoss(class_prevalence, **kwargs)
    if name == "balance":
        return BalanceLoss(class_prevalence, gamma=gamma, **kwargs)
    if name == "can":
        return CANLoss(class_prevalence, gamma=gamma, attention_weight=attention_weight, **kwargs)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(map(repr, LOSSES))}")


def build_loss(loss_config, model_kind, class_prevalence, *, num_classes=None):
    """The ``loss`` and ``loss_weights`` dicts for ``Model.compile``, keyed by output name.

    Args:
        loss_config: a :class:`can_tf.config.LossConfig` (``name``, ``gamma``, ``attention_weight``,
            ``alpha`` for the focal loss).
        model_kind: "can" (outputs fused, branch_1, branch_2) or "baseline" (output fused).
        class_prevalence: (C,) training-split positive fractions (may be None for "bce"/"focal").
        num_classes: if given, checked against the length of ``class_prevalence`` now rather than
            at the first training step.

    Returns:
        ``(loss_dict, loss_weights_dict)``. CAN loss: ``{"fused", "branch_1", "branch_2"}`` each a
        :class:`BalanceLoss`, weights ``{1, lambda/2, lambda/2}``. Any other loss on a CAN model:
        that loss on each output, weights ``{1, 0, 0}`` (branches logged, not trained); on a
        baseline: ``{"fused": loss}``, weights ``{"fused": 1}``. ``fit`` is then given ``y`` as a
        dict holding the labels under each output key.

    Raises:
        ConfigError: unknown ``model_kind`` or loss name, or the CAN loss on a baseline model.
        ValueError: a missing or invalid ``class_prevalence``.

    Example:
        >>> from can_tf.config import LossConfig
        >>> losses, weights = build_loss(LossConfig(name="can", attention_weight=0.4), "can", [0.2])
        >>> type(losses["branch_1"]).__name__, weights["branch_1"]
        ('BalanceLoss', 0.2)
    """
    name = loss_config.name
    if model_kind not in MODEL_KINDS:
        raise ConfigError(f"model.kind must be one of {', '.join(map(repr, MODEL_KINDS))}; "
                          f"got {model_kind!r}")
    if name not in LOSSES:
        raise ConfigError(f"loss.name must be one of {', '.join(map(repr, LOSSES))}; got {name!r}")
    if class_prevalence is not None:
        class_prevalence = check_class_prevalence(class_prevalence, num_classes).tolist()
    if name == "can" and model_kind != "can":
        raise ConfigError("loss.name='can' needs model.kind='can' (the attention loss uses both "
                          f"branches); got model.kind={model_kind!r}")
    if name == "can":
        # The CAN loss, output by output: balance on each, the branches weighted lambda / 2.
        per_output, branch_weight = "balance", check_attention_weight(loss_config.attention_weight) / 2
    else:
        per_output, branch_weight = name, 0.0
    outputs = (FUSED_OUTPUT,) + (BRANCH_OUTPUTS if model_kind == "can" else ())
    extra = {"alpha": loss_config.alpha} if loss_config.alpha is not None else {}
    losses = {key: get_loss(per_output, class_prevalence=class_prevalence, gamma=loss_config.gamma,
                            name=f"{key}_{per_output}", **extra)
              for key in outputs}
    weights = {key: 1.0 if key == FUSED_OUTPUT else branch_weight for key in outputs}
    return losses, weights
