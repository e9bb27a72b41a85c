"""Losses: hand-computed values, NaN masking, stability, reductions, serialisation, compile/fit.

Constants used in the hand arithmetic below (p = sigmoid(z)):
    ln 2 = 0.693147                      (z = 0 -> p = 0.5, -log p = -log(1 - p) = ln 2)
    z = 2: p = 0.880797, 1 - p = 0.119203, -log p = 0.126928, -log(1 - p) = 2.126928
    z = +-100: -log p(100) ~ 4e-44 ~ 0, -log(1 - p(100)) = 100 (and mirrored for -100)
"""

import doctest
import importlib
import math
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras

from can_tf.config import ConfigError, LossConfig
from can_tf.losses import (
    LOSSES,
    PREVALENCE_EPSILON,
    BalanceLoss,
    BCELoss,
    CANLoss,
    FocalLoss,
    WeightedBCELoss,
    balance_loss,
    build_loss,
    focal_loss,
    get_loss,
    masked_binary_crossentropy,
)

LN2 = 0.6931471805599453
OUTPUTS = ("fused", "branch_1", "branch_2")


def value(loss, y, z, **kwargs):
    return float(loss(np.asarray(y, "float32"), np.asarray(z, "float32"), **kwargs))


# One constructor per loss, taking the prevalence, so that the generic tests cover every loss.
SINGLE_OUTPUT_LOSSES = {
    "bce": lambda pi: BCELoss(),
    "weighted_bce": lambda pi: WeightedBCELoss(pi),
    "focal": lambda pi: FocalLoss(gamma=2.0, alpha=0.25),
    "balance": lambda pi: BalanceLoss(pi, gamma=2.0),
}


# ---- hand-computed values ------------------------------------------------------------------------
def test_bce_hand_values_and_agrees_with_keras():
    y = [[1, 0], [1, 0]]
    z = [[0, 0], [2, 2]]
    # sample 0: both terms ln 2 -> 0.693147
    # sample 1: (-log p(2) + -log(1 - p(2))) / 2 = (0.126928 + 2.126928) / 2 = 1.126928
    # batch mean: (0.693147 + 1.126928) / 2 = 0.910038
    assert value(BCELoss(), y, z) == pytest.approx(0.910038, abs=1e-5)
    reference = keras.losses.BinaryCrossentropy(from_logits=True)
    assert value(BCELoss(), y, z) == pytest.approx(value(reference, y, z), rel=1e-6)


def test_weighted_bce_hand_values():
    # pi = (0.2, 0.5): class 0 positive weight 1 - 0.2 = 0.8, class 1 negative weight 0.5.
    # y = (1, 0), z = (0, 0): (0.8 * ln 2 + 0.5 * ln 2) / 2 = (0.554518 + 0.346574) / 2 = 0.450546
    assert value(WeightedBCELoss([0.2, 0.5]), [[1, 0]], [[0, 0]]) == pytest.approx(0.450546, abs=1e-6)


def test_balance_loss_hand_values():
    loss = BalanceLoss([0.2, 0.2], gamma=2.0)
    # y = 1, z = 0: beta+ = 0.8, (1 - 0.5)^2 = 0.25 -> 0.8 * 0.25 * 0.693147 = 0.138629
    assert value(loss, [[1, 1]], [[0, 0]]) == pytest.approx(0.138629, abs=1e-6)
    # y = 0, z = 0: beta- = 0.2, 0.5^2 = 0.25 -> 0.2 * 0.25 * 0.693147 = 0.034657
    assert value(loss, [[0, 0]], [[0, 0]]) == pytest.approx(0.034657, abs=1e-6)
    # one of each: (0.138629 + 0.034657) / 2 = 0.086643
    assert value(loss, [[1, 0]], [[0, 0]]) == pytest.approx(0.086643, abs=1e-6)


def test_balance_loss_beta_term_alone():
    # gamma = 0 leaves only beta: y = 1 -> 0.8 * ln 2 = 0.554518; y = 0 -> 0.2 * ln 2 = 0.138629
    loss = BalanceLoss([0.2], gamma=0.0)
    assert value(loss, [[1]], [[0]]) == pytest.approx(0.554518, abs=1e-6)
    assert value(loss, [[0]], [[0]]) == pytest.approx(0.138629, abs=1e-6)
    # ... which is the class-weighted BCE, on any input.
    rng = np.random.default_rng(0)
    y = (rng.random((6, 3)) < 0.4).astype("float32")
    z = rng.normal(0, 3, (6, 3)).astype("float32")
    pi = [0.1, 0.3, 0.6]
    assert value(BalanceLoss(pi, gamma=0.0), y, z) == pytest.approx(value(WeightedBCELoss(pi), y, z), rel=1e-6)


