"""``can_tf.runtime``: Keras, SavedModel and LiteRT run the same tiny model on the same real images."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import export_support as support

# The exporters' own bounds on |p - p_keras| (can_tf.export.tflite.TOLERANCES; SavedModel 1e-4).
TOLERANCES = {"saved_model": 1e-4, "none": 1e-4, "float16": 1e-2, "int8": 0.15}


@pytest.fixture(scope="module")
def images(chestxray14_dir):
    from can_tf.export.source import preprocess_files

    return preprocess_files(support.real_images(chestxray14_dir, 6), support.IMAGE_SIZE)


@pytest.fixture(scope="module")
def flatbuffer(images):
    """``flatbuffer(quantize, uint8_input=False, rgb_input=False)`` -> the tiny model converted to
    TFLite (bytes, cached)."""
    from can_tf.export.tflite import convert_tflite

    @functools.cache
    def convert(quantize, uint8_input=False, rgb_input=False):
        return convert_tflite(support.tiny_source(), quantize, uint8_input, calibration=images, rgb_input=rgb_input)

    return convert


def test_keras_savedmodel_and_litert_give_the_same_probabilities(images, flatbuffer, chestxray14_dir, tmp_path):
    from can_tf.runtime import KerasRuntime, LiteRTRuntime, SavedModelRuntime, open_runtime

    expected = support.tiny_source().probabilities(images)
    keras_file = KerasRuntime(support.keras_file())
    in_memory = KerasRuntime(support.tiny_model())
    for runtime in (keras_file, in_memory):
        assert (runtime.format, runtime.image_size, runtime.num_classes) == ("keras", 64, 14)
        np.testing.assert_allclose(runtime.predict(images), expected, atol=1e-5)
    assert keras_file.model is not None and in_memory.model is support.tiny_model()

    base, export = support.saved_model_export(chestxray14_dir)
    # The TF Serving base folder (numbered versions) opens its highest version.
    for path in (base / "can", export.path):
        runtime = open_runtime(path)
        assert isinstance(runtime, SavedModelRuntime) and runtime.path == str(export.path)
        assert (runtime.format, runtime.image_size, runtime.num_classes) == ("saved_model", 64, 14)
        assert runtime.input_dtype == np.float32
        np.testing.assert_allclose(runtime.predict(images), expected, atol=TOLERANCES["saved_model"])

    for quantize in ("none", "float16", "int8"):
        runtime = LiteRTRuntime(flatbuffer(quantize), num_threads=1)
        assert (runtime.format, runtime.image_size, runtime.num_classes) == ("tflite", 64, 14)
        error = np.abs(runtime.predict(images) - expected).max()
        assert error <= TOLERANCES[quantize], (quantize, error)
    # From a file too, through the factory, and the op list the exporter checks.
    path = tmp_path / "tiny.tflite"
    path.write_bytes(flatbuffer("none"))
    from_file = open_runtime(path)
    assert isinstance(from_file, LiteRTRuntime) and from_file.path == str(path)
    np.testing.assert_allclose(from_file.predict(images), expected, atol=TOLERANCES["none"])
    ops = from_file.ops()
    assert ops == sorted(ops) and "CONV_2D" in ops and "DELEGATE" not in ops


def test_litert_resizes_only_when_the_batch_size_changes(images, flatbuffer):
    from can_tf.export.tflite import run_tflite
    from can_tf.runtime import LiteRTRuntime

    one_at_a_time = run_tflite(flatbuffer("none"), images)  # a fresh interpreter, batch 1 throughout
    runtime = LiteRTRuntime(flatbuffer("none"))
    resizes = []
    resize = runtime._interpreter.resize_tensor_input
    runtime._interpreter.resize_tensor_input = lambda *a, **k: (resizes.append(a[1]), resize(*a, **k))[1]
    rows = [runtime.predict(images[0:1]), runtime.predict(images[1:4]), runtime.predict(images[4:5]),
            runtime.predict(images[5:6])]
    assert [len(r) for r in rows] == [1, 3, 1, 1]
    assert [list(shape)[0] for shape in resizes] == [3, 1]  # 1 is the exported shape; 3 -> 1 once
    np.testing.assert_allclose(np.concatenate(rows), one_at_a_time, atol=1e-6)
    assert runtime.predict(images[:0]).shape == (0, 14)


def test_uint8_input_model_gets_rounded_pixels(images, flatbuffer):
    from can_tf.runtime import LiteRTRuntime, dequantize, quantize

    runtime = LiteRTRuntime(flatbuffer("none", True))
    assert runtime.input_dtype == np.uint8
    fractional = images * 0.9 + 0.3  # not integers any more
    rounded = np.clip(np.round(fractional), 0, 255)
    np.testing.assert_array_equal(runtime.predict(fractional), runtime.predict(rounded))
    expected = support.tiny_source().probabilities(rounded.astype(np.float32))
    np.testing.assert_allclose(runtime.predict(fractional), expected, atol=1e-4)
    # Out of range is clipped; scale 0 means raw pixels, a real scale quantises.
    np.testing.assert_array_equal(quantize(np.array([-5.0, 0.49, 127.5, 300.0]), np.uint8), [0, 0, 128, 255])
    np.testing.assert_array_equal(quantize(np.array([0.0, 127.5, 255.0]), np.int8, (1.0, -128)), [-128, 0, 127])
    np.testing.assert_allclose(dequantize(np.array([-128, 0, 127], np.int8), (0.5, -128)), [0.0, 64.0, 127.5])
    assert dequantize(np.array([0.25], np.float32), (0.0, 0)).dtype == np.float32


def test_bad_model_files_give_one_line_naming_the_path(tmp_path):
    from can_tf.errors import ModelFileError
    from can_tf.runtime import LiteRTRuntime, SavedModelRuntime, open_runtime

    (tmp_path / "notes.tflite").write_text("not a flatbuffer")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    (tmp_path / "model.h5").write_bytes(b"x")
    fake = tmp_path / "fake_saved_model"
    fake.mkdir()
    (fake / "saved_model.pb").write_bytes(b"garbage")
    (tmp_path / "empty").mkdir()
    cases = [
        (lambda: open_runtime(tmp_path / "missing.tflite"), "model not found: .*missing.tflite"),
        (lambda: open_runtime(tmp_path / "notes.tflite"), "cannot load TFLite model .*notes.tflite"),
        (lambda: open_runtime(tmp_path / "broken.keras"), "cannot load the Keras model .*broken.keras"),
        (lambda: open_runtime(tmp_path / "model.h5"), "cannot tell the format of model .*model.h5"),
        (lambda: open_runtime(tmp_path / "empty"), "empty is a folder but not a SavedModel"),
        (lambda: SavedModelRuntime(fake), "cannot load SavedModel .*fake_saved_model"),
        (lambda: open_runtime(tmp_path / "gone.keras", "keras"), "model not found: .*gone.keras"),
        (lambda: LiteRTRuntime(b"garbage"), r"cannot load TFLite model <7 bytes in memory>"),
    ]
    for make, pattern in cases:
        with pytest.raises(ModelFileError, match=pattern) as caught:
            make()
        assert "\n" not in str(caught.value), str(caught.value)


def test_predictor_runs_through_the_runtime(flatbuffer, images, tmp_path):
    from can_tf.predictor import Predictor
    from can_tf.runtime import LiteRTRuntime

    path = tmp_path / "can_none.tflite"
    path.write_bytes(flatbuffer("none"))
    predictor = Predictor.load(path)
    assert isinstance(predictor._runtime, LiteRTRuntime)
    assert predictor.format == "tflite" and predictor.image_size == 64 and len(predictor.class_names) == 14
    np.testing.assert_allclose(predictor.predict(images), LiteRTRuntime(path).predict(images), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 64, 64, 1\)"):
        predictor.predict(images[:, :32])


@pytest.mark.parametrize("uint8_input", [False, True], ids=["float32", "uint8"])
def test_rgb_input_model_gets_gray_as_three_equal_channels(uint8_input, images, flatbuffer, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from can_tf.predictor import Predictor
    from can_tf.runtime import LiteRTRuntime

    rgb, gray = LiteRTRuntime(flatbuffer("none", uint8_input, True)), LiteRTRuntime(flatbuffer("none", uint8_input))
    assert (rgb.input_channels, gray.input_channels) == (3, 1)
    assert (rgb.image_size, rgb.num_classes) == (64, 14)
    # Batches of 2 then 1: the interpreter is resized to (2, 64, 64, 3) and back.
    got = np.concatenate([rgb.predict(images[:2]), rgb.predict(images[2:3])])
    np.testing.assert_allclose(got, gray.predict(images[:3]), atol=1e-5, rtol=0)
    # The same numbers as feeding the interpreter R = G = B by hand.
    interpreter = Interpreter(model_content=flatbuffer("none", uint8_input, True))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(inp["index"], np.repeat(np.round(images[:1]), 3, axis=-1).astype(inp["dtype"]))
    interpreter.invoke()
    np.testing.assert_array_equal(rgb.predict(np.round(images[:1])), interpreter.get_tensor(out["index"]))

    path = tmp_path / "can_none_rgb.tflite"
    path.write_bytes(flatbuffer("none", uint8_input, True))
    predictor = Predictor.load(path)
    assert predictor.image_size == 64 and len(predictor.class_names) == 14
    np.testing.assert_allclose(predictor.predict(images), gray.predict(images), atol=1e-5, rtol=0)


def test_an_input_of_other_channels_is_refused_when_run():
    import tensorflow as tf

    from can_tf.errors import ModelFileError
    from can_tf.runtime import LiteRTRuntime

    spec = tf.TensorSpec([1, 4, 4, 2], tf.float32, name="image")
    function = tf.function(lambda x: {"probabilities": tf.sigmoid(tf.reduce_mean(x, axis=[1, 2]))},
                           input_signature=[spec], autograph=False).get_concrete_function()
    runtime = LiteRTRuntime(tf.lite.TFLiteConverter.from_concrete_functions([function]).convert())
    assert runtime.input_channels == 2 and runtime.ops()  # loaded and listed: the exporter's op check works
    with pytest.raises(ModelFileError, match=r"takes input of shape \[1, 4, 4, 2\]; expected .* gray or .* RGB"):
        runtime.predict(np.zeros((1, 4, 4, 1), np.float32))
