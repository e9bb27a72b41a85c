"""``can-tf evaluate`` end to end: HTML report, figures, subgroups, calibration saved and applied, model card."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from can_tf_cli.main import main
from run_helpers import make_run_dir


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, phantom_dir):
    run_dir = make_run_dir(tmp_path_factory.mktemp("outputs") / "run", phantom_dir)
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--bootstrap", "40", "--gallery", "2"])
    assert result.exit_code == 0, result.output + result.stderr
    return run_dir, result


def test_every_report_file_is_written(evaluated):
    run_dir, result = evaluated
    folder = run_dir / "eval" / "test"
    for name in ("report.html", "report.md", "report.json", "subgroups.json", "subgroups.md", "calibration.json",
                 "calibration.md", "operating_points.json", "model_card.json", "model_card.md"):
        assert (folder / name).is_file(), name
    for figure in ("roc", "pr", "calibration", "forest"):
        for fmt in ("svg", "pdf"):
            path = folder / "figures" / f"{figure}.{fmt}"
            assert path.is_file() and path.stat().st_size > 1000, path
        ET.parse(folder / "figures" / f"{figure}.svg")  # well-formed SVG
    assert (folder / "figures" / "roc.pdf").read_bytes().startswith(b"%PDF")
    assert f"Open the report: {folder / 'report.html'}" in result.stderr


def test_html_report_is_self_contained(evaluated):
    run_dir, _ = evaluated
    html = (run_dir / "eval" / "test" / "report.html").read_text()
    assert "<link" not in html and "src=\"http" not in html and "url(http" not in html
    assert html.count("<svg") >= 4  # ROC, PR, calibration, forest
    assert html.count("data:image/png;base64,") == 2  # the two gallery heat maps
    assert "phantom" in html  # the provenance warning


def test_evaluate_prints_the_calibration_it_measured(evaluated):
    run_dir, result = evaluated
    summary = json.loads((run_dir / "eval" / "test" / "calibration.json").read_text())["mean"]
    assert (f"Expected calibration error on the test split (mean of {summary['num_classes']} classes): "
            f"{summary['ece_before']:.3f} as the model gives it, {summary['ece_after']:.3f} after temperature "
            f"scaling") in result.stderr
    from can_tf.evaluation.calibration import Temperatures

    # The small phantom's val split lacks positives of some classes: they are named, never silently pooled.
    fallback = Temperatures.from_json(run_dir / "calibration.json").fallback
    assert fallback and all(reason.startswith("no positive label") for reason in fallback.values())
    assert f"share the pooled temperature: {', '.join(fallback)}" in result.stderr


def test_a_bad_figure_format_is_one_error_line(tmp_path, phantom_dir):
    run_dir = make_run_dir(tmp_path / "run", phantom_dir)
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--figures", "svg,gif"])
    assert result.exit_code == 1
    assert "--figures: unknown format(s) gif; choose from svg, pdf, png or none" in result.stderr
    assert "Traceback" not in result.stderr and not (run_dir / "eval").exists()


def test_gallery_picks_each_classes_most_confident_labelled_positive_once():
    from can_tf.explanation.gallery import pick_examples

    y = np.array([[1, 1, 0], [1, 0, 0], [0, 1, np.nan], [0, 0, 0]], "float32")
    p = np.array([[0.9, 0.8, 0.9], [0.7, 0.1, 0.1], [0.1, 0.6, 0.9], [0.2, 0.99, 0.5]])
    # Atelectasis: row 0 (0.9 > 0.7); Cardiomegaly: row 0 is taken, so row 2; no labelled third class.
    assert pick_examples(y, p, ["A", "B", "C"]) == [(0, 0), (2, 1)]
    assert pick_examples(y, p, ["A", "B", "C"], limit=1) == [(0, 0)]


def test_subgroups_cover_sex_age_and_view(evaluated):
    run_dir, _ = evaluated
    subgroups = json.loads((run_dir / "eval" / "test" / "subgroups.json").read_text())
    assert subgroups["attributes"] == ["sex", "age", "view"]
    groups = {(row["attribute"], row["group"]) for row in subgroups["rows"]}
    assert {("sex", "M"), ("sex", "F")} <= groups
    assert {g for a, g in groups if a == "view"} <= {"PA", "AP", "unknown"}


def test_calibration_is_saved_and_applied_by_predict(evaluated):
    from can_tf.evaluation.calibration import Temperatures
    from can_tf.predictor import Predictor

    run_dir, result = evaluated
    temperatures = Temperatures.from_json(run_dir / "calibration.json")
    assert temperatures.scope == "class" and "val split" in temperatures.fitted_on
    assert "Calibration (class temperature scaling" in result.stderr
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 1)).astype("float32")
    raw = Predictor.load(run_dir, use_calibration=False).predict(images)
    calibrated = Predictor.load(run_dir).predict(images)
    logits = np.log(raw / (1 - raw))
    np.testing.assert_allclose(calibrated, 1 / (1 + np.exp(-logits / np.array(temperatures.values))), atol=2e-5)
    summary = json.loads((run_dir / "eval" / "test" / "calibration.json").read_text())
    assert summary["temperatures"]["scope"] == "class"


def test_predict_says_it_calibrates(evaluated, phantom_dir, tmp_path):
    run_dir, _ = evaluated
    image = sorted((phantom_dir / "images").glob("*.png"))[0]
    out = tmp_path / "p.json"
    result = CliRunner().invoke(main, ["predict", str(run_dir), str(image), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Probabilities calibrated by the run's temperature scaling (class" in result.stderr
    assert json.loads(out.read_text())["calibration"]["scope"] == "class"


def test_thresholds_are_chosen_on_calibrated_validation_probabilities(evaluated):
    from can_tf.data.splits import read_splits
    from can_tf.data.table import load_table
    from can_tf.evaluation.model_evaluation import predict_table
    from can_tf.evaluation.thresholds import choose_thresholds
    from can_tf.predictor import Predictor
    from can_tf.run import open_run

    run_dir, _ = evaluated
    run = open_run(run_dir)
    config = run.config()
    df, class_names = load_table(config.data)
    val = read_splits(run_dir / "splits", df)["val"]
    y, p = predict_table(Predictor.load(run_dir), val, class_names)
    expected = choose_thresholds(y, p, class_names, method="youden")
    np.testing.assert_allclose(run.thresholds(class_names).values, expected.values, atol=1e-6)


def test_model_card_of_the_evaluation(evaluated):
    run_dir, _ = evaluated
    card = json.loads((run_dir / "eval" / "test" / "model_card.json").read_text())
    assert card["model_details"]["overview"].startswith("Trained on can-tf's phantom data")
    slices = {m["slice"] for m in card["quantitative_analysis"]["performance_metrics"]}
    assert "Mean" in slices and any(s.startswith("sex=") for s in slices)


def test_calibration_off_removes_the_saved_temperatures(tmp_path, phantom_dir):
    run_dir = make_run_dir(tmp_path / "run", phantom_dir)
    runner = CliRunner()
    args = ["evaluate", str(run_dir), "--bootstrap", "10", "--gallery", "0", "--figures", "none", "--split", "val"]
    assert runner.invoke(main, args + ["--calibration", "global"]).exit_code == 0
    from can_tf.evaluation.calibration import Temperatures

    temperatures = Temperatures.from_json(run_dir / "calibration.json")
    assert temperatures.scope == "global" and len(set(temperatures.values)) == 1
    result = runner.invoke(main, args + ["--calibration", "off"])
    assert result.exit_code == 0, result.output
    assert not (run_dir / "calibration.json").exists()
    assert "calibration off" in result.stderr
    report = run_dir / "eval" / "val"
    assert not (report / "figures").exists()  # --figures none: the page says so in their place
    assert "figures not drawn (--figures none)" in (report / "report.html").read_text()


def test_unknown_subgroup_column_is_one_error_line(tmp_path, phantom_dir):
    run_dir = make_run_dir(tmp_path / "run", phantom_dir)
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--bootstrap", "10", "--figures", "none",
                                                       "--subgroups", "insurance"])
    assert result.exit_code == 1
    assert "subgroup column 'insurance' is not in the data" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run_dir / "eval").exists()  # nothing half-written


@pytest.mark.slow
def test_the_evaluation_report_renders_in_chromium(evaluated, tmp_path):
    """What `can-tf evaluate` wrote (not a synthetic page), in a real headless browser."""
    import html
    import re

    from PIL import Image

    from browser_support import render_in_browser, require_chromium

    require_chromium()
    run_dir, _ = evaluated
    width, height = 1280, 6000
    result = render_in_browser(run_dir / "eval" / "test" / "report.html", tmp_path / "report.png",
                               width=width, height=height)
    assert result.console_errors == []
    body = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r"<body([^>]*)>", result.dom).group(1)))
    assert html.unescape(body["data-errors"]) == "" and body["data-figures-bad"] == ""
    assert body["data-figures-ok"] == "true"
    assert body["data-figure-count"] == "6"  # ROC, PR, calibration, forest + 2 heat maps
    with Image.open(result.screenshot) as image:
        assert image.size == (width, height)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - 255).sum(axis=1) > 30).mean() > 0.02  # not a blank page
    assert len(np.unique(pixels, axis=0)) > 100  # figures and heat maps, not only text


def test_calibration_off_keeps_the_saved_temperatures_when_the_report_fails(tmp_path, phantom_dir, monkeypatch):
    from can_tf.evaluation.calibration import Temperatures
    from can_tf.evaluation.model_evaluation import evaluate_model
    from can_tf.evaluation.report import EvaluationReport
    from can_tf.labels import CLASS_NAMES
    from can_tf.run import open_run

    run_dir = make_run_dir(tmp_path / "run", phantom_dir)
    saved = open_run(run_dir).calibration_path
    Temperatures(tuple(CLASS_NAMES), (2.0,) * len(CLASS_NAMES), "global").to_json(saved)

    def fail(*args, **kwargs):
        raise OSError("report could not be written")

    monkeypatch.setattr(EvaluationReport, "save", fail)
    with pytest.raises(OSError, match="report could not be written"):
        evaluate_model(run_dir, n_boot=5, calibration="off", gallery=0, figures=(), split="val")
    assert Temperatures.from_json(saved).values == (2.0,) * len(CLASS_NAMES)
