"""No space left on device: one line naming the path, exit code 1, nothing partial, and a retry works.

The CLI tests write onto a real, small tmpfs (mounting needs root; they skip elsewhere) and free
space by remounting it bigger or deleting a filler file; the unit tests inject the errors that
writers raise on a full disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import export_support as support

REPO = Path(__file__).resolve().parents[1]


class SmallDisk:
    """A tmpfs of a chosen size mounted at ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True,
                       capture_output=True, text=True)

    def listing(self) -> list:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*"))


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KB tmpfs, unmounted at the end; skipped where this process may not mount one."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs can only be mounted as root (with mount(8)); "
                    "the disk-full CLI tests need one")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({run.stderr.strip() or run.returncode})")
    try:
        yield SmallDisk(mount_point)
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "can_tf_cli.main", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def assert_disk_full_error(run: subprocess.CompletedProcess, path: Path) -> None:
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output[-3000:]
    assert errors[0].startswith(f"Error: no space left on device writing {path} ("), errors[0]
    assert "Free some space and run the command again." in errors[0]
    for raw in ("Traceback", "ResourceExhaustedError", "Errno 28", "OSError"):
        assert raw not in output, output[-3000:]


def fill(folder: Path) -> Path:
    """Takes all the space left on ``folder``'s disk with one file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: closing it must not write again
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_saved_model_export_on_a_full_disk(small_disk, phantom_dir):
    base = small_disk.path / "serving"
    small_disk.resize("300k")  # the tiny model's SavedModel takes about 800 KB
    args = ["export", support.keras_file(), "--out", base, "--calibration-data", phantom_dir / "images"]
    assert_disk_full_error(cli(*args), base / "can")
    assert small_disk.listing() == []  # no version, no staging folder, not even the folders it made

    small_disk.resize("16m")
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "SavedModel version 1" in again.stdout
    assert sorted(p.name for p in (base / "can").iterdir()) == ["1"]
    assert (base / "can" / "1" / "variables" / "variables.index").is_file()


def test_tflite_export_on_a_full_disk(small_disk, phantom_dir):
    out = small_disk.path / "tflite"
    small_disk.resize("200k")  # the tiny model's .tflite is about 500 KB
    args = ["export", support.keras_file(), "--format", "tflite", "--out", out,
            "--calibration-data", phantom_dir / "images"]
    run = cli(*args)
    assert_disk_full_error(run, out / "can_none.tflite")
    assert small_disk.listing() == []

    small_disk.resize("4m")
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["can_none.json", "can_none.model_card.json",
                                                     "can_none.model_card.md", "can_none.tflite", "labels.txt"]


def test_data_synth_on_a_full_disk(small_disk):
    out = small_disk.path / "phantom"
    args = ["data", "synth", out, "--patients", "30", "--image-size", "64"]
    assert_disk_full_error(cli(*args), out)
    assert small_disk.listing() == []

    small_disk.resize("4m")
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    entries = (out / "Data_Entry_2017.csv").read_bytes()
    listing = small_disk.listing()
    assert not [name for name in listing if "staging" in name]

    # Rewriting an existing data set on a full disk leaves the earlier one as it was.
    filler = fill(small_disk.path)
    failed = cli(*args, "--seed", "1")
    assert_disk_full_error(failed, out)
    assert small_disk.listing() == sorted(listing + ["filler"])
    assert (out / "Data_Entry_2017.csv").read_bytes() == entries

    filler.unlink()
    second = cli(*args, "--seed", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert (out / "Data_Entry_2017.csv").read_bytes() != entries


# ---- injected errors --------------------------------------------------------------------------
def _chained(error: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException:
            raise error  # noqa: B904  the implicit context is the point
    except BaseException as e:
        return e


def test_disk_full_is_recognised_in_the_errors_writers_raise():
    import tensorflow as tf

    from can_tf.files import DiskFullError, is_disk_full

    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert is_disk_full(no_space)
    assert is_disk_full(DiskFullError("/x/model.keras"))
    # TensorFlow's file writers: RESOURCE_EXHAUSTED with the system's message.
    assert is_disk_full(tf.errors.ResourceExhaustedError(
        None, None, "/x/variables/variables_temp/part-0; No space left on device [Op:SaveV2]"))
    # h5py names the errno in its message; zipfile (.keras files) raises on top of the OSError.
    assert is_disk_full(OSError("Unable to create file (file write failed: errno = 28, error message = "
                                "'No space left on device')"))
    assert is_disk_full(_chained(zipfile.BadZipFile("File is not a zip file"), no_space))
    assert is_disk_full(_chained(ValueError("saving failed"), no_space))
    # Running out of memory and other write errors are not a full disk.
    assert not is_disk_full(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied", "/x"))
    assert not is_disk_full(MemoryError())


def test_atomic_write_names_its_target_when_the_disk_fills(tmp_path):
    from can_tf.files import DiskFullError, atomic_write

    target = tmp_path / "best.keras"
    target.write_bytes(b"the previous model")

    def write(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DiskFullError) as caught:
        atomic_write(target, write, suffix=".keras")
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras"]


def test_injected_disk_full_in_saved_model_save_leaves_nothing(tmp_path, phantom_dir, monkeypatch):
    import tensorflow as tf

    from can_tf.export import ExportError
    from can_tf.export.saved_model import export_saved_model

    def full_disk(module, export_dir, signatures=None):
        (Path(export_dir) / "saved_model.pb").write_bytes(b"half")
        raise tf.errors.ResourceExhaustedError(None, None, f"{export_dir}/variables/x; No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    images = sorted((phantom_dir / "images").glob("*.png"))[:2]
    with pytest.raises(ExportError) as caught:
        export_saved_model(support.tiny_source(), tmp_path / "serving", images=images)
    message = str(caught.value)
    assert message.startswith(f"no space left on device writing {tmp_path / 'serving' / 'can'} (")
    assert "nothing was published" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_writing_tflite_companions_removes_only_new_files(tmp_path, phantom_dir, monkeypatch):
    from can_tf.export import ExportError, versioning
    from can_tf.export.tflite import export_tflite
    from can_tf.labels import CLASS_NAMES

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{n}\n" for n in CLASS_NAMES))  # shared with an earlier export
    (tmp_path / "can_float16.tflite").write_bytes(b"an earlier model")
    real_write = versioning.write_file_atomic

    def full_at_metadata(target, data, *, overwrite=False):
        if Path(target).name == "can_none.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(target, data, overwrite=overwrite)

    monkeypatch.setattr(versioning, "write_file_atomic", full_at_metadata)
    images = sorted((phantom_dir / "images").glob("*.png"))[:2]
    with pytest.raises(ExportError, match="no space left on device writing .*can_none.tflite"):
        export_tflite(support.tiny_source(), tmp_path, images=images, num_verify=2)
    # thresholds.json was new and went again; the earlier model and its labels stay.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["can_float16.tflite", "labels.txt"]
    assert labels.read_text().split() == list(CLASS_NAMES)


# ---- fit ----------------------------------------------------------------------------------------
def fit_args(phantom_dir, run_dir, epochs):
    return ["fit", "--preset", "small-baseline", "--data", phantom_dir, "--run-dir", run_dir, "--epochs", epochs,
            "--batch-size", "8", "--set", "train.steps_per_epoch=3", "--set", "data.augment=false",
            "--set", "train.verbose=2", "--set", "train.early_stopping_patience=0"]


def test_fit_on_a_disk_too_small_for_its_first_checkpoint(small_disk, phantom_dir):
    run = small_disk.path / "run"
    failed = cli(*fit_args(phantom_dir, run, 2))
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert failed.returncode == 1 and len(errors) == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert errors[0].startswith(f"Error: no space left on device writing {run}"), errors[0]
    assert "no epoch had finished, so nothing of this run was kept" in errors[0]
    assert "Traceback" not in failed.stderr
    assert small_disk.listing() == []  # nothing partial left visible

    small_disk.resize("50m")
    again = cli(*fit_args(phantom_dir, run, 2))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert (run / "metrics.json").is_file()


@pytest.mark.slow
def test_fit_that_fills_the_disk_mid_run_keeps_its_epochs_and_resumes_once_space_is_freed(small_disk, phantom_dir):
    from can_tf.run import read_history

    # Measure what one epoch takes on this disk, then make the disk just too small for a second.
    small_disk.resize("50m")
    probe = small_disk.path / "probe"
    assert cli(*fit_args(phantom_dir, probe, 1)).returncode == 0
    used = shutil.disk_usage(small_disk.path).used
    checkpoint = (probe / "checkpoint" / "epoch-1.weights.h5").stat().st_size
    shutil.rmtree(probe)
    small_disk.resize(f"{(used + checkpoint // 2) // 1024}k")

    run = small_disk.path / "run"
    failed = cli(*fit_args(phantom_dir, run, 3))
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert failed.returncode == 1 and len(errors) == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert errors[0].startswith(f"Error: no space left on device writing {run / 'checkpoint'}"), errors[0]
    assert f"the run keeps its 1 finished epoch(s) in {run}" in errors[0]
    assert "Traceback" not in failed.stderr
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [0]
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]

    small_disk.resize("50m")
    again = cli(*fit_args(phantom_dir, run, 3))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "Resuming after epoch 1" in again.stdout
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [0, 1, 2]


def test_evaluate_on_a_full_disk_leaves_no_half_report(small_disk, phantom_dir, tmp_path):
    from run_helpers import make_run_dir

    run = make_run_dir(tmp_path / "run", phantom_dir)
    out = small_disk.path / "report"
    args = ["evaluate", run, "--bootstrap", "5", "--thresholds", "none", "--gallery", "0", "--out", out]
    failed = cli(*args)
    output = failed.stdout + failed.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert failed.returncode == 1 and len(errors) == 1, output[-3000:]
    assert errors[0].startswith(f"Error: no space left on device writing {out}/"), errors[0]
    assert ".staging" not in errors[0]
    assert "no part of the new report was written" in errors[0] and "Traceback" not in output
    assert small_disk.listing() == []  # no partial report, no staging folder

    small_disk.resize("10m")
    again = cli(*args)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    # --thresholds none and no thresholds saved: no operating points, every other file.
    assert sorted(p.name for p in out.iterdir()) == [
        "calibration.json", "calibration.md", "figures", "model_card.json", "model_card.md", "report.csv",
        "report.html", "report.json", "report.md", "roc.png", "subgroups.json", "subgroups.md"]
