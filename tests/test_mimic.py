"""MIMIC-CXR-JPG reader: the three PhysioNet tables, images per study, the official split, bad input."""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import os

import numpy as np
import pytest

from can_tf.data.chexpert import OBSERVATIONS
from can_tf.data.errors import DataError
from can_tf.data.label_space import DATASET_LABELS
from can_tf.data.mimic import detect, load_mimic
from can_tf.data.table import BASE_COLUMNS

# The publisher's headers, in the publisher's column order.
LABEL_HEADER = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
METADATA_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                   "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
SPLIT_HEADER = ["dicom_id", "study_id", "subject_id", "split"]
CLASSES = ["Effusion", "Edema", "Cardiomegaly", "No Finding", "Hernia"]
SOURCE = {"Effusion": "Pleural Effusion", "Edema": "Edema", "Cardiomegaly": "Cardiomegaly", "No Finding": "No Finding"}

# (subject, study, split, [view positions]); study 59999999 has no label row (no report).
STUDIES = [
    ("10000032", "50414267", "train", ["PA", "LATERAL"]),
    ("10000032", "53189527", "train", ["AP"]),
    ("10000764", "57375967", "train", ["AP", "LL", ""]),
    ("10000898", "50771383", "validate", ["PA", "LATERAL"]),
    ("10001217", "52067803", "test", ["AP AXIAL", "AP"]),
    ("19999987", "59999999", "train", ["PA"]),
] + [(f"1{1000000 + i:07d}", f"5{2000000 + i:07d}", ["train", "validate", "test"][i % 3], ["PA", "LATERAL"][: 1 + i % 2])
     for i in range(12)]
UNLABELLED_STUDY = "59999999"


def _dicom_id(subject, study, k):
    h = hashlib.sha1(f"{subject}-{study}-{k}".encode()).hexdigest()[:40]
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def _label_rows(seed=0):
    rng = np.random.default_rng(seed)
    rows = [["10000032", "50414267", "", "", "", "", "", "", "", "", "1.0", "", "", "", "", ""],
            ["10000032", "53189527", "", "", "", "-1.0", "", "", "", "1.0", "", "1.0", "", "-1.0", "0.0", "1.0"]]
    for subject, study, _, _ in STUDIES[2:]:
        if study != UNLABELLED_STUDY:
            rows.append([subject, study, *[str(v) for v in rng.choice(["1.0", "0.0", "-1.0", ""], 14)]])
    return rows


def _images():
    return [(_dicom_id(subject, study, k), subject, study, split, view)
            for subject, study, split, views in STUDIES for k, view in enumerate(views)]


def _write_gz(path, header, rows):
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _relative(dicom, subject, study):
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def write_mimic(root, pngs, *, images=None, labels=None, split_rows=None, skip=(), negbio=None):
    images = images if images is not None else _images()
    labels = labels if labels is not None else _label_rows()
    root.mkdir(parents=True, exist_ok=True)
    _write_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", LABEL_HEADER, labels)
    if negbio is not None:
        _write_gz(root / "mimic-cxr-2.0.0-negbio.csv.gz", LABEL_HEADER, negbio)
    _write_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_HEADER,
              [[d, s, t, "CHEST (PA AND LAT)", v, "3056", "2544", "21800506", "213014.531", "CHEST (PA AND LAT)",
                "postero-anterior", "Erect"] for d, s, t, _, v in images])
    _write_gz(root / "mimic-cxr-2.0.0-split.csv.gz", SPLIT_HEADER,
              split_rows if split_rows is not None else [[d, t, s, split] for d, s, t, split, _ in images])
    for i, (d, s, t, _, _) in enumerate(images):
        if d in skip:
            continue
        target = root / _relative(d, s, t)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(pngs[i % len(pngs)], target)
    return root


@pytest.fixture(scope="module")
def pngs(chestxray14_dir):
    return sorted(str(p) for p in (chestxray14_dir / "images").iterdir() if p.suffix == ".png")


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory, pngs):
    return write_mimic(tmp_path_factory.mktemp("mimic"), pngs)


