"""Paired comparisons: the statistics (compare_groups), the conclusion, and `can-tf compare`."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats
from sklearn.metrics import roc_auc_score

from can_tf.evaluation.comparison import compare_groups, delong_contrast
from can_tf.evaluation.delong import delong_test, holm
from can_tf.evaluation.metrics import EvaluationError


def _models(rng, n_patients=150, shifts=(0.9, 0.6), classes=3, prevalence=0.3, shared=0.8):
    """Two models' scores on the same images: correlated through a shared image difficulty."""
    images = rng.integers(1, 3, size=n_patients)
    pid = np.repeat(np.arange(n_patients), images)
    y = (rng.random((n_patients, classes)) < prevalence).astype(float)[pid]
    difficulty = rng.normal(0, 1, y.shape)
    scores = [s * y + shared * difficulty + rng.normal(0, 0.6, y.shape) for s in shifts]
    return y, [1 / (1 + np.exp(-s)) for s in scores], pid


def test_single_runs_use_delong_and_holm_per_class():
    rng = np.random.default_rng(0)
    y, (a, b), pid = _models(rng)
    c = compare_groups(y, {"A": [a], "B": [b]}, pid, ["x", "y", "z"], n_boot=200)
    pair = c.pairs[0]
    assert (pair.a, pair.b, c.reference) == ("A", "B", "B")
    p_values = []
    for k, row in enumerate(pair.classes):
        direct = delong_test(y[:, k], a[:, k], b[:, k], clusters=pid)
        assert row.p_value == pytest.approx(direct.p_value, abs=1e-12)
        assert row.difference.point == pytest.approx(
            roc_auc_score(y[:, k], a[:, k]) - roc_auc_score(y[:, k], b[:, k]), abs=1e-12)
        assert row.difference.low <= row.difference.point <= row.difference.high
        p_values.append(direct.p_value)
    np.testing.assert_allclose([r.p_adjusted for r in pair.classes], holm(p_values), atol=1e-12)
    assert pair.mean.difference.point == pytest.approx(np.mean([r.difference.point for r in pair.classes]))
    assert pair.mean.seeds is None and pair.num_classes_averaged == 3
    assert "one run per side" in pair.conclusion or "one run" in pair.conclusion


def test_group_contrast_is_the_mean_of_the_runs_aurocs():
    rng = np.random.default_rng(1)
    y, (a1, b1), pid = _models(rng, classes=1)
    a2, b2 = np.clip(a1 + rng.normal(0, 0.05, a1.shape), 0, 1), np.clip(b1 + rng.normal(0, 0.05, b1.shape), 0, 1)
    c = compare_groups(y, {"A": [a1, a2], "B": [b1, b2]}, pid, ["x"], n_boot=100,
                       seeds={"A": [0, 1], "B": [0, 1]})
    row = c.pairs[0].classes[0]
    auc = lambda p: roc_auc_score(y[:, 0], p[:, 0])  # noqa: E731
    assert row.auroc_a == pytest.approx((auc(a1) + auc(a2)) / 2)
    assert row.auroc_b == pytest.approx((auc(b1) + auc(b2)) / 2)
    # Paired by seed: the per-seed differences and their t interval (1 degree of freedom).
    diffs = np.array([auc(a1) - auc(b1), auc(a2) - auc(b2)])
    half = stats.t.ppf(0.975, 1) * diffs.std(ddof=1) / np.sqrt(2)
    assert row.seeds.paired
    np.testing.assert_allclose(row.seeds.values, diffs, atol=1e-12)
    assert row.seeds.low == pytest.approx(diffs.mean() - half) and row.seeds.high == pytest.approx(diffs.mean() + half)
    # With one run per group the contrast is DeLong's two-curve test.
    scores = np.stack([a1[:, 0], b1[:, 0]], axis=1)
    z, p = delong_contrast(y[:, 0], scores, np.array([True, False]), np.array([False, True]), pid)
    assert p == pytest.approx(delong_test(y[:, 0], a1[:, 0], b1[:, 0], clusters=pid).p_value, abs=1e-12)


@pytest.mark.slow
def test_paired_bootstrap_interval_covers_the_true_difference_at_the_nominal_rate():
    # The true AUROC of score = s * y + shared difficulty + noise is Phi(s / sqrt(2 (0.8^2 + 0.6^2))).
    rng = np.random.default_rng(0)
    truth = stats.norm.cdf(0.9 / np.sqrt(2)) - stats.norm.cdf(0.6 / np.sqrt(2))
    covered, sims = 0, 300
    for i in range(sims):
        y, (a, b), pid = _models(rng, n_patients=200, classes=1)
        c = compare_groups(y, {"A": [a], "B": [b]}, pid, ["x"], n_boot=300, seed=i)
        d = c.pairs[0].classes[0].difference
        covered += d.low <= truth <= d.high
    # 95% nominal; the standard error of the coverage over 300 data sets is 0.0126.
    assert 0.91 <= covered / sims <= 0.99, covered / sims


