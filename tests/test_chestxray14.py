"""ChestX-ray14 loading: the real NIH sample, NIH's folder layouts, and each bad label file."""

from __future__ import annotations

import csv
import gzip
import logging
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from can_tf.config import DataConfig
from can_tf.data.chestxray14 import find_label_file, index_images, load_chestxray14
from can_tf.data.errors import DataError
from can_tf.data.table import BASE_COLUMNS, load_table
from can_tf.labels import CLASS_NAMES

LABEL_FILE = "Data_Entry_2017_v2020.csv.gz"


# ---- the real sample ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nih_rows(chestxray14_dir) -> dict:
    """The label file parsed with the csv module, independently of the loader: name -> row dict."""
    with gzip.open(chestxray14_dir / LABEL_FILE, "rt", newline="") as f:
        return {row["Image Index"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def images_table(chestxray14_dir) -> pd.DataFrame:
    return load_chestxray14(chestxray14_dir, image_root=chestxray14_dir / "images")


def test_images_folder_loads_with_multi_hot_labels_from_the_csv(images_table, nih_rows, chestxray14_dir):
    on_disk = sorted(os.listdir(chestxray14_dir / "images"))
    assert len(on_disk) == 546
    df = images_table
    assert sorted(df["image_index"]) == on_disk
    assert list(df.columns) == [*BASE_COLUMNS, *CLASS_NAMES]
    assert all(df[name].dtype == np.float32 for name in CLASS_NAMES)
    assert df["path"].map(os.path.isfile).all()
    assert not df[list(CLASS_NAMES)].isna().any().any()  # NIH has no unknown labels

    # Spot-check: every multi-label image and every fifth image against the CSV text.
    by_name = df.set_index("image_index")
    multi = [n for n in on_disk if "|" in nih_rows[n]["Finding Labels"]]
    assert len(multi) > 10
    for name in multi + on_disk[::5]:
        row = nih_rows[name]
        findings = set(row["Finding Labels"].split("|")) - {"No Finding"}
        expected = [1.0 if c in findings else 0.0 for c in CLASS_NAMES]
        assert by_name.loc[name, list(CLASS_NAMES)].tolist() == expected, name
        assert by_name.loc[name, "patient_id"] == row["Patient ID"]
        assert by_name.loc[name, "view"] == row["View Position"]
        assert by_name.loc[name, "sex"] == row["Patient Gender"]
        assert by_name.loc[name, "age"] == float(row["Patient Age"])


def test_images_folder_class_counts_match_readme(images_table, chestxray14_dir):
    readme = (chestxray14_dir / "README.md").read_text()
    sentence = re.search(r"Positive counts per class in `images/` \(546\):(.*?)\(the rest", readme, re.S).group(1)
    expected = {name: int(count) for name, count in re.findall(r"(\w+) (\d+)", sentence)}
    assert set(expected) == set(CLASS_NAMES)
    counts = {name: int(images_table[name].sum()) for name in CLASS_NAMES}
    assert counts == expected


def test_missing_images_are_counted_and_reported(chestxray14_dir, nih_rows, caplog):
    with caplog.at_level(logging.WARNING):
        df = load_chestxray14(chestxray14_dir, image_root=chestxray14_dir / "images")
    missing = len(nih_rows) - len(os.listdir(chestxray14_dir / "images"))
    assert len(nih_rows) == 112_120 and missing == 112_120 - 546
    assert df.attrs["missing_images"] == missing
    assert f"{missing:,} of the 112,120 images" in caplog.text


def test_full_label_file_keeps_every_row_when_asked(chestxray14_dir, nih_rows):
    df = load_chestxray14(chestxray14_dir, keep_missing=True)
    assert len(df) == len(nih_rows) == 112_120
    assert df["image_index"].is_unique
    # Rows without an image carry an empty path; the 546 of images/ are among those found.
    found = set(df.loc[df["path"] != "", "image_index"])
    assert set(os.listdir(chestxray14_dir / "images")) <= found
    assert df.attrs["missing_images"] == (df["path"] == "").sum()
    no_finding = np.array([nih_rows[n]["Finding Labels"] == "No Finding" for n in df["image_index"]])
    assert (df.loc[no_finding, list(CLASS_NAMES)].sum(axis=1) == 0).all()
    assert (df.loc[~no_finding, list(CLASS_NAMES)].sum(axis=1) >= 1).all()


def test_a_name_in_two_folders_uses_the_shallowest_first_and_is_reported(chestxray14_dir):
    index = index_images(chestxray14_dir)
    # images/, images-1024/ and images-64/ share names; images/ sorts first at the same depth.
    assert index.duplicates
    name = next(iter(index.duplicates))
    assert os.path.dirname(index.paths[name]).endswith("images")


# ---- layouts ------------------------------------------------------------------------------------
@pytest.fixture
def small_nih(tmp_path):
    """A tiny phantom data set in the NIH layout (10 patients, 32 px) to rearrange or break."""
    from can_tf.data.phantom import write_phantom

    return write_phantom(tmp_path / "nih", num_patients=10, image_size=32, seed=0)


def test_images_in_nested_archive_folders_and_gzipped_2020_label_file(small_nih):
    # NIH's archives unpack to images_001/images/..., images_002/images/...; the label file may be gzipped.
    names = sorted(os.listdir(small_nih / "images"))
    for i, name in enumerate(names):
        target = small_nih / f"images_{1 + i % 2:03d}" / "images"
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(small_nih / "images" / name, target / name)
    text = (small_nih / "Data_Entry_2017.csv").read_bytes()
    (small_nih / "Data_Entry_2017.csv").unlink()
    (small_nih / "Data_Entry_2017_v2020.csv.gz").write_bytes(gzip.compress(text))
    assert find_label_file(small_nih).name == "Data_Entry_2017_v2020.csv.gz"
    df = load_chestxray14(small_nih)
    assert sorted(df["image_index"]) == names
    assert df.attrs["missing_images"] == 0
    assert df["path"].str.contains("images_00[12]/images/").all()


def test_load_table_dispatches_and_filters(small_nih):
    df, class_names = load_table(DataConfig(source=str(small_nih)))
    assert class_names == list(CLASS_NAMES) and df.attrs["format"] == "chestxray14"
    # A Data_Entry file given as the source is ChestX-ray14 too, with the same rows.
    by_file, _ = load_table(DataConfig(source=str(small_nih / "Data_Entry_2017.csv")))
    assert by_file["image_index"].tolist() == df["image_index"].tolist()

    pa, _ = load_table(DataConfig(source=str(small_nih), views=["PA"]))
    assert set(pa["view"]) == {"PA"} and len(pa) == (df["view"] == "PA").sum()

    first, _ = load_table(DataConfig(source=str(small_nih), one_per_patient=True))
    assert first["patient_id"].is_unique
    assert set(first["patient_id"]) == set(df["patient_id"])
    # The first image is the earliest follow-up: the smallest name of each patient.
    assert sorted(first["image_index"]) == sorted(df.groupby("patient_id")["image_index"].min())


def test_load_table_without_source_uses_the_phantom(tmp_path, monkeypatch):
    monkeypatch.setenv("CAN_TF_CACHE", str(tmp_path))
    df, _ = load_table(DataConfig(phantom_patients=10, phantom_image_size=32))
    assert len(df) >= 10 and df["patient_id"].nunique() == 10
    assert str(tmp_path) in df["path"].iloc[0]


# ---- bad label files ----------------------------------------------------------------------------
def _edit_label_file(small_nih, edit) -> None:
    path = small_nih / "Data_Entry_2017.csv"
    path.write_text(edit(path.read_text()))


def test_missing_columns_are_named(small_nih):
    _edit_label_file(small_nih, lambda t: t.replace("Finding Labels", "Findings").replace("Patient ID", "PID"))
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv lacks required column\(s\) 'Finding Labels', 'Patient ID'"):
        load_chestxray14(small_nih)


def test_unknown_label_names_the_row_and_label(small_nih):
    lines = (small_nih / "Data_Entry_2017.csv").read_text().splitlines()
    image = lines[3].split(",")[0]
    lines[3] = lines[3].replace(lines[3].split(",")[1], "Pleural Thickening|Mass", 1)
    (small_nih / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        load_chestxray14(small_nih)
    message = str(error.value)
    assert "unknown label 'Pleural Thickening'" in message
    assert f"line 4 ({image})" in message  # header is line 1
    assert "did you mean 'Pleural_Thickening'" in message


def test_empty_label_file_and_header_only(small_nih):
    path = small_nih / "Data_Entry_2017.csv"
    header = path.read_text().splitlines()[0]
    path.write_text("")
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv is empty"):
        load_chestxray14(small_nih)
    path.write_text(header + "\n")
    with pytest.raises(DataError, match="has a header but no rows"):
        load_chestxray14(small_nih)


def test_no_image_on_disk_is_an_error_naming_the_folder(small_nih, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"none of the .* images listed in .* were found in {empty}"):
        load_chestxray14(small_nih, image_root=empty)


def test_some_images_missing_keeps_the_rest(small_nih, caplog):
    names = sorted(os.listdir(small_nih / "images"))
    for name in names[:3]:
        (small_nih / "images" / name).unlink()
    with caplog.at_level(logging.WARNING):
        df = load_chestxray14(small_nih)
    assert df.attrs["missing_images"] == 3
    assert sorted(df["image_index"]) == names[3:]
    assert f"3 of the {len(names)} images listed" in caplog.text and names[0] in caplog.text


def test_duplicate_rows_and_blank_findings_are_errors(small_nih):
    lines = (small_nih / "Data_Entry_2017.csv").read_text().splitlines()
    image = lines[2].split(",")[0]
    (small_nih / "Data_Entry_2017.csv").write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(DataError, match=f"listed on more than one row .*line 3 \\({image}\\)"):
        load_chestxray14(small_nih)
    fields = lines[2].split(",")
    fields[1] = ""
    lines[2] = ",".join(fields)
    (small_nih / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"line 3 \\({image}\\) with empty 'Finding Labels'"):
        load_chestxray14(small_nih)


def test_no_label_file_in_folder(tmp_path):
    with pytest.raises(DataError, match="no NIH label file in .*Data_Entry_2017_v2020.csv"):
        load_chestxray14(tmp_path)
