"""Operating thresholds: hand-derived Youden point, target sensitivity, fallbacks, JSON."""

import json

import numpy as np
import pytest

from can_tf.evaluation.metrics import EvaluationError
from can_tf.evaluation.thresholds import (
    Thresholds,
    choose_thresholds,
    sensitivity_threshold,
    youden_threshold,
)

# Seven images, 3 positives (P) and 4 negatives (N), ascending score:
#   0.1 N, 0.2 N, 0.3 P, 0.4 N, 0.6 P, 0.7 N, 0.9 P
# Calling "score >= t" positive:
#   t     TPR   FPR   J = TPR - FPR
#   0.9   1/3   0/4   0.333
#   0.7   1/3   1/4   0.083
#   0.6   2/3   1/4   0.417
#   0.4   2/3   2/4   0.167
#   0.3   3/3   2/4   0.500   <- maximum
#   0.2   3/3   3/4   0.250
#   0.1   3/3   4/4   0.000
LABELS = np.array([0, 0, 1, 0, 1, 0, 1], dtype="float32")
SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.9])


def test_youden_hand_derived():
    assert youden_threshold(LABELS, SCORES) == 0.3


def test_youden_ties_go_to_the_highest_threshold():
    # 0.1 N, 0.3 N, 0.35 P, 0.4 N, 0.8 P, 0.9 P: J(0.8) = 2/3 - 0 and J(0.35) = 1 - 1/3 are equal;
    # the higher threshold (fewer false positives) is chosen.
    labels = np.array([0, 0, 1, 0, 1, 1], dtype="float32")
    scores = np.array([0.1, 0.3, 0.35, 0.4, 0.8, 0.9])
    assert youden_threshold(labels, scores) == 0.8


@pytest.mark.parametrize("target, expected", [(0.3, 0.9), (0.5, 0.6), (2 / 3, 0.6), (0.9, 0.3)])
def test_target_sensitivity_hand_derived(target, expected):
    # From the table above: TPR reaches 1/3 at 0.9, 2/3 at 0.6, 1 at 0.3.
    assert sensitivity_threshold(LABELS, SCORES, target) == expected


def test_target_sensitivity_is_met_by_the_highest_threshold_that_meets_it():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 2)) < 0.25).astype("float32")
    p = np.clip(0.3 * y + 0.7 * rng.random((400, 2)), 0, 1)
    t = choose_thresholds(y, p, ["a", "b"], method="sensitivity", target_sensitivity=0.85)
    for c, name in enumerate("ab"):
        pos_scores = p[y[:, c] == 1, c]
        assert (pos_scores >= t.values[c]).mean() >= 0.85
        assert t.validation[name]["sensitivity"] >= 0.85
        # The next higher score would miss the target: the threshold is as high as it can be.
        higher = np.unique(p[:, c])[np.unique(p[:, c]) > t.values[c]]
        if higher.size:
            assert (pos_scores >= higher[0]).mean() < 0.85
    assert t.target_sensitivity == 0.85


def test_choose_thresholds_methods_fallback_and_nan_labels():
    y = np.stack([LABELS, np.zeros(7, dtype="float32"), LABELS], axis=1)
    # Unknown: the 0.7 negative drops out of the third class. Negatives left 0.1, 0.2, 0.4:
    # J(0.9) = 1/3, J(0.6) = 2/3 - 0, J(0.4) = 2/3 - 1/3, J(0.3) = 1 - 1/3 -> tie, 0.6 is higher.
    # (Counting the unknown as a negative would give 0.3, as for the first class.)
    y[5, 2] = np.nan
    p = np.stack([SCORES, SCORES, SCORES], axis=1)
    names = ["Mass", "Hernia", "Edema"]
    t = choose_thresholds(y, p, names, method="youden")
    assert t.values == [0.3, 0.5, 0.6]
    assert t.fallback == {
        "Hernia": "no positive labels among 7 known in the validation data; fixed 0.5 used"
    }
    assert t.validation["Mass"] == {"sensitivity": 1.0, "specificity": 0.5}
    assert "Hernia" not in t.validation
    fixed = choose_thresholds(y, p, names, method="fixed")
    assert fixed.values == [0.5, 0.5, 0.5] and fixed.fallback == {}
    with pytest.raises(EvaluationError, match="method must be one of"):
        choose_thresholds(y, p, names, method="f1")
    with pytest.raises(EvaluationError, match="no positive labels"):
        youden_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3]))


def test_apply_gives_boolean_findings_per_class():
    t = Thresholds(("A", "B"), "youden", [0.3, 0.8])
    found = t.apply([[0.3, 0.79], [0.29, 0.8]])
    assert found.dtype == bool
    assert found.tolist() == [[True, False], [False, True]]
    assert t.apply([0.5, 0.9]).tolist() == [[True, True]]
    with pytest.raises(EvaluationError, match="do not fit 2 thresholds"):
        t.apply(np.zeros((4, 3)))
    with pytest.raises(EvaluationError, match="class 'B' \\(column 1\\): probability nan at row 1"):
        t.apply([[0.3, 0.5], [0.2, np.nan]])


def test_json_round_trip(tmp_path):
    y = np.stack([LABELS, np.zeros(7, dtype="float32")], axis=1)
    p = np.stack([SCORES, SCORES], axis=1)
    t = choose_thresholds(y, p, ["Mass", "Hernia"], method="sensitivity", target_sensitivity=0.6)
    path = tmp_path / "thresholds.json"
    t.to_json(path)
    loaded = Thresholds.from_json(path, class_names=["Mass", "Hernia"])
    assert loaded == t
    assert loaded.apply(p).tolist() == t.apply(p).tolist()
    data = json.loads(path.read_text())
    assert data["thresholds"] == {"Mass": 0.6, "Hernia": 0.5}
    assert "Hernia" in data["fallback"]
    assert [f.name for f in tmp_path.iterdir()] == ["thresholds.json"]  # no temp files left


def test_class_name_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "thresholds.json"
    Thresholds(("Mass", "Edema"), "fixed", [0.5, 0.5]).to_json(path)
    with pytest.raises(EvaluationError, match=r"only in the thresholds: \['Edema'\]; only in "
                       r"the model \(checking .*thresholds.json\): \['Hernia'\]"):
        Thresholds.from_json(path, class_names=["Mass", "Hernia"])
    with pytest.raises(EvaluationError, match="same classes in a different order"):
        Thresholds.from_json(path, class_names=["Edema", "Mass"])
    path.write_text("{not json")
    with pytest.raises(EvaluationError, match="not valid JSON"):
        Thresholds.from_json(path)
    path.write_text(json.dumps({"method": "fixed", "class_names": ["A"], "thresholds": {}}))
    with pytest.raises(EvaluationError, match="missing key 'A'"):
        Thresholds.from_json(path)
    with pytest.raises(EvaluationError, match="not in \\[0, 1\\]"):
        Thresholds(("A",), "fixed", [1.5])
