"""Training throughput (images/s) of a model preset with ``model.fit``, as the trainer compiles it.

The model is built with ``weights=None`` (weights do not change the cost) and compiled by
:func:`can_tf.training.trainer.compile_model` from the run config, so the loss, optimizer,
``steps_per_execution``, XLA (``train.xla``) and precision (``train.mixed_precision``) are exactly
what ``can-tf fit`` uses. The input is the real training pipeline
(:func:`can_tf.data.pipeline.make_dataset`, augmentation on, memory cache) over real radiographs.

``fit`` runs ``1 + repeats`` epochs of a few steps each: the first epoch traces the train step
(for DenseNet-121 that alone takes about 30 s on 2 cores) and fills the image cache; it is
reported as ``trace_s`` (first epoch minus its steps at the steady speed). Each later epoch is one
timing; the figure is their median. A timed epoch is its own ``fit`` call, so it counts whatever
the call costs besides its steps: :mod:`benchmarks.fit_overhead` (the suite's ``fit_overhead``
section) checks that this stays within 5% (an input-iterator teardown stall once doubled it). :class:`TrainingRun` keeps a warmed-up model so that several
can be timed in turns (:func:`measure_interleaved`): a load change on a shared machine then hits
them all alike and their ratios hold. Achieved GFLOP/s counts a training step as 3x the forward
FLOPs (the backward pass costs about twice the forward), with the forward FLOPs from
:func:`benchmarks.model_cost.forward_flops`.

Usage:
    python -m benchmarks.train_throughput --preset chexnet --steps 2 --repeats 3
    python -m benchmarks.train_throughput --preset small --image-size 64 --set train.xla=true

Example:
    >>> from can_tf.config import RunConfig
    >>> from benchmarks.train_throughput import load_images_table, measure_training
    >>> df, class_names = load_images_table(None, limit=16)        # phantom data
    >>> config = RunConfig.from_preset("small")
    >>> row = measure_training(config, df, class_names, steps=1, repeats=2)  # doctest: +SKIP
    >>> row["images_per_s"] > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "chestxray14"
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (about 2x forward) per training image


def load_images_table(source: Optional[str], limit: Optional[int] = None, image_root: Optional[str] = None):
    """The data table of real images (a ChestX-ray14 folder), or phantom data when ``source`` is None.

    For the NIH sample the 512 px ``images/`` folder is used (``image_root``), and the first
    ``limit`` rows are kept (all when None).
    """
    from can_tf.config import DataConfig
    from can_tf.data.errors import DataError
    from can_tf.data.table import load_table

    if source is not None and image_root is None and (Path(source) / "images").is_dir():
        image_root = str(Path(source) / "images")
    config = DataConfig(source=None if source is None else str(source), image_root=image_root,
                        phantom_patients=max(10, limit or 60), phantom_image_size=64)
    df, class_names = load_table(config)
    if limit is not None:
        if len(df) < limit:
            raise DataError(f"{source or 'phantom data'}: {len(df)} images, fewer than the {limit} asked for")
        df = df.iloc[:limit].reset_index(drop=True)
    return df, class_names


class EpochTimer:
    """A Keras callback that records the wall time of every epoch (created lazily: Keras import)."""

    def __new__(cls):
        import keras

        class _EpochTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._start)

        return _EpochTimer()


def training_dataset(df, class_names, image_size: int, batch_size: int, model, *, augment: bool = True,
                     cache: str = "memory"):
    """The trainer's input for ``model``: augmented, cached, full batches, repeated forever."""
    from can_tf.data.pipeline import make_dataset
    from can_tf.training.trainer import labels_for_outputs, output_names

    ds = make_dataset(df, class_names, image_size, batch_size, training=True, augment=augment, cache=cache,
                      drop_remainder=True)
    return labels_for_outputs(ds, output_names(model)).repeat()


def forward_gflop(model) -> float:
    """Forward GFLOP per image of ``model``'s inference view (:mod:`benchmarks.model_cost`)."""
    from benchmarks.model_cost import forward_flops
    from can_tf.models import inference_model

    return forward_flops(inference_model(model)) / 1e9


def attention_gflop(model) -> Optional[float]:
    """Forward GFLOP per image of a CAN model's cross-attention layer alone; None for a baseline."""
    from benchmarks.model_cost import cross_attention_cost
    from can_tf.models import CANModel

    return cross_attention_cost(model)[1] / 1e9 if isinstance(model, CANModel) else None


