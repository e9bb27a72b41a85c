"""``can-tf data check`` and ``can-tf data synth`` through click's test runner."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from can_tf_cli.main import main


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("args", [["data"], ["data", "check"], ["data", "synth"]])
def test_help_has_an_example(runner, args):
    result = runner.invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "can-tf data" in result.output


def test_synth_then_check_is_clean(runner, tmp_path):
    out = tmp_path / "phantom"
    result = runner.invoke(main, ["data", "synth", str(out), "--patients", "10", "--image-size", "32", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    for name in ("Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt", "BBox_List_2017.csv"):
        assert (out / name).is_file(), name
    images = os.listdir(out / "images")
    assert len(images) >= 10

    result = runner.invoke(main, ["data", "check", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(images)} found" in result.output and "result: OK" in result.output

    result = runner.invoke(main, ["data", "check", str(out), "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["ok"] is True and report["images_found"] == len(images)


def test_check_exits_1_and_names_a_corrupt_png(runner, tmp_path):
    from can_tf.data.phantom import write_phantom

    out = write_phantom(tmp_path / "nih", num_patients=10, image_size=32)
    name = sorted(os.listdir(out / "images"))[0]
    (out / "images" / name).write_bytes((out / "images" / name).read_bytes()[:-20])
    result = runner.invoke(main, ["data", "check", str(out)])
    assert result.exit_code == 1
    assert f"PROBLEM: unreadable image {name}" in result.output


def test_check_splits_option_finds_leakage(runner, tmp_path):
    from can_tf.data.phantom import write_phantom

    out = write_phantom(tmp_path / "nih", num_patients=10, image_size=32)
    patient_1 = sorted(n for n in os.listdir(out / "images") if n.startswith("00000001_"))
    lists = tmp_path / "splits"
    lists.mkdir()
    (lists / "train.txt").write_text(patient_1[0] + "\n")
    (lists / "val.txt").write_text(patient_1[0] + "\n")
    result = runner.invoke(main, ["data", "check", str(out), "--splits", str(lists), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["leaking_patients"] == {"1": ["train", "val"]}


def test_strict_turns_warnings_into_failure(runner, tmp_path):
    from can_tf.data.phantom import write_phantom

    out = write_phantom(tmp_path / "nih", num_patients=10, image_size=32)
    os.remove(out / "images" / sorted(os.listdir(out / "images"))[0])
    lenient = runner.invoke(main, ["data", "check", str(out)])
    assert lenient.exit_code == 0 and lenient.output.splitlines()[-1] == "result: OK, 1 warning(s)"
    result = runner.invoke(main, ["data", "check", str(out), "--strict"])
    assert result.exit_code == 1 and "WARNING: 1 of" in result.output
    # the verdict agrees with the exit code
    assert result.output.splitlines()[-1] == "result: FAILED (--strict): 1 warning(s)"
    assert "result: OK" not in result.output


def test_strict_json_agrees_with_the_exit_code(runner, tmp_path):
    from can_tf.data.phantom import write_phantom

    out = write_phantom(tmp_path / "nih", num_patients=10, image_size=32)
    clean = runner.invoke(main, ["data", "check", str(out), "--strict", "--json"])
    assert clean.exit_code == 0 and json.loads(clean.output)["ok"] is True
    os.remove(out / "images" / sorted(os.listdir(out / "images"))[0])
    result = runner.invoke(main, ["data", "check", str(out), "--strict", "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 1
    assert report["ok"] is False and report["strict"] is True and report["problems"] == []
    assert report["result"] == "result: FAILED (--strict): 1 warning(s)" and len(report["warnings"]) == 1
    result = runner.invoke(main, ["data", "check", str(out), "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["ok"] is True and report["strict"] is False
    assert report["result"] == "result: OK, 1 warning(s)"


def test_check_real_sample(runner, chestxray14_dir):
    result = runner.invoke(main, ["data", "check", str(chestxray14_dir), "--image-root",
                                  str(chestxray14_dir / "images"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images_found"] == 546 and report["leaking_patients"] == {}
