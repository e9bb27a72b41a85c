"""Training callbacks and run-directory helpers, on a tiny dict-output model (no data set needed)."""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np
import pytest

from can_tf import files
from can_tf.config import ConfigError, RunConfig
from can_tf.training import run_dir as run_dir_lib
from can_tf.training.run_dir import RunDir


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


# ---- run directory ------------------------------------------------------------------------------
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


def test_trim_history_drops_epochs_after_the_checkpoint(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_mean_auroc\n0,0.9,0.6\n1,0.8,0.7\n2,0.7,0.65\n")
    rows = run_dir_lib.trim_history(path, start_epoch=2)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert path.read_text().splitlines()[-1] == "1,0.8,0.7"
    assert run_dir_lib.best_so_far(rows) == pytest.approx(0.7)
    assert run_dir_lib.best_so_far([]) is None


def test_resume_epoch_reads_backup_metadata_with_fallback(tmp_path):
    assert run_dir_lib.resume_epoch(tmp_path) == 0
    (tmp_path / "training_metadata.json.bkp").write_text('{"epoch": 2, "batch": 0}')
    (tmp_path / "training_metadata.json").write_text('{"epo')  # torn write
    assert run_dir_lib.resume_epoch(tmp_path) == 2
    (tmp_path / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    assert run_dir_lib.resume_epoch(tmp_path) == 3


def test_prepare_run_dir_resumes_same_config_and_refuses_others(tmp_path):
    cfg = RunConfig.from_preset("small", overrides=["train.epochs=2"])
    rd = run_dir_lib.prepare_run_dir(cfg, tmp_path / "run")
    assert RunConfig.from_file(str(rd.config)).train.epochs == 2
    # same config again (verbosity and run_dir may differ): accepted
    again = RunConfig.from_preset("small", overrides=["train.epochs=2", "train.verbose=2"])
    run_dir_lib.prepare_run_dir(again, tmp_path / "run")
    other = RunConfig.from_preset("small", overrides=["train.epochs=3", "train.learning_rate=0.1"])
    rd.history.write_text("epoch,loss\n0,0.5\n")  # one epoch finished: there is a run to protect
    with pytest.raises(ConfigError) as e:
        run_dir_lib.prepare_run_dir(other, tmp_path / "run")
    assert "train.epochs: 2 -> 3" in str(e.value) and "train.learning_rate" in str(e.value)
    # a finished run is never overwritten
    (rd.root / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="finished run"):
        run_dir_lib.prepare_run_dir(cfg, tmp_path / "run")
    # a folder that is not a run directory is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a can-tf run directory"):
        run_dir_lib.prepare_run_dir(cfg, tmp_path / "other")


def test_run_dir_where_nothing_was_trained_takes_a_new_config(tmp_path):
    first = RunConfig.from_preset("small", overrides=["train.epochs=2"])
    rd = run_dir_lib.prepare_run_dir(first, tmp_path / "run")
    (rd.splits).mkdir()
    (rd.splits / "train.txt").write_text("a.png\n")  # written before the data failed to load
    fixed = RunConfig.from_preset("small", overrides=["train.epochs=5"])
    run_dir_lib.prepare_run_dir(fixed, tmp_path / "run")
    assert RunConfig.from_file(str(rd.config)).train.epochs == 5
    assert not rd.splits.exists()


def test_default_run_dir_is_deterministic_and_skips_finished_runs(tmp_path):
    cfg = RunConfig.from_preset("small")
    first = run_dir_lib.default_run_dir(cfg, root=tmp_path)
    assert first == run_dir_lib.default_run_dir(RunConfig.from_preset("small"), root=tmp_path)
    assert first.name == f"small-{run_dir_lib.config_fingerprint(cfg)}"
    assert run_dir_lib.default_run_dir(RunConfig.from_preset("small", ["train.epochs=3"]), tmp_path) != first
    first.mkdir()
    (first / "metrics.json").write_text("{}")
    assert run_dir_lib.default_run_dir(cfg, root=tmp_path).name == first.name + "-2"


# ---- callbacks ----------------------------------------------------------------------------------
def _compiled(model, lr=0.05):
    import keras

    from can_tf.losses import BCELoss

    model.compile(optimizer=keras.optimizers.Adam(lr), loss={"fused": BCELoss(), "branch_1": BCELoss()})
    return model


def test_validation_auroc_matches_sklearn_and_best_model_has_no_optimizer(tmp_path):
    import keras
    from sklearn.metrics import roc_auc_score

    from can_tf.training.callbacks import BestModelCheckpoint, EpochLogger, ValidationAUROC

    x, y = labelled_data()
    model = _compiled(tiny_model())
    val = dataset(x, y)
    auroc = ValidationAUROC(val, ["A", "B", "C"])
    best = BestModelCheckpoint(tmp_path / "best.keras", tiny_model)
    logger = EpochLogger(epochs=3)
    hist = model.fit(dataset(x, {"fused": y, "branch_1": y}), epochs=3, verbose=0, shuffle=False,
                     callbacks=[auroc, best, logger])
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
    loaded = keras.saving.load_model(tmp_path / "best.keras", compile=False)
    assert getattr(loaded, "optimizer", None) is None
    with zipfile.ZipFile(tmp_path / "best.keras") as z:
        names = z.namelist()
        assert "model.weights.h5" in names
        import h5py, io  # noqa: E401

        with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as h5:
            assert "optimizer" not in h5
    if best.best_epoch == 2:
        for a, b in zip(loaded.get_weights(), model.get_weights()):
            np.testing.assert_allclose(a, b)


def test_best_model_only_saved_on_improvement(tmp_path):
    from can_tf.training.callbacks import BestModelCheckpoint

    model = tiny_model()
    cb = BestModelCheckpoint(tmp_path / "best.keras", tiny_model, initial_best=0.8)
    cb.set_model(model)
    cb.on_epoch_end(0, {"val_mean_auroc": 0.7})
    assert not (tmp_path / "best.keras").exists()  # worse than the best before the resume
    cb.on_epoch_end(1, {"val_mean_auroc": float("nan")})
    assert not (tmp_path / "best.keras").exists()
    cb.on_epoch_end(2, {"val_mean_auroc": 0.85})
    assert (tmp_path / "best.keras").exists() and cb.best_epoch == 2


def test_nan_guard_stops_and_keeps_last_good_weights(tmp_path):
    import keras

    from can_tf.training.callbacks import NaNGuard

    x, y = labelled_data(n=64)
    x_bad = x.copy()
    x_bad[40] = np.nan  # batch 6 of epoch 2 (batches of 8: rows 40..47 are batch index 5)
    model = _compiled(tiny_model())

    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(
        (np.concatenate([x, x_bad]), {"fused": np.concatenate([y, y]), "branch_1": np.concatenate([y, y])})
    ).batch(8)  # epoch = 16 batches; the first 8 are clean

    snapshot = {}

    class Snap(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            snapshot[epoch] = self.model.get_weights()

    guard = NaNGuard(tmp_path / "last_good.keras", tiny_model)
    hist = model.fit(ds, epochs=3, verbose=0, shuffle=False, callbacks=[Snap(), guard])
    assert guard.stopped and "epoch 1, batch 14" in guard.reason
    assert len(hist.history["loss"]) == 1  # stopped during the first epoch
    for a, b in zip(model.get_weights(), snapshot[0]):
        np.testing.assert_array_equal(a, b)
    loaded = keras.saving.load_model(tmp_path / "last_good.keras", compile=False)
    out = loaded.predict(x, verbose=0)["fused"]
    assert np.all(np.isfinite(out))
    assert all(np.all(np.isfinite(w)) for w in loaded.get_weights())


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
