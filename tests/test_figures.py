"""Publication figures: panel counts, bootstrap bands against a slow loop, SVG that inlines safely."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_curve

from can_tf.evaluation.bootstrap import draw_patient_counts, resampling_strata, stratum_generators
from can_tf.evaluation.figures import (
    curve_band,
    curve_on_grid,
    figure_svg,
    forest_plot,
    pr_grid,
    reliability_grid,
    roc_grid,
    save_figure,
    scope_svg_ids,
)
from can_tf.evaluation.metrics import EvaluationError

# ChestX-ray14's classes with roughly its prevalences and the AUROCs a good model reaches.
CHEST_XRAY14 = (
    ("Atelectasis", 0.10, 0.78), ("Cardiomegaly", 0.025, 0.90), ("Effusion", 0.12, 0.85),
    ("Infiltration", 0.18, 0.70), ("Mass", 0.05, 0.83), ("Nodule", 0.056, 0.77),
    ("Pneumonia", 0.013, 0.74), ("Pneumothorax", 0.047, 0.87), ("Consolidation", 0.04, 0.80),
    ("Edema", 0.02, 0.88), ("Emphysema", 0.022, 0.91), ("Fibrosis", 0.015, 0.81),
    ("Pleural_Thickening", 0.03, 0.79), ("Hernia", 0.004, 0.92),
)


def synthetic_evaluation(num_patients=900, num_classes=14, seed=0, unknown=0.03):
    """Labels, probabilities and patient ids that look like a ChestX-ray14 test split.

    Patients have 1-4 images; a patient's findings persist across their images and each patient
    has a shared score offset (the correlation the patient bootstrap is there for). Scores are
    sigmoid(mean shift for positives + noise), with the shift chosen for the class's AUROC.
    """
    rng = np.random.default_rng(seed)
    spec = CHEST_XRAY14[:num_classes]
    names = [name for name, _, _ in spec]
    per_patient = rng.integers(1, 5, size=num_patients)
    patient_ids = np.repeat([f"p{i:05d}" for i in range(num_patients)], per_patient)
    n = patient_ids.size
    owner = np.repeat(np.arange(num_patients), per_patient)
    y = np.zeros((n, len(spec)))
    p = np.zeros((n, len(spec)))
    for c, (_, prevalence, auroc) in enumerate(spec):
        patient_positive = rng.random(num_patients) < prevalence
        y[:, c] = patient_positive[owner] & (rng.random(n) < 0.85)
        # AUROC of two unit-variance normals d apart is Phi(d / sqrt(2)).
        from scipy.stats import norm

        shift = np.sqrt(2.0) * norm.ppf(auroc)
        logit = -2.2 + shift * y[:, c] + 0.5 * rng.normal(size=num_patients)[owner]
        logit += np.sqrt(0.75) * rng.normal(size=n)
        p[:, c] = 1.0 / (1.0 + np.exp(-(logit - np.log(1.0 / prevalence - 1.0) * 0.3)))
    y[rng.random(y.shape) < unknown] = np.nan
    return y, np.clip(p, 0.0, 1.0), patient_ids, names


def synthetic_calibration(y, p, names, *, temperatures=True, n_bins=10):
    """A calibration dict in the evaluation's shape: equal-width bins before and after scaling."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)

    def bins(labels, probs):
        which = np.clip(np.digitize(probs, edges[1:-1]), 0, n_bins - 1)
        count, mean_p, frac = [], [], []
        for b in range(n_bins):
            sel = which == b
            count.append(int(sel.sum()))
            mean_p.append(float(probs[sel].mean()) if sel.any() else None)
            frac.append(float(labels[sel].mean()) if sel.any() else None)
        ece = sum(c * abs(m - f) for c, m, f in zip(count, mean_p, frac) if c) / max(1, len(labels))
        return {"edges": edges.tolist(), "count": count, "mean_probability": mean_p,
                "fraction_positive": frac}, float(ece), float(np.mean((probs - labels) ** 2))

    classes, fitted = {}, {}
    for c, name in enumerate(names):
        known = ~np.isnan(y[:, c])
        labels, probs = y[known, c], p[known, c]
        if labels.size == 0 or labels.min() == labels.max():
            empty = {"edges": edges.tolist(), "count": [0] * n_bins,
                     "mean_probability": [None] * n_bins, "fraction_positive": [None] * n_bins}
            classes[name] = {"ece_before": None, "ece_after": None, "brier_before": None,
                             "brier_after": None, "bins_before": empty, "bins_after": empty}
            continue
        before, ece_b, brier_b = bins(labels, probs)
        logit = np.log(np.clip(probs, 1e-6, 1 - 1e-6) / np.clip(1 - probs, 1e-6, 1))

        def scale(t):
            return np.clip(1.0 / (1.0 + np.exp(-logit / t)), 1e-6, 1 - 1e-6)

        def nll(t):
            q = scale(t)
            return -np.mean(labels * np.log(q) + (1 - labels) * np.log(1 - q))

        # The temperature minimising the log loss, by grid search (what a fit would find).
        t = min(np.linspace(0.5, 3.0, 26), key=nll) if temperatures else 1.0
        scaled = scale(t)
        after, ece_a, brier_a = bins(labels, scaled)
        fitted[name] = float(t)
        classes[name] = {"ece_before": ece_b, "ece_after": ece_a if temperatures else None,
                         "brier_before": brier_b, "brier_after": brier_a if temperatures else None,
                         "bins_before": before, "bins_after": after}
    defined = [v for v in classes.values() if v["ece_before"] is not None]
    return {
        "n_bins": n_bins,
        "binning": "equal-width",
        "classes": classes,
        "mean": {"ece_before": float(np.mean([v["ece_before"] for v in defined])),
                 "ece_after": float(np.mean([v["ece_after"] for v in defined])) if temperatures else None,
                 "num_classes": len(defined)},
        "temperatures": {"scope": "class", "temperatures": fitted} if temperatures else None,
    }


