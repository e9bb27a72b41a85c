"""tf-keras-vis Grad-CAM runs on the CAN and baseline inference views."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf_keras_vis")

from tf_keras_vis.gradcam import Gradcam  # noqa: E402
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear  # noqa: E402
from tf_keras_vis.utils.scores import CategoricalScore  # noqa: E402

from can_tf.models import BaselineModel, CANModel, feature_layer_names, inference_model  # noqa: E402

SIZE = 64


def _images(n):
    return np.random.RandomState(0).uniform(0, 255, (n, SIZE, SIZE, 1)).astype("float32")


def _gradcam(model, layer, **kwargs):
    view = inference_model(model)
    # ReplaceToLinear turns the sigmoid of the 'probabilities' layer into identity on a clone, so
    # the score is the class logit; the original model keeps its sigmoid.
    gradcam = Gradcam(view, model_modifier=ReplaceToLinear(), clone=True)
    cam = gradcam(CategoricalScore(2), _images(2), penultimate_layer=layer,
                  seek_penultimate_conv_layer=False, **kwargs)
    assert view.get_layer("probabilities").activation is keras.activations.sigmoid
    return np.asarray(cam)


def _check(cam):
    assert cam.shape == (2, SIZE, SIZE)  # upsampled to the input's spatial size
    assert np.isfinite(cam).all()
    for single in cam:
        assert single.std() > 0  # a real map, not a constant


@pytest.mark.parametrize("layer", ["branch_1_features", "branch_2_features"])
def test_gradcam_on_can(layer):
    model = CANModel(backbones=("tiny", "tiny"), num_classes=4, image_size=SIZE, attention_dim=8)
    assert layer in feature_layer_names(model)
    # Raw class-activation maps (no ReLU, no normalisation) of a random model are non-constant.
    _check(_gradcam(model, layer, activation_modifier=None, normalize_cam=False))
    normalised = _gradcam(model, layer)
    assert np.isfinite(normalised).all() and normalised.min() >= 0 and normalised.max() <= 1


def test_gradcam_on_baseline():
    model = BaselineModel(backbone="tiny", num_classes=4, image_size=SIZE)
    _check(_gradcam(model, "features", activation_modifier=None, normalize_cam=False))
