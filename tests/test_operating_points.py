"""Operating points: counts against scikit-learn, intervals against explicit patient resampling."""

import doctest
import importlib
import json
import time

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from can_tf.evaluation.bootstrap import (
    Interval,
    bootstrap_ci,
    patient_replicate_weights,
    resampling_strata,
    stratum_generators,
)
from can_tf.evaluation.metrics import EvaluationError
from can_tf.evaluation.operating_points import METRICS, OperatingPoints, operating_points
from can_tf.evaluation.thresholds import Thresholds

# Class A at threshold 0.5 (">=" is positive, so the 0.5 counts as called):
#   p     0.9  0.5  0.4  0.7  0.2  0.1  0.6  0.3
#   y     1    1    1    0    0    0    NaN  0
#   call  yes  yes  no   yes  no   no   (skipped)
#   ->    TP   TP   FN   FP   TN   TN        TN     TP 2, FP 1, TN 3, FN 1
# Class B at threshold 0.95: nothing is called, and there are no positives:
#   TP 0, FP 0, TN 7, FN 0 -> sensitivity and PPV undefined, specificity 1, NPV 1.
Y = np.array(
    [[1, 0], [1, 0], [1, 0], [0, 0], [0, 0], [0, 0], [np.nan, 0], [0, np.nan]], dtype=float
)
P = np.array(
    [[0.9, 0.1], [0.5, 0.2], [0.4, 0.3], [0.7, 0.4], [0.2, 0.5], [0.1, 0.6], [0.6, 0.7], [0.3, 0.8]]
)


def make_data(num_patients=40, num_classes=3, seed=0):
    """Patients with 1-3 images each; labels by patient, scores = label + noise; some NaN."""
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 4, size=num_patients)
    patients = np.repeat(np.arange(num_patients), images)
    prevalence = np.array([0.4, 0.25, 0.2])[:num_classes]
    patient_y = (rng.random((num_patients, num_classes)) < prevalence).astype(float)
    y = patient_y[patients]
    y[rng.random(y.shape) < 0.1] = np.nan
    p = np.clip(0.35 * np.nan_to_num(y) + 0.65 * rng.random(y.shape), 0, 1)
    ids = np.array([f"p{k:03d}" for k in patients])  # sort as strings in patient order
    return y, p, ids, patients, num_patients


def reference_metrics(labels, scores, threshold):
    """(sensitivity, specificity, ppv, npv) from scikit-learn's confusion matrix; NaN undefined."""
    known = ~np.isnan(labels)
    tn, fp, fn, tp = confusion_matrix(
        labels[known].astype(int), (scores[known] >= threshold).astype(int), labels=[0, 1]
    ).ravel()
    ratio = lambda a, b: a / b if b > 0 else np.nan  # noqa: E731
    return ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(tp, tp + fp), ratio(tn, tn + fn)


def test_point_values_hand_computed_and_equal_to_sklearn():
    result = operating_points(Y, P, None, ["A", "B"], [0.5, 0.95], n_boot=50, seed=0)
    assert isinstance(result, OperatingPoints)
    d = result.to_dict()["classes"]
    a, b = d["A"], d["B"]
    assert (a["tp"], a["fp"], a["tn"], a["fn"]) == (2, 1, 3, 1)
    assert a["sensitivity"]["point"] == pytest.approx(2 / 3)
    assert a["specificity"]["point"] == pytest.approx(3 / 4)
    assert a["ppv"]["point"] == pytest.approx(2 / 3)
    assert a["npv"]["point"] == pytest.approx(3 / 4)
    for c, name in enumerate(["A", "B"]):
        known = ~np.isnan(Y[:, c])
        tn, fp, fn, tp = confusion_matrix(
            Y[known, c].astype(int), (P[known, c] >= result.thresholds[c]).astype(int),
            labels=[0, 1],
        ).ravel()
        assert (d[name]["tp"], d[name]["fp"], d[name]["tn"], d[name]["fn"]) == (tp, fp, tn, fn)
        expected = reference_metrics(Y[:, c], P[:, c], result.thresholds[c])
        for metric, value in zip(METRICS, expected):
            point = d[name][metric]["point"]
            assert (point is None) if np.isnan(value) else point == pytest.approx(value, abs=1e-15)
    assert (b["tp"], b["fp"], b["tn"], b["fn"]) == (0, 0, 7, 0)


def test_zero_denominators_are_undefined():
    result = operating_points(Y, P, None, ["A", "B"], [0.5, 0.95], n_boot=50, seed=0)
    b = result.intervals["B"]
    assert b["sensitivity"] == Interval(None, None, None, 0)
    assert b["ppv"] == Interval(None, None, None, 0)
    assert b["specificity"].point == 1.0 and b["specificity"].n_used == 50
    assert b["npv"] == Interval(1.0, 1.0, 1.0, 50)
    assert result.to_dict()["classes"]["B"]["ppv"] == {
        "point": None, "low": None, "high": None, "n_used": 0,
    }


