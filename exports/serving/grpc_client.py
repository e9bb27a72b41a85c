"""gRPC client for a can-tf model in TF Serving (``pip install tensorflow-serving-api``).

gRPC sends the image bytes as a ``tf.string`` tensor without base64, which is what to use for
large images or high request rates. ``--help`` and ``--dry-run`` work without
tensorflow-serving-api (it and TensorFlow are imported only to send a request).

Each file is checked by its first and last bytes before it is sent; one that is missing, empty,
not a PNG or JPEG, or truncated is named with its reason and skipped, and the others are still
sent. An image the server refuses (e.g. too large) is named too. The exit status is 1 when any
image failed or the server could not be reached, 0 when all were predicted. It needs
``serving_files.py`` (shared with ``rest_client.py``) in the same folder. Usage::

    python grpc_client.py xray1.png xray2.jpg --model can --labels models/can/1/assets/labels.txt

Example:
    >>> request = build_predict_request([b"\\x89PNG..."], model_name="can")
    >>> request.model_spec.signature_name, list(request.inputs)
    ('serving_default', ['image_bytes'])
"""

from __future__ import annotations

import sys
from pathlib import Path

# serving_files.py lies beside this file: on sys.path when run as a script, not when loaded by path.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_files import SIGNATURE, ClientError, ImageRefused, command_line, native_log_hidden, run_files  # noqa: E402

INPUT_KEY = "image_bytes"  # the input name of the exported serving_default signature
INSTALL_HINT = "the gRPC client needs tensorflow-serving-api: pip install tensorflow-serving-api"


# ---- the request -------------------------------------------------------------------------------
def _serving_modules():
    """``(grpc, predict_pb2, prediction_service_pb2_grpc, tensor_pb2, tensor_shape_pb2, types_pb2)``."""
    try:
        with native_log_hidden():  # tensorflow_serving loads TensorFlow, which logs at import
            import grpc
            from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
            from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError:
        raise ClientError(INSTALL_HINT) from None
    return grpc, predict_pb2, prediction_service_pb2_grpc, tensor_pb2, tensor_shape_pb2, types_pb2


def build_predict_request(images: list, model_name: str = "can", signature_name: str = SIGNATURE,
                          version: int = None):
    """A ``PredictRequest`` carrying the encoded images as a ``(B,)`` string tensor."""
    if not images:
        raise ValueError("no images to send")
    _, predict_pb2, _, tensor_pb2, tensor_shape_pb2, types_pb2 = _serving_modules()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(images))])
    request.inputs[INPUT_KEY].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=[bytes(b) for b in images]))
    return request


_ESCAPES = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord('"'): '\\"', ord("'"): "\\'",
            ord("\\"): "\\\\"}


def _text_bytes(data: bytes) -> str:
    """Bytes as a protobuf text-format string literal (escaped as ``text_format`` does)."""
    return '"' + "".join(_ESCAPES.get(b) or (chr(b) if 32 <= b < 127 else f"\\{b:03o}") for b in data) + '"'


def describe_request(images: list, model_name: str = "can", signature_name: str = SIGNATURE,
                     version: int = None, full: bool = False) -> str:
    """The ``PredictRequest`` of :func:`build_predict_request` in protobuf text format.

    Built from plain Python data (no tensorflow-serving-api needed); each image is shown as its
    length unless ``full``.
    """
    if not images:
        raise ValueError("no images to send")
    spec = [f'  name: "{model_name}"', f'  signature_name: "{signature_name}"']
    if version is not None:
        spec.insert(1, f"  version {{\n    value: {int(version)}\n  }}")
    values = [f"    string_val: {_text_bytes(bytes(b)) if full else f'<{len(b)} bytes>'}" for b in images]
    return "\n".join(["model_spec {", *spec, "}", "inputs {", f'  key: "{INPUT_KEY}"', "  value {",
                      "    dtype: DT_STRING", "    tensor_shape {", "      dim {", f"        size: {len(images)}",
                      "      }", "    }", *values, "  }", "}"])


def output_array(response, key: str = "probabilities"):
    """A float output of a ``PredictResponse`` as a numpy array of its shape."""
    import numpy as np

    tensor = response.outputs[key]
    shape = [d.size for d in tensor.tensor_shape.dim]
    # A server may send the values packed (tensor_content) or as a repeated field (float_val).
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype="<f4")
    else:
        values = np.asarray(tensor.float_val, dtype=np.float32)
    return values.astype(np.float32).reshape(shape)


def predict(images: list, host: str = "localhost", port: int = 8500, model_name: str = "can",
            timeout: float = 30.0, version: int = None):
    """Calls the server; returns probabilities ``(B, C)``.

    Raises:
        ImageRefused: INVALID_ARGUMENT, with the server's reason (e.g. an image too large to decode).
        ClientError: tensorflow-serving-api is missing, the server cannot be reached, did not answer
            in time, or answered another error.
    """
    grpc, _, prediction_service_pb2_grpc, *_ = _serving_modules()
    request = build_predict_request(images, model_name, version=version)
    address = f"{host}:{port}"
    # Radiographs can exceed gRPC's default 4 MB message limit.
    options = [("grpc.max_send_message_length", 256 * 2**20), ("grpc.max_receive_message_length", 256 * 2**20)]
    try:
        with grpc.insecure_channel(address, options=options) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = " ".join(str(exc.details() if hasattr(exc, "details") else exc).split())
        if code == grpc.StatusCode.UNAVAILABLE:
            raise ClientError(f"cannot reach TF Serving at {address} ({details}); "
                              f"is TF Serving running at {address}?") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise ClientError(f"TF Serving at {address} did not answer within {timeout:g} s (--timeout)") from None
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise ImageRefused(details) from None
        raise ClientError(f"TF Serving at {address} answered {getattr(code, 'name', code)}: {details}") from None
    try:
        probabilities = output_array(response)
    except Exception as exc:
        raise ClientError(f"TF Serving at {address} answered without probabilities "
                          f"({type(exc).__name__}: {exc})") from None
    if probabilities.ndim != 2 or probabilities.shape[0] != len(images):
        raise ClientError(f"TF Serving at {address} answered probabilities of shape {probabilities.shape} "
                          f"for {len(images)} images")
    return probabilities


# ---- command line ------------------------------------------------------------------------------
def main(argv=None) -> int:
    return command_line(argv, _run, __doc__.split("\n\n")[0], port=8500, request="PredictRequest", data="image bytes")


def _run(args) -> int:
    def send(images):
        return predict(images, args.host, args.port, args.model, args.timeout, args.version)

    def describe(images):
        return "\n".join([f"Predict on {args.host}:{args.port} (timeout {args.timeout:g} s):",
                          describe_request(images, args.model, version=args.version, full=args.full)])

    return run_files(args, send, describe)


if __name__ == "__main__":
    sys.exit(main())
