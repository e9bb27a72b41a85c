"""TFLite model metadata: written per metadata_schema.fbs, read back, still a runnable model and a ZIP.

The fast tests check the round trip, the packed files and that LiteRT computes exactly what it did
without metadata. The slow one reads the files with the official TFLite Support library (0.4.4, in
a separate virtual environment: it cannot share one with TensorFlow 2.21) and its Task Library.
"""

from __future__ import annotations

import doctest
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import export_support as support
from can_tf.export.versioning import ExportError

THRESHOLDS_TEXT = '{\n  "thresholds": {"a": 0.25, "b": 0.5, "c": 0.75}\n}\n'
CARD = b'{"model_details": {"name": "toy"}}'
FIELDS = dict(name="toy", description="A toy model.", version="7 (test)", author="can-tf tests", license="MIT")


def _toy(dtype="float32", channels=1, size=4, classes=3) -> bytes:
    """A converted ``(1, size, size, channels)`` -> ``(1, classes)`` model: sigmoid of k x the pixel mean."""
    import tensorflow as tf

    def serve(x):
        mean = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2, 3])[:, None] / 255.0
        return {"probabilities": tf.sigmoid(mean * tf.range(1.0, classes + 1.0))}

    spec = tf.TensorSpec([1, size, size, channels], tf.uint8 if dtype == "uint8" else tf.float32, name="image")
    function = tf.function(serve, input_signature=[spec], autograph=False).get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([function]).convert()


@pytest.fixture(scope="module")
def toy():
    return _toy()


@pytest.fixture(scope="module")
def tiny():
    """The tiny CAN as a float32 TFLite flatbuffer, without metadata."""
    from can_tf.export.tflite import convert_tflite

    return convert_tflite(support.tiny_source(), "none")


def _add(model, **overrides):
    from can_tf.export.tflite_metadata import add_metadata

    arguments = dict(FIELDS, class_names=["a", "b", "c"], input_dtype="float32", image_size=4)
    arguments.update(overrides)
    return add_metadata(model, **arguments)


def test_round_trip_returns_what_was_written(toy):
    from can_tf.export.tflite_metadata import read_metadata

    packed = _add(toy, thresholds=THRESHOLDS_TEXT, associated_files={"model_card.json": (CARD, "The card.")})
    info = read_metadata(packed)
    assert {k: info[k] for k in FIELDS} == FIELDS
    assert info["min_parser_version"] == "1.0.0"
    assert info["input"] == {"name": "image", "normalization": {"mean": [0.0], "std": [1.0]},
                             "stats": {"min": [0.0], "max": [255.0]}, "color_space": "GRAYSCALE",
                             "default_size": {"width": 4, "height": 4}}
    assert info["output"] == {"name": "probabilities", "labels_file": "labels.txt",
                              "stats": {"min": [0.0], "max": [1.0]}}
    assert info["associated_files"] == ["labels.txt", "thresholds.json", "model_card.json"]
    assert info["labels"] == ["a", "b", "c"]
    assert info["files"] == {"labels.txt": b"a\nb\nc\n", "thresholds.json": THRESHOLDS_TEXT.encode(),
                             "model_card.json": CARD}


def test_a_path_reads_like_bytes_and_three_channels_are_rgb(tmp_path):
    from can_tf.export.tflite_metadata import read_metadata

    packed = _add(_toy(channels=3), channels=3)
    (tmp_path / "toy.tflite").write_bytes(packed)
    info = read_metadata(tmp_path / "toy.tflite")
    assert info["input"]["color_space"] == "RGB" and info == read_metadata(packed)
    assert info["associated_files"] == ["labels.txt"] and list(info["files"]) == ["labels.txt"]


def test_the_file_is_a_flatbuffer_followed_by_a_stored_zip(toy):
    packed = _add(toy, thresholds=THRESHOLDS_TEXT, associated_files={"model_card.json": CARD})
    assert packed[4:8] == b"TFL3" and zipfile.is_zipfile(io.BytesIO(packed))
    with zipfile.ZipFile(io.BytesIO(packed)) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["labels.txt", "thresholds.json", "model_card.json"]
        # Stored: the Task Library reads associated files in place from the model buffer.
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        first = min(i.header_offset for i in infos)
    assert packed[first:first + 4] == b"PK\x03\x04"  # the archive starts where the flatbuffer ends
    assert packed[first + 30 + len("labels.txt"):].startswith(b"a\nb\nc\n")
    assert _add(toy, thresholds=THRESHOLDS_TEXT, associated_files={"model_card.json": CARD}) == packed


