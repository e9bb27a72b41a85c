"""Cross-attention between two feature maps through their Hadamard product.

Our reconstruction of the CAN cross-attention (Ma, Wang & Hoi, MICCAI 2019): each branch's feature
map is projected by a 1x1 convolution to a common width, the projections are multiplied element
by element, so that only evidence both branches produce survives, and a 1x1 convolution with a
sigmoid turns the product into one spatial attention map that re-weights both branches
residually.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="can_tf")
class CrossAttention(layers.Layer):
    """Spatial cross-attention of two feature maps (Hadamard product of their projections).

    For inputs ``[F1, F2]`` with shapes ``(B, h, w, c1)`` and ``(B, h', w', c2)``::

        P1 = conv1x1(F1)                      (B, h, w, d)
        P2 = resize(conv1x1(F2), (h, w))      (B, h, w, d)
        A  = sigmoid(conv1x1(P1 * P2))        (B, h, w, 1)   values in (0, 1)
        F1' = F1 + F1 * A
        F2' = F2 + F2 * resize(A, (h', w'))

    The attention map lives on the first branch's grid. When the grids differ (e.g. backbones of
    different strides) the second branch's projection is resized bilinearly to it (projection
    first: a 1x1 convolution and a bilinear resize commute, and resizing ``d`` channels is cheaper
    than resizing ``c2``), and ``F2'`` keeps its own resolution: only the one-channel attention
    map is resized back, so the second branch's features are never blurred. Plain bilinear
    resizing (no antialiasing) keeps the graph convertible to TFLite builtin ops.

    The residual form ``F + F * A`` keeps every feature (``A`` only amplifies up to 2x), so an
    attention map that is still random early in training cannot erase the pretrained features.

    All arithmetic runs in the layer's compute dtype, so it follows a mixed-precision policy; the
    sigmoid is safe in float16/bfloat16.

    Args:
        attention_dim: width ``d`` of the projections whose Hadamard product is taken.

    Call returns:
        ``(F1', F2', A)``: the attended feature maps (same shapes as the inputs) and the attention
        map ``(B, h, w, 1)``.

    Example:
        >>> import numpy as np
        >>> layer = CrossAttention(attention_dim=8)
        >>> f1, f2, a = layer([np.ones((2, 4, 4, 16), "float32"), np.ones((2, 2, 2, 32), "float32")])
        >>> tuple(f1.shape), tuple(f2.shape), tuple(a.shape)
        ((2, 4, 4, 16), (2, 2, 2, 32), (2, 4, 4, 1))
    """

    def __init__(self, attention_dim: int = 256, **kwargs):
        super().__init__(**kwargs)
        if int(attention_dim) < 1:
            raise ValueError(f"attention_dim must be a positive integer, got {attention_dim!r}")
        self.attention_dim = int(attention_dim)

    def build(self, input_shape):
        shape_1, shape_2 = self._check_shapes(input_shape)
        self.projection_1 = layers.Conv2D(self.attention_dim, 1, dtype=self.dtype_policy, name="projection_1")
        self.projection_1.build(shape_1)
        self.projection_2 = layers.Conv2D(self.attention_dim, 1, dtype=self.dtype_policy, name="projection_2")
        self.projection_2.build(shape_2)
        self.attention_logits = layers.Conv2D(1, 1, dtype=self.dtype_policy, name="attention_logits")
        self.attention_logits.build(tuple(shape_1[:3]) + (self.attention_dim,))
        self._grid_1 = tuple(shape_1[1:3])
        self._grid_2 = tuple(shape_2[1:3])
        self.built = True

    def call(self, inputs):
        features_1, features_2 = inputs
        projected_1 = self.projection_1(features_1)
        projected_2 = self._resize(self.projection_2(features_2), self._grid_1)
        attention = ops.sigmoid(self.attention_logits(projected_1 * projected_2))
        attended_1 = features_1 + features_1 * attention
        attended_2 = features_2 + features_2 * self._resize(attention, self._grid_2)
        return attended_1, attended_2, attention

    def _resize(self, x, grid):
        if tuple(x.shape[1:3]) == grid:
            return x
        # tf.image.resize returns float32 for bilinear; keep the compute dtype.
        return ops.cast(ops.image.resize(x, grid, interpolation="bilinear"), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        shape_1, shape_2 = self._check_shapes(input_shape)
        return tuple(shape_1), tuple(shape_2), tuple(shape_1[:3]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update({"attention_dim": self.attention_dim})
        return config

    def _check_shapes(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(f"{self.name} takes two feature maps [F1, F2]; got input shape {input_shape!r}")
        shape_1, shape_2 = (tuple(s) for s in input_shape)
        for i, shape in enumerate((shape_1, shape_2), start=1):
            if len(shape) != 4 or any(d is None for d in shape[1:]):
                raise ValueError(f"{self.name}: feature map {i} must have a known (B, h, w, c) shape, "
                                 f"got {shape}")
        return shape_1, shape_2