def attention_step_seconds(model, batch_size: int, *, repeats: int = 5) -> Optional[float]:
    """Median seconds of a CAN model's cross-attention layer alone in a training step; None for a baseline.

    The layer (with the model's own weights) runs forward and backward (gradients with respect to
    its weights and to both feature maps, as in a real step) on random feature maps of the shapes it
    sees in the model, at ``batch_size``, in one compiled ``tf.function``. Dividing by the model's
    step time gives the share of a training step that cross-attention itself costs.
    """
    import tensorflow as tf

    from benchmarks.common import median_time
    from can_tf.models import CANModel

    if not isinstance(model, CANModel):
        return None
    layer = model.get_layer("cross_attention")
    features = [tf.random.normal((batch_size, *t.shape[1:]), dtype=t.dtype) for t in layer.input]

    @tf.function
    def step(f1, f2):
        with tf.GradientTape() as tape:
            tape.watch([f1, f2])
            attended_1, attended_2, attention = layer([f1, f2])
            total = (tf.reduce_sum(tf.cast(attended_1, tf.float32)) + tf.reduce_sum(tf.cast(attended_2, tf.float32))
                     + tf.reduce_sum(tf.cast(attention, tf.float32)))
        return tape.gradient(total, [f1, f2, *layer.trainable_variables])

    return median_time(lambda: [g.numpy() for g in step(*features)], repeats=repeats, warmup=2)["median_s"]


class TrainingRun:
    """One model built, compiled and warmed up (traced, cache filled), ready for timed epochs.

    Several runs can be kept side by side and timed in turns (:func:`measure_interleaved`), so a
    change in machine load hits every model alike and their ratios hold on a shared machine.

    Args:
        config: a `can_tf.config.RunConfig` (``model.weights`` is forced to None).
        df, class_names: the data table to train on (cached in memory by the warm-up epoch).
        steps: train steps per timed epoch (rounded up to a multiple of ``steps_per_execution``).
        label: the row's name (default: the preset).
    """

    def __init__(self, config, df, class_names, *, steps: int = 2, label: Optional[str] = None):
        import keras
        import numpy as np

        from benchmarks.common import peak_rss_mb, reset_peak_rss
        from can_tf.data.table import class_prevalence
        from can_tf.models import build_model
        from can_tf.training.strategy import set_precision
        from can_tf.training.trainer import compile_model

        config = copy.deepcopy(config)
        config.model.weights = None
        tc = config.train
        if len(df) < tc.batch_size:
            raise ValueError(f"{len(df)} images is less than one batch of {tc.batch_size}")
        self.config, self.label = config, label or config.preset
        spe = tc.steps_per_execution
        self.steps = max(spe, math.ceil(steps / spe) * spe)
        # The first epoch decodes every image once into the cache: it has at least as many steps.
        self.warmup_steps = max(self.steps, math.ceil(len(df) / tc.batch_size / spe) * spe)
        self.epoch_seconds: list = []

        gc.collect()
        reset_peak_rss()
        keras.utils.set_random_seed(tc.seed)
        self.policy = set_precision(tc.mixed_precision)  # layers take the policy when built
        try:
            start = time.perf_counter()
            self.model = build_model(config.model, len(class_names), config.data.image_size)
            self.build_s = time.perf_counter() - start
            prevalence = np.nan_to_num(class_prevalence(df, class_names), nan=0.5)
            with warnings.catch_warnings():
                # A few benchmark images leave some classes without positives; the loss clamps that.
                warnings.filterwarnings("ignore", message="class_prevalence")
                compile_model(self.model, config, prevalence, steps_per_epoch=self.steps)
            self.dataset = training_dataset(df, class_names, config.data.image_size, tc.batch_size, self.model,
                                            augment=config.data.augment)
            timer = EpochTimer()
            self.model.fit(self.dataset, epochs=1, steps_per_epoch=self.warmup_steps, verbose=0,
                           callbacks=[timer], shuffle=False)
            self.first_epoch_s = timer.seconds[0]
        finally:
            set_precision("off")
        self.peak_rss_mb = peak_rss_mb()

    def timed_epochs(self, epochs: int = 1, rewarm: bool = False) -> None:
        """Runs ``epochs`` epochs of ``steps`` steps, recording each epoch's seconds.

        ``rewarm`` first runs one untimed execution (``steps_per_execution`` steps): after another
        model has run, the first step pays again for kernel set-up (oneDNN's primitive cache holds
        the kernels of one DenseNet pair, not of three models), which is not training speed.
        """
        if rewarm:
            self.model.fit(self.dataset, epochs=1, steps_per_epoch=self.config.train.steps_per_execution,
                           verbose=0, shuffle=False)
        timer = EpochTimer()
        self.model.fit(self.dataset, epochs=epochs, steps_per_epoch=self.steps, verbose=0, callbacks=[timer],
                       shuffle=False)
        self.epoch_seconds += timer.seconds

    def row(self, *, count_flops: bool = True, peak_gflops: Optional[float] = None) -> dict:
        """The results: images/s and step time (medians over the timed epochs), trace, memory, FLOPs."""
        from benchmarks.common import summarize
        from can_tf.training.strategy import set_precision

        if not self.epoch_seconds:
            raise RuntimeError(f"{self.label}: no timed epochs yet; call timed_epochs() first")
        config, tc = self.config, self.config.train
        timing = summarize([s / self.steps for s in self.epoch_seconds])
        step_s = timing["median_s"]
        row = {
            "model": self.label,
            "kind": config.model.kind,
            "backbones": "+".join(config.model.backbones),
            "image_size": config.data.image_size,
            "batch_size": tc.batch_size,
            "precision": self.policy,
            "xla": bool(tc.xla),
            "steps_per_execution": tc.steps_per_execution,
            "timed_steps": self.steps * len(self.epoch_seconds),
            "params_m": self.model.count_params() / 1e6,
            "build_s": self.build_s,
            "trace_s": max(0.0, self.first_epoch_s - self.warmup_steps * step_s),
            "step_s": step_s,
            "step_s_min": timing["min_s"],
            "step_s_max": timing["max_s"],
            "images_per_s": tc.batch_size / step_s,
            "peak_rss_mb": self.peak_rss_mb,
        }
        if count_flops:
            set_precision("off")
            row["forward_gflop"] = forward_gflop(self.model)
            row["attention_gflop"] = attention_gflop(self.model)
            row["attention_share"] = (row["attention_gflop"] / row["forward_gflop"]
                                      if row["attention_gflop"] is not None else None)
            attention_s = attention_step_seconds(self.model, tc.batch_size)
            row["attention_step_s"] = attention_s
            row["attention_time_share"] = attention_s / step_s if attention_s is not None else None
            row["achieved_gflops"] = TRAIN_FLOPS_PER_FORWARD * row["forward_gflop"] * row["images_per_s"]
            if peak_gflops:
                row["peak_fraction"] = row["achieved_gflops"] / peak_gflops
        return row

    def close(self) -> None:
        """Drops the model and its dataset so their memory can be freed."""
        self.model = self.dataset = None
        gc.collect()


