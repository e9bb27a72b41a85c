"""External validation: a model trained on NIH-layout data, evaluated on a CheXpert-layout and on the
NIH-Google four-findings layout (fixtures written here over real NIH images), on the classes the
labels share, composites included; and a 1-epoch fit on a merge of two layouts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from run_helpers import make_run_dir

OBSERVATIONS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices"]
GOOGLE = ["Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]


@pytest.fixture(scope="module")
def real(chestxray14_dir):
    return sorted((chestxray14_dir / "images").glob("*.png"))[:40]


@pytest.fixture(scope="module")
def run_dir(phantom_dir, tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("ext") / "run", phantom_dir, image_size=64)


def _labels(i: int, k: int) -> int:
    return int((i * 7 + k * 3) % 5 < 2)  # both values in every column, varied across columns


@pytest.fixture(scope="module")
def chexpert_dir(real, tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert")
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(OBSERVATIONS)
    lines = {"train.csv": [header], "valid.csv": [header]}
    for i, png in enumerate(real):
        split = "valid" if i < 30 else "train"
        path = f"CheXpert-v1.0-small/{split}/patient{64541 + i:05d}/study1/view1_frontal.jpg"
        (root / path).parent.mkdir(parents=True)
        os.symlink(png, root / path)  # a PNG behind a .jpg name: the image door reads it by content
        cells = [f"{_labels(i, k)}.0" for k in range(len(OBSERVATIONS))]
        lines["valid.csv" if split == "valid" else "train.csv"].append(
            f"{path},{'Male' if i % 2 else 'Female'},{40 + i},Frontal,PA," + ",".join(cells))
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def google_dir(real, tmp_path_factory):
    root = tmp_path_factory.mktemp("google")
    (root / "images").mkdir()
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]," + ",".join(GOOGLE))
    rows = {"test": [header], "validation": [header]}
    for i, png in enumerate(real):
        os.symlink(png, root / "images" / png.name)
        cells = ["YES" if _labels(i, k) else "NO" for k in range(len(GOOGLE))]
        rows["test" if i < 30 else "validation"].append(
            f"{png.name},No Finding,0,{int(png.name.split('_')[0])},50,M,PA,2500,2048,0.143,0.143," + ",".join(cells))
    for split, lines in rows.items():
        (root / f"four_findings_expert_labels_{split}_labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _model_probabilities(run_dir, paths):
    from can_tf.predictor import Predictor

    predictor = Predictor.load(run_dir)
    return predictor.class_names, predictor.predict_files([str(p) for p in paths]).probabilities


def test_nih_model_on_chexpert_labels_compares_the_shared_classes(run_dir, chexpert_dir, real, tmp_path):
    from can_tf.evaluation.model_evaluation import evaluate_model

    result = evaluate_model(run_dir, data=str(chexpert_dir), out_dir=tmp_path / "eval", n_boot=50, thresholds="none",
                            figures=(), gallery=0)
    shared = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Consolidation", "Edema"]
    assert list(result.report.class_names) == shared and result.num_images == 40
    note = next(n for n in result.notes if n.startswith("on chexpert data"))
    assert "7 class(es) compared" in note and "Pleural_Thickening, Hernia (chexpert does not label them)" in note
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "**External evaluation**: on chexpert data" in markdown
    # The AUROCs are the model's own probabilities against CheXpert's labels (Pleural Effusion = Effusion).
    names, probabilities = _model_probabilities(run_dir, real)
    rows = sorted(range(40), key=lambda i: f"{'valid' if i < 30 else 'train'}{64541 + i:05d}")  # table order
    got = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert got["external"].startswith("on chexpert data") and got["class_names"] == shared
    for k, name in ((OBSERVATIONS.index("Pleural Effusion"), "Effusion"), (OBSERVATIONS.index("Edema"), "Edema")):
        y = np.array([_labels(i, k) for i in rows])
        expected = roc_auc_score(y, probabilities[rows, names.index(name)])
        assert result.report.metrics.auroc[name] == pytest.approx(expected, abs=1e-6), name


def test_nih_model_on_nih_google_labels_scores_the_composite(run_dir, google_dir, real, tmp_path):
    from can_tf.evaluation.model_evaluation import evaluate_model

    result = evaluate_model(run_dir, data=str(google_dir), out_dir=tmp_path / "eval", n_boot=50, thresholds="none",
                            figures=(), gallery=0)
    assert list(result.report.class_names) == ["Pneumothorax", "Nodule or Mass"]
    names, probabilities = _model_probabilities(run_dir, real)
    order = np.argsort([p.name for p in real])  # the reader keeps the files' row order: sorted names
    composite = np.maximum(probabilities[:, names.index("Mass")], probabilities[:, names.index("Nodule")])
    y = np.array([_labels(i, GOOGLE.index("Nodule or mass")) for i in range(40)])
    expected = roc_auc_score(y[order], composite[order])
    assert result.report.metrics.auroc["Nodule or Mass"] == pytest.approx(expected, abs=1e-6)
    assert any("Not compared" in n and "Infiltration" in n for n in result.notes)


def test_cli_evaluate_names_the_format_and_refuses_format_without_data(run_dir, google_dir, tmp_path):
    from click.testing import CliRunner

    from can_tf_cli.main import main

    out = CliRunner().invoke(main, ["evaluate", str(run_dir), "--data", str(google_dir), "--format", "nih-google",
                                    "--bootstrap", "20", "--thresholds", "none", "--figures", "none", "--gallery", "0",
                                    "--out", str(tmp_path / "e")])
    assert out.exit_code == 0, out.output
    assert "External evaluation" in out.output and "Nodule or Mass" in out.output
    out = CliRunner().invoke(main, ["evaluate", str(run_dir), "--format", "chexpert"])
    assert out.exit_code == 2 and "--format describes --data" in out.output


def test_one_epoch_fit_on_a_merge_of_two_layouts(phantom_dir, chexpert_dir, tmp_path):
    from can_tf.config import RunConfig
    from can_tf.training import train

    config = RunConfig.resolve(preset="small", overrides=[
        f"data.sources=[{json.dumps(str(phantom_dir))}, {json.dumps('chexpert:' + str(chexpert_dir))}]",
        "data.image_size=32", "train.epochs=1", f"train.run_dir={json.dumps(str(tmp_path / 'run'))}",
        "train.verbose=0"])
    result = train(config)
    assert result.epochs_run == 1 and np.isfinite(float(result.history[-1]["loss"]))
    text = "".join(p.read_text() for p in (tmp_path / "run" / "splits").iterdir())
    assert "chestxray14/" in text and "chexpert/" in text  # both data sets, patients kept apart by prefix
    data = json.loads((tmp_path / "run" / "provenance.json").read_text())["data"]
    assert data["description"] == f"merge of phantom data at {phantom_dir} (synthetic images); {chexpert_dir}"
    assert data["phantom"] is True  # part of it is synthetic: the model says so wherever it goes
