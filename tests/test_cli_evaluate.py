"""``can-tf evaluate``: the report on a run's test split, thresholds on its val split, saved for predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from can_tf_cli.main import main
from run_helpers import make_run_dir

# Tests that do not look at the figures or heat maps skip drawing them (most of an evaluation's time).
QUICK = ["--figures", "none", "--gallery", "0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, phantom_dir):
    return make_run_dir(tmp_path_factory.mktemp("eval") / "run", phantom_dir)


def test_parse_threshold_method():
    from can_tf.evaluation.metrics import EvaluationError
    from can_tf.evaluation.model_evaluation import parse_threshold_method

    assert parse_threshold_method("youden") == ("youden", None)
    assert parse_threshold_method("sensitivity:0.8") == ("sensitivity", 0.8)
    assert parse_threshold_method("none") == (None, None)
    for bad in ("sensitivity:1.5", "sensitivity:x", "median"):
        with pytest.raises(EvaluationError, match="--thresholds"):
            parse_threshold_method(bad)


def test_evaluate_run_report_matches_sklearn_and_saves_thresholds(run_dir):
    from sklearn.metrics import roc_auc_score

    from can_tf.data.pipeline import make_dataset
    from can_tf.data.splits import read_splits
    from can_tf.data.table import load_table
    from can_tf.predictor import Predictor
    from can_tf.run import read_config as read_run_config

    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    assert "| Class |" in result.output and "Mean" in result.output
    report_dir = run_dir / "eval" / "test"
    for name in ("report.md", "report.csv", "report.json", "roc.png"):
        assert (report_dir / name).is_file(), name
    report = json.loads((report_dir / "report.json").read_text())

    # Independently: the run's test split through the pipeline and the predictor, scored by sklearn.
    config = read_run_config(run_dir / "config.yaml")
    df, class_names = load_table(config.data)
    test = read_splits(run_dir / "splits", df)["test"]
    predictor = Predictor.load(run_dir, use_thresholds=False)
    probs, labels = [], []
    for images, y in make_dataset(test, class_names, 64, 16, training=False, deterministic=True):
        probs.append(predictor.predict(images.numpy()))
        labels.append(y.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    rows = {row["class"]: row for row in report["classes"]}
    assert report["num_images"] == len(test)
    checked = 0
    for c, name in enumerate(class_names):
        known = ~np.isnan(labels[:, c])
        y = labels[known, c]
        if 0 < y.sum() < len(y):
            assert rows[name]["auroc"] == pytest.approx(roc_auc_score(y, probs[known, c]), abs=1e-6), name
            assert rows[name]["auroc_low"] <= rows[name]["auroc"] <= rows[name]["auroc_high"], name
            checked += 1
        else:  # no positives (or negatives) in this small test split: undefined, not 0.5
            assert rows[name]["auroc"] is None and rows[name]["status"].startswith("undefined"), name
    assert checked >= 3

    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    assert thresholds["method"] == "youden" and thresholds["class_names"] == class_names
    # predict picks them up from the run directory.
    loaded = Predictor.load(run_dir)
    assert loaded.thresholds is not None
    assert loaded.thresholds.values == [thresholds["thresholds"][n] for n in class_names]


def test_sensitivity_thresholds_meet_their_target_on_val(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--bootstrap", "20", "--split", "val", *QUICK,
                                       "--thresholds", "sensitivity:0.9", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    assert thresholds["method"] == "sensitivity" and thresholds["target_sensitivity"] == 0.9
    assert thresholds["validation"], "no class had usable validation labels"
    for name, point in thresholds["validation"].items():
        assert point["sensitivity"] >= 0.9, name
    assert (tmp_path / "r" / "report.md").is_file()


@pytest.mark.slow
def test_thresholds_round_trip_through_saved_model(run_dir, tmp_path, chestxray14_dir):
    """evaluate -> thresholds.json -> export SavedModel -> predict from the export uses them."""
    from can_tf.export.saved_model import export_saved_model
    from can_tf.predictor import Predictor

    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--bootstrap", "10", *QUICK])
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "thresholds.json").read_text())
    export = export_saved_model(run_dir, tmp_path / "models", name="can", num_images=2)
    predictor = Predictor.load(export.path)
    assert predictor.format == "saved_model"
    assert predictor.thresholds is not None
    assert predictor.thresholds.as_dict() == pytest.approx(saved["thresholds"])
    assert predictor.class_names == saved["class_names"]


def test_tflite_and_saved_model_exports_evaluate_to_the_same_auroc_table(tmp_path, chestxray14_dir):
    """``can-tf evaluate`` on a .tflite and a SavedModel export of one model, on the same real images."""
    import export_support as support

    from can_tf.config import DataConfig
    from can_tf.data.table import load_table
    from can_tf.export.tflite import export_tflite
    from can_tf.labels import CLASS_NAMES

    # 40 real NIH images with their labels, as a CSV data set (the exports carry no config of their own).
    df, _ = load_table(DataConfig(source=str(chestxray14_dir), image_root=str(chestxray14_dir / "images")))
    rows = df.sort_values("image_index").head(40)
    table = rows[["path", *CLASS_NAMES]].copy()
    table[list(CLASS_NAMES)] = table[list(CLASS_NAMES)].astype(int)
    data = tmp_path / "real.csv"
    table.to_csv(data, index=False)

    _, saved = support.saved_model_export(chestxray14_dir)
    lite = export_tflite(support.tiny_source(), tmp_path / "tflite", quantize="none",
                         images=support.real_images(chestxray14_dir), num_verify=support.NUM_REAL)
    reports = {}
    for fmt, model in (("saved_model", saved.path), ("tflite", lite.path)):
        out = tmp_path / f"eval-{fmt}"
        result = CliRunner().invoke(main, ["evaluate", str(model), "--data", str(data), "--bootstrap", "20", *QUICK,
                                           "--thresholds", "none", "--batch-size", "16", "--out", str(out)])
        assert result.exit_code == 0, result.output
        reports[fmt] = json.loads((out / "report.json").read_text())
    saved_report, lite_report = reports["saved_model"], reports["tflite"]
    assert saved_report["num_images"] == lite_report["num_images"] == 40
    saved_rows = {row["class"]: row for row in saved_report["classes"]}
    lite_rows = {row["class"]: row for row in lite_report["classes"]}
    assert list(saved_rows) == list(lite_rows) == list(CLASS_NAMES)
    defined = 0
    for name in CLASS_NAMES:
        a, b = saved_rows[name], lite_rows[name]
        assert (a["auroc"] is None) == (b["auroc"] is None), name
        if a["auroc"] is not None:
            # Probabilities agree to 1e-4; only a near-tie between two images could move an AUROC.
            assert b["auroc"] == pytest.approx(a["auroc"], abs=0.02), name
            defined += 1
    assert defined >= 3


def test_evaluate_bad_options_name_the_option(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", str(run_dir), "--thresholds", "median"])
    assert result.exit_code == 2 and "--thresholds" in result.output
    not_a_model = tmp_path / "x.txt"
    not_a_model.write_text("")
    result = runner.invoke(main, ["evaluate", str(not_a_model)])
    assert result.exit_code == 1 and "x.txt" in result.output


def test_evaluate_narrows_the_data_with_set_and_image_root_as_fit_does(run_dir, phantom_dir, tmp_path):
    # the report of a subset: only PA views, from an image root given on the command line
    out = tmp_path / "pa"
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--bootstrap", "10", "--thresholds", "none", *QUICK,
                                       "--image-root", str(phantom_dir / "images"), "--set", "data.views=[PA]",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    everything = json.loads((run_dir / "eval" / "test" / "report.json").read_text()) if (
        run_dir / "eval" / "test" / "report.json").is_file() else None
    from can_tf.data.table import load_table
    from can_tf.run import Run

    config = Run(run_dir).config()
    df, _ = load_table(config.data)
    test_names = set((run_dir / "splits" / "test.txt").read_text().split())
    pa_test = df[df["image_index"].isin(test_names) & (df["view"] == "PA")]
    assert report["num_images"] == len(pa_test) < len(test_names)
    assert everything is None or everything["num_images"] == len(test_names)
    # a field of another section is refused by name, exit code 2 (a usage error)
    bad = CliRunner().invoke(main, ["evaluate", str(run_dir), "--set", "train.epochs=3"])
    assert bad.exit_code == 2 and "only data.* fields apply here" in bad.output


def test_evaluate_is_refused_while_another_process_holds_the_run(run_dir):
    from can_tf.run import Run

    holder = Run(run_dir)
    holder.lock()
    try:
        result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--bootstrap", "5", *QUICK])
    finally:
        holder.unlock()
    assert result.exit_code == 1
    assert f"Error: run directory {run_dir} is in use by process" in result.output


def test_a_phantom_trained_model_says_so_in_its_report(run_dir):
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--bootstrap", "5", "--thresholds", "none", *QUICK,
                                       "--out", str(run_dir / "eval" / "phantom-check")])
    assert result.exit_code == 0, result.output
    report = (run_dir / "eval" / "phantom-check" / "report.md").read_text()
    assert ("**Trained on can-tf's phantom data (synthetic images, not radiographs): not a diagnostic model.**"
            in report)
    assert "Model provenance:" in report and "- data: phantom data at" in report
    provenance = json.loads((run_dir / "eval" / "phantom-check" / "report.json").read_text())["provenance"]
    assert provenance["data"]["phantom"] is True and provenance["preset"] == "small"
