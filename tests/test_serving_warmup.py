"""TF Serving warm-up requests: the wire format, the export's file, its replay, and the batching config."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import export_support as support

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCHING_FILE = REPO_ROOT / "exports" / "serving" / "batching_parameters.txt"


@pytest.fixture(scope="module")
def export(chestxray14_dir):
    return support.saved_model_export(chestxray14_dir)


@pytest.fixture(scope="module")
def export_records(export):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = export[1].path / "assets.extra" / "tf_serving_warmup_requests"
    return [prediction_log_pb2.PredictionLog.FromString(r)
            for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]


def _serving_api_log(images, model_name, signature_name="serving_default", version=None, extra=False):
    """The same record built with tensorflow-serving-api: the reference for the hand-written bytes."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    if extra:  # fields a reader must skip or keep apart
        request.output_filter.append("probabilities")
        log.predict_log.request.CopyFrom(request)
        log.log_metadata.model_spec.name = "logged"
        log.log_metadata.sampling_config.sampling_rate = 0.5
    return log


def _request_images(log) -> list:
    import tensorflow as tf

    return [bytes(b) for b in tf.make_ndarray(log.predict_log.request.inputs["image_bytes"]).reshape(-1)]


# --- without an export --------------------------------------------------------------------------

def test_records_are_the_serving_api_bytes_and_parse_as_prediction_logs(chestxray14_dir):
    from tensorflow_serving.apis import prediction_log_pb2

    from can_tf.export.warmup import warmup_records

    files = support.real_images(chestxray14_dir, 3)
    data = [files[0].read_bytes(), support.jpeg_bytes(files[1]), files[2].read_bytes()]
    records = warmup_records(data, "cxr", batch_size=2)
    assert len(records) == 4
    expected = [[d] for d in data] + [data[:2]]
    for record, images in zip(records, expected):
        assert record == _serving_api_log(images, "cxr").SerializeToString()
        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        spec = log.predict_log.request.model_spec
        assert (spec.name, spec.signature_name, spec.HasField("version")) == ("cxr", "serving_default", False)
        assert list(log.predict_log.request.inputs) == ["image_bytes"]
        tensor = log.predict_log.request.inputs["image_bytes"]
        assert tensor.dtype == 7 and [d.size for d in tensor.tensor_shape.dim] == [len(images)]  # 7 = DT_STRING
        assert _request_images(log) == images


def test_batch_size_is_capped_and_single_images_get_no_batch(chestxray14_dir):
    from can_tf.export.warmup import warmup_records

    data = [p.read_bytes() for p in support.real_images(chestxray14_dir, 3)]
    assert len(warmup_records(data, "can", batch_size=8)) == 4  # a batch of all 3
    assert len(warmup_records(data[:1], "can")) == 1
    assert len(warmup_records(data, "can", batch_size=1)) == 3


@pytest.mark.parametrize("images, name, match", [
    ([b"GIF89a" + b"\0" * 40], "can", "warm-up image 0 is not PNG or JPEG"),
    ([], "can", "at least one image"),
    (None, "", "model name"),
])
def test_warmup_records_refuses_what_serving_default_cannot_take(chestxray14_dir, images, name, match):
    from can_tf.export import ExportError
    from can_tf.export.warmup import warmup_records

    if images is None:
        images = [support.real_images(chestxray14_dir, 1)[0].read_bytes()]
    with pytest.raises(ExportError, match=match):
        warmup_records(images, name)


def test_too_many_records_for_tf_serving_are_refused():
    from can_tf.export import ExportError
    from can_tf.export.warmup import warmup_records

    png = support.black_png(4)
    with pytest.raises(ExportError, match="TF Serving reads at most 1000"):
        warmup_records([png] * 1000, "can")  # 1000 singles + 1 batch


def test_wire_decoder_reads_what_the_serving_api_writes(tmp_path, monkeypatch, chestxray14_dir):
    from can_tf.export import warmup

    data = [p.read_bytes() for p in support.real_images(chestxray14_dir, 2)]
    records = [_serving_api_log(data, "cxr", "serving_images", version=3, extra=True).SerializeToString(),
               _serving_api_log(data[:1], "can", "", version=0).SerializeToString()]
    path = warmup.write_warmup_file(tmp_path / warmup.WARMUP_FILE, records)
    with_api = warmup.read_warmup_file(path)
    assert with_api == [
        {"model_name": "cxr", "signature_name": "serving_images", "version": 3,
         "inputs": {"image_bytes": [2]}, "num_images": 2},
        {"model_name": "can", "signature_name": "", "version": 0, "inputs": {"image_bytes": [1]}, "num_images": 1},
    ]
    monkeypatch.setattr(warmup, "_serving_api", lambda: None)  # as without tensorflow-serving-api
    assert warmup.read_warmup_file(path) == with_api
    by_hand = warmup.read_warmup_requests(path)
    assert [bytes(b) for b in by_hand[0].inputs["image_bytes"]] == data


