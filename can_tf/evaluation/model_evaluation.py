"""Evaluating a saved model end to end: data, split, predictions, report, thresholds.

:func:`evaluate_model` is what ``can-tf evaluate`` runs. Given a run directory it needs nothing
else: the run's ``config.yaml`` names the data and the split files under ``splits/`` say which
images are test and validation images. Any other model format (``.keras``, SavedModel, TFLite) is
evaluated through :class:`can_tf.predictor.Predictor` on ``data``, so an export can be checked on
exactly the numbers its run reported.

Images reach the model through the training pipeline (:func:`can_tf.data.pipeline.make_dataset`
with ``training=False``), so evaluation sees the same pixels as training did.

Per-class thresholds (Youden's J or a target sensitivity) are chosen on the **validation** split,
never on the split being reported, and saved as ``thresholds.json`` into the run directory (or
beside a ``.keras`` file), where ``predict`` and ``export`` pick them up.

Example:
    >>> from can_tf.evaluation.model_evaluation import evaluate_model
    >>> result = evaluate_model("runs/small-1a2b3c4d", n_boot=200)  # doctest: +SKIP
    >>> result.report.metrics.mean_auroc, result.thresholds_path  # doctest: +SKIP
    (0.93, PosixPath('runs/small-1a2b3c4d/thresholds.json'))
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from can_tf.evaluation.metrics import EvaluationError

SPLITS = ("test", "val", "train", "all")
PathLike = Union[str, os.PathLike]


def parse_threshold_method(text: str) -> tuple:
    """``"youden"`` / ``"sensitivity:0.9"`` / ``"none"`` -> ``(method or None, target)``.

    Example:
        >>> parse_threshold_method("sensitivity:0.95")
        ('sensitivity', 0.95)
    """
    text = (text or "none").strip().lower()
    if text == "none":
        return None, None
    if text == "youden":
        return "youden", None
    if text.startswith("sensitivity"):
        _, _, value = text.partition(":")
        try:
            target = float(value) if value else 0.9
        except ValueError:
            target = float("nan")
        if not 0.0 < target <= 1.0:
            raise EvaluationError(f"--thresholds {text!r}: the target sensitivity must be a number in (0, 1], "
                                  f"e.g. sensitivity:0.9")
        return "sensitivity", target
    raise EvaluationError(f"--thresholds must be youden, sensitivity:<target> or none; got {text!r}")


CALIBRATION_MODES = ("class", "global", "off")
FIGURE_FORMATS = ("svg", "pdf", "png")
# The search range of the temperatures: beyond it a validation split is separating a class, not
# telling how confident the model should be.
TEMPERATURE_BOUNDS = (0.05, 20.0)


@dataclasses.dataclass
class ModelEvaluation:
    """What :func:`evaluate_model` produced."""

    report: object  # can_tf.evaluation.report.EvaluationReport
    files: dict  # kind -> path of the report files written
    split: str
    num_images: int
    thresholds: Optional[object] = None  # Thresholds chosen on the validation split
    thresholds_path: Optional[Path] = None
    notes: list = dataclasses.field(default_factory=list)
    temperatures: Optional[object] = None  # Temperatures fitted on the validation split (or the run's)
    calibration_path: Optional[Path] = None  # where fitted temperatures were saved
    calibration: Optional[object] = None  # CalibrationSummary of the evaluated split
    subgroups: Optional[object] = None  # SubgroupAnalysis
    operating_points: Optional[object] = None  # OperatingPoints at the thresholds

    @property
    def html_path(self) -> Optional[Path]:
        return self.files.get("html")


def predict_table(predictor, df, class_names: Sequence[str], batch_size: int = 32,
                  on_batch: Optional[Callable[[int], None]] = None) -> tuple:
    """``(labels (N, C), probabilities (N, C))`` for the rows of ``df``, in row order, through the
    training pipeline's evaluation path."""
    from can_tf.data.pipeline import make_dataset

    dataset = make_dataset(df, list(class_names), predictor.image_size, batch_size, training=False,
                           deterministic=True, aspect=predictor.aspect, max_pixels=predictor.max_pixels)
    from can_tf.data.packed import shard_read_errors_named

    labels, probs = [], []
    with shard_read_errors_named(df.attrs):
        for images, y in dataset:
            probs.append(predictor.predict(images.numpy()))
            labels.append(y.numpy())
            if on_batch is not None:
                on_batch(len(y))
    if not probs:
        raise EvaluationError("no images to evaluate")
    return np.concatenate(labels), np.concatenate(probs)


