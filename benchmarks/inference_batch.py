"""Keras inference throughput against batch size, and single-image latency (batch 1).

The model's inference view (:func:`can_tf.models.inference_model`: image -> probabilities) is
called with ``predict_on_batch`` on real radiographs preprocessed as the exports do
(:func:`can_tf.export.source.preprocess_files`), at each batch size: one warm-up call (which traces
the function for that shape), then the median of ``repeats`` calls.

Example:
    >>> from benchmarks.inference_batch import keras_inference
    >>> rows = keras_inference(model, images, batch_sizes=(1, 8))  # doctest: +SKIP
    >>> [r["batch_size"] for r in rows]  # doctest: +SKIP
    [1, 8]
"""

from __future__ import annotations

from typing import Sequence


def batch_of(images, batch_size: int):
    """``batch_size`` images, repeating ``images`` (N, S, S, C) as often as needed."""
    import numpy as np

    reps = -(-batch_size // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch_size])


def keras_inference(model, images, batch_sizes: Sequence[int] = (1, 8, 32), repeats: int = 3,
                    warmup: int = 1) -> list:
    """Rows ``{"batch_size", "latency_ms", "images_per_s"}``, medians over ``repeats`` calls."""
    from benchmarks.common import median_time
    from can_tf.models import inference_model

    view = inference_model(model)
    rows = []
    for batch_size in batch_sizes:
        batch = batch_of(images, batch_size)
        timing = median_time(lambda: view.predict_on_batch(batch), repeats=repeats, warmup=warmup)
        rows.append({"batch_size": batch_size, "latency_ms": timing["median_s"] * 1000,
                     "latency_ms_min": timing["min_s"] * 1000, "latency_ms_max": timing["max_s"] * 1000,
                     "images_per_s": batch_size / timing["median_s"]})
    return rows
