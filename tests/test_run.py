"""The run directory (`can_tf.run`): lock, commit and restore, malformed files, failed starts, extend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from can_tf.config import ConfigError, RunConfig
from can_tf.run import (Run, RunError, RunInUseError, config_fingerprint, default_run_dir, history_csv,
                        open_run, read_history)

REPO = Path(__file__).resolve().parents[1]


def tiny_compiled_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def train_a_step(model):
    model.fit(np.ones((8, 4), "float32"), np.zeros((8, 3), "float32"), verbose=0)


# ---- lock ---------------------------------------------------------------------------------------
def test_a_second_holder_is_refused_at_once_and_a_dead_holder_leaves_no_stale_lock(tmp_path):
    run = Run(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from can_tf.run import Run; Run(sys.argv[1]).lock(); print('locked', flush=True); "
        "time.sleep(60)"), str(run.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=rf"run directory .*run is in use by process {holder.pid}$"):
            Run(run.root).lock()
    finally:
        holder.kill()
        holder.wait()
    Run(run.root).lock()  # the kernel released the dead process's lock


def test_fit_on_a_run_in_use_is_refused_with_exit_code_1(tmp_path, phantom_dir):
    run = Run(tmp_path / "run")
    run.lock()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "can_tf_cli.main", "fit", "--data", str(phantom_dir), "--run-dir",
             str(run.root), "--epochs", "1"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    finally:
        run.unlock()
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"Error: run directory {run.root} is in use by process {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not run.config_path.exists()  # the refused process wrote nothing


# ---- commit and restore -------------------------------------------------------------------------
def test_commit_then_restore_gives_back_weights_optimizer_state_and_history(tmp_path):
    run = Run(tmp_path)
    model = tiny_compiled_model()
    for epoch in range(2):
        train_a_step(model)
        run.commit_epoch(epoch, {"loss": 1.0 - epoch, "val_mean_auroc": 0.5 + epoch / 10}, model)
    assert sorted(p.name for p in run.checkpoint.iterdir()) == ["epoch-2.weights.h5", "state.json"]
    assert [r["epoch"] for r in read_history(run.history)] == [0, 1]

    fresh = tiny_compiled_model()
    resumed = run.restore(fresh)
    assert resumed.epoch == 2 and [r["loss"] for r in resumed.rows] == [1.0, 0.0]
    assert int(fresh.optimizer.iterations) == int(model.optimizer.iterations) == 2
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_truncated_checkpoint_is_set_aside_in_one_line_and_training_restarts_at_epoch_0(tmp_path, capsys):
    run = Run(tmp_path)
    model = tiny_compiled_model()
    run.commit_epoch(0, {"loss": 1.0}, model)
    weights = run.checkpoint / "epoch-1.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])  # as a disk error or an older writer would leave it

    resumed = run.restore(tiny_compiled_model())
    assert resumed.epoch == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"Checkpoint file {weights} is unreadable")
    assert err[0].endswith("set aside as epoch-1.weights.h5.corrupt") and err[1] == "Restarting from epoch 0"
    assert (run.checkpoint / "epoch-1.weights.h5.corrupt").is_file()  # kept, not deleted


def test_a_checkpoint_left_by_the_old_layout_is_set_aside_not_a_crash(tmp_path, capsys):
    run = Run(tmp_path)
    run.checkpoint.mkdir()
    (run.checkpoint / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    (run.checkpoint / "training_metadata.json").write_text('{"epoch": 0}')
    run.history.write_text("epoch,loss\n0,1.0\n")
    assert run.restore(tiny_compiled_model()).epoch == 0
    assert not (run.checkpoint / "latest.weights.h5").exists()
    assert (run.checkpoint / "latest.weights.h5.corrupt").exists()
    assert not run.history.exists() and (tmp_path / "history.csv.corrupt").exists()
    assert "set aside" in capsys.readouterr().err


def test_uncommitted_epoch_files_are_discarded_and_history_follows_the_commit(tmp_path):
    run = Run(tmp_path)
    model = tiny_compiled_model()
    run.commit_epoch(0, {"loss": 1.0, "val_mean_auroc": 0.6}, model)
    # a kill after writing epoch 2's weights and staged best model but before its commit
    (run.checkpoint / "epoch-2.weights.h5").write_bytes(b"partial")
    (run.checkpoint / "best-epoch-2.keras").write_bytes(b"partial")
    run.history.write_text(run.history.read_text() + "1,0.5,0.9\n")  # a row ahead of the checkpoint
    resumed = run.restore(tiny_compiled_model())
    assert resumed.epoch == 1
    assert sorted(p.name for p in run.checkpoint.iterdir()) == ["epoch-1.weights.h5", "state.json"]
    assert [r["epoch"] for r in read_history(run.history)] == [0]


# ---- history ------------------------------------------------------------------------------------
def test_history_csv_round_trips_and_a_malformed_one_names_file_and_line(tmp_path):
    rows = [{"epoch": 0, "loss": 0.5, "val_mean_auroc": float("nan")}, {"epoch": 1, "loss": 0.25,
                                                                        "val_mean_auroc": 0.75}]
    path = tmp_path / "history.csv"
    path.write_text(history_csv(rows))
    back = read_history(path)
    assert [r["epoch"] for r in back] == [0, 1] and back[1]["val_mean_auroc"] == 0.75
    assert np.isnan(back[0]["val_mean_auroc"])

    # two writers interleaved: a second header in the middle
    path.write_text(history_csv(rows) + history_csv(rows))
    with pytest.raises(RunError, match=r"history.csv, line 4: epoch='epoch' is not a number"):
        read_history(path)
    path.write_text("epoch,loss\n0,0.5,7\n")
    with pytest.raises(RunError, match=r"history.csv, line 2: expected 2 fields"):
        read_history(path)


# ---- starting, refusing, extending --------------------------------------------------------------
def test_a_start_that_fails_before_any_epoch_leaves_nothing_behind(tmp_path):
    config = RunConfig.from_preset("small")
    run = Run(tmp_path / "new")
    with pytest.raises(RuntimeError, match="data failed"):
        with run.training(config):
            assert run.config_path.is_file()
            raise RuntimeError("data failed")
    assert not run.root.exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with Run(existing).training(config):
            raise RuntimeError("data failed")
    assert list(existing.iterdir()) == []


def test_same_config_resumes_other_config_is_refused_and_finished_needs_extend(tmp_path):
    config = RunConfig.from_preset("small")
    run = Run(tmp_path / "run")
    with run.training(config):
        run.commit_epoch(0, {"loss": 1.0}, tiny_compiled_model())
    with run.training(RunConfig.from_preset("small", ["train.verbose=0"])):  # resume-free field
        pass
    with pytest.raises(ConfigError, match=r"different config.*train.epochs: 40 -> 3"):
        with run.training(RunConfig.from_preset("small", ["train.epochs=3"])):
            pass
    run.metrics.write_text("{}")
    with pytest.raises(ConfigError, match="holds a finished run.*--extend"):
        with run.training(config):
            pass
    with pytest.raises(ConfigError, match="already has 1 epochs; ask for more"):
        with run.training(RunConfig.from_preset("small", ["train.epochs=1"]), extend=True):
            pass
    with run.training(RunConfig.from_preset("small", ["train.epochs=40"]), extend=True):
        assert not run.finished and (run.root / "metrics-1-epochs.json").is_file()  # kept, not lost
    assert run.config().train.epochs == 40


def test_not_a_run_directory_is_refused_by_name(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no config.yaml"):
        with Run(tmp_path).training(RunConfig.from_preset("small")):
            pass
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(RunError, match="not a can-tf run directory"):
        open_run(tmp_path)


def test_default_run_dir_is_stable_and_skips_finished_runs(tmp_path):
    cfg = RunConfig.from_preset("small")
    first = default_run_dir(cfg, root=tmp_path)
    assert first == default_run_dir(RunConfig.from_preset("small"), root=tmp_path)
    assert first.name == f"small-{config_fingerprint(cfg)}"
    assert default_run_dir(RunConfig.from_preset("small", ["train.epochs=3"]), tmp_path) != first
    first.mkdir()
    (first / "metrics.json").write_text("{}")
    assert default_run_dir(cfg, root=tmp_path).name == first.name + "-2"
