"""TF Serving warm-up requests: ``assets.extra/tf_serving_warmup_requests`` in every SavedModel export.

TF Serving loads a model lazily: the first request that reaches a new version pays for creating the
session, initialising kernels and, per input shape, oneDNN's primitives, which is seconds on a CPU.
With model warm-up (``--enable_model_warmup``, on by default) the server replays the requests found
in ``<version>/assets.extra/tf_serving_warmup_requests`` while loading, before the version is marked
``AVAILABLE``; a request that fails there fails the load. The file is a TFRecord file of serialized
``tensorflow.serving.PredictionLog`` messages (the server reads at most :data:`MAX_RECORDS`).

Each export carries one record per verification image (the images the export is checked on, so
they are real radiographs, never synthetic bytes) and one record with a batch of the first
``batch_size`` of them, so the batched path (shape ``[k]``) is warm too. A record holds

    PredictionLog { predict_log (6): PredictLog { request (1): PredictRequest {
        model_spec (1): ModelSpec { name (1): <model name>, signature_name (3): "serving_default" }
        inputs (2): map entry { key (1): "image_bytes", value (2): TensorProto DT_STRING [k] } } } }

(field numbers in brackets, from ``tensorflow_serving/apis/prediction_log.proto``, ``predict.proto``
and ``model.proto``; ``version`` (2) is left out, so the record fits whichever version loads it).
The three outer messages are written here in protobuf's wire format (a field is a varint key
``number << 3 | wire type`` then, for the length-delimited type 2 used by every field here, a varint
length and the bytes), so the export needs no ``tensorflow-serving-api``; the ``TensorProto`` is
TensorFlow's own (``tf.make_tensor_proto``). The bytes are identical to what
``prediction_log_pb2.PredictionLog(...).SerializeToString()`` writes (tested).

The image bytes are the verification files themselves when they are PNG or JPEG, what a client
sends. ``serving_default`` takes nothing else, so an image of another kind (a DICOM) is sent as its
preprocessed pixels (``S x S``, already rounded to 0..255 by the image door) encoded as an 8-bit
gray PNG: decoding it gives exactly the pixels the model was checked on.

Before an export is published, :func:`add_warmup_requests` writes the file into the staging folder
and replays every record through the staged SavedModel's signature (:func:`replay_warmup_file`),
as the server will, comparing the probabilities with the Keras model's: a record the server would
choke on fails the export instead of the server's load.

Example:
    >>> import tensorflow as tf
    >>> from can_tf.export.warmup import read_warmup_file, warmup_records, write_warmup_file
    >>> png = tf.io.encode_png(tf.zeros([8, 8, 1], tf.uint8)).numpy()
    >>> records = warmup_records([png, png, png], "can", batch_size=2)
    >>> len(records)  # one per image, then one batch of 2
    4
    >>> records[0][0] == 6 << 3 | 2  # the first key: field 6 (predict_log), wire type 2 (length-delimited)
    True
    >>> import tempfile, pathlib
    >>> path = write_warmup_file(pathlib.Path(tempfile.mkdtemp()) / "tf_serving_warmup_requests", records)
    >>> [(r["model_name"], r["signature_name"], r["num_images"]) for r in read_warmup_file(path)][-2:]
    [('can', 'serving_default', 1), ('can', 'serving_default', 2)]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from can_tf.errors import ExportError
from can_tf.files import atomic_write

PathLike = Union[str, os.PathLike]

WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_FOLDER = "assets.extra"  # TF Serving's folder for files beside the graph
MAX_RECORDS = 1000  # TF Serving stops reading the warm-up file after this many records
INPUT_KEY = "image_bytes"  # serving_default's input (can_tf.export.saved_model.ServingModule)

# Field numbers, from tensorflow_serving/apis/{prediction_log,predict,model}.proto.
_PREDICTION_LOG_PREDICT_LOG = 6
_PREDICTION_LOG_OTHER = {2: "classify_log", 3: "regress_log", 4: "multi_inference_log", 5: "session_run_log",
                         7: "predict_streamed_log"}
_PREDICT_LOG_REQUEST = 1
_REQUEST_MODEL_SPEC, _REQUEST_INPUTS = 1, 2
_MAP_KEY, _MAP_VALUE = 1, 2
_SPEC_NAME, _SPEC_VERSION, _SPEC_SIGNATURE = 1, 2, 3
_INT64_VALUE = 1
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5  # wire types


class WarmupError(ExportError):
    """A warm-up file that TF Serving could not replay; the message names the file and the record."""


class _Malformed(ValueError):
    """Bytes that are not the message they should be (turned into a WarmupError naming the record)."""


@dataclasses.dataclass
class WarmupRequest:
    """One decoded warm-up record.

    Attributes:
        model_name: ``model_spec.name``.
        signature_name: ``model_spec.signature_name`` ("" means the server's default signature).
        inputs: input name -> the request's tensor as a NumPy array (strings as ``bytes`` objects).
        version: ``model_spec.version``, or None when absent (the version being loaded).
    """

    model_name: str
    signature_name: str
    inputs: dict
    version: Optional[int] = None

    @property
    def num_images(self) -> int:
        """Leading dimension of ``image_bytes`` (or of the first input): the images in the request."""
        if not self.inputs:
            return 0
        value = self.inputs.get(INPUT_KEY, self.inputs[sorted(self.inputs)[0]])
        return int(value.shape[0]) if value.ndim else 1

    def as_dict(self) -> dict:
        return {"model_name": self.model_name, "signature_name": self.signature_name, "version": self.version,
                "inputs": {k: list(v.shape) for k, v in sorted(self.inputs.items())},
                "num_images": self.num_images}


# --- writing --------------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | 0x80 if value else low)
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, sub-messages, map entries)."""
    return _varint(number << 3 | _LENGTH) + _varint(len(payload)) + payload


def _predict_log(images: Sequence[bytes], model_name: str, signature_name: str) -> bytes:
    import tensorflow as tf

    # proto3 leaves fields at their default ("") out; doing the same keeps the bytes canonical.
    spec = _field(_SPEC_NAME, model_name.encode("utf-8"))
    if signature_name:
        spec += _field(_SPEC_SIGNATURE, signature_name.encode("utf-8"))
    tensor = tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)]).SerializeToString()
    entry = _field(_MAP_KEY, INPUT_KEY.encode("utf-8")) + _field(_MAP_VALUE, tensor)
    request = _field(_REQUEST_MODEL_SPEC, spec) + _field(_REQUEST_INPUTS, entry)
    return _field(_PREDICTION_LOG_PREDICT_LOG, _field(_PREDICT_LOG_REQUEST, request))


