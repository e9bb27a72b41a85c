"""REST client for a can-tf model in TF Serving: image files in, findings out (standard library only).

It sends the images' encoded bytes, base64 in JSON, to ``serving_default``; decoding, resizing and
scaling happen inside the exported model, so the client needs no image library::

    POST http://localhost:8501/v1/models/can:predict
    {"signature_name": "serving_default", "instances": [{"b64": "iVBORw0KGgo..."}, ...]}

Each file is checked by its first and last bytes before it is sent; one that is missing, empty,
not a PNG or JPEG, or truncated is named with its reason and skipped, and the others are still
sent. An image the server refuses (e.g. too large) is named too. The exit status is 1 when any
image failed or the server could not be reached, 0 when all were predicted. ``--dry-run`` prints
the request without sending it. It needs ``serving_files.py`` (shared with ``grpc_client.py``)
in the same folder.

Usage::

    python rest_client.py xray1.png xray2.jpg --model can --labels models/can/1/assets/labels.txt

Example:
    >>> request = build_predict_request([b"\\x89PNG..."])
    >>> request["signature_name"], list(request["instances"][0])
    ('serving_default', ['b64'])
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

# serving_files.py lies beside this file: on sys.path when run as a script, not when loaded by path.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_files import SIGNATURE, ClientError, ImageRefused, command_line, run_files  # noqa: E402


# ---- the request -------------------------------------------------------------------------------
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


def describe_request(images: list, url: str, full: bool = False) -> str:
    """The HTTP request :func:`predict` would send, as text; base64 shortened unless ``full``."""
    request = build_predict_request(images)
    body = json.dumps(request).encode("utf-8")
    if not full:
        for instance in request["instances"]:
            text = instance["b64"]
            if len(text) > 16:
                instance["b64"] = f"{text[:16]}...({len(text)} bytes)"
    return "\n".join([f"POST {url}", "Content-Type: application/json", f"Content-Length: {len(body)}", "",
                      json.dumps(request, indent=2)])


def _server_url(url: str) -> str:
    return url.split("/v1/", 1)[0]


def predict(images: list, url: str, timeout: float = 30.0) -> list:
    """Posts the images; returns one ``{"probabilities": [...], "logits": [...]}`` per image.

    Raises:
        ImageRefused: HTTP 400, with the server's reason (e.g. an image too large to decode).
        ClientError: the server cannot be reached, did not answer in time, or answered an error.
    """
    body = json.dumps(build_predict_request(images)).encode("utf-8")
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as e:
        # TF Serving puts the reason (e.g. an image refused as too large) in {"error": ...}.
        detail = e.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        detail = " ".join(str(detail).split()) or e.reason
        if e.code == 400:
            raise ImageRefused(detail) from None
        raise ClientError(f"TF Serving at {url} answered HTTP {e.code}: {detail}") from None
    except (socket.timeout, TimeoutError):
        raise ClientError(f"TF Serving at {url} did not answer within {timeout:g} s (--timeout)") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise ClientError(f"TF Serving at {url} did not answer within {timeout:g} s (--timeout)") from None
        reason = getattr(e.reason, "strerror", None) or str(e.reason)
        raise ClientError(f"cannot reach TF Serving at {url} ({reason}); "
                          f"is TF Serving running at {_server_url(url)}?") from None
    except (OSError, ValueError) as e:  # connection reset, remote disconnected, bad URL
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ClientError(f"cannot reach TF Serving at {url} ({reason}); "
                          f"is TF Serving running at {_server_url(url)}?") from None
    try:
        predictions = json.loads(answer)["predictions"]
    except (ValueError, KeyError, TypeError):
        raise ClientError(f"TF Serving at {url} answered without predictions: {answer[:200]!r}") from None
    if len(predictions) != len(images):
        raise ClientError(f"TF Serving at {url} answered {len(predictions)} predictions for {len(images)} images")
    return predictions


# ---- command line ------------------------------------------------------------------------------
def main(argv=None) -> int:
    return command_line(argv, _run, __doc__.split("\n\n")[0], port=8501, request="request", data="base64 data")


def _run(args) -> int:
    url = predict_url(args.host, args.port, args.model, args.version)
    return run_files(args, send=lambda images: predict(images, url, args.timeout),
                     describe=lambda images: describe_request(images, url, full=args.full))


if __name__ == "__main__":
    sys.exit(main())