def synthetic_subgroups(class_name="Mean"):
    """A subgroup dict with ok, too-small and undefined groups for ``class_name``."""

    def row(attribute, group, images, point, low, high, status="ok", overall=0.80):
        return {"attribute": attribute, "group": group, "class": class_name, "images": images,
                "patients": images // 2, "positives": images // 10, "negatives": images - images // 10,
                "auroc": {"point": point, "low": low, "high": high, "n_used": 200 if point else 0},
                "gap": None if point is None else point - overall, "status": status}

    rows = [
        row("sex", "F", 1410, 0.79, 0.76, 0.82), row("sex", "M", 1620, 0.81, 0.785, 0.835),
        row("age", "0-19", 42, 0.71, 0.55, 0.90, "too small: 3 positives, 39 negatives (needs 5 of each)"),
        row("age", "20-39", 500, 0.82, 0.78, 0.86), row("age", "40-59", 1100, 0.80, 0.77, 0.83),
        row("age", "60-79", 1200, 0.78, 0.75, 0.81), row("age", "80+", 190, 0.76, 0.69, 0.83),
        row("view", "PA", 1800, 0.83, 0.80, 0.86), row("view", "AP", 1200, 0.75, 0.72, 0.79),
        row("view", "unknown", 12, None, None, None, "undefined: no positive labels among 12 known"),
    ]
    return {"attributes": ["sex", "age", "view"], "n_boot": 200, "seed": 0, "confidence": 0.95,
            "min_positives": 5, "min_negatives": 5, "overall": {class_name: 0.80}, "rows": rows}


@pytest.fixture(scope="module")
def chest14():
    return synthetic_evaluation()


# ------------------------------------------------------------------------------------------------
# The band computation against an explicit loop
# ------------------------------------------------------------------------------------------------
def _slow_grid(labels, scores, weights_row, grid, kind):
    """One replicate the slow way: repeat each image by its weight, use scikit-learn's curve."""
    reps = weights_row.astype(int)
    y, s = np.repeat(labels, reps), np.repeat(scores, reps)
    if y.size == 0 or y.min() == y.max():
        return np.full(grid.size, np.nan)
    out = []
    if kind == "roc":
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        for f in grid:
            j = max(i for i in range(fpr.size) if fpr[i] <= f)
            if fpr[j] == f or j == fpr.size - 1:
                out.append(tpr[j])
            else:
                t = (f - fpr[j]) / (fpr[j + 1] - fpr[j])
                out.append(tpr[j] + t * (tpr[j + 1] - tpr[j]))
    else:
        precision, recall, _ = precision_recall_curve(y, s, drop_intermediate=False)
        # scikit-learn lists thresholds low to high and appends (recall 0, precision 1): walk the
        # real thresholds from the highest down and take the first whose recall reaches r.
        pairs = list(zip(recall[:-1], precision[:-1]))[::-1]
        for r in grid:
            out.append(next(prec for rec, prec in pairs if rec >= r))
    return np.array(out)


