"""Python-side image reading and checking (can_tf.data.images)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from can_tf.data.errors import DataError
from can_tf.data.images import read_image, scan_images, verify_image


@pytest.fixture()
def gray_png(tmp_path):
    values = (np.arange(48 * 40) % 256).astype(np.uint8).reshape(48, 40)
    path = tmp_path / "gray.png"
    Image.fromarray(values, mode="L").save(path)
    return path, values


def _rgb_values(h=24, w=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _pil_luminance(rgb):
    return np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"))


def test_read_gray_png_exact(gray_png):
    path, values = gray_png
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (48, 40)
    np.testing.assert_array_equal(image, values)


def test_read_real_sample_gray(chestxray14_dir):
    path = sorted((chestxray14_dir / "images").glob("*.png"))[0]
    image = read_image(path)
    assert image.shape == (512, 512) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(Image.open(path)))


def test_rgb_and_rgba_reduce_to_luminance_alpha_dropped(tmp_path):
    rgb = _rgb_values()
    alpha = np.random.default_rng(1).integers(0, 256, size=rgb.shape[:2], dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    expected = _pil_luminance(rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), expected)
    # Alpha is dropped, not composited: the same values whatever the transparency.
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), expected)
    # Hand-computed ITU-R 601: pure red 255 -> 0.299 * 255 = 76.2 -> 76.
    Image.fromarray(np.full((4, 4, 3), (255, 0, 0), np.uint8)).save(tmp_path / "red.png")
    assert read_image(tmp_path / "red.png")[0, 0] == 76


def test_la_and_palette(tmp_path, gray_png):
    _, values = gray_png
    Image.fromarray(values, "L").convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), values)
    Image.fromarray(values, "L").convert("P").save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    # A gray palette holds every level exactly, so the values come back unchanged.
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), values)


def test_sixteen_bit_png_scaled_by_full_range(tmp_path):
    # v / 257: 0 -> 0, 257 -> 1, 32896 = 128 * 257 -> 128, 1000 -> 3.89 -> 4, 65535 -> 255.
    values = np.array([[0, 257, 32896, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I;16")
    np.testing.assert_array_equal(read_image(tmp_path / "16.png"), [[0, 1, 128, 4, 255]])


def test_jpeg_gray_and_rgb(tmp_path, gray_png):
    _, values = gray_png
    smooth = np.repeat(np.repeat(values[::8, ::8], 8, 0), 8, 1)  # blocks: little JPEG loss
    Image.fromarray(smooth, "L").save(tmp_path / "g.jpg", quality=98)
    image = read_image(tmp_path / "g.jpg")
    assert image.shape == smooth.shape and np.abs(image.astype(int) - smooth).mean() < 3
    rgb = np.dstack([smooth] * 3)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.jpg", quality=98)
    assert read_image(tmp_path / "c.jpg").shape == smooth.shape


def test_verify_image_reasons(tmp_path, gray_png):
    good, _ = gray_png
    assert verify_image(good) is None
    assert verify_image(good, decode=True) is None
    assert verify_image(tmp_path / "nope.png") == "file not found"
    (tmp_path / "empty.png").write_bytes(b"")
    assert verify_image(tmp_path / "empty.png") == "empty file"
    (tmp_path / "text.png").write_text("not an image at all")
    assert verify_image(tmp_path / "text.png") == "not a PNG or JPEG image"
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "truncated" in verify_image(tmp_path / "cut.png")
    # A flipped byte inside the image data breaks that chunk's CRC.
    broken = bytearray(data)
    broken[60] ^= 0xFF
    (tmp_path / "crc.png").write_bytes(bytes(broken))
    assert verify_image(tmp_path / "crc.png").startswith("unreadable PNG")
    Image.fromarray(_rgb_values(), "RGB").save(tmp_path / "full.jpg")
    jpeg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    assert verify_image(tmp_path / "cut.jpg") == "truncated JPEG (no end-of-image marker)"
    Image.fromarray(_rgb_values(), "RGB").convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert verify_image(tmp_path / "cmyk.jpg") == "unsupported colour mode 'CMYK'"
    assert verify_image(tmp_path) == "not a regular file"


def test_scan_images_reports_only_bad_files(tmp_path, gray_png):
    good, _ = gray_png
    (tmp_path / "empty.png").write_bytes(b"")
    paths = [str(good)] * 70 + [str(tmp_path / "empty.png"), str(tmp_path / "gone.png")]  # > 64: threads
    assert scan_images(paths) == {
        str(tmp_path / "empty.png"): "empty file",
        str(tmp_path / "gone.png"): "file not found",
    }


def test_read_image_errors_name_the_file(tmp_path, gray_png):
    with pytest.raises(DataError, match="gone.png"):
        read_image(tmp_path / "gone.png")
    good, _ = gray_png
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png.*truncated"):
        read_image(tmp_path / "cut.png")
