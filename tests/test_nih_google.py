"""The NIH-Google four-findings reader on label files in the published layout over real NIH images."""

from __future__ import annotations

import gzip
import itertools
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest

from can_tf.data.errors import DataError
from can_tf.data.label_space import DATASET_LABELS
from can_tf.data.nih_google import FINDINGS, detect, find_label_files, load_nih_google

# The header of test_labels.csv / validation_labels.csv as Google publishes them: NIH's metadata
# columns (the bracketed names contain unquoted commas, so pandas reads them as 4 columns), then the
# four adjudicated findings.
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
          "Fracture,Pneumothorax,Airspace opacity,Nodule or mass")
PREFIX = "four_findings_expert_labels_"
MISSING = {"test": ["00099991_000.png", "00099992_001.png"], "val": ["00099993_000.png", "00099994_002.png"]}
CLASSES = ["Fracture", "Pneumothorax", "Airspace Opacity", "Nodule or Mass", "Mass", "Nodule", "Cardiomegaly"]
VALUE = {"YES": 1.0, "NO": 0.0, "": math.nan}


def _rows(names, split):
    """Fixture rows: (image, patient, age, sex, view, [four label cells]), varied deterministically."""
    cycle = itertools.cycle(["NO", "YES", "NO", "NO", "YES"])
    rows = []
    for i, name in enumerate(names):
        labels = [next(cycle) for _ in FINDINGS]
        if i == 3:
            labels[1] = ""  # not adjudicated for pneumothorax: unknown
        rows.append({
            "name": name, "patient": str(int(name.split("_")[0])), "age": str(20 + 3 * i),
            "sex": "MF"[i % 2], "view": ("PA", "AP")[(i // 2) % 2], "labels": labels, "split": split,
        })
    return rows


def _line(row, patient=None):
    p = row["patient"] if patient is None else patient
    return (f"{row['name']},No Finding,0,{p},{row['age']},{row['sex']},{row['view']},2500,2048,0.143,0.143,"
            + ",".join(row["labels"]))


def _write(path: Path, rows, header: str = HEADER, line=_line):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *(line(r) for r in rows)]) + "\n")
    return path


@pytest.fixture(scope="module")
def real_names(chestxray14_dir):
    names = sorted(p.name for p in (chestxray14_dir / "images").glob("*.png"))
    assert len(names) >= 30
    return {"test": names[:18], "val": names[18:30]}


@pytest.fixture(scope="module")
def fixture_rows(real_names):
    return {split: _rows(real_names[split] + MISSING[split], split) for split in ("test", "val")}


@pytest.fixture
def box_dir(tmp_path, chestxray14_dir, real_names, fixture_rows):
    """The NIH box layout: prefixed files in one folder, the images (symlinks to real NIH PNGs) below it."""
    images = tmp_path / "images_001" / "images"
    images.mkdir(parents=True)
    for name in real_names["test"] + real_names["val"]:
        os.symlink(chestxray14_dir / "images" / name, images / name)
    _write(tmp_path / f"{PREFIX}test_labels.csv", fixture_rows["test"])
    _write(tmp_path / f"{PREFIX}validation_labels.csv", fixture_rows["val"])
    (tmp_path / f"{PREFIX}individual_readers.csv").write_text(
        "Image ID,Reader ID,Patient ID,Fracture,Pneumothorax,Airspace opacity,Nodule/mass\n"
        f"{real_names['test'][0]},4343882785,75,NO,HEDGE,NO,NO\n")
    return tmp_path


