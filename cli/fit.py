"""``can-tf fit``: resolve the config, train, print the test AUROC table of the best model."""

from __future__ import annotations

import json
import math

import click


def _format_auroc_table(test_auroc: dict, mean: float, title: str, intervals: dict | None = None,
                        mean_interval=None) -> str:
    intervals = intervals or {}

    def cell(value, interval) -> str:
        if value is None or not math.isfinite(value):
            return "  n/a"
        return f"{value:.3f}" + (f"  [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    width = max([len(name) for name in test_auroc] + [len("Mean")])
    header = "AUROC  [95% CI, patient bootstrap]" if intervals else "AUROC"
    lines = [title, f"{'Finding':<{width}}  {header}", "-" * (width + 2 + len(header))]
    for name, value in test_auroc.items():
        lines.append(f"{name:<{width}}  {cell(value, intervals.get(name))}")
    lines.append("-" * (width + 2 + len(header)))
    lines.append(f"{'Mean':<{width}}  {cell(mean, mean_interval)}")
    return "\n".join(lines)


@click.command("fit")
@click.option("--preset", default=None, help="Named preset (paper, paper-xrv, hetero, hetero-xrv, chexnet, chexnet-xrv, small, small-baseline); default small.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="YAML or JSON config file (over its preset).")
@click.option("--data", default=None, help="ChestX-ray14 folder or CSV file (data.source); default: built-in phantom data.")
@click.option("--run-dir", default=None,
              help="Run directory (train.run_dir). Default runs/<preset>-<config hash>: the same command "
                   "resumes an interrupted run there.")
@click.option("--epochs", type=int, default=None, help="train.epochs")
@click.option("--batch-size", type=int, default=None, help="Global batch size (train.batch_size).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override any config field, e.g. --set train.learning_rate=0.0001 (repeatable).")
@click.option("--extend", is_flag=True,
              help="Train a finished run further, up to --epochs (its metrics.json is kept as "
                   "metrics-<N>-epochs.json).")
@click.option("--seeds", default=None, metavar="TEXT",
              help="Train one config with several seeds into sibling run dirs <run-dir>/seed-N; "
                   "e.g. 0,1,2 or 0-4 (a run group: the same command resumes it).")
def fit(preset, config_file, data, run_dir, epochs, batch_size, overrides, extend, seeds):
    """Train a CAN or baseline model and report per-class test AUROC.

    \b
    Examples:
      can-tf fit                                   # small preset on built-in phantom data
      can-tf fit --data /data/ChestX-ray14 --preset paper
      can-tf fit --config my.yaml --set train.epochs=5 --run-dir runs/try1
      can-tf fit --run-dir runs/try1 --epochs 20 --extend   # 20 epochs in all, from the last one
      can-tf fit --run-dir runs/can5 --seeds 0-4            # 5 seeds, mean and 95% CI over them
    Interrupted? Run the same command again: it resumes after the last finished epoch.
    """
    from can_tf.config import ConfigError, RunConfig

    flags = list(overrides)
    # The convenience flags are overrides like any other (applied before --set, which wins).
    for name, value in (("data.source", data), ("train.run_dir", run_dir), ("train.epochs", epochs),
                        ("train.batch_size", batch_size)):
        if value is not None:
            # JSON-quoted: a valid YAML scalar that stays a string (a path like "2024" or "a: b").
            flags.insert(0, f"{name}={json.dumps(value)}")
    try:
        config = RunConfig.resolve(preset=preset, config_file=config_file, overrides=flags)
        seed_list = None
        if seeds is not None:
            from can_tf.run_group import parse_seeds

            seed_list = parse_seeds(seeds)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None

    from can_tf.data.errors import DataError
    from can_tf.training import train
    from can_tf.training.strategy import describe_devices

    click.echo(f"device: {describe_devices()}")
    try:
        if seed_list is None:
            _echo_result(train(config, extend=extend))
        else:
            _fit_group(config, seed_list, extend)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except DataError as e:
        raise click.ClickException(f"data error: {e}") from None
    # Other can_tf errors (a run directory in use, ...) become one `Error:` line in can_tf_cli.main.


def _fit_group(config, seeds, extend) -> None:
    from can_tf.run_group import fit_seeds, format_seed_table, group_metrics, group_root, member_dir

    root = group_root(config)
    config.train.run_dir = str(root)

    def starting(seed, index, total):
        click.echo(f"\nseed {seed} ({index} of {total}): {member_dir(root, seed)}")

    results = fit_seeds(config, seeds, extend=extend, on_member=starting,
                        on_result=lambda seed, result: _echo_result(result))
    if results and not results[0].is_chief:
        return
    summary = group_metrics(root)
    click.echo("")
    click.echo(format_seed_table(summary["per_class"], summary["mean"],
                                 f"Test AUROC over {len(summary['seeds'])} seeds "
                                 f"({', '.join(map(str, summary['seeds']))}; Student t interval over seeds):"))
    click.echo(f"Run group: {root}")


def _echo_result(result) -> None:
    """The closing table of one run: per-class test AUROC of the best model, its run directory."""
    if not result.is_chief:
        return
    click.echo("")
    if result.metrics.get("num_test_images"):
        click.echo(_format_auroc_table(
            result.test_auroc, result.test_mean_auroc,
            f"Test AUROC of the best model (epoch {result.best_epoch}, "
            f"{result.metrics.get('num_test_images')} images):",
            result.metrics.get("test_auroc_ci"), result.metrics.get("test_mean_auroc_ci")))
    else:
        click.echo(f"No test split: nothing to report for the best model (epoch {result.best_epoch}); "
                   f"evaluate it on other data with `can-tf evaluate {result.run_dir} --data ...`.")
    if result.stop_reason != "completed":
        click.echo(f"Stopped: {result.stop_reason}")
    click.echo(f"Run directory: {result.run_dir}")