def test_balance_loss_gamma_term_alone():
    # pi = 0.5 makes beta+ = beta- = 0.5, so only the focal factor varies.
    loss = BalanceLoss([0.5], gamma=2.0)
    # y = 1, z = 2 (easy positive): 0.5 * (1 - p)^2 * -log p = 0.5 * 0.014209 * 0.126928 = 0.000902
    assert value(loss, [[1]], [[2]]) == pytest.approx(0.0009017814, rel=1e-5)
    # y = 0, z = 2 (hard negative): 0.5 * p^2 * -log(1 - p) = 0.5 * 0.775803 * 2.126928 = 0.825039
    assert value(loss, [[0]], [[2]]) == pytest.approx(0.8250390897, rel=1e-5)


def test_balance_loss_with_half_prevalence_and_no_focus_is_half_bce():
    rng = np.random.default_rng(1)
    y = (rng.random((5, 4)) < 0.5).astype("float32")
    z = rng.normal(0, 2, (5, 4)).astype("float32")
    assert value(BalanceLoss([0.5] * 4, gamma=0.0), y, z) == pytest.approx(value(BCELoss(), y, z) / 2, rel=1e-6)


def test_focal_loss_hand_values_and_agrees_with_keras():
    # y = 1, z = 0, gamma = 2: 0.25 * ln 2 = 0.173287; alpha = 0.25 scales positives: 0.043322
    assert value(FocalLoss(gamma=2.0), [[1]], [[0]]) == pytest.approx(0.173287, abs=1e-6)
    assert value(FocalLoss(gamma=2.0, alpha=0.25), [[1]], [[0]]) == pytest.approx(0.043322, abs=1e-6)
    # y = 0 with alpha = 0.25 -> negatives weighted 0.75: 0.75 * 0.25 * ln 2 = 0.129965
    assert value(FocalLoss(gamma=2.0, alpha=0.25), [[0]], [[0]]) == pytest.approx(0.129965, abs=1e-6)
    rng = np.random.default_rng(2)
    y = (rng.random((6, 3)) < 0.4).astype("float32")
    z = rng.normal(0, 3, (6, 3)).astype("float32")
    for alpha in (None, 0.25):
        reference = keras.losses.BinaryFocalCrossentropy(
            from_logits=True, gamma=1.5, apply_class_balancing=alpha is not None, alpha=alpha or 0.25)
        assert value(FocalLoss(gamma=1.5, alpha=alpha), y, z) == pytest.approx(value(reference, y, z), rel=1e-5)


def test_can_loss_hand_value_with_dict_of_logits():
    # pi = 0.2, gamma = 2, y = 1, lambda = 0.5:
    #   fused z = 0     -> 0.8 * 0.25 * ln 2 = 0.138629
    #   branch_1 z = -100 -> beta+ * (1 - p)^2 * 100 = 0.8 * 1 * 100 = 80
    #   branch_2 z = 100  -> ~0
    #   total = 0.138629 + 0.5 * 0.5 * (80 + 0) = 20.138629
    loss = CANLoss([0.2], gamma=2.0, attention_weight=0.5)
    logits = {"fused": np.array([[0.0]], "float32"), "branch_1": np.array([[-100.0]], "float32"),
              "branch_2": np.array([[100.0]], "float32")}
    y = np.array([[1.0]], "float32")
    assert float(loss(y, logits)) == pytest.approx(20.138629, rel=1e-6)
    # labels given per output (as fit receives them) give the same
    assert float(loss({k: y for k in OUTPUTS}, logits)) == pytest.approx(20.138629, rel=1e-6)
    # lambda = 0 is the balance loss on the fused output alone
    assert float(CANLoss([0.2], attention_weight=0.0)(y, logits)) == pytest.approx(0.138629, abs=1e-6)
    with pytest.raises(ValueError, match="branch_2"):
        loss(y, {"fused": logits["fused"], "branch_1": logits["branch_1"]})


