"""The machine's achievable peak: GFLOP/s of a large float32 matrix product in TensorFlow.

A square ``n x n`` float32 ``tf.linalg.matmul`` costs ``2 n^3`` FLOPs (one multiply and one add per
term) and is the best-tuned kernel TensorFlow has (oneDNN/Eigen GEMM, all cores, as many threads as
``tf.config.threading`` allows, which by default is every core). Its speed (the fastest of a few
products: load from other programs only ever slows one down) is therefore a practical upper
bound for what a network's convolutions and matrix products can reach on this machine, and
"achieved GFLOP/s / peak GFLOP/s" says how much of the machine a model uses. It is lower than the
datasheet peak (cores x clock x FMA width), which no real kernel reaches.

The same product in bfloat16 is timed too: on CPUs without native bfloat16 arithmetic (no
AVX512-BF16 or AMX) it is emulated and slower than float32, which is why mixed_bfloat16 does not
pay off there.

Usage:
    python -m benchmarks.peak_flops              # n = 2048 (17.2 GFLOP a product)
    python -m benchmarks.peak_flops --size 4096

Example:
    >>> from benchmarks.peak_flops import matmul_gflops
    >>> result = matmul_gflops(size=256, repeats=2)
    >>> result["gflop_per_product"] == 2 * 256 ** 3 / 1e9
    True
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def matmul_gflops(size: int = 2048, dtype: str = "float32", repeats: int = 5, warmup: int = 2) -> dict:
    """Median GFLOP/s of an ``size x size`` matrix product in ``dtype`` on all cores."""
    import tensorflow as tf

    from benchmarks.common import median_time

    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    a = tf.random.uniform((size, size), dtype=tf.float32)
    b = tf.random.uniform((size, size), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    product = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, y)[:1, :1], tf.float32)))
    # The tiny reduction forces the whole product to run while copying out 4 bytes, not 16 MB.
    timing = median_time(lambda: product(a, b).numpy(), repeats=repeats, warmup=warmup)
    flops = 2.0 * size ** 3
    # A busy machine only ever slows a product down, so the fastest one is the best estimate of
    # what the machine can do; the median is kept beside it.
    return {"dtype": dtype, "size": size, "gflop_per_product": flops / 1e9,
            "gflops": flops / timing["median_s"] / 1e9, "gflops_best": flops / timing["min_s"] / 1e9, **timing}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    results = {dtype: matmul_gflops(args.size, dtype, args.repeats) for dtype in ("float32", "bfloat16")}
    for dtype, r in results.items():
        print(f"{dtype:>9} {args.size}x{args.size} matmul: {r['gflops']:.1f} GFLOP/s median, "
              f"{r['gflops_best']:.1f} best of {r['repeats']} ({r['median_s'] * 1000:.0f} ms a product)")
    return results


if __name__ == "__main__":
    main()
