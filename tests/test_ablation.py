"""`can-tf ablate`: the grid's cells, their configs, and one tiny grid trained and compared."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from can_tf.ablation import GRIDS, cell_config, select_cells
from can_tf.errors import ConfigError


def test_paper_grid_cells_resolve_to_valid_configs(tmp_path):
    cells = select_cells("paper")
    assert [c.name for c in cells if c.baseline] == ["baseline"]
    configs = {c.name: cell_config(c, preset="small", baseline_preset="small-baseline", root=tmp_path,
                                   overrides=["train.epochs=2"]) for c in cells}
    assert configs["baseline"].model.kind == "baseline" and configs["can"].model.kind == "can"
    assert configs["can"].loss.name == "can" and configs["can"].loss.attention_weight == 1.0
    assert configs["can-bce"].loss.name == "bce" and configs["can-focal"].loss.name == "focal"
    assert configs["can-lambda-2"].loss.attention_weight == 2.0
    assert all(c.train.epochs == 2 for c in configs.values())
    assert {c.train.run_dir for c in configs.values()} == {str(tmp_path / c.name) for c in cells}
    # A user's override of a field a cell sets wins over the cell.
    user = cell_config(GRIDS["paper"][3], preset="small", baseline_preset="small-baseline", root=tmp_path,
                       overrides=["loss.name=focal"])
    assert user.loss.name == "focal"


def test_unknown_grid_or_cell_is_one_clear_error():
    with pytest.raises(ConfigError, match="--grid: unknown grid 'x'"):
        select_cells("x")
    with pytest.raises(ConfigError, match="--cells: unknown cell"):
        select_cells("paper", ["can", "nope"])
    assert [c.name for c in select_cells("paper", ["can-bce"])] == ["baseline", "can-bce"]


@pytest.mark.slow
def test_a_tiny_grid_trains_over_seeds_and_compares_with_the_baseline(tmp_path):
    from can_tf_cli.main import main

    out = tmp_path / "abl"
    args = ["ablate", "--out", str(out), "--seeds", "0,1", "--cells", "can", "--epochs", "1",
            "--bootstrap", "50", "--set", "data.phantom_patients=40", "--set", "data.phantom_image_size=64"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for cell in ("baseline", "can"):
        group = json.loads((out / cell / "group.json").read_text())
        assert group["seeds"] == [0, 1]
        assert all((out / cell / f"seed-{s}" / "metrics.json").is_file() for s in (0, 1))
    summary = json.loads((out / "ablation.json").read_text())
    pair = summary["comparisons"]["can"]["pairs"][0]
    assert (pair["a"], pair["b"], pair["seeds_a"], pair["seeds_b"]) == ("can", "baseline", 2, 2)
    assert pair["mean"]["seeds"]["paired"] is True  # same seeds on both sides
    assert "| can |" in (out / "ablation.md").read_text()
    assert (out / "compare" / "can" / "comparison.html").is_file()
    # Run again: nothing is trained twice, the same comparison comes out.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "Epoch 1/1" not in again.output
    assert json.loads((out / "ablation.json").read_text())["comparisons"]["can"]["pairs"][0]["mean"] == pair["mean"]