# ---- NaN masking ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SINGLE_OUTPUT_LOSSES))
def test_nan_label_removes_only_that_entry(name):
    make = SINGLE_OUTPUT_LOSSES[name]
    # Class 1 unknown (its logit is large, so counting it would change the value a lot).
    with_nan = value(make([0.2, 0.4, 0.7]), [[1, np.nan, 0]], [[0.5, 9.0, -1.0]])
    without = value(make([0.2, 0.7]), [[1, 0]], [[0.5, -1.0]])
    assert math.isfinite(with_nan)
    assert with_nan == pytest.approx(without, rel=1e-6)


@pytest.mark.parametrize("name", sorted(SINGLE_OUTPUT_LOSSES))
def test_sample_with_no_known_label_contributes_zero(name):
    loss = SINGLE_OUTPUT_LOSSES[name]([0.2, 0.4])
    y = np.array([[np.nan, np.nan], [1, 0]], "float32")
    z = np.array([[3.0, -3.0], [0.5, 0.5]], "float32")
    per_sample = loss.call(y, z).numpy()
    assert per_sample[0] == 0.0
    # sum_over_batch_size still divides by the 2 samples
    assert float(loss(y, z)) == pytest.approx(per_sample[1] / 2, rel=1e-6)


@pytest.mark.parametrize("name", sorted(SINGLE_OUTPUT_LOSSES) + ["can"])
def test_gradient_is_finite_and_zero_at_nan_labels(name):
    pi = [0.2, 0.4, 0.7]
    y = np.array([[1, np.nan, 0], [np.nan, np.nan, np.nan]], "float32")
    z = tf.Variable([[0.5, 100.0, -100.0], [-100.0, 3.0, 100.0]])
    with tf.GradientTape() as tape:
        if name == "can":
            out = CANLoss(pi)(y, {"fused": z, "branch_1": 2.0 * z, "branch_2": -z})
        else:
            out = SINGLE_OUTPUT_LOSSES[name](pi)(y, z)
    grad = tape.gradient(out, z).numpy()
    assert np.isfinite(float(out)) and np.all(np.isfinite(grad))
    unknown = np.isnan(y)
    assert np.all(grad[unknown] == 0.0)
    assert grad[0, 0] != 0.0  # a known, not saturated entry still learns


# ---- stability -----------------------------------------------------------------------------------
# y = (1, 1, 0, 0), z = (100, -100, 100, -100): only the two wrong entries cost 100 nats each.
#   bce:          (0 + 100 + 100 + 0) / 4 = 50
#   weighted_bce: pi = 0.2 -> (0 + 0.8*100 + 0.2*100 + 0) / 4 = 25
#   focal a=.25:  focal factor 1 on the wrong entries -> (0.25*100 + 0.75*100) / 4 = 25
#   balance:      as weighted_bce, focal factor 1 -> 25
LARGE_LOGIT_EXPECTED = {"bce": 50.0, "weighted_bce": 25.0, "focal": 25.0, "balance": 25.0}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(SINGLE_OUTPUT_LOSSES))
def test_large_logits_are_finite_and_correct(name, dtype):
    loss = SINGLE_OUTPUT_LOSSES[name]([0.2] * 4)
    y = tf.constant([[1, 1, 0, 0]], tf.float32)
    z = tf.Variable(tf.constant([[100, -100, 100, -100]], dtype))
    with tf.GradientTape() as tape:
        out = loss(y, z)
    grad = tape.gradient(out, z)
    assert float(out) == pytest.approx(LARGE_LOGIT_EXPECTED[name], rel=1e-5)
    assert np.all(np.isfinite(tf.cast(grad, tf.float32).numpy()))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_pure_function_computes_in_float32_from_half_precision_logits(dtype):
    # Called directly, nothing casts the inputs first; z = 12 is where a float16 sigmoid
    # rounds to exactly 1 (so log(1 - p) of the rounded p would be -inf).
    z = tf.constant([[12.0, -12.0]], dtype)
    y = tf.constant([[0.0, 1.0]], dtype)
    out = masked_binary_crossentropy(y, z)
    assert out.dtype == tf.float32
    # -log(1 - p(12)) = log(1 + e^12) = 12.000006 for both entries
    assert float(out[0]) == pytest.approx(12.000006, rel=1e-4)
    assert float(balance_loss(y, z, [0.5, 0.5], gamma=2.0)[0]) == pytest.approx(0.5 * 12.000006, rel=1e-3)
    assert float(focal_loss(y, z, gamma=0.0)[0]) == pytest.approx(12.000006, rel=1e-4)


