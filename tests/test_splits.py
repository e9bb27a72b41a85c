"""Splits: official and seeded patient-wise, always patient-disjoint, written and read back."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from can_tf.config import DataConfig
from can_tf.data.chestxray14 import load_chestxray14
from can_tf.data.errors import DataError
from can_tf.data.splits import (
    _allocate,
    assert_patient_disjoint,
    make_splits,
    official_split,
    patient_split,
    read_splits,
    write_splits,
)
from can_tf.data.table import load_table
from can_tf.labels import CLASS_NAMES


def _patients(splits) -> dict:
    return {name: set(part["patient_id"]) for name, part in splits.items()}


def _assert_disjoint(splits) -> None:
    """Independent of assert_patient_disjoint: pairwise set intersections are empty."""
    p = _patients(splits)
    assert not (p["train"] & p["val"]) and not (p["train"] & p["test"]) and not (p["val"] & p["test"])


# ---- the real sample ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images_table(chestxray14_dir):
    return load_chestxray14(chestxray14_dir, image_root=chestxray14_dir / "images")


def test_official_split_puts_none_of_the_sample_in_test(images_table, chestxray14_dir):
    test_list = set((chestxray14_dir / "test_list.txt").read_text().split())
    assert not test_list & set(images_table["image_index"])  # the sample is train_val only
    splits = official_split(images_table, val_fraction=0.1, seed=0)
    assert len(splits["test"]) == 0
    assert len(splits["train"]) + len(splits["val"]) == 546
    # One image per patient here: 546 patients x 0.1 = 54.6 -> 55 in val.
    assert splits["val"]["patient_id"].nunique() == 55
    _assert_disjoint(splits)


def test_official_split_with_empty_test_is_refused_unless_allowed(images_table):
    config = DataConfig(split="official")
    with pytest.raises(DataError, match="official test split is empty.*use data.split=patient"):
        make_splits(images_table, config)
    splits = make_splits(images_table, config, allow_empty=("test",))
    assert len(splits["train"]) > len(splits["val"]) > 0


def test_patient_split_of_the_sample(images_table):
    splits = make_splits(images_table, DataConfig(split="patient", split_fractions=[0.7, 0.1, 0.2], seed=3))
    # 546 patients: cuts at round(0.7*546)=382 and round(0.8*546)=437 -> 382 / 55 / 109.
    assert [part["patient_id"].nunique() for part in splits.values()] == [382, 55, 109]
    _assert_disjoint(splits)
    assert sum(len(p) for p in splits.values()) == 546


def test_official_split_of_the_full_label_file_is_patient_disjoint(chestxray14_dir):
    # Every one of the 112,120 rows (images on disk or not): NIH's lists never share a patient.
    full = load_chestxray14(chestxray14_dir, keep_missing=True)
    splits = official_split(full, val_fraction=0.1, seed=0)
    assert len(splits["train"]) + len(splits["val"]) == 86_524 and len(splits["test"]) == 25_596
    _assert_disjoint(splits)


# ---- phantom data (several images per patient) --------------------------------------------------
@pytest.fixture(scope="module")
def phantom_table(phantom_dir):
    df, _ = load_table(DataConfig(source=str(phantom_dir)))
    assert (df.groupby("patient_id").size() > 1).any()
    return df


def test_patient_split_is_seeded_disjoint_and_independent_of_row_order(phantom_table):
    a = patient_split(phantom_table, (0.7, 0.1, 0.2), seed=0)
    b = patient_split(phantom_table.sample(frac=1.0, random_state=1), (0.7, 0.1, 0.2), seed=0)
    c = patient_split(phantom_table, (0.7, 0.1, 0.2), seed=1)
    _assert_disjoint(a)
    assert _patients(a) == _patients(b)
    assert _patients(a) != _patients(c)
    n = phantom_table["patient_id"].nunique()  # 60: 42 / 6 / 12 patients
    assert n == 60 and [len(p) for p in _patients(a).values()] == [42, 6, 12]
    # Every image of a patient goes with it.
    assert sum(len(part) for part in a.values()) == len(phantom_table)


def test_official_split_on_phantom_follows_the_lists(phantom_table, phantom_dir):
    splits = make_splits(phantom_table, DataConfig(split="official", val_fraction=0.2, seed=0))
    test_list = (phantom_dir / "test_list.txt").read_text().split()
    assert sorted(splits["test"]["image_index"]) == sorted(test_list)
    train_val = set(splits["train"]["image_index"]) | set(splits["val"]["image_index"])
    assert train_val == set((phantom_dir / "train_val_list.txt").read_text().split())
    _assert_disjoint(splits)


def test_official_lists_sharing_a_patient_are_refused(phantom_table, tmp_path):
    patient = phantom_table.groupby("patient_id").size().idxmax()
    images = phantom_table.loc[phantom_table["patient_id"] == patient, "image_index"].tolist()
    others = phantom_table.loc[phantom_table["patient_id"] != patient, "image_index"].tolist()
    (tmp_path / "train_val_list.txt").write_text("\n".join(others + images[:1]) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(images[1:]) + "\n")
    with pytest.raises(DataError, match=f"both train_val_list.txt and test_list.txt: patient\\(s\\) '{patient}'"):
        official_split(phantom_table, tmp_path)


def test_images_in_neither_official_list_are_dropped_with_a_count(phantom_table, tmp_path, caplog):
    names = phantom_table["image_index"].tolist()
    patients = phantom_table.set_index("image_index")["patient_id"]
    last_patient_images = [n for n in names if patients[n] == patients[names[-1]]]
    listed = [n for n in names if n not in last_patient_images]
    (tmp_path / "train_val_list.txt").write_text("\n".join(listed) + "\n")
    (tmp_path / "test_list.txt").write_text("")
    with caplog.at_level(logging.WARNING):
        splits = official_split(phantom_table, tmp_path, val_fraction=0.1)
    assert f"{len(last_patient_images)} image(s) are in neither" in caplog.text
    assert sum(len(p) for p in splits.values()) == len(listed)
    assert splits["train"].attrs["unlisted_images"] == len(last_patient_images)


def test_official_split_without_lists_names_the_files(phantom_table, tmp_path):
    with pytest.raises(DataError, match="needs train_val_list.txt and test_list.txt in .*data.split=patient"):
        official_split(phantom_table, tmp_path)


def test_assert_patient_disjoint_names_the_patients():
    a = pd.DataFrame({"image_index": ["1_0.png", "2_0.png"], "patient_id": ["1", "2"]})
    b = pd.DataFrame({"image_index": ["2_1.png", "3_0.png"], "patient_id": ["2", "3"]})
    assert_patient_disjoint({"train": a, "val": b.iloc[1:], "test": b.iloc[:0]})
    with pytest.raises(DataError, match=r"1 patient\(s\) in both train and test: '2'"):
        assert_patient_disjoint({"train": a, "val": b.iloc[:0], "test": b})


def test_write_and_read_splits_round_trip(phantom_table, tmp_path):
    splits = patient_split(phantom_table, (0.6, 0.2, 0.2), seed=5)
    out = write_splits(splits, tmp_path / "run")
    assert out == tmp_path / "run" / "splits"
    for name, part in splits.items():
        assert (out / f"{name}.txt").read_text().split() == part["image_index"].tolist()
    summary = json.loads((out / "summary.json").read_text())
    for name, part in splits.items():
        assert summary[name]["images"] == len(part)
        assert summary[name]["patients"] == part["patient_id"].nunique()
        assert summary[name]["positives"] == {c: int(part[c].sum()) for c in CLASS_NAMES}
    back = read_splits(out, phantom_table.sample(frac=1.0, random_state=0))
    for name in splits:
        pd.testing.assert_frame_equal(back[name], splits[name])
    # make_splits with split_dir reuses them, whatever split and seed say.
    again = make_splits(phantom_table, DataConfig(split_dir=str(out), seed=99))
    assert {n: p["image_index"].tolist() for n, p in again.items()} == \
        {n: p["image_index"].tolist() for n, p in splits.items()}


def test_read_splits_rejects_images_not_in_the_data(phantom_table, tmp_path):
    out = write_splits(patient_split(phantom_table, seed=0), tmp_path)
    with open(out / "val.txt", "a") as f:
        f.write("99999999_000.png\n")
    with pytest.raises(DataError, match=r"val.txt: 1 listed image\(s\) are not in the data set \('99999999_000.png'\)"):
        read_splits(out, phantom_table)


def test_read_splits_rejects_an_image_in_two_files(phantom_table, tmp_path):
    out = write_splits(patient_split(phantom_table, seed=0), tmp_path)
    image = (out / "train.txt").read_text().split()[0]
    with open(out / "test.txt", "a") as f:
        f.write(image + "\n")
    with pytest.raises(DataError, match=f"{image}' is listed in both train.txt and test.txt"):
        read_splits(out, phantom_table)


def test_empty_split_on_tiny_data_suggests_a_fix(phantom_table):
    two = phantom_table[phantom_table["patient_id"].isin(sorted(phantom_table["patient_id"].unique())[:2])]
    # 2 patients at 0.7/0.1/0.2: cuts round(1.4)=1, round(1.6)=2 -> 1 / 1 / 0: test is empty.
    with pytest.raises(DataError, match=r"the test split is empty: 2 patient\(s\).*use more patients"):
        make_splits(two, DataConfig(split_fractions=[0.7, 0.1, 0.2]))
    # A zero fraction asks for an empty split: no error.
    splits = make_splits(two, DataConfig(split_fractions=[0.5, 0.5, 0.0]))
    assert len(splits["test"]) == 0 and len(splits["train"]) > 0 and len(splits["val"]) > 0


def test_allocate_gives_each_wanted_split_a_patient():
    # 10 x (0.7, 0.1, 0.2): cuts 7, 8, 10 -> 7 / 1 / 2.  4 patients: cuts 3, 3, 4 -> 3/0/1, fixed to 2/1/1.
    assert _allocate(10, (0.7, 0.1, 0.2)).tolist() == [7, 1, 2]
    assert _allocate(4, (0.7, 0.1, 0.2)).tolist() == [2, 1, 1]
    assert _allocate(5, (1.0, 0.0)).tolist() == [5, 0]
    assert int(np.sum(_allocate(1234, (0.7, 0.1, 0.2)))) == 1234
