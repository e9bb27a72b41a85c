"""One label space: relabelling publishers' findings, composites, what an external evaluation compares,
merging data sets with their patients kept apart, and publishers' official splits."""

from __future__ import annotations

import numpy as np
import pytest

from can_tf.data.errors import DataError
from can_tf.data.label_space import (ALL_CLASSES, COMPOSITES, DATASET_LABELS, comparable_classes,
                                     composite_probabilities, dataset_classes, relabel)
from can_tf.data.splits import SPLIT_NAMES, assert_patient_disjoint, publisher_split
from can_tf.data.table import make_table, merge_tables, source_specs
from can_tf.labels import CLASS_NAMES

NAN = np.nan


def test_every_mapped_class_is_a_can_tf_class():
    for dataset, mapping in DATASET_LABELS.items():
        assert set(mapping.values()) <= set(ALL_CLASSES), dataset
    for composite, parts in COMPOSITES.items():
        assert composite in ALL_CLASSES and set(parts) <= set(CLASS_NAMES)


def test_relabel_maps_names_and_leaves_what_a_data_set_lacks_unknown():
    columns = {"Pleural Effusion": np.array([1.0, 0.0, NAN]), "Atelectasis": np.array([0.0, 1.0, 1.0])}
    got = relabel(columns, "chexpert", ["Effusion", "Atelectasis", "Infiltration"])
    np.testing.assert_array_equal(got, [[1, 0, NAN], [0, 1, NAN], [NAN, 1, NAN]])
    assert got.dtype == np.float32
    with pytest.raises(DataError, match=r"chexpert: finding\(s\) 'Effusion' are not in can-tf's label map"):
        relabel({"Effusion": np.zeros(3)}, "chexpert", ["Effusion"])
    with pytest.raises(DataError, match="no label map for data set 'nope'"):
        relabel({}, "nope", [])


def test_composites_in_both_directions():
    # NIH-Google's "Nodule or mass": NO says Mass and Nodule are absent; YES says one of them is.
    google = {"Nodule or mass": np.array([0.0, 1.0, NAN])}
    np.testing.assert_array_equal(relabel(google, "nih-google", ["Mass", "Nodule", "Nodule or Mass"]),
                                  [[0, 0, 0], [NAN, NAN, 1], [NAN, NAN, NAN]])
    # From NIH's own Mass and Nodule the composite follows: any positive, or all known negative.
    nih = {"Mass": np.array([1.0, 0.0, 0.0, NAN]), "Nodule": np.array([0.0, 0.0, NAN, 0.0])}
    np.testing.assert_array_equal(relabel(nih, "chestxray14", ["Nodule or Mass"])[:, 0], [1, 0, NAN, NAN])
    # Two source columns onto one class (VinDr-style rib and clavicle fractures): either positive.
    DATASET_LABELS["test-two-columns"] = {"Rib": "Fracture", "Clavicle": "Fracture"}
    try:
        got = relabel({"Rib": np.array([1.0, 0.0, 0.0]), "Clavicle": np.array([0.0, 0.0, NAN])},
                      "test-two-columns", ["Fracture"])
        np.testing.assert_array_equal(got[:, 0], [1, 0, NAN])
    finally:
        del DATASET_LABELS["test-two-columns"]
    p = np.array([[0.2, 0.9, 0.4]])
    np.testing.assert_allclose(composite_probabilities(p, ["Mass", "Nodule", "Edema"], ["Nodule or Mass", "Edema"]),
                               [[0.9, 0.4]])
    with pytest.raises(DataError, match="no output for class 'Fracture'"):
        composite_probabilities(p, ["Mass", "Nodule", "Edema"], ["Fracture"])


def test_what_an_external_evaluation_compares():
    compared, not_compared = comparable_classes(CLASS_NAMES, "chexpert")
    assert compared == ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax",
                        "Consolidation", "Edema"]
    assert set(not_compared) == {"Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis",
                                 "Pleural_Thickening", "Hernia"}
    assert not_compared["Hernia"] == "chexpert does not label them"
    compared, not_compared = comparable_classes(CLASS_NAMES, "nih-google")
    assert compared == ["Pneumothorax", "Nodule or Mass"]  # Nodule or Mass from the model's Mass and Nodule
    assert "Mass" not in not_compared and "Nodule" not in not_compared and "Hernia" in not_compared
    assert dataset_classes("nih-google") == ["Pneumothorax", "Fracture", "Airspace Opacity", "Nodule or Mass"]