def evaluate_model(
    model: PathLike,
    *,
    data: Optional[str] = None,
    split: Optional[str] = None,
    n_boot: int = 1000,
    out_dir: Optional[PathLike] = None,
    references=(),
    thresholds: str = "youden",
    calibration: str = "class",
    subgroups: Sequence[str] = (),
    gallery: int = 6,
    figures: Sequence[str] = ("svg", "pdf"),
    batch_size: int = 32,
    seed: int = 0,
    on_batch: Optional[Callable[[int], None]] = None,
    data_overrides: Sequence[str] = (),
) -> ModelEvaluation:
    """Evaluates ``model`` and writes the report: Markdown, CSV, JSON, a self-contained HTML page,
    figures (SVG, PDF), the subgroup, calibration and operating-point tables, and a model card.

    Args:
        model: a run directory, ``.keras`` file, SavedModel folder or ``.tflite`` file.
        data: a data source (as ``data.source`` of the config); default: the run's own data.
            Required when ``model`` is not inside a run directory.
        split: ``test``, ``val``, ``train`` or ``all``; default ``test`` on the run's own data and
            ``all`` on other data (an external test set).
        n_boot: patient-bootstrap replicates for the confidence intervals.
        out_dir: report folder; default ``<run>/eval/<split>`` for a run, else
            ``eval-<model name>-<split>``.
        references: published results to show beside ours (see :class:`EvaluationReport`).
        thresholds: ``youden``, ``sensitivity:<target>`` or ``none``; chosen on the val split.
        calibration: temperature scaling fitted on the val split and saved with the model
            (``calibration.json``, applied by ``predict`` and baked into exports): ``class`` (one
            temperature per class), ``global`` (one for all) or ``off`` (the model's own
            probabilities; a saved calibration is removed). Only a Keras model on its run's own data
            is calibrated; other evaluations report the probabilities the model gives.
        subgroups: metadata columns to analyse besides sex, age band and view.
        gallery: heat maps in the HTML report (Keras models only; 0 for none).
        figures: formats of the figures written to ``figures/`` (``svg``, ``pdf``, ``png``); empty
            for none (the HTML page then says so in place of each figure; drawing 14-class grids is
            most of an evaluation's time on a small data set).
        batch_size: images per forward pass.
        on_batch: progress callback, called with the number of images of each batch.
        data_overrides: ``data.field=value`` strings applied to the data config as in ``fit``
            (e.g. ``data.image_root=/data/images``, ``data.views=[PA]``).
    """
    from can_tf.config import RunConfig
    from can_tf.data.label_space import composite_probabilities
    from can_tf.data.splits import make_splits, read_splits
    from can_tf.data.table import load_table
    from can_tf.evaluation.calibration import fit_temperature
    from can_tf.evaluation.report import EvaluationReport
    from can_tf.evaluation.subgroups import DEFAULT_ATTRIBUTES, subgroup_columns
    from can_tf.evaluation.thresholds import choose_thresholds
    from can_tf.predictor import CALIBRATION_FILE, CONFIG_FILE, Predictor, find_metadata, model_format
    from can_tf.run import read_config, read_temperatures, run_of_model

    method, target = parse_threshold_method(thresholds)
    if split is not None and split not in SPLITS:
        raise EvaluationError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    figures = tuple(figures)
    unknown = [f for f in figures if f not in FIGURE_FORMATS]
    if unknown:
        raise EvaluationError(f"--figures: unknown format(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(FIGURE_FORMATS)} or none")
    if calibration not in CALIBRATION_MODES:
        raise EvaluationError(f"--calibration must be one of {', '.join(CALIBRATION_MODES)}; got {calibration!r}")
    model = Path(model)
    fmt = model_format(model)
    run = run_of_model(model) if fmt in ("run", "keras") else None
    run_dir = run.root if run is not None and run.splits.is_dir() else None
    config_path = run.config_path if run is not None else find_metadata(model, CONFIG_FILE)
    if config_path is not None:
        config = read_config(config_path)
    elif data is None:
        raise EvaluationError(f"{model} carries no {CONFIG_FILE} naming its data; give --data")
    else:
        config = RunConfig.from_preset("small")
    # The model's own probabilities: temperatures are fitted on them and applied here.
    predictor = Predictor.load(model, use_thresholds=True, use_calibration=False)
    saved_thresholds, predictor.thresholds = predictor.thresholds, None
    keras_model = fmt in ("run", "keras")
    calibration_path = None
    if keras_model:
        calibration_path = run.calibration_path if run is not None else model.parent / CALIBRATION_FILE
    if run is not None:
        run.lock()  # its report and thresholds are written into the run: not while it trains
    try:
        own_data = data is None or (config.data.source is not None and
                                    os.path.abspath(data) == os.path.abspath(config.data.source))
        if data is not None:
            config.data.source, config.data.format, config.data.label_file = data, "auto", None
            config.data.sources, config.data.options = [], {}  # the run's own data's reader options
            config.data.split_dir = None
        config = _with_data_overrides(config, data_overrides)
        config.data.image_size = predictor.image_size
        split = split or ("test" if own_data else "all")
        notes = []
        if predictor.warning and not own_data:
            notes.append(predictor.warning)

        external = None
        if not own_data:
            external = _external_classes(config.data, predictor.class_names)
            if external is not None:
                config.data.class_names = list(external.compared)
                notes.append(external.sentence)
        df, class_names = load_table(config.data)
        wanted = list(external.compared) if external is not None else list(predictor.class_names)
        if list(class_names) != wanted:
            raise EvaluationError(f"the data's classes {class_names} differ from the model's {predictor.class_names}")
        if own_data and run_dir is not None and (run_dir / "splits").is_dir():
            splits = read_splits(run_dir / "splits", df, subset=bool(data_overrides))
            notes.append(f"splits read from {run_dir / 'splits'}")
        elif split == "all":
            splits = {}
        else:
            splits = make_splits(df, config.data, allow_empty=("test", "val", "train"))
            notes.append(f"splits made from the config ({config.data.split} split, seed {config.data.seed})")
        if method and not own_data:
            # Thresholds belong to the model's own validation data; other data must not replace them.
            method = None
            notes.append("thresholds not chosen: --data is not the run's own data")
        splits = dict(splits)
        splits["all"] = df
        evaluated = splits[split]
        if len(evaluated) == 0:
            raise EvaluationError(f"the {split} split is empty")

        # Before any prediction: a subgroup column that is not there is the user's error, found at once.
        attributes = list(DEFAULT_ATTRIBUTES) + [c for c in subgroups if c not in DEFAULT_ATTRIBUTES]
        groups = subgroup_columns(evaluated, attributes)
        y_true, y_raw = predict_table(predictor, evaluated, class_names, batch_size, on_batch)
        val = splits.get("val")
        has_val = val is not None and len(val) > 0
        val_raw = None

        def val_predictions():
            nonlocal val_raw
            if val_raw is None:
                val_raw = (y_true, y_raw) if split == "val" else predict_table(predictor, val, class_names,
                                                                               batch_size, on_batch)
            return val_raw

        # ---- calibration: fitted on val, saved with the model, applied to what is reported ----
        temperatures, fitted, remove_calibration = None, False, False
        if keras_model and own_data and external is None and calibration != "off" and has_val:
            y_val, p_val = val_predictions()
            temperatures = fit_temperature(y_val, p_val, class_names, scope=calibration,
                                           fitted_on=f"the val split, {len(val)} images", bounds=TEMPERATURE_BOUNDS)
            fitted = True
            at_bound = [name for name, t in zip(class_names, temperatures.values) if name not in temperatures.fallback
                        and not TEMPERATURE_BOUNDS[0] * 1.01 < t < TEMPERATURE_BOUNDS[1] / 1.01]
            if temperatures.fallback:
                notes.append(f"{len(temperatures.fallback)} class(es) lack a positive or a negative validation label "
                             f"and share the pooled temperature: {', '.join(temperatures.fallback)}")
            if at_bound:
                notes.append(f"temperature at the end of its range {TEMPERATURE_BOUNDS} for {', '.join(at_bound)}: "
                             f"the val split (nearly) separates these classes, so their calibration rests on few "
                             f"images; --calibration global shares one temperature")
        elif keras_model and own_data and calibration == "off":
            if calibration_path.is_file():
                remove_calibration = True  # once the report is written: a failed evaluation keeps it
                notes.append(f"calibration off: {calibration_path} removed; predict gives the model's own "
                             f"probabilities")
        elif keras_model and calibration_path.is_file():
            temperatures = read_temperatures(calibration_path, predictor.class_names)
            notes.append(f"probabilities calibrated with the run's temperatures ({calibration_path})")
        elif keras_model and own_data and not has_val:
            notes.append("calibration not fitted: no validation split")
        y_prob = y_raw if temperatures is None else temperatures.apply(y_raw)
        if external is not None:  # the model's outputs for the compared classes (composites: largest part)
            y_prob = composite_probabilities(y_prob, predictor.class_names, class_names)
            y_raw = composite_probabilities(y_raw, predictor.class_names, class_names)
            if temperatures is not None and list(temperatures.class_names) != list(class_names):
                temperatures = None  # applied above, per model class; the compared classes have none of their own

        # ---- thresholds: chosen on the (calibrated) val probabilities ----
        chosen, thresholds_path = None, None
        if method:
            if not has_val:
                notes.append("thresholds not chosen: no validation split")
            else:
                y_val, p_val = val_predictions()
                if temperatures is not None:
                    p_val = temperatures.apply(p_val)
                chosen = choose_thresholds(y_val, p_val, class_names, method=method,
                                           target_sensitivity=target if target is not None else 0.9)
                if fallback := chosen.fallback:
                    notes.append(f"{len(fallback)} class(es) had no usable validation labels and use 0.5: "
                                 f"{', '.join(fallback)}")
        elif fitted and saved_thresholds is not None:
            notes.append("the saved thresholds were not chosen again (--thresholds none); if they were chosen "
                         "before this calibration, choose them again")
        operating = chosen if chosen is not None else (saved_thresholds if external is None else None)

        report = EvaluationReport(
            y_true, y_prob, evaluated["patient_id"].astype(str).to_numpy(), class_names, split=split,
            model_name=_model_name(model, fmt), split_description=_split_description(config.data, split, own_data),
            n_boot=n_boot, seed=seed, references=references, provenance=predictor.provenance,
            external=external.sentence if external is not None else None,
        )
        analyses = _analyses(report, evaluated, y_raw, temperatures, operating, groups, notes)
        if gallery and keras_model:
            analyses["gallery"] = _gallery(predictor, evaluated, y_true, y_prob, gallery, notes)
        elif gallery:
            notes.append("no heat-map gallery: heat maps need the Keras model (a run directory or .keras file)")
        if out_dir is None:
            out_dir = (run_dir / "eval" / split) if run_dir is not None else Path(f"eval-{_model_name(model, fmt)}-{split}")
        files = report.save(out_dir, overwrite=True,
                            extra_files=_report_files(report, analyses, predictor, chosen or operating, temperatures,
                                                      figures))

        # The model's files last, once its report is in place: predict picks them up.
        if fitted:
            temperatures.to_json(calibration_path)
        elif remove_calibration:
            calibration_path.unlink(missing_ok=True)
        if chosen is not None:
            # Where `predict` looks: the run, the .keras file's folder; an export is never modified
            # in place, so its thresholds go to the report folder.
            if run is not None:
                thresholds_path = run.thresholds_path
            elif fmt == "keras":
                thresholds_path = model.parent / "thresholds.json"
            else:
                thresholds_path = Path(out_dir) / "thresholds.json"
            chosen.to_json(thresholds_path)
        return ModelEvaluation(report=report, files=files, split=split, num_images=len(evaluated),
                               thresholds=chosen, thresholds_path=thresholds_path, notes=notes,
                               temperatures=temperatures, calibration_path=calibration_path if fitted else None,
                               calibration=analyses["calibration"], subgroups=analyses["subgroups"],
                               operating_points=analyses["operating_points"])
    finally:
        if run is not None:
            run.unlock()


