"""``can-tf ablate``: the paper's ablations as one grid, over seeds, each cell compared with the baseline."""

from __future__ import annotations

import json

import click


@click.command("ablate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of the grid: one seed group per cell, compare/<cell>/, ablation.md/.json.")
@click.option("--data", default=None, help="Data source (data.source) of every cell; default: built-in phantom data.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds of every cell, e.g. 0,1,2 or 0-4.")
@click.option("--grid", default="paper", show_default=True, help="The grid of cells (paper).")
@click.option("--cells", default=None, metavar="A,B,...",
              help="Only these cells (the baseline is always trained), e.g. can,can-bce.")
@click.option("--preset", default="small", show_default=True, help="Preset of the CAN cells.")
@click.option("--baseline-preset", default="small-baseline", show_default=True, help="Preset of the baseline cell.")
@click.option("--epochs", type=int, default=None, help="train.epochs of every cell.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Paired bootstrap replicates of each comparison.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override a config field of every cell (repeatable).")
def ablate(out_dir, data, seeds, grid, cells, preset, baseline_preset, epochs, n_boot, overrides):
    """Train the paper's ablation grid over seeds and compare every cell with the baseline.

    \b
    Cells of the paper grid: baseline, can (CAN loss, lambda 1), can-balance, can-bce, can-focal,
    can-lambda-0.5, can-lambda-2.
    Examples:
      can-tf ablate --out runs/ablation --seeds 0,1,2
      can-tf ablate --out runs/abl --data /data/ChestX-ray14 --preset paper --baseline-preset chexnet
    Interrupted? Run the same command again: finished runs are kept, the rest resume.
    """
    from can_tf.ablation import run_ablation
    from can_tf.config import ConfigError
    from can_tf.run_group import parse_seeds

    flags = list(overrides)
    for name, value in (("data.source", data), ("train.epochs", epochs)):
        if value is not None:
            flags.insert(0, f"{name}={json.dumps(value)}")
    try:
        seed_list = parse_seeds(seeds)
        result = run_ablation(
            out_dir, grid=grid, cells=[c.strip() for c in cells.split(",")] if cells else None,
            seeds=seed_list, preset=preset, baseline_preset=baseline_preset, overrides=flags, n_boot=n_boot,
            on_cell=lambda cell, i, n: click.echo(f"cell {i + 1} of {n}: {cell.name} ({cell.description})"),
            on_member=lambda seed, i, n: click.echo(f"  seed {seed} ({i} of {n})"))
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    click.echo("")
    click.echo(result.files["markdown"].read_text())
    click.echo(f"Ablation in {result.root}: ablation.md, ablation.json, compare/<cell>/comparison.html")
