"""Overlay figures: size, colour bar, caption, boxes, PNG bytes, fonts, and a real radiograph."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFont

from can_tf.explanation import overlay
from can_tf.explanation.localization import Box
from can_tf.explanation.overlay import (
    BACKGROUND,
    caption_lines,
    output_size,
    overlay_heatmap,
    overlay_layout,
    overlay_png,
    render_overlay,
    save_overlay,
)

CAPTION = dict(class_name="Cardiomegaly", probability=0.83, method="gradcam++", branch="branch_2",
               title="00000001_000.png")


def _peak_map(size=8, row=2, col=5):
    heatmap = np.zeros((size, size))
    heatmap[row, col] = 1.0
    return heatmap


# ---- size ---------------------------------------------------------------------------------------
def test_a_small_image_is_upscaled_to_512_on_its_short_side():
    figure = render_overlay(np.full((64, 64), 100, np.uint8), _peak_map())
    layout = overlay_layout(64, 64)
    assert (layout.image_height, layout.image_width) == (512, 512)
    assert figure.shape == (512, 512 + (layout.width - 512), 3) == (layout.height, layout.width, 3)
    assert layout.width > 512  # the colour bar sits beside the image, not on it


def test_the_long_side_is_capped_and_a_1024_image_is_kept_as_it_is():
    assert output_size(64, 48) == (683, 512)  # 512 / 48 = 10.67
    assert output_size(64, 16) == (1024, 256)  # 512 / 16 = 32 would make 2048: the cap wins
    assert output_size(1024, 1024) == (1024, 1024)
    assert output_size(2048, 1536) == (1024, 768)  # a large DICOM is scaled down
    figure = render_overlay(np.zeros((1024, 1024), np.uint8), _peak_map())
    assert figure.shape[0] == 1024 and figure.shape[1] > 1024
    with pytest.raises(ValueError, match="min_side and max_side"):
        output_size(64, 64, min_side=2048, max_side=1024)


def test_the_image_region_is_the_upscaled_blend():
    image = np.full((64, 64), 100, np.uint8)
    heatmap = _peak_map()
    figure = render_overlay(image, heatmap)
    # A uniform image stays uniform under Lanczos, so the blend at 512 px is overlay_heatmap at 512 px;
    # the peak cross covers a few pixels around the peak.
    expected = overlay_heatmap(np.full((512, 512), 100, np.uint8), heatmap)
    same = np.all(figure[:512, :512] == expected, axis=-1)
    assert same.mean() > 0.99
    np.testing.assert_array_equal(figure[500, 10], [100, 100, 100])  # cold corner: the image itself


# ---- colour bar ---------------------------------------------------------------------------------
def test_the_colour_bar_runs_from_the_hot_colour_at_the_top_to_the_cold_one_at_the_bottom():
    from matplotlib import colormaps

    figure = render_overlay(np.zeros((64, 64), np.uint8), _peak_map())
    layout = overlay_layout(64, 64)
    column = figure[layout.bar_top:layout.bar_bottom, (layout.bar_left + layout.bar_right) // 2].astype(int)
    jet = (colormaps["jet"](np.linspace(1, 0, len(column)))[:, :3] * 255).round()
    np.testing.assert_allclose(column, jet, atol=1)
    top, bottom = column[0], column[-1]
    assert top[0] > 100 and top[2] < 10  # jet(1) = dark red
    assert bottom[2] > 100 and bottom[0] < 10  # jet(0) = dark blue
    # Labels and the axis title are drawn (non-background ink) to the right of the bar.
    right = figure[:layout.image_height, layout.bar_right + 2:]
    assert (right != BACKGROUND).any(axis=-1).sum() > 200


def test_the_colour_bar_uses_the_overlays_colormap():
    figure = render_overlay(np.zeros((64, 64), np.uint8), _peak_map(), colormap="gray")
    layout = overlay_layout(64, 64)
    column = figure[layout.bar_top:layout.bar_bottom, layout.bar_left + 2]
    assert tuple(column[0]) == (255, 255, 255) and tuple(column[-1]) == (0, 0, 0)


# ---- caption ------------------------------------------------------------------------------------
def test_caption_lines_name_class_probability_method_branch_and_file():
    assert caption_lines(**CAPTION) == ["Cardiomegaly   p = 0.83", "Grad-CAM++ on branch_2", "00000001_000.png"]
    assert caption_lines("Mass", 0.999, "scorecam", "fused") == ["Mass   p > 0.99", "Score-CAM on the fused output"]
    assert caption_lines("Mass", 0.001, "gradcam") == ["Mass   p < 0.01", "Grad-CAM"]
    assert caption_lines() == []
    with pytest.raises(ValueError, match="probability must be in"):
        caption_lines("Mass", float("nan"))


def test_a_caption_strip_is_added_below_the_image_only_when_asked_for():
    image = np.full((64, 64), 100, np.uint8)
    plain = render_overlay(image, _peak_map())
    captioned = render_overlay(image, _peak_map(), **CAPTION)
    layout = overlay_layout(64, 64, caption_lines=3)
    assert plain.shape[0] == 512  # no strip
    assert captioned.shape == (layout.height, layout.width, 3) and layout.caption_height > 3 * 16
    strip = captioned[512:]
    ink = (strip != BACKGROUND).any(axis=-1)
    assert ink.sum() > 500  # text is written there
    np.testing.assert_array_equal(captioned[:512], plain)  # and nothing of the image is covered


def test_caption_text_is_large_enough_to_read():
    layout = overlay_layout(64, 64, caption_lines=1)
    assert layout.font_size >= 16
    figure = render_overlay(np.zeros((64, 64), np.uint8), _peak_map(), class_name="Cardiomegaly")
    rows = np.flatnonzero((figure[512:] != BACKGROUND).any(axis=(1, 2)))
    assert rows.max() - rows.min() + 1 >= 14  # "Cardiomegaly" from the top of "d" to the tail of "g"


def test_a_long_title_is_shortened_in_the_middle_to_fit():
    name = "a" * 300 + ".png"
    figure = render_overlay(np.zeros((64, 64), np.uint8), _peak_map(), title=name)
    layout = overlay_layout(64, 64, caption_lines=1)
    assert figure.shape[1] == layout.width  # the figure does not grow to fit the text
    assert (figure[512:, -layout.padding:] == BACKGROUND).all()  # and the text stops before the edge


def test_the_bitmap_font_is_the_fallback_without_freetype(monkeypatch):
    monkeypatch.setattr(overlay, "_FONTS", {})

    def load_default(size=None):
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")  # Pillow < 10.1
        return ImageFont.load_default_imagefont()

    def truetype(*args, **kwargs):
        raise OSError("cannot open resource")

    monkeypatch.setattr(ImageFont, "load_default", load_default)
    monkeypatch.setattr(ImageFont, "truetype", truetype)
    figure = render_overlay(np.zeros((64, 64), np.uint8), _peak_map(), class_name="Cardiomegaly")
    rows = np.flatnonzero((figure[512:] != BACKGROUND).any(axis=(1, 2)))
    assert rows.size and rows.max() - rows.min() + 1 >= 12  # scaled up from the 11 px bitmap
    assert isinstance(overlay._font(18)[0], ImageFont.ImageFont)


# ---- boxes and peak -----------------------------------------------------------------------------
def test_boxes_are_drawn_at_the_scaled_position():
    image = np.full((64, 64), 50, np.uint8)
    figure = render_overlay(image, np.zeros((8, 8)), boxes=[Box(16, 8, 24, 32)])
    # 8x: the box spans x 128..320, y 64..320.
    green = np.all(figure == (0, 255, 0), axis=-1)
    assert green[64, 128:321].all() and green[320, 128:321].all()  # top and bottom edges
    assert green[64:321, 128].all() and green[64:321, 320].all()  # left and right edges
    assert not green[200, 200] and not green[40, 200]  # inside and outside stay clear
    assert not green[:, 330:].any()


def test_the_peak_is_marked_at_the_scaled_position():
    heatmap = np.zeros((64, 64))
    heatmap[16, 48] = 1.0
    figure = render_overlay(np.zeros((64, 64), np.uint8), heatmap)
    white = np.all(figure[:512, :512] == 255, axis=-1)
    rows, cols = np.nonzero(white)
    assert abs(np.median(rows) - 16 * 8) <= 8 and abs(np.median(cols) - 48 * 8) <= 8


# ---- PNG bytes and file -------------------------------------------------------------------------
def test_overlay_png_decodes_to_the_rendered_array(tmp_path):
    image = np.random.RandomState(0).randint(0, 256, (40, 56)).astype(np.uint8)
    heatmap = np.random.RandomState(1).uniform(size=(7, 7))
    kwargs = dict(boxes=[Box(5, 5, 10, 10)], **CAPTION)
    rendered = render_overlay(image, heatmap, **kwargs)
    data = overlay_png(image, heatmap, **kwargs)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rendered)
    path = save_overlay(tmp_path / "sub" / "o.png", image, heatmap, **kwargs)
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == ["o.png"]  # no temporary file left beside it


def test_save_overlay_needs_a_grayscale_image(tmp_path):
    with pytest.raises(ValueError, match=r"2-D grayscale image, got shape \(8, 8, 3\)"):
        save_overlay(tmp_path / "o.png", np.zeros((8, 8, 3), np.uint8), _peak_map())
    assert not (tmp_path / "o.png").exists()


# ---- a real radiograph --------------------------------------------------------------------------
def test_a_real_radiograph_renders_with_caption_and_bar(chestxray14_dir, tmp_path):
    path = sorted((chestxray14_dir / "images").glob("*.png"))[0]
    image = np.asarray(Image.open(path).convert("L"))
    rows, cols = np.mgrid[0:16, 0:16]
    heatmap = np.exp(-((rows - 9) ** 2 + (cols - 10) ** 2) / 8.0)
    box = Box(image.shape[1] * 0.55, image.shape[0] * 0.45, image.shape[1] * 0.3, image.shape[0] * 0.25)
    written = save_overlay(tmp_path / "o.png", image, heatmap, boxes=[box], **{**CAPTION, "title": path.name})
    figure = np.asarray(Image.open(written))
    layout = overlay_layout(*image.shape, caption_lines=3)
    assert figure.shape == (layout.height, layout.width, 3)
    assert min(layout.image_height, layout.image_width) >= 512 and max(figure.shape[:2]) <= 1024 + 200
