"""The optimizer and learning-rate schedule of a run, from Keras built-ins only.

``train.optimizer``: ``adamw`` (decoupled weight decay), ``adam`` (no decay, as CheXNet) or ``sgd``
(momentum 0.9 with decoupled weight decay). ``train.schedule``:

- ``cosine``: linear warm-up over ``warmup_epochs`` from 0 to ``learning_rate``, then cosine decay
  to 0 at the last step (`keras.optimizers.schedules.CosineDecay` with ``warmup_steps``);
- ``plateau``: constant, divided by 10 whenever the validation mean AUROC has not improved for an
  epoch (`keras.callbacks.ReduceLROnPlateau`, CheXNet's recipe);
- ``constant``.

Keras's decoupled weight decay reads ``optimizer.learning_rate`` once per variable, and a schedule
is a small graph of its own (the warm-up is a ``cond``): for the two DenseNet-121s of the paper
preset (~1,450 variables) that made ~1,450 copies of the schedule in the traced train step, about
a quarter of the first epoch in a profile. :class:`OncePerStep` computes the schedule once per
traced step and hands the same tensor to every variable (the suite's figures before and after:
``benchmarks/README.md``).

Example:
    >>> from can_tf.config import TrainConfig
    >>> opt, callbacks = build_optimizer(TrainConfig(epochs=2, warmup_epochs=0.5), steps_per_epoch=10)
    >>> type(opt).__name__, callbacks
    ('AdamW', [])
"""

from __future__ import annotations

import weakref

import keras

from can_tf.config import ConfigError

PLATEAU_FACTOR = 0.1  # CheXNet: "decay the learning rate by a factor of 10"
PLATEAU_PATIENCE = 1  # ... "each time the validation metric plateaus after an epoch"


@keras.saving.register_keras_serializable(package="can_tf")
class OncePerStep(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule computed once per traced step, however many variables ask for it.

    Inside a traced function the first call for a step variable builds the schedule's ops; later
    calls from the same graph with the same step get that tensor back. All reads of one step happen
    before the optimizer increments its step counter, so they would all compute the same value.
    Eager calls (e.g. logging the learning rate) and calls from any other graph (another trace, a
    loop or branch body) compute afresh.
    """

    def __init__(self, schedule):
        self.schedule = schedule
        self._last = None  # (weakref to the graph, the step object, the value)

    def __call__(self, step):
        import tensorflow as tf

        if tf.executing_eagerly():
            return self.schedule(step)
        graph = tf.compat.v1.get_default_graph()
        if self._last is not None and self._last[0]() is graph and self._last[1] is step:
            return self._last[2]
        value = self.schedule(step)
        self._last = (weakref.ref(graph), step, value)
        return value

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]))


def learning_rate_schedule(train_config, steps_per_epoch: int):
    """A float (constant / plateau) or a `LearningRateSchedule` (cosine, wrapped in `OncePerStep`)."""
    lr = float(train_config.learning_rate)
    if train_config.schedule in ("constant", "plateau"):
        return lr
    if train_config.schedule != "cosine":
        raise ConfigError(f"train.schedule must be cosine, plateau or constant; got {train_config.schedule!r}")
    total = max(1, int(train_config.epochs) * int(steps_per_epoch))
    warmup = min(int(round(train_config.warmup_epochs * steps_per_epoch)), total - 1)
    if warmup <= 0:
        return OncePerStep(keras.optimizers.schedules.CosineDecay(lr, decay_steps=total))
    return OncePerStep(keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=total - warmup, warmup_target=lr, warmup_steps=warmup
    ))


def build_optimizer(train_config, steps_per_epoch: int):
    """``(optimizer, callbacks)``: the callbacks the schedule needs (ReduceLROnPlateau or none)."""
    lr = learning_rate_schedule(train_config, steps_per_epoch)
    name = train_config.optimizer
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=train_config.weight_decay)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=lr)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=0.9,
                                         weight_decay=train_config.weight_decay or None)
    else:
        raise ConfigError(f"train.optimizer must be adamw, adam or sgd; got {name!r}")
    callbacks = []
    if train_config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_mean_auroc", mode="max", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE,
            min_lr=float(train_config.learning_rate) * 1e-3, verbose=0,
        ))
    return optimizer, callbacks


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer applies at its current step."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
