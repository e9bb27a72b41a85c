"""LiteRT as predict's CPU runtime: converted once, cached beside the model, checked against Keras."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from can_tf.predictor import Predictor


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, phantom_dir):
    from run_helpers import make_run_dir

    return make_run_dir(tmp_path_factory.mktemp("litert") / "run", phantom_dir)


@pytest.fixture()
def fresh_run(run_dir, tmp_path):
    """A copy of the run without its cache: each test sees its own first conversion."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("litert-cache"))
    return copy


def _real_images(chestxray14_dir, n=6):
    return [str(p) for p in sorted((chestxray14_dir / "images").glob("*.png"))[:n]]


def _cached(run):
    return sorted(p.name for p in (Path(run) / "litert-cache").iterdir())


def test_litert_predicts_what_keras_predicts_and_is_cached_beside_the_run(fresh_run, chestxray14_dir,
                                                                          monkeypatch):
    paths = _real_images(chestxray14_dir)
    keras_side = Predictor.load(fresh_run, runtime="keras")
    assert keras_side.runtime == "keras" and keras_side.runtime_note is None
    expected = keras_side.predict_files(paths, batch_size=4).probabilities

    first = Predictor.load(fresh_run, runtime="litert")
    assert first.runtime == "tflite" and first.format == "run"
    assert "written to" in first.runtime_note and "litert-cache" in first.runtime_note
    # batches of 4, then 2: the interpreter is resized to each batch size
    np.testing.assert_allclose(first.predict_files(paths, batch_size=4).probabilities, expected, atol=1e-5)
    names = _cached(fresh_run)
    assert len(names) == 2 and names[0].startswith("best-") and names[0].endswith(".json")
    record = json.loads((fresh_run / "litert-cache" / names[0]).read_text())
    assert record["source"] == "best.keras" and 0 <= record["max_abs_diff"] <= record["tolerance"] == 1e-4

    # The second load runs the cached file without loading the Keras model at all.
    import can_tf.runtime

    def no_keras(*args, **kwargs):
        raise AssertionError("the Keras model was loaded on a cache hit")

    monkeypatch.setattr(can_tf.runtime, "load_keras_model", no_keras)
    second = Predictor.load(fresh_run, runtime="litert")
    assert second.runtime == "tflite" and "cached in" in second.runtime_note
    np.testing.assert_allclose(second.predict_files(paths, batch_size=6).probabilities, expected, atol=1e-5)
    assert _cached(fresh_run) == names
    # Grad-CAM and the like still get the Keras model, loaded when asked for.
    monkeypatch.undo()
    assert second.keras_model.count_params() == keras_side.keras_model.count_params()


