"""``check_dataset``: the real sample is clean; each planted problem is found and named."""

from __future__ import annotations

import os
import re

import pytest

from can_tf.data.check import check_dataset
from can_tf.labels import CLASS_NAMES


@pytest.fixture
def small_nih(tmp_path):
    """A tiny phantom data set in the NIH layout (10 patients, 32 px) to break."""
    from can_tf.data.phantom import write_phantom

    return write_phantom(tmp_path / "nih", num_patients=10, image_size=32, seed=0)


def test_real_sample_images_folder_is_clean(chestxray14_dir):
    report = check_dataset(chestxray14_dir, image_root=chestxray14_dir / "images")
    assert report.ok, report.problems
    assert report.rows == 112_120
    assert report.images_found == report.images_checked == 546
    assert report.images_missing == 112_120 - 546
    assert report.unreadable == []
    # The official lists were found beside the label file and share no patient.
    assert report.split_lists == {"train_val_list": 86_524, "test_list": 25_596}
    assert report.leaking_patients == {} and report.unknown_listed == {}
    readme = (chestxray14_dir / "README.md").read_text()
    sentence = readme[readme.index("Positive counts per class in `images/`"):]
    assert report.class_counts == {name: int(re.search(rf"{name} (\d+)", sentence).group(1))
                                   for name in CLASS_NAMES}
    summary = report.summary()
    assert "546 found" in summary and "111,574" in summary and summary.endswith("result: OK, 1 warning(s)")


def test_clean_phantom_has_no_problem_or_warning(small_nih):
    report = check_dataset(small_nih)
    assert report.ok and report.warnings == []
    assert report.images_found == report.rows == len(os.listdir(small_nih / "images"))


def test_truncated_png_is_reported_by_name(small_nih):
    name = sorted(os.listdir(small_nih / "images"))[1]
    path = small_nih / "images" / name
    path.write_bytes(path.read_bytes()[:60])
    report = check_dataset(small_nih)
    assert not report.ok
    assert [entry[0] for entry in report.unreadable] == [name]
    assert any(name in p for p in report.problems)
    assert f"unreadable image {name}" in report.summary()


def test_missing_image_is_a_warning_not_a_problem(small_nih):
    name = sorted(os.listdir(small_nih / "images"))[0]
    (small_nih / "images" / name).unlink()
    report = check_dataset(small_nih)
    assert report.ok
    assert report.images_missing == 1 and report.missing_examples == [name]
    assert any("1 of" in w and name in w for w in report.warnings)


def test_label_file_problems_are_all_listed(small_nih):
    path = small_nih / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    rows = [line.split(",") for line in lines]
    rows[1][1] = "Atelectasis|Foo"  # unknown label, line 2
    rows[2][4] = "414"  # impossible age, line 3
    rows[3][3] = "777"  # patient id differs from the image name, line 4
    lines = [",".join(r) for r in rows] + [lines[5]]  # line 6 repeated
    path.write_text("\n".join(lines) + "\n")
    report = check_dataset(small_nih)
    assert not report.ok
    problems = "\n".join(report.label_problems)
    assert "unknown label 'Foo'" in problems and f"line 2 ({rows[1][0]})" in problems
    assert "more than one row" in problems and rows[5][0] in problems
    warnings = "\n".join(report.label_warnings)
    assert f"line 3 ({rows[2][0]}) with an unusable 'Patient Age'" in warnings
    assert f"line 4 ({rows[3][0]}) with a 'Patient ID' that differs" in warnings


def test_patient_leakage_across_split_lists_is_named(small_nih, tmp_path):
    # Patient 1's images in two lists, patient 2 only in one.
    images = sorted(os.listdir(small_nih / "images"))
    first = [n for n in images if n.startswith("00000001_")]
    second = [n for n in images if n.startswith("00000002_")]
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("\n".join(first[:1] + second) + "\n")
    (lists / "test.txt").write_text("\n".join(first + ["99999999_000.png"]) + "\n")
    report = check_dataset(small_nih, lists)
    assert report.split_lists == {"test": len(first) + 1, "train": 1 + len(second)}
    assert report.leaking_patients == {"1": ["test", "train"]}
    assert report.unknown_listed == {"test": 1}
    assert report.unlisted_images == len(images) - len(first) - len(second)
    assert not report.ok and any("1 in test, train" in p for p in report.problems)


def test_unreadable_source_is_reported_not_raised(tmp_path):
    (tmp_path / "labels.csv").write_text("path,Atelectasis\n")
    report = check_dataset(tmp_path / "labels.csv")
    assert report.format == "csv" and not report.ok
    assert "labels.csv has a header but no rows" in report.error
    assert report.error in report.summary()


# ---- --strict: the verdict line agrees with ok (and the exit code) -------------------------------
def test_strict_turns_warnings_into_a_failed_verdict(small_nih):
    name = sorted(os.listdir(small_nih / "images"))[0]
    (small_nih / "images" / name).unlink()
    lenient = check_dataset(small_nih)
    assert lenient.ok and lenient.summary().splitlines()[-1] == "result: OK, 1 warning(s)"
    strict = check_dataset(small_nih, strict=True)
    assert not strict.ok and strict.problems == [] and len(strict.warnings) == 1
    assert strict.summary().splitlines()[-1] == "result: FAILED (--strict): 1 warning(s)"
    as_dict = strict.to_dict()
    assert as_dict["ok"] is False and as_dict["strict"] is True
    assert as_dict["result"] == "result: FAILED (--strict): 1 warning(s)"
    assert lenient.to_dict()["ok"] is True and lenient.to_dict()["result"] == "result: OK, 1 warning(s)"


