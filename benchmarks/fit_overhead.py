"""Fit overhead: a ``model.fit`` call's wall time against the sum of its train steps.

The throughput benchmarks time epochs of a few steps, each its own ``fit`` call, so anything a call
costs besides its steps (setting up and tearing down the input iterator, callbacks) is counted as
training. This benchmark makes that cost visible: for ``n`` steps per epoch (1, 3, 5 and 12 by
default) it runs several one-epoch ``fit`` calls on a traced model and reports, per call,

    overhead = wall / sum(step seconds) - 1

where a step's seconds run from ``on_train_batch_begin`` to ``on_train_batch_end`` (the compiled
train function, which fetches its batch itself) and the wall time covers the whole ``fit`` call,
iterator teardown included. The check: a call passes when its overhead is at most
:data:`MAX_OVERHEAD` (5%) of its steps, or at most :data:`FIXED_COST_S` seconds in all (what a
``fit`` call's own set-up costs; it only matters for tiny models, whose steps take milliseconds).
A stall tied to the input pipeline breaks it at every step count: tf.data autotuning made each
iterator teardown wait for the tuning thread's next wake-up (0.01 x (2^k - 1) s after the
iterator's creation), so 5 DenseNet steps of 1.43 s took 10.23 s; `can_tf.data.pipeline` turns
autotuning off.

Usage:
    python -m benchmarks.fit_overhead --preset paper --image-size 128 --calls 3
    python -m benchmarks.fit_overhead --preset small --image-size 64 --steps 1 3 5 12

Example:
    >>> calls = [FitCall(steps=3, wall_s=3.12, step_s=(1.0, 1.0, 1.0)),
    ...          FitCall(steps=5, wall_s=10.23, step_s=(1.43,) * 5)]
    >>> [round(c.overhead, 3) for c in calls]
    [0.04, 0.431]
    >>> [row["ok"] for row in overhead_rows(calls)]
    [True, False]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MAX_OVERHEAD = 0.05  # a fit call may cost 5% more than its steps ...
FIXED_COST_S = 0.1  # ... or this many seconds in all (Keras's per-call set-up, ~0.02-0.05 s here)
STEP_COUNTS = (1, 3, 5, 12)


@dataclass(frozen=True)
class FitCall:
    """One timed ``fit`` call: its steps, its wall time and each step's seconds."""

    steps: int
    wall_s: float
    step_s: tuple

    @property
    def steps_s(self) -> float:
        """Seconds spent in train steps."""
        return float(sum(self.step_s))

    @property
    def overhead_s(self) -> float:
        """Seconds of the call outside its steps."""
        return self.wall_s - self.steps_s

    @property
    def overhead(self) -> float:
        """``wall / steps - 1``: the call's cost beyond its steps, as a fraction of them."""
        return self.wall_s / self.steps_s - 1.0

    @property
    def ok(self) -> bool:
        """Within :data:`MAX_OVERHEAD` of its steps, or within :data:`FIXED_COST_S` seconds."""
        return self.overhead <= MAX_OVERHEAD or self.overhead_s <= FIXED_COST_S


def overhead_rows(calls: Sequence[FitCall]) -> list:
    """One row per call, in order: steps, wall and step seconds, overhead (fraction and s), ``ok``."""
    return [{"steps": c.steps, "wall_s": c.wall_s, "steps_s": c.steps_s, "step_s_mean": c.steps_s / c.steps,
             "overhead_s": c.overhead_s, "overhead": c.overhead, "ok": c.ok} for c in calls]


class StepClock:
    """A Keras callback recording each train step's seconds (created lazily: Keras import)."""

    def __new__(cls):
        import keras

        class _StepClock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []
                self._start = None

            def on_train_batch_begin(self, batch, logs=None):
                self._start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.seconds.append(time.perf_counter() - self._start)

        return _StepClock()


def time_fit_call(model, dataset, steps: int) -> FitCall:
    """Runs one epoch of ``steps`` steps in its own ``fit`` call, as the benchmarks do, and times it."""
    clock = StepClock()
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[clock], shuffle=False)
    wall = time.perf_counter() - start
    return FitCall(steps=steps, wall_s=wall, step_s=tuple(clock.seconds))


def measure_fit_overhead(run, step_counts: Sequence[int] = STEP_COUNTS, calls: int = 3) -> list:
    """Times ``calls`` rounds of one ``fit`` call per step count on a warmed-up
    :class:`benchmarks.train_throughput.TrainingRun`; returns the `FitCall` list, in run order.

    Step counts are rounded up to a multiple of the run's ``steps_per_execution`` (Keras counts an
    execution as one step in the callbacks). Rounds interleave the step counts, so a load change on
    a shared machine hits each alike.
    """
    spe = run.config.train.steps_per_execution
    counts = [max(spe, -(-int(n) // spe) * spe) for n in step_counts]
    return [time_fit_call(run.model, run.dataset, n) for _ in range(calls) for n in counts]


def summary(calls: Sequence[FitCall]) -> dict:
    """``{"calls", "failed", "max_overhead", "max_overhead_s", "ok"}`` over every call."""
    return {"calls": len(calls), "failed": sum(not c.ok for c in calls),
            "max_overhead": max((c.overhead for c in calls), default=None),
            "max_overhead_s": max((c.overhead_s for c in calls), default=None),
            "ok": all(c.ok for c in calls)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", default=None, help="ChestX-ray14 folder (default: the NIH sample); 'phantom'")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEP_COUNTS))
    parser.add_argument("--calls", type=int, default=3, help="fit calls per step count")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)

    from benchmarks.train_throughput import DEFAULT_DATA, TrainingRun, load_images_table
    from can_tf.config import RunConfig

    config = RunConfig.from_preset(args.preset, overrides=[
        "model.weights=null", f"data.image_size={args.image_size}", f"train.batch_size={args.batch_size}",
        *args.set])
    data: Optional[str] = None if args.data == "phantom" else (args.data or str(DEFAULT_DATA))
    df, class_names = load_images_table(data, limit=args.batch_size * 4)
    run = TrainingRun(config, df, class_names, steps=1)
    try:
        calls = measure_fit_overhead(run, args.steps, args.calls)
    finally:
        run.close()
    result = {"preset": args.preset, "image_size": args.image_size, "batch_size": args.batch_size,
              "rows": overhead_rows(calls), "summary": summary(calls)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
