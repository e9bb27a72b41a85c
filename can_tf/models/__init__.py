"""Models: the backbone registry, the cross-attention layer, CAN and the single-backbone baseline.

All models take float32 images ``(B, S, S, input_channels)`` with values in ``[0, 255]`` and output
a dict of logits: ``{"fused", "branch_1", "branch_2"}`` for CAN, ``{"fused"}`` for the baseline.
:func:`inference_model` gives the single-output view (probabilities) used for prediction,
explanation, export and serving.

Example:
    >>> import numpy as np
    >>> from can_tf.config import RunConfig
    >>> from can_tf.models import build_model, inference_model
    >>> cfg = RunConfig.from_preset("small")
    >>> model = build_model(cfg.model, num_classes=cfg.num_classes, image_size=cfg.data.image_size)
    >>> probabilities = inference_model(model)(np.zeros((2, 64, 64, 1), "float32"))
    >>> tuple(probabilities.shape)
    (2, 14)
"""

from __future__ import annotations

import os

import keras
import numpy as np

from can_tf.models.backbones import BACKBONES, backbone_options, build_backbone, load_backbone_weights
from can_tf.models.baseline import BaselineModel
from can_tf.models.can_model import CANModel
from can_tf.models.cross_attention import CrossAttention

__all__ = [
    "BACKBONES",
    "BaselineModel",
    "CANModel",
    "CrossAttention",
    "attention_model",
    "backbone_options",
    "branch_backbone_options",
    "build_backbone",
    "build_model",
    "feature_layer_names",
    "fused_logits",
    "inference_model",
    "resolve_weights",
]


def build_model(model_config, num_classes: int, image_size: int) -> keras.Model:
    """Builds the model a :class:`can_tf.config.ModelConfig` describes, with its backbone weights.

    ``model_config.kind='can'`` gives a :class:`CANModel` over ``model_config.backbones`` (two
    names), ``'baseline'`` a :class:`BaselineModel` over the one name. ``model_config.weights``
    (``'imagenet'``, a weights file, ``'xrv:<name>'``, None, or a list with one of those per
    backbone) initialises each backbone. Weights imported from PyTorch need the input scaling and
    batch-norm epsilon they were trained with (:func:`can_tf.models.backbones.backbone_options`):
    each branch is built with its file's options, and the model keeps them in its config, so a
    saved model rebuilds the same graph. A file that does not fit a backbone raises a ValueError
    naming both.

    Raises:
        can_tf.config.ConfigError: a config field is invalid (the message names it).
        can_tf.errors.ModelFileError: ``xrv:`` weights that cannot be downloaded (the message
            names the URL and where to put the file) or imported.

    Example:
        >>> from can_tf.config import ModelConfig
        >>> model = build_model(ModelConfig(kind="baseline", backbones=["tiny"], weights=None),
        ...                     num_classes=3, image_size=32)
        >>> sorted(model.output_names)
        ['fused']
    """
    model_config.validate()
    names = list(model_config.backbones)
    weights = [resolve_weights(entry, name) for entry, name in zip(model_config.branch_weights(), names)]
    options = [backbone_options(w) for w in weights]
    if model_config.kind == "can":
        model = CANModel(backbones=names, num_classes=num_classes, image_size=image_size,
                         input_channels=model_config.input_channels, attention_dim=model_config.attention_dim,
                         dropout=model_config.dropout, backbone_options=options)
    else:
        model = BaselineModel(backbone=names[0], num_classes=num_classes, image_size=image_size,
                              input_channels=model_config.input_channels, dropout=model_config.dropout,
                              backbone_options=options[0])
    for (name, backbone), source in zip(_backbones(model), weights):
        if source is not None:
            load_backbone_weights(backbone, name, source)
    return model


def resolve_weights(entry, backbone: str):
    """One branch's ``model.weights`` entry as :func:`load_backbone_weights` takes it.

    ``None`` and ``"imagenet"`` stay as they are, a file path becomes a ``str``, and
    ``"xrv:<name>"`` becomes the imported ``.weights.h5`` of torchxrayvision's named weights in
    :func:`can_tf.models.torch_import.weights_cache_dir` (downloaded and imported on first use,
    which needs PyTorch; later builds read the cached file).

    Example:
        >>> resolve_weights(None, "tiny"), resolve_weights("imagenet", "densenet121")
        (None, 'imagenet')
    """
    from can_tf.config import NAMED_WEIGHTS_PREFIX

    if entry is None:
        return None
    entry = os.fspath(entry)
    if entry.startswith(NAMED_WEIGHTS_PREFIX):
        from can_tf.models.torch_import import resolve_named_weights

        return os.fspath(resolve_named_weights(entry[len(NAMED_WEIGHTS_PREFIX):], backbone))
    return entry


