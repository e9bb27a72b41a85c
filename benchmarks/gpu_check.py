"""A short GPU check of the paper's CAN: images/s and peak memory, XLA off and on, and PyTorch's.

On one GPU, within ``--seconds`` (default 240, so the whole check fits in under 5 minutes):

1. the ``paper`` preset's CAN (two DenseNet-121 branches, 224 px, its batch of 32) built and
   compiled by :func:`can_tf.training.trainer.compile_model` inside a ``MirroredStrategy`` scope
   with the ``mixed_float16`` policy, XLA off (``jit_compile=False``), then on; each timed with
   ``train_on_batch`` (the compiled train function ``fit`` runs) on a fixed synthetic batch, its
   peak GPU memory read from ``tf.config.experimental.get_memory_info`` after a reset;
2. when torch sees CUDA, the same CAN written the PyTorch way
   (:func:`benchmarks.peer_pytorch.torch_models`) under float16 autocast with a grad scaler
   (AMP), for the ratio can-tf / PyTorch.

The budget is kept honestly: before each part the time left is checked against what the part
needs at least (tracing DenseNet-121 alone takes tens of seconds, XLA more), a part that does not
fit is reported as skipped, and each timing loop stops at its share of the deadline. Images/s is
the batch over the median step time.

Without a GPU it prints one line, ``no GPU: nothing measured``, and exits 0, without importing
TensorFlow when no NVIDIA device is visible, so it is safe (and fast) to run anywhere.

Usage:
    python -m benchmarks.gpu_check [--seconds 240] [--out gpu.json]

Example:
    >>> from benchmarks.gpu_check import Deadline
    >>> deadline = Deadline(10.0)
    >>> deadline.allows(5.0), deadline.allows(60.0)
    (True, False)
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

NO_GPU = "no GPU: nothing measured"
IMAGE_SIZE = 224
# Least seconds a part needs to give a figure (build + trace + a few steps), measured on a GPU
# roughly; a part with less time left is skipped rather than overrunning the budget.
MIN_PART_S = {"tf_xla_off": 45.0, "tf_xla_on": 75.0, "torch_amp": 25.0}


@dataclasses.dataclass
class Deadline:
    """Seconds left of a budget that started when this was created."""

    seconds: float
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def left(self) -> float:
        """Seconds until the deadline (negative once past it)."""
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, needed: float) -> bool:
        """Whether ``needed`` seconds still fit before the deadline."""
        return self.left() >= needed


def nvidia_visible() -> bool:
    """Whether an NVIDIA device could be there (device nodes or ``nvidia-smi``), without TensorFlow."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def timed_steps(step: Callable[[], None], until: float, *, warmup: int = 2, max_steps: int = 30) -> dict:
    """Runs ``warmup`` then up to ``max_steps`` timed calls of ``step``, stopping at ``until``.

    ``until`` is a ``time.perf_counter()`` value; at least one timed call always runs.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    warm_s = time.perf_counter() - start
    times = []
    while len(times) < max_steps and (not times or time.perf_counter() + times[-1] < until):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "steps": len(times), "warmup_s": warm_s}


def keras_part(xla: bool, until: float, batch_size: int) -> dict:
    """The paper CAN under MirroredStrategy + mixed_float16: images/s and peak GPU memory."""
    import gc

    import keras
    import tensorflow as tf

    from benchmarks.peer_pytorch import KerasSide

    keras.backend.clear_session()
    gc.collect()
    strategy = tf.distribute.MirroredStrategy()
    build = time.perf_counter()
    side = KerasSide("can", IMAGE_SIZE, precision="float16", xla=xla, batch_size=batch_size, strategy=strategy)
    build_s = time.perf_counter() - build
    tf.config.experimental.reset_memory_stats("GPU:0")
    timing = timed_steps(side.train_step, until)
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    return {"side": "can-tf", "setting": f"mixed_float16, XLA {'on' if xla else 'off'}",
            "replicas": strategy.num_replicas_in_sync, "batch_size": batch_size, "params": side.params,
            "images_per_s": batch_size / timing["median_s"], "step_ms": timing["median_s"] * 1000,
            "peak_gpu_mb": peak / 2 ** 20, "build_s": build_s, **timing}


def torch_part(until: float, batch_size: int) -> dict:
    """The PyTorch CAN under float16 AMP on CUDA: images/s and peak GPU memory."""
    import torch

    from benchmarks.peer_pytorch import TorchSide

    side = TorchSide("can", IMAGE_SIZE, bf16=True, device="cuda", batch_size=batch_size)
    torch.cuda.reset_peak_memory_stats()
    timing = timed_steps(side.train_step, until)
    return {"side": "PyTorch", "setting": "float16 AMP, channels_last", "replicas": 1,
            "batch_size": batch_size, "params": side.params,
            "images_per_s": batch_size / timing["median_s"], "step_ms": timing["median_s"] * 1000,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20, **timing}


def torch_cuda_reason() -> Optional[str]:
    """None when torch can use CUDA, else why not (one line)."""
    try:
        import torch
    except ImportError:
        return "torch not installed"
    return None if torch.cuda.is_available() else "torch sees no CUDA device"


def run(seconds: float = 240.0) -> Optional[dict]:
    """Every part that fits in ``seconds``; None when TensorFlow sees no GPU."""
    deadline = Deadline(seconds)
    if not nvidia_visible():
        return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    for gpu in gpus:
        # Grow on demand: the peak then is what the model needs, not TensorFlow's up-front grab, and
        # PyTorch can still allocate in the same process.
        tf.config.experimental.set_memory_growth(gpu, True)
    from can_tf.config import RunConfig

    batch_size = RunConfig.from_preset("paper").train.batch_size
    torch_reason = torch_cuda_reason()
    parts = [("tf_xla_off", lambda until: keras_part(False, until, batch_size)),
             ("tf_xla_on", lambda until: keras_part(True, until, batch_size))]
    if torch_reason is None:
        parts.append(("torch_amp", lambda until: torch_part(until, batch_size)))
    rows, skipped = [], {} if torch_reason is None else {"torch_amp": torch_reason}
    for i, (name, part) in enumerate(parts):
        if not deadline.allows(MIN_PART_S[name]):
            skipped[name] = f"skipped: {deadline.left():.0f} s left of the budget, needs {MIN_PART_S[name]:.0f} s"
            continue
        # Each part may use its share of what is left, leaving the others theirs.
        share = deadline.left() / (len(parts) - i)
        try:
            rows.append({"part": name, **part(time.perf_counter() + share * 0.5)})
        except Exception as error:  # one part failing (e.g. out of memory) must not hide the others
            skipped[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    reference = next((r["images_per_s"] for r in rows if r["part"] == "torch_amp"), None)
    for row in rows:
        row["ratio_vs_pytorch"] = (row["images_per_s"] / reference) if reference and row["part"] != "torch_amp" else None
    payload = {"gpus": [g.name for g in gpus], "tensorflow": tf.__version__, "budget_s": seconds,
               "total_s": seconds - deadline.left(), "rows": rows, "skipped": skipped}
    payload["markdown"] = report_markdown(payload)
    return payload


def report_markdown(payload: dict) -> str:
    """The result table and what was skipped."""
    from benchmarks.common import markdown_table

    columns = [("side", "side"), ("setting", "setting"), ("batch_size", "batch"), ("images_per_s", "img/s"),
               ("step_ms", "step ms"), ("peak_gpu_mb", "peak GPU MB"), ("steps", "timed steps"),
               ("ratio_vs_pytorch", "img/s ratio vs PyTorch")]
    lines = [f"GPU check on {', '.join(payload['gpus'])}: paper CAN, {IMAGE_SIZE} px, "
             f"{payload['total_s']:.0f} s of a {payload['budget_s']:.0f} s budget", "",
             markdown_table(columns, payload["rows"])]
    lines += [f"- {name}: {why}" for name, why in payload["skipped"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="time budget for every part together")
    parser.add_argument("--out", help="write the JSON results here")
    args = parser.parse_args(argv)
    payload = run(args.seconds)
    if payload is None:
        print(NO_GPU)
        return 0
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(payload["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