@pytest.mark.parametrize("use_api", [True, False])
def test_unreadable_files_are_named(tmp_path, monkeypatch, use_api, chestxray14_dir):
    from can_tf.export import ExportError, warmup

    if not use_api:
        monkeypatch.setattr(warmup, "_serving_api", lambda: None)
    good = warmup.warmup_records([support.real_images(chestxray14_dir, 1)[0].read_bytes()], "can")
    path = warmup.write_warmup_file(tmp_path / "flipped", good)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the record: its checksum no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match=f"warm-up file {re.escape(str(path))} is not a readable TFRecord"):
        warmup.read_warmup_file(path)

    garbage = warmup.write_warmup_file(tmp_path / "garbage", good + [b"\x0fnot a protobuf"])
    with pytest.raises(ExportError, match=f"warm-up file {re.escape(str(garbage))} record 1: "):
        warmup.read_warmup_file(garbage)
    classify = warmup.write_warmup_file(tmp_path / "classify", [b"\x12\x00"])  # field 2: classify_log
    with pytest.raises(ExportError, match="record 0: not a predict_log \\(holds classify_log\\)"):
        warmup.read_warmup_file(classify)
    with pytest.raises(ExportError, match="does not exist"):
        warmup.read_warmup_file(tmp_path / "missing")


# --- the export's file ----------------------------------------------------------------------------

