"""Light, radiograph-appropriate augmentation for the training pipeline.

A frontal chest film varies between acquisitions in a few ways only, and the augmentation mimics
those and nothing more:

- **rotation** up to +-7 degrees (patient not perfectly upright or square to the detector);
- **shift** up to +-5% of the side and **zoom** by up to +-7% (positioning, patient size,
  source-to-detector distance);
- **brightness** +-8% of the range and **contrast** x0.85..1.15 (exposure, detector, windowing).

Borders uncovered by a rotation or shift repeat the nearest edge pixel rather than going black, so
no artificial black wedge (which a network could latch on to) appears in a film whose edges are not
black. **No horizontal flip**: it moves the heart to the wrong side, producing anatomy (situs
inversus / dextrocardia) that almost never occurs and that would teach the model that the side of
the heart does not matter, while side matters for findings such as Cardiomegaly. No vertical flip,
elastic warps or colour changes either, for the same reason: they create images no scanner makes.

All randomness is stateless and comes from an explicit per-batch seed, so a pipeline built with the
same seed gives the same augmentations on every run (:mod:`can_tf.data.pipeline` draws the seeds
from ``tf.data.Dataset.random``, which gives a new stream each epoch).

Example:
    >>> import tensorflow as tf
    >>> images = tf.fill([2, 64, 64, 1], 128.0)
    >>> out = augment_radiographs(images, seed=tf.constant([1, 2], tf.int64))
    >>> out.shape
    TensorShape([2, 64, 64, 1])
"""

from __future__ import annotations

import math

import tensorflow as tf

MAX_ROTATION_DEGREES = 7.0
MAX_SHIFT = 0.05  # fraction of the image side
MAX_ZOOM = 0.07  # relative change of scale
MAX_BRIGHTNESS = 0.08 * 255.0  # additive, in grey levels of the [0, 255] range
CONTRAST_RANGE = (0.85, 1.15)  # multiplicative, about each image's mean


def _affine_transforms(seed, batch, size):
    """(B, 8) output->input projective transforms: rotate, zoom and shift about the image centre."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    angle = tf.random.stateless_uniform([batch], seeds[0], -1.0, 1.0) * math.radians(MAX_ROTATION_DEGREES)
    zoom = 1.0 + tf.random.stateless_uniform([batch], seeds[1], -MAX_ZOOM, MAX_ZOOM)
    shift = tf.random.stateless_uniform([batch, 2], seeds[2], -MAX_SHIFT, MAX_SHIFT) * size
    centre = (size - 1.0) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # input = M @ (output - centre - shift) + centre, with M = rotation(-angle) / zoom.
    ox, oy = centre + shift[:, 0], centre + shift[:, 1]
    a0, a1, b0, b1 = cos, sin, -sin, cos
    a2 = centre - a0 * ox - a1 * oy
    b2 = centre - b0 * ox - b1 * oy
    zeros = tf.zeros_like(angle)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_radiographs(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Randomly rotates, shifts, zooms and adjusts exposure of a batch of radiographs.

    Args:
        images: float32 (B, S, S, C) with values in [0, 255].
        seed: int64 or int32 shape (2,) stateless seed; the same seed gives the same result.

    Returns:
        float32 (B, S, S, C) in [0, 255].
    """
    images = tf.convert_to_tensor(images, tf.float32)
    seed = tf.cast(seed, tf.int64)
    shape = tf.shape(images)
    batch, size = shape[0], tf.cast(shape[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    geometry_seed, brightness_seed, contrast_seed = tf.unstack(seeds)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=_affine_transforms(geometry_seed, batch, size),
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    contrast = tf.random.stateless_uniform([batch, 1, 1, 1], contrast_seed, *CONTRAST_RANGE)
    brightness = tf.random.stateless_uniform(
        [batch, 1, 1, 1], brightness_seed, -MAX_BRIGHTNESS, MAX_BRIGHTNESS
    )
    return tf.clip_by_value((images - mean) * contrast + mean + brightness, 0.0, 255.0)