def measure_interleaved(runs, repeats: int = 3) -> None:
    """Times ``repeats`` epochs of every run, in turns (run 1, run 2, ..., run 1, run 2, ...).

    Each turn starts with an untimed re-warm execution when several runs take turns (see
    :meth:`TrainingRun.timed_epochs`).
    """
    for _ in range(repeats):
        for run in runs:
            run.timed_epochs(1, rewarm=len(runs) > 1)


def measure_training(config, df, class_names, *, steps: int = 2, repeats: int = 3,
                     label: Optional[str] = None, count_flops: bool = True,
                     peak_gflops: Optional[float] = None) -> dict:
    """Median training images/s of the model ``config`` describes, alone; see :class:`TrainingRun`.

    Returns:
        a row dict: ``images_per_s``, ``step_s``, ``trace_s``, ``peak_rss_mb``, FLOPs, settings.
    """
    run = TrainingRun(config, df, class_names, steps=steps, label=label)
    try:
        run.timed_epochs(repeats)
        return run.row(count_flops=count_flops, peak_gflops=peak_gflops)
    finally:
        run.close()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="chexnet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="ChestX-ray14 folder; 'phantom' for phantom data")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override, e.g. train.xla=true (repeatable)")
    args = parser.parse_args(argv)

    from can_tf.config import RunConfig

    config = RunConfig.from_preset(args.preset, overrides=[
        "model.weights=null", f"data.image_size={args.image_size}", f"train.batch_size={args.batch_size}",
        *args.set])
    df, class_names = load_images_table(None if args.data == "phantom" else args.data,
                                        limit=args.batch_size * args.steps)
    row = measure_training(config, df, class_names, steps=args.steps, repeats=args.repeats)
    print(json.dumps(row, indent=2))
    return row


if __name__ == "__main__":
    main()
