"""The TF Serving clients build requests the exported signature accepts and answers correctly."""

from __future__ import annotations

import base64
import http.server
import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest

import export_support as support

SERVING = Path(__file__).resolve().parents[1] / "exports" / "serving"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"serving_{name}", SERVING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def export(chestxray14_dir):
    return support.saved_model_export(chestxray14_dir)[1]


@pytest.fixture(scope="module")
def signature(export):
    import tensorflow as tf

    return tf.saved_model.load(str(export.path)).signatures["serving_default"]


@pytest.fixture(scope="module")
def files(chestxray14_dir):
    return support.real_images(chestxray14_dir, 3)


def test_rest_request_matches_signature(signature, files):
    import tensorflow as tf

    rest = _load("rest_client")
    request = rest.build_predict_request([f.read_bytes() for f in files])
    body = json.loads(json.dumps(request))  # what goes over the wire
    assert body["signature_name"] == "serving_default"
    # One input, so each instance is that input's value: a b64 object, i.e. one tf.string.
    (input_name, spec), = signature.structured_input_signature[1].items()
    assert input_name == "image_bytes" and spec.dtype == tf.string and spec.shape.as_list() == [None]
    payload = [base64.b64decode(instance["b64"]) for instance in body["instances"]]
    assert payload == [f.read_bytes() for f in files]
    out = signature(**{input_name: tf.constant(payload)})
    assert set(out) == {"probabilities", "logits"}
    np.testing.assert_allclose(out["probabilities"].numpy(), support.keras_probabilities(files), atol=1e-4, rtol=0)


def test_grpc_request_matches_signature(signature, files):
    import tensorflow as tf

    grpc_client = _load("grpc_client")
    request = grpc_client.build_predict_request([f.read_bytes() for f in files], model_name="can", version=1)
    assert request.model_spec.name == "can" and request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 1
    # Round trip through the wire format, as the server receives it.
    received = type(request).FromString(request.SerializeToString())
    (input_name, spec), = signature.structured_input_signature[1].items()
    assert list(received.inputs) == [input_name]
    tensor = received.inputs[input_name]
    assert tf.dtypes.as_dtype(tensor.dtype) == spec.dtype
    assert [d.size for d in tensor.tensor_shape.dim] == [len(files)]
    out = signature(**{input_name: tf.constant(tf.make_ndarray(tensor))})
    expected = support.keras_probabilities(files)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-4, rtol=0)

    # Reading a response the way the client does.
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(out["probabilities"].numpy()))
    np.testing.assert_array_equal(grpc_client.output_array(response), out["probabilities"].numpy())
    unpacked = predict_pb2.PredictResponse()  # the same values as a repeated float field
    proto = unpacked.outputs["probabilities"]
    proto.dtype = 1  # DT_FLOAT
    proto.tensor_shape.CopyFrom(response.outputs["probabilities"].tensor_shape)
    proto.float_val.extend(out["probabilities"].numpy().ravel().tolist())
    np.testing.assert_allclose(grpc_client.output_array(unpacked), out["probabilities"].numpy(), rtol=1e-7)


def test_rest_client_end_to_end_against_a_stand_in_server(signature, files, export, capsys):
    """rest_client.main against a local HTTP server answering :predict from the loaded export."""
    import tensorflow as tf

    rest = _load("rest_client")
    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen["path"] = self.path
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = [base64.b64decode(i["b64"]) for i in body["instances"]]
            out = signature(image_bytes=tf.constant(data))
            predictions = [{"probabilities": p.tolist(), "logits": z.tolist()}
                           for p, z in zip(out["probabilities"].numpy(), out["logits"].numpy())]
            reply = json.dumps({"predictions": predictions}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assets = export.path / "assets"
        code = rest.main([str(files[0]), "--port", str(server.server_port), "--model", "can",
                          "--labels", str(assets / "labels.txt"), "--thresholds", str(assets / "thresholds.json")])
    finally:
        server.shutdown()
    assert code == 0 and seen["path"] == "/v1/models/can:predict"
    printed = capsys.readouterr().out
    expected = support.keras_probabilities(files[:1])[0]
    from can_tf.labels import CLASS_NAMES

    top = CLASS_NAMES[int(np.argmax(expected))]
    assert printed.splitlines()[1].split()[0] == top
    assert f"{expected.max():.3f}" in printed.splitlines()[1]


def test_serving_config_files_point_at_the_export_layout():
    config = (SERVING / "models.config").read_text()
    assert 'name: "can"' in config and 'base_path: "/models/can"' in config
    compose = (SERVING / "docker-compose.yml").read_text()
    for needed in ("tensorflow/serving", "8500:8500", "8501:8501", "./models:/models", "--model_config_file"):
        assert needed in compose