def test_a_damaged_cached_file_is_converted_again_not_run(fresh_run):
    images = np.full((2, 64, 64, 1), 90.0, np.float32)
    expected = Predictor.load(fresh_run, runtime="keras").predict(images)
    Predictor.load(fresh_run, runtime="litert")
    (tflite,) = (fresh_run / "litert-cache").glob("*.tflite")
    good = tflite.read_bytes()
    tflite.write_bytes(good[: len(good) // 2])  # truncated, as a full disk or a killed copy leaves it
    again = Predictor.load(fresh_run, runtime="litert")
    assert "written to" in again.runtime_note  # converted again, not loaded
    assert tflite.read_bytes() == good
    np.testing.assert_allclose(again.predict(images), expected, atol=1e-5)


def test_new_calibration_converts_again_with_the_temperatures_baked_in(fresh_run):
    from can_tf.evaluation.calibration import Temperatures

    images = np.linspace(0, 255, 3 * 64 * 64, dtype=np.float32).reshape(3, 64, 64, 1)
    Predictor.load(fresh_run, runtime="litert")
    before = _cached(fresh_run)
    class_names = Predictor.load(fresh_run, runtime="keras").class_names
    values = tuple(0.5 + 0.1 * i for i in range(len(class_names)))
    Temperatures(tuple(class_names), values, "class", fitted_on="test").to_json(fresh_run / "calibration.json")

    calibrated = Predictor.load(fresh_run, runtime="litert")
    assert "written to" in calibrated.runtime_note
    after = _cached(fresh_run)
    assert len(after) == 2 and not set(after) & set(before)  # the old conversion is removed
    expected = Predictor.load(fresh_run, runtime="keras").predict(images)
    uncalibrated = Predictor.load(fresh_run, runtime="keras", use_calibration=False).predict(images)
    assert np.abs(expected - uncalibrated).max() > 1e-3  # the temperatures change the answer...
    np.testing.assert_allclose(calibrated.predict(images), expected, atol=1e-5)  # ...and LiteRT has them


def test_a_killed_conversion_leaves_nothing_behind(fresh_run):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(gone.stdout)  # a process that has ended
    folder = fresh_run / "litert-cache"
    folder.mkdir()
    stale = folder / f".best-0123456789ab.tflite.tmp-{pid}-abc123.tmp"
    stale.write_bytes(b"half a flatbuffer")
    Predictor.load(fresh_run, runtime="litert")
    assert not stale.exists() and len(_cached(fresh_run)) == 2


def test_a_conversion_that_differs_from_keras_is_not_used(fresh_run, monkeypatch):
    import can_tf.litert_cache as litert_cache

    monkeypatch.setattr(litert_cache, "TOLERANCE", -1.0)  # no conversion can pass
    predictor = Predictor.load(fresh_run, runtime="litert")
    assert predictor.runtime == "keras"
    assert predictor.runtime_note.startswith("Keras runs the model: the LiteRT conversion of ")
    assert "differs from Keras by" in predictor.runtime_note
    assert not (fresh_run / "litert-cache").exists()


def test_a_model_that_does_not_convert_runs_in_keras_and_says_why(fresh_run, monkeypatch):
    import can_tf.export.tflite as tflite
    from can_tf.errors import ExportError

    def refuse(*args, **kwargs):
        raise ExportError("TFLite conversion (none) failed with builtin ops only: op FancyOp")

    monkeypatch.setattr(tflite, "convert_tflite", refuse)
    predictor = Predictor.load(fresh_run, runtime="litert")
    assert predictor.runtime == "keras"
    assert predictor.runtime_note == (f"Keras runs the model: {fresh_run / 'best.keras'} does not convert to "
                                      f"LiteRT: TFLite conversion (none) failed with builtin ops only: op FancyOp")
    assert predictor.predict(np.zeros((1, 64, 64, 1), np.float32)).shape == (1, 14)


def test_an_unwritable_model_folder_runs_the_conversion_from_memory(fresh_run, monkeypatch):
    import errno

    import can_tf.files

    def read_only(path, data, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(can_tf.files, "atomic_write_bytes", read_only)
    predictor = Predictor.load(fresh_run, runtime="litert")
    assert predictor.runtime == "tflite" and "kept in memory" in predictor.runtime_note
    assert predictor.predict(np.zeros((1, 64, 64, 1), np.float32)).shape == (1, 14)


def test_auto_is_litert_on_a_cpu_and_keras_where_a_gpu_is_seen(fresh_run, monkeypatch):
    import tensorflow as tf

    assert Predictor.load(fresh_run, runtime="auto").runtime == "tflite"
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert Predictor.load(fresh_run, runtime="auto").runtime == "keras"
    with pytest.raises(ValueError, match="runtime must be one of auto, keras, litert"):
        Predictor.load(fresh_run, runtime="xnnpack")


def test_cli_predict_says_which_runtime_ran(run_dir, chestxray14_dir, tmp_path):
    from click.testing import CliRunner

    from can_tf_cli.main import main

    paths = _real_images(chestxray14_dir, 3)
    outputs = {}
    for runtime in ("litert", "keras"):
        out = tmp_path / f"{runtime}.json"
        result = CliRunner().invoke(main, ["predict", str(run_dir), *paths, "--out", str(out), "--runtime", runtime])
        assert result.exit_code == 0, result.output
        assert ("LiteRT conversion" in result.output) == (runtime == "litert"), result.output
        assert f"3 of 3 image(s) predicted with run model {run_dir} through {'LiteRT' if runtime == 'litert' else 'Keras'}" \
            in result.output
        outputs[runtime] = np.array([list(r["probabilities"].values()) for r in json.loads(out.read_text())["predictions"]])
    np.testing.assert_allclose(outputs["litert"], outputs["keras"], atol=1e-5)