def _expected(cell, policy="ignore", blank="negative"):
    if cell == "-1.0":
        return {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[policy]
    if cell == "":
        return 0.0 if blank == "negative" else np.nan
    return float(cell)


def _check(df, policy="ignore", blank="negative", labels=None):
    by_study = {(r[0], r[1]): r for r in (labels or _label_rows())}
    by_index = df.set_index("image_index")
    for d, s, t, _, _ in _images():
        if t == UNLABELLED_STUDY:
            continue
        got = by_index.loc[_relative(d, s, t)]
        for name in CLASSES:
            if name not in SOURCE:
                assert np.isnan(got[name])
                continue
            want = _expected(by_study[(s, t)][LABEL_HEADER.index(SOURCE[name])], policy, blank)
            np.testing.assert_equal(got[name], np.float32(want), err_msg=f"{d} {name}")


# ---- loading ----------------------------------------------------------------------------------------
def test_one_row_per_image_with_its_study_labels_view_and_split(mimic_root, caplog):
    with caplog.at_level(logging.WARNING):
        df = load_mimic(mimic_root, CLASSES)
    images = [i for i in _images() if i[2] != UNLABELLED_STUDY]
    assert list(df.columns) == [*BASE_COLUMNS, *CLASSES, "official_split"]
    assert df["image_index"].tolist() == [_relative(d, s, t) for d, s, t, _, _ in images]
    assert df["path"].tolist() == [str(mimic_root / _relative(d, s, t)) for d, s, t, _, _ in images]
    assert df["patient_id"].tolist() == [s for _, s, _, _, _ in images]
    assert df["view"].tolist() == [v if v in ("PA", "AP") else "" for *_, v in images]  # LATERAL, LL, AP AXIAL -> ""
    assert df["official_split"].tolist() == [{"validate": "val"}.get(p, p) for _, _, _, p, _ in images]
    assert df["sex"].eq("").all() and df["age"].isna().all()  # not in MIMIC-CXR-JPG (they are in MIMIC-IV)
    _check(df)
    # by hand: study 50414267 is 'No Finding' 1.0 with every other cell blank -> negative; both its images
    assert df.loc[:1, ["No Finding", "Effusion", "Edema"]].to_numpy().tolist() == [[1, 0, 0], [1, 0, 0]]
    assert np.isnan(df.loc[2, "Edema"]) and df.loc[2, "Effusion"] == 1.0  # study 53189527: Edema -1.0
    assert df.attrs["format"] == "mimic" and df.attrs["data_root"] == str(mimic_root)
    assert df.attrs["unlabelled_images"] == 1 and df.attrs["missing_images"] == 0
    assert df.attrs["labeler"] == "chexpert" and df.attrs["class_names"] == CLASSES
    assert "1 image(s) of" in caplog.text and "keep_unlabelled=True" in caplog.text


def test_unlabelled_study_kept_with_unknown_labels(mimic_root):
    df = load_mimic(mimic_root, CLASSES, keep_unlabelled=True)
    assert len(df) == len(_images())
    row = df[df["image_index"].str.contains(UNLABELLED_STUDY)]
    assert len(row) == 1 and row[CLASSES].isna().all().all()


def test_uncertainty_and_blank_options_as_for_chexpert(mimic_root):
    _check(load_mimic(mimic_root, CLASSES, uncertainty="zeros"), "zeros")
    _check(load_mimic(mimic_root, CLASSES, uncertainty="ones", blank="unknown"), "ones", "unknown")
    df = load_mimic(mimic_root, CLASSES, uncertainty={"Edema": "ones"})
    assert df.loc[2, "Edema"] == 1.0
    with pytest.raises(DataError, match=r"^unknown uncertainty policy 'sometimes' for uncertainty\['Edema'\]"):
        load_mimic(mimic_root, CLASSES, uncertainty={"Edema": "sometimes"})


def test_negbio_labeler_and_file_sources(tmp_path, pngs):
    negbio = [[r[0], r[1], *["0.0"] * 14] for r in _label_rows()]
    root = write_mimic(tmp_path, pngs, negbio=negbio)
    df = load_mimic(root, CLASSES, labeler="negbio")
    assert df.attrs["labeler"] == "negbio" and df[CLASSES[:-1]].eq(0).all().all()
    assert load_mimic(root / "mimic-cxr-2.0.0-negbio.csv.gz", CLASSES).attrs["labeler"] == "negbio"
    df = load_mimic(root / "mimic-cxr-2.0.0-metadata.csv.gz", CLASSES)
    assert df.attrs["labeler"] == "chexpert" and len(df) == len(_images()) - 1
    with pytest.raises(DataError, match=r"^unknown MIMIC-CXR-JPG labeler 'chexbert': use one of 'chexpert', 'negbio'$"):
        load_mimic(root, CLASSES, labeler="chexbert")
    with pytest.raises(DataError, match=r"is the negbio label file, but labeler='chexpert'$"):
        load_mimic(root / "mimic-cxr-2.0.0-negbio.csv.gz", CLASSES, labeler="chexpert")


def test_missing_images_counted_and_skipped_and_image_root(tmp_path, pngs, caplog):
    images = _images()
    absent = {images[0][0], images[4][0]}
    root = write_mimic(tmp_path / "data", pngs, skip=absent)
    with caplog.at_level(logging.WARNING):
        df = load_mimic(root, ["Edema"])
    assert df.attrs["missing_images"] == 2 and len(df) == len(images) - 1 - 2
    assert not any(a in name for a in absent for name in df["image_index"])
    assert f"2 of the {len(images) - 1} images listed in" in caplog.text
    tables = tmp_path / "tables"
    tables.mkdir()
    for name in ("chexpert", "metadata", "split"):
        os.symlink(root / f"mimic-cxr-2.0.0-{name}.csv.gz", tables / f"mimic-cxr-2.0.0-{name}.csv.gz")
    for image_root in (root, root / "files"):  # the folder holding files/, or files/ itself
        df = load_mimic(tables, ["Edema"], image_root=image_root)
        assert len(df) == len(images) - 3 and df["path"].map(os.path.isfile).all()
    with pytest.raises(DataError, match=r"^none of the .* images listed in .* were found in"):
        load_mimic(tables, ["Edema"])


# ---- bad input ----------------------------------------------------------------------------------------
def test_a_label_value_outside_the_vocabulary(tmp_path, pngs):
    labels = _label_rows()
    labels[3][LABEL_HEADER.index("Edema")] = "2"
    root = write_mimic(tmp_path, pngs, labels=labels)
    with pytest.raises(DataError) as e:
        load_mimic(root, ["Edema"])
    assert str(e.value) == (f"{root / 'mimic-cxr-2.0.0-chexpert.csv.gz'}, line 5, column 'Edema': '2' is not "
                            f"one of 1, 0, -1 or blank")


def test_missing_columns_and_files_are_named(tmp_path, pngs):
    root = write_mimic(tmp_path, pngs)
    _write_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "Rows"], [["d", "10000032", "1"]])
    with pytest.raises(DataError) as e:
        load_mimic(root, ["Edema"])
    assert str(e.value) == (f"{root / 'mimic-cxr-2.0.0-metadata.csv.gz'} lacks column(s) 'study_id', "
                            f"'ViewPosition'; its columns are 'dicom_id', 'subject_id', 'Rows'")
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(DataError, match=r"has no mimic-cxr-2.0.0-split.csv.gz \(nor mimic-cxr-2.0.0-split.csv\)$"):
        load_mimic(root, ["Edema"])


