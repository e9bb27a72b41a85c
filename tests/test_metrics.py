"""Per-class AUROC / AUPRC: hand-computed, against scikit-learn, NaN masking, undefined classes."""

import itertools
import json
import re

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from can_tf.evaluation.metrics import (
    EvaluationError,
    check_predictions,
    compute_metrics,
    mean_over_defined,
    per_class_auprc,
    per_class_auroc,
    undefined_reason,
)


def mann_whitney_auc(labels, scores):
    """AUROC by counting every (positive, negative) pair: 1 if the positive is higher, 1/2 a tie."""
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_computed_two_positives_two_negatives():
    # Positives score 0.8 and 0.4, negatives 0.5 and 0.1. The four (pos, neg) pairs:
    #   0.8 > 0.5 yes, 0.8 > 0.1 yes, 0.4 > 0.5 no, 0.4 > 0.1 yes  ->  3 of 4 = 0.75.
    y = np.array([[1], [0], [1], [0]], dtype="float32")
    p = np.array([[0.8], [0.5], [0.4], [0.1]])
    assert per_class_auroc(y, p, ["Mass"]) == {"Mass": pytest.approx(0.75)}
    assert mann_whitney_auc(y[:, 0], p[:, 0]) == 0.75


def test_auroc_hand_computed_with_a_tie():
    # Positives 0.8, 0.5; negatives 0.5, 0.1. Pairs: 1 + 1 + 0.5 (0.5 vs 0.5 tie) + 1 = 3.5 / 4.
    y = np.array([[1], [1], [0], [0]], dtype="float32")
    p = np.array([[0.8], [0.5], [0.5], [0.1]])
    assert per_class_auroc(y, p, ["Edema"])["Edema"] == pytest.approx(0.875)


def test_auroc_matches_sklearn_and_pair_counting_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random((150, 3)) < [0.1, 0.3, 0.5]).astype("float32")
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random((150, 3)), 0, 1), 2)  # rounding -> ties
    ours = per_class_auroc(y, p, ["a", "b", "c"])
    for c, name in enumerate("abc"):
        assert ours[name] == pytest.approx(roc_auc_score(y[:, c], p[:, c]), abs=1e-12)
        assert ours[name] == pytest.approx(mann_whitney_auc(y[:, c], p[:, c]), abs=1e-12)


def test_auprc_hand_computed_and_matches_sklearn():
    # Descending scores: 0.8 (pos) -> precision 1/1 at recall 1/2; 0.5 (neg); 0.4 (pos) ->
    # precision 2/3 at recall 2/2. AP = 1/2 * 1 + 1/2 * 2/3 = 0.8333...
    y = np.array([[1], [0], [1], [0]], dtype="float32")
    p = np.array([[0.8], [0.5], [0.4], [0.1]])
    assert per_class_auprc(y, p, ["Mass"])["Mass"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    rng = np.random.default_rng(1)
    y = (rng.random((200, 2)) < 0.2).astype("float32")
    p = np.round(rng.random((200, 2)) * 0.7 + 0.3 * y, 2)
    ours = per_class_auprc(y, p, ["a", "b"])
    for c, name in enumerate("ab"):
        assert ours[name] == pytest.approx(average_precision_score(y[:, c], p[:, c]), abs=1e-12)


def test_nan_labels_are_skipped_per_class_only():
    rng = np.random.default_rng(2)
    y = (rng.random((80, 2)) < 0.4).astype("float32")
    p = rng.random((80, 2))
    y[[3, 10, 40], 0] = np.nan  # unknown for class 0 only
    ours = per_class_auroc(y, p, ["a", "b"])
    keep = ~np.isnan(y[:, 0])
    assert ours["a"] == pytest.approx(roc_auc_score(y[keep, 0], p[keep, 0]))
    # Class b still uses all 80 rows, including those unknown for class a.
    assert ours["b"] == pytest.approx(roc_auc_score(y[:, 1], p[:, 1]))
    # The prediction on an unknown-label row has no influence.
    p2 = p.copy()
    p2[[3, 10, 40], 0] = [0.0, 1.0, 0.5]
    assert per_class_auroc(y, p2, ["a", "b"]) == ours


def test_undefined_classes_are_none_with_reason_never_half():
    y = np.array(
        [[1, 0, 1, np.nan], [0, 0, 1, np.nan], [1, 0, 1, np.nan], [0, 0, 1, np.nan]],
        dtype="float32",
    )
    p = np.array([[0.9, 0.5, 0.5, 0.5], [0.2, 0.5, 0.5, 0.5], [0.7, 0.5, 0.5, 0.5], [0.4] * 4])
    names = ["ok", "no_pos", "no_neg", "unknown"]
    auroc = per_class_auroc(y, p, names)
    assert auroc == {"ok": 1.0, "no_pos": None, "no_neg": None, "unknown": None}
    assert per_class_auprc(y, p, names)["no_pos"] is None
    m = compute_metrics(y, p, names)
    assert m.undefined == {
        "no_pos": "no positive labels among 4 known",
        "no_neg": "no negative labels among 4 known",
        "unknown": "no known labels",
    }
    assert m.mean_auroc == 1.0 and m.num_classes_averaged == 1
    assert m.positives == {"ok": 2, "no_pos": 0, "no_neg": 4, "unknown": 0}
    assert m.unknown["unknown"] == 4
    json.dumps(m.to_dict(), allow_nan=False)  # no NaN leaks into JSON


def test_mean_over_defined_counts_classes():
    assert mean_over_defined({"a": 0.9, "b": None, "c": 0.7, "d": float("nan")}) == (
        pytest.approx(0.8),
        2,
    )
    assert mean_over_defined({"a": None}) == (None, 0)
    assert undefined_reason(np.array([1.0, 0.0, np.nan])) is None


@pytest.mark.parametrize(
    "labels, probs, message",
    [
        ([[1, 0], [0, 1]], [[0.5, 0.2], [0.1, 1.2]], "'Mass' (column 1): probability 1.2 at row 1"),
        ([[1, 0], [0, 1]], [[0.5, np.nan], [0.1, 0.3]], "(column 1): probability nan at row 0"),
        ([[1, 0], [0, 1]], [[-0.1, 0.2], [0.1, 0.3]], "class 'Edema' (column 0)"),
        ([[2, 0], [0, 1]], [[0.5, 0.2], [0.1, 0.3]], "'Edema' (column 0): label 2.0 at row 0"),
        ([[1, 0, 0]], [[0.5, 0.2, 0.1]], "3 columns but 2 class names"),
        ([[1, 0], [0, 1]], [[0.5, 0.2]], "differ"),
        ([1, 0], [0.5, 0.2], "2-D"),
    ],
)
def test_bad_input_names_the_class_and_row(labels, probs, message):
    with pytest.raises(EvaluationError, match=re.escape(message)):
        check_predictions(labels, probs, ["Edema", "Mass"])
    with pytest.raises(EvaluationError):
        per_class_auroc(labels, probs, ["Edema", "Mass"])
