"""How training cost grows: seconds per epoch against data set size and against image size.

One model per image size is built and compiled as the trainer does
(:func:`benchmarks.train_throughput.measure_training`'s pieces), then ``fit`` runs on data sets of
the first N real images (memory cache, augmentation on, batch 8, full batches). The first epoch of
each fit decodes the images into the cache and (for the first fit of a model) traces the train step;
it is left out, and the figure is the median of the following epochs. A straight line is fitted to
epoch time against images (at one image size) and against pixels per image (at one data set size);
R^2 close to 1 means the cost grows linearly, and the intercept is the fixed cost per epoch.

The default model is the baseline with a MobileNetV3-Small backbone at weights=None: a real
ImageNet architecture that is cheap enough to run 512 px epochs on 2 CPU cores in a minute or two.
DenseNet-121 scales the same way (convolutions cost in proportion to pixels) but an epoch of 128
images at 512 px would take several minutes here.

Usage:
    python -m benchmarks.scaling
    python -m benchmarks.scaling --backbone densenet121 --sizes 64 128 --image-sizes 224 320

Example:
    >>> from benchmarks.scaling import scaling_config
    >>> scaling_config("tiny", batch_size=8).model.backbones
    ['tiny']
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import warnings
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_BACKBONE = "mobilenetv3small"


def scaling_config(backbone: str = DEFAULT_BACKBONE, batch_size: int = 8, image_size: int = 224):
    """The run config of the scaled model: a baseline over ``backbone``, weights=None, BCE loss."""
    from can_tf.config import RunConfig

    return RunConfig.from_preset("small-baseline", overrides=[
        f"model.backbones=[{backbone}]", "model.weights=null", f"train.batch_size={batch_size}",
        f"data.image_size={image_size}", "loss.name=bce"])


def epoch_seconds(config, df, class_names, dataset_sizes: Sequence[int], repeats: int = 2) -> list:
    """Median seconds per epoch on the first N images of ``df`` for each N, with one model.

    Returns rows ``{"images", "image_size", "pixels", "epoch_s", "epoch_s_min", "epoch_s_max",
    "images_per_s", "first_epoch_s"}``.
    """
    import keras
    import numpy as np

    from benchmarks.common import summarize
    from benchmarks.train_throughput import EpochTimer, training_dataset
    from can_tf.data.table import class_prevalence
    from can_tf.models import build_model
    from can_tf.training.trainer import compile_model

    batch, size = config.train.batch_size, config.data.image_size
    bad = [n for n in dataset_sizes if n % batch or n > len(df)]
    if bad:
        raise ValueError(f"data set sizes {bad} must be multiples of the batch size {batch} and at most "
                         f"the {len(df)} images available")
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.train.seed)
    model = build_model(config.model, len(class_names), size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="class_prevalence")  # see measure_training
        compile_model(model, config, np.nan_to_num(class_prevalence(df, class_names), nan=0.5),
                      steps_per_epoch=max(dataset_sizes) // batch)
    rows = []
    for n in dataset_sizes:
        subset = df.iloc[:n]
        ds = training_dataset(subset, class_names, size, batch, model)
        timer = EpochTimer()
        model.fit(ds, epochs=1 + repeats, steps_per_epoch=n // batch, verbose=0, callbacks=[timer],
                  shuffle=False)
        timing = summarize(timer.seconds[1:])
        rows.append({"images": n, "image_size": size, "pixels": size * size,
                     "epoch_s": timing["median_s"], "epoch_s_min": timing["min_s"],
                     "epoch_s_max": timing["max_s"], "images_per_s": n / timing["median_s"],
                     "first_epoch_s": timer.seconds[0]})
    del model
    keras.backend.clear_session()
    gc.collect()
    return rows


def measure_scaling(df, class_names, *, dataset_sizes=(64, 128, 256), image_sizes=(224, 320, 512),
                    images_for_size_sweep: int = 64, backbone: str = DEFAULT_BACKBONE, batch_size: int = 8,
                    repeats: int = 2) -> dict:
    """Both sweeps and their linear fits.

    Data set sizes are swept at the first image size; image sizes at ``images_for_size_sweep``
    images. Returns ``{"rows": [...], "fit_images": {...}, "fit_pixels": {...}, "backbone": ...}``.
    """
    from benchmarks.common import linear_fit

    rows = []
    by_images = epoch_seconds(scaling_config(backbone, batch_size, image_sizes[0]), df, class_names,
                              dataset_sizes, repeats)
    for row in by_images:
        row["sweep"] = "images"
    rows += by_images
    by_pixels = []
    for size in image_sizes:
        found = [dict(r) for r in by_images if r["image_size"] == size and r["images"] == images_for_size_sweep]
        if not found:
            found = epoch_seconds(scaling_config(backbone, batch_size, size), df, class_names,
                                  [images_for_size_sweep], repeats)
        by_pixels += found
    for row in by_pixels:
        row["sweep"] = "pixels"
    rows += by_pixels
    return {
        "backbone": backbone,
        "model": f"baseline({backbone}), weights=None, batch {batch_size}",
        "rows": rows,
        "fit_images": linear_fit([r["images"] for r in by_images], [r["epoch_s"] for r in by_images]),
        "fit_pixels": linear_fit([r["pixels"] for r in by_pixels], [r["epoch_s"] for r in by_pixels]),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="data set sizes")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[224, 320, 512])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=None, help="ChestX-ray14 folder (default: the NIH sample)")
    args = parser.parse_args(argv)

    from benchmarks.train_throughput import DEFAULT_DATA, load_images_table

    df, class_names = load_images_table(args.data or str(DEFAULT_DATA), limit=max(args.sizes))
    result = measure_scaling(df, class_names, dataset_sizes=args.sizes, image_sizes=args.image_sizes,
                             images_for_size_sweep=min(args.sizes), backbone=args.backbone,
                             repeats=args.repeats)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
