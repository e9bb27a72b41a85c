"""One door for images: every runtime gives the same probabilities and every bad file the same reason.

The matrix: real NIH images from ``../shared/data/chestxray14`` (512 px, 1024 px, 64 px) and hard
cases made from them here (16-bit PNG, RGBA PNG, a JPEG named .png, a non-square JPEG, a DICOM
MONOCHROME1, an image exactly at the pixel limit), and bad files (empty, truncated, HTML named .png,
decompression bombs above the limit). A model whose run says ``data.aspect=pad`` and
``data.max_pixels=4000000`` is run through ``predict`` on the run (Keras), on its SavedModel
(``serving_images``, and ``serving_default`` on the files' bytes), on each TFLite variant, and
through ``exports/tflite/edge_infer.py`` (Pillow and LiteRT, no TensorFlow).
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import export_support as support
from can_tf import images as door
from run_helpers import make_run_dir

ROOT = Path(__file__).resolve().parents[1]
EDGE = ROOT / "exports" / "tflite" / "edge_infer.py"
MAX_PIXELS = 4_000_000  # lowered so that an image at the limit stays cheap to decode in a test
SIZE = 64
# Largest |p - p_keras| each runtime is allowed: the export tolerances. The edge script (Pillow,
# float32 TFLite) is held to float32's, the same pixels: measured 1.2e-7 (saved_model and none 1.2e-7,
# float16 3e-5, dynamic 5e-4, int8 1.4e-2 on this model).
TOLERANCES = {"saved_model": 1e-4, "serving_default": 1e-4, "none": 1e-4, "float16": 1e-2,
              "dynamic": 0.15, "int8": 0.15, "edge": 1e-4}


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _dicom_monochrome1(path: Path, gray: np.ndarray) -> None:
    pydicom = pytest.importorskip("pydicom")
    from dicom_support import new_dicom

    ds = new_dicom(*gray.shape, "MONOCHROME1")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = ((255 - gray.astype(np.uint16)) * 16).astype(np.uint16).tobytes()  # high = dark
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


@pytest.fixture(scope="module")
def cases(chestxray14_dir, tmp_path_factory):
    """``(good paths, {bad path: expected reason})``."""
    folder = tmp_path_factory.mktemp("door")
    real = sorted((chestxray14_dir / "images").glob("*.png"))[:3]
    good = [str(p) for p in real]
    good.append(str(sorted((chestxray14_dir / "images-1024").glob("*.png"))[0]))
    good.append(str(sorted((chestxray14_dir / "images-64").glob("*.png"))[0]))
    gray = np.asarray(Image.open(real[0]).convert("L"))
    rng = np.random.default_rng(0)
    made = {
        "sixteen_bit.png": _png((gray.astype(np.uint16) * 257 + rng.integers(0, 257, gray.shape)).astype(np.uint16)),
        "rgba.png": _png(np.dstack([gray, gray, np.clip(gray.astype(int) + 20, 0, 255).astype(np.uint8),
                                    np.full_like(gray, 200)])),
        "jpeg_named.png": _jpeg(gray),
        "non_square.jpg": _jpeg(gray[:, 56:456]),  # 512 x 400: padded to a square by data.aspect=pad
        "at_the_limit.png": support.black_png(2000),  # 2000 x 2000 = MAX_PIXELS: accepted
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
        good.append(str(folder / name))
    _dicom_monochrome1(folder / "mono1.dcm", gray[::2, ::2])
    good.append(str(folder / "mono1.dcm"))

    whole = real[1].read_bytes()
    bad_bytes = {
        "empty.png": (b"", door.EMPTY),
        "truncated.png": (whole[: len(whole) // 2], door.TRUNCATED_PNG),
        "page.png": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", door.NOT_AN_IMAGE),
        "bomb.png": (support.png_bomb_header(13000, 13000), door.too_large(13000, 13000, MAX_PIXELS)),
        "over_the_limit.png": (support.png_bomb_header(2001, 2000), door.too_large(2000, 2001, MAX_PIXELS)),
    }
    bad = {}
    for name, (data, reason) in bad_bytes.items():
        (folder / name).write_bytes(data)
        bad[str(folder / name)] = reason
    return good, bad


@pytest.fixture(scope="module")
def exports(phantom_dir, tmp_path_factory):
    """The run (Keras), its SavedModel and its four TFLite variants."""
    from can_tf.export import export_saved_model, export_tflite

    folder = tmp_path_factory.mktemp("door-model")
    run = make_run_dir(folder / "run", phantom_dir, image_size=SIZE,
                       overrides=["data.aspect=pad", f"data.max_pixels={MAX_PIXELS}"])
    models = {"keras": run, "saved_model": export_saved_model(run, folder / "serving").path}
    for quantize in ("none", "float16", "dynamic", "int8"):
        models[quantize] = export_tflite(run, folder / "tflite", quantize=quantize).path
    return models


@pytest.fixture(scope="module")
def predictions(exports, cases):
    from can_tf.predictor import Predictor

    good, bad = cases
    return {name: Predictor.load(path).predict_files(good + list(bad), batch_size=4)
            for name, path in exports.items()}


def test_every_runtime_gives_the_keras_probabilities(predictions, cases):
    good, _ = cases
    reference = predictions["keras"]
    expected = reference.probabilities[: len(good)]
    assert np.isfinite(expected).all() and expected.std() > 0
    for name, result in predictions.items():
        assert result.paths[: len(good)] == good
        assert not set(good) & set(result.errors), (name, result.errors)
        error = np.abs(result.probabilities[: len(good)] - expected).max()
        assert error <= TOLERANCES.get(name, 0.0), (name, error)


def test_serving_default_decodes_the_bytes_as_predict_does(exports, predictions, cases):
    import tensorflow as tf

    good, _ = cases
    signature = tf.saved_model.load(str(exports["saved_model"])).signatures["serving_default"]
    encoded = [p for p in good if not p.endswith(".dcm")]  # DICOM goes through predict, not serving_default
    out = signature(image_bytes=tf.constant([Path(p).read_bytes() for p in encoded]))
    rows = [good.index(p) for p in encoded]
    error = np.abs(out["probabilities"].numpy() - predictions["keras"].probabilities[rows]).max()
    assert error <= TOLERANCES["serving_default"]
    metadata = tf.saved_model.load(str(exports["saved_model"])).signatures["metadata"]()
    assert metadata["aspect"].numpy() == b"pad" and int(metadata["max_pixels"]) == MAX_PIXELS


def test_aspect_policy_is_the_runs_and_changes_the_answer(exports, cases):
    from can_tf.predictor import Predictor

    good, _ = cases
    non_square = [p for p in good if p.endswith("non_square.jpg")]
    padded = Predictor.load(exports["keras"])
    assert padded.aspect == "pad" and padded.max_pixels == MAX_PIXELS
    stretched = Predictor(padded._runtime, image_size=SIZE, class_names=padded.class_names, aspect="stretch")
    a = padded.predict_files(non_square).probabilities
    b = stretched.predict_files(non_square).probabilities
    assert np.abs(a - b).max() > 1e-4  # the policy reaches the model: without it the test would pass anyway
    pixels = door.load_image(non_square[0], SIZE, aspect="pad").pixels[..., 0]
    # 512 x 400 centred on a 512 square: 56 black columns each side, 7 of the 64 after resizing.
    assert pixels[:, :6].max() == 0 and pixels[:, -6:].max() == 0 and pixels[:, 8:-8].min() > 0


def test_every_bad_file_gets_the_same_reason_everywhere(exports, predictions, cases):
    import tensorflow as tf

    _, bad = cases
    for name, result in predictions.items():
        for path, reason in bad.items():
            assert result.errors.get(path) == f"cannot read image {path}: {reason}", (name, path)
    signature = tf.saved_model.load(str(exports["saved_model"])).signatures["serving_default"]
    for path, reason in bad.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            signature(image_bytes=tf.constant([Path(path).read_bytes()]))
        assert door.reason_in(str(error.value)) == f"request image 0: {reason}", path


def _edge(model: Path, files: list) -> subprocess.CompletedProcess:
    # TensorFlow made unimportable: the edge script runs where only LiteRT, numpy and Pillow are.
    return support.run_without(EDGE, [model, "--json", *files])


def test_edge_script_agrees_on_probabilities_and_reasons(exports, predictions, cases):
    good, bad = cases
    files = [*good[:2], *bad, *good[2:]]  # bad files in the middle: the ones after still run
    run = _edge(exports["none"], files)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "XNNPACK" not in run.stderr  # LiteRT's own log line is kept out of the script's output
    records = {r["image"]: r for r in map(json.loads, run.stdout.splitlines())}
    assert set(records) == set(files)
    for path, reason in bad.items():
        assert records[path]["error"] == reason, path
    labels = predictions["keras"].class_names
    got = np.array([[records[p]["probabilities"][c] for c in labels] for p in good])
    error = np.abs(got - predictions["keras"].probabilities[: len(good)]).max()
    assert error <= TOLERANCES["edge"], error


def test_wrongly_scaled_arrays_are_refused_by_predict_and_serving_images(exports):
    import tensorflow as tf

    from can_tf.errors import DataError
    from can_tf.predictor import Predictor

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (2, SIZE, SIZE, 1)).astype(np.float32)
    predictor = Predictor.load(exports["keras"])
    signature = tf.saved_model.load(str(exports["saved_model"])).signatures["serving_images"]
    predictor.predict(raw)
    signature(images=tf.constant(raw))
    for images, words in ((raw / 255.0, "looks scaled to [0, 1]"), (raw / 127.5 - 1.0, "negative pixel values"),
                          (raw * 16.0, "more than 8 bits")):
        with pytest.raises(DataError) as refused:
            predictor.predict(images)
        assert str(refused.value).startswith("the images at batch indices 0, 1 ") and words in str(refused.value)
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            signature(images=tf.constant(images))
        reason = door.reason_in(str(error.value))
        assert reason.startswith("the image at batch index 0 ") and words in reason, reason


def test_boxes_move_with_the_aspect_policy():
    from can_tf.explanation.explain import _boxes_on_square
    from can_tf.explanation.localization import Box

    box = Box(10, 20, 30, 40)  # in the pixels of a 400 (high) x 512 (wide) file
    assert _boxes_on_square([box], "image", (400, 512), "stretch") == [box]
    assert _boxes_on_square([box], "image", (400, 512), "pad") == [Box(10, 76, 30, 40)]  # 56 rows above
    assert _boxes_on_square([box], "image", (400, 512), "crop") == [Box(-46, 20, 30, 40)]  # 56 columns cut
    # Boxes drawn on a 1024 px copy of a 512 px square file: halved, then placed.
    assert _boxes_on_square([box], 1024, (512, 512), "pad") == [Box(5, 10, 15, 20)]
