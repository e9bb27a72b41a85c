"""``train.freeze_epochs``: frozen backbones first, then every layer at a scaled learning rate.

Trains tiny models on the phantom set for a few 2-step epochs and watches, from a callback, what
each epoch changed: backbone weights and batch-norm statistics, heads, the trainable state, the
optimizer's step and rate. The expected rates are computed by hand from the cosine formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from can_tf.config import ConfigError, RunConfig, TrainConfig

LR, STEPS, FACTOR = 5e-3, 2, 0.1


def quick_config(phantom_dir, run_dir, *overrides, preset="small"):
    return RunConfig.resolve(preset, overrides=[
        f"data.source={phantom_dir}", f"train.run_dir={run_dir}", "train.batch_size=8",
        f"train.steps_per_epoch={STEPS}", "data.augment=false", "train.verbose=0", f"train.learning_rate={LR}",
        "train.warmup_epochs=0", "train.early_stopping_patience=0", f"train.unfreeze_lr_factor={FACTOR}",
        *overrides])


def cosine(step: int, total: int) -> float:
    """Keras's CosineDecay without warm-up, by hand."""
    return LR * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


class Interrupted(Exception):
    """Stands for a kill between an epoch's commit and the next epoch."""


def make_probe(records: dict, weights: dict, interrupt_at=None):
    """A callback recording, per epoch, the trainable state and rate seen by each batch and the
    weights at the epoch's start and end (``weights[(epoch, "begin"|"end")] = {layer: [(path,
    array)]}`` for each top-level layer: the two backbones' variables share their paths)."""
    import keras

    from can_tf.training.callbacks import backbone_layers
    from can_tf.training.optimizers import current_learning_rate

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if interrupt_at is not None and epoch == interrupt_at:
                raise Interrupted(f"before epoch {epoch + 1}")
            self.epoch = epoch
            weights[(epoch, "begin")] = snapshot(self.model)

        def on_train_batch_begin(self, batch, logs=None):
            optimizer = self.model.optimizer
            backbones = backbone_layers(self.model)
            records.setdefault(self.epoch, []).append({
                "backbones_trainable": [b.trainable for b in backbones],
                "trainable_weights": len(self.model.trainable_weights),
                "iterations": int(optimizer.iterations.numpy()),
                "learning_rate": current_learning_rate(optimizer),
                "slots_zero": all(not np.any(v.numpy()) for v in optimizer.variables
                                  if v.name not in ("iteration", "learning_rate")),
            })

        def on_epoch_end(self, epoch, logs=None):
            weights[(epoch, "end")] = snapshot(self.model)

    return Probe()


def snapshot(model) -> dict:
    return {layer.name: [(v.path, v.numpy().copy()) for v in layer.weights] for layer in model.layers
            if layer.weights}


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(pa == pb and np.array_equal(va, vb) for (pa, va), (pb, vb) in zip(a, b))


def changed(a: list, b: list, kind: str) -> list:
    """Paths containing ``kind`` whose values differ between two snapshots of one layer."""
    return [pa for (pa, va), (_, vb) in zip(a, b) if kind in pa and not np.array_equal(va, vb)]


def same_records(a: list, b: list) -> bool:
    """Equal per-batch records, the learning rates to float32 precision."""
    def exact(r):
        return {k: v for k, v in r.items() if k != "learning_rate"}

    return (len(a) == len(b) and all(exact(x) == exact(y) for x, y in zip(a, b))
            and [x["learning_rate"] for x in a] == pytest.approx([y["learning_rate"] for y in b], rel=1e-6))


# ---- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, field", [
    ({"freeze_epochs": -1}, "train.freeze_epochs"),
    ({"freeze_epochs": 3, "epochs": 3}, "train.freeze_epochs"),
    ({"freeze_epochs": 5, "epochs": 3}, "train.freeze_epochs"),
    ({"unfreeze_lr_factor": 0.0}, "train.unfreeze_lr_factor"),
    ({"unfreeze_lr_factor": -0.5}, "train.unfreeze_lr_factor"),
    ({"unfreeze_lr_factor": 1.5}, "train.unfreeze_lr_factor"),
])
def test_invalid_freeze_settings_name_the_field(fields, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{"epochs": 4, **fields}).validate()
    message = str(info.value)
    assert message.startswith(field) and "\n" not in message