def warmup_records(image_bytes: Sequence[bytes], model_name: str, signature_name: str = "serving_default",
                   batch_size: int = 4) -> list[bytes]:
    """Serialized ``PredictionLog`` records: one request per image, then one batch of the first ones.

    Args:
        image_bytes: encoded PNG or JPEG files (what ``serving_default`` takes).
        model_name: the served model's name (``model_spec.name``).
        signature_name: the signature the requests call.
        batch_size: images in the batched request (at most ``len(image_bytes)``); no batched
            request when fewer than 2 images are left for it.

    Returns:
        ``len(image_bytes)`` records (+1 for the batch), each a serialized ``PredictionLog``.

    Raises:
        ExportError: no images, an image that is not PNG or JPEG (naming its index), an empty
            model name, or more records than TF Serving reads (:data:`MAX_RECORDS`).
    """
    from can_tf.images import sniff

    if not model_name:
        raise ExportError("warm-up requests need a model name (model_spec.name), got an empty one")
    if not image_bytes:
        raise ExportError("warm-up requests need at least one image, got none")
    for i, data in enumerate(image_bytes):
        if not isinstance(data, bytes) or sniff(data) not in ("PNG", "JPEG"):
            raise ExportError(f"warm-up image {i} is not PNG or JPEG bytes (serving_default takes only those)")
    k = min(int(batch_size), len(image_bytes))
    count = len(image_bytes) + (k >= 2)
    if count > MAX_RECORDS:
        raise ExportError(f"{count} warm-up records, but TF Serving reads at most {MAX_RECORDS}; give fewer images")
    records = [_predict_log([data], model_name, signature_name) for data in image_bytes]
    if k >= 2:
        records.append(_predict_log(image_bytes[:k], model_name, signature_name))
    return records