def test_nan_labels_are_skipped_per_class():
    base = operating_points(Y, P, None, ["A", "B"], [0.5, 0.95], n_boot=10)
    # More images whose labels are unknown, with scores on both sides of the thresholds.
    y = np.vstack([Y, np.full((4, 2), np.nan)])
    p = np.vstack([P, [[0.99, 0.99], [0.0, 0.0], [0.5, 0.95], [0.3, 0.1]]])
    more = operating_points(y, p, None, ["A", "B"], [0.5, 0.95], n_boot=10)
    assert more.counts == base.counts
    for name in ("A", "B"):
        for metric in METRICS:
            assert more.intervals[name][metric].point == base.intervals[name][metric].point


def test_intervals_equal_an_explicit_patient_resampling():
    # Replicate b draws, within each stratum of the labels, as many patients as the stratum has
    # (the documented draw of the stratified patient bootstrap); the reference rebuilds each
    # resampled data set image by image.
    y, p, ids, patients, num_patients = make_data()
    thresholds = [0.5, 0.55, 0.6]
    n_boot, seed = 300, 7
    result = operating_points(y, p, ids, ["A", "B", "C"], thresholds, n_boot=n_boot, seed=seed)

    strata = resampling_strata(y, patients, num_patients)
    assert len(strata) > 1
    generators = stratum_generators(seed, strata)
    draws = np.concatenate([s[g.integers(0, s.size, size=(n_boot, s.size))]
                            for s, g in zip(strata, generators)], axis=1)
    rows_of = [np.flatnonzero(patients == k) for k in range(num_patients)]
    reference = np.full((n_boot, 3, 4), np.nan)
    for r in range(n_boot):
        rows = np.concatenate([rows_of[k] for k in draws[r]])
        for c in range(3):
            reference[r, c] = reference_metrics(y[rows, c], p[rows, c], thresholds[c])

    for c, name in enumerate(["A", "B", "C"]):
        for m, metric in enumerate(METRICS):
            values = reference[:, c, m]
            values = values[~np.isnan(values)]
            got = result.intervals[name][metric]
            assert got.n_used == values.size
            low, high = np.percentile(values, [2.5, 97.5])
            assert got.low == pytest.approx(low, abs=1e-12)
            assert got.high == pytest.approx(high, abs=1e-12)
            assert got.low <= got.point <= got.high
    # Stratified: every replicate holds a positive and a negative of each class, so sensitivity and
    # specificity are defined in all of them (PPV / NPV also need an image called each way).
    for name in ["A", "B", "C"]:
        assert result.intervals[name]["sensitivity"].n_used == n_boot
        assert result.intervals[name]["specificity"].n_used == n_boot
    assert result.by_patient and result.n_boot == n_boot and result.seed == seed


def test_replicate_weights_are_the_replicates_of_bootstrap_ci():
    y, p, ids, _, _ = make_data(num_classes=1, seed=3)
    known = ~np.isnan(y[:, 0])
    values = []
    for _, _, weights in patient_replicate_weights(ids, 200, seed=5, y_true=y):
        for w in weights:
            if len(np.unique(y[known, 0][w[known] > 0])) == 2:
                values.append(roc_auc_score(y[known, 0], p[known, 0], sample_weight=w[known]))
    ci = bootstrap_ci(y, p, ids, ["A"], n_boot=200, seed=5).per_class["A"]
    low, high = np.percentile(values, [2.5, 97.5])
    assert ci.n_used == len(values)
    assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12)


def test_replicate_weights_keep_patients_together_and_split_into_blocks(monkeypatch):
    from can_tf.evaluation import bootstrap

    ids = ["a", "b", "a", "c", "b"]
    whole = np.vstack([w for _, _, w in patient_replicate_weights(ids, 12, seed=1)])
    assert whole.shape == (12, 5)
    assert (whole[:, 0] == whole[:, 2]).all() and (whole[:, 1] == whole[:, 4]).all()
    assert (whole[:, [0, 1, 3]].sum(axis=1) == 3).all()  # three patients drawn per replicate
    # Blocks are cut as in bootstrap_metrics, which also fixes the draws: 15 // 5 = 3 per block.
    monkeypatch.setattr(bootstrap, "_BLOCK_ELEMENTS", 15)
    blocks = list(patient_replicate_weights(ids, 7, seed=1))
    assert [(start, stop) for start, stop, _ in blocks] == [(0, 3), (3, 6), (6, 7)]
    images = list(patient_replicate_weights(None, 2, seed=0, num_images=3))
    assert images[0][2].shape == (2, 3) and (images[0][2].sum(axis=1) == 3).all()
    with pytest.raises(EvaluationError, match="num_images is needed when patient_ids is None"):
        patient_replicate_weights(None, 5)
    with pytest.raises(EvaluationError, match="n_boot must be a positive integer"):
        patient_replicate_weights(ids, 0)
    with pytest.raises(EvaluationError, match="patient_ids has 5 entries but there are 4 images"):
        patient_replicate_weights(ids, 3, num_images=4)


