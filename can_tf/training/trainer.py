"""`train(config)`: one training run from a resolved `RunConfig` to a finished run directory.

The steps: choose the strategy and precision, prepare the run directory (resume if it holds an
unfinished run of the same config), load the data table, split by patient, measure class
prevalence on the train split, build the model, loss and optimizer under the strategy, ``fit`` with
the run's callbacks, then evaluate ``best.keras`` on the test split into ``metrics.json``.

Resuming: run the same command again. The run directory is the same (given, or derived from the
config, see :mod:`can_tf.training.run_dir`), BackupAndRestore puts back the weights, optimizer state
and epoch of the last finished epoch, and ``history.csv`` continues from there.

Multi-worker: every worker runs this same function with its own ``TF_CONFIG``; the chief writes the
run directory, the other workers write to temporary folders (TF's recommendation) that they remove
at the end, and keep their resume checkpoint in ``<run_dir>/.workers/worker-<i>/``.

Example:
    >>> from can_tf.config import RunConfig
    >>> from can_tf.training import train
    >>> result = train(RunConfig.resolve("small", overrides=["train.epochs=1"]))  # doctest: +SKIP
    >>> result.test_mean_auroc                                                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from can_tf.files import write_json
from can_tf.training.run_dir import (RunDir, best_so_far, default_run_dir, prepare_run_dir,
                                     read_history, resume_epoch, trim_history)


@dataclass
class RunResult:
    """What a run produced (also in ``metrics.json`` of the chief's run directory)."""

    run_dir: str
    history: list = field(default_factory=list)  # history.csv rows, all sessions
    initial_epoch: int = 0  # > 0 when this session resumed an interrupted run
    epochs_run: int = 0
    best_epoch: Optional[int] = None  # 1-based
    best_val_mean_auroc: Optional[float] = None
    test_auroc: dict = field(default_factory=dict)
    test_mean_auroc: float = float("nan")
    stop_reason: str = "completed"
    is_chief: bool = True
    metrics: dict = field(default_factory=dict)


# ---- pieces usable on their own -----------------------------------------------------------------
def output_names(model) -> list:
    """The keys of a model's dict outputs (``["fused"]`` for a single-output model)."""
    return list(model.output.keys()) if isinstance(model.output, dict) else ["fused"]


def labels_for_outputs(dataset, names):
    """Maps ``(images, labels)`` to ``(images, {name: labels})``: every output learns the same labels."""
    names = list(names)
    return dataset.map(lambda x, y: (x, {name: y for name in names}))


def compile_model(model, config, class_prevalence, steps_per_epoch: int):
    """Compiles ``model`` for training from the config; returns the callbacks the schedule needs.

    Call inside the strategy's scope (the optimizer's variables are created with the model's).
    """
    from can_tf.losses import build_loss
    from can_tf.training.optimizers import build_optimizer

    losses, weights = build_loss(config.loss, config.model.kind, class_prevalence,
                                 num_classes=config.num_classes)
    optimizer, schedule_callbacks = build_optimizer(config.train, steps_per_epoch)
    model.compile(optimizer=optimizer, loss=losses, loss_weights=weights,
                  steps_per_execution=config.train.steps_per_execution,
                  jit_compile=bool(config.train.xla))
    # Create the optimizer's slots now, eagerly: left to `fit`, they are created while the first
    # train step is traced, as lifted-initializer variables (~15% of the paper preset's tracing).
    optimizer.build(model.trainable_variables)
    return schedule_callbacks


def tensorboard_available() -> bool:
    """TensorFlow >= 2.20 no longer installs TensorBoard; its summaries need the package."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def progress_verbosity(verbose: str, is_chief: bool = True) -> tuple[int, bool]:
    """``(keras_verbose, print_epoch_lines)``: a progress bar at a terminal, one line per epoch else."""
    if not is_chief or str(verbose) == "0":
        return 0, False
    if str(verbose) == "1":
        return 1, False
    if str(verbose) == "2":
        return 0, True
    return (1, False) if sys.stdout.isatty() else (0, True)


# ---- the run ------------------------------------------------------------------------------------
def train(config, *, extra_callbacks=(), runs_root: str = "runs") -> RunResult:
    """Trains the model a resolved `RunConfig` describes; see the module docstring.

    Args:
        config: a `can_tf.config.RunConfig` (validated here).
        extra_callbacks: more Keras callbacks, run before the built-in ones.
        runs_root: parent of the derived run directory when ``train.run_dir`` is not set.

    Returns:
        a `RunResult`; the chief's run directory holds ``metrics.json`` with the same numbers.
    """
    import keras

    from can_tf.training.strategy import make_strategy, set_precision

    config = copy.deepcopy(config).validate()
    tc = config.train
    # The strategy first: multi-worker collectives must be configured before any other TF op.
    info = make_strategy(tc)
    policy = set_precision(tc.mixed_precision)
    keras.utils.set_random_seed(tc.seed)

    if tc.run_dir is None:
        tc.run_dir = str(default_run_dir(config, runs_root))
        derived = True
    else:
        derived = False
    run_root = Path(tc.run_dir)
    scratch = None
    if info.is_chief:
        rd = prepare_run_dir(config, run_root)
        backup_dir = rd.checkpoint
        print(f"Run directory: {rd.root}" + (" (derived from the config: run the same command again "
                                              "to resume it)" if derived else ""), flush=True)
    else:
        # Non-chief workers must save too (saving may involve collectives) but somewhere else.
        scratch = Path(tempfile.mkdtemp(prefix=f"can-tf-worker{info.worker_index}-"))
        rd = RunDir(scratch)
        config.save(str(rd.config))
        backup_dir = run_root / ".workers" / f"worker-{info.worker_index}" / "checkpoint"

    # ---- data ----
    from can_tf.data.pipeline import make_dataset
    from can_tf.data.splits import make_splits, read_splits, write_splits
    from can_tf.data.table import class_prevalence, load_table

    df, class_names = load_table(config.data)
    initial_epoch = resume_epoch(backup_dir)
    # A resumed run keeps its split. Other workers read the chief's files only when resuming: on a
    # fresh start the chief may still be writing them (make_splits is deterministic anyway).
    if (RunDir(run_root).splits / "train.txt").is_file() and (info.is_chief or initial_epoch > 0):
        splits = read_splits(RunDir(run_root).splits, df)
    else:
        splits = make_splits(df, config.data)  # reads data.split_dir when it is set
    if info.is_chief and not (rd.splits / "train.txt").is_file():
        write_splits(splits, rd.root, class_names)
    prevalence = class_prevalence(splits["train"], class_names)
    if info.is_chief:
        write_json(rd.prevalence, {name: float(p) for name, p in zip(class_names, prevalence)})

    global_batch = tc.batch_size
    n_train = len(splits["train"])
    drop_remainder = n_train >= global_batch
    steps_per_epoch = tc.steps_per_epoch or max(1, n_train // global_batch)
    data_kwargs = dict(class_names=class_names, image_size=config.data.image_size,
                       deterministic=config.data.deterministic, seed=config.data.seed,
                       on_bad_image=config.data.on_bad_image)

    # ---- model ----
    from can_tf.models import build_model
    from can_tf.training.callbacks import class_aurocs, mean_defined, predict_probabilities
    from can_tf.training.strategy import distribute_dataset, prepare_model_for_strategy

    def model_factory():
        return build_model(config.model, len(class_names), config.data.image_size)

    with info.strategy.scope():
        model = model_factory()
        schedule_callbacks = compile_model(model, config, prevalence, steps_per_epoch)
    names = output_names(model)
    prepare_model_for_strategy(model, info)

    def train_dataset(input_context):
        ds = make_dataset(splits["train"], batch_size=global_batch, training=True,
                          augment=config.data.augment, cache=config.data.cache,
                          input_context=input_context, drop_remainder=drop_remainder, **data_kwargs)
        return labels_for_outputs(ds, names).repeat()

    train_ds = distribute_dataset(info, train_dataset, global_batch)
    def eval_dataset(part, cache):  # None for an empty split (a zero fraction in the config)
        if len(part) == 0:
            return None
        return make_dataset(part, batch_size=global_batch, training=False, augment=False, cache=cache,
                            **data_kwargs)

    val_ds = eval_dataset(splits["val"], config.data.cache)

    # ---- resume state ----
    rows = trim_history(rd.history, initial_epoch) if info.is_chief else []
    if initial_epoch:
        print(f"Resuming after epoch {initial_epoch} (checkpoint in {backup_dir})", flush=True)

    keras_verbose, epoch_lines = progress_verbosity(tc.verbose, info.is_chief)
    callbacks, nan_guard, best, early = build_callbacks(
        config, info, rd, backup_dir, val_ds, class_names, model_factory, schedule_callbacks,
        best_so_far(rows), epoch_lines)

    start = time.perf_counter()
    model.fit(train_ds, epochs=tc.epochs, steps_per_epoch=steps_per_epoch,
              callbacks=list(extra_callbacks) + callbacks,
              verbose=keras_verbose, initial_epoch=initial_epoch, shuffle=False)
    fit_seconds = time.perf_counter() - start

    if nan_guard.stopped:
        stop_reason = nan_guard.reason
    elif early is not None and early.stopped_epoch > 0:
        stop_reason = f"early stopping: no better val_mean_auroc for {tc.early_stopping_patience} epochs"
    else:
        stop_reason = "completed"
    if not rd.best_model.is_file():
        # No epoch had a defined validation AUROC (e.g. a tiny split): keep the final weights.
        best.save_current()

    # ---- final evaluation of the best model on the test split ----
    best_model = keras.saving.load_model(str(rd.best_model), compile=False)
    labels, probs = predict_probabilities(best_model, eval_dataset(splits["test"], "none"))
    test_auroc = class_aurocs(labels, probs, class_names)
    history = read_history(rd.history)
    seconds = [r["epoch_seconds"] for r in history if isinstance(r.get("epoch_seconds"), float)]
    best_row = max((r for r in history if _finite(r.get("val_mean_auroc"))),
                   key=lambda r: r["val_mean_auroc"], default=None)
    metrics = {
        "config": config.preset or "custom",
        "run_dir": str(run_root),
        "split": "test",
        "num_test_images": int(len(labels)),
        "test_auroc": test_auroc,
        "test_mean_auroc": mean_defined(test_auroc),
        "best_epoch": best_row["epoch"] + 1 if best_row else None,
        "best_val_mean_auroc": best_row["val_mean_auroc"] if best_row else None,
        "epochs_run": len(history),
        "epochs_this_session": len(history) - initial_epoch,
        "resumed_from_epoch": initial_epoch,
        "epoch_seconds": seconds,
        "mean_epoch_seconds": float(np.mean(seconds)) if seconds else None,
        "median_epoch_seconds": float(np.median(seconds)) if seconds else None,  # first one traces
        "fit_seconds_this_session": fit_seconds,
        "stop_reason": stop_reason,
        "strategy": info.kind,
        "num_replicas": info.num_replicas,
        "num_workers": info.num_workers,
        "precision": policy,
        "steps_per_epoch": steps_per_epoch,
        "global_batch_size": global_batch,
    }
    if info.is_chief:
        write_json(rd.metrics, metrics)  # written last: its presence marks the run finished
        shutil.rmtree(rd.checkpoint, ignore_errors=True)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(backup_dir.parent, ignore_errors=True)
        try:
            backup_dir.parent.parent.rmdir()  # .workers/, once every worker has removed its folder
        except OSError:
            pass
    return RunResult(
        run_dir=str(run_root), history=history, initial_epoch=initial_epoch, epochs_run=len(history),
        best_epoch=metrics["best_epoch"], best_val_mean_auroc=metrics["best_val_mean_auroc"],
        test_auroc=test_auroc, test_mean_auroc=metrics["test_mean_auroc"], stop_reason=stop_reason,
        is_chief=info.is_chief, metrics=metrics,
    )


def build_callbacks(config, info, rd: RunDir, backup_dir, val_ds, class_names, model_factory,
                    schedule_callbacks, initial_best, epoch_lines: bool):
    """The run's callbacks, ordered so that each one sees the logs the earlier ones added.

    Returns ``(callbacks, nan_guard, best_checkpoint, early_stopping_or_None)``.
    """
    import keras

    from can_tf.training.callbacks import BestModelCheckpoint, EpochLogger, NaNGuard, ValidationAUROC

    tc = config.train
    nan_guard = NaNGuard(rd.last_good_model, model_factory)
    best = BestModelCheckpoint(rd.best_model, model_factory, initial_best=initial_best)
    callbacks = [nan_guard, ValidationAUROC(val_ds, class_names, strategy=info.strategy), best]
    callbacks += schedule_callbacks
    early = None
    if tc.early_stopping_patience > 0:
        early = keras.callbacks.EarlyStopping(monitor="val_mean_auroc", mode="max",
                                              patience=tc.early_stopping_patience)
        callbacks.append(early)
    callbacks += [
        EpochLogger(tc.epochs, print_lines=epoch_lines),
        keras.callbacks.CSVLogger(str(rd.history), append=True),
        # double_checkpoint: a kill while writing leaves the previous epoch's state readable.
        # delete_checkpoint=False: removed only once metrics.json exists, so a kill during the final
        # evaluation resumes into evaluation instead of starting over.
        keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True, delete_checkpoint=False),
    ]
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(str(rd.tensorboard), write_graph=False, profile_batch=0))
    elif info.is_chief:
        print("TensorBoard logs off: the 'tensorboard' package is not installed (pip install tensorboard)",
              flush=True)
    return callbacks, nan_guard, best, early


def _finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)