def _analyses(report, evaluated, y_raw, temperatures, thresholds, groups, notes) -> dict:
    """Calibration, subgroups and operating points of the evaluated split (the same patients,
    bootstrap settings and probabilities as ``report``)."""
    from can_tf.evaluation.calibration import calibration_summary
    from can_tf.evaluation.operating_points import operating_points
    from can_tf.evaluation.subgroups import subgroup_metrics

    patients = evaluated["patient_id"].astype(str).to_numpy()
    analyses = {"calibration": calibration_summary(report.y_true, y_raw, report.y_prob, report.class_names,
                                                   temperatures=temperatures)}
    analyses["subgroups"] = subgroup_metrics(report.y_true, report.y_prob, patients, report.class_names, groups,
                                             n_boot=report.n_boot, seed=report.seed, confidence=report.confidence)
    analyses["operating_points"] = None
    if thresholds is not None:
        analyses["operating_points"] = operating_points(
            report.y_true, report.y_prob, patients, report.class_names, list(thresholds.values),
            n_boot=report.n_boot, seed=report.seed, confidence=report.confidence)
    else:
        notes.append("no operating points: the model has no thresholds (choose them with --thresholds youden)")
    return analyses


def _gallery(predictor, evaluated, y_true, y_prob, limit: int, notes: list) -> list:
    from can_tf.explanation.gallery import gallery_items

    try:
        return gallery_items(predictor, list(evaluated["path"]), y_true, y_prob, limit=limit)
    except Exception as e:  # a report without heat maps beats no report
        notes.append(f"no heat-map gallery: {type(e).__name__}: {e}")
        return []


