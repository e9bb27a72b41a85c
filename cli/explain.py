"""``can-tf explain``: heat map overlays (Grad-CAM, Grad-CAM++, Score-CAM) and localisation scores."""

from __future__ import annotations

import sys

import click


@click.command("explain")
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--class", "class_name", required=True,
              help="Class to explain, e.g. Cardiomegaly (matched ignoring case and _/space).")
@click.option("--method", type=click.Choice(["gradcam", "gradcam++", "scorecam"]), default="gradcam",
              show_default=True)
@click.option("--branch", type=click.Choice(["fused", "branch_1", "branch_2"]), default="fused",
              show_default=True, help="CAN output to explain (the baseline has only 'fused').")
@click.option("--out", "out_dir", default="heatmaps", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the overlay PNGs (and localization.csv).")
@click.option("--bbox", "bbox_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Bounding boxes in NIH BBox_List_2017.csv format: drawn, and scored per class.")
@click.option("--bbox-space", default="image", show_default=True,
              help="Pixel space of the boxes: 'image' (each file's own pixels: the phantom data, the NIH "
                   "release as published) or the side they refer to, e.g. 1024 for NIH images resized "
                   "after the boxes were drawn.")
@click.option("--only-boxed", is_flag=True, help="Explain only images that have a box of the class.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--path-column", default="path", show_default=True,
              help="Column of image paths in a CSV INPUT (data.path_column).")
@click.option("--image-root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Where relative paths of a CSV INPUT start (data.image_root); default the CSV's folder.")
def explain(model, inputs, class_name, method, branch, out_dir, bbox_file, bbox_space, only_boxed, batch_size,
            path_column, image_root):
    """Write heat map overlays of MODEL's evidence for --class on INPUT... images.

    \b
    MODEL: a run directory or a .keras file (heat maps need the Keras graph).
    INPUT: image files, folders or CSV lists, as for `can-tf predict`.
    \b
    Examples:
      can-tf explain runs/small-1a2b3c4d phantom/images --class Cardiomegaly \\
          --bbox phantom/BBox_List_2017.csv --only-boxed
      can-tf explain runs/paper scans/00000001_000.png --class Effusion --method gradcam++ --branch branch_2
    Overlays are named <image>_<class>_<method>[_<branch>].png; the green box is the known finding,
    the white cross the heat map's peak.
    """
    if only_boxed and bbox_file is None:
        raise click.BadParameter("needs --bbox (the boxes say which images to explain)", param_hint="--only-boxed")
    from can_tf.explanation.explain import explain_files
    from can_tf.predictor import Predictor

    try:
        from can_tf.inputs import expand_inputs

        paths = expand_inputs(inputs, path_column=path_column, image_root=image_root)
        total = len(paths)
        predictor = Predictor.load(model, use_thresholds=False)
        if predictor.warning:
            click.echo(predictor.warning, err=True)
        with click.progressbar(length=total, label="Explaining", file=sys.stderr, hidden=total < 32) as bar:
            result = explain_files(predictor, paths, class_name, method=method, branch=branch, out_dir=out_dir,
                                   bbox_file=bbox_file, box_space=bbox_space, only_with_boxes=only_boxed,
                                   batch_size=batch_size, on_batch=bar.update)
    except ValueError as e:
        # can_tf's own errors pass (can_tf_cli.main shows them as one line); this catches the plain
        # ValueErrors of the heat map code's option checks (--branch, --bbox-space).
        if sys.modules.get("can_tf.errors") and isinstance(e, sys.modules["can_tf.errors"].CanTfError):
            raise
        raise click.ClickException(str(e)) from None

    click.echo(f"{len(result.overlays)} overlay(s) written to {out_dir}", err=True)
    for path, reason in result.errors.items():
        click.echo(f"  skipped: {reason if path in reason else f'{path}: {reason}'}", err=True)
    if result.box_summary:
        click.echo(result.box_summary, err=True)
    if result.localization_note:
        click.echo(result.localization_note)
    if result.localization is not None:
        table = result.localization
        click.echo(f"Localisation of {result.class_name} ({method}, {branch}) against {bbox_file}:")
        click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        click.echo(f"(hit rate = peak inside the box; chance = mean box area / image area; written to "
                   f"{result.localization_path})")
    if not result.overlays or result.errors:  # as predict: non-zero when any input was not explained
        raise click.exceptions.Exit(1)
