"""PadChest: the publisher's label file (plain and gzipped), label lists onto can-tf classes, and each bad input."""

from __future__ import annotations

import csv
import gzip
import logging
import os

import numpy as np
import pytest

from can_tf.data import padchest
from can_tf.data.errors import DataError
from can_tf.data.label_space import DATASET_LABELS
from can_tf.data.padchest import detect, load_padchest
from can_tf.data.table import BASE_COLUMNS

LABEL_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
# The publisher's columns, in order (the label file's header).
COLUMNS = ["", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
           "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM",
           "Manufacturer_DICOM", "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM",
           "PixelAspectRatio_DICOM", "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM",
           "WindowWidth_DICOM", "Rows_DICOM", "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM",
           "ExposureInuAs_DICOM", "ExposureTime", "RelativeXRayExposure_DICOM", "ReportID", "Report",
           "MethodLabel", "Labels", "Localizations", "LabelsLocalizationsBySentence", "labelCUIS",
           "LocalizationsCUIS"]
CLASSES = ["Atelectasis", "Effusion", "Pneumothorax", "Nodule", "Emphysema", "Fracture", "No Finding",
           "Support Devices"]
# PadChest's label vocabulary as used in its label lists (findings, diagnoses, devices; the spelling of
# the 'Labels' column): every mapped key must be one of these.
VOCABULARY = {
    "normal", "pulmonary fibrosis", "chronic changes", "kyphosis", "pseudonodule", "ground glass pattern",
    "unchanged", "alveolar pattern", "interstitial pattern", "laminar atelectasis", "pleural effusion",
    "apical pleural thickening", "suture material", "sternotomy", "endotracheal tube", "infiltrates",
    "heart insufficiency", "hemidiaphragm elevation", "superior mediastinal enlargement", "aortic elongation",
    "scoliosis", "sclerotic bone lesion", "supra aortic elongation", "vertebral degenerative changes", "goiter",
    "copd signs", "air trapping", "descendent aortic elongation", "aortic atheromatosis", "metal",
    "hypoexpansion basal", "abnormal foreign body", "central venous catheter via subclavian vein",
    "central venous catheter", "vascular hilar enlargement", "pacemaker", "atelectasis",
    "vertebral anterior compression", "hiatal hernia", "pneumonia", "diaphragmatic eventration", "consolidation",
    "calcified densities", "cardiomegaly", "fibrotic band", "tuberculosis sequelae", "volume loss",
    "bronchiectasis", "single chamber device", "emphysema", "vertebral compression", "bronchovascular markings",
    "bullas", "hilar congestion", "exclude", "axial hyperostosis", "aortic button enlargement",
    "calcified granuloma", "clavicle fracture", "pulmonary mass", "dual chamber device", "increased density",
    "surgery neck", "osteosynthesis material", "costochondral junction hypertrophy", "segmental atelectasis",
    "costophrenic angle blunting", "calcified pleural thickening", "hyperinflated lung", "callus rib fracture",
    "pleural thickening", "mediastinal mass", "nipple shadow", "surgery heart", "pulmonary artery hypertension",
    "central vascular redistribution", "tuberculosis", "nodule", "cavitation", "granuloma", "osteopenia",
    "lobar atelectasis", "surgery breast", "nsg tube", "hilar enlargement", "gynecomastia", "atypical pneumonia",
    "cervical rib", "mediastinal enlargement", "major fissure thickening", "surgery", "azygos lobe", "adenopathy",
    "miliary opacities", "suboptimal study", "dai", "mediastinic lipomatosis", "surgery lung", "mammary prosthesis",
    "humeral fracture", "calcified adenopathy", "reservoir central venous catheter", "vascular redistribution",
    "hypoexpansion", "heart valve calcified", "pleural mass", "loculated pleural effusion", "pectum carinatum",
    "subacromial space narrowing", "central venous catheter via jugular vein", "vertebral fracture",
    "osteoporosis", "bone metastasis", "lung metastasis", "cyst", "humeral prosthesis", "artificial heart valve",
    "mastectomy", "pericardial effusion", "lytic bone lesion", "subcutaneous emphysema", "pulmonary edema",
    "flattened diaphragm", "asbestosis signs", "multiple nodules", "prosthesis", "pulmonary hypertension",
    "soft tissue mass", "tracheostomy tube", "endoprosthesis", "post radiotherapy changes", "air bronchogram",
    "pectum excavatum", "calcified mediastinal adenopathy", "central venous catheter via umbilical vein",
    "thoracic cage deformation", "obesity", "tracheal shift", "external foreign body", "atelectasis basal",
    "aortic endoprosthesis", "rib fracture", "calcified fibroadenoma", "pneumothorax",
    "reticulonodular interstitial pattern", "reticular interstitial pattern", "chest drain tube",
    "minor fissure thickening", "fissure thickening", "hydropneumothorax", "breast mass", "blastic bone lesion",
    "respiratory distress", "azygoesophageal recess shift", "ascendent aortic elongation", "lung vascular paucity",
    "kerley lines", "electrical device", "artificial mitral heart valve", "artificial aortic heart valve",
    "total atelectasis", "non axial articular degenerative changes", "pleural plaques", "calcified pleural plaques",
    "lymphangitis carcinomatosa", "lepidic adenocarcinoma", "mediastinal shift", "ventriculoperitoneal drain tube",
    "esophagic dilatation", "dextrocardia", "end on vessel", "right sided aortic arch", "chilaiditi sign",
    "aortic aneurysm", "loculated fissural effusion", "fracture", "air fluid level", "round atelectasis", "mass",
    "double j stent", "pneumoperitoneo", "abscess", "pulmonary artery enlargement", "bone cement",
    "pneumomediastinum", "catheter", "surgery humeral", "empyema", "nephrostomy tube",
    "sternoclavicular junction hypertrophy", "pulmonary venous hypertension", "gastrostomy tube", "lipomatosis",
}
# Words of the mapped classes: a vocabulary label holding one is either mapped or a documented near miss.
CLASS_WORDS = ("atelectasis", "cardiomegaly", "effusion", "infiltrat", "mass", "nodul", "pneumonia", "pneumothorax",
               "consolidation", "edema", "emphysema", "fibrosis", "pleural thickening", "hernia", "fracture")

