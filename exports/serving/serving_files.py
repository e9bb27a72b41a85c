"""What the two TF Serving clients share: file checks, labels, thresholds, findings, the command line.

``rest_client.py`` and ``grpc_client.py`` in this folder both import this module (each puts its
own folder on ``sys.path`` first), so it has to be copied along with them. They differ only in how
a batch of images is sent; everything around that is here: the reasons a file is refused before
it is sent, reading ``--labels`` and ``--thresholds``, the options common to both, the per-file
loop that skips bad files, retrying a refused batch one image at a time to name the refused one,
and printing the findings.

It must stay standard library only: no can_tf, no TensorFlow, no third-party imports, so that
``rest_client.py`` needs nothing installed and ``grpc_client.py`` answers ``--help`` and
``--dry-run`` without tensorflow-serving-api.

Example:
    >>> image_problem(b"")
    'empty file'
    >>> findings([0.2, 0.7], ["a", "b"], {"a": 0.1})
    [('b', 0.7, True), ('a', 0.2, True)]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

SIGNATURE = "serving_default"

# The same reasons as the can-tf library, edge_infer.py and the serving signature.
EMPTY_FILE = "empty file"
NOT_AN_IMAGE = "not a PNG, JPEG or DICOM image"
TRUNCATED_PNG = "truncated PNG (the file ends before its IEND chunk)"
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker)"
DICOM_REFUSED = f"DICOM is not accepted by {SIGNATURE} (send PNG or JPEG)"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_JPEG_SOI, _JPEG_EOI, _JPEG_TAIL_BYTES = b"\xff\xd8\xff", b"\xff\xd9", 1024


class ClientError(Exception):
    """Something that ends the run with one ``error:`` line and exit status 1."""


class ImageRefused(ClientError):
    """The server refused the images of one request (REST: HTTP 400, gRPC: INVALID_ARGUMENT; the server's reason)."""


# ---- files -------------------------------------------------------------------------------------
@contextlib.contextmanager
def native_log_hidden():
    """Keeps the lines TensorFlow's C++ code writes to file descriptor 2 while it loads (absl, oneDNN,
    CUDA notices) out of the client's output; ``CLIENT_VERBOSE=1`` shows them. What was written is
    shown after all when the block fails, so an import error's detail is not lost."""
    if os.environ.get("CLIENT_VERBOSE", "") not in ("", "0"):
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def image_problem(data: bytes):
    """None when ``data`` looks like a whole PNG or JPEG file, else the reason it does not."""
    if not data:
        return EMPTY_FILE
    if data.startswith(_PNG_SIGNATURE):
        return None if data.endswith(_PNG_IEND) else TRUNCATED_PNG
    if data.startswith(_JPEG_SOI):
        return None if _JPEG_EOI in data[-_JPEG_TAIL_BYTES:] else TRUNCATED_JPEG
    if data[128:132] == b"DICM":
        return DICOM_REFUSED
    return NOT_AN_IMAGE


def read_image_file(path: Path) -> bytes:
    """The file's bytes; raises ``ValueError(reason)`` for one that cannot be sent."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except IsADirectoryError:
        raise ValueError("not a regular file") from None
    except OSError as exc:
        raise ValueError(f"cannot read file ({exc.strerror or exc})") from None
    problem = image_problem(data)
    if problem:
        raise ValueError(problem)
    return data


def read_labels(path):
    """The class names of a ``labels.txt`` (one a line), or None without ``--labels``."""
    if path is None:
        return None
    try:
        labels = Path(path).read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read --labels {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not labels:
        raise ClientError(f"--labels {path} lists no class names")
    return labels


def read_thresholds(path):
    """``{class: threshold}`` from a can-tf ``thresholds.json`` (``{"thresholds": {...}}``)."""
    if path is None:
        return None
    try:
        values = json.loads(Path(path).read_text())["thresholds"]
        return {str(k): float(v) for k, v in values.items()}
    except OSError as exc:
        raise ClientError(f"cannot read --thresholds {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ClientError(f"--thresholds {path} is not a can-tf thresholds.json "
                          f"({{\"thresholds\": {{class: value}}}}): {type(exc).__name__}: {exc}") from None


def findings(probabilities, labels: list, thresholds: dict = None) -> list:
    """``[(label, probability, is_finding)]`` sorted by probability; 0.5 where no threshold is known."""
    rows = [(label, float(p), float(p) >= (thresholds or {}).get(label, 0.5))
            for label, p in zip(labels, probabilities)]
    return sorted(rows, key=lambda row: -row[1])


# ---- command line ------------------------------------------------------------------------------
def error(message: str) -> None:
    """One ``error:`` line on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def predict_all(images: list, call) -> list:
    """One prediction, or the server's reason as a ``str``, per image; a refused batch is retried one by one.

    ``call(batch)`` sends a batch and returns one prediction per image, or raises :class:`ImageRefused`.
    """
    try:
        return list(call(images))
    except ImageRefused as exc:
        if len(images) == 1:
            return [str(exc)]
    results = []
    for data in images:  # one image made the server refuse the whole batch: find which
        try:
            results.append(list(call([data]))[0])
        except ImageRefused as exc:
            results.append(str(exc))
    return results


def print_prediction(path, prediction, labels, thresholds) -> None:
    """The file's name, then one line per class, most probable first; ``prediction`` is a REST
    prediction object (``{"probabilities": [...], ...}``) or the image's probabilities."""
    probabilities = prediction["probabilities"] if isinstance(prediction, dict) else prediction
    if labels is not None and len(labels) != len(probabilities):
        raise ClientError(f"--labels lists {len(labels)} classes but the model returned "
                          f"{len(probabilities)} probabilities")
    names = labels or [str(i) for i in range(len(probabilities))]
    print(path)
    for label, p, positive in findings(probabilities, names, thresholds):
        print(f"  {label:<20} {p:.3f}{'  <- finding' if positive else ''}")
    sys.stdout.flush()


def positive_float(text: str) -> float:
    """``--timeout``: seconds, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def argument_parser(description: str, port: int, request: str, data: str) -> argparse.ArgumentParser:
    """The options both clients take; only the default ``--port`` and what ``--dry-run`` prints differ:
    the ``request`` (and with ``--full`` its image ``data`` in full)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--model", default="can", help="model name in models.config")
    parser.add_argument("--version", type=int, default=None, help="a specific version (default: latest)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="labels.txt of the export (<version>/assets/labels.txt); default: class indices")
    parser.add_argument("--thresholds", type=Path, default=None, help="thresholds.json of the export")
    parser.add_argument("--timeout", type=positive_float, default=30.0, help="seconds to wait (default 30)")
    parser.add_argument("--dry-run", action="store_true", help=f"print the {request} instead of sending it")
    parser.add_argument("--full", action="store_true", help=f"with --dry-run: print the {data} in full")
    return parser


def command_line(argv, run, description: str, port: int, request: str, data: str) -> int:
    """A client's ``main``: parses ``argv`` (:func:`argument_parser`) and returns ``run(args)``'s exit status.

    A :class:`ClientError` or any other exception is one ``error:`` line and status 1; a usage error 2.
    """
    args = argument_parser(description, port, request, data).parse_args(argv)
    try:
        return run(args)
    except ClientError as exc:
        error(str(exc))
        return 1
    except Exception as exc:  # never a traceback
        error(f"internal error: {type(exc).__name__}: {exc}")
        return 1


def run_files(args, send, describe) -> int:
    """Checks ``args.images``, then prints ``describe(images)`` (``--dry-run``) or sends them.

    ``send(batch)`` returns one prediction per image or raises :class:`ImageRefused`; bad files and
    refused images are named on stderr and the others are still sent. Returns the exit status.
    """
    labels, thresholds = read_labels(args.labels), read_thresholds(args.thresholds)
    good, failed = [], 0
    for path in args.images:
        try:
            good.append((path, read_image_file(path)))
        except ValueError as exc:
            failed += 1
            error(f"cannot read image {path}: {exc}")
        except Exception as exc:
            failed += 1
            error(f"{path}: internal error: {type(exc).__name__}: {exc}")
    if not good:
        raise ClientError(f"no images to send ({failed} of {len(args.images)} images could not be read)")
    if args.dry_run:
        print(describe([data for _, data in good]))
    else:
        results = predict_all([data for _, data in good], send)
        for (path, _), result in zip(good, results):
            if isinstance(result, str):
                failed += 1
                error(f"TF Serving refused {path}: {result}")
            else:
                print_prediction(path, result, labels, thresholds)
    if failed:
        print(f"{failed} of {len(args.images)} images could not be read", file=sys.stderr)
        return 1
    return 0