def test_loss_under_mixed_precision_dtype_is_finite():
    loss = BalanceLoss([0.2] * 4, dtype="mixed_float16")
    out = loss(np.array([[1, 1, 0, 0]], "float32"), tf.constant([[100, -100, 100, -100]], tf.float16))
    assert float(out) == pytest.approx(25.0, rel=1e-3)


# ---- reductions and sample weights ---------------------------------------------------------------
def test_reductions_and_sample_weight():
    # per sample: s0 = 0.138629 (y = 1, z = 0, pi = 0.2, gamma = 2), s1 = 0.034657 (y = 0, z = 0)
    y = [[1], [0]]
    z = [[0], [0]]
    s0, s1 = 0.1386294361, 0.0346573590
    assert value(BalanceLoss([0.2], reduction="sum_over_batch_size"), y, z) == pytest.approx((s0 + s1) / 2, rel=1e-6)
    assert value(BalanceLoss([0.2], reduction="sum"), y, z) == pytest.approx(s0 + s1, rel=1e-6)
    none = BalanceLoss([0.2], reduction="none")(np.array(y, "float32"), np.array(z, "float32")).numpy()
    np.testing.assert_allclose(none, [s0, s1], rtol=1e-6)
    weights = np.array([2.0, 0.0], "float32")
    # sum_over_batch_size: (2 * s0 + 0 * s1) / 2 = s0
    assert value(BalanceLoss([0.2]), y, z, sample_weight=weights) == pytest.approx(s0, rel=1e-6)
    assert value(BalanceLoss([0.2], reduction="sum"), y, z, sample_weight=weights) == pytest.approx(2 * s0, rel=1e-6)


def test_can_loss_reductions_and_sample_weight():
    y = np.array([[1.0], [0.0]], "float32")
    logits = {k: np.zeros((2, 1), "float32") for k in OUTPUTS}
    # lambda = 1: each sample is 2 x its balance value (fused + 1/2 (b1 + b2))
    s0, s1 = 2 * 0.1386294361, 2 * 0.0346573590
    np.testing.assert_allclose(CANLoss([0.2], reduction="none")(y, logits).numpy(), [s0, s1], rtol=1e-6)
    assert float(CANLoss([0.2], reduction="sum")(y, logits)) == pytest.approx(s0 + s1, rel=1e-6)
    assert float(CANLoss([0.2])(y, logits, sample_weight=np.array([0.0, 4.0]))) == pytest.approx(2 * s1, rel=1e-6)


# ---- class prevalence ----------------------------------------------------------------------------
def test_prevalence_length_mismatch_names_expected_and_actual():
    with pytest.raises(ValueError, match="class_prevalence has 3 values but the labels have 2 classes"):
        BalanceLoss([0.1, 0.2, 0.3])(np.ones((1, 2), "float32"), np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match="3 values but the labels have 14 classes"):
        build_loss(LossConfig(name="balance"), "baseline", [0.1, 0.2, 0.3], num_classes=14)


@pytest.mark.parametrize("bad, match", [
    ([0.1, -0.2], r"class_prevalence\[1\] = -0.2"),
    ([0.1, 1.5], r"class_prevalence\[1\] = 1.5"),
    ([np.nan], r"class_prevalence\[0\] = nan"),
    ([], "non-empty 1-D"),
    ([[0.1, 0.2]], "non-empty 1-D"),
    (["a"], "sequence of numbers"),
    (None, "class_prevalence is required"),
])
def test_invalid_prevalence_is_rejected_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        BalanceLoss(bad)