def write_warmup_file(path: PathLike, records: Sequence[bytes]) -> Path:
    """Writes ``records`` as a TFRecord file, atomically (a temporary file renamed onto ``path``).

    Raises:
        ExportError: no records, or more than TF Serving reads.
    """
    import tensorflow as tf

    if not records:
        raise ExportError(f"no warm-up records to write to {path}")
    if len(records) > MAX_RECORDS:
        raise ExportError(f"{len(records)} warm-up records for {path}, but TF Serving reads at most {MAX_RECORDS}")

    def write(tmp):
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)

    return atomic_write(path, write)


def warmup_image_bytes(paths: Sequence[PathLike], images: np.ndarray) -> list[bytes]:
    """The bytes to warm up with: each file's own when it is PNG or JPEG, else its pixels as a PNG.

    Args:
        paths: the verification image files.
        images: the same images preprocessed, ``(N, S, S, 1)`` in [0, 255] (``SampleImages.images``);
            used for the files ``serving_default`` cannot take (DICOM).
    """
    import tensorflow as tf

    from can_tf.images import sniff

    out = []
    for path, pixels in zip(paths, images):
        data = Path(path).read_bytes()
        if sniff(data) not in ("PNG", "JPEG"):
            gray = np.clip(np.round(np.asarray(pixels, np.float32)), 0, 255).astype(np.uint8)
            data = tf.io.encode_png(gray.reshape(gray.shape[0], gray.shape[1], 1)).numpy()
        out.append(data)
    return out


# --- reading --------------------------------------------------------------------------------------

