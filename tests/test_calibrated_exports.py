"""A calibrated run's temperatures travel into every export, and every export carries the model card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from run_helpers import make_run_dir



@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, phantom_dir):
    from can_tf.evaluation.calibration import Temperatures
    from can_tf.labels import CLASS_NAMES
    from can_tf.run import open_run

    run_dir = make_run_dir(tmp_path_factory.mktemp("calibrated") / "run", phantom_dir)
    values = tuple(0.25 + 0.25 * i for i in range(len(CLASS_NAMES)))
    Temperatures(tuple(CLASS_NAMES), values, "class", fitted_on="a test").to_json(open_run(run_dir).calibration_path)
    return run_dir


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 255, (4, 64, 64, 1)).astype("float32")


def test_the_export_reference_is_what_predict_gives(calibrated_run, images):
    from can_tf.export.source import load_source
    from can_tf.predictor import Predictor

    source = load_source(calibrated_run)
    calibrated = Predictor.load(calibrated_run).predict(images)
    raw = Predictor.load(calibrated_run, use_calibration=False).predict(images)
    assert np.max(np.abs(calibrated - raw)) > 1e-3  # the temperatures do something
    np.testing.assert_allclose(source.probabilities(images), calibrated, atol=1e-6)
    logits = source.logits_model()(images)
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(logits))), calibrated, atol=1e-6)


def test_calibration_for_other_classes_is_refused(tmp_path, phantom_dir):
    from can_tf.errors import ModelFileError
    from can_tf.evaluation.calibration import Temperatures
    from can_tf.predictor import Predictor
    from can_tf.run import open_run

    run_dir = make_run_dir(tmp_path / "run", phantom_dir)
    Temperatures(("Edema",), (2.0,), "class").to_json(open_run(run_dir).calibration_path)
    with pytest.raises(ModelFileError, match="calibration.json calibrates classes Edema"):
        Predictor.load(run_dir)


@pytest.mark.slow
def test_saved_model_and_tflite_exports_are_calibrated_and_carry_the_card(calibrated_run, images, tmp_path):
    import tensorflow as tf

    from can_tf.export import export_saved_model, export_tflite
    from can_tf.export.tflite_metadata import read_metadata
    from can_tf.predictor import Predictor

    expected = Predictor.load(calibrated_run).predict(images)
    saved = export_saved_model(calibrated_run, tmp_path / "serving", name="can")
    loaded = tf.saved_model.load(str(saved.path))
    got = loaded.signatures["serving_images"](images=tf.constant(images))["probabilities"].numpy()
    raw = Predictor.load(calibrated_run, use_calibration=False).predict(images)
    # The exports' own tolerance (noise images through the graph's resize differ by ~1e-5) ...
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.max(np.abs(got - raw)) > 1e-3  # ... far below what the temperatures change
    metadata = loaded.signatures["metadata"]()
    np.testing.assert_allclose(metadata["temperatures"].numpy(), [0.25 + 0.25 * i for i in range(14)], rtol=1e-6)
    card = json.loads((saved.path / "assets.extra" / "model_card.json").read_text())
    assert card["model_details"]["overview"].startswith("Trained on can-tf's phantom data")
    assert "temperature scaling" in card["model_parameters"]["output_format"]
    assert (saved.path / "assets" / "calibration.json").is_file()
    assert (saved.path / "assets.extra" / "model_card.md").read_text().startswith("# Model card: can")

    lite = export_tflite(calibrated_run, tmp_path / "lite", name="can")
    np.testing.assert_allclose(Predictor.load(lite.path).predict(images), expected, atol=1e-4)
    inside = read_metadata(lite.path)
    assert json.loads(inside["files"]["model_card.json"])["model_details"]["name"] == "can"
    assert (tmp_path / "lite" / "can_none.model_card.json").is_file()