def _table(names, patients, labels, official=None):
    df = make_table(names, [f"/x/{n}" for n in names], patients, np.asarray(labels, np.float32), ["Edema"])
    if official is not None:
        df["official_split"] = official
    return df


def test_merge_keeps_patients_and_names_apart():
    a = _table(["1.png", "2.png"], ["p1", "p2"], [[1], [0]])
    a.attrs = {"format": "chexpert", "missing_images": 2, "class_names": ["Edema"]}
    b = _table(["1.png"], ["p1"], [[NAN]], official=["test"])
    b.attrs = {"format": "mimic", "missing_images": 1, "class_names": ["Edema"]}
    c = _table(["1.png"], ["p1"], [[0]])
    c.attrs = {"format": "chexpert", "missing_images": 0, "class_names": ["Edema"]}
    merged = merge_tables([a, b, c])
    assert merged["image_index"].tolist() == ["chexpert/1.png", "chexpert/2.png", "mimic/1.png", "chexpert2/1.png"]
    assert merged["patient_id"].nunique() == 4  # the same "p1" in three data sets is three patients
    assert merged["official_split"].tolist() == ["", "", "test", ""]
    assert merged.attrs["missing_images"] == 3 and merged.attrs["format"] == "chexpert+mimic+chexpert2"
    np.testing.assert_array_equal(merged["Edema"].to_numpy(), [1, 0, NAN, 0])


def test_source_specs():
    assert source_specs(["mimic:/d/m", "/d/nih", {"source": "/d/c", "options": {"uncertainty": "ones"}}]) == [
        {"source": "/d/m", "format": "mimic", "image_root": None, "options": {}},
        {"source": "/d/nih", "format": "auto", "image_root": None, "options": {}},
        {"source": "/d/c", "format": "auto", "image_root": None, "options": {"uncertainty": "ones"}},
    ]
    assert source_specs(["C:/data/x.csv"])[0]["source"] == "C:/data/x.csv"  # not a format prefix
    with pytest.raises(DataError, match="entry 1 must have 'source'"):
        source_specs([{"format": "mimic"}])
    with pytest.raises(DataError, match="entry 1: format 'nope'"):
        source_specs([{"source": "/d", "format": "nope"}])


def test_publisher_split_carves_validation_and_refuses_straddling_patients():
    patients = [f"p{i // 2}" for i in range(40)]  # two images a patient
    official = ["train"] * 30 + ["test"] * 10
    df = _table([f"{i}.png" for i in range(40)], patients, np.zeros((40, 1)), official)
    splits = publisher_split(df, val_fraction=0.2, seed=0)
    assert_patient_disjoint(splits)
    assert [len(splits[n]) for n in SPLIT_NAMES] == [24, 6, 10]  # 3 of the 15 train patients to val
    assert set(splits["test"]["official_split"]) == {"test"}
    assert publisher_split(df, val_fraction=0.2, seed=0)["val"]["patient_id"].tolist() == \
        splits["val"]["patient_id"].tolist()  # seeded
    with_val = df.assign(official_split=["train"] * 20 + ["val"] * 10 + ["test"] * 10)
    assert [len(publisher_split(with_val)[n]) for n in SPLIT_NAMES] == [20, 10, 10]  # the publisher's val kept
    straddling = df.assign(official_split=["train"] * 31 + ["test"] * 9)  # p15 in both
    with pytest.raises(DataError, match=r"puts 1 patient\(s\) in two splits: 'p15'"):
        publisher_split(straddling)
    unsplit = df.assign(official_split=[""] * 40)
    with pytest.raises(DataError, match="40 image\\(s\\) have no official split"):
        publisher_split(unsplit)


def test_merged_table_trains_through_make_splits():
    from can_tf.config import DataConfig
    from can_tf.data.splits import make_splits

    a = _table([f"{i}.png" for i in range(30)], [f"p{i}" for i in range(30)], np.zeros((30, 1)))
    a.attrs = {"format": "padchest"}
    b = _table([f"{i}.png" for i in range(30)], [f"p{i}" for i in range(30)], np.zeros((30, 1)))
    b.attrs = {"format": "vindr"}
    merged = merge_tables([a, b])
    splits = make_splits(merged, DataConfig(class_names=["Edema"]))
    assert_patient_disjoint(splits)
    assert sum(len(s) for s in splits.values()) == 60