def branch_backbone_options(model: keras.Model) -> list:
    """The :func:`build_backbone` options of each branch of a CAN or baseline model (``[{}]`` for
    a baseline built with the registry's own), e.g. to record which input scaling a run used.

    Example:
        >>> branch_backbone_options(CANModel(backbones=("tiny", "tiny"), num_classes=2, image_size=32))
        [{}, {}]
    """
    if isinstance(model, CANModel):
        return [dict(o) for o in model.backbone_options]
    if isinstance(model, BaselineModel):
        return [dict(model.backbone_options)]
    raise ValueError(f"expected a CANModel or BaselineModel, got {type(model).__name__}")


def fused_logits(model: keras.Model):
    """The symbolic fused logits ``(B, C)`` of a CAN or baseline model, or of its inference view.

    A training model's ``"fused"`` output; for a model ending in the ``probabilities`` sigmoid
    (what :func:`inference_model` builds, the run's ``model.keras``), the tensor that sigmoid reads.

    Raises:
        ValueError: naming the model, when neither is there.
    """
    outputs = model.output
    if isinstance(outputs, dict):
        if "fused" not in outputs:
            raise ValueError(f"model {model.name!r} has no 'fused' output; outputs: {sorted(outputs)}")
        return outputs["fused"]
    if model.output_names == ["probabilities"]:
        layer = model.get_layer("probabilities")
        if isinstance(layer, keras.layers.Activation):
            return layer.input
    raise ValueError(f"model {model.name!r} must output a dict of logits with a 'fused' entry "
                     f"(CANModel, BaselineModel), got {outputs!r}")


def inference_model(model: keras.Model, temperatures=None) -> keras.Model:
    """The single-output view of a CAN or baseline model: image -> probabilities.

    A plain functional `keras.Model` sharing the layers (and so the weights) of ``model``, with one
    output ``(B, C)`` float32 = ``sigmoid(fused logits / T)`` from a layer named ``probabilities``.
    ``temperatures`` (``C`` positive floats, see :mod:`can_tf.evaluation.calibration`) divide the
    logits before the sigmoid; without them (or with all 1) this is ``sigmoid(fused logits)``, and a
    model that already ends in ``probabilities`` is returned unchanged. This is what prediction,
    Grad-CAM, export and serving use.

    Example:
        >>> model = CANModel(backbones=("tiny", "tiny"), num_classes=14, image_size=64)
        >>> inference_model(model).output_names
        ['probabilities']
    """
    scale = None if temperatures is None else np.asarray(temperatures, dtype=np.float32)
    if scale is not None and np.all(scale == 1.0):
        scale = None
    if scale is None and not isinstance(model.output, dict) and model.output_names == ["probabilities"]:
        return model
    logits = fused_logits(model)
    if scale is not None:
        logits = keras.ops.divide(keras.ops.cast(logits, "float32"), scale)
    probabilities = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    return keras.Model(model.input, probabilities, name=f"{model.name}_inference")


def attention_model(model: keras.Model) -> keras.Model:
    """The cross-attention map of a CAN model: image -> ``(B, h, w, 1)`` float32 in (0, 1).

    ``h x w`` is the first branch's feature grid (7x7 for DenseNet-121 at 224 px). Shares the
    layers of ``model``.

    Raises:
        ValueError: ``model`` has no ``cross_attention`` layer (e.g. a baseline).
    """
    try:
        layer = model.get_layer("cross_attention")
    except ValueError:
        raise ValueError(f"model {model.name!r} has no cross-attention layer (a baseline has none)") from None
    attention = keras.layers.Activation("linear", dtype="float32", name="attention_map")(layer.output[2])
    return keras.Model(model.input, attention, name=f"{model.name}_attention")


def feature_layer_names(model: keras.Model) -> list:
    """Names of the layers whose outputs are the feature maps to explain (Grad-CAM targets).

    CAN: the attended maps ``['branch_1_features', 'branch_2_features']``; baseline:
    ``['features']``. The same layers exist in :func:`inference_model`'s view. With tf-keras-vis,
    pass one as ``penultimate_layer`` together with ``seek_penultimate_conv_layer=False`` (the
    backbones are nested models, which its automatic search cannot reach into).
    """
    names = [n for n in ("branch_1_features", "branch_2_features", "features")
             if any(layer.name == n for layer in model.layers)]
    if not names:
        raise ValueError(f"model {model.name!r} has none of the feature layers of a CAN or baseline model")
    return names


def _backbones(model: keras.Model) -> list:
    """``(registry name, nested backbone model)`` for each branch of a CAN or baseline model."""
    if isinstance(model, CANModel):
        return [(name, model.get_layer(f"branch_{i}_backbone")) for i, name in enumerate(model.backbones, 1)]
    if isinstance(model, BaselineModel):
        return [(model.backbone, model.get_layer("backbone"))]
    raise ValueError(f"expected a CANModel or BaselineModel, got {type(model).__name__}")
