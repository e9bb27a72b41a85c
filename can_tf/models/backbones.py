"""The backbone registry: convolutional feature extractors over `keras.applications`.

Every backbone takes RGB images with values in ``[0, 255]`` and returns its last feature map
(``include_top=False``, no pooling). Its own input preprocessing (Torch-style mean/std for DenseNet,
Caffe-style BGR mean subtraction for ResNet, the layers EfficientNet, EfficientNetV2, ConvNeXt and
MobileNetV3 carry themselves) is part of the graph, so callers never preprocess by hand and an
exported model takes raw pixels.

A backbone is built as a nested functional model with a name of its own (``branch_1_backbone``,
``branch_2_backbone``, ...). Two copies of the same application therefore sit side by side in one
graph: Keras needs unique layer names only among a model's direct layers, and the layers inside
each nested backbone keep the application's names, so pretrained weights load in the
application's own order.

Example:
    >>> from can_tf.models.backbones import BACKBONES, build_backbone
    >>> sorted(BACKBONES)[:3]
    ['convnext_small', 'convnext_tiny', 'densenet121']
    >>> backbone = build_backbone("tiny", image_size=64)
    >>> backbone.output.shape
    (None, 8, 8, 64)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import keras
import numpy as np
from keras import layers, ops

# ImageNet statistics of RGB images scaled to [0, 1] (Torch-style preprocessing).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
# Caffe-style preprocessing subtracts these per-channel means from BGR images in [0, 255].
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESSING_MODES = ("torch", "caffe", "tf", "unit", "none")


@keras.saving.register_keras_serializable(package="can_tf")
class ImagePreprocessing(layers.Layer):
    """Maps RGB images in ``[0, 255]`` to the input range a backbone was trained with.

    Modes follow `keras.applications.imagenet_utils.preprocess_input`:

    - ``"torch"``: scale to ``[0, 1]``, then subtract the ImageNet mean and divide by its stddev
      per channel (DenseNet).
    - ``"caffe"``: RGB to BGR, then subtract the ImageNet BGR mean, no scaling (ResNet).
    - ``"tf"``: scale to ``[-1, 1]``.
    - ``"unit"``: scale to ``[0, 1]``.
    - ``"none"``: identity (for backbones that preprocess inside themselves).

    Built with ``dtype="float32"`` by :func:`build_backbone`, so the arithmetic on raw pixel values
    stays in float32 under a mixed-precision policy; the first convolution casts afterwards.

    Example:
        >>> import numpy as np
        >>> layer = ImagePreprocessing("tf")
        >>> layer(np.array([[[[0.0, 127.5, 255.0]]]], "float32")).numpy().tolist()
        [[[[-1.0, 0.0, 1.0]]]]
    """

    def __init__(self, mode: str = "torch", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"ImagePreprocessing mode must be one of {', '.join(map(repr, PREPROCESSING_MODES))}; "
                f"got {mode!r}"
            )
        self.mode = mode

    def call(self, images):
        if self.mode == "torch":
            mean = ops.array([255.0 * m for m in IMAGENET_MEAN_RGB], dtype=self.compute_dtype)
            scale = ops.array([1.0 / (255.0 * s) for s in IMAGENET_STDDEV_RGB], dtype=self.compute_dtype)
            return (images - mean) * scale
        if self.mode == "caffe":
            return ops.flip(images, axis=-1) - ops.array(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "unit":
            return images / 255.0
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


def TinyBackbone(include_top: bool = False, weights: Optional[str] = None, input_tensor=None,
                 input_shape=None, name: str = "tiny") -> keras.Model:
    """A four-block convolutional network for fast tests and CPU demos (feature stride 8).

    Follows the `keras.applications` constructor signature so the registry treats it like the
    others: conv 3x3 (16, 32, 64 filters, stride 2) + batch norm + ReLU, then one stride-1 block
    of 64 filters. 61 k parameters; a 64 px image gives an 8x8x64 feature map.
    """
    if include_top:
        raise ValueError("the tiny backbone has no classification top; use include_top=False")
    if weights not in (None,):
        raise ValueError("the tiny backbone is built without weights; load a weights file afterwards")
    inputs = input_tensor if input_tensor is not None else keras.Input(shape=input_shape)
    x = inputs
    for block, (filters, strides) in enumerate(((16, 2), (32, 2), (64, 2), (64, 1)), start=1):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                          name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = layers.ReLU(name=f"block{block}_relu")(x)
    return keras.Model(keras.utils.get_source_inputs(inputs), x, name=name)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about one backbone.

    Attributes:
        constructor: a `keras.applications`-style function (``include_top``, ``weights``,
            ``input_tensor``, ``input_shape`` keywords) returning a functional model.
        family: the architecture family (``densenet``, ``resnet``, ...).
        preprocessing: the :class:`ImagePreprocessing` mode put in front of it; ``"none"`` when
            the application carries its own preprocessing layers.
        channels: channels of its last feature map.
        stride: input pixels per feature-map cell (the map is ``ceil(size / stride)`` wide).
        imagenet: whether Keras publishes ImageNet weights for it.
        kwargs: extra constructor arguments.
    """

    constructor: Callable[..., keras.Model]
    family: str
    preprocessing: str
    channels: int
    stride: int = 32
    imagenet: bool = True
    kwargs: dict = dataclasses.field(default_factory=dict)


