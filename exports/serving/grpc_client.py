"""gRPC client for a can-tf model in TF Serving (``pip install tensorflow-serving-api``).

gRPC sends the image bytes as a ``tf.string`` tensor without base64, which is what to use for
large images or high request rates. Usage::

    python grpc_client.py xray1.png xray2.jpg --model can --labels models/can/1/assets/labels.txt

Example:
    >>> request = build_predict_request([b"\\x89PNG..."], model_name="can")
    >>> request.model_spec.signature_name, list(request.inputs)
    ('serving_default', ['image_bytes'])
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

SIGNATURE = "serving_default"
INPUT_KEY = "image_bytes"  # the input name of the exported serving_default signature


def build_predict_request(images: list, model_name: str = "can", signature_name: str = SIGNATURE,
                          version: int = None) -> predict_pb2.PredictRequest:
    """A ``PredictRequest`` carrying the encoded images as a ``(B,)`` string tensor."""
    if not images:
        raise ValueError("no images to send")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(images))])
    request.inputs[INPUT_KEY].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=[bytes(b) for b in images]))
    return request


def output_array(response, key: str = "probabilities") -> np.ndarray:
    """A float output of a ``PredictResponse`` as a numpy array of its shape."""
    tensor = response.outputs[key]
    shape = [d.size for d in tensor.tensor_shape.dim]
    # A server may send the values packed (tensor_content) or as a repeated field (float_val).
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype="<f4")
    else:
        values = np.asarray(tensor.float_val, dtype=np.float32)
    return values.astype(np.float32).reshape(shape)


def predict(images: list, host: str = "localhost", port: int = 8500, model_name: str = "can",
            timeout: float = 30.0) -> np.ndarray:
    """Calls the server; returns probabilities ``(B, C)``."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    # Radiographs can exceed gRPC's default 4 MB message limit.
    options = [("grpc.max_send_message_length", 256 * 2**20), ("grpc.max_receive_message_length", 256 * 2**20)]
    with grpc.insecure_channel(f"{host}:{port}", options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(build_predict_request(images, model_name), timeout=timeout)
    return output_array(response)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--model", default="can")
    parser.add_argument("--labels", type=Path, default=None, help="labels.txt of the export")
    args = parser.parse_args(argv)

    probabilities = predict([p.read_bytes() for p in args.images], args.host, args.port, args.model)
    labels = args.labels.read_text().split() if args.labels else [str(i) for i in range(probabilities.shape[1])]
    for path, row in zip(args.images, probabilities):
        print(path)
        for i in np.argsort(-row):
            print(f"  {labels[i]:<20} {row[i]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
