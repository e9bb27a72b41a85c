"""``predict``: inputs (folders, CSV, DICOM), bad files, model formats, thresholds, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from can_tf.data.errors import DataError
from can_tf.images import read_gray
from can_tf.inputs import expand_inputs, load_images


# ---- inputs -------------------------------------------------------------------------------------
def _png(path: Path, value: int = 128, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def test_expand_inputs_folders_csv_and_files(tmp_path):
    a = _png(tmp_path / "scans" / "a.png")
    b = _png(tmp_path / "scans" / "deep" / "b.png")
    (tmp_path / "scans" / "notes.txt").write_text("not an image")
    listed = tmp_path / "list.csv"
    listed.write_text("path,comment\nscans/a.png,relative to the CSV\n")
    paths = expand_inputs([str(tmp_path / "scans"), str(listed), "missing.png"])
    assert paths == [str(a), str(b), str(a), "missing.png"]  # a missing file is kept, reported later
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file\nx.png\n")
    with pytest.raises(DataError, match=r"bad.csv.*no column 'path'"):
        expand_inputs([str(bad_csv)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        expand_inputs([str(tmp_path / "empty")])


def test_unreadable_files_are_reported_by_name_and_the_rest_loaded(tmp_path):
    good = [_png(tmp_path / f"{i}.png", value=40 * i, size=50) for i in range(3)]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    text = tmp_path / "text.png"
    text.write_text("hello")
    paths = [str(good[0]), str(truncated), str(good[1]), str(text), str(tmp_path / "gone.png"), str(good[2])]
    batch = load_images(paths, image_size=32)
    assert batch.paths == [str(p) for p in good]
    assert set(batch.errors) == {str(truncated), str(text), str(tmp_path / "gone.png")}
    assert "truncated" in batch.errors[str(truncated)] and str(truncated) in batch.errors[str(truncated)]
    assert batch.images.shape == (3, 32, 32, 1) and batch.images.dtype == np.float32
    # Resized (50 -> 32) and still in [0, 255]: uniform images keep their value, no rescaling.
    np.testing.assert_allclose(batch.images[:, 0, 0, 0], [0.0, 40.0, 80.0])


def test_model_input_matches_the_training_pipeline(chestxray14_dir):
    import pandas as pd

    from can_tf.data.pipeline import make_dataset

    paths = [str(p) for p in sorted((chestxray14_dir / "images").glob("*.png"))[:3]]
    batch = load_images(paths, image_size=64)
    table = pd.DataFrame({"path": paths, "label": [0.0] * len(paths)})
    (pipeline_images, _), = make_dataset(table, ["label"], 64, 3, training=False)
    np.testing.assert_array_equal(batch.images, pipeline_images.numpy())
    assert batch.images.max() > 1.0  # [0, 255], not [0, 1]


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str, window=None, rescale=None) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from dicom_support import new_dicom

    ds = new_dicom(*pixels.shape, photometric)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def test_dicom_monochrome1_is_inverted_and_voi_window_applied(tmp_path):
    ramp = np.tile(np.linspace(0, 4000, 16).astype(np.uint16), (8, 1))  # 0, 266.7, ... 4000
    mono2 = read_gray(_write_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2"))
    mono1 = read_gray(_write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1"))
    assert mono2.dtype == np.uint8 and mono2.shape == (8, 16)
    assert mono2[0, 0] == 0 and mono2[0, -1] == 255  # stretched to the full range
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))  # MONOCHROME1: high = dark
    # Window centre 2000, width 800: below 1600 is black, above 2400 white, linear between.
    windowed = read_gray(_write_dicom(tmp_path / "w.dcm", ramp, "MONOCHROME2", window=(2000, 800)))
    values = ramp[0]
    assert (windowed[0, values < 1600] == 0).all() and (windowed[0, values > 2400] == 255).all()
    middle = (values > 1700) & (values < 2300)
    assert ((windowed[0, middle] > 0) & (windowed[0, middle] < 255)).all()


def test_dicom_through_load_images_and_missing_pydicom_message(tmp_path, monkeypatch):
    ramp = np.tile(np.linspace(0, 4000, 32).astype(np.uint16), (32, 1))
    path = _write_dicom(tmp_path / "scan.dcm", ramp, "MONOCHROME1")
    batch = load_images([str(path)], image_size=16)
    assert batch.errors == {} and batch.images.shape == (1, 16, 16, 1)
    assert batch.images[0, 0, 0, 0] > batch.images[0, 0, -1, 0]  # inverted: left bright, right dark
    import sys

    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if not installed
    batch = load_images([str(path)], image_size=16)
    assert "pip install 'can-tf[dicom]'" in batch.errors[str(path)] and str(path) in batch.errors[str(path)]


# ---- the predictor on any backend ---------------------------------------------------------------
class _MeanBrightness:
    """A stand-in backend: probability of class c = mean pixel / 255 * (c + 1) / C."""

    image_size, num_classes = 32, 3

    def __call__(self, images):
        mean = images.mean(axis=(1, 2, 3)) / 255.0
        return (mean[:, None] * (np.arange(1, 4) / 3.0)[None, :]).astype(np.float32)


def test_predict_files_batches_reports_errors_and_applies_thresholds(tmp_path):
    from can_tf.evaluation.thresholds import Thresholds
    from can_tf.predictor import Predictor

    paths = [str(_png(tmp_path / f"{i}.png", value=v)) for i, v in enumerate([0, 255, 128, 51, 204])]
    paths.insert(2, str(tmp_path / "broken.png"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    thresholds = Thresholds(("A", "B", "C"), "fixed", [0.5, 0.5, 0.5])
    predictor = Predictor(_MeanBrightness(), image_size=32, class_names=["A", "B", "C"], thresholds=thresholds)
    seen = []
    result = predictor.predict_files(paths, batch_size=2, on_batch=seen.append)
    assert seen == [2, 2, 2]
    assert list(result.errors) == [str(tmp_path / "broken.png")] and result.num_predicted == 5
    frame = result.to_frame()
    assert frame["path"].tolist() == paths
    assert np.isnan(frame.loc[2, "A"]) and "broken.png" in frame.loc[2, "error"]
    np.testing.assert_allclose(frame.loc[1, ["A", "B", "C"]].astype(float), [1 / 3, 2 / 3, 1.0], atol=1e-6)
    assert frame.loc[1, "findings"] == "B|C" and frame.loc[0, "findings"] == "No Finding"
    out = result.write(tmp_path / "p.json")
    record = json.loads(out.read_text())
    assert record["failed"] == 1 and record["predictions"][2]["error"].startswith("cannot read image")
    assert record["predictions"][1]["findings"] == ["B", "C"]


def test_cli_predict_exit_code_and_summary(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import can_tf.predictor as predictor_module
    from can_tf_cli.main import main

    good = str(_png(tmp_path / "good.png"))
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    monkeypatch.setattr(predictor_module.Predictor, "load", classmethod(
        lambda cls, path, use_thresholds=True, runtime="auto": cls(_MeanBrightness(), image_size=32, class_names=["A", "B", "C"])))
    runner = CliRunner()
    out = tmp_path / "preds.csv"
    result = runner.invoke(main, ["predict", str(tmp_path), good, str(bad), "--out", str(out)])
    assert result.exit_code == 1, result.output  # not all predicted; the others are written
    assert "1 of 2 image(s) predicted" in result.output and "bad.png" in result.output
    assert out.read_text().count("\n") == 3  # header + 2 rows
    result = runner.invoke(main, ["predict", str(tmp_path), str(bad), "--out", str(out)])
    assert result.exit_code == 1
    result = runner.invoke(main, ["predict", str(tmp_path), good, "--out", str(tmp_path / "p.txt")])
    assert result.exit_code == 2 and "--out" in result.output


# ---- real images through every model format -----------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, phantom_dir):
    from run_helpers import make_run_dir

    return make_run_dir(tmp_path_factory.mktemp("predict") / "run", phantom_dir)


def _real_images(chestxray14_dir, n=6):
    return [str(p) for p in sorted((chestxray14_dir / "images").glob("*.png"))[:n]]


def test_run_dir_and_keras_file_predict_what_the_model_computes(run_dir, chestxray14_dir, tmp_path):
    import keras

    from can_tf.images import load_image
    from can_tf.models import inference_model
    from can_tf.predictor import Predictor

    paths = _real_images(chestxray14_dir)
    from_run = Predictor.load(run_dir)
    assert from_run.format == "run" and from_run.image_size == 64 and len(from_run.class_names) == 14
    # A .keras file on its own (no config beside it): 14 outputs -> the ChestX-ray14 class names.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run_dir / "best.keras", alone / "model.keras")
    from_file = Predictor.load(alone / "model.keras")
    assert from_file.format == "keras" and from_file.class_names == from_run.class_names

    a = from_run.predict_files(paths, batch_size=4).probabilities
    b = from_file.predict_files(paths, batch_size=5).probabilities
    # Reference: the pipeline's pixels, straight into the Keras model (scaling once, in the model).
    model = inference_model(keras.saving.load_model(run_dir / "best.keras", compile=False))
    pixels = np.stack([load_image(p, 64).pixels for p in paths])
    expected = np.asarray(model(pixels, training=False))
    np.testing.assert_allclose(a, expected, atol=1e-5)
    np.testing.assert_allclose(b, expected, atol=1e-5)
    # Scaling twice (pixels / 255 before the model) would change the answer: the check has teeth.
    assert np.abs(np.asarray(model(pixels / 255.0, training=False)) - expected).max() > 1e-4


def test_cli_predict_real_folder_with_a_bad_file(run_dir, chestxray14_dir, tmp_path):
    from click.testing import CliRunner

    from can_tf_cli.main import main

    folder = tmp_path / "scans"
    folder.mkdir()
    for p in _real_images(chestxray14_dir, 3):
        (folder / Path(p).name).symlink_to(p)
    (folder / "corrupt.png").write_bytes(Path(_real_images(chestxray14_dir, 1)[0]).read_bytes()[:500])
    out = tmp_path / "preds.json"
    result = CliRunner().invoke(main, ["predict", str(run_dir), str(folder), "--out", str(out), "--batch-size", "2"])
    assert result.exit_code == 1, result.output  # one file could not be read; the other three are written
    assert "3 of 4 image(s) predicted" in result.output and "corrupt.png" in result.output
    record = json.loads(out.read_text())
    by_name = {Path(r["path"]).name: r for r in record["predictions"]}
    assert "truncated" in by_name["corrupt.png"]["error"]
    assert len(by_name[Path(_real_images(chestxray14_dir, 1)[0]).name]["probabilities"]) == 14


def test_cli_predict_csv_with_image_root_and_the_phantom_warning(run_dir, chestxray14_dir, tmp_path):
    from click.testing import CliRunner

    from can_tf_cli.main import main

    names = [Path(p).name for p in _real_images(chestxray14_dir, 2)]
    listed = tmp_path / "lists" / "scans.csv"
    listed.parent.mkdir()
    listed.write_text("path\n" + "".join(f"{n}\n" for n in names))  # names relative to the image root
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(main, ["predict", str(run_dir), str(listed), "--out", str(out),
                                       "--image-root", str(chestxray14_dir / "images")])
    assert result.exit_code == 0, result.output
    assert "2 of 2 image(s) predicted" in result.output
    # a model trained on phantom images, used on real radiographs, says what it is, first and last
    from can_tf.provenance import PHANTOM_WARNING as warning

    assert warning.startswith("**Trained on can-tf's phantom data") and warning.endswith("not a diagnostic model.**")
    lines = result.output.strip().splitlines()
    assert lines[0] == warning and lines[-1] == warning
    # without the root, the same names resolve beside the CSV, where they are not
    missing = CliRunner().invoke(main, ["predict", str(run_dir), str(listed), "--out", str(out)])
    assert missing.exit_code == 1 and "0 of 2 image(s) predicted" in missing.output


def test_predictor_refuses_non_finite_pixels_naming_the_image(run_dir):
    from can_tf.predictor import Predictor

    predictor = Predictor.load(run_dir)
    images = np.full((3, 64, 64, 1), 100.0, np.float32)
    images[1, 5, 5, 0] = np.nan
    with pytest.raises(DataError, match="batch index 1 holds NaN or inf"):
        predictor.predict(images)
    assert np.isfinite(predictor.predict(images[[0, 2]])).all()


@pytest.mark.slow
def test_every_model_format_gives_the_same_probabilities(run_dir, chestxray14_dir, tmp_path):
    """Run dir, .keras, SavedModel (serving_images) and TFLite on real NIH images agree."""
    from can_tf.export.saved_model import export_saved_model
    from can_tf.export.tflite import export_tflite
    from can_tf.predictor import Predictor

    paths = _real_images(chestxray14_dir, 8)
    saved = export_saved_model(run_dir, tmp_path / "serving", name="can", images=paths[:2])
    lite = export_tflite(run_dir, tmp_path / "tflite", quantize="none", images=paths[:2])
    reference = Predictor.load(run_dir).predict_files(paths, batch_size=3).probabilities
    for model_path, fmt in ((run_dir / "best.keras", "keras"), (saved.path, "saved_model"),
                            (saved.path.parent, "saved_model"), (lite.path, "tflite")):
        predictor = Predictor.load(model_path)
        assert predictor.format == fmt and predictor.image_size == 64
        assert predictor.class_names == Predictor.load(run_dir).class_names
        probs = predictor.predict_files(paths, batch_size=3).probabilities
        np.testing.assert_allclose(probs, reference, atol=1e-4, err_msg=str(model_path))
