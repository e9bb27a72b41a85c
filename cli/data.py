"""``can-tf data``: check a data set, pack it into TFRecord shards, or write the phantom data set."""

from __future__ import annotations

import json

import click


@click.group("data")
def data():
    """Check a data set, pack it into TFRecord shards, or write the built-in phantom data set.

    \b
    Examples:
      can-tf data check /data/ChestX-ray14
      can-tf data pack /data/ChestX-ray14 /data/nih-224 --image-size 224
      can-tf data synth ./phantom --patients 240 --image-size 128
    """


@data.command("check", short_help="Scan a data set for missing/unreadable images, label problems, leakage.")
@click.argument("source", type=click.Path(exists=True))
@click.option("--splits", "split_lists", multiple=True, type=click.Path(exists=True),
              help="Split list file(s), or a folder of them (e.g. a run's splits/), to check for "
                   "patients in more than one list. Default: NIH's lists beside the label file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--format", "data_format", default="auto", show_default=True, metavar="FORMAT",
              help="How to read SOURCE: auto, chestxray14, csv, chexpert, mimic, padchest, vindr, nih-google.")
@click.option("--class-names", default=None, metavar="A,B,...",
              help="Label classes to count (CSV: its label columns; default: every column but path, "
                   "patient, view, age, sex).")
@click.option("--label-file", type=click.Path(exists=True, dir_okay=False),
              help="ChestX-ray14 label file, if not the Data_Entry_2017*.csv in SOURCE.")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False),
              help="Folder holding the images, if not below SOURCE (CSV: where relative paths start).")
@click.option("--path-column", default="path", show_default=True, help="CSV mode: the image path column.")
@click.option("--patient-column", default=None, help="CSV mode: the patient id column.")
@click.option("--decode", is_flag=True, help="Also decode every image's pixels (slower, more thorough).")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (e.g. listed images not on disk).")
def check(source, split_lists, as_json, data_format, label_file, image_root, path_column, patient_column,
          decode, strict, class_names):
    """Scan a data set: missing and unreadable images, label-file problems, class counts, and
    patients that appear in more than one split list. Exits 1 when problems are found.

    \b
    Examples:
      can-tf data check /data/ChestX-ray14
      can-tf data check /data/ChestX-ray14 --image-root /data/ChestX-ray14/images_001 --json
      can-tf data check labels.csv --patient-column patient --splits runs/demo/splits
    """
    from can_tf.data.check import check_dataset

    # A DataError becomes one `Error:` line in can_tf_cli.main.
    report = check_dataset(source, list(split_lists) or None, format=data_format, label_file=label_file,
                           image_root=image_root, path_column=path_column,
                           patient_column=patient_column, decode=decode, strict=strict,
                           class_names=[c.strip() for c in class_names.split(",") if c.strip()] if class_names else None)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
    if not report.ok:  # under --strict, warnings too (the verdict line says so)
        raise SystemExit(1)


@data.command("synth", short_help="Write the built-in phantom data set (NIH layout).")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--patients", default=240, show_default=True, type=click.IntRange(min=1),
              help="Number of patients (each has one to four images).")
@click.option("--image-size", default=128, show_default=True, type=click.IntRange(min=16),
              help="Side of the square PNG images, in pixels.")
@click.option("--seed", default=0, show_default=True, type=int, help="The same seed writes the same files.")
def synth(out, patients, image_size, seed):
    """Write the phantom data set (synthetic radiographs with planted findings) in NIH's layout:
    images/*.png, Data_Entry_2017.csv, train_val_list.txt, test_list.txt, BBox_List_2017.csv.

    \b
    Examples:
      can-tf data synth ./phantom
      can-tf data synth ./phantom-small --patients 60 --image-size 64 --seed 1
    """
    from can_tf.data.phantom import write_phantom

    # A DataError becomes one `Error:` line in can_tf_cli.main.
    path = write_phantom(out, num_patients=patients, image_size=image_size, seed=seed)
    click.echo(f"wrote phantom data set ({patients} patients, {image_size} px, seed {seed}) to {path}")


@data.command("pack", short_help="Decode a data set once into TFRecord shards (fit/evaluate --data OUT).")
@click.argument("source", type=click.Path(exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(min=1),
              help="Side of the stored square images; training on OUT needs the same data.image_size.")
@click.option("--shard-mb", default=150.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Target size of one shard file, in MB.")
@click.option("--format", "data_format", default="auto", show_default=True, metavar="FORMAT",
              help="How to read SOURCE: auto, chestxray14, csv, chexpert, mimic, padchest, vindr, nih-google.")
@click.option("--class-names", default=None, metavar="A,B,...", help="Label classes to store (default: NIH's 14).")
@click.option("--label-file", type=click.Path(exists=True, dir_okay=False),
              help="ChestX-ray14 label file, if not the Data_Entry_2017*.csv in SOURCE.")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False),
              help="Folder holding the images, if not below SOURCE (CSV: where relative paths start).")
@click.option("--aspect", type=click.Choice(["stretch", "pad", "crop"]), default="stretch", show_default=True,
              help="How non-square images become square (data.aspect).")
@click.option("--on-bad-image", type=click.Choice(["stop", "skip"]), default="stop", show_default=True,
              help="Stop naming unreadable images, or leave them out with a warning.")
@click.option("--overwrite", is_flag=True, help="Replace a packed data set already in OUT.")
def pack(source, out, image_size, shard_mb, data_format, class_names, label_file, image_root, aspect,
         on_bad_image, overwrite):
    """Decode every image of SOURCE once (as training does: aspect, antialiased resize, uint8 gray)
    and write it with its labels and metadata into TFRecord shards plus OUT/index.json. Train and
    evaluate on OUT as on any data set: `can-tf fit --data OUT`.

    \b
    Examples:
      can-tf data pack /data/ChestX-ray14 /data/nih-224
      can-tf data pack labels.csv ./packed --format csv --class-names Effusion,Edema --image-size 64
    """
    from can_tf.config import DataConfig
    from can_tf.data.packed import pack as pack_data

    config = DataConfig(source=source, format=data_format, label_file=label_file, image_root=image_root,
                        image_size=image_size, aspect=aspect, on_bad_image=on_bad_image)
    if class_names:
        config.class_names = [c.strip() for c in class_names.split(",") if c.strip()]
    config.validate()  # a ConfigError or DataError becomes one `Error:` line in can_tf_cli.main
    result = pack_data(config, out, shard_mb=shard_mb, overwrite=overwrite)
    skipped = f", {len(result.skipped)} unreadable image(s) left out" if result.skipped else ""
    click.echo(f"packed {result.images:,} images at {image_size} px into {len(result.shards)} shard(s) in "
               f"{result.out_dir}{skipped}")
    click.echo(f"{result.images_per_second:,.0f} images/s, {result.bytes_per_image / 1e3:,.1f} kB per image, "
               f"{result.bytes / 1e6:,.1f} MB in all")
