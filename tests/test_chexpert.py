"""CheXpert reader: the publisher's train.csv/valid.csv layout, uncertainty policies, split, bad input."""

from __future__ import annotations

import csv
import gzip
import logging
import os
import re

import numpy as np
import pytest

from can_tf.data.chexpert import OBSERVATIONS, detect, load_chexpert, uncertainty_policies
from can_tf.data.errors import DataError
from can_tf.data.label_space import DATASET_LABELS
from can_tf.data.table import BASE_COLUMNS

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
SMALL = "CheXpert-v1.0-small"
CLASSES = ["Effusion", "Edema", "Cardiomegaly", "No Finding", "Support Devices", "Hernia"]
# can-tf class -> CheXpert column, for computing expectations from the written cells
SOURCE = {"Effusion": "Pleural Effusion", "Edema": "Edema", "Cardiomegaly": "Cardiomegaly",
          "No Finding": "No Finding", "Support Devices": "Support Devices"}

# Rows as in the publisher's train.csv (the first four are its real first rows' values).
TRAIN_ROWS = [
    ["train/patient00001/study1/view1_frontal.jpg", "Female", "68", "Frontal", "AP",
     "1.0", "", "", "", "", "", "", "", "", "0.0", "", "", "", "1.0"],
    ["train/patient00002/study2/view1_frontal.jpg", "Female", "87", "Frontal", "AP",
     "", "", "-1.0", "1.0", "", "-1.0", "-1.0", "", "-1.0", "", "-1.0", "", "1.0", ""],
    ["train/patient00002/study1/view1_frontal.jpg", "Female", "83", "Frontal", "AP",
     "", "", "", "1.0", "", "", "-1.0", "", "", "", "", "", "1.0", ""],
    ["train/patient00002/study1/view2_lateral.jpg", "Female", "83", "Lateral", "",
     "", "", "", "1.0", "", "", "-1.0", "", "", "", "", "", "1.0", ""],
    ["train/patient00003/study1/view1_frontal.jpg", "Male", "41", "Frontal", "PA",
     "", "", "", "", "", "1.0", "", "", "", "0.0", "", "", "", ""],
    ["train/patient00004/study1/view1_frontal.jpg", "Unknown", "", "Frontal", "LL",
     "1.0", "0.0", "", "", "", "", "", "", "", "", "0.0", "", "", ""],
]
VALID_ROWS = [
    ["valid/patient64541/study1/view1_frontal.jpg", "Male", "73", "Frontal", "AP",
     "0.0", "1.0", "1.0", "1.0", "0.0", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0"],
    ["valid/patient64542/study1/view2_lateral.jpg", "Male", "70", "Lateral", "",
     "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "1.0", "0.0", "0.0", "1.0"],
]


def _generated_rows(n: int, seed: int = 0) -> list:
    """More train rows with every cell kind, seeded: a few dozen in all."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        patient, lateral = 10 + i // 2, i % 2 == 1
        view = "view2_lateral" if lateral else "view1_frontal"
        rows.append([f"train/patient{patient:05d}/study1/{view}.jpg", str(rng.choice(["Male", "Female", "Unknown"])),
                     str(int(rng.integers(18, 90))), "Lateral" if lateral else "Frontal",
                     "" if lateral else str(rng.choice(["AP", "PA"])),
                     *[str(v) for v in rng.choice(["1.0", "0.0", "-1.0", ""], size=len(OBSERVATIONS))]])
    return rows


def _write_csv(path, rows, folder=SMALL):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for row in rows:
            writer.writerow([f"{folder}/{row[0]}" if folder else row[0], *row[1:]])
    return path


def _link_images(root, rows, pngs, folder=SMALL, skip=()):
    for i, row in enumerate(rows):
        if row[0] in skip:
            continue
        target = root / folder / row[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(pngs[i % len(pngs)], target)


@pytest.fixture(scope="module")
def pngs(chestxray14_dir):
    return sorted(str(p) for p in (chestxray14_dir / "images").iterdir() if p.suffix == ".png")


@pytest.fixture(scope="module")
def train_rows():
    return TRAIN_ROWS + _generated_rows(30)


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory, pngs, train_rows):
    """train.csv and valid.csv beside CheXpert-v1.0-small/, every image present (symlinks to NIH PNGs)."""
    root = tmp_path_factory.mktemp("chexpert")
    _write_csv(root / "train.csv", train_rows)
    _write_csv(root / "valid.csv", VALID_ROWS)
    _link_images(root, train_rows + VALID_ROWS, pngs)
    return root


def _expected(cell: str, policy: str = "ignore", blank: str = "negative") -> float:
    if cell == "-1.0":
        return {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[policy]
    if cell == "":
        return 0.0 if blank == "negative" else np.nan
    return float(cell)


def _check_labels(df, rows, policies=None, blank="negative"):
    policies = policies or {}
    by_index = df.set_index("image_index")
    for row in rows:
        got = by_index.loc[f"{SMALL}/{row[0]}"]
        for name in CLASSES:
            if name not in SOURCE:
                assert np.isnan(got[name]), (row[0], name)  # CheXpert does not label Hernia
                continue
            cell = row[HEADER.index(SOURCE[name])]
            want = _expected(cell, policies.get(SOURCE[name], "ignore"), blank)
            np.testing.assert_equal(got[name], np.float32(want), err_msg=f"{row[0]} {name} {cell!r}")


# ---- loading ------------------------------------------------------------------------------------
def test_rows_labels_views_patients_and_split(chexpert_root, train_rows):
    df = load_chexpert(chexpert_root, CLASSES)
    rows = train_rows + VALID_ROWS
    assert list(df.columns) == [*BASE_COLUMNS, *CLASSES, "official_split"]
    assert df["image_index"].tolist() == [f"{SMALL}/{r[0]}" for r in rows]
    assert df["path"].tolist() == [str(chexpert_root / SMALL / r[0]) for r in rows]
    assert all(df[c].dtype == np.float32 for c in CLASSES)
    _check_labels(df, rows)  # U-Ignore: -1 -> NaN; blank -> 0
    first = df.iloc[:6]
    assert first["patient_id"].tolist() == ["patient00001", *["patient00002"] * 3, "patient00003", "patient00004"]
    assert first["view"].tolist() == ["AP", "AP", "AP", "", "PA", ""]  # lateral and LL -> ""
    assert first["sex"].tolist() == ["F", "F", "F", "F", "M", ""]
    assert first["age"].tolist()[:5] == [68.0, 87.0, 83.0, 83.0, 41.0] and np.isnan(first["age"].iloc[5])
    assert df["official_split"].tolist() == ["train"] * len(train_rows) + ["val", "val"]
    assert df.loc[df.index[-1], "view"] == ""  # a lateral validation image is kept
    assert df.attrs["format"] == "chexpert" and df.attrs["data_root"] == str(chexpert_root)
    assert df.attrs["class_names"] == CLASSES and df.attrs["missing_images"] == 0
    # the first rows, by hand: patient00001 'No Finding' 1.0, Effusion blank -> 0, Support Devices 1.0
    assert df.loc[0, ["No Finding", "Effusion", "Support Devices", "Cardiomegaly"]].tolist() == [1, 0, 1, 0]
    assert np.isnan(df.loc[1, "Edema"]) and np.isnan(df.loc[1, "Cardiomegaly"])


def test_uncertainty_policies(chexpert_root, train_rows):
    rows = train_rows + VALID_ROWS
    for policy in ("zeros", "ones", "U-Ones"):
        df = load_chexpert(chexpert_root, CLASSES, uncertainty=policy)
        name = policy.lower().removeprefix("u-")
        _check_labels(df, rows, {o: name for o in OBSERVATIONS})
    mixed = {"effusion": "ones", "Edema": "zeros"}  # a can-tf name and a CheXpert name
    df = load_chexpert(chexpert_root, CLASSES, uncertainty=mixed)
    _check_labels(df, rows, {"Pleural Effusion": "ones", "Edema": "zeros"})  # others: ignore
    assert df.loc[1, ["Effusion", "Edema"]].tolist() == [1.0, 0.0] and np.isnan(df.loc[1, "Cardiomegaly"])
    assert uncertainty_policies(mixed)["Pleural Effusion"] == "ones"


def test_blank_unknown_option(chexpert_root, train_rows):
    df = load_chexpert(chexpert_root, CLASSES, blank="unknown")
    _check_labels(df, train_rows + VALID_ROWS, blank="unknown")
    assert np.isnan(df.loc[0, "Effusion"])
    with pytest.raises(DataError, match=r"^unknown blank policy 'zero': use one of 'negative', 'unknown'$"):
        load_chexpert(chexpert_root, CLASSES, blank="zero")


def test_uncertain_label_under_the_error_policy_names_its_cell(chexpert_root):
    with pytest.raises(DataError) as e:
        load_chexpert(chexpert_root, CLASSES, uncertainty="error")
    message = str(e.value)
    assert re.match(r"^.*train\.csv, line \d+, column '[^']+': '-1(\.0)?' \(uncertain\) is not allowed by "
                    r"uncertainty 'error' \([\d,]+ such cell\(s\) in this column\); choose 'ignore', 'zeros' or "
                    r"'ones' for it$", message), message
    # valid.csv holds radiologists' labels, no -1: the strictest policy reads it.
    assert len(load_chexpert(chexpert_root / "valid.csv", CLASSES, uncertainty="error")) > 0


def test_unknown_policy_and_class_are_named(chexpert_root):
    with pytest.raises(DataError) as e:
        load_chexpert(chexpert_root, CLASSES, uncertainty={"Edema": "maybe"})
    assert str(e.value) == ("unknown uncertainty policy 'maybe' for uncertainty['Edema']: use one of "
                            "'ignore', 'zeros', 'ones', 'error' (U-Ignore, U-Zeros, U-Ones; 'error' refuses any -1)")
    with pytest.raises(DataError, match=r"^unknown uncertainty policy 'half' for uncertainty:"):
        load_chexpert(chexpert_root, CLASSES, uncertainty="half")
    with pytest.raises(DataError, match=r"unknown class 'Edemaa' for the uncertainty option.*did you mean 'Edema'"):
        load_chexpert(chexpert_root, CLASSES, uncertainty={"Edemaa": "ones"})
    with pytest.raises(DataError, match=r"unknown class 'Pleural Effusion' for data.class_names.*'Effusion'"):
        load_chexpert(chexpert_root, ["Pleural Effusion"])


def test_class_names_are_matched_and_missing_classes_unknown(chexpert_root):
    df = load_chexpert(chexpert_root, ["pleural_other", "Hernia", "effusion"], uncertainty="zeros")
    assert df.attrs["class_names"] == ["Pleural Other", "Hernia", "Effusion"]
    assert df["Hernia"].isna().all() and not df["Pleural Other"].isna().any()


def test_csvs_inside_the_small_folder_and_single_file_sources(tmp_path, pngs):
    folder = tmp_path / SMALL
    folder.mkdir()
    _write_csv(folder / "train.csv", TRAIN_ROWS)
    _write_csv(folder / "valid.csv", VALID_ROWS)
    _link_images(tmp_path, TRAIN_ROWS + VALID_ROWS, pngs)
    for source in (folder, tmp_path):  # the CheXpert-v1.0-small folder, or the one holding it
        df = load_chexpert(source, ["Edema"])
        assert len(df) == 8 and df["path"].map(os.path.isfile).all()
        assert df.attrs["data_root"] == str(folder)
    df = load_chexpert(folder / "valid.csv", ["Edema"])
    assert df["official_split"].tolist() == ["val", "val"] and df["Edema"].tolist() == [1.0, 0.0]
    df = load_chexpert(folder / "train.csv", ["Edema"], image_root=folder)  # the folder itself as image_root
    assert df["official_split"].eq("train").all() and len(df) == 6


def test_full_size_folder_name_and_image_root(tmp_path, pngs):
    labels = tmp_path / "labels"
    labels.mkdir()
    _write_csv(labels / "train.csv", TRAIN_ROWS, folder="CheXpert-v1.0")
    images = tmp_path / "images"
    _link_images(images, TRAIN_ROWS, pngs, folder="CheXpert-v1.0")
    df = load_chexpert(labels, ["Edema"], image_root=images)
    assert df["path"].tolist() == [str(images / "CheXpert-v1.0" / r[0]) for r in TRAIN_ROWS]
    assert df.attrs["data_root"] == str(labels)


def test_missing_images_are_counted_and_skipped(tmp_path, pngs, caplog):
    _write_csv(tmp_path / "train.csv", TRAIN_ROWS)
    _write_csv(tmp_path / "valid.csv", VALID_ROWS)
    absent = {TRAIN_ROWS[1][0], VALID_ROWS[0][0]}
    _link_images(tmp_path, TRAIN_ROWS + VALID_ROWS, pngs, skip=absent)
    with caplog.at_level(logging.WARNING):
        df = load_chexpert(tmp_path, ["Edema"])
    assert df.attrs["missing_images"] == 2 and len(df) == 6
    assert not set(df["image_index"]) & {f"{SMALL}/{a}" for a in absent}
    assert "2 of the 8 images listed in" in caplog.text
    kept = load_chexpert(tmp_path, ["Edema"], keep_missing=True)
    assert len(kept) == 8 and (kept["path"] == "").sum() == 2
    empty = tmp_path / "no-images"
    empty.mkdir()
    with pytest.raises(DataError, match=r"^none of the 8 images listed in .* were found in "):
        load_chexpert(tmp_path, ["Edema"], image_root=empty)


# ---- bad input ------------------------------------------------------------------------------------
def _bad(tmp_path, pngs, train=TRAIN_ROWS, valid=VALID_ROWS):
    _write_csv(tmp_path / "train.csv", train)
    if valid is not None:
        _write_csv(tmp_path / "valid.csv", valid)
    _link_images(tmp_path, train + (valid or []), pngs)
    return tmp_path


def test_a_label_value_outside_the_vocabulary_names_file_line_and_column(tmp_path, pngs):
    rows = [list(r) for r in TRAIN_ROWS]
    rows[3][HEADER.index("Edema")] = "2"
    rows[5][HEADER.index("Edema")] = "yes"
    root = _bad(tmp_path, pngs, rows)
    with pytest.raises(DataError) as e:
        load_chexpert(root, ["Edema"])
    assert str(e.value) == (f"{root / 'train.csv'}, line 5, column 'Edema': '2' is not one of 1, 0, -1 or "
                            f"blank (1 more such cell(s) in this column)")


def test_another_layout_names_its_missing_columns(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("path,Atelectasis,Effusion\nimg/a.png,1,0\n")
    with pytest.raises(DataError) as e:
        load_chexpert(path, ["Effusion"])
    missing = [c for c in HEADER if c != "Atelectasis"]
    assert str(e.value) == (f"{path} is not a CheXpert label file: it lacks column(s) "
                            f"{', '.join(map(repr, missing))}; its columns are 'path', 'Atelectasis', 'Effusion'")


def test_a_repeated_image_row_is_named(tmp_path, pngs):
    root = _bad(tmp_path, pngs, TRAIN_ROWS + [TRAIN_ROWS[2]])
    with pytest.raises(DataError) as e:
        load_chexpert(root, ["Edema"])
    assert str(e.value) == (f"{root / 'train.csv'}, line 8, column 'Path': '{SMALL}/{TRAIN_ROWS[2][0]}' is "
                            f"listed again (first at {root / 'train.csv'}, line 4)")


def test_an_image_in_both_splits_is_named(tmp_path, pngs):
    root = _bad(tmp_path, pngs, valid=VALID_ROWS + [TRAIN_ROWS[4]])
    with pytest.raises(DataError) as e:
        load_chexpert(root, ["Edema"])
    assert str(e.value) == (f"{root / 'valid.csv'}, line 4, column 'Path': '{SMALL}/{TRAIN_ROWS[4][0]}' is "
                            f"listed again (first at {root / 'train.csv'}, line 6)")


def test_a_patient_in_both_splits_is_named(tmp_path, pngs):
    row = list(VALID_ROWS[0])
    row[0] = "valid/patient00003/study9/view1_frontal.jpg"
    root = _bad(tmp_path, pngs, valid=[row])
    with pytest.raises(DataError) as e:
        load_chexpert(root, ["Edema"])
    assert str(e.value) == (f"1 patient(s) are in both {root / 'train.csv'} and {root / 'valid.csv'} (column "
                            f"'Path'): 'patient00003'; the official split must keep patients apart")


def test_a_path_without_patient_or_blank_is_named(tmp_path, pngs):
    rows = [list(r) for r in TRAIN_ROWS]
    rows[1][0] = "train/p2/study1/view1_frontal.jpg"
    root = _bad(tmp_path, pngs, rows, valid=None)
    with pytest.raises(DataError, match=re.escape(f"{root / 'train.csv'}, line 3, column 'Path': "
                                                  f"'{SMALL}/train/p2/study1/view1_frontal.jpg' has no patientNNNNN")):
        load_chexpert(root, ["Edema"])
    path = root / "train.csv"
    text = path.read_text().splitlines()
    text[2] = "," + text[2].split(",", 1)[1]
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"^" + re.escape(f"{path}, line 3, column 'Path': blank image path") + "$"):
        load_chexpert(root, ["Edema"])


def test_no_label_file_in_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"^no CheXpert label file in .*: expected train.csv and/or valid.csv"):
        load_chexpert(tmp_path, ["Edema"])


# ---- detect and the label map -----------------------------------------------------------------------
def test_detect_chexpert_and_not_other_layouts(chexpert_root, tmp_path):
    assert detect(chexpert_root) and detect(chexpert_root / "train.csv") and detect(chexpert_root / "valid.csv")
    inside = tmp_path / "inside" / SMALL
    inside.mkdir(parents=True)
    _write_csv(inside / "valid.csv", VALID_ROWS)
    assert detect(inside) and detect(inside.parent)
    nih = tmp_path / "nih"
    nih.mkdir()
    with gzip.open(nih / "Data_Entry_2017_v2020.csv.gz", "wt") as f:
        f.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
                "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143\n")
    plain = tmp_path / "plain.csv"
    plain.write_text("path,Atelectasis\nimg/a.png,1\n")
    mimic = tmp_path / "mimic"
    mimic.mkdir()
    with gzip.open(mimic / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as f:
        f.write("dicom_id,subject_id,study_id,ViewPosition\nd1,10000032,50414267,PA\n")
    for other in (nih, nih / "Data_Entry_2017_v2020.csv.gz", plain, mimic, mimic / "mimic-cxr-2.0.0-metadata.csv.gz",
                  tmp_path / "absent"):
        assert not detect(other), other


def test_every_documented_observation_is_mapped():
    documented = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                  "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                  "Pleural Other", "Fracture", "Support Devices"]  # Irvin et al. 2019, Table 1
    assert list(OBSERVATIONS) == documented
    assert set(DATASET_LABELS["chexpert"]) == set(documented)
    assert DATASET_LABELS["chexpert"]["Pleural Effusion"] == "Effusion"
