"""Strategy choice, TF_CONFIG parsing, precision policy and the optimizer/schedule from the config."""

from __future__ import annotations

import json
import math

import pytest

from can_tf.config import ConfigError, TrainConfig
from can_tf.training import strategy as strategy_lib
from can_tf.training.strategy import resolve_precision, tf_config_cluster


def _tf_config(monkeypatch, cluster, task):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))


def test_tf_config_unset_is_single_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_cluster() == (1, 0, True)


def test_tf_config_workers_only_worker0_is_chief(monkeypatch):
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    _tf_config(monkeypatch, cluster, {"type": "worker", "index": 0})
    assert tf_config_cluster() == (2, 0, True)
    _tf_config(monkeypatch, cluster, {"type": "worker", "index": 1})
    assert tf_config_cluster() == (2, 1, False)


def test_tf_config_with_chief_task(monkeypatch):
    cluster = {"chief": ["localhost:1"], "worker": ["localhost:2", "localhost:3"]}
    _tf_config(monkeypatch, cluster, {"type": "chief", "index": 0})
    assert tf_config_cluster() == (3, 0, True)
    # worker 0 is the second input pipeline when a chief exists, and not the chief
    _tf_config(monkeypatch, cluster, {"type": "worker", "index": 0})
    assert tf_config_cluster() == (3, 1, False)


def test_tf_config_invalid_json_names_the_variable(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        tf_config_cluster()


def test_default_strategy_on_single_device(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    info = strategy_lib.make_strategy(TrainConfig(strategy="auto"))
    assert (info.kind, info.num_replicas, info.num_workers, info.is_chief) == ("default", 1, 1, True)
    assert info.per_replica_batch_size(32) == 32


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="multi_worker.*TF_CONFIG"):
        strategy_lib.make_strategy(TrainConfig(strategy="multi_worker"))


def test_global_batch_must_split_evenly_across_replicas():
    info = strategy_lib.StrategyInfo(strategy=None, kind="mirrored", num_replicas=4)
    assert info.per_replica_batch_size(32) == 8
    with pytest.raises(ConfigError, match="train.batch_size=30.*4"):
        info.per_replica_batch_size(30)


def test_precision_policies(monkeypatch):
    assert resolve_precision("off") == "float32"
    assert resolve_precision("float16") == "mixed_float16"
    assert resolve_precision("bfloat16") == "mixed_bfloat16"
    assert resolve_precision("auto", has_gpu=True) == "mixed_float16"
    monkeypatch.setattr(strategy_lib, "cpu_supports_bfloat16", lambda: True)
    assert resolve_precision("auto", has_gpu=False) == "mixed_bfloat16"
    monkeypatch.setattr(strategy_lib, "cpu_supports_bfloat16", lambda: False)
    assert resolve_precision("auto", has_gpu=False) == "float32"
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        resolve_precision("int8")


def test_cpu_bfloat16_detection_reads_cpuinfo_flags(monkeypatch, tmp_path):
    import builtins

    fake = tmp_path / "cpuinfo"
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return real_open(fake if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    fake.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert strategy_lib.cpu_supports_bfloat16() is False
    fake.write_text("processor: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert strategy_lib.cpu_supports_bfloat16() is True


def test_set_precision_sets_the_keras_policy():
    import keras

    try:
        assert strategy_lib.set_precision("bfloat16") == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---- optimizer and schedule ---------------------------------------------------------------------
def test_cosine_schedule_warms_up_then_decays_to_zero():
    from can_tf.training.optimizers import learning_rate_schedule

    # 3 epochs x 10 steps = 30 steps; warm-up 0.5 epoch = 5 steps; then cosine over 25 steps.
    schedule = learning_rate_schedule(TrainConfig(epochs=3, learning_rate=0.01, warmup_epochs=0.5,
                                                  schedule="cosine"), steps_per_epoch=10)
    lr = [float(schedule(step)) for step in range(31)]
    assert lr[0] == 0.0
    assert lr[5] == pytest.approx(0.01)
    assert lr[2] == pytest.approx(0.01 * 2 / 5)  # linear warm-up
    # half-way through the decay (12.5 of 25 steps) cosine gives lr * (1 + cos(pi/2)) / 2 = lr / 2
    assert float(schedule(5 + 12.5)) == pytest.approx(0.005, rel=1e-4)
    assert lr[30] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(lr[5:], lr[6:]))


def test_schedule_is_built_once_per_traced_step_and_updates_match_keras():
    import keras
    import numpy as np
    import tensorflow as tf

    from can_tf.training.optimizers import OncePerStep

    class Counted(keras.optimizers.schedules.CosineDecay):
        calls = 0

        def __call__(self, step):
            Counted.calls += 1
            return super().__call__(step)

    def schedule():
        return Counted(0.0, decay_steps=8, warmup_target=0.1, warmup_steps=2)

    def run(learning_rate):
        """Three AdamW steps over 40 variables in a tf.function; the variables afterwards."""
        variables = [keras.Variable(np.full((3,), i + 1.0, "float32")) for i in range(40)]
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=0.5)
        optimizer.build(variables)

        @tf.function
        def step():
            optimizer.apply([tf.ones((3,)) * 0.1 for _ in variables], variables)

        for _ in range(3):
            step()
        return [v.numpy() for v in variables]

    Counted.calls = 0
    expected = run(schedule())  # Keras as it is: the schedule once per variable (weight decay) + 1
    assert Counted.calls > 40
    Counted.calls = 0
    got = run(OncePerStep(schedule()))
    assert Counted.calls == 1  # one trace, one schedule graph shared by all 40 variables
    np.testing.assert_allclose(np.stack(got), np.stack(expected), rtol=1e-6)
    wrapped = OncePerStep(schedule())
    assert [float(wrapped(s)) for s in (0, 1, 2, 5)] == [float(schedule()(s)) for s in (0, 1, 2, 5)]
    plain = OncePerStep(keras.optimizers.schedules.CosineDecay(0.0, 8, warmup_target=0.1, warmup_steps=2))
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(plain))
    assert isinstance(restored, OncePerStep) and float(restored(1)) == pytest.approx(0.05)