def _read_varint(data: bytes, pos: int, what: str) -> tuple:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise _Malformed(f"{what} ends inside a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 64:
            raise _Malformed(f"{what} has a varint longer than 10 bytes")


def _fields(data: bytes, what: str):
    """Yields ``(number, wire type, value)`` of a message's fields (value: int or bytes)."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos, what)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(f"{what} has a field numbered 0")
        if wire == _VARINT:
            value, pos = _read_varint(data, pos, what)
        elif wire in (_FIXED64, _FIXED32, _LENGTH):
            if wire == _LENGTH:
                size, pos = _read_varint(data, pos, what)
            else:
                size = 8 if wire == _FIXED64 else 4
            if pos + size > len(data):
                raise _Malformed(f"{what} field {number} runs past the end of the record")
            value, pos = data[pos:pos + size], pos + size
        else:
            raise _Malformed(f"{what} has unsupported wire type {wire} (field {number})")
        yield number, wire, value


def _length_field(wire: int, what: str, number: int) -> None:
    if wire != _LENGTH:
        raise _Malformed(f"{what} field {number} has wire type {wire}, expected a length-delimited field")


def _tensor(data: bytes, what: str) -> np.ndarray:
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework.tensor_pb2 import TensorProto

    try:
        return tf.make_ndarray(TensorProto.FromString(data))
    except (DecodeError, TypeError, ValueError) as e:
        raise _Malformed(f"{what} is not a readable TensorProto ({e})") from None


def _parse_wire(data: bytes) -> WarmupRequest:
    """The minimal decoder: what warm-up needs of PredictionLog -> PredictLog -> PredictRequest."""
    log, others = None, []
    for number, wire, value in _fields(data, "PredictionLog"):
        if number == _PREDICTION_LOG_PREDICT_LOG:
            _length_field(wire, "PredictionLog", number)
            log = (log or b"") + value  # a repeated sub-message is merged, as protobuf does
        elif number in _PREDICTION_LOG_OTHER:
            others.append(_PREDICTION_LOG_OTHER[number])
    if log is None:
        raise _Malformed(f"not a predict_log (holds {', '.join(others) or 'no log'})")
    request = b""
    for number, wire, value in _fields(log, "PredictLog"):
        if number == _PREDICT_LOG_REQUEST:
            _length_field(wire, "PredictLog", number)
            request += value
    spec, entries = b"", []
    for number, wire, value in _fields(request, "PredictRequest"):
        if number == _REQUEST_MODEL_SPEC:
            _length_field(wire, "PredictRequest", number)
            spec += value
        elif number == _REQUEST_INPUTS:
            _length_field(wire, "PredictRequest", number)
            entries.append(value)
    name, signature, version = "", "", None
    for number, wire, value in _fields(spec, "ModelSpec"):
        if number in (_SPEC_NAME, _SPEC_SIGNATURE, _SPEC_VERSION):
            _length_field(wire, "ModelSpec", number)
        if number == _SPEC_NAME:
            name = value.decode("utf-8", errors="replace")
        elif number == _SPEC_SIGNATURE:
            signature = value.decode("utf-8", errors="replace")
        elif number == _SPEC_VERSION:
            version = 0  # a present Int64Value holding the default 0 is written empty
            for n, w, v in _fields(value, "ModelSpec.version"):
                if n == _INT64_VALUE and w == _VARINT:
                    version = v - (1 << 64) if v >= 1 << 63 else v
    inputs = {}
    for entry in entries:
        key, tensor = "", b""
        for number, wire, value in _fields(entry, "PredictRequest.inputs entry"):
            if number == _MAP_KEY:
                _length_field(wire, "PredictRequest.inputs entry", number)
                key = value.decode("utf-8", errors="replace")
            elif number == _MAP_VALUE:
                _length_field(wire, "PredictRequest.inputs entry", number)
                tensor = value
        inputs[key] = _tensor(tensor, f"input {key!r}")  # a repeated key: the last one wins
    return WarmupRequest(name, signature, inputs, version)


def _parse_serving_api(data: bytes, prediction_log_pb2) -> WarmupRequest:
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        log = prediction_log_pb2.PredictionLog.FromString(data)
    except DecodeError as e:
        raise _Malformed(f"not a PredictionLog ({e})") from None
    kind = log.WhichOneof("log_type")
    if kind != "predict_log":
        raise _Malformed(f"not a predict_log (holds {kind or 'no log'})")
    request = log.predict_log.request
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    return WarmupRequest(spec.name, spec.signature_name,
                         {k: tf.make_ndarray(v) for k, v in request.inputs.items()}, version)


def _serving_api():
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:  # an optional extra; the wire decoder reads the same fields
        return None
    return prediction_log_pb2


def read_warmup_requests(path: PathLike) -> list[WarmupRequest]:
    """Decodes every record of a warm-up file (tensorflow-serving-api when installed, else by hand).

    Raises:
        WarmupError: naming ``path`` (and the record) when the file is missing, is not a TFRecord
            file (bad length or checksum), or holds a record that is not a ``PredictLog``.
    """
    import tensorflow as tf

    path = Path(path)
    if not path.is_file():
        raise WarmupError(f"warm-up file {path} does not exist")
    api = _serving_api()
    requests, index = [], 0
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
            requests.append(_parse_serving_api(record, api) if api is not None else _parse_wire(record))
    except _Malformed as e:
        raise WarmupError(f"warm-up file {path} record {index}: {e}") from None
    except tf.errors.OpError as e:
        reason = e.message.strip().splitlines()[0] if e.message else type(e).__name__
        raise WarmupError(f"warm-up file {path} is not a readable TFRecord file after {len(requests)} "
                          f"record(s): {reason}") from None
    if not requests:
        raise WarmupError(f"warm-up file {path} holds no records")
    return requests


def read_warmup_file(path: PathLike) -> list[dict]:
    """What each record asks for: ``model_name``, ``signature_name``, ``version`` (None when absent),
    ``inputs`` (name -> shape) and ``num_images``.

    Raises:
        WarmupError: as :func:`read_warmup_requests`.
    """
    return [request.as_dict() for request in read_warmup_requests(path)]


# --- replaying ------------------------------------------------------------------------------------

def _reason(error: Exception) -> str:
    from can_tf.images import reason_in

    text = (getattr(error, "message", None) or str(error)).strip()
    # The graph's own refusal ("request image 0: truncated PNG ..."), not TensorFlow's preamble.
    return reason_in(text) or (text.splitlines()[0] if text else type(error).__name__)


def replay_warmup_file(export_dir: PathLike, path: Optional[PathLike] = None, *,
                       model_name: Optional[str] = None) -> list[dict]:
    """Runs each record's inputs through the SavedModel's signature, as TF Serving does when loading.

    Args:
        export_dir: the SavedModel folder.
        path: the warm-up file; default ``<export_dir>/assets.extra/tf_serving_warmup_requests``.
        model_name: when given, every record's ``model_spec.name`` must be this.

    Returns:
        Per record, ``{output name: NumPy array}`` of the signature's outputs.

    Raises:
        WarmupError: naming the file and record: unreadable, another model's name, an unknown
            signature, inputs that do not match the signature's (names, dtype, shape), a request the
            graph refuses, or outputs that are not finite or not one row per image.
    """
    import tensorflow as tf

    export_dir = Path(export_dir)
    path = export_dir / WARMUP_FOLDER / WARMUP_FILE if path is None else Path(path)
    requests = read_warmup_requests(path)
    loaded = tf.saved_model.load(str(export_dir), tags=["serve"])
    results = []
    for index, request in enumerate(requests):
        where = f"warm-up file {path} record {index}"
        if model_name is not None and request.model_name != model_name:
            raise WarmupError(f"{where}: model_spec.name is {request.model_name!r}, expected {model_name!r}")
        signature_name = request.signature_name or "serving_default"  # TF Serving's default too
        if signature_name not in loaded.signatures:
            raise WarmupError(f"{where}: the export has no signature {signature_name!r} "
                              f"(it has {', '.join(sorted(loaded.signatures))})")
        function = loaded.signatures[signature_name]
        specs = function.structured_input_signature[1]
        if set(request.inputs) != set(specs):
            raise WarmupError(f"{where}: inputs {sorted(request.inputs)} do not match signature "
                              f"{signature_name!r}'s {sorted(specs)}")
        tensors = {}
        for key, spec in specs.items():
            tensor = tf.constant(request.inputs[key])
            if tensor.dtype != spec.dtype or not spec.shape.is_compatible_with(tensor.shape):
                raise WarmupError(f"{where}: input {key!r} is {tensor.dtype.name} {tensor.shape.as_list()}, "
                                  f"signature {signature_name!r} takes {spec.dtype.name} {spec.shape.as_list()}")
            tensors[key] = tensor
        try:
            outputs = {k: v.numpy() for k, v in function(**tensors).items()}
        except (tf.errors.OpError, TypeError, ValueError) as e:
            raise WarmupError(f"{where}: {signature_name} refused it: {_reason(e)}") from None
        for key, value in outputs.items():
            if value.dtype.kind == "f" and (value.shape[:1] != (request.num_images,) or not np.isfinite(value).all()):
                raise WarmupError(f"{where}: output {key!r} of shape {list(value.shape)} is not finite "
                                  f"or not one row per image ({request.num_images})")
        results.append(outputs)
    return results


def add_warmup_requests(export_dir: PathLike, paths: Sequence[PathLike], images: np.ndarray, model_name: str,
                        expected: np.ndarray, *, atol: float = 1e-4, batch_size: int = 4) -> int:
    """Writes the warm-up file into a (staged) export and checks it by replaying it.

    Args:
        export_dir: the SavedModel folder; the file goes to ``assets.extra/`` in it.
        paths, images: the verification images (files, and preprocessed ``(N, S, S, 1)``).
        model_name: the served model name.
        expected: the Keras model's probabilities ``(N, C)`` for ``images``; every record's
            ``probabilities`` must match its images' rows within ``atol``.
        batch_size: images in the batched record.

    Returns:
        The number of records written.

    Raises:
        WarmupError: the file cannot be replayed or gives other probabilities (naming it).
    """
    from can_tf.export.verify import VerificationError, check_close

    data = warmup_image_bytes(paths, images)
    path = write_warmup_file(Path(export_dir) / WARMUP_FOLDER / WARMUP_FILE,
                             warmup_records(data, model_name, batch_size=batch_size))
    row_of = {}
    for row, item in enumerate(data):
        row_of.setdefault(item, row)  # identical files have identical expected rows
    requests = read_warmup_requests(path)
    for index, (request, outputs) in enumerate(zip(requests, replay_warmup_file(export_dir, path,
                                                                                model_name=model_name))):
        where = f"warm-up file {path} record {index}"
        sent = [bytes(b) for b in np.asarray(request.inputs.get(INPUT_KEY, [])).reshape(-1)]
        rows = [row_of.get(item) for item in sent]
        if not sent or None in rows or "probabilities" not in outputs:
            raise WarmupError(f"{where}: does not send the verification images to {INPUT_KEY!r}")
        try:
            check_close(where, outputs["probabilities"], np.asarray(expected)[rows], atol)
        except VerificationError as e:
            raise WarmupError(str(e)) from None
    return len(requests)
