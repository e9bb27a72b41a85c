"""Subgroup AUROC: per-group values against scikit-learn, intervals, small groups, outputs."""

import csv
import doctest
import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from can_tf.evaluation import subgroups as subgroups_module
from can_tf.evaluation.bootstrap import bootstrap_metrics
from can_tf.evaluation.metrics import EvaluationError
from can_tf.evaluation.subgroups import (
    AGE_BANDS,
    DEFAULT_ATTRIBUTES,
    UNKNOWN,
    group_seed,
    subgroup_columns,
    subgroup_metrics,
)

CLASSES = ["Edema", "Effusion"]


def three_groups(seed=0):
    """3 site groups x 2 classes, 60 images each, 2 images per patient, group-dependent signal."""
    rng = np.random.default_rng(seed)
    n = 180
    site = np.repeat(np.array(["A", "B", "C"], dtype=object), 60)
    y = (rng.random((n, 2)) < 0.35).astype(float)
    y[rng.random((n, 2)) < 0.1] = np.nan  # unknown labels are skipped per class
    signal = np.select([site == "A", site == "B"], [2.0, 1.0], 0.3)[:, None]
    logits = signal * np.nan_to_num(y) + rng.normal(size=(n, 2))
    p = 1.0 / (1.0 + np.exp(-logits))
    patients = np.arange(n) // 2
    return y, p, patients, site


def row(analysis, attribute, group, name):
    (match,) = [
        r for r in analysis.rows_for(attribute) if r.group == group and r.class_name == name
    ]
    return match


def sklearn_auroc(y, p):
    known = ~np.isnan(y)
    return roc_auc_score(y[known], p[known])


def test_per_group_auroc_equals_sklearn_and_gap_is_group_minus_overall():
    y, p, patients, site = three_groups()
    a = subgroup_metrics(y, p, patients, CLASSES, {"site": site}, n_boot=50)
    assert a.groups("site") == ["A", "B", "C"]
    for c, name in enumerate(CLASSES):
        overall = sklearn_auroc(y[:, c], p[:, c])
        assert a.overall[name] == pytest.approx(overall, abs=1e-12)
        for group in "ABC":
            m = site == group
            r = row(a, "site", group, name)
            expected = sklearn_auroc(y[m, c], p[m, c])
            assert r.auroc.point == pytest.approx(expected, abs=1e-12)
            assert r.gap == pytest.approx(expected - overall, abs=1e-12)
            known = ~np.isnan(y[m, c])
            assert r.positives == int((y[m, c][known] == 1).sum())
            assert r.negatives == int((y[m, c][known] == 0).sum())
            assert (r.images, r.patients) == (60, 30)
            assert r.status == "ok"
    # The strong-signal group ranks better than overall, the weak one worse: the gap's sign.
    assert row(a, "site", "A", "Mean").gap > 0
    assert row(a, "site", "C", "Mean").gap < 0
    mean_c = np.mean([row(a, "site", "C", n).auroc.point for n in CLASSES])
    assert row(a, "site", "C", "Mean").auroc.point == pytest.approx(mean_c)
    assert row(a, "site", "C", "Mean").status == "mean over 2 of 2 classes"
    assert a.overall["Mean"] == pytest.approx(np.mean([a.overall[n] for n in CLASSES]))


def test_hand_computed_gap_sign():
    # Overall: positives 0.9, 0.7, 0.6, 0.3 vs negatives 0.2, 0.4, 0.8, 0.1 win 12 of 16 pairs.
    y = np.array([[1], [0], [1], [0], [1], [0], [0], [1]], dtype=float)
    p = np.array([[0.9], [0.2], [0.7], [0.4], [0.6], [0.8], [0.1], [0.3]])
    sex = np.array(["F"] * 4 + ["M"] * 4, dtype=object)
    a = subgroup_metrics(y, p, None, ["Edema"], {"sex": sex}, n_boot=20,
                         min_positives=1, min_negatives=1)
    assert a.overall["Edema"] == 0.75
    assert row(a, "sex", "F", "Edema").gap == pytest.approx(0.25)  # 1.0 - 0.75
    assert row(a, "sex", "M", "Edema").gap == pytest.approx(-0.25)  # 0.5 - 0.75
    assert row(a, "sex", "M", "Edema").patients == 4  # None: each image its own patient


