"""The built-in phantom data set (can_tf.data.phantom): NIH layout, determinism, labels, boxes."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from can_tf.data import phantom
from can_tf.labels import CLASS_NAMES, NO_FINDING


def _entries(root):
    return pd.read_csv(root / phantom.DATA_ENTRY_FILE)


def _boxes(root):
    return pd.read_csv(root / phantom.BBOX_FILE)


def test_layout_and_headers(phantom_dir):
    names = sorted(p.name for p in phantom_dir.iterdir())
    assert names == sorted(["images", "Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt",
                            "test_list.txt", "README.md"])
    header = (phantom_dir / phantom.DATA_ENTRY_FILE).read_text().splitlines()[0]
    assert header == ",".join(phantom.DATA_ENTRY_COLUMNS)
    assert (phantom_dir / phantom.BBOX_FILE).read_text().splitlines()[0] == phantom.BBOX_HEADER
    entries = _entries(phantom_dir)
    files = sorted(p.name for p in (phantom_dir / "images").iterdir())
    assert files == sorted(entries["Image Index"])
    columns = ["Image Index", "Follow-up #", "Patient ID"]
    for name, follow_up, patient in entries[columns].itertuples(index=False):
        assert name == f"{patient:08d}_{follow_up:03d}.png"
    with Image.open(phantom_dir / "images" / files[0]) as image:
        assert image.mode == "L" and image.size == (64, 64)
    assert set(entries["View Position"]) == {"PA", "AP"}
    assert set(entries["Patient Gender"]) == {"M", "F"}
    assert entries["Patient Age"].between(1, 95).all()
    assert (entries[["OriginalImage[Width", "Height]"]] == 64).all().all()
    labels = set("|".join(entries["Finding Labels"]).split("|"))
    assert labels == set(CLASS_NAMES) | {NO_FINDING}
    # A 'No Finding' image has no other label; several findings per image occur.
    counts = entries["Finding Labels"].str.count(r"\|") + 1
    assert counts.max() >= 2
    assert not entries["Finding Labels"].str.contains(f"{NO_FINDING}\\|").any()


def test_headers_match_the_real_nih_files(chestxray14_dir):
    with gzip.open(chestxray14_dir / "Data_Entry_2017_v2020.csv.gz", "rt") as f:
        assert f.readline().rstrip("\r\n") == ",".join(phantom.DATA_ENTRY_COLUMNS)
    with gzip.open(chestxray14_dir / "BBox_List_2017.csv.gz", "rt") as f:
        assert f.readline().rstrip("\r\n") == phantom.BBOX_HEADER


def test_loads_with_the_nih_loader(phantom_dir):
    from can_tf.data.chestxray14 import load_chestxray14

    df = load_chestxray14(phantom_dir)
    entries = _entries(phantom_dir)
    assert len(df) == len(entries)
    row = entries.iloc[0]
    got = df.set_index("image_index").loc[row["Image Index"]]
    for name in CLASS_NAMES:
        assert got[name] == float(name in row["Finding Labels"].split("|"))


def test_deterministic_bytes(tmp_path):
    a = phantom.write_phantom(tmp_path / "a", num_patients=12, image_size=32, seed=7)
    b = phantom.write_phantom(tmp_path / "b", num_patients=12, image_size=32, seed=7)
    c = phantom.write_phantom(tmp_path / "c", num_patients=12, image_size=32, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / phantom.DATA_ENTRY_FILE).read_bytes() != (c / phantom.DATA_ENTRY_FILE).read_bytes()


def test_boxes_inside_images_one_per_finding(phantom_dir):
    entries = _entries(phantom_dir).set_index("Image Index")
    boxes = _boxes(phantom_dir)
    x, y, w, h = (boxes[c].to_numpy() for c in ("Bbox [x", "y", "w", "h]"))
    assert (w > 0).all() and (h > 0).all()
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 64).all() and (y + h <= 64).all()
    planted = {(name, label) for name, labels in entries["Finding Labels"].items()
               for label in labels.split("|") if label != NO_FINDING}
    boxed = set(zip(boxes["Image Index"], boxes["Finding Label"]))
    assert boxed == planted
    assert len(boxes) == len(boxed)  # one box per finding


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_each_finding_changes_pixels_inside_its_box(name):
    patient = phantom._new_patient(np.random.default_rng(3))
    plain, _ = phantom.render_image(np.random.default_rng(1), patient, {}, 64)
    planted = {name: np.random.default_rng(2)}
    found, boxes = phantom.render_image(np.random.default_rng(1), patient, planted, 64)
    x, y, w, h = boxes[name]
    diff = np.abs(found.astype(float) - plain.astype(float))
    inside = np.zeros_like(diff, bool)
    inside[y:y + h, x:x + w] = True
    # Visible (a mean change of several grey levels in the box) and local (little change outside).
    assert diff[inside].mean() > 8.0, diff[inside].mean()
    assert diff[~inside].mean() < 0.25 * diff[inside].mean()


def test_prevalence_imbalanced_like_nih():
    # Label sampling alone (no images) over many patients: the marginals are visible.
    patients = phantom._sample_findings(0, 4000, (1, 4))
    counts, images = Counter(), 0
    for p in patients:
        for acute, shown in zip(p["acute"], p["shown"]):
            images += 1
            counts.update(set(acute) | set(shown))
    prevalence = {name: counts[name] / images for name in CLASS_NAMES}
    assert max(prevalence, key=prevalence.get) == "Infiltration"
    assert min(prevalence, key=prevalence.get) == "Hernia"
    assert 0.15 < prevalence["Infiltration"] < 0.21
    assert 0.008 < prevalence["Hernia"] < 0.025
    # The NIH order of the common classes is kept (NIH: Effusion 13,317 > Atelectasis 11,559).
    assert prevalence["Effusion"] > prevalence["Atelectasis"] > prevalence["Nodule"]


def test_split_lists_patient_disjoint_and_complete(phantom_dir):
    train_val = (phantom_dir / "train_val_list.txt").read_text().split()
    test = (phantom_dir / "test_list.txt").read_text().split()
    entries = _entries(phantom_dir)
    assert sorted(train_val + test) == sorted(entries["Image Index"])
    patients = lambda names: {re.match(r"(\d+)_", n).group(1) for n in names}  # noqa: E731
    assert not patients(train_val) & patients(test)
    assert 0.1 <= len(patients(test)) / entries["Patient ID"].nunique() <= 0.3


def test_several_images_per_patient(phantom_dir):
    per_patient = _entries(phantom_dir).groupby("Patient ID").size()
    assert per_patient.min() >= 1 and per_patient.max() <= 4
    assert (per_patient > 1).mean() > 0.4
    assert per_patient.index.tolist() == list(range(1, 61))


def test_default_phantom_dir_generates_once_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("CAN_TF_CACHE", str(tmp_path / "cache"))
    first = phantom.default_phantom_dir(num_patients=10, image_size=32, seed=1)
    assert first.parent == tmp_path / "cache"
    assert f"v{phantom.PHANTOM_VERSION}" in first.name and "p10" in first.name and "s32" in first.name
    stamp = (first / phantom.DATA_ENTRY_FILE).stat().st_mtime_ns
    assert phantom.default_phantom_dir(num_patients=10, image_size=32, seed=1) == first
    assert (first / phantom.DATA_ENTRY_FILE).stat().st_mtime_ns == stamp  # not written again
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temporary folder left


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        phantom.write_phantom(tmp_path, num_patients=5, image_size=8)
    with pytest.raises(ValueError, match="images_per_patient"):
        phantom.write_phantom(tmp_path, num_patients=5, images_per_patient=(3, 2))


def test_rewrite_keeps_other_files_and_removes_a_killed_runs_staging(tmp_path):
    out = tmp_path / "nih"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid now belongs to no process: what it left is stale
    stale = out / f".staging-phantom-{child.pid}-abcd1234"
    (stale / "images").mkdir(parents=True)
    phantom.write_phantom(out, num_patients=6, image_size=32)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "images", "README.md", phantom.DATA_ENTRY_FILE, phantom.BBOX_FILE, phantom.TRAIN_VAL_FILE,
         phantom.TEST_FILE])
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(_entries(out)["Image Index"])
