"""DeLong's test: hand-computed components, a slow pairwise reference, pROC's published aSAH
results, null calibration and power, Obuchowski's clustered variance, Holm / BH, errors."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from can_tf.evaluation.delong import (
    DeLongResult,
    auroc_variance,
    benjamini_hochberg,
    delong_covariance,
    delong_test,
    holm,
)
from can_tf.evaluation.metrics import EvaluationError


# --- Independent references: pairwise O(m n) structural components from the papers' formulas ---


def pairwise_components(y, scores_2d):
    """V10 (k, m), V01 (k, n) and AUCs from psi(x, y) = 1 / 0.5 / 0 over every pos-neg pair."""
    y = np.asarray(y, dtype=float)
    scores_2d = np.asarray(scores_2d, dtype=float).reshape(len(y), -1)
    v10, v01, aucs = [], [], []
    for r in range(scores_2d.shape[1]):
        pos, neg = scores_2d[y == 1, r], scores_2d[y == 0, r]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    return np.array(v10), np.array(v01), np.array(aucs)


def delong_1988(y, scores_2d):
    """AUCs, S10, S01 and Cov = S10/m + S01/n of DeLong, DeLong & Clarke-Pearson (1988)."""
    v10, v01, aucs = pairwise_components(y, scores_2d)
    m, n = v10.shape[1], v01.shape[1]
    d10, d01 = v10 - aucs[:, None], v01 - aucs[:, None]
    k = len(aucs)
    s10, s01 = np.zeros((k, k)), np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = sum(d10[r, i] * d10[s, i] for i in range(m)) / (m - 1)
            s01[r, s] = sum(d01[r, j] * d01[s, j] for j in range(n)) / (n - 1)
    return aucs, s10, s01, s10 / m + s01 / n


def obuchowski_1997(y, scores_2d, clusters):
    """Cov of the AUCs from Obuchowski's S10, S01, S11 with per-cluster sums, term by term."""
    y = np.asarray(y, dtype=float)
    clusters = np.asarray(clusters)
    v10, v01, aucs = pairwise_components(y, scores_2d)
    m, n = v10.shape[1], v01.shape[1]
    pos_c, neg_c = clusters[y == 1], clusters[y == 0]
    ids = np.unique(clusters)
    big_i = len(ids)
    k = len(aucs)
    # Cluster sums of V10 and V01 and the cluster's counts of positives / negatives.
    sum10 = np.array([[v10[r, pos_c == c].sum() for c in ids] for r in range(k)])
    sum01 = np.array([[v01[r, neg_c == c].sum() for c in ids] for r in range(k)])
    m_c = np.array([(pos_c == c).sum() for c in ids])
    n_c = np.array([(neg_c == c).sum() for c in ids])
    cov = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            a_r, a_s = sum10[r] - m_c * aucs[r], sum10[s] - m_c * aucs[s]
            b_r, b_s = sum01[r] - n_c * aucs[r], sum01[s] - n_c * aucs[s]
            s10 = big_i / ((big_i - 1) * m) * np.sum(a_r * a_s)
            s01 = big_i / ((big_i - 1) * n) * np.sum(b_r * b_s)
            s11_rs = big_i / (big_i - 1) * np.sum(a_r * b_s)
            s11_sr = big_i / (big_i - 1) * np.sum(a_s * b_r)
            cov[r, s] = s10 / m + s01 / n + (s11_rs + s11_sr) / (m * n)
    return aucs, cov


