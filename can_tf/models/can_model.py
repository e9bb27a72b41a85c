"""The Cross-Attention Network: two backbones, cross-attention, per-branch and fused heads."""

from __future__ import annotations

from typing import Optional, Sequence

import keras
from keras import layers

from can_tf.models.backbones import build_backbone, image_input
from can_tf.models.cross_attention import CrossAttention


def logits_head(pooled, num_classes: int, dropout: float, name: str):
    """Optional dropout and a float32 Dense layer giving logits from pooled features.

    The Dense layer is named ``name`` and computes in float32 under a mixed-precision policy, so
    the logits (and the loss on them) keep full precision.
    """
    x = pooled
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.Dense(num_classes, dtype="float32", name=name)(x)


# The build_backbone keywords a backbone's options may set (see can_tf.models.backbones.backbone_options).
BACKBONE_OPTION_KEYS = ("preprocessing", "batchnorm_epsilon")


def checked_backbone_options(options: Optional[dict], where: str) -> dict:
    """A copy of one backbone's options (``None`` -> ``{}``), refusing keys build_backbone lacks.

    JSON-ready (a model's config holds it): ``preprocessing`` a str, ``batchnorm_epsilon`` a float.
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"{where} must be a dict of build_backbone options, got {options!r}")
    unknown = sorted(set(options) - set(BACKBONE_OPTION_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(BACKBONE_OPTION_KEYS)}")
    checked = {}
    if options.get("preprocessing") is not None:
        checked["preprocessing"] = str(options["preprocessing"])
    if options.get("batchnorm_epsilon") is not None:
        checked["batchnorm_epsilon"] = float(options["batchnorm_epsilon"])
    return checked


@keras.saving.register_keras_serializable(package="can_tf")
class CANModel(keras.Model):
    """Cross-Attention Network for multi-label image classification.

    ::

        image (S, S, 1|3), float32 in [0, 255]
          -> grayscale_to_rgb -> branch_1_backbone -> F1 -+
                              -> branch_2_backbone -> F2 -+-> cross_attention -> F1', F2', A
        branch_1 = Dense(GAP(F1'))           branch_2 = Dense(GAP(F2'))
        fused    = Dense(concat(GAP(F1'), GAP(F2')))

    The model outputs a dict of logits ``{"fused", "branch_1", "branch_2"}`` (each ``(B, C)``,
    float32 under mixed precision; the Dense layers carry the same names, so
    ``model.output_names`` equals the dict keys). The attention loss uses the branch logits; the
    prediction is ``sigmoid(fused)`` (see :func:`can_tf.models.inference_model`).

    Named layers for inspection: ``branch_1_backbone`` / ``branch_2_backbone`` (nested backbone
    models), ``cross_attention``, and ``branch_1_features`` / ``branch_2_features`` (the attended
    feature maps ``F1'``, ``F2'``: the layers to explain with Grad-CAM).

    The graph is built in ``__init__`` from the constructor arguments, which are the whole config:
    a saved model is rebuilt from them with random weights, then its weights are loaded. Pretrained
    backbone weights are therefore not a constructor argument; :func:`can_tf.models.build_model`
    loads them after construction. What such weights need of the graph itself (the input scaling
    and batch-norm epsilon of weights imported from PyTorch) is: ``backbone_options``.

    Args:
        backbones: two names from :data:`can_tf.models.backbones.BACKBONES`.
        num_classes: number of labels ``C``.
        image_size: square input size ``S`` in pixels.
        input_channels: 1 (grayscale, replicated to RGB inside the graph) or 3.
        attention_dim: width of the cross-attention projections.
        dropout: dropout rate before each Dense head (0 disables).
        backbone_options: one dict of :func:`can_tf.models.backbones.build_backbone` options per
            branch (``preprocessing``, ``batchnorm_epsilon``; see
            :func:`can_tf.models.backbones.backbone_options`), or None for the registry's own. A
            model saved without them (older files) loads with none.

    Example:
        >>> import numpy as np
        >>> model = CANModel(backbones=("tiny", "tiny"), num_classes=14, image_size=64)
        >>> logits = model(np.zeros((2, 64, 64, 1), "float32"))
        >>> sorted(logits), tuple(logits["fused"].shape)
        (['branch_1', 'branch_2', 'fused'], (2, 14))
        >>> xrv = {"preprocessing": "xrv", "batchnorm_epsilon": 1e-5}
        >>> model = CANModel(backbones=("tiny", "tiny"), image_size=64, backbone_options=[xrv, None])
        >>> model.get_layer("branch_1_backbone").get_layer("preprocessing").mode
        'xrv'
        >>> model.get_config()["backbone_options"]
        [{'preprocessing': 'xrv', 'batchnorm_epsilon': 1e-05}, {}]
    """

    def __init__(self, backbones: Sequence[str] = ("densenet121", "densenet121"), num_classes: int = 14,
                 image_size: int = 224, input_channels: int = 1, attention_dim: int = 256,
                 dropout: float = 0.0, backbone_options: Optional[Sequence[Optional[dict]]] = None, **kwargs):
        if isinstance(backbones, str) or len(backbones) != 2:
            raise ValueError(f"CANModel takes exactly two backbones, got {backbones!r}")
        if backbone_options is None:
            backbone_options = [None] * len(backbones)
        if isinstance(backbone_options, dict) or len(backbone_options) != len(backbones):
            raise ValueError(f"CANModel takes one backbone_options dict (or None) per backbone, "
                             f"got {backbone_options!r}")
        backbone_options = [checked_backbone_options(o, f"backbone_options[{i}]")
                            for i, o in enumerate(backbone_options)]
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

        # === Functional graph ===
        image, rgb = image_input(image_size, input_channels)
        features = [
            build_backbone(name, image_size, model_name=f"branch_{i}_backbone", **options)(rgb)
            for i, (name, options) in enumerate(zip(backbones, backbone_options), start=1)
        ]
        attended_1, attended_2, _ = CrossAttention(attention_dim, name="cross_attention")(features)
        attended_1 = layers.Identity(name="branch_1_features")(attended_1)
        attended_2 = layers.Identity(name="branch_2_features")(attended_2)
        pooled_1 = layers.GlobalAveragePooling2D(name="branch_1_pool")(attended_1)
        pooled_2 = layers.GlobalAveragePooling2D(name="branch_2_pool")(attended_2)
        pooled = layers.Concatenate(name="fused_concat")([pooled_1, pooled_2])
        outputs = {
            "fused": logits_head(pooled, num_classes, dropout, name="fused"),
            "branch_1": logits_head(pooled_1, num_classes, dropout, name="branch_1"),
            "branch_2": logits_head(pooled_2, num_classes, dropout, name="branch_2"),
        }
        super().__init__(inputs=image, outputs=outputs, **kwargs)

        # === Config ===
        self.backbones = list(backbones)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.input_channels = int(input_channels)
        self.attention_dim = int(attention_dim)
        self.dropout = float(dropout)
        self.backbone_options = backbone_options

    def get_config(self):
        # Not chained to keras.Model: a functional model's config is its layer graph, which this
        # constructor does not take.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbones": list(self.backbones),
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "input_channels": self.input_channels,
            "attention_dim": self.attention_dim,
            "dropout": self.dropout,
            "backbone_options": [dict(o) for o in self.backbone_options],
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
