"""Keras callbacks of a training run (the generic ones come from Keras itself).

- `ValidationAUROC`: predicts the validation split after every epoch and puts the mean of the
  defined per-class AUROCs into ``logs["val_mean_auroc"]`` (what early stopping, reduce-on-plateau
  and the best-model checkpoint watch).
- `RunCheckpoint`: commits every epoch to the run directory (checkpoint, history row, and
  ``best.keras`` / ``model.keras`` whenever that value improves, with no optimizer state).
- `NaNGuard`: stops on a NaN/inf loss, puts back the weights of the last finished epoch and writes
  them to ``last_good.keras``.
- `EpochLogger`: adds ``epoch_seconds`` and ``learning_rate`` to the logs and, when no progress bar
  is shown, prints one line per epoch.
- `BackboneFreeze`: keeps the backbones frozen for the first ``train.freeze_epochs`` epochs (only
  the heads and cross-attention train), then unfreezes them and restarts the optimizer at the
  scaled rate; adds ``backbones_frozen`` (1 or 0) to the logs.

Callbacks that add to ``logs`` must come before those that read them (CSVLogger, EarlyStopping):
`can_tf.training.trainer` orders them.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional

import numpy as np
import keras

from can_tf.files import save_model_atomically
from can_tf.training.optimizers import current_learning_rate, restart_optimizer


# ---- predictions and AUROC ----------------------------------------------------------------------
def fused_logits(outputs):
    """The fused logits of a model's outputs (a dict of CAN/baseline logits, or one tensor)."""
    if isinstance(outputs, dict):
        return outputs["fused"]
    return outputs


def predict_probabilities(model, dataset, predict_fn=None):
    """``(labels, probabilities)`` as numpy arrays over a finite ``(images, labels)`` dataset.

    ``dataset=None`` (an empty split) gives two empty arrays.

    Calls the model directly (no `Model.predict`): under any `tf.distribute` strategy this runs
    locally on each worker with no collective op, so every worker can evaluate on its own.
    """
    import tensorflow as tf

    if predict_fn is None:
        predict_fn = make_predict_fn(model)
    labels, probs = [], []
    for images, y in dataset if dataset is not None else ():
        if isinstance(y, dict):
            y = next(iter(y.values()))
        labels.append(np.asarray(y, dtype=np.float32))
        probs.append(tf.sigmoid(tf.cast(predict_fn(images), tf.float32)).numpy())
    if not labels:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(labels), np.concatenate(probs)


