"""Patient-clustered bootstrap: exact replicates, covering the point, shrinkage, clustering."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from can_tf.evaluation import bootstrap as bootstrap_module
from can_tf.evaluation.bootstrap import bootstrap_ci, bootstrap_metrics
from can_tf.evaluation.metrics import EvaluationError, per_class_auroc


def make_patients(num_patients, images_per_patient=1, prevalence=0.3, signal=1.0, seed=0):
    """Synthetic data: one label per patient (shared by their images), scores = signal + noise."""
    rng = np.random.default_rng(seed)
    patient_label = (rng.random(num_patients) < prevalence).astype("float32")
    patient_ids = np.repeat(np.arange(num_patients), images_per_patient)
    y = patient_label[patient_ids][:, None]
    logits = signal * y[:, 0] + rng.normal(size=patient_ids.size)
    p = (1.0 / (1.0 + np.exp(-logits)))[:, None]
    return y, p, patient_ids


def width(interval):
    return interval.high - interval.low


def test_replicate_values_equal_sklearn_with_the_same_weights():
    # A replicate is a weight (multiplicity) per image; the fast path must give exactly what
    # scikit-learn gives on the same weights, including tied scores and unknown labels.
    rng = np.random.default_rng(1)
    n = 300
    labels = (rng.random(n) < 0.3).astype(float)
    labels[rng.random(n) < 0.1] = np.nan
    scores = np.round(0.5 * rng.random(n) + 0.3 * np.nan_to_num(labels), 2)
    # Patients 0..99 with 3 images each, so segments mix images of one patient.
    codes = np.arange(n) % 100
    column = bootstrap_module._SortedColumn(labels, scores, codes, 100)
    patient_counts = rng.integers(0, 4, size=(6, 100)).astype(float)
    counts = patient_counts[:, codes]  # the weight of each image in each replicate
    weights = column.cumulative_weights(np.ascontiguousarray(patient_counts.T))
    auroc, auprc = column.auroc(*weights), column.auprc(*weights)
    known = ~np.isnan(labels)
    for r in range(counts.shape[0]):
        w = counts[r, known]
        assert auroc[r] == pytest.approx(
            roc_auc_score(labels[known], scores[known], sample_weight=w), abs=1e-12
        )
        assert auprc[r] == pytest.approx(
            average_precision_score(labels[known], scores[known], sample_weight=w), abs=1e-12
        )


def test_interval_contains_point_and_point_is_the_plain_metric():
    y, p, pid = make_patients(300, images_per_patient=2)
    result = bootstrap_ci(y, p, pid, ["Edema"], n_boot=500, seed=0)
    ci = result.per_class["Edema"]
    assert ci.point == per_class_auroc(y, p, ["Edema"])["Edema"]
    assert ci.low < ci.point < ci.high
    assert ci.n_used == 500
    assert result.num_patients == 300 and result.by_patient


def test_interval_shrinks_with_more_patients():
    small = bootstrap_ci(*make_patients(100, seed=0), ["Edema"], n_boot=400, seed=0)
    large = bootstrap_ci(*make_patients(2000, seed=1), ["Edema"], n_boot=400, seed=0)
    w_small, w_large = width(small.per_class["Edema"]), width(large.per_class["Edema"])
    # Width goes as 1/sqrt(n): sqrt(100 / 2000) = 0.22; allow generous slack for noise.
    assert w_large < 0.5 * w_small, (w_small, w_large)


def test_duplicated_images_do_not_shrink_the_patient_bootstrap():
    y1, p1, pid1 = make_patients(300, images_per_patient=1, seed=3)
    # Every patient now has 5 images: same label, nearly the same score (repeat films).
    rng = np.random.default_rng(4)
    y5, pid5 = np.repeat(y1, 5, axis=0), np.repeat(pid1, 5)
    p5 = np.clip(np.repeat(p1, 5, axis=0) + rng.normal(0, 0.01, (y5.shape[0], 1)), 0, 1)

    kwargs = dict(n_boot=400, seed=0)
    base = width(bootstrap_ci(y1, p1, pid1, ["Mass"], **kwargs).per_class["Mass"])
    by_patient = width(bootstrap_ci(y5, p5, pid5, ["Mass"], **kwargs).per_class["Mass"])
    by_image = width(bootstrap_ci(y5, p5, None, ["Mass"], **kwargs).per_class["Mass"])
    # Resampling images treats 5 copies as 5 independent patients: the CI shrinks ~sqrt(5) = 2.2x.
    assert by_image < 0.6 * base, (base, by_image)
    # Resampling patients keeps the honest width.
    assert 0.8 * base < by_patient < 1.25 * base, (base, by_patient)


def test_replicates_without_positives_are_dropped_and_counted():
    # One positive patient (2 images) among 50: a replicate misses them with probability
    # (1 - 1/50)^50 = 0.364, so about 636 of 1000 replicates can score the class.
    rng = np.random.default_rng(5)
    pid = np.repeat(np.arange(50), 2)
    y = np.zeros((100, 2), dtype="float32")
    y[:2, 0] = 1.0
    y[:, 1] = (rng.random(100) < 0.5).astype("float32")
    p = rng.random((100, 2))
    result = bootstrap_ci(y, p, pid, ["rare", "common"], n_boot=1000, seed=0)
    rare, common = result.per_class["rare"], result.per_class["common"]
    assert 560 < rare.n_used < 710
    assert rare.low <= rare.high
    assert common.n_used == 1000
    # The mean averages both classes in every replicate it keeps.
    assert result.num_classes_averaged == 2
    assert result.mean.n_used == rare.n_used


def test_undefined_class_has_no_interval_and_is_left_out_of_the_mean():
    y, p, pid = make_patients(100)
    y = np.concatenate([y, np.zeros_like(y)], axis=1)  # second class: no positives
    p = np.concatenate([p, p], axis=1)
    result = bootstrap_metrics(y, p, pid, ["Edema", "Hernia"], n_boot=200, seed=0)
    for metric in ("auroc", "auprc"):
        r = result[metric]
        hernia = r.per_class["Hernia"]
        assert (hernia.point, hernia.low, hernia.high, hernia.n_used) == (None, None, None, 0)
        assert r.num_classes_averaged == 1
        assert r.mean.point == r.per_class["Edema"].point
        assert (r.mean.low, r.mean.high) == (r.per_class["Edema"].low, r.per_class["Edema"].high)


def test_seeded_and_independent_of_block_size(monkeypatch):
    y, p, pid = make_patients(200, images_per_patient=2)
    a = bootstrap_ci(y, p, pid, ["Edema"], n_boot=300, seed=7)
    assert bootstrap_ci(y, p, pid, ["Edema"], n_boot=300, seed=7) == a
    assert bootstrap_ci(y, p, pid, ["Edema"], n_boot=300, seed=8) != a
    # Memory blocking (replicates drawn a few at a time) must not change the draws.
    monkeypatch.setattr(bootstrap_module, "_BLOCK_ELEMENTS", 7 * 400)
    assert bootstrap_ci(y, p, pid, ["Edema"], n_boot=300, seed=7) == a


def test_patient_ids_may_be_strings_and_are_validated():
    y, p, pid = make_patients(50, images_per_patient=2)
    as_str = np.array([f"{i:05d}" for i in pid], dtype=object)
    a = bootstrap_ci(y, p, pid, ["Edema"], n_boot=50, seed=0)
    assert bootstrap_ci(y, p, as_str, ["Edema"], n_boot=50, seed=0).num_patients == 50
    assert a.num_patients == 50
    with pytest.raises(EvaluationError, match="patient_ids has 99 entries but there are 100"):
        bootstrap_ci(y, p, pid[:99], ["Edema"], n_boot=10)
    bad = as_str.copy()
    bad[17] = None
    with pytest.raises(EvaluationError, match="missing patient id at row 17"):
        bootstrap_ci(y, p, bad, ["Edema"], n_boot=10)
    with pytest.raises(EvaluationError, match="n_boot"):
        bootstrap_ci(y, p, pid, ["Edema"], n_boot=0)
    with pytest.raises(EvaluationError, match="unknown metric"):
        bootstrap_ci(y, p, pid, ["Edema"], metric="f1", n_boot=10)
