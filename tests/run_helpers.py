"""Building small run directories for tests of evaluate, predict and explain (no training)."""

from __future__ import annotations

import json
from pathlib import Path


def make_run_dir(run_dir, data_dir, *, preset: str = "small", image_size: int = 64, seed: int = 0) -> Path:
    """A run directory as training leaves it (config.yaml, splits/, best.keras), with an untrained
    model: enough for every format and report path, in a few seconds instead of a training run."""
    import keras

    from can_tf.config import RunConfig
    from can_tf.data.splits import make_splits, write_splits
    from can_tf.data.table import load_table
    from can_tf.models import build_model

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = RunConfig.resolve(preset=preset, overrides=[
        f"data.source={json.dumps(str(data_dir))}", f"data.image_size={image_size}",
        f"train.run_dir={json.dumps(str(run_dir))}", f"train.seed={seed}"])
    df, class_names = load_table(config.data)
    write_splits(make_splits(df, config.data), run_dir, class_names)
    keras.utils.set_random_seed(seed)
    model = build_model(config.model, len(class_names), image_size)
    model.save(run_dir / "best.keras")
    config.save(str(run_dir / "config.yaml"))
    return run_dir
