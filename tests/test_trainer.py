"""`can_tf.training.train` through the Python API: NaN guard, precision, learning on phantom data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from can_tf.config import RunConfig


def quick_config(phantom_dir, run_dir, *overrides, preset="small"):
    return RunConfig.resolve(preset, overrides=[
        f"data.source={phantom_dir}", f"train.run_dir={run_dir}", "train.epochs=1", "train.batch_size=8",
        "train.steps_per_epoch=2", "data.augment=false", "train.verbose=0", *overrides])


def test_nan_in_training_stops_and_keeps_last_good_weights(tmp_path, phantom_dir):
    import keras

    from can_tf.training import train

    class PoisonWeights(keras.callbacks.Callback):
        """Writes NaN into the first kernel after the first batch of epoch 2: the next loss is NaN."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:
                w = self.model.trainable_weights[0]
                w.assign(np.full(w.shape, np.nan, dtype=w.dtype))

    snapshots = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch] = [w.copy() for w in self.model.get_weights()]

    run = tmp_path / "run"
    config = quick_config(phantom_dir, run, "train.epochs=4", preset="small-baseline")
    result = train(config, extra_callbacks=[Snapshot(), PoisonWeights()])
    assert "non-finite training loss" in result.stop_reason and "epoch 2, batch 2" in result.stop_reason
    assert result.epochs_run == 2  # epochs 3 and 4 never ran
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stop_reason"] == result.stop_reason
    # the weights kept are those at the end of epoch 1 (the last good ones), and they are finite
    last_good = keras.saving.load_model(run / "last_good.keras", compile=False)
    for a, b in zip(last_good.get_weights(), snapshots[0]):
        np.testing.assert_array_equal(a, b)
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 1)).astype("float32")
    for path in ("last_good.keras", "best.keras"):
        model = keras.saving.load_model(run / path, compile=False)
        assert all(np.isfinite(w).all() for w in model.get_weights()), path
        assert np.isfinite(model.predict(images, verbose=0)["fused"]).all(), path


def test_mixed_bfloat16_training_saves_a_float32_best_model(tmp_path, phantom_dir):
    import keras

    from can_tf.training import train

    try:
        result = train(quick_config(phantom_dir, tmp_path / "run", "train.mixed_precision=bfloat16",
                                    preset="small-baseline"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result.metrics["precision"] == "mixed_bfloat16"
    assert np.isfinite(result.history[0]["loss"])
    model = keras.saving.load_model(tmp_path / "run" / "best.keras", compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert list(model.output) == ["fused"]


@pytest.mark.slow
def test_small_preset_learns_the_phantom_findings(tmp_path):
    """The quick-start configuration itself: must clearly beat chance (0.5) on validation and test."""
    from can_tf.training import train

    result = train(RunConfig.resolve("small", overrides=[f"train.run_dir={tmp_path / 'run'}",
                                                        "train.verbose=0"]))
    assert result.best_val_mean_auroc > 0.75, result.history
    assert result.test_mean_auroc > 0.7, result.test_auroc