# (ImageID, ImageDir, StudyDate, PatientID, PatientBirth, Sex, Projection, MethodLabel, Labels)
ROWS = [
    ("a1.png", "0", "20120305", "P1", "1948.0", "M", "PA", "Physician", "['pleural effusion', 'cardiomegaly']"),
    ("a2.png", "0", "20120305", "P1", "1948.0", "M", "L", "Physician", "['pleural effusion', 'cardiomegaly']"),
    ("b1.png", "1", "20150110", "P2", "1990", "F", "AP_horizontal", "RNN_model", "['normal']"),
    ("c1.png", "1", "20101122", "P3", "", "O", "AP", "RNN_model", "[' lobar atelectasis', 'pseudonodule ']"),
    ("d1.png", "2", "20091201", "P4", "1930.0", "", "COSTAL", "Physician", ""),
    ("e1.png", "2", "20131010", "P5", "1960.0", "F", "PA", "RNN_model", "['unchanged', 'callus rib fracture']"),
    ("f1.png", "3", "20140707", "P6", "1955.0", "M", "PA", "Physician", "['hydropneumothorax', 'COPD signs']"),
    ("g1.png", "3", "20140707", "P7", "1980.0", "F", "PA", "RNN_model",
     "['subcutaneous emphysema', 'multiple nodules']"),
    ("h1.png", "4", "20160101", "P8", "1975.0", "M", "PA", "Physician", "['scoliosis', 'COPD signs']"),
    ("gone.png", "4", "20160101", "P9", "1975.0", "M", "PA", "Physician", "['normal']"),
    (sorted(padchest.KNOWN_BAD_IMAGES)[0], "5", "20160101", "P10", "1975.0", "M", "PA", "Physician", "['normal']"),
]


