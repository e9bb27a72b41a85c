"""Exports side by side and after a crash: distinct versions, leftovers of killed processes removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import export_support as support

REPO = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def cli(*args, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "can_tf_cli.main", *map(str, args)], cwd=cwd or REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def test_remove_stale_temporaries_removes_only_what_dead_processes_left(tmp_path):
    from can_tf.files import remove_stale_temporaries

    gone = dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = [tmp_path / f".metrics.json.tmp-{gone}-ab12cd_x.json", tmp_path / f".staging-3-{gone}-k9x2m1qp"]
        live = [tmp_path / f".best.keras.tmp-{os.getpid()}-ab12cd34.keras",  # this process
                tmp_path / f".staging-next-{sleeper.pid}-zz00yy11",  # another live process
                tmp_path / f".staging-assets-{os.getpid()}-q1w2e3r4"]
        others = [tmp_path / ".staging-4-abc12345",  # no pid in the name: not ours to judge
                  tmp_path / f"notes.tmp-{gone}-ab12cd34",  # not hidden: a user's file
                  tmp_path / ".hidden", tmp_path / "1"]
        for path in dead + live + others:
            if "staging" in path.name or path.name == "1":
                path.mkdir()
                (path / "saved_model.pb").write_bytes(b"...")
            else:
                path.write_bytes(b"...")
        removed = remove_stale_temporaries(tmp_path)
        assert removed == sorted(str(p) for p in dead)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in live + others)
        assert remove_stale_temporaries(tmp_path) == []
        assert remove_stale_temporaries(tmp_path / "missing") == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_temporaries_are_named_with_their_process(tmp_path):
    from can_tf.export import versioning
    from can_tf.files import atomic_write

    seen = []
    atomic_write(tmp_path / "m.json", lambda tmp: seen.append(Path(tmp).name))
    assert seen[0].startswith(f".m.json.tmp-{os.getpid()}-") and seen[0].endswith(".json")
    staging = versioning.staging_dir(tmp_path / "can", 7)
    assert staging.name.startswith(f".staging-7-{os.getpid()}-")
    assert versioning.staging_dir(tmp_path / "can").name.startswith(f".staging-next-{os.getpid()}-")


@pytest.fixture(scope="module")
def killed_exports(tmp_path_factory):
    """A SavedModel staging folder and a half-written .tflite of an export killed by SIGKILL."""
    root = tmp_path_factory.mktemp("killed")
    code = """
import os, signal, sys
from pathlib import Path
from can_tf.export import versioning
from can_tf.files import atomic_write
staging = versioning.staging_dir(Path(sys.argv[1]) / "can")
(staging / "saved_model.pb").write_bytes(b"half an export")
def die(tmp):
    Path(tmp).write_bytes(b"half a model")
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(Path(sys.argv[2]) / "can_none.tflite", die, suffix=".tmp")
"""
    run = subprocess.run([sys.executable, "-c", code, str(root / "serving"), str(root / "tflite")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    staging = list((root / "serving" / "can").iterdir())
    temporary = list((root / "tflite").iterdir())
    assert len(staging) == 1 and staging[0].name.startswith(".staging-next-")
    assert len(temporary) == 1 and temporary[0].name.startswith(".can_none.tflite.tmp-")
    return root


def test_concurrent_exports_get_different_versions(killed_exports, phantom_dir):
    """Two real `can-tf export` processes into one model folder, started together.

    Before versions were chosen at publishing time, under the lock, both picked version 1 when
    they started and the second failed when it tried to publish.
    """
    from can_tf.files import staging_folder

    base = killed_exports / "serving"
    model_dir = base / "can"
    ours = staging_folder(model_dir, "next")  # a live process's work in progress: never removed
    images = sorted((phantom_dir / "images").glob("*.png"))[:2]
    listing = killed_exports / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    args = ["export", support.keras_file(), "--out", base, "--calibration-data", listing]
    runs = [cli(*args), cli(*args)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    versions = sorted(int(line.split()[2]) for out, _ in outputs for line in out.splitlines()
                      if line.startswith("SavedModel version"))
    assert versions == [1, 2]
    # The killed export's staging folder is gone; the live one and both complete versions remain.
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(["1", "2", ours.name])
    for version in ("1", "2"):
        assert (model_dir / version / "saved_model.pb").is_file()
        assert (model_dir / version / "variables" / "variables.index").is_file()


def test_tflite_export_removes_a_killed_exports_temporary_file(killed_exports, phantom_dir):
    from can_tf.export.tflite import export_tflite

    out = killed_exports / "tflite"
    images = sorted((phantom_dir / "images").glob("*.png"))[:2]
    result = export_tflite(support.tiny_source(), out, images=images, num_verify=2)
    assert sorted(p.name for p in out.iterdir()) == ["can_none.json", "can_none.model_card.json",
                                                     "can_none.model_card.md", "can_none.tflite", "labels.txt",
                                                     "thresholds.json"]
    assert result.path.read_bytes()[4:8] == b"TFL3"


def test_publishing_threads_get_distinct_versions(tmp_path):
    from can_tf.export import versioning

    model_dir = tmp_path / "can"
    (model_dir / "3").mkdir(parents=True)  # an earlier version
    stagings = [versioning.staging_dir(model_dir) for _ in range(8)]
    start = threading.Barrier(len(stagings))
    published = []

    def publish(staging):
        (staging / "saved_model.pb").write_bytes(staging.name.encode())
        start.wait()
        published.append(versioning.publish_dir(staging, model_dir))

    threads = [threading.Thread(target=publish, args=(s,)) for s in stagings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(p.name) for p in published) == list(range(4, 12))
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(str(v) for v in range(3, 12))
    # Each version holds exactly the staging folder that was renamed into it.
    assert sorted((p / "saved_model.pb").read_text() for p in published) == sorted(s.name for s in stagings)


def test_a_version_taken_meanwhile_is_skipped_or_refused(tmp_path, monkeypatch):
    """Another tool (no lock) creating a version between choosing and renaming."""
    from can_tf.export import ExportError, versioning

    model_dir = tmp_path / "can"
    staging = versioning.staging_dir(model_dir)
    (staging / "saved_model.pb").write_bytes(b"new")
    real_next_version = versioning.next_version

    def next_version_then_taken(folder):
        version = real_next_version(folder)
        (Path(folder) / str(version)).mkdir(exist_ok=True)
        (Path(folder) / str(version) / "saved_model.pb").write_bytes(b"other tool")
        monkeypatch.setattr(versioning, "next_version", real_next_version)
        return version

    monkeypatch.setattr(versioning, "next_version", next_version_then_taken)
    assert versioning.publish_dir(staging, model_dir).name == "2"
    assert (model_dir / "1" / "saved_model.pb").read_bytes() == b"other tool"
    assert (model_dir / "2" / "saved_model.pb").read_bytes() == b"new"

    explicit = versioning.staging_dir(model_dir, 2)
    with pytest.raises(ExportError, match="version 2 already exists"):
        versioning.publish_dir(explicit, model_dir, 2)
    assert (model_dir / "2" / "saved_model.pb").read_bytes() == b"new" and explicit.is_dir()