def test_valid_freeze_settings_and_defaults():
    assert (TrainConfig().freeze_epochs, TrainConfig().unfreeze_lr_factor) == (0, 0.1)
    TrainConfig(epochs=1, freeze_epochs=0).validate()
    TrainConfig(epochs=4, freeze_epochs=3, unfreeze_lr_factor=1.0).validate()
    config = RunConfig.resolve("small", overrides=["train.freeze_epochs=2", "train.unfreeze_lr_factor=0.5"])
    assert (config.train.freeze_epochs, config.train.unfreeze_lr_factor) == (2, 0.5)


def test_shifted_schedule_continues_the_schedule_scaled():
    import keras

    from can_tf.training.optimizers import ShiftedSchedule

    base = keras.optimizers.schedules.CosineDecay(LR, decay_steps=8)
    shifted = ShiftedSchedule(base, offset=3, factor=0.25)
    for step in range(6):
        assert float(shifted(step)) == pytest.approx(0.25 * cosine(step + 3, 8), rel=1e-5, abs=1e-7 * LR)
    again = ShiftedSchedule.from_config(shifted.get_config())
    assert float(again(2)) == pytest.approx(float(shifted(2)), rel=1e-7)


# ---- training -----------------------------------------------------------------------------------
def test_frozen_epoch_keeps_backbones_then_unfrozen_epoch_trains_them(tmp_path, phantom_dir, capsys):
    import keras

    from can_tf.training import train

    records, weights = {}, {}
    run = tmp_path / "run"
    result = train(quick_config(phantom_dir, run, "train.epochs=2", "train.freeze_epochs=1"),
                   extra_callbacks=[make_probe(records, weights)])
    backbones = ("branch_1_backbone", "branch_2_backbone")
    heads = ("cross_attention", "fused", "branch_1", "branch_2")

    # epoch 1, frozen: every backbone variable (kernels, BN moving statistics) bit-identical
    begin, end = weights[(0, "begin")], weights[(0, "end")]
    for name in backbones:
        assert sum("moving_mean" in path for path, _ in begin[name]) >= 3
        assert same(begin[name], end[name]), name
    for name in heads:
        assert changed(begin[name], end[name], "kernel"), name
    # epoch 2, unfrozen: backbone kernels and moving statistics change
    begin, end = weights[(1, "begin")], weights[(1, "end")]
    for name in backbones:
        for kind in ("kernel", "moving_mean", "moving_variance"):
            assert changed(begin[name], end[name], kind), (name, kind)

    frozen, unfrozen = records[0][0], records[1][0]
    assert frozen["backbones_trainable"] == [False, False] and unfrozen["backbones_trainable"] == [True, True]
    assert frozen["trainable_weights"] < unfrozen["trainable_weights"]
    # the rate: cosine over 4 steps, unscaled for steps 0-1, then 0.1 x where it is (step 2, 3)
    total = 2 * STEPS
    assert [r["learning_rate"] for r in records[0]] == pytest.approx([cosine(0, total), cosine(1, total)], rel=1e-5)
    assert [r["learning_rate"] for r in records[1]] == pytest.approx(
        [FACTOR * cosine(2, total), FACTOR * cosine(3, total)], rel=1e-5)
    # the optimizer restarted when the backbones joined: step 0, no moments carried over
    assert records[0][-1]["iterations"] == 1 and unfrozen["iterations"] == 0 and unfrozen["slots_zero"]
    assert [row["backbones_frozen"] for row in result.history] == [1.0, 0.0]

    out = capsys.readouterr().out
    assert out.count("Backbones frozen (branch_1_backbone, branch_2_backbone) for epochs 1-1") == 1
    assert out.count("Backbones unfrozen from epoch 2") == 1
    # the saved model is an ordinary, trainable one
    best = keras.saving.load_model(run / "best.keras", compile=False)
    assert all(best.get_layer(name).trainable for name in backbones)


RESUME_EPOCHS, RESUME_FREEZE = 4, 2


def resume_overrides():
    return ("train.schedule=constant", f"train.epochs={RESUME_EPOCHS}", f"train.freeze_epochs={RESUME_FREEZE}",
            "train.deterministic=true")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, phantom_dir):
    from can_tf.training import train

    records, weights = {}, {}
    run = tmp_path_factory.mktemp("freeze") / "run"
    result = train(quick_config(phantom_dir, run, *resume_overrides(), preset="small-baseline"),
                   extra_callbacks=[make_probe(records, weights)])
    return records, result.history