@pytest.mark.parametrize("kind", ["roc", "pr"])
def test_curve_on_grid_matches_a_slow_loop_with_ties_and_zero_weights(kind):
    rng = np.random.default_rng(3)
    labels = (rng.random(40) < 0.35).astype(float)
    scores = np.round(rng.random(40), 1)  # many ties
    weights = rng.integers(0, 3, size=(25, 40)).astype(float)
    weights[0] = 1.0
    weights[1, labels == 1] = 0.0  # a replicate without positives: no curve
    grid = np.linspace(0, 1, 21)
    fast = curve_on_grid(labels, scores, weights, grid, kind)
    slow = np.stack([_slow_grid(labels, scores, w, grid, kind) for w in weights])
    assert np.isnan(fast[1]).all() and np.isnan(slow[1]).all()
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12, equal_nan=True)


def test_roc_on_grid_by_hand():
    # Scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.7 (neg): vertices (0,0) (0,.5) (.5,.5) (1,1).
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    scores = np.array([0.9, 0.8, 0.7, 0.7])
    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    roc = curve_on_grid(labels, scores, np.ones((1, 4)), grid, "roc")[0]
    np.testing.assert_allclose(roc, [0.5, 0.5, 0.5, 0.75, 1.0])
    # PR vertices: recall .5 precision 1, recall .5 precision .5, recall 1 precision .5.
    pr = curve_on_grid(labels, scores, np.ones((1, 4)), grid, "pr")[0]
    np.testing.assert_allclose(pr, [1.0, 1.0, 1.0, 0.5, 0.5])


@pytest.mark.parametrize("kind", ["roc", "pr"])
def test_band_equals_percentiles_of_slow_replicates(kind):
    rng = np.random.default_rng(5)
    owner = np.repeat(np.arange(30), 2)
    patients = np.array([f"p{i:02d}" for i in owner])  # codes 0..29 in this order
    labels = (rng.random(60) < 0.3).astype(float)
    labels[[3, 17]] = np.nan
    scores = np.clip(0.3 * np.nan_to_num(labels) + 0.7 * rng.random(60), 0, 1)
    band = curve_band(labels, scores, patients, kind=kind, n_boot=40, seed=11, grid_points=11)
    known = ~np.isnan(labels)
    # Drawn within the strata of this class's labels (patient codes 0..29 = owner).
    strata = resampling_strata(labels[:, None], owner, 30)
    counts = draw_patient_counts(stratum_generators(11, strata), 40, 30, strata)
    slow = np.stack([_slow_grid(labels[known], scores[known], c[owner][known], band.grid, kind)
                     for c in counts])
    used = ~np.isnan(slow[:, 0])
    assert band.n_used == used.sum()
    low, high = np.percentile(slow[used], [2.5, 97.5], axis=0)
    np.testing.assert_allclose(band.low, low, atol=1e-12)
    np.testing.assert_allclose(band.high, high, atol=1e-12)
    np.testing.assert_allclose(band.curve, _slow_grid(labels[known], scores[known],
                                                      np.ones(known.sum()), band.grid, kind))


def test_band_contains_the_curve_at_most_grid_points(chest14):
    y, p, patients, names = chest14
    for c in (0, 2, 7):
        for kind in ("roc", "pr"):
            band = curve_band(y[:, c], p[:, c], patients, kind=kind, n_boot=100)
            assert band.n_used == 100
            assert band.contains_curve().mean() >= 0.9, (names[c], kind)
            assert np.all(band.low <= band.high)


def test_curve_band_rejects_an_undefined_class():
    with pytest.raises(EvaluationError, match="no positive labels among 3 known"):
        curve_band(np.array([0.0, 0.0, 0.0, np.nan]), np.array([0.1, 0.2, 0.3, 0.4]))


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def _texts(fig) -> list:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title()] + [t.get_text() for t in ax.texts]
        out += [t.get_text() for t in ax.get_yticklabels()]
    for legend in fig.legends:
        out += [t.get_text() for t in legend.get_texts()]
    return out


def _min_font_size(fig) -> float:
    from matplotlib.text import Text

    return min(t.get_fontsize() for t in fig.findobj(Text) if t.get_text().strip())


