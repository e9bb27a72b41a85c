"""Model cards: the Model Card Toolkit's sections, filled from provenance and an evaluation, never by hand."""

from __future__ import annotations

import json

import pytest

from can_tf.config import RunConfig
from can_tf.model_card import (build_model_card, card_for_run, model_card_markdown, model_card_text,
                               read_evaluation, write_model_card)
from can_tf.provenance import PHANTOM_WARNING, build_provenance

# The top-level properties and the per-section keys of the toolkit's v0.0.2 JSON schema
# (model_card_toolkit/schema/v0.0.2/model_card.schema.json; top level has additionalProperties: false).
SCHEMA_TOP = {"schema_version", "model_details", "model_parameters", "quantitative_analysis", "considerations"}
SCHEMA_SECTIONS = {
    "model_details": {"name", "overview", "documentation", "owners", "version", "licenses", "references", "citations"},
    "model_parameters": {"model_architecture", "data", "input_format", "output_format"},
    "quantitative_analysis": {"performance_metrics", "graphics"},
    "considerations": {"users", "use_cases", "limitations", "tradeoffs", "ethical_considerations"},
}


def _report(classes=("Edema", "Mass")) -> dict:
    rows = [{"class": name, "auroc": 0.8 + i / 100, "auroc_low": 0.7, "auroc_high": 0.9, "auprc": 0.3,
             "auprc_low": 0.2, "auprc_high": 0.4, "status": "ok"} for i, name in enumerate(classes)]
    rows.append({"class": "Hernia", "auroc": None, "auroc_low": None, "auroc_high": None, "auprc": None,
                 "auprc_low": None, "auprc_high": None, "status": "undefined: no positives"})
    return {"split": "test", "split_description": "random 70/10/20 patient split, seed 0", "num_images": 40,
            "num_patients": 20, "class_names": list(classes) + ["Hernia"], "external": None,
            "bootstrap": {"confidence": 0.95},
            "classes": rows, "mean": {"class": "Mean", "auroc": 0.805, "auroc_low": 0.75, "auroc_high": 0.86,
                                      "auprc": 0.3, "auprc_low": 0.2, "auprc_high": 0.4}}


def test_phantom_card_has_the_schema_sections_and_says_phantom_first():
    provenance = build_provenance(RunConfig.from_preset("small"))
    card = build_model_card(provenance, name="small-run")
    assert set(card) == SCHEMA_TOP
    for section, keys in SCHEMA_SECTIONS.items():
        assert keys <= set(card[section]), section
    assert card["schema_version"] == "0.0.2"
    warning = PHANTOM_WARNING.strip("*")
    assert card["model_details"]["overview"].startswith(warning)
    assert card["considerations"]["limitations"][0]["description"].startswith(warning)
    assert card["model_parameters"]["data"][0]["description"].startswith("built-in phantom")
    assert card["considerations"]["out_of_scope_uses"]
    # No evaluation: no numbers, and the card says how to get them.
    assert card["quantitative_analysis"]["performance_metrics"] == []
    assert "can-tf evaluate" in card["quantitative_analysis"]["graphics"]["description"]
    json.loads(model_card_text(card))


def test_card_metrics_come_from_the_evaluation_with_intervals():
    provenance = build_provenance(RunConfig.from_preset("small"))
    subgroups = {"rows": [
        {"attribute": "sex", "group": "F", "class": "Mean", "auroc": {"point": 0.7, "low": 0.6, "high": 0.8},
         "status": "mean over 2 of 3 classes"},
        {"attribute": "sex", "group": "M", "class": "Edema", "auroc": {"point": 0.9, "low": 0.5, "high": 1.0},
         "status": "too small: 2 positives, 30 negatives (needs 5 of each)"}]}
    calibration = {"mean": {"ece_before": 0.2, "ece_after": 0.05, "num_classes": 2}}
    card = build_model_card(provenance, name="m", evaluation={"report": _report(), "subgroups": subgroups,
                                                              "calibration": calibration})
    metrics = card["quantitative_analysis"]["performance_metrics"]
    by_key = {(m["type"], m["slice"]): m for m in metrics}
    assert by_key[("AUROC", "Mass")]["value"] == pytest.approx(0.81)
    assert by_key[("AUROC", "Mass")]["confidence_interval"] == {"lower_bound": 0.7, "upper_bound": 0.9}
    assert by_key[("AUROC", "Mean")]["value"] == 0.805
    assert ("AUROC", "Hernia") not in by_key  # undefined: no number ...
    limitations = " ".join(x["description"] for x in card["considerations"]["limitations"])
    assert "Hernia" in limitations  # ... but said so
    assert "sex=M" in limitations  # the too-small subgroup is named
    assert by_key[("mean AUROC", "sex=F")]["confidence_interval"]["lower_bound"] == 0.6
    assert by_key[("expected calibration error (after temperature scaling)", "mean over classes")]["value"] == 0.05
    evaluation = card["model_parameters"]["data"][1]
    assert evaluation["name"] == "evaluation data" and "40 images of 20 patients" in evaluation["description"]
    text = model_card_markdown(card)
    assert "| AUROC | Mass | 0.810 [0.700, 0.900] |" in text
    assert "Out of scope:" in text and "## Ethical considerations" in text


def test_card_for_run_reads_the_test_evaluation(tmp_path):
    folder = tmp_path / "eval" / "test"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(_report()))
    (folder / "subgroups.json").write_text("{not json")  # unreadable: left out, not fatal
    assert set(read_evaluation(folder)) == {"report"}
    card = card_for_run(tmp_path, None, name="can", export="SavedModel version 1")
    assert card["model_details"]["version"]["name"] == "can (SavedModel version 1)"
    assert "no provenance record" in card["considerations"]["limitations"][0]["description"]
    assert card["quantitative_analysis"]["performance_metrics"]
    files = write_model_card(tmp_path / "out", card)
    assert json.loads(files["json"].read_text()) == card
    assert files["markdown"].read_text().startswith("# Model card: can")