def test_compile_model_creates_the_optimizer_slots_before_any_step():
    import keras

    from can_tf.config import RunConfig
    from can_tf.models import build_model
    from can_tf.training.trainer import compile_model

    config = RunConfig.resolve(preset="small", overrides=["model.kind=baseline", "model.backbones=[tiny]",
                                                          "loss.name=balance", "data.image_size=32"])
    keras.utils.set_random_seed(0)
    model = build_model(config.model, config.num_classes, config.data.image_size)
    compile_model(model, config, [0.2] * config.num_classes, steps_per_epoch=4)
    optimizer = model.optimizer
    # Built eagerly, so tracing the first train step does not create them: AdamW keeps two slots
    # (first and second moments) per trainable variable, shaped like it.
    assert optimizer.built
    trainable = model.trainable_variables
    slots = [v for v in optimizer.variables if v.path.split("/")[-1].endswith(("_momentum", "_velocity"))]
    assert len(slots) == 2 * len(trainable)
    assert sorted(tuple(v.shape) for v in slots) == sorted(2 * [tuple(v.shape) for v in trainable])


def test_optimizer_kinds_and_plateau_callback():
    import keras

    from can_tf.training.optimizers import build_optimizer

    opt, cbs = build_optimizer(TrainConfig(optimizer="adamw", weight_decay=1e-4), steps_per_epoch=5)
    assert isinstance(opt, keras.optimizers.AdamW) and math.isclose(opt.weight_decay, 1e-4)
    assert cbs == []
    opt, cbs = build_optimizer(TrainConfig(optimizer="adam", schedule="plateau", learning_rate=1e-3),
                               steps_per_epoch=5)
    assert isinstance(opt, keras.optimizers.Adam)
    assert float(opt.learning_rate) == pytest.approx(1e-3)
    assert len(cbs) == 1 and isinstance(cbs[0], keras.callbacks.ReduceLROnPlateau)
    assert cbs[0].monitor == "val_mean_auroc" and cbs[0].factor == pytest.approx(0.1)
    opt, _ = build_optimizer(TrainConfig(optimizer="sgd", schedule="constant", learning_rate=0.1),
                             steps_per_epoch=5)
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == pytest.approx(0.9)