def _check_rows(df, rows, classes=CLASSES):
    """Row by row against the fixture: labels, composites, patients, view, sex, age, split, path."""
    expected = {r["name"]: r for r in rows}
    assert set(df["image_index"]) == {n for n in expected if not n.startswith("0009999")}
    for _, got in df.iterrows():
        row = expected[got["image_index"]]
        fracture, pneumothorax, opacity, nodule_or_mass = (VALUE[v] for v in row["labels"])
        want = {"Fracture": fracture, "Pneumothorax": pneumothorax, "Airspace Opacity": opacity,
                "Nodule or Mass": nodule_or_mass,
                # NO says neither a mass nor a nodule; YES does not say which: unknown
                "Mass": 0.0 if nodule_or_mass == 0 else math.nan,
                "Nodule": 0.0 if nodule_or_mass == 0 else math.nan,
                "Cardiomegaly": math.nan}
        for name in classes:
            assert got[name] == want[name] or (math.isnan(got[name]) and math.isnan(want[name])), \
                (got["image_index"], name, got[name], want[name])
        assert got["patient_id"] == row["patient"]
        assert got["view"] == row["view"] and got["sex"] == row["sex"] and got["age"] == float(row["age"])
        assert got["official_split"] == row["split"]
        assert os.path.isabs(got["path"]) and Path(got["path"]).name == got["image_index"]
        assert Path(got["path"]).is_file()


def test_loads_box_folder_row_by_row(box_dir, fixture_rows, caplog):
    with caplog.at_level(logging.WARNING):
        df = load_nih_google(box_dir, CLASSES)
    assert list(df.columns) == ["image_index", "path", "patient_id", "view", "age", "sex", *CLASSES,
                                "official_split"]
    assert all(df[c].dtype == np.float32 for c in CLASSES)
    _check_rows(df, fixture_rows["test"] + fixture_rows["val"])
    assert (df["official_split"] == "test").sum() == 18 and (df["official_split"] == "val").sum() == 12
    assert set(df["official_split"]) == {"test", "val"}  # no training rows: an evaluation set
    assert df.attrs["missing_images"] == 4
    assert df.attrs["format"] == "nih-google" and df.attrs["data_root"] == str(box_dir)
    assert df.attrs["class_names"] == CLASSES
    assert "4 of the 34 images" in caplog.text
    assert df["Pneumothorax"].isna().sum() == 2  # the two blank cells (row 4 of each file)


def test_google_subfolder_layout_and_one_file(tmp_path, chestxray14_dir, fixture_rows):
    labels = tmp_path / "four_findings_expert_labels"
    _write(labels / "test_labels.csv", fixture_rows["test"])
    _write(labels / "validation_labels.csv", fixture_rows["val"])
    (labels / "individual_readers.csv").write_text("Image ID,Reader ID\n")
    images = chestxray14_dir / "images"
    for source in (tmp_path, labels):
        df = load_nih_google(source, CLASSES, image_root=images)
        _check_rows(df, fixture_rows["test"] + fixture_rows["val"])
        assert df.attrs["image_root"] == str(images)
    one = load_nih_google(labels / "validation_labels.csv", CLASSES, image_root=images)
    _check_rows(one, fixture_rows["val"])
    assert set(one["official_split"]) == {"val"} and one.attrs["missing_images"] == 2


def test_gzipped_file_and_keep_missing(tmp_path, chestxray14_dir, fixture_rows):
    text = "\n".join([HEADER, *(_line(r) for r in fixture_rows["test"])]) + "\n"
    path = tmp_path / f"{PREFIX}test_labels.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(text)
    df = load_nih_google(path, ["Pneumothorax"], image_root=chestxray14_dir / "images", keep_missing=True)
    assert len(df) == 20 and (df["path"] == "").sum() == 2 and df.attrs["missing_images"] == 2


def test_default_classes_are_nih_with_mass_and_nodule_derived(box_dir):
    from can_tf.labels import CLASS_NAMES

    df = load_nih_google(box_dir)
    assert df.attrs["class_names"] == list(CLASS_NAMES)
    assert df["Cardiomegaly"].isna().all() and df["Pneumothorax"].notna().sum() == len(df) - 2
    assert set(np.unique(df["Mass"].dropna())) == {0.0}