def test_labels_keep_the_output_order(toy):
    from can_tf.export.tflite_metadata import read_metadata

    order = ["Zeta finding", "alpha", "Mid_Thing"]  # neither sorted nor reverse sorted; a space is allowed
    info = read_metadata(_add(toy, class_names=order))
    assert info["labels"] == order and info["files"]["labels.txt"] == b"Zeta finding\nalpha\nMid_Thing\n"


def test_uint8_input_has_no_normalization():
    from can_tf.export.tflite_metadata import read_metadata

    info = read_metadata(_add(_toy("uint8"), input_dtype="uint8"))
    assert info["input"]["normalization"] is None
    assert info["input"]["stats"] == {"min": [0.0], "max": [255.0]}


def test_adding_again_replaces_metadata_and_files(toy):
    from ai_edge_litert import schema_py_generated as schema

    from can_tf.export.tflite_metadata import read_metadata

    once = _add(toy, thresholds=THRESHOLDS_TEXT)
    twice = _add(once, class_names=["x", "y", "z"], name="renamed")
    info = read_metadata(twice)
    assert info["name"] == "renamed" and info["labels"] == ["x", "y", "z"] and list(info["files"]) == ["labels.txt"]
    root = schema.Model.GetRootAs(twice, 0)
    names = [root.Metadata(i).Name() for i in range(root.MetadataLength())]
    assert names.count(b"TFLITE_METADATA") == 1
    assert root.BuffersLength() == schema.Model.GetRootAs(once, 0).BuffersLength()


def test_litert_runs_it_with_identical_outputs_and_the_tensor_names(tiny):
    from ai_edge_litert.interpreter import Interpreter

    from can_tf.labels import CLASS_NAMES

    packed = _add(tiny, class_names=CLASS_NAMES, image_size=support.IMAGE_SIZE, thresholds=THRESHOLDS_TEXT)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 1, support.IMAGE_SIZE, support.IMAGE_SIZE, 1))
    outputs = []
    for model in (tiny, packed):
        interpreter = Interpreter(model_content=model)
        interpreter.allocate_tensors()
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        results = []
        for image in pixels.astype(np.float32):
            interpreter.set_tensor(inp["index"], image)
            interpreter.invoke()
            results.append(interpreter.get_tensor(out["index"]).copy())
        outputs.append(np.concatenate(results))
    np.testing.assert_array_equal(outputs[1], outputs[0])
    assert outputs[0].std(axis=0).max() > 0  # the three images give different outputs
    assert (inp["name"], out["name"]) == ("image", "probabilities")  # the names the metadata gives them


def test_errors_are_one_line_naming_the_problem(toy, tmp_path):
    from can_tf.export.tflite_metadata import read_metadata

    cases = [
        (lambda: _add(b"PK\x03\x04 not a model at all"), "not a TFLite model"),
        (lambda: _add(b"abc"), "not a TFLite model"),
        (lambda: read_metadata(b"\0" * 64), "not a TFLite model"),
        (lambda: read_metadata(toy), "has no TFLite metadata"),
        (lambda: read_metadata(tmp_path / "missing.tflite"), "cannot read .*missing.tflite"),
        (lambda: _add(toy, image_size=8), r"input has shape \[1, 4, 4, 1\]"),
        (lambda: _add(toy, channels=3), r"channels=3 describe \[1, 4, 4, 3\]"),
        (lambda: _add(toy, channels=2), "channels must be 1"),
        (lambda: _add(toy, input_dtype="uint8"), "input is not uint8"),
        (lambda: _add(toy, input_dtype="int8"), "input_dtype must be one of float32, uint8"),
        (lambda: _add(toy, class_names=["a", "b"]), r"output has shape \[1, 3\]; 2 class names"),
        (lambda: _add(toy, class_names=["a", "b\nc", "d"]), r"class_names\[1\]"),
        (lambda: _add(toy, class_names=["a", "b", "a"]), "lists a more than once"),
        (lambda: _add(toy, associated_files={"labels.txt": b"x"}), "labels.txt is written by add_metadata"),
        (lambda: _add(toy, associated_files={"docs/card.json": b"x"}), "must be a plain file name"),
        (lambda: _add(toy, associated_files={"card.json": "text"}), "card.json: expected bytes, got str"),
        (lambda: _add(toy, thresholds={"a": 0.5}), "thresholds must be the text of a thresholds.json"),
    ]
    for call, message in cases:
        with pytest.raises(ExportError, match=message) as raised:
            call()
        assert "\n" not in str(raised.value), message


