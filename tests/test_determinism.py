"""``train.deterministic=true``: the same ``can-tf fit`` twice gives the same history and metrics.

Op determinism is process-wide and cannot be switched off again, so everything that turns it on
runs in a subprocess: the rest of the session keeps TensorFlow's default behaviour.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from can_tf.config import RunConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
TIMING_COLUMNS = {"epoch_seconds"}


def _python(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _history_without_timing(run_dir: Path) -> list:
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def test_deterministic_is_off_by_default_and_set_by_override():
    assert TrainConfig().deterministic is False
    config = RunConfig.resolve("small", overrides=["train.deterministic=true"])
    assert config.train.deterministic is True
    assert RunConfig.from_dict(config.to_dict()).train.deterministic is True


def test_configure_determinism_does_nothing_when_off():
    import random

    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config  # no public getter exists

    from can_tf.training.determinism import configure_determinism

    state = random.getstate()
    configure_determinism(RunConfig.resolve("small"))
    assert random.getstate() == state  # not reseeded
    assert not tf_config.is_op_determinism_enabled()
    assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer")


def test_configure_determinism_seeds_everything_and_enables_op_determinism():
    code = """
import random, numpy as np, keras, tensorflow as tf
from tensorflow.python.framework import config as tf_config
from can_tf.config import RunConfig
from can_tf.training.determinism import configure_determinism

def draws():
    return [random.random(), float(np.random.rand()), float(tf.random.uniform([])),
            float(keras.random.uniform([]))]

configure_determinism(RunConfig.resolve("small", overrides=["train.deterministic=true", "train.seed=7"]))
first = draws()
keras.utils.set_random_seed(7)
print(tf_config.is_op_determinism_enabled(), first == draws(),
      tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer"))
"""
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-3:] == ["True", "True", "True"]  # op determinism, seeds, Grappler off


def test_a_training_file_cache_keeps_each_seeds_order(tmp_path, phantom_dir):
    # The seeded shuffle before a cache is frozen into it: a cache file shared between seeds would
    # give the second seed the first one's order.
    import numpy as np
    import pandas as pd

    from can_tf.data.pipeline import make_dataset

    paths = sorted(str(p) for p in (phantom_dir / "images").iterdir())[:16]
    table = pd.DataFrame({"path": paths, "row": np.arange(16, dtype=np.float32)})

    def first_epoch_order(prefix, seed):
        ds = make_dataset(table, ["row"], 32, 8, training=True, cache=str(prefix), deterministic=True,
                          seed=seed)
        return np.concatenate([y.numpy()[:, 0] for _, y in ds])

    first_epoch_order(tmp_path / "shared" / "train", seed=0)
    after_another_seed = first_epoch_order(tmp_path / "shared" / "train", seed=1)
    alone = first_epoch_order(tmp_path / "alone" / "train", seed=1)
    np.testing.assert_array_equal(after_another_seed, alone)
    assert len({p.name.split(".")[0] for p in (tmp_path / "shared").iterdir()}) == 2


def test_fit_twice_gives_identical_history_and_test_auroc(tmp_path, phantom_dir):
    # Augmentation on and data.deterministic left at false: train.deterministic must cover both.
    def fit(name: str) -> Path:
        run_dir = tmp_path / name
        result = _python("-m", "can_tf_cli.main", "fit", "--preset", "small", "--data", str(phantom_dir),
                         "--run-dir", str(run_dir), "--epochs", "2", "--batch-size", "8",
                         "--set", "train.steps_per_epoch=3", "--set", "train.deterministic=true",
                         "--set", "train.verbose=2")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        return run_dir

    a, b = fit("a"), fit("b")
    history_a, history_b = _history_without_timing(a), _history_without_timing(b)
    assert len(history_a) == 2 and "loss" in history_a[0] and "val_mean_auroc" in history_a[0]
    assert history_a == history_b  # exact: the CSV holds every float's shortest repr
    metrics_a = json.loads((a / "metrics.json").read_text())
    metrics_b = json.loads((b / "metrics.json").read_text())
    assert metrics_a["test_auroc"] == metrics_b["test_auroc"]
    assert metrics_a["test_mean_auroc"] == metrics_b["test_mean_auroc"]


@pytest.mark.slow
def test_a_run_killed_and_resumed_repeats_the_uninterrupted_run(tmp_path, phantom_dir):
    # The resumed run continues the batch stream where the killed one stopped: same batches, same
    # augmentations, same optimizer state, the same reduce-on-plateau and early-stopping counters,
    # so the same history as a run that was never interrupted.
    def args(run_dir):
        return ["fit", "--preset", "small", "--data", str(phantom_dir), "--run-dir", str(run_dir),
                "--epochs", "6", "--batch-size", "8", "--set", "train.steps_per_epoch=3",
                "--set", "train.deterministic=true", "--set", "train.verbose=2",
                "--set", "train.schedule=plateau", "--set", "train.early_stopping_patience=3"]

    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    assert _python("-m", "can_tf_cli.main", *args(whole)).returncode == 0
    killed = _python("tests/interrupt_at.py", "kill", "history", "4", *args(interrupted))
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _python("-m", "can_tf_cli.main", *args(interrupted))
    assert resumed.returncode == 0 and "Resuming after epoch 4" in resumed.stdout, resumed.stderr[-2000:]
    history = _history_without_timing(whole)
    assert len({row["learning_rate"] for row in history}) > 1  # the plateau schedule did act
    assert _history_without_timing(interrupted) == history
    assert (json.loads((interrupted / "metrics.json").read_text())["test_auroc"]
            == json.loads((whole / "metrics.json").read_text())["test_auroc"])


def test_dense_block_gradients_repeat_exactly():
    # DenseNet's concatenations make large AddNs in the gradient, which Grappler's memory optimizer
    # turns into AssignAdds summed in arrival order: with op determinism alone, 1 and 3 of these 8
    # repeats differed in two tries (see can_tf.training.determinism, cause 2).
    code = """
import numpy as np, keras, tensorflow as tf
from can_tf.config import RunConfig
from can_tf.training.determinism import configure_determinism

configure_determinism(RunConfig.resolve("small", overrides=["train.deterministic=true"]))
layers = keras.layers
inputs = keras.Input((56, 56, 64))
x = inputs
for _ in range(4):
    y = layers.Conv2D(128, 1, use_bias=False)(layers.ReLU()(layers.BatchNormalization()(x)))
    y = layers.Conv2D(32, 3, padding="same", use_bias=False)(layers.ReLU()(layers.BatchNormalization()(y)))
    x = layers.Concatenate()([x, y])
x = layers.GlobalAveragePooling2D()(layers.ReLU()(layers.BatchNormalization()(x)))
model = keras.Model(inputs, layers.Dense(14, activation="sigmoid")(x))
images = tf.constant(np.random.default_rng(0).normal(size=(8, 56, 56, 64)).astype("float32"))

@tf.function
def gradients(images):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(images, training=True))
    return tape.gradient(loss, model.trainable_variables)

first = [g.numpy() for g in gradients(images)]
repeats = [[g.numpy() for g in gradients(images)] for _ in range(8)]
print("varying", sum(any(not np.array_equal(a, b) for a, b in zip(first, r)) for r in repeats))
"""
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["varying", "0"]
