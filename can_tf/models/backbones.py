"""The backbone registry: convolutional feature extractors over `keras.applications`.

Every backbone takes RGB images with values in ``[0, 255]`` and returns its last feature map
(``include_top=False``, no pooling). Its own input preprocessing (Torch-style mean/std for DenseNet,
Caffe-style BGR mean subtraction for ResNet, the layers EfficientNet, EfficientNetV2, ConvNeXt and
MobileNetV3 carry themselves) is part of the graph, so callers never preprocess by hand and an
exported model takes raw pixels.

Weights imported from PyTorch (see :mod:`can_tf.models.torch_import`) bring two facts of their
own, both kept in the graph so that a saved model and a model rebuilt from its config compute the
same function: the input scaling they were trained with (``"xrv"``: torchxrayvision's
``x / 255 * 2048 - 1024``; ``"torch"``: ImageNet mean/std) and PyTorch's batch-norm epsilon
(``1e-5``; the Keras applications use ``1.001e-5``, which moves a channel whose running variance
is small). :func:`backbone_options` reads both from a weights file, and :func:`build_backbone`
takes them as ``preprocessing=`` and ``batchnorm_epsilon=``. ``resnet50_tv`` and ``resnet101_tv``
are ResNets in torchvision's layout (ResNet v1.5: the stride sits on a block's 3x3 convolution,
where the Keras applications' v1 put it on the first 1x1), with PyTorch's padding and epsilon.

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

from can_tf.models.weights_info import read_weights_info

# ImageNet statistics of RGB images scaled to [0, 1] (Torch-style preprocessing).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
# Caffe-style preprocessing subtracts these per-channel means from BGR images in [0, 255].
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# torchxrayvision scales 8-bit radiographs to [-1024, 1024] (x / 255 * 2048 - 1024), on every channel.
XRV_RANGE = 1024.0

PREPROCESSING_MODES = ("torch", "caffe", "tf", "unit", "xrv", "none")

# torch.nn.BatchNorm2d's default; keras.applications' DenseNet and ResNet use 1.001e-5.
TORCH_BATCHNORM_EPSILON = 1e-5
# WeightsInfo.framework values whose batch normalisations use torch's epsilon.
TORCH_FRAMEWORKS = ("torch", "torchvision", "torchxrayvision")


@keras.saving.register_keras_serializable(package="can_tf")
class ImagePreprocessing(layers.Layer):
    """Maps RGB images in ``[0, 255]`` to the input range a backbone was trained with.

    Modes follow `keras.applications.imagenet_utils.preprocess_input`:

    - ``"torch"``: scale to ``[0, 1]``, then subtract the ImageNet mean and divide by its stddev
      per channel (DenseNet).
    - ``"caffe"``: RGB to BGR, then subtract the ImageNet BGR mean, no scaling (ResNet).
    - ``"tf"``: scale to ``[-1, 1]``.
    - ``"unit"``: scale to ``[0, 1]``.
    - ``"xrv"``: scale to ``[-1024, 1024]`` (``x / 255 * 2048 - 1024``), torchxrayvision's range.
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
        if self.mode == "xrv":
            # torchxrayvision's own order of operations (x / 255 * 2048 - 1024): the values come out
            # bit-identical to what its models were fed, where one fused multiply could be an ulp
            # (1.2e-4 at 1024) away.
            return images / 255.0 * (2.0 * XRV_RANGE) - XRV_RANGE
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