def test_patients_widen_the_interval_over_duplicated_images():
    # Every image repeated 4 times under one patient id: resampling images would treat the copies
    # as independent evidence and narrow the interval; resampling patients must not.
    y, p, _, _, _ = make_data(num_patients=200, num_classes=1, seed=4)
    y4, p4 = np.repeat(y, 4, axis=0), np.repeat(p, 4, axis=0)
    ids4 = np.repeat(np.arange(y.shape[0]), 4)
    by_patient = operating_points(y4, p4, ids4, ["A"], [0.5], n_boot=400, seed=0)
    by_image = operating_points(y4, p4, None, ["A"], [0.5], n_boot=400, seed=0)
    wide = by_patient.intervals["A"]["sensitivity"]
    narrow = by_image.intervals["A"]["sensitivity"]
    assert wide.point == narrow.point
    assert (wide.high - wide.low) > 1.5 * (narrow.high - narrow.low)
    assert not by_image.by_patient


def test_thresholds_object_and_argument_errors():
    t = Thresholds(("A", "B"), "fixed", [0.5, 0.95])
    from_object = operating_points(Y, P, None, ["A", "B"], t, n_boot=20, seed=1)
    from_list = operating_points(Y, P, None, ["A", "B"], [0.5, 0.95], n_boot=20, seed=1)
    assert from_object.to_dict() == from_list.to_dict()
    with pytest.raises(EvaluationError, match="threshold classes do not match"):
        operating_points(Y, P, None, ["B", "A"], t, n_boot=20)
    with pytest.raises(EvaluationError, match=r"1 thresholds for 2 classes \(A, B\)"):
        operating_points(Y, P, None, ["A", "B"], [0.5], n_boot=20)
    with pytest.raises(EvaluationError, match="threshold of class 'B' is 1.5, not in"):
        operating_points(Y, P, None, ["A", "B"], [0.5, 1.5], n_boot=20)
    with pytest.raises(EvaluationError, match="thresholds must be 2 numbers"):
        operating_points(Y, P, None, ["A", "B"], 0.5, n_boot=20)
    with pytest.raises(EvaluationError, match="confidence must be in"):
        operating_points(Y, P, None, ["A", "B"], [0.5, 0.5], confidence=95)
    with pytest.raises(EvaluationError, match="n_boot must be a positive integer"):
        operating_points(Y, P, None, ["A", "B"], [0.5, 0.5], n_boot=0)
    with pytest.raises(EvaluationError, match=r"class 'A' \(column 0\): label 2\.0"):
        operating_points(np.where(Y == 1, 2.0, Y), P, None, ["A", "B"], [0.5, 0.5])


def test_dict_and_markdown():
    result = operating_points(Y, P, None, ["A", "B"], [0.5, 0.95], n_boot=100, seed=2,
                              confidence=0.9)
    d = result.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert {k: d[k] for k in ("n_boot", "seed", "confidence", "by_patient")} == {
        "n_boot": 100, "seed": 2, "confidence": 0.9, "by_patient": False,
    }
    assert list(d["classes"]) == ["A", "B"]
    assert set(d["classes"]["A"]) == {"threshold", "tp", "fp", "tn", "fn", *METRICS}
    assert d["classes"]["B"]["threshold"] == 0.95

    lines = result.to_markdown().splitlines()
    assert lines[0] == (
        "| Class | Threshold | Sensitivity [90% CI] | Specificity [90% CI] | PPV [90% CI] "
        "| NPV [90% CI] | TP/FP/TN/FN |"
    )
    a = result.intervals["A"]["sensitivity"]
    assert lines[2].startswith(f"| A | 0.500 | 0.667 [{a.low:.3f}, {a.high:.3f}] | ")
    assert lines[2].endswith(" | 2/1/3/1 |")
    assert lines[3] == (
        "| B | 0.950 | n/a | 1.000 [1.000, 1.000] | n/a | 1.000 [1.000, 1.000] | 0/0/7/0 |"
    )


@pytest.mark.slow
def test_speed_at_full_test_set_size():
    rng = np.random.default_rng(0)
    n, c = 25_000, 14
    y = (rng.random((n, c)) < 0.1).astype(float)
    y[rng.random((n, c)) < 0.05] = np.nan
    p = rng.random((n, c))
    ids = rng.integers(0, 12_000, size=n)
    start = time.perf_counter()
    operating_points(y, p, ids, [f"c{k}" for k in range(c)], [0.5] * c, n_boot=1000)
    assert time.perf_counter() - start < 15.0


@pytest.mark.parametrize("name", ["operating_points", "bootstrap"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"can_tf.evaluation.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
