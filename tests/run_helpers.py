"""Building small run directories for tests of evaluate, predict and explain (no training)."""

from __future__ import annotations

import json
from pathlib import Path


def make_run_dir(run_dir, data_dir, *, preset: str = "small", image_size: int = 64, seed: int = 0,
                 overrides=()) -> Path:
    """A run directory as training leaves it (config.yaml, provenance.json, splits/, best.keras and
    model.keras), with an untrained model: enough for every format and report path, in a few seconds
    instead of a training run. The files are laid out by `can_tf.run.Run`, as `fit` lays them."""
    import keras

    from can_tf.config import RunConfig
    from can_tf.data.splits import make_splits, write_splits
    from can_tf.data.table import load_table
    from can_tf.models import build_model, inference_model
    from can_tf.provenance import build_provenance
    from can_tf.run import Run

    run = Run(run_dir)
    config = RunConfig.resolve(preset=preset, overrides=[
        f"data.source={json.dumps(str(data_dir))}", f"data.image_size={image_size}",
        f"train.run_dir={json.dumps(str(run.root))}", f"train.seed={seed}", *overrides])
    with run.training(config):
        df, class_names = load_table(config.data)
        splits = make_splits(df, config.data)
        write_splits(splits, run.root, class_names)
        run.write_provenance(build_provenance(config, splits=splits, table_attrs=df.attrs, best_epoch=1,
                                              epochs_run=1))
        keras.utils.set_random_seed(seed)
        model = build_model(config.model, len(class_names), image_size)
        model.save(run.best_model)
        inference_model(model).save(run.inference_model)
    return run.root