def _report_files(report, analyses: dict, predictor, thresholds, temperatures, figure_formats=FIGURE_FORMATS) -> dict:
    """``{kind: (relative path, content)}`` of the files written beside report.md."""
    import json

    from can_tf.evaluation.figures import figure_bytes, forest_plot, inline_svg, pr_grid, reliability_grid, roc_grid
    from can_tf.evaluation.html_report import render_html
    from can_tf.model_card import build_model_card, model_card_markdown, model_card_text

    def as_json(value: dict) -> str:
        return json.dumps(value, indent=2, allow_nan=False) + "\n"

    calibration, subgroups, points = analyses["calibration"], analyses["subgroups"], analyses["operating_points"]
    files = {"calibration": ("calibration.json", as_json(calibration.to_dict())),
             "calibration_markdown": ("calibration.md", calibration.to_markdown()),
             "subgroups": ("subgroups.json", as_json(subgroups.to_dict())),
             "subgroups_markdown": ("subgroups.md", subgroups.to_markdown())}
    if points is not None:
        files["operating_points"] = ("operating_points.json", as_json(points.to_dict()))
        files["operating_points_markdown"] = ("operating_points.md", points.to_markdown())
    patients = report.patient_ids
    threshold_values = None if thresholds is None else list(thresholds.values)
    drawers = {
        "roc": lambda: roc_grid(report.y_true, report.y_prob, patients, report.class_names,
                                thresholds=threshold_values, seed=report.seed, confidence=report.confidence),
        "pr": lambda: pr_grid(report.y_true, report.y_prob, patients, report.class_names,
                              thresholds=threshold_values, seed=report.seed, confidence=report.confidence),
        "calibration": lambda: reliability_grid(calibration.to_dict()),
        "forest": lambda: forest_plot(subgroups.to_dict()),
    }
    svgs = {}
    for name, draw in drawers.items():  # SVG and PDF for papers; the same SVG inlined in the HTML page
        if not figure_formats:
            svgs[name] = "figures not drawn (--figures none)"
            continue
        figure = draw()
        svg = figure_bytes(figure, "svg")
        svgs[name] = inline_svg(svg.decode("utf-8"))
        for fmt in figure_formats:
            content = svg if fmt == "svg" else figure_bytes(figure, fmt)
            files[f"figure_{name}_{fmt}"] = (f"figures/{name}.{fmt}", content)
    evaluation = {"report": report.to_dict(), "calibration": calibration.to_dict(), "subgroups": subgroups.to_dict()}
    if points is not None:
        evaluation["operating_points"] = points.to_dict()
    card = build_model_card(predictor.provenance, name=report.model_name, evaluation=evaluation,
                            thresholds=thresholds, temperatures=temperatures)
    files["model_card"] = ("model_card.json", model_card_text(card))
    files["model_card_markdown"] = ("model_card.md", model_card_markdown(card))
    files["html"] = ("report.html", render_html(
        evaluation["report"], figures=svgs, calibration=evaluation["calibration"], subgroups=evaluation["subgroups"],
        operating_points=evaluation.get("operating_points"), gallery=analyses.get("gallery") or (),
        model_card=card))
    return files


