"""BaselineModel (CheXNet with DenseNet-121): outputs, views, config and .keras round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from can_tf.config import RunConfig  # noqa: E402
from can_tf.models import (  # noqa: E402
    BaselineModel,
    attention_model,
    build_model,
    feature_layer_names,
    inference_model,
)

RNG = np.random.RandomState(0)


def _images(n, size, channels=1):
    return RNG.uniform(0, 255, (n, size, size, channels)).astype("float32")


@pytest.fixture(scope="module")
def tiny_baseline():
    return BaselineModel(backbone="tiny", num_classes=6, image_size=64)


def test_outputs_fused_logits_only(tiny_baseline):
    out = tiny_baseline(_images(2, 64))
    assert list(out) == ["fused"] and tiny_baseline.output_names == ["fused"]
    assert tuple(out["fused"].shape) == (2, 6) and out["fused"].dtype == "float32"
    assert feature_layer_names(tiny_baseline) == ["features"]
    assert tiny_baseline.get_layer("features").output.shape == (None, 8, 8, 64)


def test_inference_view_and_no_attention(tiny_baseline):
    x = _images(2, 64)
    view = inference_model(tiny_baseline)
    fused = np.asarray(tiny_baseline(x)["fused"])
    np.testing.assert_allclose(np.asarray(view(x)), 1 / (1 + np.exp(-fused)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="has no cross-attention layer"):
        attention_model(tiny_baseline)


def test_config_and_keras_file_round_trip(tiny_baseline, tmp_path):
    config = json.loads(json.dumps(tiny_baseline.get_config()))
    assert config["backbone"] == "tiny" and config["num_classes"] == 6
    assert BaselineModel.from_config(config).get_config() == tiny_baseline.get_config()
    path = str(tmp_path / "baseline.keras")
    tiny_baseline.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, BaselineModel)
    x = _images(2, 64)
    np.testing.assert_array_equal(np.asarray(loaded(x)["fused"]), np.asarray(tiny_baseline(x)["fused"]))


def test_mixed_precision_logits_stay_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = BaselineModel(backbone="tiny", num_classes=3, image_size=32, dropout=0.2)
        assert model.get_layer("features").compute_dtype == "bfloat16"
        out = model(_images(2, 32))["fused"]
        assert out.dtype == "float32" and np.isfinite(np.asarray(out)).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_build_model_from_the_small_baseline_preset():
    config = RunConfig.from_preset("small-baseline")
    model = build_model(config.model, num_classes=config.num_classes, image_size=config.data.image_size)
    assert isinstance(model, BaselineModel) and model.backbone == "tiny"
    assert tuple(model(_images(1, 64))["fused"].shape) == (1, 14)


@pytest.mark.slow
def test_chexnet_preset_is_a_densenet121_baseline():
    config = RunConfig.from_preset("chexnet", overrides=["model.weights=null"])
    model = build_model(config.model, num_classes=config.num_classes, image_size=64)
    assert isinstance(model, BaselineModel) and model.backbone == "densenet121"
    backbone = model.get_layer("backbone")
    assert backbone.output.shape == (None, 2, 2, 1024)
    # The head is one Dense layer: 1024 x 14 weights + 14 biases.
    assert model.count_params() == backbone.count_params() + 1024 * 14 + 14
