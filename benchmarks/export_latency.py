"""File size and single-image latency of every export variant of one model.

Variants: the Keras model (``.keras`` file; ``predict_on_batch``), the SavedModel's
``serving_default`` (encoded PNG bytes in: decode + resize + model) and ``serving_images``
(a preprocessed tensor in), and TFLite none / float16 / dynamic / int8 run in ``ai_edge_litert``,
each with the XNNPACK delegate (the default) and without it (TFLite's built-in kernels).
Every export is made by the library's exporters, so it is verified against Keras first. Latency is
the median of ``--runs`` calls after ``--warmup`` calls, one image per call, on the CPU
(:func:`benchmarks.common.median_time`). ``benchmarks.run`` includes it as its ``export`` section.

Usage::

    python -m benchmarks.export_latency                       # small preset's tiny CAN, 64 px
    python -m benchmarks.export_latency --preset paper        # two DenseNet-121s, 224 px, weights=None
    python -m benchmarks.export_latency --json benchmarks/results/export_small.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "chestxray14" / "images"


def median_ms(fn, runs: int, warmup: int) -> float:
    from benchmarks.common import median_time

    return median_time(fn, repeats=runs, warmup=warmup)["median_s"] * 1000


def tflite_invoker(interpreter, image):
    """A function that runs ``interpreter`` on ``image`` once and returns its output."""
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def invoke():
        interpreter.set_tensor(inp["index"], image)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return invoke


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="model preset (weights are not loaded: weights=None)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="real images for verification, calibration and timing (default: the NIH sample)")
    parser.add_argument("--calibration", type=int, default=32, help="images to calibrate int8 on")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from can_tf.config import RunConfig
    from can_tf.export.saved_model import export_saved_model
    from can_tf.export.source import ExportSource, image_paths, preprocess_files
    from can_tf.export.tflite import QUANTIZE_MODES, export_tflite
    from can_tf.models import build_model, inference_model

    overrides = ["model.weights=null"] + ([f"data.image_size={args.image_size}"] if args.image_size else [])
    config = RunConfig.from_preset(args.preset, overrides=overrides)
    size = config.data.image_size
    keras.utils.set_random_seed(0)
    model = build_model(config.model, config.num_classes, size)
    source = ExportSource.from_model(model, config.data.class_names)
    paths = image_paths(args.images)[: max(args.calibration, 8)]
    image_file = paths[0]
    image = preprocess_files([image_file], size)
    rows = []

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        keras_path = work / "model.keras"
        model.save(keras_path)
        reference = inference_model(model)
        rows.append({"variant": "Keras (.keras, predict_on_batch)", "bytes": keras_path.stat().st_size,
                     "ms": median_ms(lambda: reference.predict_on_batch(image), args.runs, args.warmup)})

        start = time.perf_counter()
        exported = export_saved_model(source, work / "serving", images=paths[:8])
        print(f"SavedModel export + fresh-process verification: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        loaded = tf.saved_model.load(str(exported.path))
        data = tf.constant([image_file.read_bytes()])
        tensor = tf.constant(image)
        sm_bytes = folder_bytes(exported.path)
        sm_errors = exported.verification.max_abs_error
        by_bytes, by_tensor = loaded.signatures["serving_default"], loaded.signatures["serving_images"]
        rows.append({"variant": f"SavedModel serving_default ({image_file.stat().st_size // 1024} KB PNG in)",
                     "bytes": sm_bytes, "max_abs_error": sm_errors["serving_default"],
                     "ms": median_ms(lambda: by_bytes(image_bytes=data), args.runs, args.warmup)})
        rows.append({"variant": "SavedModel serving_images (tensor in)", "bytes": sm_bytes,
                     "max_abs_error": sm_errors["serving_images"],
                     "ms": median_ms(lambda: by_tensor(images=tensor), args.runs, args.warmup)})

        for quantize in QUANTIZE_MODES:
            start = time.perf_counter()
            result = export_tflite(source, work / "tflite", quantize=quantize, images=paths,
                                   num_calibration=args.calibration, num_verify=8)
            seconds = time.perf_counter() - start
            # The default op resolver applies the XNNPACK delegate; without it, TFLite's built-in
            # kernels run the same file: the pair shows what XNNPACK brings to each variant.
            for xnnpack, resolver in ((True, OpResolverType.AUTO),
                                      (False, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)):
                invoke = tflite_invoker(Interpreter(model_path=str(result.path), num_threads=args.threads,
                                                    experimental_op_resolver_type=resolver), image)
                rows.append({"variant": f"TFLite {quantize}" + ("" if xnnpack else " (XNNPACK off)"),
                             "quantize": quantize, "xnnpack": xnnpack, "bytes": result.size_bytes,
                             "ms": median_ms(invoke, args.runs, args.warmup),
                             "max_abs_error": result.max_abs_error, "convert_s": seconds})

    weights = sum(int(np.prod(w.shape)) for w in source.logits_model().weights)
    print(f"\n{args.preset} preset, {size} px, {weights:,} weights (float32 {weights * 4 / 1e6:.2f} MB), "
          f"batch 1, median of {args.runs}, {os.cpu_count()} CPUs, TFLite threads {args.threads}\n")
    print("| variant | size (MB) | latency (ms) | max abs error vs Keras |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        error = f"{row['max_abs_error']:.1e}" if "max_abs_error" in row else "0 (reference)"
        print(f"| {row['variant']} | {row['bytes'] / 1e6:.2f} | {row['ms']:.2f} | {error} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"preset": args.preset, "image_size": size, "weights": weights,
                                         "runs": args.runs, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