def _torchvision_bottleneck(x, filters: int, stride: int, shortcut_conv: bool, name: str):
    """One torchvision Bottleneck: 1x1 -> 3x3 (stride here: v1.5) -> 1x1 (4 * filters), plus shortcut."""
    bn = dict(axis=-1, epsilon=TORCH_BATCHNORM_EPSILON)
    if shortcut_conv:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_0_bn", **bn)(shortcut)
    else:
        shortcut = x
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_1_conv")(x)
    y = layers.BatchNormalization(name=f"{name}_1_bn", **bn)(y)
    y = layers.ReLU(name=f"{name}_1_relu")(y)
    # padding=1 on both sides as torch does; Keras' "same" pads a stride-2 convolution on one side only.
    y = layers.ZeroPadding2D(1, name=f"{name}_2_pad")(y)
    y = layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_2_bn", **bn)(y)
    y = layers.ReLU(name=f"{name}_2_relu")(y)
    y = layers.Conv2D(4 * filters, 1, use_bias=False, name=f"{name}_3_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_3_bn", **bn)(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def TorchvisionResNet(blocks, include_top: bool = False, weights: Optional[str] = None, input_tensor=None,
                      input_shape=None, name: str = "resnet_tv") -> keras.Model:
    """A ResNet in torchvision's layout (v1.5), for weights imported from PyTorch.

    Same `keras.applications` constructor signature and layer names as `keras.applications.ResNet50`
    (``conv1_conv``, ``conv2_block1_0_conv`` for the projection shortcut, ``..._1_conv`` ...
    ``..._3_conv``), but as torchvision builds it: convolutions without bias, the stride of a
    downsampling block on its 3x3 convolution, batch-norm epsilon ``1e-5``, and torch's symmetric
    padding made explicit (7x7 stride-2 convolution padded by 3; 3x3 stride-2 max-pool padded by 1
    with zeros, which after a ReLU equals torch's ``-inf`` padding).

    Args:
        blocks: bottleneck blocks per stage, ``(3, 4, 6, 3)`` for ResNet-50, ``(3, 4, 23, 3)`` for 101.
    """
    if include_top:
        raise ValueError(f"{name} has no classification top; use include_top=False")
    if weights is not None:
        raise ValueError(f"{name} is built without weights; import a PyTorch checkpoint "
                         f"(can-tf weights import) and load that file")
    inputs = input_tensor if input_tensor is not None else keras.Input(shape=input_shape)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(axis=-1, epsilon=TORCH_BATCHNORM_EPSILON, name="conv1_bn")(x)
    x = layers.ReLU(name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (count, filters) in enumerate(zip(blocks, (64, 128, 256, 512)), start=2):
        for block in range(1, count + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = _torchvision_bottleneck(x, filters, stride, shortcut_conv=block == 1,
                                        name=f"conv{stage}_block{block}")
    return keras.Model(keras.utils.get_source_inputs(inputs), x, name=name)


def ResNet50TV(include_top: bool = False, weights: Optional[str] = None, input_tensor=None, input_shape=None,
               name: str = "resnet50_tv") -> keras.Model:
    """torchvision's ResNet-50 layout (see :func:`TorchvisionResNet`)."""
    return TorchvisionResNet((3, 4, 6, 3), include_top, weights, input_tensor, input_shape, name)


def ResNet101TV(include_top: bool = False, weights: Optional[str] = None, input_tensor=None, input_shape=None,
                name: str = "resnet101_tv") -> keras.Model:
    """torchvision's ResNet-101 layout (see :func:`TorchvisionResNet`)."""
    return TorchvisionResNet((3, 4, 23, 3), include_top, weights, input_tensor, input_shape, name)


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
    # torchvision's layout, for imported PyTorch weights (torchvision, torchxrayvision); no Keras weights.
    "resnet50_tv": BackboneSpec(ResNet50TV, "resnet", "torch", 2048, imagenet=False),
    "resnet101_tv": BackboneSpec(ResNet101TV, "resnet", "torch", 2048, imagenet=False),
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
                   model_name: Optional[str] = None, *, preprocessing: Optional[str] = None,
                   batchnorm_epsilon: Optional[float] = None) -> keras.Model:
    """Builds a registered backbone taking ``(B, S, S, 3)`` RGB images in ``[0, 255]``.

    Args:
        name: a key of :data:`BACKBONES`.
        image_size: the square input size ``S`` in pixels (at least 32).
        weights: ``None`` (random initialisation), ``"imagenet"`` (downloaded by Keras where the
            internet is reachable), or the path of a weights file (see :func:`load_backbone_weights`).
            A file imported from PyTorch also sets ``preprocessing`` and ``batchnorm_epsilon``
            (see :func:`backbone_options`) unless they are given.
        model_name: the nested model's name; defaults to ``name``.
        preprocessing: the :class:`ImagePreprocessing` mode in front of the application, instead
            of the registry's (e.g. ``"xrv"`` for torchxrayvision weights).
        batchnorm_epsilon: the epsilon of every batch normalisation, instead of the
            application's (e.g. :data:`TORCH_BATCHNORM_EPSILON` for weights from PyTorch).

    Returns:
        A functional `keras.Model` ending in the backbone's last feature map
        ``(B, ceil(S / stride), ceil(S / stride), channels)``.

    Raises:
        ValueError: an unknown name or mode, a size below 32, or options that contradict the
            weights file's own.

    Example:
        >>> backbone = build_backbone("densenet121", image_size=64)
        >>> backbone.output.shape
        (None, 2, 2, 1024)
        >>> build_backbone("densenet121", 64, batchnorm_epsilon=1e-5).get_layer("bn").epsilon
        1e-05
    """
    spec = get_spec(name)
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels for backbone {name!r}, "
                         f"got {image_size}")
    given = {"preprocessing": preprocessing, "batchnorm_epsilon": batchnorm_epsilon}
    for key, needed in backbone_options(weights).items():
        if given[key] is not None and given[key] != needed:
            raise ValueError(f"backbone {name!r}: {key}={given[key]!r} contradicts the weights file "
                             f"{os.fspath(weights)}, which needs {key}={needed!r}")
        given[key] = needed
    preprocessing, batchnorm_epsilon = given["preprocessing"], given["batchnorm_epsilon"]
    mode = spec.preprocessing if preprocessing is None else preprocessing
    if mode not in PREPROCESSING_MODES:
        raise ValueError(f"backbone {name!r}: preprocessing must be one of "
                         f"{', '.join(map(repr, PREPROCESSING_MODES))}; got {mode!r}")
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=f"{name}_input")
    x = inputs
    if mode != "none":
        x = ImagePreprocessing(mode, dtype="float32", name="preprocessing")(x)
    # Always built without weights: a saved model is rebuilt from its config the same way before
    # its own weights are loaded, so the graph must not depend on where the weights came from.
    application = spec.constructor(include_top=False, weights=None, input_tensor=x,
                                   input_shape=(image_size, image_size, 3), **spec.kwargs)
    backbone = keras.Model(inputs, application.output, name=model_name or name)
    if batchnorm_epsilon is not None:
        if not batchnorm_epsilon > 0:
            raise ValueError(f"backbone {name!r}: batchnorm_epsilon must be positive, got {batchnorm_epsilon!r}")
        # The layers read their epsilon when called and write it into their config, so this
        # holds for the graph built above and for a saved-and-reloaded backbone.
        for layer in _batch_norm_layers(backbone):
            layer.epsilon = float(batchnorm_epsilon)
    if weights is not None:
        load_backbone_weights(backbone, name, weights)
    return backbone