def make_predict_fn(model):
    """A traced ``images -> fused logits`` function of ``model`` (inference mode)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def predict(images):
        return fused_logits(model(images, training=False))

    return predict


def class_aurocs(labels: np.ndarray, probs: np.ndarray, class_names) -> dict:
    """``{class: AUROC or None}`` (`can_tf.evaluation.metrics.per_class_auroc`; NaN labels masked).

    ``None`` marks a class without both outcomes; every class is ``None`` when there is nothing to
    score or the model produced non-finite probabilities (a diverged model scores nothing).
    """
    from can_tf.evaluation.metrics import per_class_auroc

    if len(labels) == 0 or not np.all(np.isfinite(probs)):
        return {name: None for name in class_names}
    return per_class_auroc(labels, probs, list(class_names))


def mean_defined(values: dict) -> float:
    """Mean over the defined classes, as a float (NaN when none is defined)."""
    from can_tf.evaluation.metrics import mean_over_defined

    mean, _ = mean_over_defined(values)
    return float("nan") if mean is None else float(mean)


# ---- callbacks ----------------------------------------------------------------------------------
class ValidationAUROC(keras.callbacks.Callback):
    """Adds ``logs[key]`` = mean per-class AUROC on ``dataset`` at the end of every epoch.

    Example:
        >>> cb = ValidationAUROC(val_ds, class_names)            # doctest: +SKIP
        >>> model.fit(train_ds, callbacks=[cb, keras.callbacks.CSVLogger("h.csv")])  # doctest: +SKIP
    """

    def __init__(self, dataset, class_names, key: str = "val_mean_auroc", strategy=None):
        super().__init__()
        self.dataset = dataset
        self.class_names = list(class_names)
        self.key = key
        self.strategy = strategy
        self.last = {}
        self._predict_fn = None

    def on_train_begin(self, logs=None):
        self._predict_fn = make_predict_fn(self.model)

    def on_epoch_end(self, epoch, logs=None):
        labels, probs = predict_probabilities(self.model, self.dataset, self._predict_fn)
        self.last = class_aurocs(labels, probs, self.class_names)
        if logs is not None:
            logs[self.key] = first_replica_value(self.strategy, mean_defined(self.last))


def first_replica_value(strategy, value: float) -> float:
    """``value`` as computed by replica 0 (the chief), on every worker of a multi-worker strategy.

    Batch normalisation statistics are kept per replica (not synchronised), so workers predict
    slightly differently; decisions taken on the validation score (early stopping, the learning
    rate on plateau) must be identical on all workers, or their collectives fall out of step.
    The chief's score is also the score of the model the chief saves.
    """
    import tensorflow as tf

    if strategy is None or strategy.num_replicas_in_sync == 1 or not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return value
    local = tf.constant(value, tf.float32)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: local if ctx.replica_id_in_sync_group == 0 else tf.zeros_like(local))
    return float(strategy.reduce("SUM", per_replica, axis=None))


class _InferenceTwin:
    """A float32, never-compiled copy of the training model, refreshed with its weights on demand.

    Saving this twin rather than the training model keeps the optimizer state (2x the weights for
    Adam) and the mixed-precision policy out of the saved file.
    """

    def __init__(self, model_factory: Callable[[], "keras.Model"]):
        self.model_factory = model_factory
        self._twin = None

    def save(self, model, path, inference_path=None) -> None:
        """Saves the weights of ``model`` as ``path`` (and, given ``inference_path``, as the
        probabilities-only view of `can_tf.models.inference_model` there), each atomically."""
        if self._twin is None:
            previous = keras.mixed_precision.global_policy()
            keras.mixed_precision.set_global_policy("float32")
            try:
                self._twin = self.model_factory()
            finally:
                keras.mixed_precision.set_global_policy(previous)
        self._twin.set_weights(model.get_weights())
        save_model_atomically(self._twin, path)
        if inference_path is not None:
            from can_tf.models import inference_model

            save_model_atomically(inference_model(self._twin), inference_path)


class RunCheckpoint(keras.callbacks.Callback):
    """Commits every finished epoch to the run directory (`can_tf.run.Run.commit_epoch`).

    The epoch's weights and optimizer state, its history row and, when ``logs[monitor]`` reaches a
    new maximum, the best model (``best.keras``, the training graph, and ``model.keras``, its
    probabilities view) — all in one crash-safe commit. Must run after every callback that adds to
    ``logs``. ``initial_best`` carries the best value over from before a resume; ``publish=False``
    (a non-chief worker) checkpoints without publishing models or history.
    """

    # What early stopping and reduce-on-plateau count between epochs; their on_train_begin resets it,
    # so without this a resumed run would wait `patience` epochs afresh.
    STATE_FIELDS = ("wait", "best", "best_epoch", "cooldown_counter")

    def __init__(self, run, model_factory, monitor: str = "val_mean_auroc",
                 initial_best: Optional[float] = None, checkpoint_dir=None, publish: bool = True,
                 stateful=(), restored_state: Optional[dict] = None):
        super().__init__()
        self.run = run
        self.monitor = monitor
        self.best = initial_best
        self.best_epoch = None
        self.checkpoint_dir = checkpoint_dir
        self.publish = publish
        self.stateful = list(stateful)
        self.restored_state = dict(restored_state or {})
        self._twin = _InferenceTwin(model_factory)

    def on_train_begin(self, logs=None):
        # Runs after the stateful callbacks' own on_train_begin (they come earlier in the list).
        for callback in self.stateful:
            for name, value in self.restored_state.get(type(callback).__name__, {}).items():
                setattr(callback, name, value)

    def callback_state(self) -> dict:
        """``{callback class: {field: value}}`` of the stateful callbacks, JSON-ready."""
        state = {}
        for callback in self.stateful:
            fields = {}
            for name in self.STATE_FIELDS:
                value = getattr(callback, name, None)
                if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
                    fields[name] = float(value) if isinstance(value, (float, np.floating)) else int(value)
            state[type(callback).__name__] = fields
        return state

    def save_models(self, best_path, inference_path=None) -> None:
        """Writes the current weights as an inference-ready ``best_path`` (+ its probabilities view)."""
        self._twin.save(self.model, best_path, inference_path)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {k: float(v) for k, v in logs.items() if _is_scalar(v)}
        value = row.get(self.monitor)
        improved = value is not None and math.isfinite(value) and (self.best is None or value > self.best)
        self.run.commit_epoch(epoch, row, self.model, save_best=self.save_models if improved else None,
                              checkpoint_dir=self.checkpoint_dir, publish=self.publish,
                              callback_state=self.callback_state())
        if improved:
            self.best, self.best_epoch = float(value), epoch


def _is_scalar(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return np.ndim(value) == 0


class NaNGuard(keras.callbacks.Callback):
    """Stops training on a non-finite loss and keeps the weights of the last finished epoch.

    The weights are snapshotted in memory at the start of every epoch (cheap next to an epoch) and
    put back when a batch reports a NaN/inf loss; they are then saved to ``last_good_path`` and
    ``reason`` says what happened.
    """

    def __init__(self, last_good_path=None, model_factory=None):
        super().__init__()
        self.last_good_path = last_good_path
        self._twin = _InferenceTwin(model_factory) if model_factory else None
        self._good_weights = None
        self._epoch = 0
        self.stopped = False
        self.reason = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._good_weights = self.model.get_weights()

    def on_train_batch_end(self, batch, logs=None):
        self._check((logs or {}).get("loss"), f"epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        if not self.stopped:
            self._check((logs or {}).get("loss"), f"end of epoch {epoch + 1}")

    def _check(self, loss, where: str) -> None:
        if self.stopped or loss is None:
            return
        loss = float(loss)
        if math.isfinite(loss):
            return
        self.stopped = True
        self.reason = (f"non-finite training loss ({loss}) at {where}; stopped and restored the "
                       f"weights from the start of epoch {self._epoch + 1}")
        self.model.stop_training = True
        if self._good_weights is not None:
            self.model.set_weights(self._good_weights)
        if self._twin is not None and self.last_good_path is not None:
            self._twin.save(self.model, self.last_good_path)
        print(f"NaN guard: {self.reason}", file=sys.stderr, flush=True)


class EpochLogger(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` and ``learning_rate`` to the logs; optionally prints one line per epoch."""

    SHOWN = ("loss", "val_mean_auroc", "learning_rate")

    def __init__(self, epochs: int, print_lines: bool = False):
        super().__init__()
        self.epochs = epochs
        self.print_lines = print_lines
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["epoch_seconds"] = time.perf_counter() - (self._start or time.perf_counter())
        try:
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)
        except (AttributeError, TypeError, ValueError):
            pass
        if self.print_lines:
            parts = [f"{k} {logs[k]:.4g}" for k in self.SHOWN if k in logs]
            print(f"Epoch {epoch + 1}/{self.epochs} - {logs['epoch_seconds']:.1f}s - " + " - ".join(parts),
                  flush=True)