def write_label_file(path, rows=ROWS, columns=COLUMNS, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, (image, folder, date, patient, birth, sex, projection, method, labels) in enumerate(rows):
            values = {"": str(i), "ImageID": image, "ImageDir": folder, "StudyDate_DICOM": date, "StudyID": f"S{i}",
                      "PatientID": patient, "PatientBirth": birth, "PatientSex_DICOM": sex,
                      "ViewPosition_DICOM": "POSTEROANTERIOR", "Projection": projection,
                      "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No",
                      "Report": "cardiomegalia, derrame pleural.", "MethodLabel": method, "Labels": labels,
                      "Localizations": "[]", "LabelsLocalizationsBySentence": "[['normal']]"}
            writer.writerow([values.get(c, "") for c in columns])
    return path


@pytest.fixture
def padchest_dir(tmp_path, chestxray14_dir):
    """A PadChest folder: the label file and symlinks to real NIH PNGs at <root>/<ImageDir>/<ImageID>."""
    nih = sorted((chestxray14_dir / "images").iterdir())
    root = tmp_path / "PadChest"
    for (image, folder, *_), source in zip(ROWS, nih):
        if image == "gone.png":
            continue
        (root / folder).mkdir(parents=True, exist_ok=True)
        os.symlink(source, root / folder / image)
    write_label_file(root / LABEL_FILE)
    return root


def test_rows_labels_patients_views_age_and_sex(padchest_dir, caplog):
    with caplog.at_level(logging.WARNING):
        df = load_padchest(padchest_dir, CLASSES)
    assert list(df.columns) == [*BASE_COLUMNS, *CLASSES] and "official_split" not in df.columns
    assert all(df[c].dtype == np.float32 for c in CLASSES)
    assert df["path"].map(os.path.isfile).all()
    by = df.set_index("image_index")
    assert by.loc["a1.png", "path"] == str(padchest_dir / "0" / "a1.png")
    nan = np.nan
    expected = {  # Atelectasis, Effusion, Pneumothorax, Nodule, Emphysema, Fracture, No Finding, Support Devices
        "a1.png": [0, 1, 0, 0, 0, 0, 0, nan],
        "a2.png": [0, 1, 0, 0, 0, 0, 0, nan],
        "b1.png": [0, 0, 0, 0, 0, 0, 1, nan],
        "c1.png": [1, 0, 0, 0, 0, 0, 0, nan],  # stray spaces; a pseudonodule is not a nodule
        "d1.png": [nan] * 8,  # blank Labels: unknown
        "e1.png": [nan, nan, nan, nan, nan, 1, nan, nan],  # 'unchanged': only what it names is known
        "f1.png": [0, 1, 1, 0, 0, 0, 0, nan],  # hydropneumothorax: both
        "g1.png": [0, 0, 0, 1, 0, 0, 0, nan],  # subcutaneous emphysema is not emphysema
        "h1.png": [0, 0, 0, 0, 0, 0, 0, nan],  # only unmapped labels: all negative
    }
    assert sorted(by.index) == sorted(expected)
    for name, labels in expected.items():
        np.testing.assert_array_equal(by.loc[name, CLASSES].to_numpy(np.float64), np.array(labels, float), name)
    assert by.loc["a2.png", "patient_id"] == "P1" and by.loc["h1.png", "patient_id"] == "P8"
    assert by["view"].to_dict() == {"a1.png": "PA", "a2.png": "", "b1.png": "AP", "c1.png": "AP", "d1.png": "",
                                    "e1.png": "PA", "f1.png": "PA", "g1.png": "PA", "h1.png": "PA"}
    assert by.loc["a1.png", "age"] == 64 and by.loc["b1.png", "age"] == 25 and np.isnan(by.loc["c1.png", "age"])
    assert by["sex"].to_dict() == {"a1.png": "M", "a2.png": "M", "b1.png": "F", "c1.png": "", "d1.png": "",
                                   "e1.png": "F", "f1.png": "M", "g1.png": "F", "h1.png": "M"}
    assert df.attrs["missing_images"] == 1 and "1 of the 10 images" in caplog.text  # gone.png
    assert df.attrs["known_bad_images"] == 1
    assert df.attrs["unlabelled_images"] == 1
    assert df.attrs["unmapped_labels"] == {"COPD signs": 2, "pseudonodule": 1, "scoliosis": 1,
                                           "subcutaneous emphysema": 1, "unchanged": 1}
    assert df.attrs["format"] == "padchest" and df.attrs["data_root"] == str(padchest_dir)
    assert df.attrs["class_names"] == CLASSES


def test_gzipped_file_as_source_flat_image_root_and_physician_rows(padchest_dir, tmp_path):
    gz = write_label_file(tmp_path / (LABEL_FILE + ".gz"), gz=True)
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in ("a1.png", "f1.png", "h1.png", "b1.png"):
        folder = next(p for p in padchest_dir.iterdir() if (p / image).exists())
        os.symlink(folder / image, flat / image)
    df = load_padchest(gz, ["effusion", "pneumothorax"], image_root=flat, method="physician")
    assert df.attrs["class_names"] == ["Effusion", "Pneumothorax"]  # matched case-insensitively
    assert sorted(df["image_index"]) == ["a1.png", "f1.png", "h1.png"]  # b1 is RNN_model-labelled
    assert df.attrs["missing_images"] == 3 and df.attrs["method"] == "physician"  # a2, d1, gone.png
    assert df.attrs["unmapped_labels"] == {"COPD signs": 2, "scoliosis": 1}


def test_detect(padchest_dir, tmp_path):
    assert detect(padchest_dir) and detect(padchest_dir / LABEL_FILE)
    renamed = write_label_file(tmp_path / "padchest_labels.csv")
    assert detect(renamed)  # by its header
    nih = tmp_path / "Data_Entry_2017_v2020.csv"
    nih.write_text("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
                   "00000001_000.png,Cardiomegaly,0,1,58,M,PA\n")
    plain = tmp_path / "labels.csv"
    plain.write_text("path,Atelectasis\nimg/a.png,1\n")
    assert not detect(nih) and not detect(plain) and not detect(tmp_path / "empty_dir_missing")
    (tmp_path / "other").mkdir()
    assert not detect(tmp_path / "other")


def test_each_mapped_label_is_padchest_spelling_and_no_finding_word_slips_through():
    mapping = DATASET_LABELS["padchest"]
    assert set(mapping) <= VOCABULARY, sorted(set(mapping) - VOCABULARY)
    assert set(padchest.NEAR_MISSES) <= VOCABULARY and not set(padchest.NEAR_MISSES) & set(mapping)
    assert set(padchest.ALSO) <= set(mapping) and all(set(v) <= set(mapping) for v in padchest.ALSO.values())
    unaccounted = [label for label in sorted(VOCABULARY) if any(w in label for w in CLASS_WORDS)
                   and label not in mapping and label not in padchest.NEAR_MISSES]
    assert unaccounted == []
    assert {mapping[k] for k in ("pleural effusion", "normal", "pulmonary fibrosis", "hiatal hernia")} == \
        {"Effusion", "No Finding", "Fibrosis", "Hernia"}


def _bad(tmp_path, rows, columns=COLUMNS):
    root = tmp_path / "bad"
    root.mkdir(exist_ok=True)
    return write_label_file(root / LABEL_FILE, rows, columns)


def test_bad_inputs_are_named(tmp_path):
    row = ROWS[0]
    path = _bad(tmp_path, [row, ("z.png",) + row[1:8] + ("pleural effusion",)])
    with pytest.raises(DataError) as e:
        load_padchest(path, CLASSES)
    assert str(e.value) == (f"{path}, line 3, column 'Labels': 'pleural effusion' is not a list of label strings "
                            f"such as \"['pleural effusion', 'cardiomegaly']\" or \"['normal']\"")

    path = _bad(tmp_path, [row, ROWS[2], row])
    with pytest.raises(DataError) as e:
        load_padchest(path, CLASSES)
    assert str(e.value) == (f"{path}, column 'ImageID': a1.png is listed on line 2, line 4; each image is listed "
                            f"once (1 image(s) repeated)")

    path = _bad(tmp_path, [row, ("b1.png", "0", "20120305", "", *row[4:])])
    with pytest.raises(DataError) as e:
        load_padchest(path, CLASSES)
    assert str(e.value) == (f"{path}, line 3, column 'PatientID': blank (patient-wise splits need every "
                            f"image's patient)")

    path = _bad(tmp_path, [row], [c for c in COLUMNS if c not in ("Labels", "PatientID")])
    with pytest.raises(DataError, match=r"lacks column\(s\) 'PatientID', 'Labels'; its columns are"):
        load_padchest(path, CLASSES)
    path = _bad(tmp_path, [row], [c for c in COLUMNS if c != "MethodLabel"])
    with pytest.raises(DataError, match=r"lacks column\(s\) 'MethodLabel' \(method='physician' needs it\)"):
        load_padchest(path, CLASSES, method="physician")
    with pytest.raises(DataError, match=r"^PadChest option method='radiologist': expected one of all, physician$"):
        load_padchest(path, CLASSES, method="radiologist")
    with pytest.raises(DataError, match=r"^no PadChest label file in "):
        load_padchest(tmp_path / "bad" / "..", CLASSES)
    with pytest.raises(DataError, match=r"none of the 1 images listed in"):
        load_padchest(_bad(tmp_path, [row]), CLASSES)  # no image on disk


def test_full_size_file_loads(tmp_path):
    """A file of PadChest's full size (160k rows; its speed is measured by benchmarks, not here)."""
    n = 160_000
    labels = ["['normal']", "['pleural effusion', 'cardiomegaly']", "['COPD signs', ' nodule']", "['unchanged']"]
    rows = [(f"{i}.png", str(i % 55), "20120305", f"P{i // 3}", "1950.0", "MF"[i % 2], ("PA", "L", "AP")[i % 3],
             ("Physician", "RNN_model")[i % 2],
             labels[i % 4] if i % 7 else f"['nodule', 'mass', 'scoliosis {i % 999}']")
            for i in range(n)]
    path = _bad(tmp_path, rows, ["ImageID", "ImageDir", "StudyDate_DICOM", "PatientID", "PatientBirth",
                                 "PatientSex_DICOM", "Projection", "MethodLabel", "Labels", "Report"])
    df = load_padchest(path, CLASSES, keep_missing=True)
    assert len(df) == n
    assert df.loc[1, "Effusion"] == 1.0 and np.isnan(df.loc[3, "Effusion"]) and df.loc[4, "No Finding"] == 1.0
    assert df.loc[0, "Nodule"] == 1.0 and df.loc[0, "No Finding"] == 0.0  # i % 7 == 0: nodule, mass, ...