def test_a_missing_packed_file_is_named(toy):
    from can_tf.export.tflite_metadata import read_metadata

    packed = _add(toy, thresholds=THRESHOLDS_TEXT)
    with zipfile.ZipFile(io.BytesIO(packed)) as archive:
        start = min(i.header_offset for i in archive.infolist())
    with pytest.raises(ExportError, match="labels.txt, thresholds.json named in the metadata but not packed"):
        read_metadata(packed[:start])  # the flatbuffer alone


def test_module_example():
    from can_tf.export import tflite_metadata

    result = doctest.testmod(tflite_metadata, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---- the official TFLite Support library --------------------------------------------------------
TASK_LIBRARY = ["tflite-support==0.4.4", "numpy<2"]  # it pins protobuf<4 itself
# Run inside the tflite-support environment: argv[1] a JSON request, prints one JSON object.
_OFFICIAL_READER = r"""
import json, sys
import numpy as np
from tflite_support import metadata
from tflite_support.task import core, processor, vision
from tensorflow_lite_support.metadata.cc.python import _pywrap_metadata_version

request = json.loads(sys.argv[1])
answers = {}
for key, path in request["models"].items():
    answer = {}
    try:
        displayer = metadata.MetadataDisplayer.with_model_file(path)
        answer["json"] = json.loads(displayer.get_metadata_json())
        answer["packed"] = displayer.get_packed_associated_file_list()
        answer["labels"] = displayer.get_associated_file_buffer("labels.txt").decode()
        # The C++ verifier of the metadata flatbuffer, then the version rule MetadataPopulator applies.
        answer["min_parser_version"] = _pywrap_metadata_version.GetMinimumMetadataParserVersion(
            displayer.get_metadata_buffer())
    except Exception as e:
        answer["metadata_error"] = f"{type(e).__name__}: {e}"
    try:
        vision.ImageClassifier.create_from_file(path)  # the plain way in: does the file load at all
    except Exception as e:
        answer["classifier_error"] = f"{type(e).__name__}: {e}"
    else:
        # Every class, whatever its score: the model is multi-label, the app applies thresholds.json.
        options = vision.ImageClassifierOptions(
            base_options=core.BaseOptions(file_name=path),
            classification_options=processor.ClassificationOptions(max_results=request["max_results"],
                                                                   score_threshold=0.0))
        classifier = vision.ImageClassifier.create_from_options(options)
        answer["classified"] = {}
        for name, image in request["images"].items():
            # The TensorImage points into the array's memory: both stay referenced while it runs.
            pixels = np.load(image)
            tensor_image = vision.TensorImage.create_from_array(pixels)
            try:
                result = classifier.classify(tensor_image)
            except Exception as e:
                answer["classified"][name] = f"{type(e).__name__}: {e}"
                continue
            answer["classified"][name] = [[c.index, c.category_name, c.score]
                                          for c in result.classifications[0].categories]
    answers[key] = answer
print(json.dumps(answers))
"""


def _task_library_python() -> Path:
    """The python of a cached virtual environment with tflite-support, built on first use."""
    import shutil
    import tempfile

    from can_tf.data.phantom import cache_root

    venv = cache_root() / "tflite-support-venv"
    python = venv / "bin" / "python"
    if (venv / "ready").is_file():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".tflite-support-venv-", dir=venv.parent))
    try:
        steps = {"python -m venv": [sys.executable, "-m", "venv", str(building)],
                 f"pip install {' '.join(TASK_LIBRARY)}": [str(building / "bin" / "python"), "-m", "pip", "install",
                                                          "--quiet", *TASK_LIBRARY]}
        for what, step in steps.items():
            run = subprocess.run(step, capture_output=True, text=True, timeout=900,
                                 env=dict(os.environ, PYTHONPATH="", PIP_DISABLE_PIP_VERSION_CHECK="1"))
            if run.returncode:
                lines = (run.stderr or run.stdout).strip().splitlines()
                _unavailable(f"cannot build the tflite-support environment in {venv} ({what}): "
                             f"{lines[-1] if lines else 'exit ' + str(run.returncode)}")
        (building / "ready").write_text(" ".join(TASK_LIBRARY) + "\n")
        # The interpreter path inside a venv is resolved relative to it: a renamed venv still runs.
        try:
            building.rename(venv)
        except OSError:  # another run finished first
            if not (venv / "ready").is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return python