def random_tied_data(seed, n=120, k=3):
    """Labels and k correlated score columns rounded to 1 decimal, so ties are frequent."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    latent = y + rng.normal(size=n)
    scores = np.round(latent[:, None] + rng.normal(scale=0.8, size=(n, k)), 1)
    return y, scores


# --- 1. A hand-checked case ---


def test_hand_computed_components_variance_and_z():
    # Images: 3 positives then 3 negatives. Score A ties a positive with a negative at 0.6.
    #   A: positives 0.9, 0.6, 0.4   negatives 0.6, 0.3, 0.1
    #   V10_A = [3/3, (0.5+1+1)/3, 2/3] = [1, 5/6, 2/3]
    #   V01_A = [(1+0.5+0)/3, 3/3, 3/3] = [1/2, 1, 1]        AUC_A = 7.5/9 = 5/6
    #   S10_AA = ((1/6)^2 + 0 + (1/6)^2) / 2 = 1/36
    #   S01_AA = ((1/3)^2 + (1/6)^2 + (1/6)^2) / 2 = 1/12
    #   Var_A = (1/36)/3 + (1/12)/3 = 1/27
    #   B: positives 0.5, 0.8, 0.2   negatives 0.5, 0.7, 0.1 (ties 0.5 with 0.5)
    #   V10_B = [(0.5+0+1)/3, 1, 1/3] = [1/2, 1, 1/3]
    #   V01_B = [(0.5+1+0)/3, 1/3, 1] = [1/2, 1/3, 1]         AUC_B = 5.5/9 = 11/18
    #   deviations: V10_B - 11/18 = [-2, 7, -5]/18, V01_B - 11/18 = [-2, -5, 7]/18
    #   S10_BB = S01_BB = (4 + 49 + 25) / 324 / 2 = 13/108, Var_B = 2 (13/108)/3 = 13/162
    #   S10_AB = ((1/6)(-2/18) + 0 + (-1/6)(-5/18)) / 2 = 1/72
    #   S01_AB = ((-1/3)(-2/18) + (1/6)(-5/18) + (1/6)(7/18)) / 2 = 1/36
    #   Cov_AB = (1/72)/3 + (1/36)/3 = 1/72
    #   Var(A - B) = 1/27 + 13/162 - 2/72 = 29/324;  diff = 5/6 - 11/18 = 2/9
    #   z = (2/9) / sqrt(29/324) = 4 / sqrt(29)
    y = [1, 1, 1, 0, 0, 0]
    a = [0.9, 0.6, 0.4, 0.6, 0.3, 0.1]
    b = [0.5, 0.8, 0.2, 0.5, 0.7, 0.1]
    aucs, cov = delong_covariance(y, np.column_stack([a, b]))
    assert aucs[0] == pytest.approx(5 / 6, abs=1e-12)
    assert aucs[1] == pytest.approx(11 / 18, abs=1e-12)
    assert cov[0, 0] == pytest.approx(1 / 27, abs=1e-12)
    assert cov[1, 1] == pytest.approx(13 / 162, abs=1e-12)
    assert cov[0, 1] == pytest.approx(1 / 72, abs=1e-12)
    assert cov[1, 0] == cov[0, 1]

    r = delong_test(y, a, b)
    assert r.difference == pytest.approx(2 / 9, abs=1e-12)
    assert r.variance == pytest.approx(29 / 324, abs=1e-12)
    assert r.std_error == pytest.approx(math.sqrt(29) / 18, abs=1e-12)
    assert r.z == pytest.approx(4 / math.sqrt(29), abs=1e-12)
    assert r.p_value == pytest.approx(math.erfc(4 / math.sqrt(29) / math.sqrt(2)), abs=1e-12)
    half = 1.959963984540054 * math.sqrt(29) / 18
    assert (r.low, r.high) == pytest.approx((2 / 9 - half, 2 / 9 + half), abs=1e-12)
    assert (r.n_positive, r.n_negative, r.n_clusters) == (3, 3, None)
    assert auroc_variance(y, a) == pytest.approx((5 / 6, 1 / 27), abs=1e-12)


# --- 2. The fast midrank algorithm against the pairwise formulas and scikit-learn ---


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_fast_covariance_equals_pairwise_1988_formulas_with_ties(seed):
    y, scores = random_tied_data(seed)
    assert len(np.unique(scores[:, 0])) < len(y) // 2  # ties are really there
    aucs, cov = delong_covariance(y, scores)
    ref_aucs, _, _, ref_cov = delong_1988(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-12)
    for r in range(scores.shape[1]):
        assert aucs[r] == pytest.approx(roc_auc_score(y, scores[:, r]), abs=1e-12)
    # delong_test's variance is the contrast of that matrix.
    t = delong_test(y, scores[:, 0], scores[:, 2])
    assert t.variance == pytest.approx(cov[0, 0] + cov[2, 2] - 2 * cov[0, 2], abs=1e-12)


def test_nan_labels_are_dropped_with_their_scores_and_clusters():
    y, scores = random_tied_data(7, n=80, k=2)
    y_missing = y.copy()
    y_missing[::5] = np.nan
    keep = ~np.isnan(y_missing)
    scores_missing = scores.copy()
    scores_missing[0, 0] = np.nan  # an unknown label's score is never looked at
    full = delong_test(y_missing, scores_missing[:, 0], scores_missing[:, 1])
    subset = delong_test(y[keep], scores[keep, 0], scores[keep, 1])
    assert full == subset
    clusters = np.arange(80) // 2
    assert delong_test(y_missing, scores[:, 0], scores[:, 1], clusters) == delong_test(
        y[keep], scores[keep, 0], scores[keep, 1], clusters[keep]
    )


# --- 3. pROC's published DeLong tests on the aSAH data ---

# aSAH (113 patients with aneurysmal subarachnoid haemorrhage; Turck et al. 2010), the data set
# shipped with R's pROC as data/aSAH.RData, in its row order: outcome "Poor" = 1, wfns (WFNS
# grade 1-5), s100b and ndka biomarkers.
ASAH_POOR = "".join(
    [
        "00001101001011001011101000000000100110110000000001100010001010011101101111000110100",
        "000010000000000001111110001000",
    ]
)
ASAH_WFNS = "".join(
    [
        "11113254125255125225211112121134214541425511241125521251222151125214524414121421232",
        "421451154221113125225552445111",
    ]
)
ASAH_S100B = [
    0.13, 0.14, 0.1, 0.04, 0.13, 0.1, 0.47, 0.16, 0.18, 0.1, 0.12, 0.1, 0.44, 0.71, 0.04, 0.08,
    0.49, 0.04, 0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11, 0.13, 0.19, 0.05, 0.16,
    0.41, 0.14, 0.34, 0.35, 0.48, 0.09, 0.96, 0.25, 0.5, 0.46, 0.16, 0.07, 0.43, 0.45, 0.11, 0.08,
    0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.1, 0.14, 0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.3,
    0.03, 0.09, 0.04, 0.23, 0.7, 0.09, 0.27, 0.71, 0.08, 0.26, 0.08, 0.16, 0.09, 0.13, 0.1, 0.08,
    0.11, 0.33, 0.11, 0.28, 0.07, 0.1, 0.32, 0.22, 0.07, 0.05, 0.24, 0.38, 0.1, 0.15, 0.08, 0.14,
    0.1, 0.07, 0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47, 0.17, 0.44, 0.15, 0.5,
    0.48,
]  # fmt: skip
ASAH_NDKA = [
    3.01, 8.54, 8.09, 10.42, 17.4, 12.75, 6, 13.2, 15.54, 6.01, 15.96, 17.86, 5.18, 8.9, 13.41,
    20.75, 11.6, 16.11, 32.37, 54.82, 32.41, 49.94, 40.34, 9.47, 6.29, 12.53, 6.54, 6.3, 80.3,
    12.8, 9.8, 9.81, 9.85, 18.21, 5.03, 14.04, 21.93, 8.02, 7.42, 8.38, 6.59, 9.63, 13.12, 7.96,
    14.34, 41.43, 7.63, 7.06, 12.59, 13.56, 3.87, 9.44, 7.66, 12.98, 419.19, 27.19, 22.27, 9.95,
    21.22, 11.73, 10.4, 58.83, 6.39, 11.09, 12.22, 13.67, 17.21, 22.63, 12.9, 9.7, 21.57, 8.23,
    72.57, 15.54, 10.51, 10.6, 14.57, 5.19, 9.63, 4.61, 21.48, 17.3, 12.71, 9.44, 11.07, 19.46,
    10.83, 5.37, 11.97, 7.75, 9.83, 10.55, 28.49, 8.53, 12.57, 12.9, 46.83, 11.68, 12.67, 9.01,
    9.57, 34.06, 11.72, 14.26, 47.61, 11.67, 24.58, 10.33, 13.87, 15.89, 22.43, 6.79, 13.45,
]  # fmt: skip

# pROC's tests (tests/testthat/test-roc.test.R): roc.test(r1, r2) with the default DeLong method,
# Z, two-sided p and 95% interval of AUC1 - AUC2; AUCs from its delongPlacements expectations.
PROC_AUC = {"wfns": 0.823678861788618, "s100b": 0.731368563685637, "ndka": 0.611957994579946}
PROC_TESTS = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    (
        "ndka", "s100b",
        -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094,
    ),
]  # fmt: skip


def asah():
    y = np.array([int(c) for c in ASAH_POOR], dtype=float)
    markers = {
        "wfns": np.array([int(c) for c in ASAH_WFNS], dtype=float),
        "s100b": np.array(ASAH_S100B),
        "ndka": np.array(ASAH_NDKA),
    }
    return y, markers


@pytest.mark.parametrize("first,second,z,p,low,high", PROC_TESTS)
def test_reproduces_proc_roc_test_on_asah(first, second, z, p, low, high):
    y, markers = asah()
    assert (len(y), int(y.sum())) == (113, 41)
    r = delong_test(y, markers[first], markers[second])
    assert r.auc_a == pytest.approx(PROC_AUC[first], abs=1e-12)
    assert r.auc_b == pytest.approx(PROC_AUC[second], abs=1e-12)
    assert r.z == pytest.approx(z, abs=1e-12)
    assert r.p_value == pytest.approx(p, abs=1e-12)
    assert (r.low, r.high) == pytest.approx((low, high), abs=1e-12)
    # The test is antisymmetric in its two curves.
    swapped = delong_test(y, markers[second], markers[first])
    assert swapped.z == pytest.approx(-r.z, abs=1e-12)
    assert swapped.p_value == pytest.approx(r.p_value, abs=1e-15)


def test_identical_curves_give_z_zero_and_p_one():
    # pROC: roc.test(r.wfns, r.wfns) has Z = 0 and p = 1.
    y, markers = asah()
    r = delong_test(y, markers["wfns"], markers["wfns"])
    assert (r.difference, r.variance, r.z, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert r.low == r.high == 0.0


def test_zero_variance_with_a_real_difference_gives_p_zero():
    # A separates perfectly (every placement is 1) and B is constant (every placement is 1/2):
    # both curves have zero variance, yet their AUCs differ by 1/2.
    y = [1, 1, 1, 0, 0, 0]
    r = delong_test(y, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1], [0.5] * 6)
    assert (r.auc_a, r.auc_b, r.variance) == (1.0, 0.5, 0.0)
    assert r.z == math.inf and r.p_value == 0.0
    assert r.low == r.high == 0.5


# --- 4. Calibration under the null, power under a real difference ---


def simulate(rng, n, noise_a, noise_b, prevalence=0.4):
    """Two readers of the same images: a shared latent severity plus each reader's own noise."""
    y = (rng.random(n) < prevalence).astype(float)
    latent = 1.2 * y + rng.normal(size=n)
    a = latent + rng.normal(scale=noise_a, size=n)
    b = latent + rng.normal(scale=noise_b, size=n)
    return y, a, b


