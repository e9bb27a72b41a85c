"""``can-tf compare``: two or more runs or seed groups on the same images, with paired tests."""

from __future__ import annotations

import click


@click.command("compare")
@click.argument("models", nargs=-1, required=True, metavar="RUN_OR_GROUP... ",
                type=click.Path(exists=True))
@click.option("--data", default=None,
              help="Data to compare on (a data source as for evaluate). Default: the first run's own data.")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default=None,
              help="Split to compare on. Default: test on the runs' own data, all on other --data.")
@click.option("--names", default=None, metavar="A,B,...", help="Display names, comma-separated, in order.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Paired patient-bootstrap replicates.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Significance level of the Holm-corrected per-class tests.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder. Default: <first run's parent>/compare/<names>-<split>.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
def compare(models, data, split, names, n_boot, alpha, seed, out_dir, batch_size):
    """Compare models on the same images: is A better than B, and can one tell?

    Each argument is a run directory or a seed group (`can-tf fit --seeds`); the LAST one is the
    reference. Per class and for the mean: the AUROC difference with a paired patient-bootstrap
    interval, DeLong's test (patient-clustered) with Holm's correction across classes, and with
    seeds the seed-to-seed interval; then a sentence saying what can and cannot be concluded.

    \b
    Examples:
      can-tf compare runs/can runs/baseline
      can-tf compare runs/can-seeds runs/baseline-seeds --names CAN,baseline
      can-tf compare runs/can runs/baseline --data /data/CheXpert-v1.0-small --split val
    Writes comparison.md, .csv, .json and a self-contained comparison.html.
    """
    from can_tf.evaluation.run_comparison import compare_runs

    name_list = [n.strip() for n in names.split(",")] if names else None
    result = compare_runs(list(models), data=data, split=split, out_dir=out_dir, names=name_list,
                          n_boot=n_boot, seed=seed, alpha=alpha, batch_size=batch_size,
                          on_model=lambda run, i, n: click.echo(f"scoring {i + 1} of {n}: {run}", err=True))
    click.echo(result.comparison.to_markdown())
    click.echo(f"Comparison in {result.out_dir}: comparison.md, .csv, .json", err=True)
    click.echo(f"Open the report: {result.files['html']}", err=True)