def test_export_carries_warmup_requests_of_its_verification_images(export, export_records, chestxray14_dir):
    base, result = export
    files = support.sample_files(chestxray14_dir)  # what the shared export was verified on
    assert (result.path / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert len(export_records) == len(files) + 1 == result.warmup_requests
    for log in export_records:
        spec = log.predict_log.request.model_spec
        assert (spec.name, spec.signature_name) == ("can", "serving_default")
    # The real files, byte for byte: one request each, then a batch of the first four.
    assert [_request_images(log) for log in export_records[:-1]] == [[f.read_bytes()] for f in files]
    assert _request_images(export_records[-1]) == [f.read_bytes() for f in files[:4]]
    assert "with 8 TF Serving warm-up requests" in result.summary().splitlines()[0]


def test_replay_through_serving_default_gives_the_keras_probabilities(export, chestxray14_dir):
    from can_tf.export.warmup import replay_warmup_file

    files = support.sample_files(chestxray14_dir)
    expected = support.keras_probabilities(files)
    replayed = replay_warmup_file(export[1].path, model_name="can")
    assert len(replayed) == len(files) + 1
    for i, outputs in enumerate(replayed[:-1]):
        np.testing.assert_allclose(outputs["probabilities"], expected[i:i + 1], atol=1e-4, rtol=0)
    np.testing.assert_allclose(replayed[-1]["probabilities"], expected[:4], atol=1e-4, rtol=0)
    assert np.ptp(expected, axis=0).max() > 1e-3  # the images give different answers


def _bad_records(chestxray14_dir):
    from can_tf.export.warmup import _predict_log

    real = support.real_images(chestxray14_dir, 1)[0].read_bytes()
    return {
        "truncated_png": ([_predict_log([real[:300]], "can", "serving_default")],
                          "record 0: serving_default refused it: request image 0: truncated PNG"),
        "no_such_signature": ([_predict_log([real], "can", "serving_bytes")],
                              "record 0: the export has no signature 'serving_bytes'"),
        "other_model": ([_predict_log([real], "cxr", "serving_default")],
                        "record 0: model_spec.name is 'cxr', expected 'can'"),
        "wrong_input_for_signature": ([_predict_log([real], "can", "serving_images")],
                                      "record 0: inputs \\['image_bytes'\\] do not match signature 'serving_images'"),
    }


@pytest.mark.parametrize("kind", ["truncated_png", "no_such_signature", "other_model", "wrong_input_for_signature"])
def test_a_broken_record_fails_the_replay_naming_the_file(export, chestxray14_dir, tmp_path, kind):
    from can_tf.export import ExportError
    from can_tf.export.warmup import replay_warmup_file, warmup_records, write_warmup_file

    good = support.real_images(chestxray14_dir, 1)[0].read_bytes()
    records, match = _bad_records(chestxray14_dir)[kind]
    path = write_warmup_file(tmp_path / "tf_serving_warmup_requests", records + warmup_records([good], "can"))
    with pytest.raises(ExportError, match=f"warm-up file {re.escape(str(path))} {match}"):
        replay_warmup_file(export[1].path, path, model_name="can")


def test_dicom_is_sent_as_a_png_of_its_pixels(export, chestxray14_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    import tensorflow as tf
    from PIL import Image

    from dicom_support import new_dicom

    from can_tf.export.source import preprocess_files
    from can_tf.export.warmup import warmup_image_bytes

    gray = np.asarray(Image.open(support.real_images(chestxray14_dir, 1)[0]).convert("L"))
    ds = new_dicom(*gray.shape)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (gray.astype(np.uint16) * 16).astype("<u2").tobytes()
    dicom = tmp_path / "scan.dcm"
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(dicom, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(dicom, write_like_original=False)
    png_file = support.real_images(chestxray14_dir, 2)[1]
    images = preprocess_files([dicom, png_file], support.IMAGE_SIZE)
    sent = warmup_image_bytes([dicom, png_file], images)
    assert sent[1] == png_file.read_bytes()  # PNG files travel as they are
    assert sent[0].startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(tf.io.decode_png(sent[0]).numpy(), images[0].astype(np.uint8))
    loaded = tf.saved_model.load(str(export[1].path))
    probabilities = loaded.signatures["serving_default"](image_bytes=tf.constant(sent[:1]))["probabilities"]
    np.testing.assert_allclose(probabilities.numpy(), support.tiny_source().probabilities(images[:1]),
                               atol=1e-4, rtol=0)


@pytest.mark.slow  # a whole export (without its fresh-process check): several seconds
def test_a_broken_warmup_record_fails_the_export_and_publishes_nothing(chestxray14_dir, tmp_path, monkeypatch):
    from can_tf.export import ExportError, warmup
    from can_tf.export.saved_model import export_saved_model

    honest = warmup.warmup_records

    def with_truncated_image(image_bytes, model_name, **kwargs):
        records = honest(image_bytes, model_name, **kwargs)
        return records + [warmup._predict_log([image_bytes[0][:300]], model_name, "serving_default")]

    monkeypatch.setattr(warmup, "warmup_records", with_truncated_image)
    with pytest.raises(ExportError, match="not published.*tf_serving_warmup_requests record 3: .*truncated PNG"):
        export_saved_model(support.tiny_source(), tmp_path, name="can",
                           images=support.real_images(chestxray14_dir, 2))
    assert list(tmp_path.iterdir()) == []


# --- the batching config --------------------------------------------------------------------------

def _batching_parameters_class():
    """tensorflow.serving.BatchingParameters, declared here (tensorflow-serving-api does not ship it)
    with the field names and numbers of tensorflow_serving/servables/tensorflow/session_bundle_config.proto."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    proto = descriptor_pb2.FileDescriptorProto(name="can_tf_test_batching.proto", package="tensorflow.serving",
                                               syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for name, number in (("max_batch_size", 1), ("batch_timeout_micros", 2), ("max_enqueued_batches", 3),
                         ("num_batch_threads", 4)):
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=".google.protobuf.Int64Value")
    message.field.add(name="thread_pool_name", number=5, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                      type_name=".google.protobuf.StringValue")
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_batching_parameters_file_is_a_valid_config_that_fits_the_warmup():
    from google.protobuf import text_format
    from tensorflow_serving.apis import prediction_log_pb2

    from can_tf.export.warmup import warmup_records

    params = text_format.Parse(BATCHING_FILE.read_text(), _batching_parameters_class()())  # unknown names fail
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert params.HasField(name), name
    sizes = list(params.allowed_batch_sizes)
    # TF Serving's rules: increasing, the last one equal to max_batch_size.
    assert sizes == sorted(set(sizes)) and sizes[-1] == params.max_batch_size.value
    assert params.num_batch_threads.value >= 1 and params.pad_variable_length_inputs is False
    # The warm-up's single and batched requests are sizes the server then runs unpadded.
    last = prediction_log_pb2.PredictionLog.FromString(warmup_records([support.black_png(4)] * 8, "can")[-1])
    batch = last.predict_log.request.inputs["image_bytes"].tensor_shape.dim[0].size
    assert batch == 4 and {1, batch} <= set(sizes)
    readme = (REPO_ROOT / "exports" / "serving" / "README.md").read_text()
    assert "--enable_batching" in readme and "--batching_parameters_file=/config/batching_parameters.txt" in readme