def test_repeated_image_and_study_rows_are_named(tmp_path, pngs):
    images = _images()
    root = write_mimic(tmp_path / "a", pngs, images=images + [images[1]])
    with pytest.raises(DataError) as e:
        load_mimic(root, ["Edema"])
    meta = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    assert str(e.value) == (f"{meta}, line {len(images) + 2}, column 'dicom_id': {images[1][0]!r} is listed "
                            f"again (first at {meta}, line 3)")
    labels = _label_rows()
    root = write_mimic(tmp_path / "b", pngs, labels=labels + [labels[0]])
    with pytest.raises(DataError) as e:
        load_mimic(root, ["Edema"])
    assert str(e.value) == (f"{root / 'mimic-cxr-2.0.0-chexpert.csv.gz'}, line {len(labels) + 2}, column "
                            f"'study_id': study '50414267' of subject '10000032' is labelled again (first at line 2)")


def test_split_file_disagreeing_with_the_metadata_is_named(tmp_path, pngs):
    images = _images()
    split = [[d, t, s, p] for d, s, t, p, _ in images]
    wrong = [list(r) for r in split]
    wrong[3][1] = "50000001"  # study_id of line 5
    root = write_mimic(tmp_path / "a", pngs, split_rows=wrong)
    with pytest.raises(DataError) as e:
        load_mimic(root, ["Edema"])
    assert str(e.value) == (f"{root / 'mimic-cxr-2.0.0-split.csv.gz'}, line 5, column 'study_id': 50000001 for "
                            f"image {images[3][0]!r}, but {root / 'mimic-cxr-2.0.0-metadata.csv.gz'} line 5 says "
                            f"{images[3][2]} (1 such image(s))")
    root = write_mimic(tmp_path / "b", pngs, split_rows=split[:2] + split[3:])
    with pytest.raises(DataError) as e:
        load_mimic(root, ["Edema"])
    assert str(e.value) == (f"{root / 'mimic-cxr-2.0.0-metadata.csv.gz'}, line 4, column 'dicom_id': image "
                            f"{images[2][0]!r} is not in {root / 'mimic-cxr-2.0.0-split.csv.gz'} (1 image(s) "
                            f"missing there)")
    bad = [list(r) for r in split]
    bad[6][3] = "valid"
    root = write_mimic(tmp_path / "c", pngs, split_rows=bad)
    with pytest.raises(DataError) as e:
        load_mimic(root, ["Edema"])
    assert str(e.value) == (f"{root / 'mimic-cxr-2.0.0-split.csv.gz'}, line 8, column 'split': 'valid' is not one "
                            f"of train, validate, test")
    straddle = [list(r) for r in split]
    straddle[2][3] = "test"  # one image of patient 10000032 moved to test
    root = write_mimic(tmp_path / "d", pngs, split_rows=straddle)
    with pytest.raises(DataError) as e:
        load_mimic(root, ["Edema"])
    assert str(e.value) == (f"{root / 'mimic-cxr-2.0.0-split.csv.gz'}, column 'split': 1 subject(s) have images "
                            f"in two splits: '10000032'; the official split must keep patients apart")


