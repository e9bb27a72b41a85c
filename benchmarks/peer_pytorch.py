"""can-tf against the same models written the usual PyTorch way, timed in turns in one process.

Both sides build the same two models from random weights (weights do not change the cost):

- **CAN**: two DenseNet-121 feature extractors (torchvision ``densenet121().features`` + ReLU, as
  torchvision's own classifier applies it), 1x1 projections of both maps to ``attention_dim``,
  their Hadamard product, a 1x1 convolution and a sigmoid giving one spatial map ``A``, the
  residual re-weighting ``F' = F + F * A`` of both branches, and three linear heads on the pooled
  features (``fused`` on the concatenation, ``branch_1``, ``branch_2``): the graph of
  :class:`can_tf.models.CANModel` (see :mod:`can_tf.models.cross_attention`).
- **DenseNet-121 baseline** (CheXNet): one extractor, pooling, one linear head.

Parameter counts are compared with batch-norm statistics included on both sides: Keras counts
a BatchNormalization layer's moving mean and variance as (non-trainable) weights, PyTorch keeps
them as buffers, so the PyTorch figure is ``parameters + running_mean + running_var``.

What is timed, per model and precision, alternating can-tf and PyTorch on every repeat so that a
load change on a shared machine hits both alike (the ratios hold better than the absolute
figures):

- training images/s at batch 8: can-tf through the model compiled by
  :func:`can_tf.training.trainer.compile_model` from the run preset (``paper`` for CAN,
  ``chexnet`` for the baseline: the trainer's loss and optimizer), stepped with
  ``train_on_batch`` (the same compiled train function ``fit`` runs); PyTorch with AdamW (CAN)
  or Adam (baseline), BCE-with-logits on every head, ``channels_last``;
- inference images/s at batch 8 and latency at batch 1: can-tf's inference view
  (:func:`can_tf.models.inference_model`) with ``predict_on_batch``; PyTorch ``eval()`` under
  ``inference_mode`` returning ``sigmoid(fused)``.

Precision: float32 on both sides, then each side's best low precision: PyTorch bfloat16
autocast (with ``channels_last``), can-tf's ``mixed_bfloat16`` policy only where the CPU has
native bfloat16 (AVX512-BF16 or AMX; emulated bfloat16 is slower than float32 in TensorFlow).
Both sides get the same synthetic input tensors, so no input pipeline is timed.

Ratios are can-tf / PyTorch: above 1 means can-tf is faster for throughput, and *slower* for the
latency row.

Usage:
    python -m benchmarks.peer_pytorch [--image-size 224] [--repeats 3] [--quick] [--out peer.json]

Example:
    >>> from benchmarks.peer_pytorch import torch_missing_reason
    >>> torch_missing_reason() is None or torch_missing_reason().startswith("torch")
    True
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BATCH_SIZE = 8
NUM_CLASSES = 14
ATTENTION_DIM = 256
# ImageNet statistics: what can-tf's "torch" preprocessing for DenseNet-121 applies inside its graph.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NOT_USED_BF16 = "not used: no AVX512-BF16/AMX"


def torch_missing_reason() -> Optional[str]:
    """None when torch and torchvision import, else one line saying which is missing."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as error:
        return f"torch/torchvision not installed ({error}); nothing to compare against"
    return None