def test_intervals_contain_the_point_and_match_bootstrap_on_the_group_rows():
    y, p, patients, site = three_groups()
    a = subgroup_metrics(y, p, patients, CLASSES, {"site": site}, n_boot=200, seed=7,
                         confidence=0.9)
    for group in "ABC":
        m = site == group
        direct = bootstrap_metrics(y[m], p[m], patients[m], CLASSES, metrics=("auroc",),
                                   n_boot=200, confidence=0.9,
                                   seed=group_seed(7, "site", group))["auroc"]
        for name in CLASSES:
            r = row(a, "site", group, name)
            assert r.auroc == direct.per_class[name]
            assert r.auroc.low <= r.auroc.point <= r.auroc.high
            assert r.auroc.n_used == 200
        assert row(a, "site", group, "Mean").auroc == direct.mean


def test_seeds_differ_per_group_and_are_deterministic():
    y, p, patients, site = three_groups()
    first = subgroup_metrics(y, p, patients, CLASSES, {"site": site}, n_boot=100, seed=3)
    again = subgroup_metrics(y, p, patients, CLASSES, {"site": site}, n_boot=100, seed=3)
    assert first.to_dict() == again.to_dict()
    other = subgroup_metrics(y, p, patients, CLASSES, {"site": site}, n_boot=100, seed=4)
    assert row(first, "site", "A", "Edema").auroc != row(other, "site", "A", "Edema").auroc
    seeds = {group_seed(3, "site", g) for g in "ABC"} | {group_seed(3, "sex", "A")}
    assert len(seeds) == 4
    # A group's intervals do not depend on which other attributes are analysed with it.
    both = subgroup_metrics(y, p, patients, CLASSES, {"other": site[::-1], "site": site},
                            n_boot=100, seed=3)
    assert row(both, "site", "B", "Effusion") == row(first, "site", "B", "Effusion")


def test_too_small_and_undefined_groups_are_marked_not_dropped():
    # Group "big": 20 positives, 20 negatives; "tiny": 3 positives, 40 negatives; "allneg": none.
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.r_[np.ones(20), np.zeros(20)], np.r_[np.ones(3), np.zeros(40)],
                             np.zeros(10)])
    group = np.array(["big"] * 40 + ["tiny"] * 43 + ["allneg"] * 10, dtype=object)
    y = labels[:, None]
    p = np.clip(0.4 * y + 0.6 * rng.random(y.shape), 0, 1)
    a = subgroup_metrics(y, p, np.arange(len(y)), ["Edema"], {"g": group}, n_boot=100)
    assert a.groups("g") == ["allneg", "big", "tiny"]
    tiny = row(a, "g", "tiny", "Edema")
    assert tiny.status == "too small: 3 positives, 40 negatives (needs 5 of each)"
    assert tiny.too_small and not tiny.undefined
    # Still reported: the point equals scikit-learn's, the interval is there, the gap too.
    m = group == "tiny"
    assert tiny.auroc.point == pytest.approx(roc_auc_score(labels[m], p[m, 0]))
    assert tiny.auroc.low is not None and tiny.gap is not None
    allneg = row(a, "g", "allneg", "Edema")
    assert allneg.status == "undefined: no positive labels among 10 known"
    assert allneg.auroc.point is None and allneg.gap is None
    assert row(a, "g", "allneg", "Mean").status == "undefined: no class is defined in this group"
    assert row(a, "g", "tiny", "Mean").status == "mean over 1 of 1 classes, 1 of them too small"
    assert row(a, "g", "big", "Edema").status == "ok"
    assert subgroup_metrics(y, p, None, ["Edema"], {"g": group}, n_boot=10, min_positives=2,
                            min_negatives=50).rows_for("g")[2].status == (
        "too small: 20 positives, 20 negatives (needs 2 positives and 50 negatives)")


