"""Training callbacks and the atomic writes they use, on a tiny dict-output model (no data set needed).

The run directory itself (locking, commits, resume, refusals) is tested in tests/test_run.py.
"""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np
import pytest

from can_tf import files
from can_tf.run import Run


def tiny_model(num_classes=3, seed=0):
    """A dict-of-logits model shaped like the CAN model's outputs, small enough to train in ms."""
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    return keras.Model(x, {"fused": keras.layers.Dense(num_classes, name="fused")(h),
                           "branch_1": keras.layers.Dense(num_classes, name="branch_1")(h)})


def labelled_data(n=48, num_classes=3, seed=0):
    """Features whose first columns decide the labels (learnable), labels with a few NaNs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, :num_classes] > 0).astype("float32")
    y[::7, 2] = np.nan
    return x, y


def dataset(x, y, batch=8):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


# ---- atomic writes ------------------------------------------------------------------------------
def test_atomic_json_and_model_save_leave_no_temporary_files(tmp_path):
    files.write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0]})
    assert (tmp_path / "m.json").read_text().replace(" ", "").replace("\n", "") == '{"a":null,"b":[1.0]}'
    model = tiny_model()
    files.save_model_atomically(model, tmp_path / "best.keras")
    assert sorted(os.listdir(tmp_path)) == ["best.keras", "m.json"]
    assert zipfile.is_zipfile(tmp_path / "best.keras")


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "best.keras"
    target.write_bytes(b"old")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        files.atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["best.keras"]


# ---- callbacks ----------------------------------------------------------------------------------
def _compiled(model, lr=0.05):
    import keras

    from can_tf.losses import BCELoss

    model.compile(optimizer=keras.optimizers.Adam(lr), loss={"fused": BCELoss(), "branch_1": BCELoss()})
    return model


def test_validation_auroc_matches_sklearn_and_best_model_has_no_optimizer(tmp_path):
    import keras
    from sklearn.metrics import roc_auc_score

    from can_tf.training.callbacks import EpochLogger, RunCheckpoint, ValidationAUROC

    x, y = labelled_data()
    model = _compiled(tiny_model())
    val = dataset(x, y)
    auroc = ValidationAUROC(val, ["A", "B", "C"])
    run = Run(tmp_path / "run")
    logger = EpochLogger(epochs=3)
    best = RunCheckpoint(run, tiny_model)  # after every callback that adds to the logs
    hist = model.fit(dataset(x, {"fused": y, "branch_1": y}), epochs=3, verbose=0, shuffle=False,
                     callbacks=[auroc, logger, best])
    # the last epoch's value equals sklearn on the model's own predictions, NaN labels masked
    probs = 1 / (1 + np.exp(-model.predict(x, verbose=0)["fused"]))
    expected = []
    for c in range(3):
        known = ~np.isnan(y[:, c])
        expected.append(roc_auc_score(y[known, c], probs[known, c]))
    assert hist.history["val_mean_auroc"][-1] == pytest.approx(np.mean(expected), abs=1e-6)
    assert len(hist.history["epoch_seconds"]) == 3 and min(hist.history["epoch_seconds"]) > 0
    assert hist.history["learning_rate"][-1] == pytest.approx(0.05)
    # best.keras: loads uncompiled (no optimizer state), same weights as the best epoch
    assert best.best == pytest.approx(max(hist.history["val_mean_auroc"]))
    loaded = keras.saving.load_model(run.best_model, compile=False)
    assert getattr(loaded, "optimizer", None) is None
    with zipfile.ZipFile(run.best_model) as z:
        names = z.namelist()
        assert "model.weights.h5" in names
        import h5py, io  # noqa: E401

        with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as h5:
            assert "optimizer" not in h5
    if best.best_epoch == 2:
        for a, b in zip(loaded.get_weights(), model.get_weights()):
            np.testing.assert_allclose(a, b)


def test_best_model_only_saved_on_improvement(tmp_path):
    from can_tf.training.callbacks import RunCheckpoint

    model = tiny_model()
    run = Run(tmp_path / "run")
    cb = RunCheckpoint(run, tiny_model, initial_best=0.8)
    cb.set_model(model)
    cb.on_epoch_end(0, {"val_mean_auroc": 0.7})
    assert not run.best_model.exists()  # worse than the best before the resume
    cb.on_epoch_end(1, {"val_mean_auroc": float("nan")})
    assert not run.best_model.exists()
    cb.on_epoch_end(2, {"val_mean_auroc": 0.85})
    assert run.best_model.exists() and cb.best_epoch == 2


def test_nan_guard_stops_and_keeps_last_good_weights(tmp_path):
    import keras
    import tensorflow as tf

    from can_tf.training.callbacks import NaNGuard

    # The loss itself turns NaN at one known batch: a NaN sample weight multiplies that row's loss
    # (NaN * x is NaN for every x). A NaN *input* would not do: whether it survives relu or
    # max-pooling depends on the CPU's kernels (oneDNN on AVX-512 returns the other operand).
    x, y = labelled_data(n=128)
    weights = np.ones(len(x), "float32")
    weights[104] = np.nan  # batches of 8: dataset batch 13 = epoch 2 (8 steps each), batch 6
    ds = tf.data.Dataset.from_tensor_slices((x, {"fused": y, "branch_1": y}, weights)).batch(8).repeat()
    model = _compiled(tiny_model())

    snapshot = {}

    class Snap(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            snapshot[epoch] = self.model.get_weights()

    guard = NaNGuard(tmp_path / "last_good.keras", tiny_model)
    hist = model.fit(ds, epochs=3, steps_per_epoch=8, verbose=0, shuffle=False, callbacks=[Snap(), guard])
    assert guard.stopped and "epoch 2, batch 6" in guard.reason, guard.reason
    assert len(hist.history["loss"]) == 2 and sorted(snapshot) == [0, 1]  # stopped in the second epoch
    assert math.isfinite(hist.history["loss"][0])
    # the weights are those from the start of epoch 2: trained for one epoch, not the initial ones
    for a, b in zip(model.get_weights(), snapshot[1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(snapshot[1], snapshot[0]))
    loaded = keras.saving.load_model(tmp_path / "last_good.keras", compile=False)
    for a, b in zip(loaded.get_weights(), snapshot[1]):
        np.testing.assert_array_equal(a, b)
    out = loaded.predict(x, verbose=0)["fused"]
    assert np.all(np.isfinite(out))


def test_progress_verbosity_rules(monkeypatch):
    from can_tf.training.trainer import progress_verbosity

    assert progress_verbosity("0") == (0, False)
    assert progress_verbosity("1") == (1, False)
    assert progress_verbosity("2") == (0, True)
    assert progress_verbosity("auto", is_chief=False) == (0, False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert progress_verbosity("auto") == (1, False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert progress_verbosity("auto") == (0, True)
    assert not math.isnan(0.0)
