"""CANModel: outputs, views, config and .keras round trips, mixed precision, build_model."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from can_tf.config import ConfigError, ModelConfig, RunConfig  # noqa: E402
from can_tf.models import (  # noqa: E402
    CANModel,
    attention_model,
    build_model,
    feature_layer_names,
    inference_model,
)

RNG = np.random.RandomState(0)
OUTPUTS = ["branch_1", "branch_2", "fused"]


def _images(n, size, channels=1):
    return RNG.uniform(0, 255, (n, size, size, channels)).astype("float32")


def _assert_same_outputs(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


@pytest.fixture(scope="module")
def tiny_can():
    return CANModel(backbones=("tiny", "tiny"), num_classes=5, image_size=64, attention_dim=16)


def test_outputs_are_a_dict_of_float32_logits(tiny_can):
    out = tiny_can(_images(3, 64))
    assert sorted(out) == OUTPUTS
    assert sorted(tiny_can.output_names) == OUTPUTS  # layer names equal the dict keys
    for key in OUTPUTS:
        assert tuple(out[key].shape) == (3, 5)
        assert out[key].dtype == "float32"
    # Logits, not probabilities: an untrained head gives values of both signs.
    assert (np.asarray(out["fused"]) < 0).any() or (np.asarray(out["fused"]) > 1).any()


def test_layer_names_are_unique_and_documented(tiny_can):
    names = [layer.name for layer in tiny_can.layers]
    assert len(names) == len(set(names))
    for name in ("image", "grayscale_to_rgb", "branch_1_backbone", "branch_2_backbone", "cross_attention",
                 "branch_1_features", "branch_2_features"):
        assert name in names
    assert feature_layer_names(tiny_can) == ["branch_1_features", "branch_2_features"]


def test_inference_model_gives_sigmoid_of_fused(tiny_can):
    x = _images(2, 64)
    view = inference_model(tiny_can)
    assert view.output_names == ["probabilities"]
    probabilities = np.asarray(view(x))
    assert probabilities.shape == (2, 5) and probabilities.dtype == np.float32
    fused = np.asarray(tiny_can(x)["fused"])
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-fused)), rtol=1e-5, atol=1e-6)
    # Same layers, same weights: no copy was made.
    assert view.get_layer("cross_attention") is tiny_can.get_layer("cross_attention")
    assert inference_model(view) is view


def test_attention_model_shape_and_range(tiny_can):
    attention = np.asarray(attention_model(tiny_can)(_images(2, 64)))
    assert attention.shape == (2, 8, 8, 1)  # tiny backbone: 64 px / stride 8
    assert attention.dtype == np.float32
    assert ((attention > 0) & (attention < 1)).all()


def test_get_config_json_round_trip(tiny_can):
    config = json.loads(json.dumps(tiny_can.get_config()))
    assert config["backbones"] == ["tiny", "tiny"] and config["attention_dim"] == 16
    clone = CANModel.from_config(config)
    assert clone.get_config() == tiny_can.get_config()
    assert clone.count_params() == tiny_can.count_params()


def test_keras_file_round_trip(tiny_can, tmp_path):
    x = _images(2, 64)
    path = str(tmp_path / "can.keras")
    tiny_can.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True by default
    assert isinstance(loaded, CANModel)
    assert loaded.get_config() == tiny_can.get_config()
    _assert_same_outputs(tiny_can(x), loaded(x))
    # The inference view of the loaded model also round-trips as a plain functional model.
    view_path = str(tmp_path / "view.keras")
    inference_model(loaded).save(view_path)
    view = keras.saving.load_model(view_path)
    np.testing.assert_array_equal(np.asarray(view(x)), np.asarray(inference_model(tiny_can)(x)))


def test_dropout_is_only_active_in_training():
    model = CANModel(backbones=("tiny", "tiny"), num_classes=3, image_size=32, attention_dim=8, dropout=0.5)
    x = _images(4, 32)
    _assert_same_outputs(model(x, training=False), model(x, training=False))
    assert not np.allclose(np.asarray(model(x, training=True)["fused"]), np.asarray(model(x)["fused"]))
    assert "fused_dropout" in [layer.name for layer in model.layers]


def test_grayscale_input_equals_replicated_rgb():
    gray = CANModel(backbones=("tiny", "tiny"), num_classes=3, image_size=32, attention_dim=8, input_channels=1)
    rgb = CANModel(backbones=("tiny", "tiny"), num_classes=3, image_size=32, attention_dim=8, input_channels=3)
    rgb.set_weights(gray.get_weights())
    x = _images(2, 32, 1)
    _assert_same_outputs(gray(x), rgb(np.repeat(x, 3, axis=-1)))
    with pytest.raises(ValueError, match="input_channels must be 1"):
        CANModel(backbones=("tiny", "tiny"), image_size=32, input_channels=4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_forward_is_finite_float32(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = CANModel(backbones=("tiny", "tiny"), num_classes=4, image_size=64, attention_dim=8)
        assert model.get_layer("cross_attention").compute_dtype == policy.split("_")[1]
        out = model(_images(2, 64))
        for key in OUTPUTS:
            assert out[key].dtype == "float32"
            assert np.isfinite(np.asarray(out[key])).all()
        assert inference_model(model)(_images(1, 64)).dtype == "float32"
        assert attention_model(model)(_images(1, 64)).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_backbones_with_different_grids():
    """tiny (stride 8) + MobileNetV3 (stride 32): the attention lives on the first branch's grid."""
    model = CANModel(backbones=("tiny", "mobilenetv3small"), num_classes=3, image_size=64, attention_dim=8)
    f1, f2, attention = model.get_layer("cross_attention").output
    assert f1.shape == (None, 8, 8, 64) and f2.shape == (None, 2, 2, 576) and attention.shape == (None, 8, 8, 1)
    out = model(_images(2, 64))
    assert all(tuple(out[k].shape) == (2, 3) for k in OUTPUTS)