def test_roc_grid_14_classes_with_an_undefined_class(chest14):
    y, p, patients, names = chest14
    y = y.copy()
    y[:, 13] = np.where(np.isnan(y[:, 13]), np.nan, 0.0)  # Hernia: no positives left
    thresholds = [0.3] * 14
    fig = roc_grid(y, p, patients, names, thresholds=thresholds, n_boot=50)
    assert len(fig.axes) == 14
    titles = [ax.get_title() for ax in fig.axes]
    from sklearn.metrics import roc_auc_score

    known = ~np.isnan(y[:, 4])
    expected = f"AUROC {roc_auc_score(y[known, 4], p[known, 4]):.3f}"
    assert titles[4] == f"Mass ({expected})"
    assert titles[12].startswith("Pleural_Thickening\n(AUROC ")  # long name: value on line 2
    assert titles[13] == "Hernia"
    assert any(t.startswith("undefined: no positive labels among") for t in
               [x.get_text().replace("\n", " ") for x in fig.axes[13].texts])
    # Operating point: one marker of FPR/TPR at threshold 0.3 in a defined panel.
    known = ~np.isnan(y[:, 0])
    called = p[known, 0] >= 0.3
    expected_point = (called[y[known, 0] == 0].mean(), called[y[known, 0] == 1].mean())
    markers = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    assert len(markers) == 1
    np.testing.assert_allclose(np.ravel(markers[0].get_xydata()), expected_point)
    assert _min_font_size(fig) >= 7
    fig.canvas.draw()
    _assert_no_overlapping_titles(fig)


def _assert_no_overlapping_titles(fig):
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two panel titles overlap"
    # A title never runs into the panel above or beside it.
    for ax in fig.axes:
        title = ax.title.get_window_extent(renderer)
        for other in fig.axes:
            if other is not ax:
                assert not title.overlaps(other.get_window_extent(renderer))


@pytest.mark.parametrize("num_classes", [3, 7])
def test_pr_grid_panels_prevalence_and_operating_point(num_classes):
    y, p, patients, names = synthetic_evaluation(num_patients=300, num_classes=num_classes, seed=1)
    fig = pr_grid(y, p, patients, names, thresholds={names[0]: 0.4}, n_boot=30)
    assert len(fig.axes) == num_classes
    known = ~np.isnan(y[:, 0])
    prevalence = np.nanmean(y[:, 0])
    dashed = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    np.testing.assert_allclose(dashed[0].get_ydata(), [prevalence, prevalence])
    called = p[known, 0] >= 0.4
    recall = called[y[known, 0] == 1].mean()
    precision = (y[known, 0][called] == 1).mean()
    dots = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    np.testing.assert_allclose(np.ravel(dots[0].get_xydata()), [recall, precision])
    assert not [line for line in fig.axes[1].lines if line.get_marker() == "o"]
    assert fig.axes[0].get_title().startswith("Atelectasis")
    assert "AUPRC" in fig.axes[0].get_title()


def test_reliability_grid_before_and_after(chest14):
    y, p, _, names = chest14
    y = y.copy()
    y[:, 6] = np.nan  # Pneumonia: no known labels
    calibration = synthetic_calibration(y, p, names)
    fig = reliability_grid(calibration)
    assert len(fig.axes) == 14
    entry = calibration["classes"]["Edema"]
    title = fig.axes[9].get_title()
    assert f"ECE {entry['ece_before']:.3f} \u2192 {entry['ece_after']:.3f}" in title
    lines = [line for line in fig.axes[9].lines if line.get_marker() in ("o", "s")]
    assert len(lines) == 2  # before and after
    xy = lines[0].get_xydata()
    expected = [(m, f) for m, f in zip(entry["bins_before"]["mean_probability"],
                                       entry["bins_before"]["fraction_positive"]) if m is not None]
    np.testing.assert_allclose(xy, expected)
    assert any("undefined" in t.get_text() for t in fig.axes[6].texts)
    assert _min_font_size(fig) >= 7

    before_only = reliability_grid(synthetic_calibration(y[:, :3], p[:, :3], names[:3],
                                                         temperatures=False))
    assert len(before_only.axes) == 3
    assert [line.get_marker() for line in before_only.axes[0].lines if line.get_marker() in "os"] == ["o"]
    assert "\u2192" not in before_only.axes[0].get_title()


