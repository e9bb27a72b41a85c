"""Parameter count and forward FLOPs of the model presets, and the cross-attention's share.

FLOPs are counted by TensorFlow's profiler (``tf.compat.v1.profiler`` with
``ProfileOptionBuilder.float_operation()``) on the traced graph of the inference view (image ->
probabilities) at batch 1; it counts a multiply-add as 2 FLOPs and covers convolutions, matrix
products and element-wise arithmetic. Models are built with ``weights=None`` (weights do not
change the cost), so nothing is downloaded.

Usage:
    python -m benchmarks.model_cost                      # presets paper, hetero, chexnet at 224 px
    python -m benchmarks.model_cost --presets small --image-size 64
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from can_tf.config import RunConfig  # noqa: E402
from can_tf.models import CANModel, CrossAttention, build_model, inference_model  # noqa: E402

tf.get_logger().setLevel("ERROR")  # the v1 profiler warns about its own deprecated helpers


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass of ``model`` at batch 1, counted by TensorFlow's profiler."""
    specs = [tf.TensorSpec((1,) + tuple(t.shape[1:]), t.dtype) for t in model.inputs]
    function = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
    graph = function.get_concrete_function(*specs).graph
    options = (tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build())
    profile = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(),
                                            cmd="op", options=options)
    return int(profile.total_float_ops)


def cross_attention_cost(model: CANModel) -> tuple:
    """``(parameters, FLOPs)`` of the model's cross-attention layer alone, on its real input shapes."""
    layer = model.get_layer("cross_attention")
    inputs = [keras.Input(tuple(t.shape[1:])) for t in layer.input]
    alone = keras.Model(inputs, CrossAttention.from_config(layer.get_config())(inputs))
    return alone.count_params(), forward_flops(alone)


def measure(preset: str, image_size: int | None = None) -> dict:
    config = RunConfig.from_preset(preset, overrides=["model.weights=null"])
    size = image_size or config.data.image_size
    start = time.perf_counter()
    model = build_model(config.model, num_classes=config.num_classes, image_size=size)
    row = {
        "preset": preset,
        "backbones": "+".join(config.model.backbones),
        "image_size": size,
        "params": model.count_params(),
        "flops": forward_flops(inference_model(model)),
        "attention_params": 0,
        "attention_flops": 0,
    }
    if isinstance(model, CANModel):
        row["attention_params"], row["attention_flops"] = cross_attention_cost(model)
    row["seconds"] = time.perf_counter() - start
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["paper", "hetero", "chexnet"])
    parser.add_argument("--image-size", type=int, default=None, help="default: each preset's own")
    args = parser.parse_args(argv)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; batch 1, FLOPs = 2 x multiply-adds")
    header = (f"{'preset':<15} {'backbones':<24} {'px':>4} {'params (M)':>11} {'GFLOP':>8} "
              f"{'x-attn params (M)':>18} {'x-attn GFLOP':>13} {'x-attn FLOP %':>14}")
    print(header)
    print("-" * len(header))
    for preset in args.presets:
        r = measure(preset, args.image_size)
        share = 100.0 * r["attention_flops"] / r["flops"] if r["flops"] else 0.0
        print(f"{r['preset']:<15} {r['backbones']:<24} {r['image_size']:>4} {r['params'] / 1e6:>11.3f} "
              f"{r['flops'] / 1e9:>8.3f} {r['attention_params'] / 1e6:>18.3f} "
              f"{r['attention_flops'] / 1e9:>13.4f} {share:>13.2f}%", flush=True)


if __name__ == "__main__":
    main()
