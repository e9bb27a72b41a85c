"""``can-tf export``: a run or .keras file -> SavedModel (TF Serving) or TFLite (LiteRT)."""

from __future__ import annotations

import click

# can_tf.export.tflite.QUANTIZE_MODES, written out: importing can_tf loads TensorFlow, and
# `can-tf export --help` must not (tests/test_cli_main.py checks that the two agree).
QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")


@click.command("export")
@click.argument("run_or_model", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["saved_model", "tflite"]), default="saved_model",
              show_default=True,
              help="saved_model: TF Serving layout <out>/<name>/<version>/; tflite: a .tflite file.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="saved_model: TF Serving's base path (default exports/serving/models); "
                   "tflite: output folder (default <run>/tflite).")
@click.option("--name", default="can", show_default=True,
              help="Model name: the folder under --out (saved_model) or the file stem (tflite).")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="saved_model version folder; default the next free one when the export is published "
                   "(concurrent exports get different ones). An existing version is never overwritten.")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES), default="none", show_default=True,
              help="tflite: none (float32), float16, dynamic (int8 weights) or int8 (full integer, calibrated).")
@click.option("--uint8-input", is_flag=True, help="tflite: the model takes uint8 pixels (1, S, S, 1).")
@click.option("--rgb-input", is_flag=True,
              help="tflite: the model takes RGB pixels (1, S, S, 3), converted to gray inside it (for the LiteRT "
                   "Task Library and Android Studio's ML model binding); the file name ends in _rgb.")
@click.option("--calibration-data", type=click.Path(exists=True), default=None,
              help="Real images (folder, image or .txt list) to check the export on and to calibrate int8; "
                   "default: the run's training split.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images whose header claims more pixels (serving_default; the edge script reads it "
                   "from the .tflite's metadata); default: the run's data.max_pixels (40 million).")
@click.option("--overwrite", is_flag=True, help="tflite: replace an existing .tflite and its companion files.")
def export(run_or_model, fmt, out, name, version, quantize, uint8_input, rgb_input, calibration_data, max_pixels,
           overwrite):
    """Export RUN_OR_MODEL (a run directory or a .keras file), verified against the Keras model.

    \b
    Examples:
      can-tf export runs/small-1a2b3c4d                       # -> exports/serving/models/can/1
      can-tf export runs/small-1a2b3c4d --name cxr --version 7 --out /srv/models
      can-tf export runs/small-1a2b3c4d --format tflite --quantize int8 --uint8-input
      can-tf export runs/small-1a2b3c4d --format tflite --rgb-input      # LiteRT Task Library, Android
      can-tf export best.keras --format tflite --quantize float16 --calibration-data xrays/
    Then serve it: see exports/serving/README.md (TF Serving) or exports/tflite/README.md.
    """
    from pathlib import Path

    if fmt == "saved_model" and (quantize != "none" or uint8_input or rgb_input or overwrite):
        raise click.UsageError("--quantize, --uint8-input, --rgb-input and --overwrite apply to --format tflite only "
                               "(SavedModel versions are never overwritten; omit --version for a new one)")
    if fmt == "tflite" and version is not None:
        raise click.UsageError("--version applies to --format saved_model only")

    # An ExportError (or any other can_tf error) becomes one `Error:` line in can_tf_cli.main.
    if fmt == "saved_model":
        from can_tf.export.saved_model import export_saved_model

        result = export_saved_model(run_or_model, out or "exports/serving/models", name=name, version=version,
                                    images=calibration_data, max_pixels=max_pixels)
    else:
        from can_tf.export.tflite import export_tflite

        source = Path(run_or_model)
        default_out = (source if source.is_dir() else source.parent) / "tflite"
        result = export_tflite(run_or_model, out or default_out, name=name, quantize=quantize,
                               uint8_input=uint8_input, images=calibration_data, overwrite=overwrite,
                               max_pixels=max_pixels, rgb_input=rgb_input)
    click.echo(result.summary())