def test_prevalence_zero_or_one_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match=r"index\(es\) \[0, 2\]"):
        loss = BalanceLoss([0.0, 0.5, 1.0], gamma=0.0)
    assert loss.class_prevalence == [PREVALENCE_EPSILON, 0.5, 1 - PREVALENCE_EPSILON]
    # pi = 0 clamped to eps: a negative at z = 0 still costs eps * ln 2 instead of nothing
    assert value(loss, [[0, np.nan, np.nan]], [[0, 0, 0]]) == pytest.approx(PREVALENCE_EPSILON * LN2, rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stored (clamped) values do not warn again on reload
        BalanceLoss.from_config(loss.get_config())


# ---- serialisation -------------------------------------------------------------------------------
ALL_LOSSES = {
    **SINGLE_OUTPUT_LOSSES,
    "can": lambda pi: CANLoss(pi, gamma=1.0, attention_weight=0.3, reduction="sum", name="my_can"),
}


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_config_round_trip_and_keras_serialization(name):
    loss = ALL_LOSSES[name]([0.2, 0.4])
    y = np.array([[1, np.nan], [0, 1]], "float32")
    z = np.array([[0.3, 2.0], [-1.0, 0.7]], "float32")
    pred = {k: z * (i + 1) for i, k in enumerate(OUTPUTS)} if name == "can" else z
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == f"can_tf>{type(loss).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    assert float(restored(y, pred)) == pytest.approx(float(loss(y, pred)), rel=1e-6)


def _dict_output_model(outputs=OUTPUTS, num_classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, {k: keras.layers.Dense(num_classes, name=k)(hidden) for k in outputs})


def _data(num_classes=3, n=8, seed=0, nan_fraction=0.2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (rng.random((n, num_classes)) < 0.4).astype("float32")
    y[rng.random(y.shape) < nan_fraction] = np.nan
    return x, y


@pytest.mark.parametrize("loss_name, kind", [("can", "can"), ("weighted_bce", "baseline")])
def test_keras_file_round_trip_of_compiled_model(tmp_path, loss_name, kind):
    outputs = OUTPUTS if kind == "can" else ("fused",)
    model = _dict_output_model(outputs)
    losses, weights = build_loss(LossConfig(name=loss_name, gamma=1.0, attention_weight=0.6), kind, [0.3, 0.2, 0.5])
    model.compile(optimizer="sgd", loss=losses, loss_weights=weights)
    x, y = _data()
    y_dict = {k: y for k in outputs}
    before = model.evaluate(x, y_dict, batch_size=8, verbose=0, return_dict=True)["loss"]
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=True, safe_mode=True)
    restored = loaded.loss
    assert {k: type(v) for k, v in restored.items()} == {k: type(v) for k, v in losses.items()}
    assert {k: v.get_config() for k, v in restored.items()} == {k: v.get_config() for k, v in losses.items()}
    after = loaded.evaluate(x, y_dict, batch_size=8, verbose=0, return_dict=True)["loss"]
    assert np.isfinite(before) and after == pytest.approx(before, rel=1e-6)


# ---- compile / fit with dict outputs -------------------------------------------------------------
def test_compiled_can_loss_equals_can_loss_class_and_trains_with_nan_labels():
    model = _dict_output_model()
    config = LossConfig(name="can", gamma=2.0, attention_weight=0.6)
    pi = [0.3, 0.2, 0.5]
    losses, weights = build_loss(config, "can", pi, num_classes=3)
    assert weights == {"fused": 1.0, "branch_1": 0.3, "branch_2": 0.3}
    x, y = _data()
    y_dict = {k: y for k in OUTPUTS}
    # learning rate 0: the loss fit reports is the loss of exactly these weights on the full batch
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=losses, loss_weights=weights)
    history = model.fit(x, y_dict, batch_size=len(x), epochs=1, verbose=0, shuffle=False).history
    direct = float(CANLoss(pi, gamma=2.0, attention_weight=0.6)(y, model(x)))
    assert np.isfinite(direct)
    assert history["loss"][0] == pytest.approx(direct, rel=1e-5)
    fused_alone = float(BalanceLoss(pi, gamma=2.0)(y, model(x)["fused"]))
    assert history["fused_loss"][0] == pytest.approx(fused_alone, rel=1e-5)

    # a few real steps with NaN labels: weights stay finite and the loss goes down
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss=losses, loss_weights=weights)
    history = model.fit(x, y_dict, batch_size=len(x), epochs=5, verbose=0, shuffle=False).history
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]


