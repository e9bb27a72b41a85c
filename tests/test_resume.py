"""A run killed with SIGKILL at any moment resumes with the same command: no epoch lost or repeated.

Each test kills a real ``can-tf fit`` subprocess (``tests/interrupt_at.py``) at one moment that
writes state, or makes that write fail as a full disk does, then runs the same command again to the
end and checks the run as a user would find it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4


def fit_args(phantom_dir, run_dir):
    return ["fit", "--preset", "small-baseline", "--data", str(phantom_dir), "--run-dir", str(run_dir),
            "--epochs", str(EPOCHS), "--batch-size", "8", "--set", "train.steps_per_epoch=4",
            "--set", "data.augment=false", "--set", "train.verbose=2", "--set", "train.early_stopping_patience=0"]


def run_cli(args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def committed_rows(run: Path) -> list:
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["history"]
    except FileNotFoundError:
        return []


def interrupt_then_finish(tmp_path, phantom_dir, action, moment, epoch):
    """Interrupts a fit at ``moment`` of epoch ``epoch``, reruns the same command, checks the run."""
    import keras
    import numpy as np

    import can_tf  # noqa: F401  (registers the model classes that best.keras names)
    from can_tf.run import read_history

    run = tmp_path / "run"
    args = fit_args(phantom_dir, run)
    first = run_cli(["tests/interrupt_at.py", action, moment, str(epoch), *args])
    if action == "kill":
        assert first.returncode == -signal.SIGKILL, first.stdout[-2000:] + first.stderr[-2000:]
    else:
        assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-2000:]
        assert "Traceback" not in first.stderr
        assert first.stderr.strip().splitlines()[-1].startswith("Error: no space left on device writing "
                                                                 f"{run}"), first.stderr[-2000:]
    assert not (run / "metrics.json").exists()
    before = committed_rows(run)
    # the interruption landed in epoch `epoch`'s commit: the epochs before it are committed, it is
    # not, except where the moment comes after the commit point
    committed = epoch if moment in ("publish", "history") else epoch - 1
    assert [r["epoch"] for r in before] == list(range(committed))

    again = run_cli(["-m", "can_tf_cli.main", *args])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    if committed:
        assert f"Resuming after epoch {committed}" in again.stdout
    else:
        assert "Resuming" not in again.stdout

    history = read_history(run / "history.csv")
    assert [row["epoch"] for row in history] == list(range(EPOCHS))  # none lost, none repeated
    # epochs committed before the interruption were not re-run: their rows are unchanged
    for old, new in zip(before, history):
        assert old == pytest.approx(new, nan_ok=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == committed
    assert metrics["epochs_run"] == EPOCHS
    assert metrics["best_epoch"] == max(history, key=lambda r: r["val_mean_auroc"])["epoch"] + 1
    model = keras.saving.load_model(run / "best.keras", compile=False)
    out = model.predict(np.zeros((1, 64, 64, 1), "float32"), verbose=0)["fused"]
    assert np.isfinite(out).all()
    probabilities = keras.saving.load_model(run / "model.keras").predict(np.zeros((1, 64, 64, 1), "float32"),
                                                                         verbose=0)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-out)), rtol=1e-5, atol=1e-6)
    # nothing partial left anywhere: no temporaries, no staged models, one checkpoint
    leftovers = [p.relative_to(run) for p in run.rglob("*")
                 if p.is_file() and (".tmp-" in p.name or p.name.startswith(".") and p.name != ".lock")]
    assert leftovers == []
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [f"epoch-{EPOCHS}.weights.h5", "state.json"]


@pytest.mark.slow
@pytest.mark.parametrize("moment,epoch", [
    ("weights", 1),   # the first checkpoint, half written
    ("weights", 3),   # a later one
    ("best", 1),      # the best model, half written
    ("publish", 1),   # state committed; best model and history not yet published
    ("history", 2),   # best published; history.csv not yet rewritten
])
def test_sigkill_at_each_commit_moment_then_same_command_finishes(tmp_path, phantom_dir, moment, epoch):
    interrupt_then_finish(tmp_path, phantom_dir, "kill", moment, epoch)


@pytest.mark.slow
@pytest.mark.parametrize("moment,epoch", [("weights", 2), ("best", 1), ("history", 2)])
def test_disk_full_at_a_commit_write_is_one_line_and_the_same_command_then_finishes(
        tmp_path, phantom_dir, moment, epoch):
    interrupt_then_finish(tmp_path, phantom_dir, "enospc", moment, epoch)
