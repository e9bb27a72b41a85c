"""The single-backbone baseline (with DenseNet-121 it is CheXNet, Rajpurkar et al. 2017)."""

from __future__ import annotations

from typing import Optional

import keras
from keras import layers

from can_tf.models.backbones import build_backbone, image_input
from can_tf.models.can_model import checked_backbone_options, logits_head


@keras.saving.register_keras_serializable(package="can_tf")
class BaselineModel(keras.Model):
    """One backbone, global average pooling and a Dense head: the model CAN is measured against.

    ::

        image (S, S, 1|3), float32 in [0, 255]
          -> grayscale_to_rgb -> backbone -> features -> GAP -> fused = Dense

    It is built from the same parts as :class:`can_tf.models.CANModel` (input, backbone, head)
    and outputs the same kind of dict, with only ``{"fused": logits (B, C)}`` (float32 under mixed
    precision), so training, evaluation and export treat both alike. ``features`` is the layer to
    explain with Grad-CAM.

    Args:
        backbone: a name from :data:`can_tf.models.backbones.BACKBONES`.
        num_classes: number of labels ``C``.
        image_size: square input size ``S`` in pixels.
        input_channels: 1 (grayscale, replicated to RGB inside the graph) or 3.
        dropout: dropout rate before the Dense head (0 disables).
        backbone_options: :func:`can_tf.models.backbones.build_backbone` options of the backbone
            (``preprocessing``, ``batchnorm_epsilon``; what weights imported from PyTorch need), or
            None for the registry's own. A model saved without them (older files) loads with none.

    Example:
        >>> import numpy as np
        >>> model = BaselineModel(backbone="tiny", num_classes=14, image_size=64)
        >>> tuple(model(np.zeros((1, 64, 64, 1), "float32"))["fused"].shape)
        (1, 14)
    """

    def __init__(self, backbone: str = "densenet121", num_classes: int = 14, image_size: int = 224,
                 input_channels: int = 1, dropout: float = 0.0, backbone_options: Optional[dict] = None,
                 **kwargs):
        if not isinstance(backbone, str):
            raise ValueError(f"BaselineModel takes one backbone name, got {backbone!r}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        backbone_options = checked_backbone_options(backbone_options, "backbone_options")

        # === Functional graph ===
        image, rgb = image_input(image_size, input_channels)
        features = build_backbone(backbone, image_size, model_name="backbone", **backbone_options)(rgb)
        features = layers.Identity(name="features")(features)
        pooled = layers.GlobalAveragePooling2D(name="pool")(features)
        outputs = {"fused": logits_head(pooled, num_classes, dropout, name="fused")}
        super().__init__(inputs=image, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.input_channels = int(input_channels)
        self.dropout = float(dropout)
        self.backbone_options = backbone_options

    def get_config(self):
        # Not chained to keras.Model: a functional model's config is its layer graph, which this
        # constructor does not take.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": self.backbone,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "input_channels": self.input_channels,
            "dropout": self.dropout,
            "backbone_options": dict(self.backbone_options),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
