"""``can-tf predict``: probabilities and thresholded findings for images, folders or CSV lists."""

from __future__ import annotations

import sys

import click

# Below this many files a progress bar is noise.
_PROGRESS_MIN_FILES = 64


@click.command("predict")
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", "out_path", default="predictions.csv", show_default=True,
              type=click.Path(dir_okay=False), help="Output file: .csv or .json.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass.")
@click.option("--no-thresholds", is_flag=True,
              help="Do not apply the saved per-class thresholds (probabilities only).")
@click.option("--path-column", default="path", show_default=True,
              help="Column of image paths in a CSV INPUT (data.path_column).")
@click.option("--image-root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Where relative paths of a CSV INPUT start (data.image_root); default the CSV's folder.")
@click.option("--runtime", type=click.Choice(["auto", "keras", "litert"]), default="auto", show_default=True,
              help="What runs a run's or .keras model: its LiteRT conversion (converted once, cached in "
                   "litert-cache/ beside the model, checked against Keras), Keras, or auto: LiteRT on a "
                   "CPU, Keras where TensorFlow sees a GPU.")
def predict(model, inputs, out_path, batch_size, no_thresholds, path_column, image_root, runtime):
    """Predict findings with MODEL for every image in INPUT...

    \b
    MODEL: a run directory, a .keras file, a SavedModel folder or a .tflite file.
    INPUT: image files (PNG, JPEG, DICOM), folders (searched recursively) or CSV files
           with a 'path' column. Images of any size are resized to the model's input.
    \b
    Examples:
      can-tf predict runs/small-1a2b3c4d scans/ --out preds.csv
      can-tf predict exports/tflite/can_none.tflite a.png b.dcm --out preds.json
    Files that cannot be read are listed in the output with the reason; the exit code is
    non-zero only when no file could be predicted.
    """
    if not out_path.lower().endswith((".csv", ".json")):
        raise click.BadParameter(f"{out_path!r} must end in .csv or .json", param_hint="--out")

    from can_tf.inputs import expand_inputs
    from can_tf.predictor import Predictor

    # can_tf's errors (a bad input list, model file, run or thresholds.json) become one `Error:`
    # line in can_tf_cli.main.
    paths = expand_inputs(inputs, path_column=path_column, image_root=image_root)
    predictor = Predictor.load(model, use_thresholds=not no_thresholds, runtime=runtime)

    if predictor.warning:
        click.echo(predictor.warning, err=True)
    if predictor.runtime_note:
        click.echo(predictor.runtime_note, err=True)
    show_bar = len(paths) >= _PROGRESS_MIN_FILES
    with click.progressbar(length=len(paths), label="Predicting", file=sys.stderr,
                           hidden=not show_bar) as bar:
        result = predictor.predict_files(paths, batch_size=batch_size, on_batch=bar.update)
    written = result.write(out_path)

    # A run's or .keras model says which runtime ran it; an export runs in its own.
    through = ""
    if predictor.format in ("run", "keras"):
        through = " through LiteRT" if predictor.runtime == "tflite" else " through Keras"
    click.echo(f"{result.num_predicted} of {len(paths)} image(s) predicted with {predictor.format} model "
               f"{model}{through}; wrote {written}", err=True)
    if predictor.temperatures is not None:
        click.echo(f"Probabilities calibrated by the run's temperature scaling ({predictor.temperatures.scope}, "
                   f"fitted on {predictor.temperatures.fitted_on}).", err=True)
    if predictor.thresholds is None and not no_thresholds:
        click.echo("No thresholds.json found with the model: probabilities only (run `can-tf evaluate` "
                   "on the run to choose thresholds).", err=True)
    if result.errors:
        click.echo(f"{len(result.errors)} file(s) could not be read:", err=True)
        for path, reason in list(result.errors.items())[:20]:
            click.echo(f"  {reason if path in reason else f'{path}: {reason}'}", err=True)
        if len(result.errors) > 20:
            click.echo(f"  ... and {len(result.errors) - 20} more (see {written})", err=True)
    if predictor.warning:
        click.echo(predictor.warning, err=True)  # again after the results: the line a user reads last
    if result.errors:  # the others were predicted and written; the exit status says not all were
        raise click.exceptions.Exit(1)
