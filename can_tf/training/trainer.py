"""`train(config)`: one training run from a resolved `RunConfig` to a finished run directory.

The steps: choose the strategy and precision, prepare the run directory (resume if it holds an
unfinished run of the same config), load the data table, split by patient, measure class
prevalence on the train split, build the model, loss and optimizer under the strategy, ``fit`` with
the run's callbacks, then evaluate ``best.keras`` on the test split into ``metrics.json``.

Resuming: run the same command again. The run directory is the same (given, or derived from the
config), :class:`can_tf.run.Run` puts back the weights, optimizer state, epoch and history of the
last committed epoch, and training continues from there. ``extend=True`` trains a finished run for
more epochs (``can-tf fit --extend``).

Transfer learning: ``train.freeze_epochs=N`` trains only the heads and cross-attention for the
first N epochs (backbone weights and batch-norm statistics untouched), then every layer, with the
optimizer restarted at ``train.unfreeze_lr_factor`` times the rate the schedule has reached
(`can_tf.training.callbacks.BackboneFreeze`); ``history.csv`` says which epochs were frozen
(``backbones_frozen``). The phase follows from the epoch, so a resumed run continues in its phase.

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

from can_tf.files import error_chain, is_disk_full, no_space_message, write_json
from can_tf.run import Run, RunError, best_row, default_run_dir


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


def compile_model(model, config, class_prevalence, steps_per_epoch: int, log=None):
    """Compiles ``model`` for training from the config; returns the callbacks the schedule needs.

    Call inside the strategy's scope (the optimizer's variables are created with the model's).
    With ``train.freeze_epochs`` > 0 the callbacks include the
    `can_tf.training.callbacks.BackboneFreeze` that freezes the backbones when training starts
    (``log`` gets its two lines).
    """
    from can_tf.losses import build_loss
    from can_tf.training.callbacks import BackboneFreeze
    from can_tf.training.optimizers import build_optimizer, unfrozen_learning_rate

    losses, weights = build_loss(config.loss, config.model.kind, class_prevalence,
                                 num_classes=config.num_classes)
    optimizer, schedule_callbacks = build_optimizer(config.train, steps_per_epoch)
    model.compile(optimizer=optimizer, loss=losses, loss_weights=weights,
                  steps_per_execution=config.train.steps_per_execution,
                  jit_compile=bool(config.train.xla))
    # Create the optimizer's slots now, eagerly: left to `fit`, they are created while the first
    # train step is traced, as lifted-initializer variables (~15% of the paper preset's tracing).
    optimizer.build(model.trainable_variables)
    if config.train.freeze_epochs:
        # The optimizer above was built over every weight, backbones included, before any is frozen:
        # both phases share its variables, so every checkpoint holds the same ones.
        schedule_callbacks.append(BackboneFreeze(
            config.train.freeze_epochs, config.train.unfreeze_lr_factor, log=log,
            unfrozen_rate=unfrozen_learning_rate(config.train, steps_per_epoch)))
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
def train(config, *, extra_callbacks=(), runs_root: str = "runs", extend: bool = False) -> RunResult:
    """Trains the model a resolved `RunConfig` describes; see the module docstring.

    Args:
        config: a `can_tf.config.RunConfig` (validated here).
        extra_callbacks: more Keras callbacks, run before the built-in ones.
        runs_root: parent of the derived run directory when ``train.run_dir`` is not set.
        extend: train a finished run further, up to ``train.epochs``.

    Returns:
        a `RunResult`; the chief's run directory holds ``metrics.json`` with the same numbers.

    Raises:
        can_tf.run.RunInUseError: another process trains in the run directory.
        can_tf.config.ConfigError: the run directory cannot take this run.
    """
    import keras

    from can_tf.training.determinism import configure_determinism
    from can_tf.training.strategy import make_strategy, set_precision

    config = copy.deepcopy(config).validate()
    tc = config.train
    # The strategy first: multi-worker collectives must be configured before any other TF op.
    info = make_strategy(tc)
    policy = set_precision(tc.mixed_precision)
    keras.utils.set_random_seed(tc.seed)
    configure_determinism(config)  # train.deterministic: before any model or dataset exists

    derived = tc.run_dir is None
    if derived:
        tc.run_dir = str(default_run_dir(config, runs_root))
    if info.is_chief:
        run = Run(tc.run_dir)
        try:
            with run.training(config, extend=extend):
                print(f"Run directory: {run.root}" + (" (derived from the config: run the same command again "
                                                       "to resume it)" if derived else ""), flush=True)
                return _train_in(run, config, info, policy, extra_callbacks, checkpoint_dir=None)
        except Exception as error:
            if not is_disk_full(error):
                raise
            raise RunError(_disk_full_message(run, error)) from error
    # Non-chief workers must save too (saving may involve collectives) but somewhere else.
    scratch = Path(tempfile.mkdtemp(prefix=f"can-tf-worker{info.worker_index}-"))
    checkpoint_dir = Path(tc.run_dir) / ".workers" / f"worker-{info.worker_index}" / "checkpoint"
    try:
        config.save(str(Run(scratch).config_path))
        return _train_in(Run(scratch), config, info, policy, extra_callbacks, checkpoint_dir=checkpoint_dir,
                         chief_root=Path(tc.run_dir))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_in(run: Run, config, info, policy, extra_callbacks, *, checkpoint_dir, chief_root=None) -> RunResult:
    """prepare -> data -> model -> fit -> finalise, in an opened run directory."""
    import keras

    from can_tf.provenance import build_provenance

    tc = config.train
    chief_root = chief_root or run.root
    # ---- data ----
    from can_tf.data.pipeline import make_dataset
    from can_tf.data.splits import make_splits, read_splits, write_splits
    from can_tf.data.table import class_prevalence, load_table

    df, class_names = load_table(config.data)
    chief = Run(chief_root)
    # A resumed run keeps its split. Other workers read the chief's files only once it trained an
    # epoch: on a fresh start the chief may still be writing them (make_splits is deterministic).
    if (chief.splits / "train.txt").is_file() and (info.is_chief or chief.started):
        splits = read_splits(chief.splits, df)
    else:
        splits = make_splits(df, config.data)  # reads data.split_dir when it is set
    if info.is_chief:
        if not (run.splits / "train.txt").is_file():
            write_splits(splits, run.root, class_names)
        run.write_provenance(build_provenance(config, splits=splits, table_attrs=df.attrs))
        print("Data: " + _split_line(config, splits), flush=True)
    prevalence = class_prevalence(splits["train"], class_names)
    if info.is_chief:
        write_json(run.prevalence, {name: float(p) for name, p in zip(class_names, prevalence)})

    global_batch = tc.batch_size
    n_train = len(splits["train"])
    drop_remainder = n_train >= global_batch
    steps_per_epoch = tc.steps_per_epoch or max(1, n_train // global_batch)
    # The split follows data.seed alone; the batch order and the augmentations follow train.seed
    # too (train.seed 0 keeps data.seed's order), so runs of one seed group share their test
    # patients and differ in everything else training draws at random.
    data_kwargs = dict(class_names=class_names, image_size=config.data.image_size,
                       deterministic=config.data.deterministic,
                       seed=config.data.seed + 7919 * config.train.seed,
                       on_bad_image=config.data.on_bad_image, aspect=config.data.aspect,
                       max_pixels=config.data.max_pixels)

    # ---- model ----
    from can_tf.models import build_model
    from can_tf.training.callbacks import class_aurocs, mean_defined, predict_probabilities
    from can_tf.training.strategy import distribute_dataset, prepare_model_for_strategy

    def model_factory():
        return build_model(config.model, len(class_names), config.data.image_size)

    with info.strategy.scope():
        model = model_factory()
        schedule_callbacks = compile_model(model, config, prevalence, steps_per_epoch,
                                           log=_say if info.is_chief else None)
    names = output_names(model)
    prepare_model_for_strategy(model, info)
    resumed = run.restore(model, checkpoint_dir, publish=info.is_chief)
    if resumed.epoch:
        print(f"Resuming after epoch {resumed.epoch} (checkpoint in {checkpoint_dir or run.checkpoint})",
              flush=True)

    # A resumed run continues the batch stream where it stopped, not from its start: with the same
    # seeds it then sees the batches the uninterrupted run would have seen. Skipping decodes and
    # augments without the model, ~100x faster than training on them.
    skip_batches = resumed.epoch * steps_per_epoch

    def train_dataset(input_context):
        ds = make_dataset(splits["train"], batch_size=global_batch, training=True,
                          augment=config.data.augment, cache=config.data.cache,
                          input_context=input_context, drop_remainder=drop_remainder, **data_kwargs)
        ds = labels_for_outputs(ds, names).repeat()
        return ds.skip(skip_batches) if skip_batches else ds

    def eval_dataset(part, cache):  # None for an empty split (a zero fraction in the config)
        if len(part) == 0:
            return None
        return make_dataset(part, batch_size=global_batch, training=False, augment=False, cache=cache,
                            **data_kwargs)

    train_ds = distribute_dataset(info, train_dataset, global_batch)
    val_ds = eval_dataset(splits["val"], config.data.cache)

    # ---- fit ----
    keras_verbose, epoch_lines = progress_verbosity(tc.verbose, info.is_chief)
    best_so_far = best_row(resumed.rows)
    callbacks, nan_guard, checkpoint, early = build_callbacks(
        config, info, run, checkpoint_dir, val_ds, class_names, model_factory, schedule_callbacks,
        None if best_so_far is None else best_so_far["val_mean_auroc"], epoch_lines, resumed.callbacks)
    start = time.perf_counter()
    if resumed.stop_reason is None and resumed.epoch < tc.epochs:
        from can_tf.data.packed import shard_read_errors_named

        with shard_read_errors_named(df.attrs):
            model.fit(train_ds, epochs=tc.epochs, steps_per_epoch=steps_per_epoch,
                      callbacks=list(extra_callbacks) + callbacks,
                      verbose=keras_verbose, initial_epoch=resumed.epoch, shuffle=False)
    fit_seconds = time.perf_counter() - start

    if nan_guard.stopped:
        stop_reason = nan_guard.reason
    elif early is not None and early.stopped_epoch > 0:
        stop_reason = f"early stopping: no better val_mean_auroc for {tc.early_stopping_patience} epochs"
    else:
        stop_reason = resumed.stop_reason or "completed"
    if stop_reason != "completed":
        run.mark_stopped(stop_reason, checkpoint_dir)
    if not run.best_model.is_file():
        # No epoch had a defined validation AUROC (e.g. a tiny split): keep the final weights.
        checkpoint.save_models(run.best_model, run.inference_model)

    # ---- finalise: the best model on the test split ----
    best_model = keras.saving.load_model(str(run.best_model), compile=False)
    from can_tf.data.packed import shard_read_errors_named

    with shard_read_errors_named(df.attrs):
        labels, probs = predict_probabilities(best_model, eval_dataset(splits["test"], "none"))
    test_auroc = class_aurocs(labels, probs, class_names)
    test_ci, test_mean_ci = _test_intervals(labels, probs, splits["test"], class_names, test_auroc)
    history = run.committed_history(checkpoint_dir)
    seconds = [r["epoch_seconds"] for r in history if _finite(r.get("epoch_seconds"))]
    best = best_row(history)
    metrics = {
        "config": config.preset or "custom",
        "run_dir": str(chief_root),
        "split": "test",
        "num_test_images": int(len(labels)),
        "test_auroc": test_auroc,
        "test_mean_auroc": mean_defined(test_auroc),
        "test_auroc_ci": test_ci,  # 95% patient-bootstrap intervals, as `can-tf evaluate` computes them
        "test_mean_auroc_ci": test_mean_ci,
        "best_epoch": best["epoch"] + 1 if best else None,
        "best_val_mean_auroc": best["val_mean_auroc"] if best else None,
        "epochs_run": len(history),
        "epochs_this_session": len(history) - resumed.epoch,
        "resumed_from_epoch": resumed.epoch,
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
        run.write_provenance(build_provenance(config, splits=splits, table_attrs=df.attrs,
                                              best_epoch=metrics["best_epoch"], epochs_run=len(history)))
        write_json(run.metrics, metrics)  # written last: its presence marks the run finished
    else:
        shutil.rmtree(checkpoint_dir.parent, ignore_errors=True)
        try:
            checkpoint_dir.parent.parent.rmdir()  # .workers/, once every worker has removed its folder
        except OSError:
            pass
    return RunResult(
        run_dir=str(chief_root), history=history, initial_epoch=resumed.epoch, epochs_run=len(history),
        best_epoch=metrics["best_epoch"], best_val_mean_auroc=metrics["best_val_mean_auroc"],
        test_auroc=test_auroc, test_mean_auroc=metrics["test_mean_auroc"], stop_reason=stop_reason,
        is_chief=info.is_chief, metrics=metrics,
    )


def _test_intervals(labels, probs, test_df, class_names, test_auroc: dict, n_boot: int = 1000) -> tuple:
    """``({class: [low, high] or None}, [low, high] or None)``: 95% patient-bootstrap intervals of the
    test AUROCs (:func:`can_tf.evaluation.bootstrap.bootstrap_metrics`, seed 0, as ``evaluate``)."""
    from can_tf.evaluation.bootstrap import bootstrap_metrics

    empty = ({name: None for name in class_names}, None)
    if len(labels) == 0 or all(v is None for v in test_auroc.values()):
        return empty
    result = bootstrap_metrics(labels, probs, test_df["patient_id"].astype(str).to_numpy(), list(class_names),
                               metrics=("auroc",), n_boot=n_boot, seed=0)["auroc"]

    def pair(interval):
        return None if interval.low is None else [interval.low, interval.high]

    return {name: pair(result.per_class[name]) for name in class_names}, pair(result.mean)


def _disk_full_message(run: Run, error: BaseException) -> str:
    """The one line for a full disk during ``fit``: the file, the space left, what the run kept."""
    path = next((e.filename for e in error_chain(error) if getattr(e, "filename", None)), run.root)
    epochs = len(run.committed_history()) if run.root.is_dir() else 0
    if epochs:
        outcome = (f"the run keeps its {epochs} finished epoch(s) in {run.root} and the same command "
                   f"resumes from there")
    else:
        outcome = "no epoch had finished, so nothing of this run was kept"
    return no_space_message(path, outcome)


def _split_line(config, splits: dict) -> str:
    from can_tf.provenance import describe_data, split_counts

    counts = split_counts(splits)
    return f"{describe_data(config.data)}; " + ", ".join(
        f"{name} {c['images']} images / {c['patients']} patients" for name, c in counts.items())


def build_callbacks(config, info, run: Run, checkpoint_dir, val_ds, class_names, model_factory,
                    schedule_callbacks, initial_best, epoch_lines: bool, restored_state=None):
    """The run's callbacks, ordered so that each one sees the logs the earlier ones added.

    Returns ``(callbacks, nan_guard, run_checkpoint, early_stopping_or_None)``.
    """
    import keras

    from can_tf.training.callbacks import EpochLogger, NaNGuard, RunCheckpoint, ValidationAUROC

    tc = config.train
    nan_guard = NaNGuard(run.last_good_model, model_factory)
    callbacks = [nan_guard, ValidationAUROC(val_ds, class_names, strategy=info.strategy)]
    callbacks += schedule_callbacks
    early = None
    if tc.early_stopping_patience > 0:
        early = keras.callbacks.EarlyStopping(monitor="val_mean_auroc", mode="max",
                                              patience=tc.early_stopping_patience)
        callbacks.append(early)
    callbacks.append(EpochLogger(tc.epochs, print_lines=epoch_lines))
    # Last: the epoch's row holds every value the callbacks above added.
    checkpoint = RunCheckpoint(run, model_factory, initial_best=initial_best, checkpoint_dir=checkpoint_dir,
                               publish=info.is_chief, stateful=[*schedule_callbacks, *([early] if early else [])],
                               restored_state=restored_state)
    callbacks.append(checkpoint)
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(str(run.tensorboard), write_graph=False, profile_batch=0))
    elif info.is_chief:
        print("TensorBoard logs off: the 'tensorboard' package is not installed (pip install tensorboard)",
              flush=True)
    return callbacks, nan_guard, checkpoint, early


def _say(line: str) -> None:
    print(line, flush=True)


def _finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)
