"""Training under tf.distribute: MirroredStrategy over 2 logical CPUs and 2-worker MultiWorkerMirrored.

Each case runs in a subprocess: logical devices and multi-worker collectives must be configured
before TensorFlow initialises, which pytest's own process has already done.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(code: str, env=None, timeout=300) -> dict:
    """Runs ``code`` in a fresh Python; the last stdout line must be a JSON object."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The same tiny dict-output network, data and initial weights under two strategies. No batch
# normalisation: per-replica batch statistics would legitimately differ from the global batch's.
MIRRORED_SCRIPT = """
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
from can_tf.config import RunConfig
from can_tf.training.strategy import StrategyInfo, distribute_dataset
from can_tf.training.trainer import compile_model, labels_for_outputs, output_names

GLOBAL_BATCH, STEPS = 8, 4
config = RunConfig.from_preset("small", overrides=[
    "train.optimizer=sgd", "train.schedule=constant", "train.learning_rate=0.5",
    "data.class_names=[A, B, C]", "loss.name=can", "loss.attention_weight=1.0"])
rng = np.random.default_rng(0)
x = rng.normal(size=(GLOBAL_BATCH * STEPS, 8, 8, 1)).astype("float32")
y = (x[:, :3, 0, 0] > 0).astype("float32")
prevalence = y.mean(axis=0)

def build():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, {name: keras.layers.Dense(3, name=name)(h)
                             for name in ("fused", "branch_1", "branch_2")})

results, init = {}, None
for kind in ("default", "mirrored"):
    strategy = (tf.distribute.get_strategy() if kind == "default"
                else tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    info = StrategyInfo(strategy, kind, strategy.num_replicas_in_sync)
    with strategy.scope():
        model = build()
        if init is None:
            init = model.get_weights()
        model.set_weights(init)
        compile_model(model, config, prevalence, steps_per_epoch=STEPS)

    def dataset_fn(ctx):
        batch = ctx.get_per_replica_batch_size(GLOBAL_BATCH) if ctx else GLOBAL_BATCH
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        return labels_for_outputs(ds, output_names(model)).repeat()

    hist = model.fit(distribute_dataset(info, dataset_fn, GLOBAL_BATCH), epochs=2, steps_per_epoch=STEPS,
                     verbose=0, shuffle=False)
    results[kind] = {"replicas": info.num_replicas, "loss": hist.history["loss"],
                     "weights": [w.ravel().tolist() for w in model.get_weights()]}

# The loss Keras reports for one step equals CANLoss on the whole global batch (initial weights).
from can_tf.losses import CANLoss
model = build(); model.set_weights(init)
first = CANLoss(prevalence.tolist(), gamma=config.loss.gamma, attention_weight=1.0)(
    y[:GLOBAL_BATCH], model(x[:GLOBAL_BATCH]))
results["can_loss_first_batch"] = float(first)
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    m2 = build(); m2.set_weights(init)
    compile_model(m2, config, prevalence, steps_per_epoch=1)
results["one_step_loss"] = float(m2.evaluate(x[:GLOBAL_BATCH], {k: y[:GLOBAL_BATCH] for k in
                                  ("fused", "branch_1", "branch_2")}, batch_size=GLOBAL_BATCH, verbose=0,
                                  return_dict=True)["loss"])
print(json.dumps(results))
"""


def test_mirrored_two_replicas_same_loss_and_weights_as_one():
    r = run_script(MIRRORED_SCRIPT)
    assert r["default"]["replicas"] == 1 and r["mirrored"]["replicas"] == 2
    # Same reported loss per epoch: Keras divides each replica's mean by the replica count before
    # summing gradients and unscales the logged loss; a wrong scaling would show a factor of 2.
    np.testing.assert_allclose(r["mirrored"]["loss"], r["default"]["loss"], rtol=1e-5)
    for a, b in zip(r["mirrored"]["weights"], r["default"]["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # and the weights did move (the comparison above is not trivially true)
    assert r["default"]["loss"][1] < r["default"]["loss"][0]
    # 2-replica evaluation of one global batch = CANLoss on that batch computed directly
    assert r["one_step_loss"] == pytest.approx(r["can_loss_first_batch"], rel=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


TRAIN_SCRIPT = """
import json, sys
from can_tf.config import RunConfig
from can_tf.training import train

config = RunConfig.resolve(sys.argv[1], overrides=sys.argv[2:])
result = train(config)
print(json.dumps({"is_chief": result.is_chief, "loss": [r["loss"] for r in result.history],
                  "val": [r["val_mean_auroc"] for r in result.history],
                  "test_mean_auroc": result.test_mean_auroc, "strategy": result.metrics["strategy"],
                  "replicas": result.metrics["num_replicas"], "workers": result.metrics["num_workers"]}))
"""


def quick_overrides(phantom_dir, run_dir):
    return [f"data.source={phantom_dir}", f"train.run_dir={run_dir}", "train.epochs=2",
            "train.batch_size=8", "train.steps_per_epoch=3", "data.augment=false", "train.verbose=0"]


@pytest.mark.slow
def test_fit_with_mirrored_strategy_on_two_logical_cpus(tmp_path, phantom_dir):
    code = ("import tensorflow as tf\n"
            "cpu = tf.config.list_physical_devices('CPU')[0]\n"
            "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
            + TRAIN_SCRIPT)
    full = [sys.executable, "-c", textwrap.dedent(code), "small",
            *quick_overrides(phantom_dir, tmp_path / "run"), "train.strategy=mirrored"]
    proc = subprocess.run(full, capture_output=True, text=True, cwd=REPO, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (r["strategy"], r["replicas"]) == ("mirrored", 2)
    assert len(r["loss"]) == 2 and all(np.isfinite(r["loss"]))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["num_replicas"] == 2


@pytest.mark.slow
def test_multi_worker_fit_two_local_workers_agree(tmp_path, phantom_dir):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    run = tmp_path / "run"
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=tf_config)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(TRAIN_SCRIPT), "small-baseline",
             *quick_overrides(phantom_dir, run)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, out[-3000:] + err[-5000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    chief, worker = outputs
    assert chief["is_chief"] and not worker["is_chief"]
    assert chief["strategy"] == worker["strategy"] == "multi_worker"
    assert chief["workers"] == 2 and chief["replicas"] == 2
    # the loss is all-reduced across workers: both report the same numbers, and the same val AUROC
    np.testing.assert_allclose(chief["loss"], worker["loss"], rtol=1e-5)
    np.testing.assert_allclose(chief["val"], worker["val"], rtol=1e-6)
    # only the chief wrote the run directory; the other worker cleaned up its scratch space
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_workers"] == 2 and metrics["strategy"] == "multi_worker"
    assert (run / "best.keras").is_file() and not (run / ".workers").exists()
    assert len((run / "history.csv").read_text().splitlines()) == 3