_apps = keras.applications
_OWN_PREPROCESSING = {"include_preprocessing": True}

BACKBONES: dict[str, BackboneSpec] = {
    "densenet121": BackboneSpec(_apps.DenseNet121, "densenet", "torch", 1024),
    "densenet169": BackboneSpec(_apps.DenseNet169, "densenet", "torch", 1664),
    "densenet201": BackboneSpec(_apps.DenseNet201, "densenet", "torch", 1920),
    "resnet50": BackboneSpec(_apps.ResNet50, "resnet", "caffe", 2048),
    "resnet101": BackboneSpec(_apps.ResNet101, "resnet", "caffe", 2048),
    # EfficientNet (v1) rescales and normalises inside itself.
    "efficientnetb0": BackboneSpec(_apps.EfficientNetB0, "efficientnet", "none", 1280),
    "efficientnetb1": BackboneSpec(_apps.EfficientNetB1, "efficientnet", "none", 1280),
    "efficientnetb2": BackboneSpec(_apps.EfficientNetB2, "efficientnet", "none", 1408),
    "efficientnetb3": BackboneSpec(_apps.EfficientNetB3, "efficientnet", "none", 1536),
    "efficientnetb4": BackboneSpec(_apps.EfficientNetB4, "efficientnet", "none", 1792),
    "efficientnetv2b0": BackboneSpec(_apps.EfficientNetV2B0, "efficientnetv2", "none", 1280,
                                     kwargs=_OWN_PREPROCESSING),
    "efficientnetv2b1": BackboneSpec(_apps.EfficientNetV2B1, "efficientnetv2", "none", 1280,
                                     kwargs=_OWN_PREPROCESSING),
    "efficientnetv2b2": BackboneSpec(_apps.EfficientNetV2B2, "efficientnetv2", "none", 1408,
                                     kwargs=_OWN_PREPROCESSING),
    "efficientnetv2b3": BackboneSpec(_apps.EfficientNetV2B3, "efficientnetv2", "none", 1536,
                                     kwargs=_OWN_PREPROCESSING),
    "efficientnetv2s": BackboneSpec(_apps.EfficientNetV2S, "efficientnetv2", "none", 1280,
                                    kwargs=_OWN_PREPROCESSING),
    "convnext_tiny": BackboneSpec(_apps.ConvNeXtTiny, "convnext", "none", 768, kwargs=_OWN_PREPROCESSING),
    "convnext_small": BackboneSpec(_apps.ConvNeXtSmall, "convnext", "none", 768, kwargs=_OWN_PREPROCESSING),
    "mobilenetv3small": BackboneSpec(_apps.MobileNetV3Small, "mobilenetv3", "none", 576,
                                     kwargs=_OWN_PREPROCESSING),
    "mobilenetv3large": BackboneSpec(_apps.MobileNetV3Large, "mobilenetv3", "none", 960,
                                     kwargs=_OWN_PREPROCESSING),
    "tiny": BackboneSpec(TinyBackbone, "tiny", "unit", 64, stride=8, imagenet=False),
}

# keras.applications refuse inputs smaller than this (with include_top=False).
MIN_IMAGE_SIZE = 32


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``, or a ValueError listing the known backbones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def image_input(image_size: int, input_channels: int = 1):
    """The model input (float32 images in ``[0, 255]``) and the RGB tensor the backbones take.

    Grayscale radiographs (``input_channels=1``) are replicated to three channels inside the
    graph, once, in float32, so every backbone (ImageNet-shaped first convolution) can take them.

    Returns:
        ``(image, rgb)``: the `keras.Input` named ``image`` and a ``(B, S, S, 3)`` tensor.
    """
    if input_channels not in (1, 3):
        raise ValueError(f"input_channels must be 1 (grayscale) or 3 (RGB), got {input_channels!r}")
    image = keras.Input(shape=(image_size, image_size, input_channels), dtype="float32", name="image")
    if input_channels == 3:
        return image, image
    rgb = layers.Concatenate(axis=-1, dtype="float32", name="grayscale_to_rgb")([image, image, image])
    return image, rgb