def test_subgroup_columns_unknowns_and_age_band_edges():
    df = pd.DataFrame({
        "patient_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
        "view": ["PA", "AP", "", "LL", "PA", None],
        "age": [19.99, 20.0, 80.0, np.nan, 0.0, 79.999],
        "sex": ["M", "", "F", None, "M", "F"],
        "site": ["x", " ", np.nan, "y", 3, "x"],
        "Edema": np.array([1, 0, 1, 0, 1, 0], dtype="float32"),
    })
    g = subgroup_columns(df, ("sex", "age", "view", "site"))
    assert list(g) == ["sex", "age", "view", "site"]
    assert g["sex"].tolist() == ["M", UNKNOWN, "F", UNKNOWN, "M", "F"]
    assert g["age"].tolist() == ["0-19", "20-39", "80+", UNKNOWN, "0-19", "60-79"]
    assert g["view"].tolist() == ["PA", "AP", UNKNOWN, "LL", "PA", UNKNOWN]
    assert g["site"].tolist() == ["x", UNKNOWN, UNKNOWN, "y", "3", "x"]
    assert all(v.dtype == object for v in g.values())
    assert tuple(subgroup_columns(df)) == DEFAULT_ATTRIBUTES
    assert [b[0] for b in AGE_BANDS] == ["0-19", "20-39", "40-59", "60-79", "80+"]
    assert AGE_BANDS[-1][2] == math.inf


def test_unknown_group_is_present_and_last():
    y, p, patients, _ = three_groups()
    sex = np.where(np.arange(len(y)) % 9 == 0, "", np.where(np.arange(len(y)) % 2, "M", "F"))
    age = np.where(np.arange(len(y)) % 7 == 0, np.nan, np.arange(len(y)) % 100).astype(float)
    df = pd.DataFrame({"sex": sex, "age": age})
    a = subgroup_metrics(y, p, patients, CLASSES, subgroup_columns(df, ("age", "sex")), n_boot=20)
    assert a.groups("sex") == ["F", "M", UNKNOWN]
    assert a.groups("age") == ["0-19", "20-39", "40-59", "60-79", "80+", UNKNOWN]
    assert row(a, "sex", UNKNOWN, "Mean").images == int((sex == "").sum())
    assert row(a, "age", UNKNOWN, "Mean").images == int(np.isnan(age).sum())
    # A column unknown throughout is still an attribute: one "unknown" group.
    blank = subgroup_columns(pd.DataFrame({"view": [""] * len(y)}), ("view",))
    b = subgroup_metrics(y, p, patients, CLASSES, blank, n_boot=10)
    assert b.groups("view") == [UNKNOWN]
    assert row(b, "view", UNKNOWN, "Edema").gap == pytest.approx(0.0, abs=1e-12)


def test_numeric_groups_sort_by_value():
    y, p, patients, _ = three_groups()
    ward = np.array(["10", "9", "2"] * 60, dtype=object)
    a = subgroup_metrics(y, p, patients, CLASSES, {"ward": ward}, n_boot=10)
    assert a.groups("ward") == ["2", "9", "10"]


def test_unknown_column_error_names_the_column_and_lists_the_metadata_columns():
    df = pd.DataFrame({
        "image_index": ["a.png"], "path": ["/x/a.png"], "patient_id": ["p"], "view": ["PA"],
        "age": [40.0], "sex": ["F"], "Edema": np.array([1.0], dtype="float32"),
        "Effusion": np.array([np.nan], dtype="float32"),
    })
    with pytest.raises(EvaluationError) as info:
        subgroup_columns(df, ("sex", "insurance"))
    assert str(info.value) == (
        "subgroup column 'insurance' is not in the data; its columns: "
        "image_index, path, patient_id, view, age, sex"
    )
    assert "\n" not in str(info.value)


def test_invalid_inputs_raise_evaluation_errors():
    y, p, patients, site = three_groups()
    with pytest.raises(EvaluationError, match=r"groups\['site'\] has 10 labels but there are 180"):
        subgroup_metrics(y, p, patients, CLASSES, {"site": site[:10]})
    with pytest.raises(EvaluationError, match="min_positives must be a positive integer"):
        subgroup_metrics(y, p, patients, CLASSES, {"site": site}, min_positives=0)
    with pytest.raises(EvaluationError, match="patient_ids has 3 entries"):
        subgroup_metrics(y, p, patients[:3], CLASSES, {"site": site})
    with pytest.raises(EvaluationError, match="no attribute"):
        subgroup_metrics(y, p, patients, CLASSES, {})
    a = subgroup_metrics(y, p, patients, CLASSES, {"site": site}, n_boot=5)
    with pytest.raises(EvaluationError, match="no subgroup attribute 'sex'"):
        a.rows_for("sex")


