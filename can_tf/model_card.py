"""Model cards: what a model is, what it learned from, how well it did and where it must not be used.

A card has the sections of the Model Card Toolkit's JSON schema (v0.0.2: ``model_details``,
``model_parameters``, ``quantitative_analysis``, ``considerations``; Mitchell et al., "Model Cards
for Model Reporting", FAT* 2019). Two additions sit where that schema allows them:
``performance_metrics`` entries carry a ``confidence_interval`` (``lower_bound``, ``upper_bound``, as
in the toolkit's later releases) and ``considerations`` has ``out_of_scope_uses`` beside ``use_cases``.

A card is built from what can-tf records, never typed in by hand: the run's provenance (training
data, splits, preset, seeds, versions; a phantom-trained model says so in its overview and first
limitation), and an evaluation folder's ``report.json`` (per-class AUROC with patient-bootstrap
intervals), ``subgroups.json``, ``calibration.json`` and ``operating_points.json`` when they are
there. ``can-tf evaluate`` writes ``model_card.json`` and ``model_card.md`` into its report folder;
every export carries one (SavedModel: ``assets.extra/``; TFLite: beside the file and inside its
metadata), built from the run's latest test-split evaluation, or saying that there is none.

Example:
    >>> from can_tf.config import RunConfig
    >>> from can_tf.provenance import build_provenance
    >>> card = build_model_card(build_provenance(RunConfig.from_preset("small")), name="small")
    >>> card["model_details"]["name"], card["considerations"]["limitations"][0]["description"][:40]
    ('small', "Trained on can-tf's phantom data (synthe")
    >>> model_card_markdown(card).splitlines()[0]
    '# Model card: small'
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Optional, Union

from can_tf.files import atomic_write_text

PathLike = Union[str, os.PathLike]

SCHEMA_VERSION = "0.0.2"
CARD_FILES = {"json": "model_card.json", "markdown": "model_card.md"}
# What an evaluation folder may hold that a card reads (written by can_tf.evaluation.model_evaluation).
EVALUATION_FILES = {"report": "report.json", "subgroups": "subgroups.json", "calibration": "calibration.json",
                    "operating_points": "operating_points.json"}

PAPER = ("Ma C., Wang H., Hoi S.C.H. Multi-label Thoracic Disease Image Classification with Cross-Attention "
         "Networks. MICCAI 2019. arXiv:2007.10859")
PAPER_URL = "https://arxiv.org/abs/2007.10859"
SUBGROUP_REFERENCE = ("Seyyed-Kalantari L. et al. Underdiagnosis bias of artificial intelligence algorithms "
                      "applied to chest radiographs in under-served patient populations. Nature Medicine 2021")


def read_evaluation(folder: Optional[PathLike]) -> dict:
    """``{kind: dict}`` of the evaluation files in ``folder`` (see :data:`EVALUATION_FILES`); missing or
    unreadable ones are left out (a card then says what it lacks)."""
    found = {}
    if folder is None:
        return found
    for kind, name in EVALUATION_FILES.items():
        path = Path(folder) / name
        try:
            found[kind] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return found


def build_model_card(provenance: Optional[dict], *, name: str, evaluation: Optional[dict] = None,
                     export: Optional[str] = None, thresholds=None, temperatures=None) -> dict:
    """The card of one model as a JSON-ready dict.

    Args:
        provenance: the run's record (:func:`can_tf.provenance.build_provenance`), or None when the
            model's origin is unknown (the card says so).
        name: the model's name (run folder, export name).
        evaluation: ``{kind: dict}`` as :func:`read_evaluation` returns; its ``report`` gives the
            quantitative analysis.
        export: what this copy of the model is, e.g. ``"SavedModel version 3"`` or
            ``"TFLite, dynamic-range int8 weights"``.
        thresholds: the :class:`~can_tf.evaluation.thresholds.Thresholds` shipped with the model.
        temperatures: the :class:`~can_tf.evaluation.calibration.Temperatures` baked into it.
    """
    from can_tf import __version__
    from can_tf.provenance import is_phantom, phantom_warning

    evaluation = dict(evaluation or {})
    provenance = provenance or {}
    data, model = provenance.get("data") or {}, provenance.get("model") or {}
    class_names = list(data.get("class_names") or (evaluation.get("report") or {}).get("class_names") or [])
    phantom = is_phantom(provenance)
    kind = model.get("kind")
    backbones = ", ".join(model.get("backbones") or []) or "unknown backbone"
    if kind == "can":
        architecture = (f"Cross-Attention Network (CAN): two branches ({backbones}) whose features are combined "
                        f"by cross-attention, a fused classifier head and one per branch (the fused head is "
                        f"what this model outputs)")
    elif kind == "baseline":
        architecture = f"Single-backbone baseline: {backbones} with one classifier head"
    else:
        architecture = "unknown (no provenance record)"
    overview = (f"Multi-label classifier of {len(class_names)} thoracic findings on frontal chest radiographs "
                f"({', '.join(class_names)}).")
    if phantom:
        overview = phantom_warning(provenance).strip("*") + " " + overview
    recorded = provenance.get("recorded") or datetime.datetime.now(datetime.timezone.utc).isoformat()
    version = {"name": name + (f" ({export})" if export else ""), "date": str(recorded)[:10],
               "diff": f"can-tf {(provenance.get('versions') or {}).get('can_tf', __version__)}"}

    size = model.get("image_size")
    channels = model.get("input_channels")
    input_format = (f"One grayscale chest radiograph, resized to {size}x{size} px inside the model "
                    f"(pixel values 0-255{'; repeated to 3 channels for the backbone' if channels == 3 else ''}).")
    output_format = (f"{len(class_names)} independent probabilities (sigmoid), one per finding, in the order "
                     f"{', '.join(class_names)}.")
    if temperatures is not None:
        output_format += (f" Calibrated by temperature scaling ({temperatures.scope} temperature"
                          f"{'s' if temperatures.scope == 'class' else ''}, fitted on {temperatures.fitted_on}).")
    if thresholds is not None:
        output_format += f" Per-class decision thresholds ({thresholds.method}) ship with the model."

    card = {
        "schema_version": SCHEMA_VERSION,
        "model_details": {
            "name": name,
            "overview": overview,
            "documentation": _documentation(provenance, export),
            "owners": [],
            "version": version,
            "licenses": [{"custom_text": "The weights are subject to the terms of the data they were trained on "
                                         "(see the training data below); can-tf itself is Apache-2.0."}],
            "references": [{"reference": PAPER_URL}],
            "citations": [{"style": "text", "citation": PAPER}],
        },
        "model_parameters": {
            "model_architecture": architecture + (f"; {size} px input" if size else "")
                                  + (f"; backbone weights: {model.get('weights')}" if model else ""),
            "data": _datasets(data, evaluation.get("report")),
            "input_format": input_format,
            "output_format": output_format,
        },
        "quantitative_analysis": _quantitative_analysis(evaluation),
        "considerations": _considerations(provenance, evaluation),
    }
    return card


def _documentation(provenance: dict, export: Optional[str]) -> str:
    from can_tf.provenance import summary_lines

    lines = summary_lines(provenance) or ["- provenance: unknown (the model carries no provenance record)"]
    if export:
        lines.append(f"- this copy: {export}")
    return "\n".join(lines)


def _datasets(data: dict, report: Optional[dict]) -> list:
    counts = data.get("split_counts") or {}
    train = ", ".join(f"{split}: {c['images']} images of {c['patients']} patients" for split, c in counts.items())
    datasets = [{
        "name": "training data",
        "description": (f"{data.get('description') or 'unknown'}"
                        + (f"; {_split_words(data.get('split'))}: {train}" if train else "")
                        + ". Validation images chose the best epoch, the thresholds and the calibration."),
        "sensitive": {"sensitive_data": ["patient age", "patient sex", "patient identifiers (pseudonymised)"]},
    }]
    if report:
        datasets.append({
            "name": "evaluation data",
            "description": (f"{report.get('split')} split"
                            + (f" ({report['split_description']})" if report.get("split_description") else "")
                            + f": {report.get('num_images')} images of {report.get('num_patients')} patients"
                            + (f". {report['external']}" if report.get("external") else "") + "."),
        })
    return datasets


def _split_words(split: Optional[str]) -> str:
    if split == "official":
        return "the publisher's official train/val and test lists, validation patients carved out of train/val"
    return "a seeded random split by patient (no patient in two splits)"


def _metric(kind: str, value, slice_name: str, low=None, high=None, **extra) -> dict:
    entry = {"type": kind, "value": value, "slice": slice_name}
    if low is not None and high is not None:
        entry["confidence_interval"] = {"lower_bound": low, "upper_bound": high}
    entry.update(extra)
    return entry


def _quantitative_analysis(evaluation: dict) -> dict:
    report = evaluation.get("report")
    if not report:
        return {"performance_metrics": [],
                "graphics": {"description": "No evaluation yet: run `can-tf evaluate` on the run for the "
                                            "per-class results, subgroups and calibration.", "collection": []}}
    confidence = (report.get("bootstrap") or {}).get("confidence", 0.95)
    metrics = []
    for row in list(report.get("classes") or []) + [report.get("mean") or {}]:
        for kind in ("auroc", "auprc"):
            if row.get(kind) is not None:
                metrics.append(_metric(kind.upper(), row[kind], row["class"], row.get(f"{kind}_low"),
                                       row.get(f"{kind}_high")))
    for name, point in ((evaluation.get("operating_points") or {}).get("classes") or {}).items():
        for kind in ("sensitivity", "specificity", "ppv", "npv"):
            value = point.get(kind) or {}
            if value.get("point") is not None:
                metrics.append(_metric(kind, value["point"], name, value.get("low"), value.get("high"),
                                       threshold=point.get("threshold")))
    for row in (evaluation.get("subgroups") or {}).get("rows") or []:
        auroc = row.get("auroc") or {}
        if row.get("class") == "Mean" and auroc.get("point") is not None:
            metrics.append(_metric("mean AUROC", auroc["point"], f"{row['attribute']}={row['group']}",
                                   auroc.get("low"), auroc.get("high"), status=row.get("status")))
    calibration = (evaluation.get("calibration") or {}).get("mean") or {}
    for key in ("ece_before", "ece_after"):
        if calibration.get(key) is not None:
            metrics.append(_metric(f"expected calibration error ({key.split('_')[1]} temperature scaling)",
                                   calibration[key], "mean over classes"))
    return {"performance_metrics": metrics,
            "graphics": {"description": f"{round(confidence * 100)}% intervals are percentile intervals of a "
                                        f"patient-level bootstrap; the evaluation's report.html holds the figures.",
                         "collection": []}}


def _considerations(provenance: dict, evaluation: dict) -> dict:
    from can_tf.provenance import is_phantom, phantom_warning

    limitations = []
    if is_phantom(provenance):
        limitations.append(phantom_warning(provenance).strip("*")
                           + " Its numbers describe synthetic images only and say nothing about radiographs.")
    if not provenance:
        limitations.append("The model carries no provenance record: its training data are unknown.")
    limitations += [
        "Labels of public chest X-ray data sets are mined from radiology reports by NLP and are noisy "
        "(the authors of NIH ChestX-ray14 estimated their text-mined labels to be over 90% accurate).",
        "Performance on other hospitals, scanners, populations, lateral views or paediatric patients has not been "
        "shown unless an external evaluation is reported here.",
        "Probabilities are calibrated (when calibrated) on the validation split of the training data; prevalence "
        "elsewhere differs, so PPV and NPV do not transfer.",
    ]
    report = evaluation.get("report") or {}
    undefined = [row["class"] for row in report.get("classes") or [] if str(row.get("status", "")).startswith("undefined")]
    if undefined:
        limitations.append(f"Not measurable on the evaluation data (no positive or no negative): {', '.join(undefined)}.")
    small = sorted({f"{row['attribute']}={row['group']}" for row in (evaluation.get("subgroups") or {}).get("rows") or []
                    if str(row.get("status", "")).startswith("too small")})
    if small:
        limitations.append(f"Subgroups too small to measure for some classes: {', '.join(small)}.")
    if not evaluation.get("subgroups"):
        limitations.append("No subgroup analysis is recorded for this model.")
    return {
        "users": [{"description": "Researchers and engineers in medical imaging studying or benchmarking "
                                  "chest X-ray classifiers."}],
        "use_cases": [{"description": "Research on multi-label thoracic disease classification; comparison with "
                                      "published ChestX-ray14 results; a starting point for models that are then "
                                      "validated on the data where they would be used."}],
        "out_of_scope_uses": [
            {"description": "Diagnosis, triage or any clinical decision about a patient: the model is not a medical "
                            "device and has not been clinically validated."},
            {"description": "Images other than frontal (PA/AP) chest radiographs, or populations unlike the "
                            "training data, without an evaluation on them."},
        ],
        "limitations": [{"description": text} for text in limitations],
        "tradeoffs": [{"description": "The decision thresholds trade sensitivity against specificity as chosen "
                                      "on the validation split (Youden's J by default); a screening use needs "
                                      "thresholds chosen for its own target sensitivity."}],
        "ethical_considerations": [
            {"name": "Under-diagnosis of under-served groups: chest X-ray classifiers have been shown to miss "
                     f"findings more often in some groups by sex, age, race and insurance ({SUBGROUP_REFERENCE}).",
             "mitigation_strategy": "Per-class AUROC by sex, age band and view is reported with intervals; check it "
                                    "on the population of intended use before relying on the model."},
            {"name": "Patient privacy: training images come from pseudonymised public data sets.",
             "mitigation_strategy": "The model file holds weights only, no images or patient identifiers."},
        ],
    }


def model_card_markdown(card: dict) -> str:
    """The card as Markdown, section by section."""
    details, parameters = card.get("model_details") or {}, card.get("model_parameters") or {}
    analysis, considerations = card.get("quantitative_analysis") or {}, card.get("considerations") or {}
    lines = [f"# Model card: {details.get('name')}", "", details.get("overview", ""), ""]
    lines += ["## Model details", "", details.get("documentation", ""), ""]
    version = details.get("version") or {}
    lines += [f"- version: {version.get('name')}, {version.get('date')} ({version.get('diff')})"]
    for license_ in details.get("licenses") or []:
        lines.append(f"- license: {license_.get('identifier') or license_.get('custom_text')}")
    for citation in details.get("citations") or []:
        lines.append(f"- cite: {citation.get('citation')}")
    lines += ["", "## Model parameters", "", f"- architecture: {parameters.get('model_architecture')}",
              f"- input: {parameters.get('input_format')}", f"- output: {parameters.get('output_format')}"]
    for dataset in parameters.get("data") or []:
        lines.append(f"- {dataset.get('name')}: {dataset.get('description')}")
    lines += ["", "## Intended use", ""]
    lines += [f"- {u['description']}" for u in considerations.get("users") or []]
    lines += [f"- {u['description']}" for u in considerations.get("use_cases") or []]
    lines += ["", "Out of scope:", ""] + [f"- {u['description']}" for u in considerations.get("out_of_scope_uses") or []]
    lines += ["", "## Quantitative analysis", ""]
    metrics = analysis.get("performance_metrics") or []
    if metrics:
        lines += ["| Metric | Slice | Value [interval] |", "|---|---|---:|"]
        for metric in metrics:
            interval = metric.get("confidence_interval")
            shown = f"{metric['value']:.3f}"
            if interval:
                shown += f" [{interval['lower_bound']:.3f}, {interval['upper_bound']:.3f}]"
            lines.append(f"| {metric['type']} | {metric['slice']} | {shown} |")
    lines += ["", (analysis.get("graphics") or {}).get("description", ""), ""]
    lines += ["## Limitations", ""] + [f"- {x['description']}" for x in considerations.get("limitations") or []]
    lines += ["", "## Trade-offs", ""] + [f"- {x['description']}" for x in considerations.get("tradeoffs") or []]
    lines += ["", "## Ethical considerations", ""]
    for risk in considerations.get("ethical_considerations") or []:
        lines.append(f"- {risk['name']} Mitigation: {risk['mitigation_strategy']}")
    return "\n".join(lines) + "\n"


def model_card_text(card: dict) -> str:
    """The card as JSON text (what ``model_card.json`` holds)."""
    return json.dumps(card, indent=2, allow_nan=False) + "\n"


def write_model_card(folder: PathLike, card: dict, stem: str = "model_card") -> dict:
    """Writes ``<stem>.json`` and ``<stem>.md`` into ``folder`` (atomically); ``{kind: path}``."""
    folder = Path(folder)
    return {"json": atomic_write_text(folder / f"{stem}.json", model_card_text(card)),
            "markdown": atomic_write_text(folder / f"{stem}.md", model_card_markdown(card))}


def card_for_run(run_dir: Optional[PathLike], provenance: Optional[dict], *, name: str, export: Optional[str] = None,
                 thresholds=None, temperatures=None) -> dict:
    """The card an export carries: from the run's test-split evaluation (``<run>/eval/test/``) when it
    has one."""
    folder = Path(run_dir) / "eval" / "test" if run_dir is not None else None
    return build_model_card(provenance, name=name, evaluation=read_evaluation(folder), export=export,
                            thresholds=thresholds, temperatures=temperatures)
