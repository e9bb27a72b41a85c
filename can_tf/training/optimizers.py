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

Unfreezing (``train.freeze_epochs`` > 0, see `can_tf.training.callbacks.BackboneFreeze`): when the
backbones join training after ``F`` frozen epochs of ``S`` steps, :func:`restart_optimizer` gives
the optimizer a fresh state (step counter and moment slots at zero, as a newly compiled optimizer)
and the rate continues from where the schedule is, scaled: ``factor * base(step + F * S)``
(:class:`ShiftedSchedule`, from :func:`unfrozen_learning_rate`), or, for a variable rate
(constant, plateau), its current value times ``factor``. A fresh state matters for Adam: its bias
correction uses the shared step counter, so moments that start from zero at step ``t >> 1`` would
make the backbones' first updates several times larger than the rate says.

Example:
    >>> from can_tf.config import TrainConfig
    >>> opt, callbacks = build_optimizer(TrainConfig(epochs=2, warmup_epochs=0.5), steps_per_epoch=10)
    >>> type(opt).__name__, callbacks
    ('AdamW', [])
    >>> after = ShiftedSchedule(keras.optimizers.schedules.CosineDecay(1.0, decay_steps=4), offset=2, factor=0.1)
    >>> round(float(after(0)), 6)  # 0.1 * (1 + cos(pi * 2 / 4)) / 2
    0.05
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


@keras.saving.register_keras_serializable(package="can_tf")
class ShiftedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``factor * schedule(step + offset)``: a schedule continued, scaled, by a restarted optimizer.

    After :func:`restart_optimizer` the step counter starts again from 0; ``offset`` (the steps
    taken before) keeps the schedule where it was.
    """

    def __init__(self, schedule, offset: int, factor: float):
        self.schedule = schedule
        self.offset = int(offset)
        self.factor = float(factor)

    def __call__(self, step):
        return keras.ops.multiply(self.schedule(keras.ops.add(step, self.offset)), self.factor)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "offset": self.offset,
                "factor": self.factor}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["offset"],
                   config["factor"])


# Schedules whose rate is an optimizer variable (ReduceLROnPlateau assigns to it).
VARIABLE_RATE_SCHEDULES = ("constant", "plateau")


def _base_schedule(train_config, steps_per_epoch: int):
    lr = float(train_config.learning_rate)
    if train_config.schedule in VARIABLE_RATE_SCHEDULES:
        return lr
    if train_config.schedule != "cosine":
        raise ConfigError(f"train.schedule must be cosine, plateau or constant; got {train_config.schedule!r}")
    total = max(1, int(train_config.epochs) * int(steps_per_epoch))
    warmup = min(int(round(train_config.warmup_epochs * steps_per_epoch)), total - 1)
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=total - warmup, warmup_target=lr, warmup_steps=warmup
    )


def learning_rate_schedule(train_config, steps_per_epoch: int):
    """A float (constant / plateau) or a `LearningRateSchedule` (cosine, wrapped in `OncePerStep`)."""
    base = _base_schedule(train_config, steps_per_epoch)
    return base if isinstance(base, float) else OncePerStep(base)


def unfrozen_learning_rate(train_config, steps_per_epoch: int):
    """The schedule of the optimizer restarted when the backbones are unfrozen, or None for a
    variable rate (constant, plateau), which is scaled in place instead.

    ``unfreeze_lr_factor * base(step + freeze_epochs * steps_per_epoch)``, in `OncePerStep`.
    """
    base = _base_schedule(train_config, steps_per_epoch)
    if isinstance(base, float):
        return None
    offset = int(train_config.freeze_epochs) * int(steps_per_epoch)
    return OncePerStep(ShiftedSchedule(base, offset, train_config.unfreeze_lr_factor))


def restart_optimizer(optimizer) -> None:
    """Puts the optimizer's own state back to a fresh one: step counter and slots to zero.

    The variables stay the same objects (traced functions and checkpoints keep fitting); the
    learning rate variable of a float rate is zeroed too, so set the rate afterwards. The loss-scale
    state of a `keras.optimizers.LossScaleOptimizer` (mixed float16) is kept.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    for variable in inner.variables:
        variable.assign(keras.ops.zeros(variable.shape, variable.dtype))


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