def test_to_dict_is_strict_json_and_csv_has_one_line_per_row(tmp_path):
    y, p, patients, site = three_groups()
    y[site == "C", 1] = 0.0  # Effusion undefined in C: None, not NaN
    a = subgroup_metrics(y, p, patients, CLASSES, {"site": site}, n_boot=30)
    d = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    assert set(d) == {"attributes", "n_boot", "seed", "confidence", "min_positives",
                      "min_negatives", "overall", "rows"}
    assert d["attributes"] == ["site"] and d["n_boot"] == 30 and d["seed"] == 0
    assert set(d["overall"]) == {"Edema", "Effusion", "Mean"}
    assert len(d["rows"]) == 3 * (len(CLASSES) + 1)
    assert set(d["rows"][0]) == {"attribute", "group", "class", "images", "patients", "positives",
                                 "negatives", "auroc", "gap", "status"}
    undefined = [r for r in d["rows"] if r["group"] == "C" and r["class"] == "Effusion"][0]
    assert undefined["auroc"]["point"] is None and undefined["gap"] is None
    assert [r for r in d["rows"] if r["group"] == "C" and r["class"] == "Mean"][0]["status"] == (
        "mean over 1 of 2 classes")

    path = a.to_csv(tmp_path / "subgroups.csv")
    with open(path, newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(a.rows)
    first = a.rows[0]
    assert float(lines[0]["auroc"]) == first.auroc.point  # full precision
    assert float(lines[0]["gap"]) == first.gap
    bad = [x for x in lines if x["group"] == "C" and x["class"] == "Effusion"][0]
    assert bad["auroc"] == "" and bad["gap"] == "" and bad["status"].startswith("undefined:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subgroups.csv"]  # no temporaries


def test_markdown_has_one_table_per_attribute_and_marks_small_cells():
    y, p, patients, site = three_groups()
    sex = np.array(["F", "M"] * 90, dtype=object)
    y_small = y.copy()
    y_small[(site == "C") & ~np.isnan(y[:, 0]), 0] = 0.0
    y_small[np.flatnonzero(site == "C")[:2], 0] = 1.0  # 2 positives in C: too small
    a = subgroup_metrics(y_small, p, patients, CLASSES, {"site": site, "sex": sex}, n_boot=30)
    md = a.to_markdown()
    assert md.count("### ") == 2 and "### site" in md and "### sex" in md
    separators = [line for line in md.splitlines() if line.startswith("|---")]
    assert len(separators) == 2
    site_table = md.split("### site")[1].split("### sex")[0]
    header = [line for line in site_table.splitlines() if line.startswith("| |")][0]
    assert header == "| | Overall | A | B | C |"
    edema = [line for line in site_table.splitlines() if line.startswith("| Edema |")][0]
    r = row(a, "site", "A", "Edema")
    assert f"{r.auroc.point:.3f} [{r.auroc.low:.2f}, {r.auroc.high:.2f}] ({r.gap:+.3f})" in edema
    small = row(a, "site", "C", "Edema")
    assert small.too_small
    assert f"{small.auroc.point:.3f}* (too small)" in edema
    assert "too small to measure" in md  # the footnote
    # Every table line has the same number of cells: 2 + groups.
    for line in site_table.splitlines():
        if line.startswith("|"):
            assert line.count("|") == 2 + 3 + 1


def test_docstring_examples_run():
    result = doctest.testmod(subgroups_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_fourteen_classes_three_attributes_two_thousand_images():
    # The size of a real test split's subgroup table; must stay a small part of the suite's time.
    rng = np.random.default_rng(0)
    n, c = 2000, 14
    names = [f"Class{i}" for i in range(c)]
    y = (rng.random((n, c)) < 0.1).astype(float)
    y[rng.random((n, c)) < 0.05] = np.nan
    p = np.clip(0.3 * np.nan_to_num(y) + 0.7 * rng.random((n, c)), 0, 1)
    patients = np.arange(n) // 3
    df = pd.DataFrame({
        "view": rng.choice(["PA", "AP", ""], n),
        "age": rng.uniform(0, 95, n),
        "sex": rng.choice(["M", "F", ""], n, p=[0.49, 0.49, 0.02]),
    })
    a = subgroup_metrics(y, p, patients, names, subgroup_columns(df), n_boot=200)
    assert a.attributes == DEFAULT_ATTRIBUTES
    num_groups = sum(len(a.groups(attr)) for attr in a.attributes)
    assert num_groups == 3 + 5 + 3
    assert len(a.rows) == num_groups * (c + 1)
    assert all(r.auroc.n_used > 0 for r in a.rows if r.status == "ok")
    json.dumps(a.to_dict(), allow_nan=False)
