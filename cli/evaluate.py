"""``can-tf evaluate``: per-class AUROC/AUPRC with patient-bootstrap CIs, ROC curves, thresholds."""

from __future__ import annotations

import json

import click


@click.command("evaluate")
@click.argument("model", metavar="RUN_DIR_OR_MODEL", type=click.Path(exists=True))
@click.option("--data", default=None,
              help="Data to evaluate on: a folder or label file of ChestX-ray14, CheXpert, MIMIC-CXR-JPG, PadChest, "
                   "VinDr-CXR, NIH-Google, or a CSV. Default: the run's own data. Another data set's labels are "
                   "compared on the classes both share (an external evaluation).")
@click.option("--format", "data_format", default=None, metavar="FORMAT",
              help="Layout of --data (data.format): auto (default), chestxray14, csv, chexpert, mimic, padchest, "
                   "vindr, nih-google.")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default=None,
              help="Split to report. Default: test on the run's own data, all on other --data.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap replicates (resampled by patient) for the 95% confidence intervals.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Report folder. Default: <run>/eval/<split>.")
@click.option("--references", is_flag=True,
              help="Show published ChestX-ray14 AUROCs beside ours, each labelled with its split.")
@click.option("--thresholds", "thresholds", default="youden", show_default=True,
              help="Per-class thresholds chosen on the val split and saved with the model for predict: "
                   "youden, sensitivity:0.9 (any target) or none.")
@click.option("--calibration", type=click.Choice(["class", "global", "off"]), default="class", show_default=True,
              help="Temperature scaling fitted on the val split and saved with the model (predict applies it, "
                   "exports bake it in): one temperature per class, one for all, or off.")
@click.option("--subgroups", "subgroups", default="", metavar="COLUMNS",
              help="Metadata columns to analyse besides sex, age band and view, comma-separated.")
@click.option("--gallery", type=click.IntRange(min=0), default=6, show_default=True,
              help="Grad-CAM heat maps in the HTML report (Keras models; 0 for none).")
@click.option("--figures", default="svg,pdf", show_default=True, metavar="FORMATS",
              help="Formats of the figures in figures/ (svg, pdf, png, comma-separated), or none.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--image-root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder holding the images (data.image_root), as for fit.")
@click.option("--set", "overrides", multiple=True, metavar="data.FIELD=VALUE",
              help="Override a data field as in fit, e.g. --set data.views=[PA] (repeatable).")
def evaluate(model, data, data_format, split, n_boot, out_dir, references, thresholds, calibration, subgroups, gallery,
             figures, batch_size, seed, image_root, overrides):
    """Evaluate a run (or any saved model) per class, like the paper's table.

    \b
    Examples:
      can-tf evaluate runs/small-1a2b3c4d
      can-tf evaluate runs/paper --references --thresholds sensitivity:0.9
      can-tf evaluate exports/tflite/can_dynamic.tflite --data /data/ChestX-ray14 --split all
      can-tf evaluate runs/paper --data /data/ChestX-ray14 --image-root /data/ChestX-ray14/images_001
      can-tf evaluate runs/paper --data /data/CheXpert-v1.0-small --split val     # external validation
    A run group (a folder of `fit --seeds`): every finished member is evaluated with these options,
    then <group>/eval/<split>/seeds.md and seeds.json summarise AUROC and AUPRC over the seeds.
    Writes report.html (self-contained: tables, ROC/PR curves, calibration, subgroups, heat maps),
    report.md/.csv/.json, figures/ (SVG, PDF), subgroups, calibration and operating points
    (.md/.json) and model_card.json/.md; thresholds and calibration go to <run>/thresholds.json
    and <run>/calibration.json.
    """
    from can_tf.config import ConfigError
    from can_tf.evaluation.metrics import EvaluationError
    from can_tf.evaluation.model_evaluation import evaluate_model, parse_threshold_method

    flags = list(overrides)
    if image_root is not None:
        flags.insert(0, f"data.image_root={json.dumps(image_root)}")
    if data_format is not None:
        if data is None:
            raise click.UsageError("--format describes --data; give --data too")
        flags.insert(0, f"data.format={json.dumps(data_format)}")
    try:
        parse_threshold_method(thresholds)
    except EvaluationError as e:
        raise click.BadParameter(str(e), param_hint="--thresholds") from None
    from can_tf.run_group import is_group

    options = dict(data=data, split=split, n_boot=n_boot, references="all" if references else (),
                   thresholds=thresholds, calibration=calibration,
                   subgroups=[c.strip() for c in subgroups.split(",") if c.strip()], gallery=gallery,
                   figures=_formats(figures), batch_size=batch_size, seed=seed, data_overrides=flags)
    try:
        if is_group(model):
            return _evaluate_group(model, out_dir, options)
        result = evaluate_model(model, out_dir=out_dir, **options)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    # Other can_tf errors (data, model file, run, evaluation) become one `Error:` line in can_tf_cli.main.

    click.echo(result.report.to_markdown())
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    folder = result.html_path.parent
    click.echo(f"Report ({result.num_images} images, {result.split} split) in {folder}: report.html, report.md, "
               f"report.csv, report.json, subgroups, calibration, model card"
               + (f"; figures in {folder / 'figures'}" if any(k.startswith("figure_") for k in result.files) else ""),
               err=True)
    if result.thresholds_path is not None:
        click.echo(f"Thresholds ({result.thresholds.method}, chosen on the val split) saved to "
                   f"{result.thresholds_path}", err=True)
    if result.calibration_path is not None:
        t = result.temperatures
        click.echo(f"Calibration ({t.scope} temperature scaling, fitted on the val split) saved to "
                   f"{result.calibration_path}", err=True)
    mean = result.calibration.to_dict()["mean"]
    if mean["ece_before"] is not None:
        after = (f", {mean['ece_after']:.3f} after temperature scaling" if result.temperatures is not None else "")
        click.echo(f"Expected calibration error on the {result.split} split (mean of {mean['num_classes']} classes): "
                   f"{mean['ece_before']:.3f} as the model gives it{after}", err=True)
    click.echo(f"Open the report: {result.html_path}", err=True)


def _evaluate_group(path, out_dir, options) -> None:
    from can_tf.run_group import evaluate_group, summary_markdown

    def starting(seed, index, total):
        click.echo(f"seed {seed} ({index} of {total}): evaluating {path}/seed-{seed}", err=True)

    result = evaluate_group(path, out_dir=out_dir, on_member=starting, **options)
    for member in result.unfinished:
        click.echo(f"warning: {member} is not finished (no metrics.json); left out of the seed summary", err=True)
    for seed, evaluation in result.evaluations.items():
        for note in evaluation.notes:
            click.echo(f"note (seed {seed}): {note}", err=True)
        click.echo(f"seed {seed}: report in {evaluation.html_path.parent}", err=True)
    click.echo(summary_markdown(result.summary))
    click.echo(f"Seed summary ({len(result.evaluations)} seeds, {result.split} split): {result.files['markdown']}, "
               f"{result.files['json']}", err=True)


def _formats(text: str) -> tuple:
    text = text.strip().lower()
    return () if text == "none" else tuple(f.strip() for f in text.split(",") if f.strip())