def backbone_options(weights) -> dict:
    """The :func:`build_backbone` options a weights file needs: ``{}`` or some of
    ``{"preprocessing": mode, "batchnorm_epsilon": eps}``.

    A file imported from PyTorch carries a :class:`can_tf.models.weights_info.WeightsInfo`: its
    ``preprocessing`` mode, and PyTorch's batch-norm epsilon for every framework that is PyTorch
    (``torchvision``, ``torchxrayvision``, ``torch``). ``None``, ``"imagenet"`` and plain Keras
    weights files need nothing. A model that builds its backbones from its own config (CANModel,
    BaselineModel) must store these options with it, so that a reloaded model computes the same.

    Example:
        >>> backbone_options(None), backbone_options("imagenet")
        ({}, {})
    """
    if not isinstance(weights, (str, os.PathLike)) or weights == "imagenet" or not os.path.isfile(weights):
        return {}
    info = read_weights_info(weights)
    if info is None:
        return {}
    options = {"preprocessing": info.preprocessing}
    if info.framework in TORCH_FRAMEWORKS:
        options["batchnorm_epsilon"] = TORCH_BATCHNORM_EPSILON
    return options


def _batch_norm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_batch_norm_layers(layer))
    return found


def _check_backbone_fits_options(backbone: keras.Model, name: str, weights) -> None:
    """A weights file imported from PyTorch only computes what it should in a backbone built with
    its preprocessing and epsilon; loading it into any other would be silently wrong."""
    info = read_weights_info(weights)
    if info is None:
        return
    path = os.fspath(weights)
    if info.backbone != name:
        raise ValueError(f"weights file {path} was imported for backbone {info.backbone!r}, not {name!r}")
    try:
        mode = backbone.get_layer("preprocessing").mode
    except ValueError:
        mode = "none"
    needed = backbone_options(weights)
    epsilons = {layer.epsilon for layer in _batch_norm_layers(backbone)}
    wrong = []
    if mode != needed["preprocessing"]:
        wrong.append(f"preprocessing {mode!r} (needs {needed['preprocessing']!r})")
    if "batchnorm_epsilon" in needed and epsilons != {needed["batchnorm_epsilon"]}:
        wrong.append(f"batch-norm epsilon {sorted(epsilons)} (needs {needed['batchnorm_epsilon']!r})")
    if wrong:
        raise ValueError(f"weights file {path} does not fit backbone {name!r} ({backbone.name}) as built: "
                         f"{'; '.join(wrong)}; build it with build_backbone(..., "
                         f"**backbone_options({path!r}))")


def load_backbone_weights(backbone: keras.Model, name: str, weights: str) -> None:
    """Loads pretrained weights into a backbone made by :func:`build_backbone`.

    ``"imagenet"`` builds the Keras application with ``weights="imagenet"`` (Keras downloads and
    caches the file) and copies its weights layer by layer. A file path is loaded with
    `keras.Model.load_weights`: a ``.weights.h5`` file saved from a backbone built here, or a
    Keras-applications ``*_notop.h5`` file (matched in the application's layer order, as Keras
    itself loads them). Nothing is skipped silently: a file that does not fit raises, and so does
    a file imported from PyTorch into a backbone not built with its :func:`backbone_options`.

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
    _check_backbone_fits_options(backbone, name, weights)
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