def test_reliability_grid_names_a_malformed_entry():
    calibration = synthetic_calibration(np.array([[1.0], [0.0]]), np.array([[0.8], [0.3]]), ["A"])
    del calibration["classes"]["A"]["bins_before"]["count"]
    with pytest.raises(EvaluationError, match=r"\['A'\]\['bins_before'\]: missing key 'count'"):
        reliability_grid(calibration)


def test_forest_plot_keeps_small_and_undefined_groups():
    subgroups = synthetic_subgroups()
    fig = forest_plot(subgroups)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "sex" and "age" in labels and "view" in labels
    assert "F  (n=1,410)" in labels and "unknown  (n=12)" in labels
    assert len(labels) == 3 + len(subgroups["rows"])  # three headers, every group, none dropped
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("0.710  too small: 3 positives") for t in texts)
    assert "undefined: no positive labels among 12 known" in texts
    assert "0.790 [0.760, 0.820]  gap -0.010" in texts
    # The overall value is the dashed vertical line.
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    np.testing.assert_allclose(dashed[0].get_xdata(), [0.80, 0.80])
    # The too-small group is hollow, the others filled.
    hollow = [line for line in ax.lines if line.get_marker() == "D"]
    assert len(hollow) == 1 and hollow[0].get_markerfacecolor() == "white"
    assert _min_font_size(fig) >= 7
    with pytest.raises(EvaluationError, match="no rows for class 'Edema'"):
        forest_plot(subgroups, class_name="Edema")


# ------------------------------------------------------------------------------------------------
# SVG and files
# ------------------------------------------------------------------------------------------------
def _assert_inline_svg(svg: str):
    assert svg.lstrip().startswith("<svg")
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    urls = re.findall(r"https?://[^\s\"'<>)]+", svg)
    assert set(urls) <= {"http://www.w3.org/2000/svg"}, set(urls)
    assert "<text" not in svg and "font-family" not in svg  # text drawn as paths
    ids = {el.get("id") for el in root.iter() if el.get("id")}
    for el in root.iter():
        for attr, value in el.attrib.items():
            if attr.endswith("href"):
                assert value.startswith("#") or value.startswith("data:"), value
                if value.startswith("#"):
                    assert value[1:] in ids, value
    for ref in re.findall(r"url\(#([^)]+)\)", svg):
        assert ref in ids


def test_figure_svg_inlines_safely_and_scopes_ids():
    y, p, patients, names = synthetic_evaluation(num_patients=120, num_classes=3, seed=2)
    roc_svg = figure_svg(roc_grid(y, p, patients, names, n_boot=20))
    forest_svg = figure_svg(forest_plot(synthetic_subgroups()))
    for svg in (roc_svg, forest_svg):
        _assert_inline_svg(svg)
    ids = lambda svg: set(re.findall(r'\bid="([^"]+)"', svg))  # noqa: E731
    assert not ids(roc_svg) & ids(forest_svg)  # two figures on one page never share an id
    assert figure_svg(roc_grid(y, p, patients, names, n_boot=20)) == roc_svg  # reproducible
    scoped = scope_svg_ids('<svg><path id="a"/><use href="#a"/><g clip-path="url(#a)"/></svg>', "x-")
    assert scoped == '<svg><path id="x-a"/><use href="#x-a"/><g clip-path="url(#x-a)"/></svg>'


def test_save_figure_writes_three_formats(tmp_path):
    fig = forest_plot(synthetic_subgroups())
    paths = save_figure(fig, tmp_path / "forest")
    assert set(paths) == {"svg", "pdf", "png"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["pdf"].read_bytes()[:5] == b"%PDF-"
    ET.fromstring(paths["svg"].read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forest.pdf", "forest.png", "forest.svg"]
    with pytest.raises(EvaluationError, match="format must be one of"):
        save_figure(fig, tmp_path / "x", formats=("jpg",))


def test_names_with_mathtext_characters_are_drawn_literally():
    y, p, patients, _ = synthetic_evaluation(num_patients=80, num_classes=2, seed=6)
    fig = roc_grid(y, p, patients, ["$x$ cost", "50% $"], n_boot=10)
    fig.canvas.draw()  # a mathtext parse would fail or change the text here
    assert fig.axes[0].get_title().startswith("$x$ cost (AUROC ")
    assert not fig.axes[0].title.get_parse_math()