def test_null_rejection_rate_is_close_to_alpha():
    # 400 data sets where A and B have the same distribution (correlated through the latent).
    # Under a calibrated test, rejections ~ Binomial(400, 0.05): mean 20, sd 4.4; the band
    # 8..36 (0.02..0.09) is about -2.7 / +3.6 sd.
    rng = np.random.default_rng(2024)
    p_values = [delong_test(*simulate(rng, 150, 0.7, 0.7)).p_value for _ in range(400)]
    rate = np.mean(np.array(p_values) < 0.05)
    assert 0.02 <= rate <= 0.09
    # p-values are ~uniform, not piled up anywhere: about half below 0.5.
    assert 0.4 <= np.mean(np.array(p_values) < 0.5) <= 0.6


def test_power_under_a_real_difference():
    # B has five times A's reader noise: AUC about 0.79 vs 0.68 at n = 300, a difference the test
    # detects ~95% of the time (0.85 leaves room for the binomial spread of 100 data sets).
    rng = np.random.default_rng(7)
    results = [delong_test(*simulate(rng, 300, 0.3, 1.5)) for _ in range(100)]
    assert np.mean([r.p_value < 0.05 for r in results]) >= 0.85
    assert np.mean([r.difference > 0 for r in results]) == 1.0
    # The intervals that reject exclude 0 on the right side, never the wrong one.
    assert np.mean([r.low > 0 for r in results]) >= 0.85
    assert not any(r.high < 0 for r in results)


