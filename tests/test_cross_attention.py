"""CrossAttention: shapes, the maths against NumPy, serialisation and mixed precision."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from can_tf.models.cross_attention import CrossAttention  # noqa: E402

RNG = np.random.RandomState(0)


def _features(*shape):
    return RNG.normal(0, 1, shape).astype("float32")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _conv1x1(x, layer):
    kernel, bias = (np.asarray(w) for w in layer.get_weights())
    return np.einsum("bhwc,cd->bhwd", x, kernel[0, 0]) + bias


def test_shapes_same_and_different_grids():
    layer = CrossAttention(attention_dim=8)
    f1, f2 = _features(2, 4, 4, 16), _features(2, 4, 4, 24)
    out = layer([f1, f2])
    assert [tuple(t.shape) for t in out] == [(2, 4, 4, 16), (2, 4, 4, 24), (2, 4, 4, 1)]

    hetero = CrossAttention(attention_dim=8)
    f2_small = _features(2, 2, 2, 32)
    out = hetero([f1, f2_small])
    assert [tuple(t.shape) for t in out] == [(2, 4, 4, 16), (2, 2, 2, 32), (2, 4, 4, 1)]
    assert hetero.compute_output_shape([(None, 4, 4, 16), (None, 2, 2, 32)]) == (
        (None, 4, 4, 16), (None, 2, 2, 32), (None, 4, 4, 1))


def test_neutral_attention_scales_features_by_one_and_a_half():
    """Zero attention logits give A = sigmoid(0) = 0.5, so F' = F + 0.5 F = 1.5 F."""
    layer = CrossAttention(attention_dim=4)
    f1, f2 = _features(1, 3, 3, 5), _features(1, 3, 3, 7)
    layer([f1, f2])
    layer.attention_logits.set_weights([np.zeros((1, 1, 4, 1), "float32"), np.zeros((1,), "float32")])
    a1, a2, attention = (np.asarray(t) for t in layer([f1, f2]))
    np.testing.assert_allclose(attention, 0.5)
    np.testing.assert_allclose(a1, 1.5 * f1, rtol=1e-6)
    np.testing.assert_allclose(a2, 1.5 * f2, rtol=1e-6)


def test_matches_numpy_reference():
    layer = CrossAttention(attention_dim=6)
    f1, f2 = _features(2, 3, 3, 5), _features(2, 3, 3, 4)
    a1, a2, attention = (np.asarray(t) for t in layer([f1, f2]))
    product = _conv1x1(f1, layer.projection_1) * _conv1x1(f2, layer.projection_2)
    expected_attention = _sigmoid(_conv1x1(product, layer.attention_logits))
    np.testing.assert_allclose(attention, expected_attention, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a1, f1 * (1 + expected_attention), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a2, f2 * (1 + expected_attention), rtol=1e-5, atol=1e-6)
    assert ((attention > 0) & (attention < 1)).all()
    assert attention.std() > 0  # a real spatial map, not a constant


def test_different_grids_resize_the_second_branch():
    """A spatially constant F2 stays constant when resized, so the reference is exact."""
    layer = CrossAttention(attention_dim=6)
    f1 = _features(2, 4, 4, 5)
    f2 = np.broadcast_to(_features(2, 1, 1, 3), (2, 2, 2, 3)).copy()
    a1, a2, attention = (np.asarray(t) for t in layer([f1, f2]))
    p2 = _conv1x1(f2[:, :1, :1], layer.projection_2)  # (2, 1, 1, d), broadcast over F1's 4x4 grid
    expected_attention = _sigmoid(_conv1x1(_conv1x1(f1, layer.projection_1) * p2, layer.attention_logits))
    np.testing.assert_allclose(attention, expected_attention, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a1, f1 * (1 + expected_attention), rtol=1e-5, atol=1e-6)
    # F2' keeps F2's own 2x2 grid; the attention map is resized onto it.
    resized = np.asarray(keras.ops.image.resize(expected_attention, (2, 2), interpolation="bilinear"))
    np.testing.assert_allclose(a2, f2 * (1 + resized), rtol=1e-5, atol=1e-6)


def test_get_config_json_round_trip():
    layer = CrossAttention(attention_dim=12, name="xattn")
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, CrossAttention)
    assert clone.get_config() == layer.get_config()
    assert clone.attention_dim == 12 and clone.name == "xattn"


def test_keras_file_round_trip_in_a_functional_model(tmp_path):
    in_1, in_2 = keras.Input((4, 4, 8)), keras.Input((2, 2, 6))
    model = keras.Model([in_1, in_2], CrossAttention(attention_dim=4, name="xattn")([in_1, in_2]))
    path = str(tmp_path / "xattn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True by default
    inputs = [_features(2, 4, 4, 8), _features(2, 2, 2, 6)]
    for a, b in zip(model(inputs), loaded(inputs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("policy, dtype", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision(policy, dtype):
    f1, f2 = _features(2, 4, 4, 16), _features(2, 2, 2, 8)
    reference = CrossAttention(attention_dim=8)
    expected = [np.asarray(t) for t in reference([f1, f2])]
    layer = CrossAttention(attention_dim=8, dtype=policy)
    layer([f1, f2])
    layer.set_weights(reference.get_weights())
    out = layer([f1, f2])
    assert layer.projection_1.compute_dtype == dtype
    assert all(t.dtype == dtype for t in out)
    for got, want in zip(out, expected):
        got = np.asarray(keras.ops.cast(got, "float32"))
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="attention_dim must be a positive integer"):
        CrossAttention(attention_dim=0)
    with pytest.raises(ValueError, match="takes two feature maps"):
        CrossAttention().build([(None, 4, 4, 8)])
    with pytest.raises(ValueError, match="feature map 2 must have a known"):
        CrossAttention().build([(None, 4, 4, 8), (None, None, None, 8)])
