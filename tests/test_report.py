"""Evaluation report: the paper-style table, CSV/JSON that parse back, the ROC PNG, references."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from can_tf.evaluation.metrics import EvaluationError, per_class_auroc
from can_tf.evaluation.reference_results import (
    OFFICIAL_SPLIT_MEANS,
    PER_CLASS_REFERENCES,
    RANDOM_SPLIT,
    get_reference,
)
from can_tf.evaluation.report import CSV_COLUMNS, EvaluationReport
from can_tf.labels import CLASS_NAMES

REFERENCE_DOC = Path(__file__).resolve().parents[2] / "shared" / "docs" / "REFERENCE_RESULTS.md"


@pytest.fixture(scope="module")
def data():
    """300 images of 150 patients, 14 classes; Hernia has no positives (undefined)."""
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random((n, len(CLASS_NAMES))) < np.linspace(0.05, 0.3, 14)).astype("float32")
    y[:, CLASS_NAMES.index("Hernia")] = 0.0
    y[rng.random(y.shape) < 0.02] = np.nan
    logits = rng.normal(size=y.shape) + 1.5 * np.nan_to_num(y) - 1.0
    p = 1.0 / (1.0 + np.exp(-logits))
    return y, p, np.arange(n) // 2


@pytest.fixture(scope="module")
def report(data):
    y, p, pid = data
    return EvaluationReport(
        y, p, pid, CLASS_NAMES, split="test", model_name="can-small",
        split_description="random patient split, seed 0", n_boot=200, seed=0,
        references=["CheXNet 2017", "arnoweng reimpl.", "CAN 2019"],
    )  # fmt: skip


def table_rows(markdown):
    return [line for line in markdown.splitlines() if line.startswith("| ")]


def test_markdown_has_every_class_and_the_mean(report, data):
    md = report.to_markdown()
    rows = table_rows(md)
    first_cells = [row.split("|")[1].strip() for row in rows]
    for name in CLASS_NAMES:
        assert name in first_cells
    assert "**Mean** (13 of 14 classes)" in first_cells
    # Class rows come in class order, right after the header, then the Mean row.
    assert first_cells[1 : 1 + 14] == list(CLASS_NAMES)
    edema = next(r for r in rows if r.startswith("| Edema |"))
    auroc = report.metrics.auroc["Edema"]
    ci = report.intervals["auroc"].per_class["Edema"]
    assert f"{auroc:.3f} [{ci.low:.3f}, {ci.high:.3f}]" in edema
    hernia = next(r for r in rows if r.startswith("| Hernia |"))
    assert "undefined (no positive labels among" in hernia
    assert "0.5" not in hernia.split("|")[2]
    assert "Hernia: AUROC and AUPRC undefined" in md


def test_references_are_labelled_with_their_split(report):
    md = report.to_markdown()
    header = table_rows(md)[0]
    assert f"CheXNet 2017 ({RANDOM_SPLIT})" in header
    assert f"arnoweng reimpl. ({RANDOM_SPLIT})" in header
    effusion = next(r for r in table_rows(md) if r.startswith("| Effusion |"))
    assert effusion.rstrip(" |").endswith("0.8638 | 0.8870")  # printed as published
    mean = next(r for r in table_rows(md) if r.startswith("| **Mean**"))
    assert mean.rstrip(" |").endswith("0.841 | 0.843")
    # The means-only reference sits in its own table, with its split and source.
    assert "| CAN 2019 | 0.817 | official split (secondary source, unverified) |" in md
    assert "Random-split and official-split numbers are not comparable" in md
    assert "random patient split, seed 0" in md  # our own split is stated too


def test_no_references_no_reference_columns(data):
    y, p, pid = data
    md = EvaluationReport(y[:, :2], p[:, :2], pid, CLASS_NAMES[:2], n_boot=20).to_markdown()
    assert "CheXNet" not in md and "not comparable" not in md
    with pytest.raises(EvaluationError, match="unknown reference result 'Nope'"):
        EvaluationReport(y[:, :2], p[:, :2], pid, CLASS_NAMES[:2], n_boot=5, references=["Nope"])


def test_csv_parses_back_to_the_same_numbers(report, tmp_path):
    path = report.to_csv(tmp_path / "report.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [r["class"] for r in rows] == list(CLASS_NAMES) + ["Mean"]
    for row in rows[:-1]:
        name = row["class"]
        ci = report.intervals["auroc"].per_class[name]
        if ci.point is None:
            assert row["auroc"] == "" and row["status"].startswith("undefined: no positive")
            continue
        assert float(row["auroc"]) == ci.point == report.metrics.auroc[name]
        assert (float(row["auroc_low"]), float(row["auroc_high"])) == (ci.low, ci.high)
        assert float(row["auprc"]) == report.metrics.auprc[name]
        assert int(row["positives"]) == report.metrics.positives[name]
        assert int(row["negatives"]) == report.metrics.negatives[name]
    assert float(rows[-1]["auroc"]) == report.metrics.mean_auroc
    assert float(rows[-1]["auroc_low"]) == report.intervals["auroc"].mean.low


def test_json_parses_back_to_the_same_numbers(report, data, tmp_path):
    path = report.to_json(tmp_path / "report.json")
    loaded = json.loads(path.read_text())
    assert loaded["class_names"] == list(CLASS_NAMES)
    assert loaded["num_images"] == 300 and loaded["num_patients"] == 150
    assert loaded["bootstrap"]["resampled"] == "patients"
    y, p, _ = data
    direct = per_class_auroc(y, p, CLASS_NAMES)
    for row in loaded["classes"]:
        assert row["auroc"] == direct[row["class"]]
        ci = report.intervals["auprc"].per_class[row["class"]]
        assert (row["auprc_low"], row["auprc_high"], row["auprc_n_used"]) == (
            ci.low, ci.high, ci.n_used,
        )  # fmt: skip
    assert loaded["mean"]["auroc"] == report.metrics.mean_auroc
    assert loaded["mean"]["num_classes_averaged"] == 13
    refs = {r["name"]: r for r in loaded["references"]}
    assert refs["CheXNet 2017"]["split"] == RANDOM_SPLIT
    assert refs["CheXNet 2017"]["per_class"]["Hernia"] == 0.9164


def test_roc_png_is_a_valid_image(report, tmp_path):
    path = report.plot_roc(tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert 600 <= width <= 2000 and 600 <= height <= 2000
    # Not blank: white background plus many coloured curve pixels.
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    assert colourful.mean() > 0.005
    assert 20_000 < path.stat().st_size < 2_000_000


def test_save_writes_all_files_and_refuses_to_overwrite(report, tmp_path):
    paths = report.save(tmp_path / "eval")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "report.csv", "report.json", "report.md", "roc.png",
    ]  # fmt: skip (no temporary files are left behind)
    assert paths["markdown"].read_text() == report.to_markdown()
    with pytest.raises(FileExistsError, match="report.md already exists; pass overwrite=True"):
        report.save(tmp_path / "eval")
    report.save(tmp_path / "eval", overwrite=True)


def test_image_bootstrap_is_flagged(data):
    y, p, _ = data
    r = EvaluationReport(y[:, :2], p[:, :2], None, CLASS_NAMES[:2], n_boot=20)
    assert "image-level bootstrap" in r.to_markdown()
    assert any("understates the uncertainty" in note for note in r.notes())


def test_reference_results_match_the_shared_document():
    if not REFERENCE_DOC.is_file():
        pytest.skip(f"{REFERENCE_DOC} not found")
    text = REFERENCE_DOC.read_text()
    table = {}
    for line in text.splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"0\.\d+", cells[1]):
            table[cells[0]] = cells[1:]
    assert set(table) == set(CLASS_NAMES) | {"Mean"}
    for column, ref in enumerate(PER_CLASS_REFERENCES):
        for name in CLASS_NAMES:
            assert ref.format(ref.per_class[name]) == table[name][column], (ref.name, name)
        assert f"{ref.mean:.3f}" == table["Mean"][column]
        # The published mean agrees with the mean of the published per-class values.
        assert abs(np.mean(list(ref.per_class.values())) - ref.mean) < 0.001
    for ref in OFFICIAL_SPLIT_MEANS:
        assert f"{ref.mean:.3f}" in text and ref.name.split()[0] in text
    assert get_reference("CAN 2019").mean == 0.817