# --- 5. Obuchowski's clustered variance ---


def test_clustered_covariance_equals_obuchowski_term_by_term():
    # Patients with 1-3 images, labels varying within a patient, ties in the scores.
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 4, size=50)
    clusters = np.repeat(np.arange(50), sizes)
    n = clusters.size
    y = (rng.random(n) < 0.4).astype(float)
    patient_effect = rng.normal(size=50)[clusters]
    scores = np.round(
        (y + patient_effect)[:, None] + rng.normal(scale=0.7, size=(n, 3)), 1
    )
    aucs, cov = delong_covariance(y, scores, clusters)
    ref_aucs, ref_cov = obuchowski_1997(y, scores, clusters)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-12)
    # Cluster ids may be of any type: strings name the same grouping.
    _, cov_str = delong_covariance(y, scores, [f"patient-{c}" for c in clusters])
    np.testing.assert_allclose(cov_str, cov, rtol=0, atol=1e-15)
    r = delong_test(y, scores[:, 0], scores[:, 1], clusters)
    assert r.n_clusters == 50
    assert r.variance == pytest.approx(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], abs=1e-12)


def test_one_image_per_cluster_matches_delong_up_to_finite_sample_factors():
    # With every image its own cluster, u_c = (V10 - AUC)/m for a positive and (V01 - AUC)/n
    # for a negative, so Cov_clustered = N/(N-1) [(m-1)/m S10/m + (n-1)/n S01/n] exactly,
    # against DeLong's S10/m + S01/n: the same estimator with 1/N and 1/(m(m-1))-type factors
    # swapped, equal to within about 1/m + 1/n.
    y, scores = random_tied_data(11, n=200, k=2)
    m, n = int(y.sum()), int((1 - y).sum())
    big_n = m + n
    _, s10, s01, delong_cov = delong_1988(y, scores)
    _, clustered = delong_covariance(y, scores, np.arange(big_n))
    expected = big_n / (big_n - 1) * ((m - 1) / m * s10 / m + (n - 1) / n * s01 / n)
    np.testing.assert_allclose(clustered, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(clustered, delong_cov, rtol=1 / m + 1 / n)
    assert not np.allclose(clustered, delong_cov, rtol=1e-6)  # the factors are really there


def test_duplicated_images_keep_the_clustered_variance_but_shrink_the_naive_one():
    # Each patient's image is repeated: no new information. Clustered by patient, each cluster's
    # influence u_c is unchanged (twice the sum over twice the images), so the variance is exactly
    # the one-image-per-cluster variance of the original data, ~DeLong's. Treated as independent
    # images, S10 and S01 barely change while m and n double: the variance is about halved, exactly
    # (m-1)/(2m-1) S10/m + (n-1)/(2n-1) S01/n.
    y, scores = random_tied_data(5, n=160, k=2)
    a, b = scores[:, 0], scores[:, 1]
    m, n = int(y.sum()), int((1 - y).sum())
    patients = np.arange(y.size)
    _, s10, s01, _ = delong_1988(y, scores)
    original = delong_test(y, a, b)
    original_per_patient = delong_test(y, a, b, patients)

    dup = np.repeat(np.arange(y.size), 2)
    clustered = delong_test(y[dup], a[dup], b[dup], patients[dup])
    naive = delong_test(y[dup], a[dup], b[dup])

    assert (clustered.auc_a, clustered.auc_b) == (original.auc_a, original.auc_b)
    assert clustered.n_clusters == y.size and clustered.n_positive == 2 * m
    assert clustered.variance == pytest.approx(original_per_patient.variance, abs=1e-15)
    assert clustered.variance == pytest.approx(original.variance, rel=0.02)
    contrast = np.array([1.0, -1.0])
    naive_expected = (m - 1) / (2 * m - 1) * contrast @ s10 @ contrast / m + (
        n - 1
    ) / (2 * n - 1) * contrast @ s01 @ contrast / n
    assert naive.variance == pytest.approx(naive_expected, abs=1e-12)
    assert 0.45 <= naive.variance / original.variance <= 0.55
    assert naive.p_value < clustered.p_value


def test_clustering_keeps_the_null_calibrated_where_the_naive_test_is_not():
    # 300 data sets of 100 patients with 3 images each, one label per patient; each reader's
    # error is mostly per patient, so images of one patient are far from independent. Under the
    # null (same reader noise), the clustered test rejects ~5%; the naive one, which believes it
    # has 300 independent images, rejects far more often.
    rng = np.random.default_rng(99)
    clusters = np.repeat(np.arange(100), 3)
    clustered_p, naive_p = [], []
    for _ in range(300):
        y = (rng.random(100) < 0.4).astype(float)[clusters]
        latent = 1.2 * y + rng.normal(size=100)[clusters]
        a = latent + rng.normal(scale=0.8, size=100)[clusters] + rng.normal(scale=0.2, size=300)
        b = latent + rng.normal(scale=0.8, size=100)[clusters] + rng.normal(scale=0.2, size=300)
        clustered_p.append(delong_test(y, a, b, clusters).p_value)
        naive_p.append(delong_test(y, a, b).p_value)
    clustered_rate = np.mean(np.array(clustered_p) < 0.05)
    naive_rate = np.mean(np.array(naive_p) < 0.05)
    assert 0.02 <= clustered_rate <= 0.095
    assert naive_rate >= 0.15


def test_clustered_single_positive_is_allowed_when_there_are_clusters():
    # Unclustered needs m, n >= 2 (the 1/(m-1) of S10); the clustered form only needs 2 clusters.
    y = [1, 0, 0, 0]
    auc, var = auroc_variance(y, [0.9, 0.5, 0.3, 0.1], clusters=[0, 1, 2, 3])
    assert auc == 1.0 and var == 0.0
    with pytest.raises(EvaluationError, match="at least 2 positives and 2 negatives"):
        auroc_variance(y, [0.9, 0.5, 0.3, 0.1])


# --- 6. Holm and Benjamini-Hochberg ---


def test_holm_hand_computed():
    # Defined p sorted: 0.001, 0.02, 0.03, 0.04, 0.5 (m = 5; NaN not counted)
    # times (5, 4, 3, 2, 1): 0.005, 0.08, 0.09, 0.08, 0.5
    # -> running max: 0.005, 0.08, 0.09, 0.09, 0.5
    p = [0.04, 0.001, 0.03, 0.5, 0.02, np.nan]
    out = holm(p)
    np.testing.assert_allclose(out[:5], [0.09, 0.005, 0.09, 0.5, 0.08], rtol=0, atol=1e-15)
    assert np.isnan(out[5])
    # Capped at 1 and monotone: 0.3*3 = 0.9, 0.6*2 = 1.2 -> 1, 0.9*1 = 0.9 -> max 1.
    np.testing.assert_allclose(holm([0.3, 0.6, 0.9]), [0.9, 1.0, 1.0], rtol=0, atol=1e-15)
    # Ties share the larger factor's value through the running max: 0.02*2 = 0.04, 0.02*1 -> 0.04.
    np.testing.assert_allclose(holm([0.02, 0.02]), [0.04, 0.04], rtol=0, atol=1e-15)


def test_benjamini_hochberg_hand_computed():
    # Defined p sorted: 0.001, 0.02, 0.03, 0.04, 0.5; m p / j: 0.005, 0.05, 0.05, 0.05, 0.5
    # -> running min from the largest: 0.005, 0.05, 0.05, 0.05, 0.5
    p = [0.04, 0.001, 0.03, 0.5, 0.02, np.nan]
    out = benjamini_hochberg(p)
    np.testing.assert_allclose(out[:5], [0.05, 0.005, 0.05, 0.5, 0.05], rtol=0, atol=1e-15)
    assert np.isnan(out[5])
    # 0.01*4/1 = 0.04, 0.04*4/2 = 0.08, 0.045*4/3 = 0.06, 0.2*4/4 = 0.2 -> min from the end:
    # 0.2, 0.06, 0.06 (the 0.08 is lowered), 0.04
    np.testing.assert_allclose(
        benjamini_hochberg([0.2, 0.04, 0.01, 0.045]), [0.2, 0.06, 0.04, 0.06], rtol=0, atol=1e-15
    )
    # Capped at 1.
    np.testing.assert_allclose(benjamini_hochberg([0.9, 0.8]), [0.9, 0.9], atol=1e-15)
    assert benjamini_hochberg([1.0, 0.99]).max() <= 1.0


def test_nan_entries_are_not_counted_as_tests():
    # One defined p-value: nothing to correct for, whatever the NaNs.
    for correct in (holm, benjamini_hochberg):
        out = correct([np.nan, 0.01, np.nan])
        assert np.isnan(out[0]) and np.isnan(out[2]) and out[1] == 0.01
        assert np.isnan(correct([np.nan, np.nan])).all()
        assert correct([]).shape == (0,)


def test_holm_is_stricter_than_bh_and_both_preserve_order():
    rng = np.random.default_rng(0)
    p = rng.random(30) ** 3
    h, q = holm(p), benjamini_hochberg(p)
    assert (h >= q - 1e-15).all() and (q >= p - 1e-15).all() and (h <= 1).all()
    order = np.argsort(p)
    assert (np.diff(h[order]) >= 0).all() and (np.diff(q[order]) >= 0).all()


# --- 7. Errors and the result object ---


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(y_true=[0, 0, np.nan, 0], score_a=[1, 2, 3, 4], score_b=[1, 2, 3, 4]),
         "y_true has no positive among its 3 known labels"),
        (dict(y_true=[1, 1, 1, np.nan], score_a=[1, 2, 3, 4], score_b=[1, 2, 3, 4]),
         "y_true has no negative among its 3 known labels"),
        (dict(y_true=[1, 0, 1, 0], score_a=[1, 2, 3, 4], score_b=[1, 2, 3]),
         r"score_a and score_b must be 1-D of the same length, got shapes \(4,\) and \(3,\)"),
        (dict(y_true=[1, 0, 1], score_a=[1, 2, 3, 4], score_b=[1, 2, 3, 4]),
         r"scores must be \(N,\) or \(N, k\) with N = 3 rows like y_true, got shape \(4, 2\)"),
        (dict(y_true=[1, 0, 1, 0], score_a=[1, 2, np.inf, 4], score_b=[1, 2, 3, 4]),
         r"scores must be finite; row 2 has \[inf, 3.0\]"),
        (dict(y_true=[1, 0, 1, 0], score_a=[1, 2, 3, 4], score_b=[1, np.nan, 3, 4]),
         r"scores must be finite; row 1 has \[2.0, nan\]"),
        (dict(y_true=[1, 0, 1, 0], score_a=[1, 2, 3, 4], score_b=[1, 2, 3, 4], clusters=[0, 1, 2]),
         "clusters has 3 entries but y_true has 4 images"),
        (dict(y_true=[1, 0, 1, 0], score_a=[1, 2, 3, 4], score_b=[1, 2, 3, 4],
              clusters=["a", None, "b", "c"]),
         "clusters: missing cluster id at row 1"),
        (dict(y_true=[1, 0, 1, 0], score_a=[1, 2, 3, 4], score_b=[1, 2, 3, 4],
              clusters=[7, 7, 7, 7]),
         "the clustered variance needs at least 2 clusters, got 1"),
        (dict(y_true=[1, 0, 2, 0], score_a=[1, 2, 3, 4], score_b=[1, 2, 3, 4]),
         "y_true must be 1, 0 or NaN; row 2 is 2.0"),
        (dict(y_true=[1, 0, 1, 0], score_a=[1, 2, 3, 4], score_b=[1, 2, 3, 4], confidence=1.0),
         r"confidence must be in \(0, 1\), got 1.0"),
    ],
)
def test_errors_name_the_fault_in_one_line(kwargs, message):
    with pytest.raises(EvaluationError, match=message) as info:
        delong_test(**kwargs)
    assert "\n" not in str(info.value)