def test_conclusions_say_what_the_numbers_allow():
    rng = np.random.default_rng(2)
    y, (a, b), pid = _models(rng, n_patients=300, shifts=(2.0, 0.3))
    clear = compare_groups(y, {"A": [a], "B": [b]}, pid, list("xyz"), n_boot=200).pairs[0]
    assert clear.conclusion.startswith("A's mean AUROC is higher than B's")
    assert "cannot be told whether the method or the training seed" in clear.conclusion
    same = compare_groups(y, {"A": [a], "B": [a.copy()]}, pid, list("xyz"), n_boot=200).pairs[0]
    assert "cannot tell the two models apart" in same.conclusion
    # Seeds on both sides that disagree with each other: the images support it, the seeds do not.
    flipped = [b, a, b]
    mixed = compare_groups(y, {"A": [a, b, a], "B": flipped}, pid, list("xyz"), n_boot=200,
                           seeds={"A": [0, 1, 2], "B": [0, 1, 2]}).pairs[0]
    assert "the training seeds do not" in mixed.conclusion or "no difference can be concluded" in mixed.conclusion
    both = compare_groups(y, {"A": [a, a * 0.99], "B": [b, b * 0.98]}, pid, list("xyz"), n_boot=200,
                          seeds={"A": [0, 1], "B": [0, 1]}).pairs[0]
    assert "Both the test images and the training seeds support it" in both.conclusion


def test_bad_input_is_one_clear_error():
    y = np.zeros((10, 1))
    with pytest.raises(EvaluationError, match="at least two"):
        compare_groups(y, {"A": [np.zeros((10, 1))]}, None, ["x"])
    with pytest.raises(EvaluationError, match="no runs"):
        compare_groups(y, {"A": [np.zeros((10, 1))], "B": []}, None, ["x"])
    with pytest.raises(EvaluationError, match="reference"):
        compare_groups(y, {"A": [y], "B": [y]}, None, ["x"], reference="C")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, phantom_dir):
    from run_helpers import make_run_dir

    root = tmp_path_factory.mktemp("compare")
    can = make_run_dir(root / "can", phantom_dir)
    base = make_run_dir(root / "base", phantom_dir, preset="small-baseline", seed=1)
    return root, can, base


def test_cli_compare_writes_every_file_and_a_conclusion(two_runs):
    from can_tf_cli.main import main

    root, can, base = two_runs
    out = root / "out"
    result = CliRunner().invoke(main, ["compare", str(can), str(base), "--names", "CAN,baseline",
                                       "--bootstrap", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "## CAN vs baseline" in result.output and "CAN's mean AUROC is" in result.output
    assert f"Open the report: {out / 'comparison.html'}" in result.output
    data = json.loads((out / "comparison.json").read_text())
    assert data["groups"] == {"CAN": 1, "baseline": 1} and data["reference"] == "baseline"
    rows = (out / "comparison.csv").read_text().splitlines()
    assert rows[0].startswith("a,b,class,auroc_a") and len(rows) == 1 + 14 + 1
    page = (out / "comparison.html").read_text()
    assert "<svg" in page and html.escape(data["pairs"][0]["conclusion"]) in page
    assert not re.search(r"<script[^>]+src=|<link", page)


def test_cli_compare_refuses_images_a_model_trained_on(two_runs):
    from can_tf_cli.main import main

    root, can, base = two_runs
    result = CliRunner().invoke(main, ["compare", str(can), str(base), "--split", "train",
                                       "--bootstrap", "50", "--out", str(root / "leak")])
    assert result.exit_code == 1
    assert "of the compared images for training" in result.output
    assert not (root / "leak" / "comparison.json").exists()
    one = CliRunner().invoke(main, ["compare", str(can)])
    assert one.exit_code == 1 and "at least two" in one.output


@pytest.mark.slow
def test_comparison_page_renders_in_chromium(two_runs, tmp_path):
    from browser_support import render_in_browser, require_chromium
    from can_tf_cli.main import main

    require_chromium()
    root, can, base = two_runs
    out = tmp_path / "page"
    assert CliRunner().invoke(main, ["compare", str(can), str(base), "--bootstrap", "50",
                                     "--out", str(out)]).exit_code == 0
    result = render_in_browser(out / "comparison.html", tmp_path / "shot.png", height=1600)
    assert result.console_errors == []
    body = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r"<body([^>]*)>", result.dom).group(1)))
    assert body["data-figures-ok"] == "true" and body["data-figure-count"] == "1"