def test_non_can_loss_on_can_model_trains_the_fused_output_only():
    model = _dict_output_model()
    losses, weights = build_loss(LossConfig(name="bce"), "can", None)
    assert all(isinstance(v, BCELoss) for v in losses.values())
    assert weights == {"fused": 1.0, "branch_1": 0.0, "branch_2": 0.0}
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=losses, loss_weights=weights)
    x, y = _data()
    # different labels under the branch keys prove which labels reach which loss
    y_branch_1, y_branch_2 = np.zeros_like(y), np.ones_like(y)
    y_dict = {"fused": y, "branch_1": y_branch_1, "branch_2": y_branch_2}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y_dict, batch_size=len(x), epochs=1, verbose=0).history
    # every variable gets a gradient (zero for the branch heads): no "Gradients do not exist" warning
    assert not [w for w in caught if "Gradients do not exist" in str(w.message)]
    logits = model(x)
    assert history["loss"][0] == pytest.approx(float(BCELoss()(y, logits["fused"])), rel=1e-5)
    assert history["branch_1_loss"][0] == pytest.approx(float(BCELoss()(y_branch_1, logits["branch_1"])), rel=1e-5)
    assert history["branch_2_loss"][0] == pytest.approx(float(BCELoss()(y_branch_2, logits["branch_2"])), rel=1e-5)


# ---- get_loss / build_loss -----------------------------------------------------------------------
def test_get_loss_covers_every_config_loss_name():
    expected = {"can": CANLoss, "balance": BalanceLoss, "bce": BCELoss, "weighted_bce": WeightedBCELoss,
                "focal": FocalLoss}
    assert set(LOSSES) == set(expected)
    for name, cls in expected.items():
        LossConfig(name=name).validate()  # the config accepts every name get_loss knows
        loss = get_loss(name, class_prevalence=[0.1, 0.2], gamma=0.5, attention_weight=0.2,
                        reduction="sum", name="custom")
        assert type(loss) is cls and loss.reduction == "sum" and loss.name == "custom"
        if hasattr(loss, "gamma"):
            assert loss.gamma == 0.5
    assert get_loss("can", class_prevalence=[0.1]).attention_weight == 1.0
    assert get_loss("focal", alpha=0.3).alpha == 0.3
    with pytest.raises(ValueError, match="unknown loss 'dice'; choose one of 'can', 'balance'"):
        get_loss("dice")
    with pytest.raises(ValueError, match="'weighted_bce' weighs classes by their training prevalence"):
        get_loss("weighted_bce")
    with pytest.raises(ValueError, match="gamma .* must be >= 0, got -1.0"):
        get_loss("focal", gamma=-1)
    with pytest.raises(ValueError, match="alpha"):
        get_loss("focal", alpha=2.0)
    with pytest.raises(ValueError, match="attention_weight"):
        get_loss("can", class_prevalence=[0.1], attention_weight=-1)


def test_build_loss_checks_model_kind_and_loss_name():
    pi = [0.2, 0.3]
    losses, weights = build_loss(LossConfig(name="balance", gamma=1.0), "baseline", pi)
    assert list(losses) == ["fused"] and isinstance(losses["fused"], BalanceLoss) and weights == {"fused": 1.0}
    assert losses["fused"].gamma == 1.0 and losses["fused"].class_prevalence == pi
    losses, weights = build_loss(LossConfig(name="focal", gamma=1.0), "can", None)
    assert list(losses) == list(OUTPUTS) and weights == {"fused": 1.0, "branch_1": 0.0, "branch_2": 0.0}
    losses, weights = build_loss(LossConfig(name="can", attention_weight=0.0), "can", pi)
    assert weights == {"fused": 1.0, "branch_1": 0.0, "branch_2": 0.0}
    assert all(isinstance(v, BalanceLoss) for v in losses.values())
    with pytest.raises(ConfigError, match="loss.name='can' needs model.kind='can'"):
        build_loss(LossConfig(name="can"), "baseline", pi)
    with pytest.raises(ConfigError, match="model.kind must be one of 'can', 'baseline'; got 'resnet'"):
        build_loss(LossConfig(name="bce"), "resnet", pi)
    with pytest.raises(ConfigError, match="loss.name must be one of"):
        build_loss(LossConfig(name="dice"), "can", pi)
    with pytest.raises(ValueError, match="class_prevalence is required|weighs classes"):
        build_loss(LossConfig(name="can"), "can", None)


@pytest.mark.parametrize("module", ["masking", "prevalence", "bce", "weighted_bce", "balance_loss",
                                    "focal_loss", "can_loss", "factory", "__init__"])
def test_docstring_examples_run(module):
    name = "can_tf.losses" if module == "__init__" else f"can_tf.losses.{module}"
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
