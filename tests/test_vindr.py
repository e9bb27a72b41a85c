"""VinDr-CXR: the PhysioNet 1.0.0 label files, combining three radiologists, real DICOMs, and each bad input."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from can_tf.data import vindr
from can_tf.data.errors import DataError
from can_tf.data.label_space import DATASET_LABELS
from can_tf.data.table import BASE_COLUMNS
from can_tf.data.vindr import FINDINGS, detect, load_vindr

CLASSES = ["Effusion", "Nodule or Mass", "Mass", "Fracture", "No Finding", "Hernia"]
# The publisher's 28 image-level labels (PhysioNet VinDr-CXR 1.0.0 and Nguyen et al. 2022, table 2).
DOCUMENTED = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis",
    "Other diseases", "No finding",
]


def _row(image, rad=None, **positive):
    values = [str(positive.get(f, 0)) for f in DOCUMENTED]
    return [image] + ([rad] if rad else []) + values


def write(path, rows, readers=True, columns=None):
    header = columns or (["image_id"] + (["rad_id"] if readers else []) + DOCUMENTED)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


EFF, NOD, RIB, CLAV, NO = "Pleural effusion", "Nodule/Mass", "Rib fracture", "Clavicle fracture", "No finding"
TRAIN = [
    _row("t1", "R1", **{EFF: 1}), _row("t1", "R2", **{EFF: 1}), _row("t1", "R3", **{NO: 1}),
    _row("t2", "R4", **{NOD: 1, RIB: 1}), _row("t2", "R5", **{NO: 1}), _row("t2", "R6", **{NO: 1}),
    _row("t3", "R1", **{CLAV: 1}), _row("t3", "R2", **{CLAV: 1}), _row("t3", "R3", **{CLAV: 1}),
    _row("t4", "R7", **{EFF: 1}), _row("t4", "R8", **{NO: 1}),  # two readers: a tie
    _row("t5", "R9", **{NO: 1}), _row("t5", "R10", **{NO: 1}), _row("t5", "R11", **{NO: 1}),
]
TEST = [_row("s1", **{EFF: 1, NOD: 1}), _row("s2", **{NO: 1}), _row("s3", **{RIB: 1})]


def _dicom(path, sex="F", age="058Y"):
    from dicom_support import new_dicom

    ds = new_dicom(8, 8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 64).astype("<u2").tobytes()
    ds.PatientSex, ds.PatientAge = sex, age
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def vindr_dir(tmp_path, chestxray14_dir):
    """annotations/ with both label files; train/ and test/ with two real DICOMs, the rest NIH PNGs behind
    .dicom names; s3 has no image."""
    pytest.importorskip("pydicom")
    root = tmp_path / "vindr-cxr" / "1.0.0"
    write(root / "annotations" / "image_labels_train.csv", TRAIN)
    write(root / "annotations" / "image_labels_test.csv", TEST, readers=False)
    nih = iter(sorted((chestxray14_dir / "images").iterdir()))
    (root / "train").mkdir()
    (root / "test").mkdir()
    _dicom(root / "train" / "t1.dicom")
    _dicom(root / "test" / "s1.dicom", sex="M", age="041Y")
    for name in ("t2", "t3", "t4", "t5"):
        os.symlink(next(nih), root / "train" / f"{name}.dicom")
    os.symlink(next(nih), root / "test" / "s2.dicom")
    return root


def _labels(df):
    return {name: df.loc[df["image_index"] == name, CLASSES].to_numpy(np.float64)[0].tolist()
            for name in df["image_index"]}


def test_majority_rule_split_patients_and_images(vindr_dir, caplog):
    with caplog.at_level(logging.WARNING):
        df = load_vindr(vindr_dir, CLASSES)
    assert list(df.columns) == [*BASE_COLUMNS, *CLASSES, "official_split"]
    nan = np.nan
    got = _labels(df)
    expected = {  # Effusion, Nodule or Mass, Mass, Fracture, No Finding, Hernia
        "t1": [1, 0, 0, 0, 0, nan],  # 2 of 3 say effusion; Mass negative because Nodule/Mass is
        "t2": [0, 0, 0, 0, 1, nan],  # 1 of 3 nodule/rib fracture: not a majority
        "t3": [0, 0, 0, 1, 0, nan],  # clavicle fracture -> Fracture
        "t4": [nan, 0, 0, 0, nan, nan],  # 1 of 2: a tie is unknown
        "t5": [0, 0, 0, 0, 1, nan],
        "s1": [1, 1, nan, 0, 0, nan],  # Nodule/Mass positive: Mass itself unknown
        "s2": [0, 0, 0, 0, 1, nan],
    }
    assert got.keys() == expected.keys()
    for name, labels in expected.items():
        np.testing.assert_array_equal(got[name], labels, name)
    by = df.set_index("image_index")
    assert (by["patient_id"] == by.index).all() and (by["view"] == "PA").all()
    assert by["official_split"].to_dict() == {"t1": "train", "t2": "train", "t3": "train", "t4": "train",
                                              "t5": "train", "s1": "test", "s2": "test"}
    assert by.loc["t1", "path"] == str(vindr_dir / "train" / "t1.dicom")
    assert (by["sex"] == "").all() and by["age"].isna().all()  # not read by default
    assert df.attrs["missing_images"] == 1 and "1 of the 8 images" in caplog.text  # s3
    assert df.attrs["images_without_3_readers"] == 1 and "1 training image(s) have other than 3" in caplog.text
    assert df.attrs["format"] == "vindr" and df.attrs["data_root"] == str(vindr_dir)

    from can_tf.images import load_image

    for name in ("t1", "s1", "t2"):  # real DICOMs and a PNG behind a .dicom name, through the image door
        assert load_image(by.loc[name, "path"], 8).pixels.shape == (8, 8, 1)


def test_any_and_all_rules_headers_and_one_file(vindr_dir):
    nan = np.nan
    anyone = _labels(load_vindr(vindr_dir, CLASSES, readers="any"))
    np.testing.assert_array_equal(anyone["t2"], [0, 1, nan, 1, 1, nan])  # one reader suffices
    np.testing.assert_array_equal(anyone["t4"], [1, 0, 0, 0, 1, nan])
    everyone = _labels(load_vindr(vindr_dir, CLASSES, readers="all"))
    np.testing.assert_array_equal(everyone["t1"], [0, 0, 0, 0, 0, nan])  # 2 of 3 is not all
    np.testing.assert_array_equal(everyone["t3"], [0, 0, 0, 1, 0, nan])

    df = load_vindr(vindr_dir / "annotations" / "image_labels_test.csv", CLASSES, read_headers=True)
    by = df.set_index("image_index")
    assert sorted(by.index) == ["s1", "s2"] and set(by["official_split"]) == {"test"}
    assert by.loc["s1", "sex"] == "M" and by.loc["s1", "age"] == 41.0  # from the DICOM header
    assert by.loc["s2", "sex"] == "" and np.isnan(by.loc["s2", "age"])  # a PNG has no header
    assert df.attrs["data_root"] == str(vindr_dir)


def test_detect(vindr_dir, tmp_path):
    assert detect(vindr_dir) and detect(vindr_dir / "annotations")
    assert detect(vindr_dir / "annotations" / "image_labels_train.csv")
    pcxr = write(tmp_path / "pcxr" / "image_labels_train.csv", [["p1", "R1", "1", "0"]],
                 columns=["image_id", "rad_id", "Bronchitis", "No finding"])  # VinDr-PCXR: same name, other findings
    assert not detect(pcxr) and not detect(pcxr.parent)
    nih = tmp_path / "Data_Entry_2017_v2020.csv"
    nih.write_text("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
                   "00000001_000.png,Cardiomegaly,0,1,58,M,PA\n")
    plain = tmp_path / "labels.csv"
    plain.write_text("path,Atelectasis\nimg/a.png,1\n")
    assert not detect(nih) and not detect(plain) and not detect(tmp_path)


def test_every_documented_finding_is_mapped_or_listed_unmapped():
    assert list(FINDINGS) == DOCUMENTED
    mapping = DATASET_LABELS["vindr"]
    assert set(mapping) <= set(DOCUMENTED)
    assert sorted(set(mapping) | set(vindr.UNMAPPED)) == sorted(DOCUMENTED)
    assert mapping["Rib fracture"] == mapping["Clavicle fracture"] == "Fracture"
    assert mapping["Nodule/Mass"] == "Nodule or Mass" and mapping["No finding"] == "No Finding"


def test_bad_inputs_are_named(tmp_path):
    root = tmp_path / "v"
    train = root / "annotations" / "image_labels_train.csv"
    rows = [r[:] for r in TRAIN]
    rows[3][2 + DOCUMENTED.index(EFF)] = "2"
    write(train, rows)
    with pytest.raises(DataError) as e:
        load_vindr(root, CLASSES)
    assert str(e.value) == f"{train}, line 5, column 'Pleural effusion': '2' is not one of 1 or 0"

    write(train, TRAIN + [TRAIN[1]])
    with pytest.raises(DataError) as e:
        load_vindr(root, CLASSES)
    assert str(e.value) == (f"{train}, line 3, line 16: the same image and radiologist (image_id, rad_id) "
                            f"t1, R2 is on more than one row (1 repeated)")

    write(train, TRAIN, columns=["image_id", "rad_id"] + DOCUMENTED[:-1] + ["Lung nodule"])
    with pytest.raises(DataError, match=r"column\(s\) 'Lung nodule' are not VinDr-CXR findings"):
        load_vindr(train, CLASSES)

    write(train, [r[:1] + r[2:] for r in TRAIN], readers=False)
    with pytest.raises(DataError, match=r"image_labels_train.csv lacks column\(s\) 'rad_id'; its columns are"):
        load_vindr(train, CLASSES)

    write(train, TRAIN)
    test = write(root / "annotations" / "image_labels_test.csv", TEST + [_row("t3")], readers=False)
    with pytest.raises(DataError) as e:
        load_vindr(root, CLASSES)
    assert str(e.value) == (f"{test}, line 5, column 'image_id': t3 is also in {train} (line 8); an image "
                            f"belongs to one split (1 image(s) in both)")

    with pytest.raises(DataError, match=r"^VinDr-CXR option readers='two': expected one of majority, any, all$"):
        load_vindr(root, CLASSES, readers="two")
    with pytest.raises(DataError, match=r"^no VinDr-CXR label file in "):
        load_vindr(tmp_path, CLASSES)
    write(test, TEST, readers=False)
    with pytest.raises(DataError, match=r"^none of the 8 images listed in"):
        load_vindr(root, CLASSES)  # no image on disk
