"""Heat maps laid over the radiograph they explain, written as PNG figures a reader can use.

Two levels:

- :func:`overlay_heatmap` is the pure blend at the image's own size: the heat map is scaled by its
  maximum to [0, 1] (``heat = map / max(map)``), colour-mapped, and mixed in with opacity
  ``alpha * heat``, so cold regions stay the radiograph itself and only hot ones are tinted.
- :func:`render_overlay` makes the figure that :func:`overlay_png` encodes and :func:`save_overlay`
  writes (atomically):

  * the radiograph resampled by one factor ``s = min(max(1, min_side / short), max_side / long)``:
    a model-size image (often 128 px or less) is upscaled with a Lanczos filter until its short
    side is ``min_side`` (512) px, a 1024 px NIH image stays at its size, and no side exceeds
    ``max_side`` (1024) px, which keeps files small (for a very elongated image the cap wins and
    the short side stays under ``min_side``). The heat map is resampled bilinearly straight to the
    new size; known boxes (green) and the heat map's peak (white cross) are drawn at the new scale;
  * a vertical colour bar at the right, "relative activation" from 0 (bottom) to 1 (top), in the
    same colormap at full opacity. 1 is this map's own maximum, so colours compare regions within
    one map, not maps with each other;
  * when any of ``class_name``, ``probability``, ``method``, ``branch`` or ``title`` is given, a
    caption strip below the image (never over anatomy): ``"Cardiomegaly   p = 0.83"``, then the
    method and the output explained (``"Grad-CAM++ on branch_2"``), then the title (the image's
    file name). With none of them there is no caption.

  Text is drawn with Pillow's scalable default font (FreeType, Pillow >= 10.1) at ``max(16,
  short / 28)`` px of the image's short side, falling back to matplotlib's DejaVu Sans and, without
  FreeType, to the bitmap font scaled up.

The heat map is only resampled for display; localisation scores are computed on the model-size map
(:mod:`can_tf.explanation.localization`).

Example:
    >>> import numpy as np
    >>> image = np.full((64, 64), 128, np.uint8)
    >>> heatmap = np.zeros((8, 8)); heatmap[4, 4] = 1.0
    >>> overlay_heatmap(image, heatmap).shape
    (64, 64, 3)
    >>> layout = overlay_layout(64, 64, caption_lines=2)
    >>> layout.image_height, layout.image_width, layout.font_size  # 64 px upscaled 8x
    (512, 512, 18)
    >>> figure = render_overlay(image, heatmap, class_name="Cardiomegaly", probability=0.83, method="gradcam")
    >>> figure.shape == (layout.height, layout.width, 3)
    True
    >>> caption_lines("Cardiomegaly", 0.83, "gradcam++", "branch_2", "00000001_000.png")
    ['Cardiomegaly   p = 0.83', 'Grad-CAM++ on branch_2', '00000001_000.png']
    >>> overlay_filename("/data/00000001_000.png", "Cardiomegaly", "gradcam")
    '00000001_000_Cardiomegaly_gradcam.png'
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from can_tf.images import IMAGE_SUFFIXES

# File-name-safe spelling of each method (``+`` is legal in names but awkward in shells).
_METHOD_TOKENS = {"gradcam": "gradcam", "gradcam++": "gradcampp", "scorecam": "scorecam"}
# How each method is written in the literature, for captions.
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}

BACKGROUND = (255, 255, 255)  # white, as a figure in a paper
_INK = (20, 20, 20)
_SECONDARY_INK = (90, 90, 90)
_BOX_COLOUR = (0, 255, 0)
_BAR_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
BAR_LABEL = "relative activation"


def overlay_filename(image_path: str | Path, class_name: str, method: str,
                     branch: str = "fused") -> str:
    """``<stem>_<class>_<method>[_<branch>].png``; the fused output carries no branch suffix."""
    stem = Path(image_path).name
    for suffix in (".gz", *IMAGE_SUFFIXES):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    token = _METHOD_TOKENS.get(method, method)
    name = f"{stem}_{class_name}_{token}"
    if branch != "fused":
        name += f"_{branch}"
    return name + ".png"


def resize_heatmap(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float heat map to ``height x width`` (float32)."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape == (height, width):
        return heatmap
    resized = Image.fromarray(heatmap, mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45,
                    colormap: str = "jet") -> np.ndarray:
    """Blends a colour-mapped heat map (scaled to [0, 1] by its maximum) over a grayscale image.

    Args:
        image: uint8 ``(H, W)`` grayscale radiograph.
        heatmap: ``(h, w)`` non-negative map; resized to ``(H, W)``.
        alpha: opacity of the heat map where it is hottest; cold regions stay see-through so the
            anatomy under a weak map remains readable.

    Returns:
        uint8 ``(H, W, 3)`` RGB image.
    """
    from matplotlib import colormaps  # lazy: matplotlib import costs ~0.5 s

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"overlay_heatmap needs a 2-D grayscale image, got shape {image.shape}")
    height, width = image.shape
    heat = np.clip(resize_heatmap(heatmap, height, width), 0.0, None)
    peak = heat.max()
    heat = heat / peak if peak > 0 else heat
    colours = colormaps[colormap](heat)[..., :3]
    weight = alpha * heat[..., None]
    gray = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    blended = (1.0 - weight) * gray + weight * colours
    return np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---- layout -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OverlayLayout:
    """Where each part of an overlay figure lies, in pixels of the figure.

    The radiograph fills ``[0, image_height) x [0, image_width)``; the colour bar's colours fill
    rows ``bar_top..bar_bottom - 1`` and columns ``bar_left..bar_right - 1`` (value 1 at the top
    row, 0 at the bottom one); the caption strip, if any, fills rows ``image_height..height - 1``.
    """

    image_height: int
    image_width: int
    scale_y: float  # image_height / the input's height
    scale_x: float
    bar_left: int
    bar_top: int
    bar_right: int
    bar_bottom: int
    height: int
    width: int
    font_size: int
    line_height: int  # one caption line
    padding: int

    @property
    def caption_height(self) -> int:
        return self.height - self.image_height


def output_size(height: int, width: int, min_side: int = 512, max_side: int = 1024) -> tuple:
    """``(height, width)`` of the radiograph in the figure: scaled by ``min(max(1, min_side /
    short), max_side / long)``, so that the short side reaches ``min_side`` unless the long side
    would pass ``max_side``; a large image is scaled down to ``max_side``."""
    if height < 1 or width < 1:
        raise ValueError(f"overlay needs an image of at least 1 x 1 pixels, got {height} x {width}")
    if not 0 < min_side <= max_side:
        raise ValueError(f"overlay min_side and max_side must satisfy 0 < min_side <= max_side, "
                         f"got {min_side} and {max_side}")
    scale = min(max(1.0, min_side / min(height, width)), max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay_layout(height: int, width: int, *, caption_lines: int = 0, min_side: int = 512,
                   max_side: int = 1024) -> OverlayLayout:
    """The :class:`OverlayLayout` of the figure for a ``height x width`` radiograph whose caption
    has ``caption_lines`` lines (0: no caption strip)."""
    out_h, out_w = output_size(height, width, min_side, max_side)
    font_size = max(16, round(min(out_h, out_w) / 28))
    padding = max(4, font_size // 2)
    line_height = round(1.4 * font_size)
    bar_width = max(16, round(1.1 * font_size))
    tick = max(3, font_size // 3)
    label_width = max(_text_width(_tick_label(v), font_size) for v in _BAR_TICKS)
    bar_left = out_w + 2 * padding
    bar_right = bar_left + bar_width
    # Inset by about half a label's height so the "1" and "0" centred on the ends stay inside.
    bar_top = min(font_size, out_h // 4)
    bar_bottom = max(bar_top + 1, out_h - bar_top)
    width_total = bar_right + tick + padding // 2 + label_width + padding + _text_height(font_size) + padding
    caption = 2 * padding + caption_lines * line_height if caption_lines else 0
    return OverlayLayout(image_height=out_h, image_width=out_w, scale_y=out_h / height, scale_x=out_w / width,
                         bar_left=bar_left, bar_top=bar_top, bar_right=bar_right, bar_bottom=bar_bottom,
                         height=out_h + caption, width=width_total, font_size=font_size,
                         line_height=line_height, padding=padding)


def caption_lines(class_name: Optional[str] = None, probability: Optional[float] = None,
                  method: Optional[str] = None, branch: Optional[str] = None,
                  title: Optional[str] = None) -> list:
    """The caption's lines: class and probability, method and output, title; empty parts are left out.

    A probability is written to two decimals, and as ``p < 0.01`` / ``p > 0.99`` at the ends so that
    rounding never shows a certainty the model did not give.
    """
    lines = []
    first = []
    if class_name is not None:
        first.append(str(class_name))
    if probability is not None:
        probability = float(probability)
        if not 0.0 <= probability <= 1.0:  # also catches NaN
            raise ValueError(f"overlay probability must be in [0, 1], got {probability}")
        if probability < 0.005:
            first.append("p < 0.01")
        elif probability > 0.995:
            first.append("p > 0.99")
        else:
            first.append(f"p = {probability:.2f}")
    if first:
        lines.append("   ".join(first))
    shown_branch = None
    if branch is not None:
        shown_branch = "the fused output" if branch == "fused" else str(branch)
    if method is not None:
        name = METHOD_NAMES.get(method, str(method))
        lines.append(f"{name} on {shown_branch}" if shown_branch else name)
    elif shown_branch:
        lines.append(f"output: {shown_branch}")
    if title is not None:
        lines.append(str(title))
    return lines


# ---- rendering ----------------------------------------------------------------------------------
def render_overlay(image: np.ndarray, heatmap: np.ndarray, boxes: Optional[Iterable] = None,
                   alpha: float = 0.45, *, class_name: Optional[str] = None,
                   probability: Optional[float] = None, method: Optional[str] = None,
                   branch: Optional[str] = None, title: Optional[str] = None, min_side: int = 512,
                   max_side: int = 1024, colormap: str = "jet") -> np.ndarray:
    """The whole overlay figure (radiograph with heat map, boxes and peak; colour bar; caption).

    Args:
        image: uint8 ``(H, W)`` grayscale radiograph, as read.
        heatmap: ``(h, w)`` non-negative map at any size (the model's, usually).
        boxes: ``Box`` es in the pixels of ``image``; drawn green at the figure's scale.
        alpha: the heat map's opacity where it is hottest (see :func:`overlay_heatmap`).
        class_name, probability, method, branch, title: the caption (see :func:`caption_lines`);
            none given: no caption strip.
        min_side, max_side: the radiograph's size in the figure (see :func:`output_size`).
        colormap: a matplotlib colormap name, for the map and its colour bar.

    Returns:
        uint8 ``(layout.height, layout.width, 3)`` RGB array, ``layout`` being :func:`overlay_layout`.
    """
    from matplotlib import colormaps

    from can_tf.explanation.localization import peak_location

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"overlay needs a 2-D grayscale image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    lines = caption_lines(class_name, probability, method, branch, title)
    layout = overlay_layout(*image.shape, caption_lines=len(lines), min_side=min_side, max_side=max_side)
    out_h, out_w = layout.image_height, layout.image_width

    gray = Image.fromarray(image, mode="L")
    if gray.size != (out_w, out_h):
        # Lanczos keeps edges (ribs, tubes) sharper than bilinear without ringing worth noticing.
        gray = gray.resize((out_w, out_h), Image.LANCZOS)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    canvas.paste(Image.fromarray(overlay_heatmap(np.asarray(gray), heatmap, alpha, colormap), mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)

    short = min(out_h, out_w)
    line = max(2, round(short / 170))
    for box in boxes or ():
        box = box.scaled(layout.scale_x, layout.scale_y)
        draw.rectangle([box.x, box.y, box.x + box.w, box.y + box.h], outline=_BOX_COLOUR, width=line)
    row, col = peak_location(resize_heatmap(heatmap, out_h, out_w))
    arm = max(4, round(short / 40))
    for colour, width in (((0, 0, 0), line + 2), ((255, 255, 255), line)):  # dark halo: visible on bright bone
        draw.line([col - arm, row, col + arm, row], fill=colour, width=width)
        draw.line([col, row - arm, col, row + arm], fill=colour, width=width)

    _draw_colour_bar(canvas, draw, layout, colormaps[colormap])
    top = out_h + layout.padding
    available = layout.width - 2 * layout.padding
    for number, text in enumerate(lines):
        text = _fit(text, layout.font_size, available)
        ink = _INK if number == 0 and (class_name is not None or probability is not None) else _SECONDARY_INK
        mask = _text_mask(text, layout.font_size)
        y = top + number * layout.line_height + (layout.line_height - mask.height) // 2
        canvas.paste(Image.new("RGB", mask.size, ink), (layout.padding, y), mask)
    return np.asarray(canvas)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, boxes: Optional[Iterable] = None,
                alpha: float = 0.45, **kwargs) -> bytes:
    """:func:`render_overlay` encoded as PNG bytes (for a file, or a ``data:`` URI in an HTML report)."""
    buffer = io.BytesIO()
    Image.fromarray(render_overlay(image, heatmap, boxes, alpha, **kwargs), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def save_overlay(path: str | Path, image: np.ndarray, heatmap: np.ndarray,
                 boxes: Optional[Iterable] = None, alpha: float = 0.45, *,
                 class_name: Optional[str] = None, probability: Optional[float] = None,
                 method: Optional[str] = None, branch: Optional[str] = None, title: Optional[str] = None,
                 min_side: int = 512, max_side: int = 1024, colormap: str = "jet") -> Path:
    """Writes :func:`render_overlay` as PNG to ``path`` atomically (never a half-written file); returns it.

    Known boxes (``Box``, in the pixels of ``image``) are drawn in green and the heat map's peak is
    marked by a white cross, so a reader can judge localisation at a glance.
    """
    from can_tf.files import atomic_write_bytes

    data = overlay_png(image, heatmap, boxes, alpha, class_name=class_name, probability=probability,
                       method=method, branch=branch, title=title, min_side=min_side, max_side=max_side,
                       colormap=colormap)
    return atomic_write_bytes(path, data)


def _draw_colour_bar(canvas: Image.Image, draw: ImageDraw.ImageDraw, layout: OverlayLayout, cmap) -> None:
    top, bottom, left, right = layout.bar_top, layout.bar_bottom, layout.bar_left, layout.bar_right
    rows = bottom - top
    values = np.linspace(1.0, 0.0, rows) if rows > 1 else np.ones(1)
    colours = np.clip(cmap(values)[:, :3] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    strip = np.repeat(colours[:, None, :], right - left, axis=1)
    canvas.paste(Image.fromarray(strip, mode="RGB"), (left, top))
    draw.rectangle([left - 1, top - 1, right, bottom], outline=_SECONDARY_INK, width=1)

    size = layout.font_size
    tick = max(3, size // 3)
    # Fewer labels when the bar is too short for all of them to sit apart.
    ticks = _BAR_TICKS if rows >= 5 * layout.line_height else (0.0, 1.0) if rows >= 2 * size else ()
    label_left = right + tick + layout.padding // 2
    for value in ticks:
        y = top + round((1.0 - value) * (rows - 1))
        draw.line([right, y, right + tick, y], fill=_INK, width=1)
        mask = _text_mask(_tick_label(value), size, tight=True)
        canvas.paste(Image.new("RGB", mask.size, _INK), (label_left, y - mask.height // 2), mask)

    # The axis title reads bottom to top beside the labels, shrunk if the bar is short.
    title_size = size
    while title_size > 8 and _text_width(BAR_LABEL, title_size) > rows:
        title_size -= 1
    if _text_width(BAR_LABEL, title_size) > rows:
        return
    mask = _text_mask(BAR_LABEL, title_size).rotate(90, expand=True)
    x = label_left + max(_text_width(_tick_label(v), size) for v in _BAR_TICKS) + layout.padding
    y = top + (rows - mask.height) // 2
    canvas.paste(Image.new("RGB", mask.size, _INK), (x, y), mask)


def _tick_label(value: float) -> str:
    return f"{value:g}"


def _fit(text: str, size: int, available: int) -> str:
    """``text``, its middle replaced by ``...`` until it fits ``available`` px (long file names)."""
    if _text_width(text, size) <= available:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        head = text[: (keep + 1) // 2]
        tail = text[len(text) - keep // 2:] if keep // 2 else ""
        shortened = f"{head}...{tail}"
        if _text_width(shortened, size) <= available:
            return shortened
    return "..."


# ---- fonts --------------------------------------------------------------------------------------
_FONTS: dict = {}  # size -> (font, scale): the bitmap fallback is drawn small and scaled up
_REFERENCE = "Ag|"  # spans ascender to descender, so every caption line gets the same height


def _font(size: int) -> tuple:
    if size not in _FONTS:
        _FONTS[size] = _load_font(size)
    return _FONTS[size]


def _load_font(size: int) -> tuple:
    try:
        font = ImageFont.load_default(size=size)  # FreeType, Pillow >= 10.1
        if isinstance(font, ImageFont.FreeTypeFont):
            return font, 1.0
    except (TypeError, OSError, ImportError):
        pass
    try:
        from matplotlib import get_data_path

        return ImageFont.truetype(str(Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size), 1.0
    except (OSError, ImportError):
        pass
    font = ImageFont.load_default()
    _, top, _, bottom = font.getbbox(_REFERENCE)
    return font, size / max(1, bottom - top)


def _text_mask(text: str, size: int, *, tight: bool = False) -> Image.Image:
    """An ``L`` image of ``text`` (255 = ink): as high as the font's reference glyphs, or as the
    text's own ink with ``tight`` (to centre tick labels on their ticks)."""
    font, scale = _font(size)
    left, top, right, bottom = font.getbbox(text)
    if not tight:
        _, top, _, bottom = font.getbbox(_REFERENCE)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font)
    if scale != 1.0:
        mask = mask.resize((max(1, round(mask.width * scale)), max(1, round(mask.height * scale))), Image.BICUBIC)
    return mask


def _text_width(text: str, size: int) -> int:
    font, scale = _font(size)
    left, _, right, _ = font.getbbox(text)
    return int(math.ceil((right - left) * scale))


def _text_height(size: int) -> int:
    font, scale = _font(size)
    _, top, _, bottom = font.getbbox(_REFERENCE)
    return int(math.ceil((bottom - top) * scale))