# ---- the PyTorch models -------------------------------------------------------------------------
def torch_models():
    """The PyTorch classes ``(TorchCAN, TorchBaseline)`` (built lazily: torch is optional).

    Both take an image batch ``(B, 1|3, S, S)`` in [0, 255], like can-tf's models, and return a
    dict of logits with can-tf's output names.
    """
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn

    class _Input(nn.Module):
        # Grayscale to RGB and ImageNet normalisation, inside the model as can-tf does it.
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)

        def forward(self, x):
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def extractor():
        return torchvision.models.densenet121(weights=None).features

    class TorchCAN(nn.Module):
        """Two DenseNet-121 extractors, Hadamard cross-attention, three linear heads."""

        def __init__(self, num_classes: int = NUM_CLASSES, attention_dim: int = ATTENTION_DIM):
            super().__init__()
            self.input = _Input()
            self.backbone_1, self.backbone_2 = extractor(), extractor()
            self.projection_1 = nn.Conv2d(1024, attention_dim, 1)
            self.projection_2 = nn.Conv2d(1024, attention_dim, 1)
            self.attention_logits = nn.Conv2d(attention_dim, 1, 1)
            self.fused = nn.Linear(2048, num_classes)
            self.branch_1 = nn.Linear(1024, num_classes)
            self.branch_2 = nn.Linear(1024, num_classes)

        def forward(self, x):
            x = self.input(x)
            f1, f2 = F.relu(self.backbone_1(x)), F.relu(self.backbone_2(x))
            attention = torch.sigmoid(self.attention_logits(self.projection_1(f1) * self.projection_2(f2)))
            p1 = torch.flatten(F.adaptive_avg_pool2d(f1 + f1 * attention, 1), 1)
            p2 = torch.flatten(F.adaptive_avg_pool2d(f2 + f2 * attention, 1), 1)
            return {"fused": self.fused(torch.cat([p1, p2], 1)), "branch_1": self.branch_1(p1),
                    "branch_2": self.branch_2(p2)}

    class TorchBaseline(nn.Module):
        """One DenseNet-121 extractor, pooling, one linear head (CheXNet)."""

        def __init__(self, num_classes: int = NUM_CLASSES):
            super().__init__()
            self.input = _Input()
            self.backbone = extractor()
            self.fused = nn.Linear(1024, num_classes)

        def forward(self, x):
            f = F.relu(self.backbone(self.input(x)))
            return {"fused": self.fused(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1))}

    return TorchCAN, TorchBaseline


def torch_param_count(module) -> int:
    """Parameters plus batch-norm running statistics: what Keras's ``count_params`` counts."""
    buffers = sum(b.numel() for name, b in module.named_buffers()
                  if name.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in module.parameters()) + buffers