def _unavailable(reason: str):
    if os.environ.get("CAN_TF_REQUIRE_TASK_LIBRARY") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.mark.slow
def test_official_metadata_reader_and_task_library(tmp_path, chestxray14_dir):
    """What the official library makes of the exports.

    Its metadata displayer and C++ verifier read every field back. Its ``ImageClassifier`` accepts
    only RGB ``(1, S, S, 3)`` inputs (``image_tensor_specs.cc``: GRAYSCALE metadata is refused
    first, a 1-channel tensor next), so the grayscale export cannot be used with it; the
    ``rgb_input`` export (float32 and uint8 input) classifies a real radiograph into our class
    names with LiteRT's and can-tf's scores. The image must be handed over as RGB: a one-channel
    ``TensorImage`` is not converted.
    """
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    from can_tf.export.tflite import convert_tflite, export_tflite
    from can_tf.export.tflite_metadata import read_metadata
    from can_tf.labels import CLASS_NAMES
    from can_tf.predictor import Predictor

    python = _task_library_python()
    size = support.IMAGE_SIZE
    images = support.real_images(chestxray14_dir, 2)
    exported = {}
    for key, uint8_input, rgb_input in (("gray", False, False), ("gray_uint8", True, False),
                                        ("rgb", False, True), ("rgb_uint8", True, True)):
        exported[key] = export_tflite(support.tiny_source(), tmp_path / key.split("_")[0], uint8_input=uint8_input,
                                      rgb_input=rgb_input, images=images, num_verify=2,
                                      model_card=CARD if key == "gray" else None).path
    assert exported["rgb"].name == "can_none_rgb.tflite" and exported["rgb_uint8"].name == "can_none_uint8_rgb.tflite"
    plain = tmp_path / "plain.tflite"  # the exported network without metadata
    plain.write_bytes(convert_tflite(support.tiny_source(), "none"))

    # The radiograph at the model's size, RGB, so the Task Library's own resize is the identity.
    with Image.open(images[0]) as opened:
        assert opened.mode == "L"  # a gray radiograph: R = G = B below
        radiograph = np.asarray(opened.convert("RGB").resize((size, size), Image.BILINEAR))
    assert radiograph.shape == (size, size, 3) and radiograph.std() > 10
    with Image.open(images[1]) as opened:
        full = np.asarray(opened.convert("RGB"))  # 512 px: the Task Library resizes it
    # One channel: a GRAYSCALE TensorImage, which the Task Library does not turn into RGB itself.
    arrays = {"input_size": radiograph, "full_size": full, "one_channel": np.ascontiguousarray(radiograph[:, :, :1])}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    request = {"models": {**{key: str(path) for key, path in exported.items()}, "plain": str(plain)},
               "images": {name: str(tmp_path / f"{name}.npy") for name in arrays}, "max_results": len(CLASS_NAMES)}
    run = subprocess.run([str(python), "-c", _OFFICIAL_READER, json.dumps(request)], capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-3000:]
    answers = json.loads(run.stdout.strip().splitlines()[-1])

    for key, path in exported.items():
        answer, ours = answers[key], read_metadata(path)
        assert "metadata_error" not in answer, answer.get("metadata_error")
        assert answer["min_parser_version"] == ours["min_parser_version"] == "1.0.0"
        assert sorted(answer["packed"]) == sorted(ours["files"])
        assert answer["labels"].splitlines() == ours["labels"] == list(CLASS_NAMES)
        official = answer["json"]
        for field in ("name", "description", "version", "author", "license"):
            assert official[field] == ours[field]
        (subgraph,) = official["subgraph_metadata"]
        (inp,), (out,) = subgraph["input_tensor_metadata"], subgraph["output_tensor_metadata"]
        assert inp["name"] == "image" and out["name"] == "probabilities"
        assert inp["content"]["content_properties_type"] == "ImageProperties"
        colour = "RGB" if key.startswith("rgb") else "GRAYSCALE"
        assert ours["input"]["color_space"] == colour
        assert inp["content"]["content_properties"] == {"color_space": colour,
                                                        "default_size": {"width": size, "height": size}}
        assert inp["stats"] == {"max": [255.0], "min": [0.0]} and out["stats"] == {"max": [1.0], "min": [0.0]}
        units = [u["options"] for u in inp.get("process_units", []) if u["options_type"] == "NormalizationOptions"]
        assert units == ([] if key.endswith("uint8") else [{"mean": [0.0], "std": [1.0]}])
        assert out["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
        assert out["associated_files"][0]["name"] == "labels.txt"
    assert sorted(answers["gray"]["packed"]) == ["labels.txt", "model_card.json", "thresholds.json"]
    card = answers["gray"]["json"]["associated_files"]
    assert [(f["name"], f["type"]) for f in card] == [("model_card.json", "DESCRIPTIONS")]

    # The Task Library's ImageClassifier and a grayscale input: refused, whatever the dtype.
    assert answers["gray"]["classifier_error"] == "ValueError: Only RGB color space is supported for now."
    assert answers["gray_uint8"]["classifier_error"] == "ValueError: Only RGB color space is supported for now."
    # Without metadata the colour check is skipped, and the tensor's one channel is refused instead.
    assert answers["plain"]["classifier_error"] == (
        f"ValueError: The input tensor should have dimensions 1 x height x width x 3. Got 1 x {size} x {size} x 1.")

    # The RGB exports: classified, labelled with our class names, LiteRT's and can-tf's probabilities.
    for key in ("rgb", "rgb_uint8"):
        assert "classifier_error" not in answers[key], answers[key].get("classifier_error")
        classified = answers[key]["classified"]
        assert classified["one_channel"] == "ValueError: Grayscale format does not convert to other formats."
        for name in ("input_size", "full_size"):
            categories = classified[name]
            assert all(label in CLASS_NAMES for _, label, _ in categories)
            assert sorted(c[0] for c in categories) == list(range(len(CLASS_NAMES)))  # all C, once each
            assert all(CLASS_NAMES[index] == label for index, label, _ in categories)
            assert all(0.0 <= score <= 1.0 for _, _, score in categories)
            assert len({round(score, 6) for _, _, score in categories}) > 1  # a real image, really run
        scores = np.zeros(len(CLASS_NAMES))
        for index, _, score in classified["input_size"]:
            scores[index] = score
        interpreter = Interpreter(model_path=str(exported[key]))
        interpreter.allocate_tensors()
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        interpreter.set_tensor(inp["index"], radiograph[None].astype(inp["dtype"]))
        interpreter.invoke()
        litert = interpreter.get_tensor(out["index"])[0]
        np.testing.assert_allclose(scores, litert, atol=1e-5, rtol=0)
        gray_pixels = radiograph[None, :, :, :1].astype(np.float32)
        ours = Predictor.load(exported[key]).predict(gray_pixels)[0]  # gray in, R = G = B fed by the runtime
        np.testing.assert_allclose(scores, ours, atol=1e-4, rtol=0)
        # And the grayscale export's probabilities on the same radiograph.
        gray = Predictor.load(exported[key.replace("rgb", "gray")]).predict(gray_pixels)[0]
        np.testing.assert_allclose(scores, gray, atol=1e-4, rtol=0)