def build_backbone(name: str, image_size: int, weights: Optional[str] = None,
                   model_name: Optional[str] = None) -> keras.Model:
    """Builds a registered backbone taking ``(B, S, S, 3)`` RGB images in ``[0, 255]``.

    Args:
        name: a key of :data:`BACKBONES`.
        image_size: the square input size ``S`` in pixels (at least 32).
        weights: ``None`` (random initialisation), ``"imagenet"`` (downloaded by Keras where the
            internet is reachable), or the path of a weights file (see :func:`load_backbone_weights`).
        model_name: the nested model's name; defaults to ``name``.

    Returns:
        A functional `keras.Model` ending in the backbone's last feature map
        ``(B, ceil(S / stride), ceil(S / stride), channels)``.

    Example:
        >>> backbone = build_backbone("densenet121", image_size=64)
        >>> backbone.output.shape
        (None, 2, 2, 1024)
    """
    spec = get_spec(name)
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels for backbone {name!r}, "
                         f"got {image_size}")
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=f"{name}_input")
    x = inputs
    if spec.preprocessing != "none":
        x = ImagePreprocessing(spec.preprocessing, dtype="float32", name="preprocessing")(x)
    # Always built without weights: a saved model is rebuilt from its config the same way before
    # its own weights are loaded, so the graph must not depend on where the weights came from.
    application = spec.constructor(include_top=False, weights=None, input_tensor=x,
                                   input_shape=(image_size, image_size, 3), **spec.kwargs)
    backbone = keras.Model(inputs, application.output, name=model_name or name)
    if weights is not None:
        load_backbone_weights(backbone, name, weights)
    return backbone


def load_backbone_weights(backbone: keras.Model, name: str, weights: str) -> None:
    """Loads pretrained weights into a backbone made by :func:`build_backbone`.

    ``"imagenet"`` builds the Keras application with ``weights="imagenet"`` (Keras downloads and
    caches the file) and copies its weights layer by layer. A file path is loaded with
    `keras.Model.load_weights`: a ``.weights.h5`` file saved from a backbone built here, or a
    Keras-applications ``*_notop.h5`` file (matched in the application's layer order, as Keras
    itself loads them). Nothing is skipped silently: a file that does not fit raises.

    Raises:
        ValueError: naming the backbone and the weights source at fault.
    """
    spec = get_spec(name)
    if weights == "imagenet":
        if not spec.imagenet:
            raise ValueError(f"backbone {name!r} has no ImageNet weights; use weights=None or a weights file")
        try:
            source = spec.constructor(include_top=False, weights="imagenet",
                                      input_shape=tuple(backbone.input.shape[1:]), **spec.kwargs)
        except Exception as e:  # network errors come in many types; all mean the same to the user
            raise ValueError(
                f"could not get the ImageNet weights of backbone {name!r}: {e}. Where the internet "
                f"cannot be reached, download the Keras application's '_notop.h5' weights file "
                f"elsewhere and pass its path as model.weights, or use model.weights=null."
            ) from e
        _copy_layer_weights(source, backbone, what=f"ImageNet weights of {name!r}")
        if spec.family == "efficientnet":
            _fold_released_efficientnet_scale(backbone)
        return
    if not isinstance(weights, (str, os.PathLike)) or not os.path.isfile(weights):
        raise ValueError(f"weights for backbone {name!r} must be 'imagenet', None, or an existing "
                         f"weights file; no file at {weights!r}")
    try:
        backbone.load_weights(os.fspath(weights))
    except Exception as e:
        raise ValueError(f"weights file {os.fspath(weights)} does not fit backbone {name!r} "
                         f"({backbone.name}): {e}") from e


def _copy_layer_weights(source: keras.Model, target: keras.Model, what: str) -> None:
    """Copies weights between two builds of one architecture, pairing weighted layers in order."""
    source_layers = [layer for layer in source.layers if layer.weights]
    target_layers = [layer for layer in target.layers if layer.weights]
    if len(source_layers) != len(target_layers):
        raise ValueError(f"{what}: {len(source_layers)} weighted layers do not fit the "
                         f"{len(target_layers)} of {target.name}")
    for src, dst in zip(source_layers, target_layers):
        if type(src) is not type(dst):
            raise ValueError(f"{what}: layer {src.name} ({type(src).__name__}) does not fit "
                             f"{dst.name} ({type(dst).__name__}) of {target.name}")
        dst.set_weights(src.get_weights())
        if hasattr(dst, "finalize_state"):  # Normalization caches its statistics as tensors
            dst.finalize_state()


def _fold_released_efficientnet_scale(backbone: keras.Model) -> None:
    """Folds the extra input scaling of Keras' ImageNet EfficientNet into its Normalization layer.

    `keras.applications.EfficientNetB*` built with ``weights="imagenet"`` insert a
    ``Rescaling(1 / sqrt(stddev))`` after the Normalization layer (the released statistics divide
    by ``sqrt(variance)`` where the original model divides once more); with other weights they do
    not. Backbones here are always built without that layer, so a saved model rebuilds the same
    graph; multiplying the variance by ``stddev`` gives the same function:
    ``(x - m) / sqrt(v) / sqrt(s) == (x - m) / sqrt(v * s)``.
    """
    for layer in backbone.layers:
        if isinstance(layer, layers.Normalization) and layer.weights:
            fold_normalization_scale(layer, IMAGENET_STDDEV_RGB)
            return
    raise ValueError(f"{backbone.name}: no Normalization layer to fold the ImageNet input scale into")


def fold_normalization_scale(layer: layers.Normalization, scale) -> None:
    """Makes an adapted Normalization layer also divide its output by ``sqrt(scale)``."""
    mean, variance, count = (np.asarray(w) for w in layer.get_weights())
    layer.set_weights([mean, variance * np.asarray(scale, variance.dtype), count])
    layer.finalize_state()