def test_a_bad_id_is_named(tmp_path, pngs):
    images = [list(i) for i in _images()]
    images[2][1] = "p10000032"
    root = write_mimic(tmp_path, pngs, images=[tuple(i) for i in images])
    with pytest.raises(DataError) as e:
        load_mimic(root, ["Edema"])
    assert str(e.value) == (f"{root / 'mimic-cxr-2.0.0-metadata.csv.gz'}, line 4, column 'subject_id': "
                            f"'p10000032' is not a numeric id (e.g. 10000032)")


# ---- detect and the label map ---------------------------------------------------------------------------
def test_detect_mimic_and_not_other_layouts(mimic_root, tmp_path):
    assert detect(mimic_root)
    for name in ("chexpert", "metadata", "split"):
        assert detect(mimic_root / f"mimic-cxr-2.0.0-{name}.csv.gz")
    nih = tmp_path / "nih"
    nih.mkdir()
    with gzip.open(nih / "Data_Entry_2017_v2020.csv.gz", "wt") as f:
        f.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
                "00000001_000.png,Cardiomegaly,0,1,58,M,PA\n")
    plain = tmp_path / "plain.csv"
    plain.write_text("path,subject_id,study_id,Edema\nimg/a.png,1,2,1\n")
    chexpert = tmp_path / "chexpert"
    chexpert.mkdir()
    (chexpert / "train.csv").write_text("Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(OBSERVATIONS) + "\n")
    for other in (nih, nih / "Data_Entry_2017_v2020.csv.gz", plain, chexpert, chexpert / "train.csv",
                  tmp_path / "absent"):
        assert not detect(other), other


def test_every_documented_observation_is_mapped():
    documented = LABEL_HEADER[2:]  # the publisher's label columns (CheXpert and NegBio files alike)
    assert sorted(documented) == sorted(OBSERVATIONS)
    assert set(DATASET_LABELS["mimic"]) == set(documented)