class TorchSide:
    """A PyTorch model with its optimizer, ready to time a train step, a batch and one image.

    Args:
        kind: ``"can"`` or ``"baseline"``.
        image_size: input size in pixels.
        bf16: bfloat16 autocast on the CPU (the model stays float32: mixed precision).
        device: ``"cpu"`` or ``"cuda"`` (``bf16`` then means float16 autocast with a grad scaler).
    """

    def __init__(self, kind: str, image_size: int, *, bf16: bool = False, device: str = "cpu",
                 batch_size: int = BATCH_SIZE):
        import torch

        TorchCAN, TorchBaseline = torch_models()
        torch.manual_seed(0)
        self.device, self.low = device, bf16
        self.model = (TorchCAN() if kind == "can" else TorchBaseline()).to(device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.params = torch_param_count(self.model)
        optimizer = torch.optim.AdamW if kind == "can" else torch.optim.Adam
        self.optimizer = optimizer(self.model.parameters(), lr=1e-4)
        self.dtype = torch.float16 if device == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if (bf16 and device == "cuda") else None
        gen = torch.Generator().manual_seed(0)
        self.batch = (torch.rand(batch_size, 1, image_size, image_size, generator=gen) * 255).to(device)
        self.one = self.batch[:1].clone()
        self.labels = (torch.rand(batch_size, NUM_CLASSES, generator=gen) > 0.8).float().to(device)
        self.loss = torch.nn.BCEWithLogitsLoss()

    def _autocast(self):
        import torch

        return torch.autocast(device_type=self.device, dtype=self.dtype, enabled=self.low)

    def _sync(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def train_step(self) -> None:
        """One optimizer step on the fixed batch (forward, BCE on every head, backward, update)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outputs = self.model(self.batch)
            loss = sum(self.loss(logits.float(), self.labels) for logits in outputs.values())
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self._sync()

    def predict(self, batch) -> None:
        """``sigmoid(fused)`` of ``batch`` in eval mode, without autograd."""
        import torch

        self.model.eval()
        with torch.inference_mode(), self._autocast():
            torch.sigmoid(self.model(batch)["fused"].float()).cpu()


class KerasSide:
    """A can-tf model compiled as the trainer compiles it, ready to time the same three things.

    Args:
        kind: ``"can"`` (the ``paper`` preset) or ``"baseline"`` (the ``chexnet`` preset).
        image_size: input size in pixels.
        precision: ``train.mixed_precision`` (``"off"``, ``"bfloat16"``, ``"float16"``).
        xla: ``train.xla`` (``jit_compile``).
    """

    def __init__(self, kind: str, image_size: int, *, precision: str = "off", xla: bool = False,
                 batch_size: int = BATCH_SIZE, strategy=None):
        import contextlib

        import keras
        import numpy as np

        from can_tf.config import RunConfig
        from can_tf.models import build_model, inference_model
        from can_tf.training.strategy import set_precision
        from can_tf.training.trainer import compile_model, output_names

        config = RunConfig.from_preset("paper" if kind == "can" else "chexnet", overrides=[
            "model.weights=null", f"data.image_size={image_size}", f"train.batch_size={batch_size}"])
        # Set directly: an override's value is parsed as YAML, where "off" reads as False.
        config.train.mixed_precision, config.train.xla = precision, bool(xla)
        config.validate()
        keras.utils.set_random_seed(0)
        self.policy = set_precision(precision)  # layers take the policy when they are built
        try:
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                self.model = build_model(config.model, NUM_CLASSES, image_size)
                compile_model(self.model, config, np.full(NUM_CLASSES, 0.1), steps_per_epoch=100)
        finally:
            set_precision("off")
        self.view = inference_model(self.model)
        self.params = int(self.model.count_params())
        rng = np.random.default_rng(0)
        self.batch = (rng.random((batch_size, image_size, image_size, 1)) * 255).astype("float32")
        self.one = np.ascontiguousarray(self.batch[:1])
        labels = (rng.random((batch_size, NUM_CLASSES)) > 0.8).astype("float32")
        self.labels = {name: labels for name in output_names(self.model)}

    def train_step(self) -> None:
        """One optimizer step on the fixed batch through the compiled train function."""
        self.model.train_on_batch(self.batch, self.labels)

    def predict(self, batch) -> None:
        """Probabilities of ``batch`` from the inference view."""
        self.view.predict_on_batch(batch)


# ---- timing in turns ----------------------------------------------------------------------------
def _seconds(fn, calls: int) -> list:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def compare_pair(tf_side, torch_side, *, repeats: int, train_steps: int = 2, latency_calls: int = 3,
                 warmup: int = 2) -> dict:
    """Times both sides in turns; returns ``{metric: {"can_tf": summary, "pytorch": summary}}``.

    Every repeat times, for can-tf then PyTorch: ``train_steps`` train steps, one batch
    prediction and ``latency_calls`` single-image predictions; a metric's figure is the median
    of all its calls over the repeats (:func:`benchmarks.common.summarize`).
    """
    from benchmarks.common import summarize

    sides = {"can_tf": tf_side, "pytorch": torch_side}
    for side in sides.values():  # traces, kernel selection, allocator warm-up
        for _ in range(warmup):
            side.train_step()
            side.predict(side.batch)
            side.predict(side.one)
    raw = {metric: {name: [] for name in sides} for metric in ("train", "batch", "one")}
    for _ in range(repeats):
        for name, side in sides.items():
            raw["train"][name] += _seconds(side.train_step, train_steps)
            raw["batch"][name] += _seconds(lambda: side.predict(side.batch), 1)
            raw["one"][name] += _seconds(lambda: side.predict(side.one), latency_calls)
    return {metric: {name: summarize(times) for name, times in by_side.items()}
            for metric, by_side in raw.items()}


def rows_for(model: str, precision: str, timings: Optional[dict], batch_size: int = BATCH_SIZE,
             tf_note: Optional[str] = None, tf_precision: str = "", torch_precision: str = "") -> list:
    """Table rows (train img/s, inference img/s, latency ms) of one model and precision."""
    from benchmarks.common import ratio

    def value(metric, side):
        if timings is None or side not in timings[metric]:
            return None
        median = timings[metric][side]["median_s"]
        return median * 1000 if metric == "one" else batch_size / median

    rows = []
    for metric, label in (("train", f"train img/s (batch {batch_size})"),
                          ("batch", f"inference img/s (batch {batch_size})"),
                          ("one", "latency ms (batch 1)")):
        tf_value, torch_value = value(metric, "can_tf"), value(metric, "pytorch")
        rows.append({"model": model, "precision": precision, "metric": label,
                     "can_tf_precision": tf_note or tf_precision, "pytorch_precision": torch_precision,
                     "can_tf": tf_value, "pytorch": torch_value, "ratio": ratio(tf_value, torch_value)})
    return rows


COLUMNS = [("model", "model"), ("precision", "precision"), ("metric", "metric"),
           ("can_tf_precision", "can-tf setting"), ("pytorch_precision", "PyTorch setting"),
           ("can_tf", "can-tf"), ("pytorch", "PyTorch"), ("ratio", "can-tf / PyTorch")]


def run(image_size: int = 224, repeats: int = 3, *, quick: bool = False) -> dict:
    """Builds, times and compares every model and precision; returns the JSON payload."""
    import keras
    import tensorflow as tf
    import torch

    from benchmarks.common import cpu_info, machine_info

    if quick:
        image_size, repeats = min(image_size, 64), min(repeats, 2)
    cpu = cpu_info()
    native_bf16 = cpu["native_bfloat16"] or bool(cpu["flags"].get("amx_tile"))
    rows, params, seconds = [], {}, {}
    start = time.perf_counter()
    for kind, label in (("can", "CAN (paper)"), ("baseline", "DenseNet-121 (chexnet)")):
        for low in (False, True):
            part = time.perf_counter()
            torch_precision = "bf16 autocast, channels_last" if low else "fp32, channels_last"
            tf_used = not low or native_bf16
            tf_side = KerasSide(kind, image_size, precision="bfloat16" if low else "off") if tf_used else _Absent()
            torch_side = TorchSide(kind, image_size, bf16=low)
            if not low:
                params[kind] = {"can_tf": tf_side.params, "pytorch": torch_side.params}
            if not tf_used:
                # can-tf stays out of the low-precision turn: only PyTorch's bf16 is timed.
                timings = compare_pair(_Absent(), torch_side, repeats=repeats, train_steps=1 if quick else 2)
                timings = {m: {"pytorch": v["pytorch"]} for m, v in timings.items()}
            else:
                timings = compare_pair(tf_side, torch_side, repeats=repeats, train_steps=1 if quick else 2)
            rows += rows_for(label, "low" if low else "fp32", timings,
                             tf_note=None if tf_used else NOT_USED_BF16,
                             tf_precision=getattr(tf_side, "policy", ""), torch_precision=torch_precision)
            seconds[f"{kind}-{'low' if low else 'fp32'}"] = time.perf_counter() - part
            del tf_side, torch_side
            gc.collect()
            keras.backend.clear_session()
    threads = {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
               "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)",
               "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads() or "default",
               "usable_cores": cpu["usable_cores"]}
    import torchvision

    payload = {
        "image_size": image_size, "batch_size": BATCH_SIZE, "repeats": repeats, "quick": quick,
        "machine": machine_info(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "tensorflow": tf.__version__, "threads": threads, "params": params,
        "cpu_flags": cpu["flags"], "native_bfloat16": native_bf16,
        "can_tf_low_precision": "mixed_bfloat16" if native_bf16 else NOT_USED_BF16,
        "rows": rows, "seconds": seconds, "total_seconds": time.perf_counter() - start,
    }
    payload["markdown"] = report_markdown(payload)
    return payload


class _Absent:
    """A side that does nothing: keeps the turn order when one side has no such precision."""

    batch = one = None
    policy = ""

    def train_step(self):
        pass

    def predict(self, batch):
        pass


def report_markdown(payload: dict) -> str:
    """The table plus the lines that say what it was measured on."""
    from benchmarks.common import markdown_table

    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in payload["cpu_flags"].items())
    t = payload["threads"]
    p = payload["params"]
    lines = [f"can-tf vs PyTorch, {payload['image_size']} px, batch {payload['batch_size']}, "
             f"{payload['repeats']} interleaved repeats; ratio = can-tf / PyTorch "
             "(throughput: >1 means can-tf faster; latency: >1 means can-tf slower)", "",
             markdown_table(COLUMNS, payload["rows"]), "",
             "Parameters (BN statistics included): "
             + "; ".join(f"{k}: can-tf {v['can_tf']:,} / PyTorch {v['pytorch']:,}" for k, v in p.items()),
             f"CPU: {payload['machine']['cpu']['model']}; flags: {flags}",
             f"TensorFlow {payload['tensorflow']}, torch {payload['torch']}, torchvision {payload['torchvision']}; "
             f"threads: torch intra {t['torch_intra_op']} / inter {t['torch_inter_op']}, "
             f"TF intra {t['tf_intra_op']} / inter {t['tf_inter_op']}, usable cores {t['usable_cores']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 px, at most 2 repeats (a smoke test)")
    parser.add_argument("--out", help="write the JSON results here")
    args = parser.parse_args(argv)
    reason = torch_missing_reason()
    if reason:
        print(f"peer_pytorch skipped: {reason}")
        return 0
    payload = run(args.image_size, args.repeats, quick=args.quick)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        from benchmarks.common import _finite, _json_default

        out.write_text(json.dumps(_finite(json.loads(json.dumps(payload, default=_json_default))),
                                  indent=2, allow_nan=False) + "\n")
    print(payload["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
