"""Calibration: hand-computed ECE and bins, temperature scaling recovering a known T, JSON files."""

import doctest
import importlib
import json
import re
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from can_tf.evaluation.calibration import (
    CalibrationSummary,
    Temperatures,
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from can_tf.evaluation.metrics import EvaluationError

# Five equal-width bins, edges 0, .2, .4, .6, .8, 1; the 0.7 has an unknown label and is skipped.
#   bin          p                  y        n   mean p   frac y   |gap|
#   [0.0, 0.2)   0.05, 0.15, 0.0    0, 0, 0  3   0.2/3    0        0.2/3
#   [0.2, 0.4)   0.3, 0.35          1, 0     2   0.325    0.5      0.175
#   [0.4, 0.6)   0.55               1        1   0.55     1        0.45
#   [0.6, 0.8)   (0.7, NaN label)            0   -        -        -
#   [0.8, 1.0]   0.9, 1.0           1, 1     2   0.95     1        0.05
# ECE = (3 * 0.2/3 + 2 * 0.175 + 1 * 0.45 + 2 * 0.05) / 8 = (0.2 + 0.35 + 0.45 + 0.1) / 8 = 0.1375
LABELS = np.array([0, 0, 1, 0, 1, 1, 1, 0, np.nan])
PROBS = np.array([0.05, 0.15, 0.3, 0.35, 0.55, 0.9, 1.0, 0.0, 0.7])


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def over_confident(num_images=20000, num_classes=3, factor=3.0, seed=0, unknown=0.05):
    """True logits z, labels ~ Bernoulli(sigmoid(z)), reported p = sigmoid(factor * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(num_images, num_classes)) - 1.0
    y = (rng.random(z.shape) < sigmoid(z)).astype(np.float64)
    y[rng.random(z.shape) < unknown] = np.nan
    return y, sigmoid(factor * z)


def nll(labels, probs):
    p = np.clip(probs, 1e-300, 1 - 1e-16)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def test_ece_hand_computed():
    assert expected_calibration_error(LABELS, PROBS, n_bins=5) == pytest.approx(0.1375, abs=1e-12)


def test_reliability_bins_hand_computed():
    bins = reliability_bins(LABELS, PROBS, n_bins=5)
    assert bins["edges"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins["count"] == [3, 2, 1, 0, 2]
    assert all(isinstance(n, int) for n in bins["count"])
    assert bins["mean_probability"][3] is None and bins["fraction_positive"][3] is None
    expected_p = [0.2 / 3, 0.325, 0.55, 0.95]
    expected_y = [0.0, 0.5, 1.0, 1.0]
    kept = [0, 1, 2, 4]
    assert [bins["mean_probability"][b] for b in kept] == pytest.approx(expected_p, abs=1e-12)
    assert [bins["fraction_positive"][b] for b in kept] == pytest.approx(expected_y, abs=1e-12)


def test_edges_go_up_and_one_is_in_the_last_bin():
    # With two bins, 0.5 is on the edge: it belongs to [0.5, 1]; 1.0 closes the last bin.
    bins = reliability_bins([0, 1, 1], [0.0, 0.5, 1.0], n_bins=2)
    assert bins["count"] == [1, 2]
    # 0.6 = 3/5 is an edge too (np.linspace would put the edge at 0.6000000000000001).
    assert reliability_bins([0], [0.6], n_bins=5)["count"] == [0, 0, 0, 1, 0]
    assert expected_calibration_error([1], [1.0], n_bins=10) == 0.0
    assert expected_calibration_error([0], [1.0], n_bins=10) == 1.0


def test_ece_equals_a_loop_over_bins_on_random_data():
    rng = np.random.default_rng(4)
    p = rng.random(500)
    y = (rng.random(500) < p ** 2).astype(float)
    y[::7] = np.nan
    known = ~np.isnan(y)
    edges = np.linspace(0, 1, 16)
    total = 0.0
    for b in range(15):
        upper = p <= edges[b + 1] if b == 14 else p < edges[b + 1]
        in_bin = known & (p >= edges[b]) & upper
        if in_bin.any():
            total += in_bin.sum() * abs(p[in_bin].mean() - y[in_bin].mean())
    expected = total / known.sum()
    assert expected_calibration_error(y, p, n_bins=15) == pytest.approx(expected, abs=1e-12)
    assert sum(reliability_bins(y, p, n_bins=15)["count"]) == known.sum()


def test_no_known_label_gives_none():
    assert expected_calibration_error([np.nan, np.nan], [0.2, 0.9]) is None
    assert brier_score([np.nan], [0.2]) is None
    bins = reliability_bins([np.nan], [0.2], n_bins=3)
    assert bins["count"] == [0, 0, 0] and bins["mean_probability"] == [None, None, None]


def test_bad_inputs_name_the_array_and_index():
    with pytest.raises(EvaluationError, match=r"labels: value 0\.5 at index 1 must be 1, 0 or NaN"):
        expected_calibration_error([0, 0.5], [0.1, 0.2])
    with pytest.raises(EvaluationError, match=r"probabilities: value 1\.2 at index 0 is outside"):
        reliability_bins([0], [1.2])
    with pytest.raises(EvaluationError, match="probabilities: value nan at index 0 is not finite"):
        expected_calibration_error([1], [np.nan])
    with pytest.raises(EvaluationError, match="differ in length"):
        expected_calibration_error([1, 0], [0.5])
    with pytest.raises(EvaluationError, match="must be a 1-D array"):
        expected_calibration_error([[1]], [[0.5]])
    with pytest.raises(EvaluationError, match="n_bins must be a positive integer"):
        expected_calibration_error([1], [0.5], n_bins=0)


def test_brier_hand_computed():
    assert brier_score([0, 1, np.nan, 1], [0.2, 0.6, 0.9, 1.0]) == pytest.approx(
        (0.04 + 0.16 + 0.0) / 3, abs=1e-15
    )


def test_apply_hand_values_and_logits():
    t = Temperatures(("A", "B"), (2.0, 0.5), "class")
    # logit(0.8) = ln 4; / 2 = ln 2 -> 2/3.   ln 4 / 0.5 = ln 16 -> 16/17.
    out = t.apply([[0.8, 0.8], [0.5, 0.2]])
    assert out.dtype == np.float32
    assert out[0].tolist() == pytest.approx([2 / 3, 16 / 17], rel=1e-6)
    assert out[1].tolist() == pytest.approx([0.5, 1 / 17], rel=1e-6)  # logit(0.2) = -ln 4
    logits = t.apply_logits([[2.0, -4.0]])
    assert logits.dtype == np.float32 and logits.tolist() == [[1.0, -8.0]]


def test_apply_keeps_zero_one_and_nan_without_warnings():
    t = Temperatures(("A", "B"), (0.05, 20.0), "class")
    p = np.array([[0.0, 0.0], [1.0, 1.0], [np.nan, np.nan], [1e-300, 1e-300], [1 - 1e-16, 0.5]])
    with warnings.catch_warnings(), np.errstate(divide="raise", over="raise", invalid="raise"):
        warnings.simplefilter("error")
        out = t.apply(p)
    assert out.dtype == np.float32
    assert out[0].tolist() == [0.0, 0.0] and out[1].tolist() == [1.0, 1.0]
    assert np.isnan(out[2]).all()
    assert np.isfinite(out[3:]).all() and ((out[3:] >= 0) & (out[3:] <= 1)).all()
    # T = 20 pulls even 1e-300 (logit -690.8) to sigmoid(-34.5) ~ 1e-15, not to 0.
    assert 0.0 < out[3, 1] < 1e-14


def test_apply_rejects_bad_shapes_and_values():
    t = Temperatures(("A", "B"), (1.5, 1.5), "global")
    with pytest.raises(EvaluationError, match=r"probabilities of shape \(2, 3\) do not fit 2"):
        t.apply(np.full((2, 3), 0.5))
    with pytest.raises(EvaluationError, match=r"class 'B' \(column 1\): probability 1\.5 at row 0"):
        t.apply([[0.5, 1.5]])
    with pytest.raises(EvaluationError, match="logits of shape"):
        t.apply_logits([1.0, 2.0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(values=(1.0,)), "field 'temperatures': 1 values for 2 classes"),
        (dict(values=(1.0, 0.0)), "class 'B' has temperature 0.0"),
        (dict(values=(1.0, -2.0)), "class 'B' has temperature -2.0"),
        (dict(values=(np.nan, 1.0)), "class 'A' has temperature nan"),
        (dict(values=(np.inf, 1.0)), "class 'A' has temperature inf"),
        (dict(values=(True, 1.0)), "class 'A' has temperature True"),
        (dict(values=("2", 1.0)), "class 'A' has temperature '2'"),
        (dict(scope="local"), "field 'scope' must be one of class, global, got 'local'"),
        (dict(scope="global", values=(1.0, 2.0)), "scope 'global' needs one shared value"),
        (dict(fallback={"C": "why"}), r"field 'fallback' names classes not in class_names"),
        (dict(class_names=("A", "A")), "field 'class_names' must be unique names"),
    ],
)
def test_temperatures_validate(kwargs, message):
    fields = dict(class_names=("A", "B"), values=(1.0, 2.0), scope="class")
    fields.update(kwargs)
    with pytest.raises(EvaluationError, match=message):
        Temperatures(**fields)


def test_temperatures_json_round_trip(tmp_path):
    t = Temperatures(
        ("Edema", "Effusion"), (1.75, 0.5), "class", fitted_on="val split, 55 images",
        fallback={"Effusion": "no known labels"},
    )
    path = t.to_json(tmp_path / "calibration.json")
    assert path == tmp_path / "calibration.json"
    text = path.read_text()
    assert text == t.to_text() and text.endswith("}\n") and '\n  "scope": "class"' in text
    data = json.loads(text)
    assert data == {
        "format_version": 1,
        "method": "temperature",
        "scope": "class",
        "class_names": ["Edema", "Effusion"],
        "temperatures": {"Edema": 1.75, "Effusion": 0.5},
        "fitted_on": "val split, 55 images",
        "fallback": {"Effusion": "no known labels"},
    }
    back = Temperatures.from_json(path, class_names=["Edema", "Effusion"])
    assert back == t
    assert Temperatures.from_dict(t.to_dict()) == t
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


def _written(tmp_path, change):
    data = Temperatures(("Edema", "Effusion"), (1.75, 0.5), "class").to_dict()
    change(data)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("temperatures"), "missing field 'temperatures'"),
        (lambda d: d.pop("scope"), "missing field 'scope'"),
        (lambda d: d["temperatures"].update(Edema=-1.0),
         "field 'temperatures': class 'Edema' has temperature -1.0"),
        (lambda d: d["temperatures"].update(Edema=0),
         "field 'temperatures': class 'Edema' has temperature 0"),
        (lambda d: d["temperatures"].pop("Effusion"),
         r"field 'temperatures' has no value for \['Effusion'\]"),
        (lambda d: d["temperatures"].update(Mass=1.0),
         r"field 'temperatures' names classes not in 'class_names': \['Mass'\]"),
        (lambda d: d.update(format_version=2), "field 'format_version' is 2"),
        (lambda d: d.update(method="platt"), "field 'method' is 'platt'"),
        (lambda d: d.update(scope="local"), "field 'scope' must be one of"),
        (lambda d: d.update(class_names="Edema"), "field 'class_names' must be a list"),
        (lambda d: d.update(fallback=["Edema"]), "field 'fallback' must map"),
    ],
)
def test_reading_errors_name_file_and_field(tmp_path, change, message):
    path = _written(tmp_path, change)
    with pytest.raises(EvaluationError, match=re.escape(str(path)) + ": " + message) as info:
        Temperatures.from_json(path)
    assert "\n" not in str(info.value)


def test_reading_errors_for_missing_bad_and_mismatched_files(tmp_path):
    missing = tmp_path / "nope.json"
    pattern = "calibration file not found: " + re.escape(str(missing))
    with pytest.raises(EvaluationError, match=pattern):
        Temperatures.from_json(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EvaluationError, match=re.escape(str(bad)) + ": not valid JSON") as info:
        Temperatures.from_json(bad)
    assert "\n" not in str(info.value)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(EvaluationError, match=re.escape(str(listed)) + ": expected a JSON object"):
        Temperatures.from_json(listed)

    path = _written(tmp_path, lambda d: None)
    pattern = re.escape(str(path)) + (
        r": calibration classes \(field 'class_names'\) do not match the classes of the model "
        r"\(only in the calibration: \['Effusion'\]; only in the model: \['Mass'\]\)"
    )
    with pytest.raises(EvaluationError, match=pattern):
        Temperatures.from_json(path, class_names=["Edema", "Mass"])
    with pytest.raises(EvaluationError, match="same classes in a different order"):
        Temperatures.from_json(path, class_names=["Effusion", "Edema"])


@pytest.mark.parametrize("scope", ["class", "global"])
def test_over_confident_model_recovers_t_lowers_ece_keeps_auroc(scope):
    y, p = over_confident()
    names = ["A", "B", "C"]
    t = fit_temperature(y, p, names, scope=scope, fitted_on="val split, 20000 images")
    assert t.scope == scope and t.fitted_on == "val split, 20000 images" and t.fallback == {}
    assert t.values == pytest.approx([3.0, 3.0, 3.0], abs=0.25)
    if scope == "global":
        assert len(set(t.values)) == 1
    calibrated = t.apply(p)
    for c in range(3):
        known = ~np.isnan(y[:, c])
        before = expected_calibration_error(y[:, c], p[:, c])
        after = expected_calibration_error(y[:, c], calibrated[:, c])
        assert after < 0.5 * before
        assert nll(y[known, c], calibrated[known, c]) < nll(y[known, c], p[known, c])
        # Same order of the images: calibrated values never go down where the input goes up.
        order = np.argsort(p[known, c], kind="stable")
        assert (np.diff(calibrated[known, c][order].astype(np.float64)) >= 0).all()
        # float32 output may merge a few neighbours into ties; AUROC moves by < 1e-6 at most.
        assert roc_auc_score(y[known, c], calibrated[known, c]) == pytest.approx(
            roc_auc_score(y[known, c], p[known, c]), abs=1e-6
        )


def test_fitted_temperature_is_the_nll_minimum_of_a_grid_search():
    y, p = over_confident(num_images=3000, num_classes=1, factor=0.5, seed=2)
    t = fit_temperature(y, p, ["A"])
    assert t.values[0] < 1.0  # under-confident: sharpened
    known = ~np.isnan(y[:, 0])
    z = np.log(p[known, 0]) - np.log1p(-p[known, 0])
    grid = np.exp(np.linspace(np.log(0.1), np.log(2.0), 4001))  # steps of 0.075% in T
    losses = [nll(y[known, 0], sigmoid(z / g)) for g in grid]
    best = grid[int(np.argmin(losses))]
    assert t.values[0] == pytest.approx(best, rel=1e-3)


def test_classes_without_labels_or_without_both_outcomes_fall_back():
    y, p = over_confident(num_images=4000, num_classes=3, seed=1)
    y[:, 1] = np.nan  # nothing to fit on
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 1.0)  # only positives: a fit would run to a bound
    t = fit_temperature(y, p, ["A", "B", "C"], scope="class")
    pooled = fit_temperature(y, p, ["A", "B", "C"], scope="global")
    assert set(t.fallback) == {"B", "C"}
    assert "no known labels" in t.fallback["B"] and "pooled" in t.fallback["B"]
    assert "no negative label" in t.fallback["C"]
    assert t.values[1] == t.values[2] == pooled.values[0]
    # Fitted on its positives alone, C's temperature would run to a bound of the search.
    alone = fit_temperature(y[:, 2:], p[:, 2:], ["C"], scope="global").values[0]
    assert alone == pytest.approx(0.05, rel=1e-3) or alone == pytest.approx(20.0, rel=1e-3)
    assert set(pooled.fallback) == {"B"}

    none_known = fit_temperature(np.full((5, 2), np.nan), np.full((5, 2), 0.3), ["A", "B"])
    assert none_known.values == (1.0, 1.0)
    assert all("1 (no calibration)" in reason for reason in none_known.fallback.values())


def test_fit_temperature_checks_its_arguments():
    y, p = np.array([[1.0], [0.0]]), np.array([[0.9], [0.2]])
    with pytest.raises(EvaluationError, match="scope must be one of class, global"):
        fit_temperature(y, p, ["A"], scope="per-class")
    with pytest.raises(EvaluationError, match="bounds must satisfy 0 < low < high"):
        fit_temperature(y, p, ["A"], bounds=(2.0, 1.0))
    with pytest.raises(EvaluationError, match="bounds must be two numbers"):
        fit_temperature(y, p, ["A"], bounds=None)
    with pytest.raises(EvaluationError, match=r"class 'A' \(column 0\): label 0\.5"):
        fit_temperature([[0.5], [0.0]], p, ["A"])
    t = fit_temperature(y, p, ["A"], bounds=(0.5, 0.6))
    assert 0.5 <= t.values[0] <= 0.6  # a well-separated pair wants T -> 0: stops at the bound


def test_calibration_summary_dict_and_markdown():
    y = np.array([[0, np.nan], [1, np.nan], [1, np.nan], [0, np.nan]], dtype=float)
    before = np.array([[0.1, 0.5], [0.7, 0.5], [0.9, 0.5], [0.6, 0.5]])
    t = Temperatures(("A", "B"), (2.0, 1.0), "class", fallback={"B": "no known labels"})
    after = t.apply(before)
    summary = calibration_summary(y, before, after, ["A", "B"], n_bins=5, temperatures=t)
    assert isinstance(summary, CalibrationSummary)
    d = summary.to_dict()
    assert set(d) == {"n_bins", "binning", "classes", "mean", "temperatures"}
    assert d["n_bins"] == 5 and d["binning"] == "equal-width"
    assert d["temperatures"] == t.to_dict()
    a = d["classes"]["A"]
    assert a["ece_before"] == expected_calibration_error(y[:, 0], before[:, 0], 5)
    assert a["ece_after"] == expected_calibration_error(y[:, 0], after[:, 0], 5)
    assert a["brier_before"] == pytest.approx((0.01 + 0.09 + 0.01 + 0.36) / 4, abs=1e-12)
    assert a["bins_before"] == reliability_bins(y[:, 0], before[:, 0], 5)
    assert a["bins_after"]["count"] == reliability_bins(y[:, 0], after[:, 0], 5)["count"]
    assert d["classes"]["B"]["ece_before"] is None and d["classes"]["B"]["brier_after"] is None
    assert d["mean"] == {
        "ece_before": a["ece_before"], "ece_after": a["ece_after"], "num_classes": 1,
    }
    json.dumps(d)  # plain JSON types only

    lines = summary.to_markdown().splitlines()
    assert lines[0] == "| Class | T | ECE before | ECE after | Brier before | Brier after |"
    # ECE before (5 bins; 0.6 is on an edge and goes up): [0,.2) 0.1/y0 gap .1;
    # [.6,.8) 0.7,0.6/y1,0 gap .15; [.8,1] 0.9/y1 gap .1 -> (0.1 + 2 * 0.15 + 0.1) / 4 = 0.125.
    # Brier before 0.47 / 4 = 0.1175, printed with 3 decimals.
    row = r"\| A \| 2\.000 \| 0\.125 \| \d\.\d{3} \| 0\.11[78] \| \d\.\d{3} \|"
    assert re.fullmatch(row, lines[2])
    assert lines[3] == "| B | 1.000 | n/a | n/a | n/a | n/a |"
    assert lines[4].startswith("| Mean (1 classes) |  | 0.125 | ")


def test_summary_without_calibration_has_no_temperatures():
    y = np.array([[0.0], [1.0]])
    p = np.array([[0.3], [0.8]])
    summary = calibration_summary(y, p, p, ["A"])
    d = summary.to_dict()
    assert d["temperatures"] is None
    assert d["classes"]["A"]["ece_before"] == d["classes"]["A"]["ece_after"]
    assert "| A | n/a | 0.250 | 0.250 |" in summary.to_markdown()
    with pytest.raises(EvaluationError, match="calibration classes"):
        calibration_summary(y, p, p, ["A"], temperatures=Temperatures(("B",), (1.0,), "class"))
    with pytest.raises(EvaluationError, match="is not finite"):
        calibration_summary(y, p, np.array([[np.nan], [0.5]]), ["A"])


def test_docstring_examples_run():
    module = importlib.import_module("can_tf.evaluation.calibration")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