def test_densenet121_resnet50_pair():
    """The heterogeneous preset's pair: feature maps of 1024 and 2048 channels."""
    model = CANModel(backbones=("densenet121", "resnet50"), num_classes=14, image_size=32, attention_dim=16)
    assert model.get_layer("branch_1_backbone").output.shape == (None, 1, 1, 1024)
    assert model.get_layer("branch_2_backbone").output.shape == (None, 1, 1, 2048)
    out = model(_images(2, 32))
    for key in OUTPUTS:
        assert tuple(out[key].shape) == (2, 14)
        assert np.isfinite(np.asarray(out[key])).all()


@pytest.mark.slow
def test_densenet_can_keras_round_trip(tmp_path):
    model = CANModel(backbones=("densenet121", "densenet121"), num_classes=14, image_size=64, attention_dim=32)
    x = _images(2, 64)
    path = str(tmp_path / "densenet_can.keras")
    model.save(path)
    _assert_same_outputs(model(x), keras.saving.load_model(path)(x))


@pytest.mark.slow
def test_inference_view_exports_as_saved_model(tiny_can, tmp_path):
    import tensorflow as tf

    view = inference_model(tiny_can)
    path = str(tmp_path / "saved_model")
    view.export(path, verbose=False)
    x = _images(2, 64)
    loaded = tf.saved_model.load(path)  # keep a reference: its functions need its variables alive
    served = loaded.serve(tf.constant(x))
    np.testing.assert_allclose(np.asarray(served), np.asarray(view(x)), rtol=1e-6, atol=1e-6)


def test_build_model_from_the_small_preset():
    config = RunConfig.from_preset("small")
    model = build_model(config.model, num_classes=config.num_classes, image_size=config.data.image_size)
    assert isinstance(model, CANModel)
    assert model.backbones == ["tiny", "tiny"] and model.attention_dim == config.model.attention_dim
    assert tuple(model.input.shape) == (None, 64, 64, 1)
    assert tuple(model(_images(1, 64))["fused"].shape) == (1, 14)


def test_build_model_loads_a_weights_file_into_both_branches(tmp_path):
    from can_tf.models.backbones import build_backbone

    source = build_backbone("tiny", 32)
    source.set_weights([w + RNG.normal(0, 0.1, w.shape).astype(w.dtype) for w in source.get_weights()])
    path = str(tmp_path / "tiny.weights.h5")
    source.save_weights(path)
    config = ModelConfig(kind="can", backbones=["tiny", "tiny"], weights=path, attention_dim=8)
    model = build_model(config, num_classes=3, image_size=32)
    for branch in ("branch_1_backbone", "branch_2_backbone"):
        for a, b in zip(source.get_weights(), model.get_layer(branch).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_build_model_rejects_bad_configs():
    with pytest.raises(ConfigError, match="model.backbones"):
        build_model(ModelConfig(kind="can", backbones=["tiny"], weights=None), num_classes=3, image_size=32)
    with pytest.raises(ConfigError, match="model.backbones must be one of"):
        build_model(ModelConfig(kind="can", backbones=["tiny", "vgg16"], weights=None), 3, 32)
    with pytest.raises(ValueError, match="exactly two backbones"):
        CANModel(backbones=("tiny",), image_size=32)
