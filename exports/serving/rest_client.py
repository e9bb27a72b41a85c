"""REST client for a can-tf model in TF Serving: image files in, findings out (standard library only).

It sends the images' encoded bytes, base64 in JSON, to ``serving_default``; decoding, resizing and
scaling happen inside the exported model, so the client needs no image library::

    POST http://localhost:8501/v1/models/can:predict
    {"signature_name": "serving_default", "instances": [{"b64": "iVBORw0KGgo..."}, ...]}

Usage::

    python rest_client.py xray1.png xray2.jpg --model can --labels models/can/1/assets/labels.txt

Example:
    >>> request = build_predict_request([b"\\x89PNG..."])
    >>> request["signature_name"], list(request["instances"][0])
    ('serving_default', ['b64'])
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

SIGNATURE = "serving_default"


def build_predict_request(images: list, signature_name: str = SIGNATURE) -> dict:
    """The JSON body of a ``:predict`` call for encoded images (bytes of PNG/JPEG files).

    ``serving_default`` has a single input, so each instance is the input value itself; a
    ``{"b64": ...}`` object tells TF Serving that the value is binary (a ``tf.string``).
    """
    if not images:
        raise ValueError("no images to send")
    return {"signature_name": signature_name,
            "instances": [{"b64": base64.b64encode(bytes(data)).decode("ascii")} for data in images]}


def predict_url(host: str = "localhost", port: int = 8501, model: str = "can", version=None) -> str:
    """``http://host:port/v1/models/<model>[/versions/<n>]:predict``."""
    versioned = f"/versions/{int(version)}" if version is not None else ""
    return f"http://{host}:{port}/v1/models/{model}{versioned}:predict"


def predict(images: list, url: str, timeout: float = 30.0) -> list:
    """Posts the images; returns one ``{"probabilities": [...], "logits": [...]}`` per image."""
    body = json.dumps(build_predict_request(images)).encode("utf-8")
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as e:
        # TF Serving puts the reason (e.g. an image refused as too large) in {"error": ...}.
        detail = e.read().decode("utf-8", "replace")
        raise RuntimeError(f"{url} answered {e.code}: {detail}") from None


def findings(probabilities: list, labels: list, thresholds: dict = None) -> list:
    """``[(label, probability, is_finding)]`` sorted by probability; 0.5 where no threshold is known."""
    rows = []
    for label, p in zip(labels, probabilities):
        threshold = (thresholds or {}).get(label, 0.5)
        rows.append((label, float(p), p >= threshold))
    return sorted(rows, key=lambda row: -row[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--model", default="can", help="model name in models.config")
    parser.add_argument("--version", type=int, default=None, help="a specific version (default: latest)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="labels.txt of the export (<version>/assets/labels.txt); default: class indices")
    parser.add_argument("--thresholds", type=Path, default=None, help="thresholds.json of the export")
    args = parser.parse_args(argv)

    predictions = predict([p.read_bytes() for p in args.images], predict_url(args.host, args.port, args.model,
                                                                          args.version))
    thresholds = None
    if args.thresholds:
        thresholds = json.loads(args.thresholds.read_text()).get("thresholds")
    for path, prediction in zip(args.images, predictions):
        probabilities = prediction["probabilities"]
        labels = (args.labels.read_text().split() if args.labels else [str(i) for i in range(len(probabilities))])
        print(path)
        for label, p, positive in findings(probabilities, labels, thresholds):
            print(f"  {label:<20} {p:.3f}{'  <- finding' if positive else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
