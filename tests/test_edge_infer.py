"""exports/tflite/edge_infer.py: bad files named and skipped, preprocessing as can-tf's, no TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import export_support as support

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "exports" / "tflite" / "edge_infer.py"

def _load():
    spec = importlib.util.spec_from_file_location("edge_infer_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


edge = _load()


@pytest.fixture(scope="module")
def model(tmp_path_factory, chestxray14_dir):
    """A uint8-input float TFLite export of the tiny model, with labels.txt and thresholds.json."""
    from can_tf.export.tflite import export_tflite

    out = tmp_path_factory.mktemp("edge-model")
    return export_tflite(support.tiny_source(), out, quantize="none", uint8_input=True,
                         images=support.real_images(chestxray14_dir, 2)).path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, chestxray14_dir):
    """``[(path, expected reason or None)]``: bad files first, then good ones of several kinds."""
    folder = tmp_path_factory.mktemp("edge-images")
    real = sorted((chestxray14_dir / "images").glob("*.png"))
    base = np.asarray(Image.open(real[1]).convert("L"))

    def write(name, data):
        (folder / name).write_bytes(data)
        return folder / name

    whole = real[2].read_bytes()
    rgba = np.stack([base, np.roll(base, 9, axis=0), base[::-1], np.full_like(base, 77)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(base.astype(np.uint16) * 257 + 3).save(folder / "sixteen_bit.png")
    Image.fromarray(base[40:440, :]).convert("RGB").save(folder / "wide.jpg", quality=92)  # 400 x 512
    return [
        (real[0], None),
        (write("empty.png", b""), "empty file"),
        (write("truncated.png", whole[:len(whole) // 2]), "truncated PNG (the file ends before its IEND chunk)"),
        (write("page.png", b"<!DOCTYPE html><html><body>Not Found</body></html>\n"), "not a PNG, JPEG or DICOM image"),
        (write("bomb.png", support.png_bomb_header(13000, 13000)),
         "image too large: 13000 x 13000 = 169000000 pixels, over the limit of 40000000"),
        (folder / "missing.png", "file not found"),
        (write("jpeg_named.png", support.jpeg_bytes(real[3])), None),
        (folder / "sixteen_bit.png", None),
        (folder / "rgba.png", None),
        (folder / "wide.jpg", None),
    ]


def test_mixed_files_bad_ones_named_good_ones_predicted(model, mixed, capsys):
    code = edge.main([str(model)] + [str(p) for p, _ in mixed])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    bad = [(p, r) for p, r in mixed if r]
    good = [p for p, r in mixed if r is None]
    assert err.splitlines() == [f"error: cannot read image {p}: {r}" for p, r in bad] + [
        f"{len(bad)} of {len(mixed)} images could not be read"]
    headers = [line.split("  (")[0] for line in out.splitlines() if not line.startswith(" ")]
    assert headers == [str(p) for p in good]  # including those after the bad files, in order
    assert len(out.splitlines()) == len(good) * 15  # a header and 14 classes each


def test_json_lines_in_a_process_without_tensorflow(model, mixed, tmp_path):
    run = support.run_without(SCRIPT, [model, "--json", *[p for p, _ in mixed]], cwd=tmp_path, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p, _ in mixed]
    labels = (model.parent / "labels.txt").read_text().split()
    for line, (path, reason) in zip(lines, mixed):
        if reason:
            assert line == {"image": str(path), "error": reason}
        else:
            assert list(line["probabilities"]) == labels
            assert all(0.0 <= p <= 1.0 for p in line["probabilities"].values())
    assert run.stderr.splitlines()[-1] == "5 of 10 images could not be read"


def test_preprocessing_matches_the_training_pipeline(mixed, tmp_path):
    """PNG (gray, 16-bit, RGBA) and JPEG pixels as can-tf's TensorFlow door makes them: within one
    grey level (Pillow's bilinear filter can round a pixel the other way)."""
    from can_tf.export.source import preprocess_files

    def compare(path, **aspect):
        ours = edge.preprocess(path, support.IMAGE_SIZE, np.float32, **aspect)[0, :, :, 0]
        theirs = preprocess_files([path], support.IMAGE_SIZE, **aspect)[0, :, :, 0]
        difference = np.abs(ours - theirs)
        # JPEG too: the door decodes with the accurate integer IDCT, as Pillow does.
        assert difference.max() <= 1.0 and difference.mean() < 0.01, (path, aspect)

    for path, reason in mixed:
        if reason is None:
            compare(path)
    wide = tmp_path / "wide.png"
    Image.open(mixed[0][0]).convert("L").crop((0, 100, 512, 400)).save(wide)  # 300 high, 512 wide
    for aspect in ("stretch", "pad", "crop"):
        compare(wide, aspect=aspect)
    as_uint8 = edge.preprocess(mixed[0][0], support.IMAGE_SIZE, np.uint8)
    assert as_uint8.dtype == np.uint8 and as_uint8.shape == (1, support.IMAGE_SIZE, support.IMAGE_SIZE, 1)


def test_reasons_are_the_libraries_words():
    images = pytest.importorskip("can_tf.images")
    assert (edge.EMPTY_FILE, edge.NOT_AN_IMAGE, edge.TRUNCATED_PNG, edge.TRUNCATED_JPEG) == (
        images.EMPTY, images.NOT_AN_IMAGE, images.TRUNCATED_PNG, images.TRUNCATED_JPEG)
    assert edge.TOO_LARGE.format(height=13000, width=700, pixels=9100000, max_pixels=40) == images.too_large(
        13000, 700, 40)
    assert edge.ASPECTS == images.ASPECTS and edge.DEFAULT_MAX_PIXELS == images.DEFAULT_MAX_PIXELS


def _resize_axis(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Antialiased bilinear (triangle filter, support widened by the scale) along one axis."""
    n = values.shape[axis]
    scale = n / size
    support_ = max(scale, 1.0)
    weights = np.zeros((size, n))
    for i in range(size):
        centre = (i + 0.5) * scale
        w = np.maximum(0.0, 1.0 - np.abs(np.arange(n) + 0.5 - centre) / support_)
        weights[i] = w / w.sum()
    return np.moveaxis(np.tensordot(weights, np.moveaxis(values, axis, 0), axes=1), 0, axis)


def _expected(gray: np.ndarray, aspect: str, size: int) -> np.ndarray:
    h, w = gray.shape
    if aspect == "pad":
        side = max(h, w)
        square = np.zeros((side, side))
        square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = gray
        gray = square
    elif aspect == "crop":
        side = min(h, w)
        gray = gray[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    if gray.shape != (size, size):
        gray = _resize_axis(_resize_axis(gray.astype(np.float64), size, 0), size, 1)
    return gray


@pytest.mark.parametrize("aspect", ["stretch", "pad", "crop"])
@pytest.mark.parametrize("size", [5, 6, 11])
def test_aspect_policies(aspect, size, tmp_path):
    gray = np.random.default_rng(3).integers(0, 256, (6, 11)).astype(np.uint8)  # 6 high, 11 wide
    path = tmp_path / "wide.png"
    Image.fromarray(gray).save(path)
    expected = _expected(gray.astype(np.float64), aspect, size)
    got = edge.preprocess(path, size, np.float32, aspect=aspect)[0, :, :, 0]
    assert got.shape == (size, size)
    # Exact, except where the value is a rounding tie (x.5): either neighbour is right there.
    tie = np.abs(expected - np.floor(expected) - 0.5) < 1e-4
    np.testing.assert_array_equal(got[~tie], np.round(expected)[~tie])
    assert np.all(np.abs(got - expected)[tie] <= 0.5 + 1e-4)
    got = got[None, :, :, None]
    if aspect == "pad" and size == 11:  # no resize: 2 black rows above, 3 below
        assert not got[0, :2].any() and not got[0, -3:].any()
        np.testing.assert_array_equal(got[0, 2:8, :, 0], gray) and got[0, -1, 0, 0] == 0  # black bars above and below


def test_pad_and_crop_without_resize_are_exact(tmp_path):
    gray = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10) * 4
    path = tmp_path / "wide.png"
    Image.fromarray(gray).save(path)
    padded = edge.preprocess(path, 10, np.uint8, aspect="pad")[0, :, :, 0]
    expected = np.zeros((10, 10), np.uint8)
    expected[2:8] = gray
    np.testing.assert_array_equal(padded, expected)
    cropped = edge.preprocess(path, 6, np.uint8, aspect="crop")[0, :, :, 0]
    np.testing.assert_array_equal(cropped, gray[:, 2:8])
    tall = tmp_path / "tall.png"
    Image.fromarray(gray.T.copy()).save(tall)  # 10 high, 6 wide
    np.testing.assert_array_equal(edge.preprocess(tall, 10, np.uint8, aspect="pad")[0, :, :, 0], expected.T)
    np.testing.assert_array_equal(edge.preprocess(tall, 6, np.uint8, aspect="crop")[0, :, :, 0], gray[:, 2:8].T)


def test_colour_is_float_luminance_and_sixteen_bit_is_scaled(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((4, 4), 5, np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    expected = np.clip(np.round(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114), 0, 255)
    np.testing.assert_array_equal(edge.preprocess(tmp_path / "rgba.png", 4)[0, :, :, 0], expected)
    values = np.array([[0, 257, 32767, 65535]], np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    np.testing.assert_array_equal(edge.preprocess(tmp_path / "sixteen.png", 4)[0, 0, :, 0], [0, 1, 127, 255])


def test_size_limit_is_read_from_the_header_and_exact(tmp_path):
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "small.png")
    assert edge.preprocess(tmp_path / "small.png", 8, max_pixels=1200).shape == (1, 8, 8, 1)  # exactly the limit
    with pytest.raises(edge.ImageRefused) as refused:
        edge.preprocess(tmp_path / "small.png", 8, max_pixels=1199)
    assert refused.value.reason == "image too large: 30 x 40 = 1200 pixels, over the limit of 1199"
    # A real 20000 px black PNG: refused from its header, long before 400 MB would be decoded.
    (tmp_path / "black.png").write_bytes(support.black_png(20000))
    with pytest.raises(edge.ImageRefused) as refused:
        edge.preprocess(tmp_path / "black.png", 8)
    assert refused.value.reason == "image too large: 20000 x 20000 = 400000000 pixels, over the limit of 40000000"


def test_corrupt_png_after_the_cheap_checks(tmp_path, chestxray14_dir):
    data = bytearray(support.real_images(chestxray14_dir, 1)[0].read_bytes())
    data[len(data) // 2:len(data) // 2 + 400] = b"\0" * 400  # the end (IEND) is intact
    (tmp_path / "corrupt.png").write_bytes(bytes(data))
    with pytest.raises(edge.ImageRefused) as refused:
        edge.preprocess(tmp_path / "corrupt.png", 8)
    assert refused.value.reason.startswith("corrupt PNG (") and refused.value.reason.endswith(")")


def test_metadata_settings_and_override(model, chestxray14_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model.parent, folder)
    copy = folder / model.name
    metadata_path = copy.with_suffix(".json")
    metadata = json.loads(metadata_path.read_text())
    assert "max_pixels" not in metadata["input"] or metadata["input"]["max_pixels"] == 40_000_000
    metadata["input"].update(max_pixels=100_000, aspect="pad")
    metadata_path.write_text(json.dumps(metadata))
    image = support.real_images(chestxray14_dir, 1)[0]  # 512 x 512
    loaded = edge.Model(copy)
    assert (loaded.max_pixels, loaded.aspect, loaded.size) == (100_000, "pad", support.IMAGE_SIZE)

    assert edge.main([str(copy), str(image)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (f"error: cannot read image {image}: "
                                   "image too large: 512 x 512 = 262144 pixels, over the limit of 100000")
    assert edge.main([str(copy), str(image), "--max-pixels", "262144"]) == 0
    assert capsys.readouterr().out.startswith(str(image))

    metadata["input"]["aspect"] = "squash"
    metadata_path.write_text(json.dumps(metadata))
    assert edge.main([str(copy), str(image)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "input.aspect must be one of stretch, pad, crop" in err


def test_missing_model_or_labels_is_one_error_line(model, chestxray14_dir, tmp_path, capsys):
    from can_tf.export.tflite import convert_tflite

    image = str(support.real_images(chestxray14_dir, 1)[0])
    assert edge.main([str(tmp_path / "nothing.tflite"), image]) == 1
    assert capsys.readouterr().err == f"error: cannot load model {tmp_path / 'nothing.tflite'}: file not found\n"
    shutil.copy(model, tmp_path / model.name)  # alone, but its labels are packed in it
    assert edge.main([str(tmp_path / model.name), image]) == 0
    capsys.readouterr()
    plain = tmp_path / "plain.tflite"  # no metadata: the labels must be beside it
    plain.write_bytes(convert_tflite(support.tiny_source(), "none"))
    assert edge.main([str(plain), image]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: cannot read {tmp_path / 'labels.txt'}")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "broken.tflite").write_bytes(b"not a flatbuffer at all")
    assert edge.main([str(tmp_path / "broken.tflite"), image]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: cannot load model {tmp_path / 'broken.tflite'}: ")
    assert edge.main([str(plain), image]) == 1  # 14 outputs, 2 labels
    assert "has 14 outputs but" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        edge.main(["model.tflite"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        edge.main(["model.tflite", "x.png", "--max-pixels", "lots"])
    assert exit_.value.code == 2 and "--max-pixels" in capsys.readouterr().err


def test_quantised_input_and_output():
    detail = {"dtype": np.int8, "quantization": (0.5, -128)}
    pixels = np.array([0.0, 1.0, 100.0, 255.0], np.float32)
    np.testing.assert_array_equal(edge.to_input_tensor(pixels, detail), [-128, -126, 72, 127])
    np.testing.assert_allclose(edge.from_output_tensor(np.array([-128, 0, 127], np.int8), detail), [0.0, 64.0, 127.5])
    plain = {"dtype": np.uint8, "quantization": (0.0, 0)}
    np.testing.assert_array_equal(edge.to_input_tensor(pixels, plain), [0, 1, 100, 255])
    assert edge.to_input_tensor(pixels, {"dtype": np.float32, "quantization": (0.0, 0)}).dtype == np.float32


def _dicom(path, pixels, photometric):
    from dicom_support import new_dicom

    ds = new_dicom(*pixels.shape, photometric=photometric)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_rendered_like_a_viewer_or_named_without_pydicom(tmp_path, monkeypatch):
    pytest.importorskip("pydicom")
    pixels = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100 + 60
    stretched = np.round((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255.0)
    plain = _dicom(tmp_path / "scan", pixels, "MONOCHROME2")  # no suffix: found by its DICM magic
    np.testing.assert_array_equal(edge.preprocess(plain, 4)[0, :, :, 0], stretched)
    inverted = _dicom(tmp_path / "inverted.dcm", pixels, "MONOCHROME1")
    np.testing.assert_array_equal(edge.preprocess(inverted, 4)[0, :, :, 0], 255.0 - stretched)
    with pytest.raises(edge.ImageRefused) as refused:
        edge.preprocess(plain, 4, max_pixels=15)
    assert refused.value.reason == "image too large: 4 x 4 = 16 pixels, over the limit of 15"
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if not installed
    with pytest.raises(edge.ImageRefused) as refused:
        edge.preprocess(plain, 4)
    assert refused.value.reason == "DICOM needs pydicom (pip install pydicom)"


def test_metadata_alone_gives_labels_and_thresholds_without_companion_files(model, chestxray14_dir, tmp_path):
    """The labels and thresholds packed in the model suffice, and win over stale files beside it."""
    from can_tf.labels import CLASS_NAMES

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(model, alone / model.name)  # nothing beside it
    image = support.real_images(chestxray14_dir, 1)[0]
    run = support.run_without(SCRIPT, [alone / model.name, image, "--json"], cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [json.loads(text) for text in run.stdout.splitlines()]
    assert list(line["probabilities"]) == list(CLASS_NAMES)
    thresholds = dict(zip(CLASS_NAMES, support.THRESHOLDS))
    assert line["findings"] == [c for c, p in line["probabilities"].items() if p >= thresholds[c]]
    assert line["thresholds"] == "thresholds.json in the model"
    assert sorted(alone.iterdir()) == [alone / model.name]

    # Another model's labels.txt and thresholds.json beside it are not used.
    (alone / "labels.txt").write_text("a\nb\n")
    (alone / "thresholds.json").write_text(json.dumps({"thresholds": {c: 0.0 for c in CLASS_NAMES}}))
    loaded = edge.Model(alone / model.name)
    assert loaded.labels == list(CLASS_NAMES) and loaded.thresholds == thresholds
    assert loaded.predict(image)["probabilities"] == line["probabilities"]


def test_a_model_without_metadata_still_reads_the_files_beside_it(chestxray14_dir, tmp_path, capsys):
    from can_tf.export.tflite import convert_tflite
    from can_tf.labels import CLASS_NAMES

    plain = tmp_path / "plain.tflite"
    plain.write_bytes(convert_tflite(support.tiny_source(), "none", uint8_input=True))
    image = str(support.real_images(chestxray14_dir, 1)[0])
    assert edge.main([str(plain), image]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: cannot read {tmp_path / 'labels.txt'}")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    assert edge.main([str(plain), image]) == 1
    assert "has 14 outputs but" in capsys.readouterr().err
    (tmp_path / "labels.txt").write_text("".join(f"{c}\n" for c in CLASS_NAMES))
    result = edge.Model(plain).predict(image)
    assert list(result["probabilities"]) == list(CLASS_NAMES) and result["thresholds"] == "0.5 (no thresholds.json)"
    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": {c: 0.3 for c in CLASS_NAMES}}))
    assert edge.Model(plain).predict(image)["thresholds"] == "thresholds.json"


def test_a_damaged_packed_archive_is_one_error_line(model, chestxray14_dir, tmp_path, capsys):
    import zipfile

    data = bytearray(model.read_bytes())
    with zipfile.ZipFile(model) as archive:
        info = archive.getinfo("labels.txt")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start:start + 4] = b"XXXX"  # the labels' bytes no longer match their CRC
    (tmp_path / model.name).write_bytes(bytes(data))
    assert edge.main([str(tmp_path / model.name), str(support.real_images(chestxray14_dir, 1)[0])]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: cannot read the files packed in {tmp_path / model.name}: BadZipFile: Bad CRC-32")


def test_an_rgb_model_gets_the_gray_image_as_three_channels(model, mixed, tmp_path):
    """The ``_rgb`` export (for the LiteRT Task Library) gives the gray export's numbers, without TensorFlow."""
    from can_tf.export.tflite import export_tflite

    rgb = export_tflite(support.tiny_source(), tmp_path, quantize="none", uint8_input=True, rgb_input=True,
                        images=[p for p, reason in mixed[:1]], num_verify=1).path
    assert rgb.name == "can_none_uint8_rgb.tflite"
    loaded, gray = edge.Model(rgb), edge.Model(model)
    assert (loaded.channels, gray.channels, loaded.size) == (3, 1, support.IMAGE_SIZE)
    good = [p for p, reason in mixed if reason is None]
    for path in good:
        ours, theirs = loaded.predict(path), gray.predict(path)
        assert list(ours["probabilities"]) == list(theirs["probabilities"])
        np.testing.assert_allclose(list(ours["probabilities"].values()), list(theirs["probabilities"].values()),
                                   atol=1e-5, rtol=0)
    run = support.run_without(SCRIPT, [rgb, "--json", *good], cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in good]
    assert lines[0]["probabilities"] == loaded.predict(good[0])["probabilities"]
    assert lines[0]["thresholds"] == "thresholds.json in the model"


def test_an_input_of_other_channels_is_one_error_line(tmp_path, chestxray14_dir, capsys):
    import tensorflow as tf

    spec = tf.TensorSpec([1, 4, 4, 2], tf.float32, name="image")
    function = tf.function(lambda x: {"probabilities": tf.sigmoid(tf.reduce_mean(x, axis=[1, 2]))},
                           input_signature=[spec], autograph=False).get_concrete_function()
    (tmp_path / "two.tflite").write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([function]).convert())
    (tmp_path / "labels.txt").write_text("a\nb\n")
    assert edge.main([str(tmp_path / "two.tflite"), str(support.real_images(chestxray14_dir, 1)[0])]) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'two.tflite'}: expected a (1, S, S, 1) or "
                                       f"(1, S, S, 3) input, got [1, 4, 4, 2]\n")