@pytest.mark.parametrize("interrupt_at", [
    pytest.param(1, marks=pytest.mark.slow),  # resumes inside the frozen phase
    2,  # resumes at the boundary: the checkpoint holds the frozen phase's optimizer
    pytest.param(3, marks=pytest.mark.slow),  # resumes after the restart
])
def test_resume_lands_in_the_same_phase(tmp_path, phantom_dir, uninterrupted, interrupt_at):
    from can_tf.training import train

    reference, reference_history = uninterrupted
    config = quick_config(phantom_dir, tmp_path / "run", *resume_overrides(), preset="small-baseline")
    with pytest.raises(Interrupted):
        train(config, extra_callbacks=[make_probe({}, {}, interrupt_at=interrupt_at)])
    records = {}
    result = train(config, extra_callbacks=[make_probe(records, {})])
    assert result.initial_epoch == interrupt_at and sorted(records) == list(range(interrupt_at, RESUME_EPOCHS))
    for epoch in records:
        assert same_records(records[epoch], reference[epoch]), (epoch, records[epoch], reference[epoch])
    # constant rate: LR while frozen, FACTOR x LR after
    assert [reference[e][0]["learning_rate"] for e in range(RESUME_EPOCHS)] == pytest.approx(
        [LR, LR, FACTOR * LR, FACTOR * LR], rel=1e-6)
    assert [row["backbones_frozen"] for row in result.history] == [1.0, 1.0, 0.0, 0.0]
    for old, new in zip(reference_history, result.history):
        assert new["loss"] == pytest.approx(old["loss"], rel=1e-4)


# One train() per process, as `can-tf fit` runs: strategies created one after the other in one
# process reuse collective instance keys, which fails once the reduced shapes differ.
MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, "tests")
from test_freeze import Interrupted, changed, make_probe, quick_config, same
from can_tf.training import train

phantom_dir, run_dir, interrupt_at = sys.argv[1], sys.argv[2], sys.argv[3]
config = quick_config(phantom_dir, run_dir, "train.epochs=2", "train.freeze_epochs=1", "train.strategy=mirrored")
records, weights = {}, {}
try:
    result = train(config, extra_callbacks=[make_probe(records, weights, None if interrupt_at == "none" else 1)])
except Interrupted:
    print(json.dumps({"interrupted": True}))
    sys.exit(0)
backbones = ("branch_1_backbone", "branch_2_backbone")
epochs = sorted(records)
print(json.dumps({
    "replicas": result.metrics["num_replicas"], "epochs": epochs,
    "frozen_same": [all(same(weights[(e, "begin")][b], weights[(e, "end")][b]) for b in backbones) for e in epochs],
    "moving_changed": [all(changed(weights[(e, "begin")][b], weights[(e, "end")][b], "moving_mean")
                           for b in backbones) for e in epochs],
    "trainable": [records[e][0]["backbones_trainable"] for e in epochs],
    "learning_rate": [[r["learning_rate"] for r in records[e]] for e in epochs],
    "history_frozen": [row["backbones_frozen"] for row in result.history],
}))
"""


@pytest.mark.slow
def test_freezing_under_mirrored_strategy_on_two_logical_cpus(tmp_path, phantom_dir):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    def fit(run_dir, interrupt_at="none") -> dict:
        proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(phantom_dir), str(run_dir), interrupt_at],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                              timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    straight = fit(tmp_path / "straight")
    assert straight["replicas"] == 2 and straight["epochs"] == [0, 1]
    assert straight["frozen_same"] == [True, False] and straight["moving_changed"] == [False, True]
    assert straight["trainable"] == [[False, False], [True, True]]
    total = 2 * STEPS
    assert straight["learning_rate"][1] == pytest.approx([FACTOR * cosine(s, total) for s in (2, 3)], rel=1e-5)
    assert straight["history_frozen"] == [1.0, 0.0]
    # interrupted after the frozen epoch, resumed at the boundary: the straight run's state and rate
    assert fit(tmp_path / "resumed", interrupt_at="1") == {"interrupted": True}
    resumed = fit(tmp_path / "resumed")
    assert resumed["epochs"] == [1] and resumed["trainable"] == [[True, True]]
    assert resumed["learning_rate"][0] == pytest.approx(straight["learning_rate"][1], rel=1e-6)
    assert resumed["history_frozen"] == [1.0, 0.0]
