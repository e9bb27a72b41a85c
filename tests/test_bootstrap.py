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


def _one_rare_positive():
    rng = np.random.default_rng(5)
    pid = np.repeat(np.arange(50), 2)
    y = np.zeros((100, 2), dtype="float32")
    y[:2, 0] = 1.0
    y[:, 1] = (rng.random(100) < 0.5).astype("float32")
    p = rng.random((100, 2))
    return y, p, pid


def test_stratified_replicates_all_define_a_class_with_one_positive_patient():
    y, p, pid = _one_rare_positive()
    result = bootstrap_ci(y, p, pid, ["rare", "common"], n_boot=1000, seed=0)
    assert result.per_class["rare"].n_used == 1000
    assert result.per_class["common"].n_used == 1000
    assert result.mean.n_used == 1000 and result.num_classes_averaged == 2
    assert result.num_strata >= 2
    # The one positive patient is its own stratum, so it is in every replicate exactly once.
    codes = np.arange(50)
    strata = bootstrap_module.resampling_strata(y[::2], codes, 50)
    assert any(s.tolist() == [0] for s in strata)
    counts = bootstrap_module.draw_patient_counts(np.random.default_rng(0), 200, 50, strata)
    assert (counts[:, 0] == 1).all() and (counts.sum(axis=1) == 50).all()


def test_plain_replicates_without_positives_are_dropped_and_counted():
    # One positive patient (2 images) among 50: a replicate misses them with probability
    # (1 - 1/50)^50 = 0.364, so about 636 of 1000 replicates can score the class.
    y, p, pid = _one_rare_positive()
    result = bootstrap_ci(y, p, pid, ["rare", "common"], n_boot=1000, seed=0, stratify=False)
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


def _simulated(rng, num_patients=800, rare_positives=8):
    """Five common classes and one rare one; scores = label shift + patient effect + image noise.

    Two images of one patient share the patient effect, so images are correlated as in real data.
    Each class's true AUROC is Phi(d / sqrt(2 (su^2 + se^2))): a positive and a negative image
    always come from different patients.
    """
    prevalence = [0.3, 0.25, 0.2, 0.15, 0.1]
    shift = np.array([1.0, 1.2, 0.8, 1.5, 1.0, 1.5])
    images = rng.integers(1, 3, size=num_patients)
    pid = np.repeat(np.arange(num_patients), images)
    y_patient = np.zeros((num_patients, 6))
    y_patient[:, :5] = rng.random((num_patients, 5)) < prevalence
    y_patient[rng.choice(num_patients, rare_positives, replace=False), 5] = 1.0
    y = y_patient[pid]
    scores = shift * y + rng.normal(0, 0.6, (num_patients, 6))[pid] + rng.normal(0, 0.8, y.shape)
    return y, 1.0 / (1.0 + np.exp(-scores)), pid, shift


@pytest.mark.slow
def test_mean_auroc_interval_has_nominal_coverage_with_a_rare_class():
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    covered, used, strata, sims = 0, [], [], 300
    for i in range(sims):
        y, p, pid, shift = _simulated(rng)
        truth = norm.cdf(shift / np.sqrt(2 * (0.6**2 + 0.8**2))).mean()
        r = bootstrap_ci(y, p, pid, [str(c) for c in range(6)], n_boot=300, seed=i)
        covered += r.mean.low <= truth <= r.mean.high
        used.append(r.mean.n_used)
        strata.append(r.num_strata)
    assert set(used) == {300}  # every replicate kept, every one averaging all six classes
    assert min(strata) >= 2  # the rare class had its own stratum
    # 95% nominal; 300 data sets give a standard error of 0.0126 on the coverage. Percentile
    # intervals run slightly below nominal at this size (0.927 was seen).
    assert 0.90 <= covered / sims <= 0.99, covered / sims


def test_stratified_mean_interval_holds_its_point_and_keeps_every_replicate():
    rng = np.random.default_rng(3)
    for i in range(10):
        y, p, pid, _ = _simulated(rng, num_patients=300, rare_positives=3)
        results = bootstrap_metrics(y, p, pid, [str(c) for c in range(6)], n_boot=200, seed=i)
        plain = bootstrap_metrics(y, p, pid, [str(c) for c in range(6)], n_boot=200, seed=i,
                                  stratify=False)
        for metric, r in results.items():
            assert r.mean.low <= r.mean.point <= r.mean.high
            assert r.mean.n_used == 200 and r.num_classes_averaged == 6
            assert all(r.per_class[str(c)].n_used == 200 for c in range(6))
        # With 3 positive patients a plain replicate misses all of them ~5% of the time.
        assert plain["auroc"].mean.n_used <= 200


def test_strata_single_out_only_rare_classes():
    rng = np.random.default_rng(1)
    y, p, pid, _ = _simulated(rng, num_patients=300, rare_positives=3)
    codes = pid
    strata = bootstrap_module.resampling_strata(y, codes, 300)
    rare = set(np.flatnonzero(y[:, 5] == 1).tolist())
    rare_patients = sorted({int(pid[i]) for i in rare})
    assert [s.tolist() for s in strata if set(s.tolist()) <= set(rare_patients)] == [rare_patients]
    assert len(strata) == 2
    # No rare class: one stratum, and the draws of the plain bootstrap.
    common = y[:, :5]
    assert len(bootstrap_module.resampling_strata(common, codes, 300)) == 1
    a = bootstrap_ci(common, p[:, :5], pid, list("abcde"), n_boot=100, seed=4)
    b = bootstrap_ci(common, p[:, :5], pid, list("abcde"), n_boot=100, seed=4, stratify=False)
    assert a.per_class == b.per_class and a.mean == b.mean
