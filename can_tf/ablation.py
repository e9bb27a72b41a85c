"""The paper's claims as an ablation grid, trained over seeds and compared with the baseline.

Ma, Wang & Hoi (MICCAI 2019) claim that cross-attention beats a single backbone and that their CAN
loss (balance loss on the fused output plus ``lambda`` times the attention loss on the branches)
beats the plain balance loss and BCE. Each claim is one *cell*: a config = the base preset plus a
few overrides. ``can-tf ablate`` trains every cell with every seed (one seed group per cell,
:func:`can_tf.run_group.fit_seeds`, so an interrupted grid resumes where it stopped) and compares
every cell with the baseline cell on the same test images with the paired tests of
:mod:`can_tf.evaluation.comparison`. Holm's correction is applied across the classes of each
cell's comparison, not across cells: read several cells' "significant" with that in mind.

Example:
    >>> from can_tf.ablation import GRIDS
    >>> [cell.name for cell in GRIDS["paper"]][:3]
    ['baseline', 'can', 'can-balance']
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from can_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of the grid: a name, what it tests, and its config overrides."""

    name: str
    description: str
    overrides: tuple = ()
    baseline: bool = False  # built from the baseline preset instead of the base preset


GRIDS = {
    "paper": (
        Cell("baseline", "one backbone, the reference of every comparison", baseline=True),
        Cell("can", "CAN with the CAN loss (balance + lambda=1 attention loss), the paper's model"),
        Cell("can-balance", "CAN trained with the balance loss only (no attention loss)",
             ("loss.name=balance",)),
        Cell("can-bce", "CAN trained with plain binary cross-entropy", ("loss.name=bce",)),
        Cell("can-focal", "CAN trained with the focal loss", ("loss.name=focal",)),
        Cell("can-lambda-0.5", "CAN loss with attention weight lambda = 0.5", ("loss.attention_weight=0.5",)),
        Cell("can-lambda-2", "CAN loss with attention weight lambda = 2", ("loss.attention_weight=2.0",)),
    ),
}


@dataclasses.dataclass
class AblationResult:
    root: Path
    cells: list  # of Cell
    comparisons: dict  # cell name -> RunComparison (every cell but the baseline)
    files: dict


def select_cells(grid: str, names: Optional[Sequence[str]] = None) -> list:
    """The cells of ``grid`` (all, or those named, always with the baseline)."""
    if grid not in GRIDS:
        raise ConfigError(f"--grid: unknown grid {grid!r}; known: {', '.join(GRIDS)}")
    cells = list(GRIDS[grid])
    if not names:
        return cells
    known = {c.name for c in cells}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--cells: unknown cell(s) {', '.join(unknown)}; the {grid!r} grid has "
                          f"{', '.join(c.name for c in cells)}")
    return [c for c in cells if c.baseline or c.name in names]


def cell_config(cell: Cell, *, preset: str, baseline_preset: str, root: Path, overrides: Sequence[str] = ()):
    """The resolved :class:`~can_tf.config.RunConfig` of one cell, its seed group at ``root/<cell>``."""
    from can_tf.config import RunConfig

    flags = [*(cell.overrides), *overrides, f"train.run_dir={json.dumps(str(root / cell.name))}"]
    return RunConfig.resolve(preset=baseline_preset if cell.baseline else preset, overrides=flags)


def run_ablation(
    root,
    *,
    grid: str = "paper",
    cells: Optional[Sequence[str]] = None,
    seeds: Sequence[int] = (0, 1, 2),
    preset: str = "small",
    baseline_preset: str = "small-baseline",
    overrides: Sequence[str] = (),
    n_boot: int = 1000,
    on_cell: Optional[Callable[[Cell, int, int], None]] = None,
    on_member: Optional[Callable[[int, int, int], None]] = None,
) -> AblationResult:
    """Trains every cell over ``seeds`` under ``root`` and compares each with the baseline.

    ``overrides`` (``section.field=value``) apply to every cell, e.g. the data source and epochs;
    the cells' own overrides come first, so a user's override of the same field wins over both.
    """
    from can_tf.evaluation.run_comparison import compare_runs
    from can_tf.files import atomic_write_text
    from can_tf.run_group import fit_seeds

    root = Path(root)
    chosen = select_cells(grid, cells)
    configs = [cell_config(c, preset=preset, baseline_preset=baseline_preset, root=root, overrides=overrides)
               for c in chosen]  # every config is checked before anything trains
    root.mkdir(parents=True, exist_ok=True)
    for index, (cell, config) in enumerate(zip(chosen, configs)):
        if on_cell is not None:
            on_cell(cell, index, len(chosen))
        fit_seeds(copy.deepcopy(config), list(seeds), on_member=on_member)

    baseline = next(c for c in chosen if c.baseline)
    comparisons = {}
    for cell in chosen:
        if cell.baseline:
            continue
        comparisons[cell.name] = compare_runs([root / cell.name, root / baseline.name],
                                              names=[cell.name, baseline.name], n_boot=n_boot,
                                              out_dir=root / "compare" / cell.name)
    files = {"markdown": root / "ablation.md", "json": root / "ablation.json"}
    atomic_write_text(files["markdown"], ablation_markdown(chosen, comparisons, list(seeds)))
    atomic_write_text(files["json"], json.dumps({
        "grid": grid, "seeds": list(seeds), "preset": preset, "baseline_preset": baseline_preset,
        "overrides": list(overrides),
        "cells": [dataclasses.asdict(c) for c in chosen],
        "comparisons": {name: r.comparison.to_dict() for name, r in comparisons.items()},
    }, indent=2, allow_nan=False, default=str) + "\n")
    return AblationResult(root=root, cells=chosen, comparisons=comparisons, files=files)


def ablation_markdown(cells, comparisons: dict, seeds) -> str:
    """One row per cell: its mean AUROC, the difference from the baseline with both intervals, and
    the conclusion; each cell's full comparison is in ``compare/<cell>/comparison.md``."""
    from can_tf.evaluation.comparison import signed_interval_text
    lines = [f"# Ablation over seeds {', '.join(map(str, seeds))}", "",
             "| cell | what it tests | mean AUROC | baseline | difference [95% paired bootstrap] | "
             "seed interval | classes different (Holm) |",
             "|---|---|---:|---:|---|---|---|"]
    for cell in cells:
        if cell.baseline:
            continue
        pair = comparisons[cell.name].comparison.pairs[0]
        d, seeds_spread = pair.mean.difference, pair.mean.seeds
        diff = signed_interval_text(d.point, d.low, d.high)
        seed_text = ("—" if seeds_spread is None or seeds_spread.low is None
                     else f"[{seeds_spread.low:+.3f}, {seeds_spread.high:+.3f}]")
        significant = [r.name for r in pair.classes if r.p_adjusted is not None and r.p_adjusted < 0.05]
        lines.append(f"| {cell.name} | {cell.description} | {_f(pair.mean.auroc_a)} | {_f(pair.mean.auroc_b)} | "
                     f"{diff} | {seed_text} | {', '.join(significant) or 'none'} |")
    lines.append("")
    for cell in cells:
        if not cell.baseline:
            lines += [f"**{cell.name}**: {comparisons[cell.name].comparison.pairs[0].conclusion}", ""]
    lines.append("Holm's correction is across the classes within each cell's comparison, not across cells.")
    return "\n".join(lines) + "\n"


def _f(value) -> str:
    return "—" if value is None else f"{value:.3f}"
