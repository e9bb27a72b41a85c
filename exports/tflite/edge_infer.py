"""Runs a can-tf ``.tflite`` model on a chest radiograph: ai-edge-litert, numpy and Pillow only.

Reads ``labels.txt`` (and ``thresholds.json`` when present) from the model's folder, turns the
image into what the model was trained on (one luminance channel as ``PIL.Image.convert("L")``
makes it, 16-bit PNGs scaled by 255/65535, stretched to the model's square input size with an
antialiased bilinear resize), feeds it as uint8 or float32 pixels in [0, 255] as the model's input
says, and prints the findings. ``--json`` prints them as JSON instead.

Usage::

    pip install ai-edge-litert numpy pillow
    python edge_infer.py can_int8_uint8.tflite xray.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image


def load_gray(path: Path) -> Image.Image:
    """An image file as an 8-bit luminance ("L") PIL image."""
    image = Image.open(path)
    image.load()
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.clip(np.asarray(image), 0, 65535).astype(np.float32)
        return Image.fromarray(np.round(values * (255.0 / 65535.0)).astype(np.uint8), mode="L")
    if image.mode == "LA":
        return image.getchannel(0)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("L")  # RGB/RGBA: ITU-R 601 luma, alpha dropped


def preprocess(path: Path, size: int, dtype) -> np.ndarray:
    """``(1, size, size, 1)`` pixels in [0, 255] of ``dtype``."""
    # Pillow's bilinear filter widens its support when downscaling: an antialiased resize.
    gray = load_gray(path).resize((size, size), Image.BILINEAR)
    pixels = np.asarray(gray, dtype=np.uint8)[None, :, :, None]
    return pixels if dtype == np.uint8 else pixels.astype(np.float32)


def read_thresholds(folder: Path) -> dict:
    path = folder / "thresholds.json"
    if not path.is_file():
        return {}
    values = json.loads(path.read_text())
    return {k: float(v) for k, v in values.get("thresholds", {}).items()}


def run(model_path: Path, image_path: Path, threads: int = 2) -> dict:
    """Runs the model on one image; returns labels, probabilities, findings and the time taken."""
    labels = (model_path.parent / "labels.txt").read_text().split()
    thresholds = read_thresholds(model_path.parent)
    interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    _, height, width, channels = inp["shape"]
    if height != width or channels != 1:
        raise SystemExit(f"{model_path}: expected a (1, S, S, 1) input, got {list(inp['shape'])}")
    pixels = preprocess(image_path, int(height), inp["dtype"])
    start = time.perf_counter()
    interpreter.set_tensor(inp["index"], pixels)
    interpreter.invoke()
    probabilities = interpreter.get_tensor(out["index"])[0].astype(float)
    elapsed_ms = (time.perf_counter() - start) * 1000
    if len(probabilities) != len(labels):
        raise SystemExit(f"{model_path} has {len(probabilities)} outputs but labels.txt lists {len(labels)}")
    return {
        "image": str(image_path),
        "probabilities": dict(zip(labels, probabilities.tolist())),
        "findings": [label for label, p in zip(labels, probabilities) if p >= thresholds.get(label, 0.5)],
        "thresholds": "thresholds.json" if thresholds else "0.5 (no thresholds.json)",
        "inference_ms": elapsed_ms,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Chest X-ray findings from a can-tf .tflite model.")
    parser.add_argument("model", type=Path, help=".tflite file (labels.txt beside it)")
    parser.add_argument("images", type=Path, nargs="+", help="PNG or JPEG radiographs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print JSON, one object per image")
    args = parser.parse_args(argv)
    for image_path in args.images:
        result = run(args.model, image_path, args.threads)
        if args.json:
            print(json.dumps(result))
            continue
        print(f"{image_path}  ({result['inference_ms']:.1f} ms; threshold {result['thresholds']})")
        for label, p in sorted(result["probabilities"].items(), key=lambda kv: -kv[1]):
            print(f"  {label:<20} {p:.3f}{'  <- finding' if label in result['findings'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