@dataclasses.dataclass
class ExternalClasses:
    """What an evaluation on another data set's labels compares: the classes both have (or that the
    model's outputs compose), and why the model's other classes are left out."""

    dataset: str
    source: str
    compared: list
    not_compared: dict

    @property
    def sentence(self) -> str:
        by_reason = {}
        for name, why in self.not_compared.items():
            by_reason.setdefault(why, []).append(name)
        left_out = "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())
        return (f"on {self.dataset} data ({self.source}), {len(self.compared)} class(es) compared: "
                f"{', '.join(self.compared)}" + (f". Not compared: {left_out}" if left_out else "") + ".")


def _external_classes(data_config, model_classes) -> Optional[ExternalClasses]:
    """For another data set in a publisher's layout, the classes its labels can score; None for a
    plain CSV (its columns must be the model's classes)."""
    from can_tf.data.label_space import DATASET_LABELS, comparable_classes
    from can_tf.data.table import resolve_source

    if data_config.sources:
        return None
    dataset, _, _ = resolve_source(data_config.source, data_config.format, data_config.label_file)
    if dataset not in DATASET_LABELS:
        return None
    compared, not_compared = comparable_classes(model_classes, dataset)
    if not compared:
        raise EvaluationError(f"{dataset} data at {data_config.source} labels none of the model's classes "
                              f"({', '.join(model_classes)})")
    return ExternalClasses(dataset, str(data_config.source), compared, not_compared)


def _model_name(model: Path, fmt: str) -> str:
    if fmt == "run":
        return model.resolve().name
    if fmt == "saved_model" and model.name.isdigit():
        return f"{model.parent.name}-v{model.name}"
    return model.stem if model.suffix else model.name


def _split_description(data_config, split: str, own_data: bool) -> str:
    if not own_data or split == "all":
        return f"all images of {data_config.source}" if split == "all" else f"{split} split of {data_config.source}"
    if data_config.split == "official":
        return "official split (train_val_list.txt / test_list.txt)"
    fractions = "/".join(f"{round(100 * f)}" for f in data_config.split_fractions)
    return f"random {fractions} patient split, seed {data_config.seed}"


def _with_data_overrides(config, overrides: Sequence[str]):
    """``config`` with ``data.*`` overrides applied; any other section is refused by name."""
    from can_tf.config import ConfigError

    for item in overrides:
        if not item.strip().startswith("data."):
            raise ConfigError(f"override {item!r}: only data.* fields apply here (the model is already trained)")
    if not overrides:
        return config
    updated = config.with_overrides(list(overrides))
    updated.data.validate()
    return updated