def test_patients_from_image_names_without_patient_column(tmp_path, chestxray14_dir, fixture_rows):
    header = "Image Index,Fracture,Pneumothorax,Airspace opacity,Nodule or mass"
    rows = fixture_rows["test"]
    path = _write(tmp_path / "test_labels.csv", rows, header,
                  line=lambda r: ",".join([r["name"], *r["labels"]]))
    df = load_nih_google(path, ["Fracture"], image_root=chestxray14_dir / "images")
    for _, got in df.iterrows():
        # 00000075_000.png -> 75: NIH's own spelling of the patient, as in its Patient ID column
        assert got["patient_id"] == str(int(got["image_index"].split("_")[0]))
    assert (df["view"] == "").all() and (df["sex"] == "").all() and df["age"].isna().all()
    blank = _write(tmp_path / "validation_labels.csv", fixture_rows["val"],
                   line=lambda r: _line(r, patient="" if r is fixture_rows["val"][0] else None))
    got = load_nih_google(blank, ["Fracture"], image_root=chestxray14_dir / "images")
    assert got["patient_id"].tolist() == [r["patient"] for r in fixture_rows["val"][:12]]


# ---- bad input ----------------------------------------------------------------------------------
def _bad_copy(box_dir, split, edit):
    name = f"{PREFIX}{'test' if split == 'test' else 'validation'}_labels.csv"
    path = box_dir / name
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_value_outside_yes_no_names_file_line_column(box_dir):
    path = _bad_copy(box_dir, "val", lambda lines: lines.__setitem__(5, lines[5].rsplit(",", 2)[0] + ",maybe,NO"))
    with pytest.raises(DataError) as e:
        load_nih_google(box_dir, CLASSES)
    assert str(e.value) == f"{path}, line 6, column 'Airspace opacity': 'maybe' is not one of YES, NO or blank"


def test_hedge_is_explained(box_dir):
    path = _bad_copy(box_dir, "test", lambda lines: lines.__setitem__(2, lines[2].rsplit(",", 1)[0] + ",HEDGE"))
    with pytest.raises(DataError) as e:
        load_nih_google(path, CLASSES)
    assert str(e.value) == (f"{path}, line 3, column 'Nodule or mass': 'HEDGE' is not one of YES, NO or blank "
                            f"(HEDGE is a single reader's answer, in individual_readers.csv only)")


def test_missing_columns_are_named(tmp_path):
    path = _write(tmp_path / f"{PREFIX}test_labels.csv", [],
                  header="Image Index,Patient ID,Fracture,Pneumothorax,Airspace Opacity,Nodule/Mass")
    with pytest.raises(DataError) as e:
        load_nih_google(path, CLASSES)
    assert str(e.value) == (
        f"NIH-Google label file {path} lacks column(s) 'Airspace opacity', 'Nodule or mass' (needs 'Image Index', "
        f"'Fracture', 'Pneumothorax', 'Airspace opacity', 'Nodule or mass'); its columns are 'Image Index', "
        f"'Patient ID', 'Fracture', 'Pneumothorax', 'Airspace Opacity', 'Nodule/Mass'")


def test_duplicate_and_blank_images(box_dir, real_names):
    path = _bad_copy(box_dir, "test", lambda lines: lines.append(lines[4]))
    with pytest.raises(DataError) as e:
        load_nih_google(box_dir, CLASSES)
    assert str(e.value) == (f"{path}, column 'Image Index': {real_names['test'][3]} is listed on line 5, "
                            f"line 22; each image is listed once (1 image(s) repeated)")
    path = _bad_copy(box_dir, "test", lambda lines: lines.__setitem__(21, "," + lines[21].split(",", 1)[1]))
    with pytest.raises(DataError) as e:
        load_nih_google(path, CLASSES)
    assert str(e.value) == f"{path}, line 22, column 'Image Index': blank (every row names its image)"


def test_image_in_both_splits(box_dir, real_names, fixture_rows):
    val = box_dir / f"{PREFIX}validation_labels.csv"
    _write(val, fixture_rows["val"] + [dict(fixture_rows["test"][2], split="val")])
    with pytest.raises(DataError) as e:
        load_nih_google(box_dir, CLASSES)
    assert str(e.value) == (f"{val}, line 16, column 'Image Index': {real_names['test'][2]} is also in "
                            f"{box_dir / (PREFIX + 'test_labels.csv')} (line 4); an image belongs to one split "
                            f"(1 image(s) in both)")