def test_strict_without_warnings_stays_ok(small_nih):
    report = check_dataset(small_nih, strict=True)
    assert report.ok and report.summary().splitlines()[-1] == "result: OK, 0 warning(s)"


def test_problems_make_the_verdict_failed(small_nih):
    path = small_nih / "images" / sorted(os.listdir(small_nih / "images"))[1]
    path.write_bytes(path.read_bytes()[:60])
    assert check_dataset(small_nih).summary().splitlines()[-1] == "result: FAILED: 1 problem(s), 0 warning(s)"


# ---- class names a user gives are matched by can_tf.labels.match_class_names ---------------------
def test_match_class_names_canonical_spelling_and_suggestion():
    from can_tf.data.errors import DataError
    from can_tf.labels import match_class_names

    assert match_class_names("cardiomegaly", CLASS_NAMES) == ["Cardiomegaly"]
    assert match_class_names(["pleural thickening", "mass"], CLASS_NAMES) == \
        ["Pleural_Thickening", "Mass"]
    assert match_class_names(["Hernia", "Edema"], CLASS_NAMES) == ["Hernia", "Edema"]  # order kept
    with pytest.raises(DataError) as info:
        match_class_names("cardiomegalyy", CLASS_NAMES)
    assert str(info.value) == ("unknown class 'cardiomegalyy' for --class; did you mean 'Cardiomegaly'? "
                               f"(classes: {', '.join(CLASS_NAMES)})")
    with pytest.raises(DataError) as info:
        match_class_names(["xyzzy"], ["A", "B"], what="data.class_names")
    assert str(info.value) == "unknown class 'xyzzy' for data.class_names (classes: A, B)"
    with pytest.raises(DataError, match=r"^data.class_names names class 'Mass' twice \('Mass' and 'mass'\)$"):
        match_class_names(["Mass", "mass"], CLASS_NAMES, what="data.class_names")


def test_class_names_are_matched_to_the_label_file(small_nih):
    report = check_dataset(small_nih, class_names=["cardiomegaly", "pleural thickening"])
    assert report.ok and list(report.class_counts) == ["Cardiomegaly", "Pleural_Thickening"]
    assert report.class_counts == {k: v for k, v in check_dataset(small_nih).class_counts.items()
                                   if k in ("Cardiomegaly", "Pleural_Thickening")}
    report = check_dataset(small_nih, class_names=["cardiomegalyy"])
    assert not report.ok
    label_file = small_nih / "Data_Entry_2017.csv"
    assert report.error == (f"unknown class 'cardiomegalyy' for data.class_names in {label_file}; "
                            f"did you mean 'Cardiomegaly'? (classes: {', '.join(CLASS_NAMES)})")


def test_class_names_are_matched_to_csv_columns(tmp_path):
    from PIL import Image

    Image.new("L", (16, 16)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,Pleural_Thickening,Mass\na.png,1,0\n")
    report = check_dataset(tmp_path / "labels.csv", class_names=["pleural thickening"])
    assert report.ok, report.problems
    assert report.class_counts == {"Pleural_Thickening": 1}
    report = check_dataset(tmp_path / "labels.csv", class_names=["Mas"])
    assert report.error == (f"unknown class 'Mas' for data.class_names (label columns of CSV "
                            f"{tmp_path / 'labels.csv'}); did you mean 'Mass'? (classes: Pleural_Thickening, Mass)")


def test_load_table_returns_the_data_sets_spelling(small_nih):
    from can_tf.config import DataConfig
    from can_tf.data.table import load_table

    df, class_names = load_table(DataConfig(source=str(small_nih), class_names=["cardiomegaly", "MASS"]))
    assert class_names == ["Cardiomegaly", "Mass"]
    assert df[class_names].to_numpy().sum() > 0


def test_csv_with_custom_classes_is_checked_on_its_own_columns(tmp_path, chestxray14_dir):
    """`data check` on a CSV whose classes are not NIH's: counted from its own label columns (or
    --class-names), as `fit --set data.class_names=[...]` reads the same file."""
    from click.testing import CliRunner

    from can_tf_cli.main import main

    images = sorted((chestxray14_dir / "images").glob("*.png"))[:4]
    rows = [f"{p},pt{i // 2},{i % 2},{1 - i % 2},58" for i, p in enumerate(images)]
    csv = tmp_path / "custom.csv"
    csv.write_text("path,patient,Tuberculosis,Nodule,age\n" + "\n".join(rows) + "\n")
    report = check_dataset(csv, patient_column="patient")
    assert report.ok, report.summary()
    assert report.class_counts == {"Tuberculosis": 2, "Nodule": 2} and report.images_found == 4
    only = check_dataset(csv, patient_column="patient", class_names=["tuberculosis"])
    assert only.class_counts == {"Tuberculosis": 2}  # matched to the column's spelling
    result = CliRunner().invoke(main, ["data", "check", str(csv), "--patient-column", "patient",
                                       "--class-names", "Nodule"])
    assert result.exit_code == 0, result.output
    assert "Nodule 2" in result.output and "Tuberculosis" not in result.output