def test_other_errors():
    with pytest.raises(EvaluationError, match=r"scores must be 1-D \(one score per image\)"):
        auroc_variance([1, 0], [[0.1], [0.2]])
    with pytest.raises(EvaluationError, match=r"y_true must be 1-D"):
        delong_covariance([[1, 0]], [[0.1, 0.2]])
    out_of_range = r"p_values must be in \[0, 1\] or NaN; entry {} is {}"
    with pytest.raises(EvaluationError, match=out_of_range.format(1, 1.5)):
        holm([0.1, 1.5])
    with pytest.raises(EvaluationError, match=out_of_range.format(0, -0.1)):
        benjamini_hochberg([-0.1])
    with pytest.raises(EvaluationError, match="y_true must be numeric"):
        delong_test(["yes", "no"], [0.1, 0.2], [0.3, 0.4])
    with pytest.raises(EvaluationError, match="score_b must be numeric"):
        delong_test([1, 0], [0.1, 0.2], ["high", "low"])


def test_result_to_dict_and_frozen():
    y, scores = random_tied_data(0, n=60, k=2)
    r = delong_test(y, scores[:, 0], scores[:, 1], confidence=0.9)
    d = r.to_dict()
    assert list(d) == [
        "auc_a", "auc_b", "difference", "variance", "std_error", "z", "p_value",
        "low", "high", "confidence", "n_positive", "n_negative", "n_clusters",
    ]  # fmt: skip
    assert d["confidence"] == 0.9 and d["n_clusters"] is None
    assert d["difference"] == pytest.approx(d["auc_a"] - d["auc_b"], abs=1e-15)
    wide = delong_test(y, scores[:, 0], scores[:, 1], confidence=0.99)
    assert wide.low < r.low < r.difference < r.high < wide.high
    with pytest.raises(Exception):
        r.z = 0.0
    assert isinstance(r, DeLongResult)
