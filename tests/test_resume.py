"""A run killed with SIGKILL mid-training resumes after its last finished epoch with the same command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 5


def fit_command(phantom_dir, run_dir):
    # 20 steps of 8 images per epoch: long enough (~1 s) to land the kill inside an epoch.
    return [sys.executable, "-m", "can_tf_cli.main", "fit", "--preset", "small-baseline",
            "--data", str(phantom_dir), "--run-dir", str(run_dir), "--epochs", str(EPOCHS),
            "--batch-size", "8", "--set", "train.steps_per_epoch=20", "--set", "data.augment=false",
            "--set", "train.verbose=2"]


def finished_epochs(history: Path) -> int:
    try:
        return max(0, len(history.read_text().splitlines()) - 1)
    except OSError:
        return 0


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_after_last_finished_epoch(tmp_path, phantom_dir):
    import keras
    import numpy as np

    import can_tf.models  # noqa: F401  (registers the model classes that best.keras names)
    from can_tf.training.run_dir import read_history, resume_epoch

    run = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = fit_command(phantom_dir, run)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    try:
        while finished_epochs(run / "history.csv") < 2:  # kill during the third epoch
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no second epoch within 10 minutes"
            time.sleep(0.05)
        time.sleep(0.1)  # into the third epoch, well before the fifth ends
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists()
    checkpoint_epoch = resume_epoch(run / "checkpoint")
    before = read_history(run / "history.csv")
    assert 2 <= checkpoint_epoch < EPOCHS
    # whatever the kill interrupted, best.keras is a complete, loadable model
    keras.saving.load_model(run / "best.keras", compile=False)

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Resuming after epoch {checkpoint_epoch}" in again.stdout

    history = read_history(run / "history.csv")
    assert [row["epoch"] for row in history] == list(range(EPOCHS))  # none lost, none repeated
    # epochs finished before the checkpoint were not re-run: their rows are unchanged
    for old, new in zip(before[:checkpoint_epoch], history[:checkpoint_epoch]):
        assert old == new
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == checkpoint_epoch
    assert metrics["epochs_this_session"] == EPOCHS - checkpoint_epoch
    assert metrics["epochs_run"] == EPOCHS
    model = keras.saving.load_model(run / "best.keras", compile=False)
    out = model.predict(np.zeros((1, 64, 64, 1), "float32"), verbose=0)["fused"]
    assert np.isfinite(out).all()
    assert not any(p.name.startswith(".") for p in run.iterdir())  # no stale temporary files
