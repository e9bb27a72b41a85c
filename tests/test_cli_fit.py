"""`can-tf fit` end to end on the tiny phantom data set, and its config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from can_tf.labels import CLASS_NAMES
from can_tf_cli.main import main

# One epoch of two steps of 8 images: enough to write every file of a run directory.
QUICK = ["--epochs", "1", "--batch-size", "8", "--set", "train.steps_per_epoch=2",
         "--set", "data.augment=false", "--set", "train.verbose=2"]


def fit(*args):
    return CliRunner().invoke(main, ["fit", *args], catch_exceptions=False)


def test_bad_override_is_a_usage_error_naming_the_field(tmp_path):
    result = fit("--run-dir", str(tmp_path / "r"), "--set", "train.epochs=0")
    assert result.exit_code == 2
    assert "train.epochs must be at least 1" in result.output
    result = fit("--set", "train.nope=1")
    assert result.exit_code == 2 and "train has no field 'nope'" in result.output
    result = fit("--preset", "nosuch")
    assert result.exit_code == 2 and "unknown preset 'nosuch'" in result.output
    assert not (tmp_path / "r").exists()  # nothing written for an invalid config


def test_fit_end_to_end_writes_a_complete_run_dir(tmp_path, phantom_dir):
    import keras

    from can_tf.config import RunConfig
    from can_tf.data.splits import assert_patient_disjoint
    from can_tf.data.table import load_table

    run = tmp_path / "run"
    result = fit("--data", str(phantom_dir), "--run-dir", str(run), *QUICK)
    assert result.exit_code == 0, result.output
    # the printed table: every class, then the mean
    lines = result.output.splitlines()
    for name in CLASS_NAMES:
        assert any(line.startswith(name + " ") for line in lines), name
    assert any(line.startswith("Mean ") for line in lines)
    assert "Epoch 1/1" in result.output  # one line per epoch when not at a terminal

    # config.yaml: the resolved config, overrides included
    saved = RunConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert saved.train.epochs == 1 and saved.train.batch_size == 8 and saved.data.source == str(phantom_dir)
    # splits: patient-disjoint, covering the data set
    df, _ = load_table(saved.data)
    from can_tf.data.splits import read_splits

    splits = read_splits(run / "splits", df)
    assert_patient_disjoint(splits)
    assert sum(len(s) for s in splits.values()) == len(df)
    # prevalence.json = positives / known labels on the train split
    prevalence = json.loads((run / "prevalence.json").read_text())
    train_labels = splits["train"][list(CLASS_NAMES)].to_numpy(dtype=float)
    np.testing.assert_allclose([prevalence[c] for c in CLASS_NAMES],
                               np.nanmean(train_labels, axis=0), atol=1e-6)
    # history, metrics, best model; the last epoch's checkpoint stays (for fit --extend)
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and "val_mean_auroc" in history[0] and len(history) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test_auroc"]) == set(CLASS_NAMES)
    assert metrics["epochs_run"] == 1 and metrics["stop_reason"] == "completed"
    assert metrics["num_test_images"] == len(splits["test"])
    defined = [v for v in metrics["test_auroc"].values() if v is not None]
    assert metrics["test_mean_auroc"] == pytest.approx(np.mean(defined))
    # The closing table's 95% patient-bootstrap intervals: in metrics.json and printed beside each AUROC.
    assert "AUROC  [95% CI, patient bootstrap]" in result.output
    for name, point in metrics["test_auroc"].items():
        interval = metrics["test_auroc_ci"][name]
        if point is None:
            assert interval is None
            continue
        assert interval is not None and interval[0] <= point <= interval[1], name
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split()[1:] == [f"{point:.3f}", f"[{interval[0]:.3f},", f"{interval[1]:.3f}]"], row
    low, high = metrics["test_mean_auroc_ci"]
    assert low <= metrics["test_mean_auroc"] <= high
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["epoch-1.weights.h5", "state.json"]
    model = keras.saving.load_model(run / "best.keras", compile=False)
    out = model.predict(np.zeros((2, 64, 64, 1), "float32"), verbose=0)
    assert out["fused"].shape == (2, len(CLASS_NAMES))
    # model.keras: what a Keras user loads, probabilities from predict (the same weights)
    probabilities = keras.saving.load_model(run / "model.keras").predict(np.zeros((2, 64, 64, 1), "float32"),
                                                                         verbose=0)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-out["fused"])), rtol=1e-5, atol=1e-6)
    # provenance: where the model comes from, with the split counts fit printed
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["data"]["phantom"] is True and provenance["best_epoch"] == metrics["best_epoch"]
    assert provenance["data"]["split_counts"]["test"]["images"] == len(splits["test"])
    assert provenance["model"]["image_size"] == 64 and provenance["versions"]["tensorflow"]

    # the same command again never overwrites the finished run
    again = fit("--data", str(phantom_dir), "--run-dir", str(run), *QUICK)
    assert again.exit_code == 2 and "finished run" in again.output


def test_resume_into_a_run_dir_of_another_config_is_refused(tmp_path, phantom_dir):
    from can_tf.config import RunConfig

    run = tmp_path / "run"
    run.mkdir()
    RunConfig.resolve(overrides=["train.epochs=3", f"data.source={phantom_dir}"]).save(str(run / "config.yaml"))
    (run / "history.csv").write_text("epoch,loss\n0,0.5\n")
    result = fit("--data", str(phantom_dir), "--run-dir", str(run), "--epochs", "4")
    assert result.exit_code == 2
    assert "different config" in result.output and "train.epochs: 3 -> 4" in result.output