def test_patient_in_both_splits(box_dir, fixture_rows):
    test = box_dir / f"{PREFIX}test_labels.csv"
    val = box_dir / f"{PREFIX}validation_labels.csv"
    moved = dict(fixture_rows["test"][0], name=fixture_rows["test"][0]["name"].replace("_000", "_007"))
    _write(val, fixture_rows["val"] + [moved])
    with pytest.raises(DataError) as e:
        load_nih_google(box_dir, CLASSES)
    pid = moved["patient"]
    assert str(e.value) == (
        f"patient(s) '{pid}' have images in both {test} (test) and {val} (val), e.g. patient '{pid}': "
        f"{fixture_rows['test'][0]['name']} at line 2 and {moved['name']} at line 16, column 'Patient ID'; "
        f"the publisher's split is by patient")


def test_readers_file_other_names_and_empty_folders(box_dir, tmp_path_factory):
    readers = box_dir / f"{PREFIX}individual_readers.csv"
    with pytest.raises(DataError, match=r"individual readers' file .* can-tf does not read"):
        load_nih_google(readers, CLASSES)
    other = box_dir / "labels.csv"
    other.write_text(HEADER + "\n")
    with pytest.raises(DataError, match=r"cannot tell from its name whether .*labels.csv is the NIH-Google test"):
        load_nih_google(other, CLASSES)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match=r"no NIH-Google four-findings label file in .*four_findings_expert_lab"):
        load_nih_google(empty, CLASSES)
    with pytest.raises(DataError, match="does not exist"):
        load_nih_google(empty / "nothing", CLASSES)
    header_only = _write(empty / "test_labels.csv", [])
    with pytest.raises(DataError, match="has a header but no rows"):
        load_nih_google(header_only, CLASSES)
    with pytest.raises(DataError, match="unknown class 'Airspace Opacityy'"):
        load_nih_google(box_dir, ["Airspace Opacityy"])


def test_no_image_found_names_files_and_folder(box_dir, tmp_path_factory):
    nowhere = tmp_path_factory.mktemp("no_images")
    with pytest.raises(DataError, match=r"none of the 34 images listed in .*test_labels.csv and "
                                        r".*validation_labels.csv were found in "):
        load_nih_google(box_dir, CLASSES, image_root=nowhere)


# ---- detection ----------------------------------------------------------------------------------
def test_detect(box_dir, tmp_path_factory, chestxray14_dir, fixture_rows):
    assert detect(box_dir)
    for name in ("test_labels", "validation_labels", "individual_readers"):
        assert detect(box_dir / f"{PREFIX}{name}.csv")
    google = tmp_path_factory.mktemp("google")
    _write(google / "four_findings_expert_labels" / "test_labels.csv", fixture_rows["test"])
    assert detect(google) and detect(google / "four_findings_expert_labels")
    assert detect(google / "four_findings_expert_labels" / "test_labels.csv")
    assert set(find_label_files(google)) == {"test"}

    other = tmp_path_factory.mktemp("other")
    # all_findings_expert_labels/test_labels.csv: same name, other columns
    allf = _write(other / "test_labels.csv", [], header="Image ID,Patient ID,Abnormal,Pneumothorax,Nodule,Mass")
    assert not detect(allf) and not detect(other)
    nih = other / "Data_Entry_2017_v2020.csv"
    nih.write_text("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
                   "00000001_000.png,Cardiomegaly,0,1,58,M,PA\n")
    plain = other / "labels.csv"
    plain.write_text("path,Pneumothorax\nimg/a.png,1\n")
    assert not detect(nih) and not detect(plain) and not detect(chestxray14_dir)
    # An NIH folder that also holds the Google files reads as ChestX-ray14 unless data.format says otherwise.
    _write(other / f"{PREFIX}test_labels.csv", fixture_rows["test"])
    assert not detect(other)
    assert detect(other / f"{PREFIX}test_labels.csv")


def test_every_published_finding_is_mapped():
    # The four adjudicated columns of test_labels.csv / validation_labels.csv, as spelt in their header.
    published = ["Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]
    assert list(FINDINGS) == published
    assert set(DATASET_LABELS["nih-google"]) == set(published)
    assert DATASET_LABELS["nih-google"]["Airspace opacity"] == "Airspace Opacity"
    assert DATASET_LABELS["nih-google"]["Nodule or mass"] == "Nodule or Mass"
