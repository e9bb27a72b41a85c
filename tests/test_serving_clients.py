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


# ---- the clients as command-line tools: bad files, no server, errors, dry runs -----------------
EDGE_INFER = SERVING.parent / "tflite" / "edge_infer.py"
NO_TF = ("tensorflow", "tensorflow_serving", "grpc", "can_tf", "keras", "numpy")


def _run_blocked(script, args, blocked=NO_TF, cwd=None):
    return support.run_without(script, args, blocked, cwd=cwd, timeout=60)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def inputs(tmp_path):
    """``[(path, reason or None)]``: good PNG and JPEG files between bad ones, plus a bomb header."""
    from PIL import Image

    gray = np.random.default_rng(0).integers(0, 256, (40, 60)).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "good.png")
    Image.fromarray(gray).convert("RGB").save(tmp_path / "good.jpg", quality=90)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "page.png").write_text("<html><body>502 Bad Gateway</body></html>")
    half = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(half[:len(half) // 2])
    (tmp_path / "scan.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (tmp_path / "bomb.png").write_bytes(support.png_bomb_header(13000, 13000))
    return [
        (tmp_path / "good.png", None),
        (tmp_path / "empty.png", "empty file"),
        (tmp_path / "page.png", "not a PNG, JPEG or DICOM image"),
        (tmp_path / "missing.jpg", "file not found"),
        (tmp_path / "cut.png", "truncated PNG (the file ends before its IEND chunk)"),
        (tmp_path / "scan.dcm", "DICOM is not accepted by serving_default (send PNG or JPEG)"),
        (tmp_path / "bomb.png", None),  # passes the client's checks; the server refuses it
        (tmp_path / "good.jpg", None),
    ]


@pytest.fixture
def assets(tmp_path):
    labels = [f"class{i}" for i in range(14)]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": {c: 0.3 for c in labels}}))
    return tmp_path / "labels.txt", tmp_path / "thresholds.json"


BOMB_REASON = "image too large: 13000 x 13000 = 169000000 pixels, over the limit of 40000000"
FAKE_PROBABILITIES = [round(0.05 * i, 2) for i in range(14)]  # 0.0 ... 0.65


def _stand_in_http_server(status=None):
    """A :predict server: refuses a batch holding a tiny PNG (a bomb header) as TF Serving would."""
    batches = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = [base64.b64decode(i["b64"]) for i in body["instances"]]
            batches.append((self.path, data))
            if status is not None:
                code, reply = status
            elif any(len(d) < 200 for d in data):
                code, reply = 400, {"error": f"assertion failed: [{BOMB_REASON}]\n\t [[{{{{node Assert}}}}]]"}
            else:
                code, reply = 200, {"predictions": [{"probabilities": FAKE_PROBABILITIES} for _ in data]}
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(reply).encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, batches


def test_rest_bad_files_named_and_the_rest_sent(inputs, assets, capsys):
    rest = _load("rest_client")
    server, batches = _stand_in_http_server()
    try:
        code = rest.main([str(p) for p, _ in inputs] + ["--host", "127.0.0.1", "--port", str(server.server_port),
                                                        "--labels", str(assets[0]), "--thresholds", str(assets[1])])
    finally:
        server.shutdown()
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    sent = [p for p, r in inputs if r is None]
    # One batch of the files that passed the checks; refused, so retried one by one to name the bomb.
    assert [len(d) for _, d in batches] == [3, 1, 1, 1]
    assert batches[0][1] == [p.read_bytes() for p in sent] and batches[0][0] == "/v1/models/can:predict"
    assert err.splitlines() == [f"error: cannot read image {p}: {r}" for p, r in inputs if r] + [
        f"error: TF Serving refused {inputs[6][0]}: assertion failed: [{BOMB_REASON}] [[{{{{node Assert}}}}]]",
        "6 of 8 images could not be read"]
    lines = out.splitlines()
    assert [line for line in lines if not line.startswith(" ")] == [str(inputs[0][0]), str(inputs[7][0])]
    assert lines[1].split() == ["class13", "0.650", "<-", "finding"]  # 0.65 >= its threshold 0.3
    assert lines[14].split() == ["class0", "0.000"]


def test_rest_http_errors_are_one_line(inputs, capsys):
    rest = _load("rest_client")
    good = str(inputs[0][0])
    server, _ = _stand_in_http_server(status=(404, {"error": "Servable not found for request: Latest(cxr)"}))
    try:
        port = str(server.server_port)
        assert rest.main([good, "--host", "127.0.0.1", "--port", port, "--model", "cxr"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err == (f"error: TF Serving at http://127.0.0.1:{port}/v1/models/cxr:predict "
                                     "answered HTTP 404: Servable not found for request: Latest(cxr)\n")
    finally:
        server.shutdown()
    server, _ = _stand_in_http_server()  # 400 for the bomb alone
    try:
        assert rest.main([str(inputs[6][0]), "--host", "127.0.0.1", "--port", str(server.server_port)]) == 1
    finally:
        server.shutdown()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"error: TF Serving refused {inputs[6][0]}: ") and BOMB_REASON in err[0]


def test_rest_without_a_server_says_so_in_one_line(inputs, assets, tmp_path):
    port = _free_port()
    run = _run_blocked(SERVING / "rest_client.py", [inputs[0][0], "--host", "127.0.0.1", "--port", port,
                                                    "--version", 3, "--timeout", 5])
    url = f"http://127.0.0.1:{port}"
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == (f"error: cannot reach TF Serving at {url}/v1/models/can/versions/3:predict "
                          f"(Connection refused); is TF Serving running at {url}?\n")
    bad_labels = _run_blocked(SERVING / "rest_client.py", [inputs[0][0], "--labels", tmp_path / "nope.txt"])
    assert bad_labels.returncode == 1 and bad_labels.stderr.startswith(f"error: cannot read --labels {tmp_path}")
    (tmp_path / "bad.json").write_text("{not json")
    bad = _run_blocked(SERVING / "rest_client.py", [inputs[0][0], "--thresholds", tmp_path / "bad.json"])
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr
    usage = _run_blocked(SERVING / "rest_client.py", [inputs[0][0], "--timeout", "soon"])
    assert usage.returncode == 2 and "--timeout" in usage.stderr


def test_rest_timeout_is_one_line(inputs, capsys):
    import socket

    rest = _load("rest_client")
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        code = rest.main([str(inputs[0][0]), "--host", "127.0.0.1", "--port", str(port), "--timeout", "0.3"])
    assert code == 1
    assert capsys.readouterr().err == (f"error: TF Serving at http://127.0.0.1:{port}/v1/models/can:predict "
                                       "did not answer within 0.3 s (--timeout)\n")


def test_rest_dry_run_prints_the_request(inputs):
    run = _run_blocked(SERVING / "rest_client.py", [inputs[0][0], inputs[1][0], inputs[7][0], "--dry-run",
                                                    "--port", _free_port(), "--model", "cxr", "--version", 2])
    assert run.returncode == 1  # one file skipped
    assert run.stderr.splitlines() == [f"error: cannot read image {inputs[1][0]}: empty file",
                                       "1 of 3 images could not be read"]
    head, body = run.stdout.split("\n\n", 1)
    lines = head.splitlines()
    assert lines[0].startswith("POST http://localhost:") and lines[0].endswith("/v1/models/cxr/versions/2:predict")
    assert lines[1] == "Content-Type: application/json"
    request = json.loads(body)
    files = [inputs[0][0].read_bytes(), inputs[7][0].read_bytes()]
    full = [base64.b64encode(f).decode() for f in files]
    assert request["signature_name"] == "serving_default"
    assert [i["b64"] for i in request["instances"]] == [f"{b[:16]}...({len(b)} bytes)" for b in full]
    rest = _load("rest_client")
    assert lines[2] == f"Content-Length: {len(json.dumps(rest.build_predict_request(files)).encode())}"

    whole = _run_blocked(SERVING / "rest_client.py", [inputs[0][0], "--dry-run", "--full"])
    assert whole.returncode == 0 and whole.stderr == ""
    assert json.loads(whole.stdout.split("\n\n", 1)[1]) == rest.build_predict_request(files[:1])


def test_grpc_help_and_dry_run_without_tensorflow(inputs):
    script = SERVING / "grpc_client.py"
    help_ = _run_blocked(script, ["--help"])
    assert help_.returncode == 0, help_.stderr
    for option in ("--host", "--port", "--model", "--version", "--labels", "--thresholds", "--timeout", "--dry-run"):
        assert option in help_.stdout

    dry = _run_blocked(script, [inputs[0][0], inputs[2][0], inputs[7][0], "--dry-run", "--version", 4])
    assert dry.returncode == 1 and "Traceback" not in dry.stderr
    assert dry.stderr.splitlines() == [f"error: cannot read image {inputs[2][0]}: not a PNG, JPEG or DICOM image",
                                       "1 of 3 images could not be read"]
    text = dry.stdout
    sizes = [p.stat().st_size for p in (inputs[0][0], inputs[7][0])]
    for needed in ('name: "can"', "value: 4", 'signature_name: "serving_default"', 'key: "image_bytes"',
                   "dtype: DT_STRING", "size: 2", f"string_val: <{sizes[0]} bytes>", f"string_val: <{sizes[1]} bytes>"):
        assert needed in text, needed
    assert dry.stdout.splitlines()[0] == "Predict on localhost:8500 (timeout 30 s):"

    missing = _run_blocked(script, [inputs[0][0]])
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == ("error: the gRPC client needs tensorflow-serving-api: "
                              "pip install tensorflow-serving-api\n")


def test_grpc_dry_run_text_is_the_request_protobuf(inputs):
    pytest.importorskip("tensorflow_serving.apis.predict_pb2", reason="needs tensorflow-serving-api")
    from google.protobuf import text_format

    grpc_client = _load("grpc_client")
    images = [inputs[0][0].read_bytes(), bytes(range(256)) + b"'\"\\\n"]
    for version in (None, 7):
        request = grpc_client.build_predict_request(images, model_name="cxr", version=version)
        described = grpc_client.describe_request(images, "cxr", version=version, full=True)
        assert described == text_format.MessageToString(request).rstrip("\n")
        assert text_format.Parse(described, type(request)()) == request


def _grpc_stand_in(port_holder):
    """A PredictionService on a free port that refuses a batch holding a bomb header (INVALID_ARGUMENT)."""
    from concurrent import futures

    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    batches = []

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            data = list(request.inputs["image_bytes"].string_val)
            batches.append((request.model_spec.name, data))
            if any(len(d) < 200 for d in data):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"assertion failed: [{BOMB_REASON}]")
            response = predict_pb2.PredictResponse()
            shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(data)),
                                                           tensor_shape_pb2.TensorShapeProto.Dim(size=14)])
            response.outputs["probabilities"].CopyFrom(tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=FAKE_PROBABILITIES * len(data)))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port_holder.append(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    return server, batches


def test_grpc_against_a_stand_in_server_and_without_one(inputs, assets, capsys):
    pytest.importorskip("grpc", reason="needs grpcio")
    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc", reason="needs tensorflow-serving-api")
    grpc_client = _load("grpc_client")
    port = []
    server, batches = _grpc_stand_in(port)
    try:
        code = grpc_client.main([str(p) for p, _ in inputs] + [
            "--host", "127.0.0.1", "--port", str(port[0]), "--model", "cxr",
            "--labels", str(assets[0]), "--thresholds", str(assets[1])])
    finally:
        server.stop(None)
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    assert [len(d) for _, d in batches] == [3, 1, 1, 1] and batches[0][0] == "cxr"
    assert batches[0][1] == [p.read_bytes() for p, r in inputs if r is None]
    assert err.splitlines() == [f"error: cannot read image {p}: {r}" for p, r in inputs if r] + [
        f"error: TF Serving refused {inputs[6][0]}: assertion failed: [{BOMB_REASON}]",
        "6 of 8 images could not be read"]
    lines = out.splitlines()
    assert [line for line in lines if not line.startswith(" ")] == [str(inputs[0][0]), str(inputs[7][0])]
    assert lines[1].split() == ["class13", "0.650", "<-", "finding"] and lines[14].split() == ["class0", "0.000"]

    free = _free_port()
    assert grpc_client.main([str(inputs[0][0]), "--host", "127.0.0.1", "--port", str(free), "--timeout", "10"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: cannot reach TF Serving at 127.0.0.1:{free} (")
    assert err.endswith(f"); is TF Serving running at 127.0.0.1:{free}?\n")


def test_grpc_client_in_a_fresh_process_prints_one_line_not_tensorflows_log(inputs):
    """tensorflow_serving loads TensorFlow, whose C++ code logs on import: the client keeps it out."""
    import os
    import subprocess
    import sys

    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc", reason="needs tensorflow-serving-api")
    free = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run([sys.executable, str(SERVING / "grpc_client.py"), str(inputs[0][0]), "--host", "127.0.0.1",
                          "--port", str(free), "--timeout", "10"], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 1
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith(f"error: cannot reach TF Serving at 127.0.0.1:{free} (")


SHARED = ("ClientError", "ImageRefused", "command_line", "run_files")


def test_both_clients_use_the_shared_module():
    """rest_client.py and grpc_client.py keep no copies of the shared code: they import serving_files.py."""
    import sys

    rest, grpc_client = _load("rest_client"), _load("grpc_client")
    shared = sys.modules["serving_files"]
    assert Path(shared.__file__).resolve() == SERVING / "serving_files.py"
    for client in (rest, grpc_client):
        for name in SHARED:
            assert getattr(client, name) is getattr(shared, name), (client.__name__, name)
        source = Path(client.__file__).read_text()
        for name in ("image_problem", "read_image_file", "read_labels", "read_thresholds", "findings",
                     "predict_all", "print_prediction", "positive_float"):
            assert f"def {name}(" not in source and f"def _{name}(" not in source, (client.__name__, name)
        assert "class ClientError" not in source and "class ImageRefused" not in source
    # The shared file's reasons are what both clients print (test_*_bad_files_named...) and they
    # match edge_infer.py's copy and the can-tf library's.
    spec = importlib.util.spec_from_file_location("edge_infer_for_reasons", EDGE_INFER)
    edge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(edge)
    names = ("EMPTY_FILE", "NOT_AN_IMAGE", "TRUNCATED_PNG", "TRUNCATED_JPEG")
    assert [getattr(shared, n) for n in names] == [getattr(edge, n) for n in names]
    images = pytest.importorskip("can_tf.images")
    assert [getattr(shared, n) for n in names] == [images.EMPTY, images.NOT_AN_IMAGE, images.TRUNCATED_PNG,
                                                   images.TRUNCATED_JPEG]
    assert shared.DICOM_REFUSED == images.DICOM_NOT_SERVED


def test_shared_module_is_standard_library_only():
    """serving_files.py imports nothing outside the standard library (rest_client.py needs nothing installed)."""
    run = _run_blocked(SERVING / "serving_files.py", [], blocked=NO_TF)
    assert run.returncode == 0, run.stderr
    import ast
    import sys

    tree = ast.parse((SERVING / "serving_files.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