# The nested backbone models of `can_tf.models.CANModel` and `can_tf.models.BaselineModel`.
BACKBONE_NAMES = ("branch_1_backbone", "branch_2_backbone", "backbone")


def backbone_layers(model) -> list:
    """The nested backbone models of a CAN (two) or baseline (one) model, by layer name.

    Raises:
        ValueError: naming the model, when it has none of :data:`BACKBONE_NAMES`.
    """
    found = [layer for layer in model.layers if layer.name in BACKBONE_NAMES]
    if not found:
        raise ValueError(f"model {model.name!r} has no backbone layer (one of {', '.join(BACKBONE_NAMES)})")
    return found


def _with_sublayers(layer) -> list:
    """``layer`` and every layer nested in it, parents before children."""
    out = [layer]
    for child in getattr(layer, "layers", ()):
        out += _with_sublayers(child)
    return out


class BackboneFreeze(keras.callbacks.Callback):
    """Trains only the heads and cross-attention for ``freeze_epochs`` epochs, then every layer.

    Frozen backbones are not trainable: they get no update, and their batch-normalisation layers
    run in inference mode (Keras 3 normalises with the moving statistics and leaves them alone when
    a BatchNormalization layer is not trainable), so their weights and statistics stay
    bit-identical. At the start of epoch ``freeze_epochs`` (0-based) the layers get their trainable
    flags back, the optimizer restarts with a fresh state (`can_tf.training.optimizers`) at the rate
    the schedule has reached times ``lr_factor`` (``unfrozen_rate``: the restarted schedule; None
    for a variable rate, multiplied in place), and the train step is traced again with the new set
    of trainable weights (``make_train_function(force=True)``, what Keras asks for).

    The phase follows from the epoch alone, so a resumed ``fit(initial_epoch=...)`` lands in the
    right one: the checkpoint of epoch ``freeze_epochs - 1`` still holds the frozen phase's
    optimizer state (the restart happens at the next epoch's start, in every run), later ones the
    restarted optimizer's. The optimizer must have been built over every weight, backbones included,
    before freezing (`can_tf.training.trainer.compile_model` does): its variables are then the same
    in both phases, and so are the checkpoints' contents.

    ``log`` receives one line when the backbones are frozen and one when they are unfrozen.

    Example:
        >>> freeze = BackboneFreeze(freeze_epochs=2, lr_factor=0.1)            # doctest: +SKIP
        >>> model.fit(train_ds, epochs=5, callbacks=[freeze])                   # doctest: +SKIP
    """

    def __init__(self, freeze_epochs: int, lr_factor: float = 0.1, unfrozen_rate=None, log=None,
                 key: str = "backbones_frozen"):
        super().__init__()
        if freeze_epochs < 1:
            raise ValueError(f"freeze_epochs must be at least 1, got {freeze_epochs!r}")
        self.freeze_epochs = int(freeze_epochs)
        self.lr_factor = float(lr_factor)
        self.unfrozen_rate = unfrozen_rate
        self.log = log
        self.key = key
        self.frozen = False
        self._trainable = None  # [(layer, trainable)] as built, to give back when unfreezing
        self._started = False

    def on_train_begin(self, logs=None):
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        first, self._started = not self._started, True
        if first and epoch < self.freeze_epochs:
            self._freeze()
        elif first and epoch > self.freeze_epochs and self.unfrozen_rate is not None:
            # Resumed after the restart: the checkpoint holds the restarted optimizer's state.
            self.model.optimizer.learning_rate = self.unfrozen_rate
            self.model.make_train_function(force=True)
        if epoch == self.freeze_epochs:
            self._unfreeze()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.key] = 1.0 if self.frozen else 0.0

    def _freeze(self) -> None:
        backbones = backbone_layers(self.model)
        self._trainable = [(layer, layer.trainable) for backbone in backbones for layer in _with_sublayers(backbone)]
        for backbone in backbones:
            backbone.trainable = False
        self.frozen = True
        self.model.make_train_function(force=True)
        self._say(f"Backbones frozen ({', '.join(b.name for b in backbones)}) for epochs 1-{self.freeze_epochs}: "
                  f"training the heads and cross-attention only")

    def _unfreeze(self) -> None:
        for layer, trainable in self._trainable or ():
            layer.trainable = trainable
        self.frozen = False
        optimizer = self.model.optimizer
        rate = current_learning_rate(optimizer) * self.lr_factor
        restart_optimizer(optimizer)
        optimizer.learning_rate = self.unfrozen_rate if self.unfrozen_rate is not None else rate
        self.model.make_train_function(force=True)
        self._say(f"Backbones unfrozen from epoch {self.freeze_epochs + 1}: training every layer, optimizer "
                  f"restarted at learning rate x{self.lr_factor:g} ({rate:.4g})")

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)
