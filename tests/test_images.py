"""The image door (can_tf.images): reading and checking files, and the pixel-value check every
array of pixels passes (check_pixels)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from can_tf.data.errors import DataError
from can_tf.images import NOT_AN_IMAGE, check_pixels, read_gray, scan_images, verify_image


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
    image = read_gray(path)
    assert image.dtype == np.uint8 and image.shape == (48, 40)
    np.testing.assert_array_equal(image, values)


def test_read_real_sample_gray(chestxray14_dir):
    path = sorted((chestxray14_dir / "images").glob("*.png"))[0]
    image = read_gray(path)
    assert image.shape == (512, 512) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(Image.open(path)))


def test_rgb_and_rgba_reduce_to_luminance_alpha_dropped(tmp_path):
    rgb = _rgb_values()
    alpha = np.random.default_rng(1).integers(0, 256, size=rgb.shape[:2], dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    expected = _pil_luminance(rgb)
    np.testing.assert_array_equal(read_gray(tmp_path / "rgb.png"), expected)
    # Alpha is dropped, not composited: the same values whatever the transparency.
    np.testing.assert_array_equal(read_gray(tmp_path / "rgba.png"), expected)
    # Hand-computed ITU-R 601: pure red 255 -> 0.299 * 255 = 76.2 -> 76.
    Image.fromarray(np.full((4, 4, 3), (255, 0, 0), np.uint8)).save(tmp_path / "red.png")
    assert read_gray(tmp_path / "red.png")[0, 0] == 76


def test_la_and_palette(tmp_path, gray_png):
    _, values = gray_png
    Image.fromarray(values, "L").convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_gray(tmp_path / "la.png"), values)
    Image.fromarray(values, "L").convert("P").save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    # A gray palette holds every level exactly, so the values come back unchanged.
    np.testing.assert_array_equal(read_gray(tmp_path / "p.png"), values)


def test_sixteen_bit_png_scaled_by_full_range(tmp_path):
    # v / 257: 0 -> 0, 257 -> 1, 32896 = 128 * 257 -> 128, 1000 -> 3.89 -> 4, 65535 -> 255.
    values = np.array([[0, 257, 32896, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I;16")
    np.testing.assert_array_equal(read_gray(tmp_path / "16.png"), [[0, 1, 128, 4, 255]])


def test_jpeg_gray_and_rgb(tmp_path, gray_png):
    _, values = gray_png
    smooth = np.repeat(np.repeat(values[::8, ::8], 8, 0), 8, 1)  # blocks: little JPEG loss
    Image.fromarray(smooth, "L").save(tmp_path / "g.jpg", quality=98)
    image = read_gray(tmp_path / "g.jpg")
    assert image.shape == smooth.shape and np.abs(image.astype(int) - smooth).mean() < 3
    rgb = np.dstack([smooth] * 3)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.jpg", quality=98)
    assert read_gray(tmp_path / "c.jpg").shape == smooth.shape


def test_verify_image_reasons(tmp_path, gray_png):
    good, _ = gray_png
    assert verify_image(good) is None
    assert verify_image(good, decode=True) is None
    assert verify_image(tmp_path / "nope.png") == "file not found"
    (tmp_path / "empty.png").write_bytes(b"")
    assert verify_image(tmp_path / "empty.png") == "empty file"
    (tmp_path / "text.png").write_text("not an image at all")
    assert verify_image(tmp_path / "text.png") == NOT_AN_IMAGE
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "truncated" in verify_image(tmp_path / "cut.png")
    # A flipped byte inside the image data breaks that chunk's CRC.
    broken = bytearray(data)
    broken[60] ^= 0xFF
    (tmp_path / "crc.png").write_bytes(bytes(broken))
    assert verify_image(tmp_path / "crc.png").startswith("corrupt PNG")
    Image.fromarray(_rgb_values(), "RGB").save(tmp_path / "full.jpg")
    jpeg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    assert verify_image(tmp_path / "cut.jpg") == "truncated JPEG (no end-of-image marker)"
    Image.fromarray(_rgb_values(), "RGB").convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert verify_image(tmp_path / "cmyk.jpg") == "unsupported JPEG (4 colour components; gray or RGB expected)"
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
        read_gray(tmp_path / "gone.png")
    good, _ = gray_png
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png.*truncated"):
        read_gray(tmp_path / "cut.png")


# ---- non-finite pixels are refused at the door ----------------------------------------------------
def test_finite_pixels_pass_as_float32():
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
    checked = check_pixels(images)
    assert checked.dtype == np.float32
    np.testing.assert_array_equal(checked, images)
    assert check_pixels(np.zeros((0, 4, 4, 1))).shape == (0, 4, 4, 1)


def test_non_finite_pixels_are_refused_naming_the_images():
    images = np.full((8, 4, 4, 1), 128.0)
    images[2, 1, 1, 0] = np.nan
    with pytest.raises(DataError) as e:
        check_pixels(images)
    assert str(e.value) == ("the image at batch index 2 holds NaN or inf pixel values; "
                            "pixels must be finite, in [0, 255]")
    images[5, 0, 0, 0] = -np.inf
    images[7, 3, 3, 0] = 1e40  # finite as float64, inf as float32: the model would see inf
    with pytest.raises(DataError, match=r"^the images at batch indices 2, 5, 7 hold NaN or inf"):
        check_pixels(images)
    names = [f"scan{i}.png" for i in range(8)]
    with pytest.raises(DataError, match=r"^images 'scan2.png', 'scan5.png', 'scan7.png' hold NaN or inf"):
        check_pixels(images, names)
    images[:, 0, 0, 0] = np.nan
    with pytest.raises(DataError) as e:
        check_pixels(images)
    assert "batch indices 0, 1, 2, 3, 4 and 3 more hold" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="3 names for 8 images"):
        check_pixels(images, names[:3])


def _write_float_dicom(path, pixels):
    """A DICOM holding Float Pixel Data (7FE0,0008), the kind that can carry NaN or inf."""
    pydicom = pytest.importorskip("pydicom")
    if int(pydicom.__version__.split(".")[0]) < 3:
        pytest.skip("writing Float Pixel Data needs pydicom 3")
    from dicom_support import new_dicom

    ds = new_dicom(*pixels.shape)
    ds.BitsAllocated = 32
    ds.FloatPixelData = pixels.astype("<f4").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_with_non_finite_pixels_is_refused_not_rendered_black(tmp_path):
    from can_tf.inputs import load_images

    pixels = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    good = read_gray(_write_float_dicom(tmp_path / "good.dcm", pixels))
    assert good[0, 0] == 0 and good[-1, -1] == 255  # float data reads like any other DICOM
    pixels[3, 4] = np.nan
    bad = _write_float_dicom(tmp_path / "bad.dcm", pixels)
    with pytest.raises(DataError) as e:
        read_gray(bad)
    assert str(e.value) == f"cannot read image {bad}: 1 of 64 pixel values are not finite (NaN or inf)"
    batch = load_images([str(tmp_path / "good.dcm"), str(bad)], image_size=8)
    assert batch.paths == [str(tmp_path / "good.dcm")]
    assert "not finite" in batch.errors[str(bad)]
