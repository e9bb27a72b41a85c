"""Generic CSV mode: blank = unknown, path resolution, patients, and each bad value named."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from can_tf.config import DataConfig
from can_tf.data.csv_dataset import load_csv
from can_tf.data.errors import DataError
from can_tf.data.table import class_prevalence, load_table

CLASSES = ["Atelectasis", "Effusion"]


@pytest.fixture
def csv_set(tmp_path):
    """Four 8x8 PNGs under img/ and a writer for labels.csv beside them."""
    (tmp_path / "img").mkdir()
    for name in "abcd":
        Image.new("L", (8, 8), 100).save(tmp_path / "img" / f"{name}.png")

    def write(text: str, name: str = "labels.csv"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return tmp_path, write


def test_labels_blanks_and_relative_paths(csv_set):
    root, write = csv_set
    path = write(
        "path,patient,Atelectasis,Effusion,view,age,sex\n"
        "img/a.png,p1,1,0,PA,60,M\n"
        "img/b.png,p1,,1,ap,,f\n"
        f"{root / 'img' / 'c.png'},p2,0.0,1.0,,70,\n"
    )
    df = load_csv(path, CLASSES, patient_column="patient")
    assert df["image_index"].tolist() == ["img/a.png", "img/b.png", str(root / "img" / "c.png")]
    assert df["path"].tolist() == [str(root / "img" / n) for n in ("a.png", "b.png", "c.png")]
    assert df["patient_id"].tolist() == ["p1", "p1", "p2"]
    np.testing.assert_array_equal(df["Atelectasis"].to_numpy(), np.array([1, np.nan, 0], np.float32))
    np.testing.assert_array_equal(df["Effusion"].to_numpy(), np.array([0, 1, 1], np.float32))
    assert df["Atelectasis"].dtype == np.float32
    assert df["view"].tolist() == ["PA", "AP", ""] and df["sex"].tolist() == ["M", "F", ""]
    assert df["age"].iloc[0] == 60 and np.isnan(df["age"].iloc[1])


def test_without_patient_column_each_image_is_its_own_patient(csv_set):
    root, write = csv_set
    path = write("path,Atelectasis,Effusion\nimg/a.png,1,0\nimg/b.png,0,0\n")
    df = load_csv(path, CLASSES)
    assert df["patient_id"].tolist() == df["image_index"].tolist() == ["img/a.png", "img/b.png"]


def test_image_root_overrides_the_csv_folder(csv_set, tmp_path):
    root, write = csv_set
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write("file,Atelectasis,Effusion\na.png,1,0\n", name="elsewhere/labels.csv")
    df = load_csv(path, CLASSES, path_column="file", image_root=root / "img")
    assert df["path"].tolist() == [str(root / "img" / "a.png")]


@pytest.mark.parametrize("value", ["yes", "2", "-1"])
def test_bad_label_values_name_line_and_column(csv_set, value):
    _, write = csv_set
    path = write(f"path,Atelectasis,Effusion\nimg/a.png,1,0\nimg/b.png,0,{value}\n")
    with pytest.raises(DataError, match=f"labels.csv: column 'Effusion' must hold 1, 0 or blank .*'{value}' at line 3"):
        load_csv(path, CLASSES)


def test_missing_label_and_path_columns_are_named(csv_set):
    _, write = csv_set
    path = write("image,Atelectasis\nimg/a.png,1\n")
    with pytest.raises(DataError, match=r"labels.csv lacks column\(s\) 'path', 'Effusion'.*columns are 'image', 'Atelectasis'"):
        load_csv(path, CLASSES)
    with pytest.raises(DataError, match=r"lacks column\(s\) 'patient'"):
        load_csv(write("path,Atelectasis,Effusion\nimg/a.png,1,0\n"), CLASSES, patient_column="patient")


def test_empty_csv_and_header_only(csv_set):
    _, write = csv_set
    with pytest.raises(DataError, match="labels.csv is empty"):
        load_csv(write(""), CLASSES)
    with pytest.raises(DataError, match="labels.csv has a header but no rows"):
        load_csv(write("path,Atelectasis,Effusion\n"), CLASSES)


def test_blank_path_and_repeated_image_are_errors(csv_set):
    _, write = csv_set
    with pytest.raises(DataError, match="column 'path' is blank at line.* 3"):
        load_csv(write("path,Atelectasis,Effusion\nimg/a.png,1,0\n,0,0\n"), CLASSES)
    with pytest.raises(DataError, match="lists the same image more than once: 'img/a.png' at line 2"):
        load_csv(write("path,Atelectasis,Effusion\nimg/a.png,1,0\nimg/a.png,0,0\n"), CLASSES)


def test_missing_images_are_counted_and_none_is_an_error(csv_set, caplog):
    _, write = csv_set
    path = write("path,Atelectasis,Effusion\nimg/a.png,1,0\nimg/gone.png,0,1\n")
    with caplog.at_level(logging.WARNING):
        df = load_csv(path, CLASSES)
    assert df["image_index"].tolist() == ["img/a.png"] and df.attrs["missing_images"] == 1
    assert "1 of the 2 images listed" in caplog.text and "img/gone.png" in caplog.text
    with pytest.raises(DataError, match="none of the 1 images listed in .*labels.csv were found"):
        load_csv(write("path,Atelectasis,Effusion\nimg/gone.png,0,1\n"), CLASSES)


def test_load_table_reads_a_csv_source(csv_set):
    _, write = csv_set
    path = write("path,pid,Atelectasis,Effusion\nimg/a.png,1,1,0\nimg/b.png,1,,1\nimg/c.png,2,0,0\n")
    df, names = load_table(DataConfig(source=str(path), class_names=CLASSES, patient_column="pid"))
    assert names == CLASSES and df.attrs["format"] == "csv" and len(df) == 3
    with pytest.raises(DataError, match="does not exist"):
        load_table(DataConfig(source=str(path) + ".missing"))


def test_class_prevalence_counts_known_labels_only():
    df = pd.DataFrame({"A": [1.0, 0.0, np.nan, 1.0], "B": [0.0, 0.0, 0.0, 1.0], "C": [np.nan] * 4})
    # A: 2 positives of 3 known; B: 1 of 4; C: nothing known -> 0.
    np.testing.assert_allclose(class_prevalence(df, ["A", "B", "C"]), [2 / 3, 1 / 4, 0.0])
    with pytest.raises(DataError, match="no column for class"):
        class_prevalence(df, ["A", "Z"])


def test_paths_are_absolute(csv_set):
    _, write = csv_set
    df = load_csv(write("path,Atelectasis,Effusion\nimg/a.png,1,0\n"), CLASSES)
    assert os.path.isabs(df["path"].iloc[0])
