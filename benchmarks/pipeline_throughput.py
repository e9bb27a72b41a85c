"""Measures the tf.data pipeline's throughput (images/s) on real radiographs.

Decode + resize through :func:`can_tf.data.pipeline.make_dataset` at each image size, two ways:

- ``cold``: no cache, every image read from disk and decoded (the OS file cache is warm after the
  first repeat, so this measures decoding, not the disk);
- ``cached``: a memory cache filled by a first epoch, then the second epoch timed (what every epoch
  after the first costs in training).

The up-front check of the files (``on_bad_image``, :func:`can_tf.images.scan_images`) is
timed on its own and left out of both. Each number is the median over ``--repeats`` runs.

Usage:
    python benchmarks/pipeline_throughput.py                       # the sample beside the project
    python benchmarks/pipeline_throughput.py --images DIR --sizes 224 512 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chestxray14" / "images"


def _epoch(ds) -> int:
    count = 0
    for images, _ in ds:
        count += int(images.shape[0])
    return count


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of PNG/JPEG files")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from can_tf.images import IMAGE_SUFFIXES, scan_images
    from can_tf.data.pipeline import make_dataset

    paths = sorted(str(p) for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no PNG/JPEG images in {args.images}")
    df = pd.DataFrame({"path": paths, "label": np.zeros(len(paths), np.float32)})
    n = len(paths)

    def build(size, cache):
        return make_dataset(df, ["label"], size, args.batch_size, training=False, cache=cache)

    scan = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scan_images(paths)
        scan.append(time.perf_counter() - start)
    _epoch(build(args.sizes[0], "none"))  # warm-up: TF start-up, graph tracing, OS file cache

    rows = []
    for size in args.sizes:
        cold, cached = [], []
        for _ in range(args.repeats):
            ds = build(size, "none")
            start = time.perf_counter()
            assert _epoch(ds) == n
            cold.append(n / (time.perf_counter() - start))
            ds = build(size, "memory")
            _epoch(ds)  # fills the cache
            start = time.perf_counter()
            assert _epoch(ds) == n
            cached.append(n / (time.perf_counter() - start))
        rows.append({"image_size": size, "cold_images_per_s": statistics.median(cold),
                     "cached_images_per_s": statistics.median(cached)})

    result = {
        "images": n, "folder": str(args.images), "batch_size": args.batch_size,
        "repeats": args.repeats, "scan_images_per_s": n / statistics.median(scan),
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
        "platform": platform.platform(), "tensorflow": tf.__version__,
        "results": rows,
    }
    print(f"{n} images from {args.images}; median of {args.repeats} runs; {os.cpu_count()} CPUs "
          f"(load average {result['load_average_1min']:.1f} at the end)")
    print(f"up-front file check (scan_images): {result['scan_images_per_s']:,.0f} images/s")
    print(f"{'size':>6} | {'cold (decode+resize) img/s':>27} | {'cached (2nd epoch) img/s':>25}")
    for row in rows:
        cold, cached = row["cold_images_per_s"], row["cached_images_per_s"]
        print(f"{row['image_size']:>6} | {cold:>27,.0f} | {cached:>25,.0f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
