"""Heat maps laid over the radiograph they explain, written as PNG.

Example:
    >>> import numpy as np
    >>> image = np.full((64, 64), 128, np.uint8)
    >>> heatmap = np.zeros((8, 8)); heatmap[4, 4] = 1.0
    >>> overlay_heatmap(image, heatmap).shape
    (64, 64, 3)
    >>> overlay_filename("/data/00000001_000.png", "Cardiomegaly", "gradcam")
    '00000001_000_Cardiomegaly_gradcam.png'
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image, ImageDraw

from can_tf.images import IMAGE_SUFFIXES

# File-name-safe spelling of each method (``+`` is legal in names but awkward in shells).
_METHOD_TOKENS = {"gradcam": "gradcam", "gradcam++": "gradcampp", "scorecam": "scorecam"}


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


def save_overlay(path: str | Path, image: np.ndarray, heatmap: np.ndarray,
                 boxes: Optional[Iterable] = None, alpha: float = 0.45) -> Path:
    """Writes :func:`overlay_heatmap` as PNG, with known boxes (``Box``) drawn in green and the
    heat map's peak marked by a white cross, so a reader can judge localisation at a glance."""
    from can_tf.explanation.localization import peak_location

    rgb = overlay_heatmap(image, heatmap, alpha=alpha)
    height, width = rgb.shape[:2]
    picture = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(picture)
    line = max(1, round(min(height, width) / 128))
    for box in boxes or ():
        draw.rectangle([box.x, box.y, box.x + box.w, box.y + box.h], outline=(0, 255, 0), width=line)
    row, col = peak_location(resize_heatmap(heatmap, height, width))
    arm = max(2, round(min(height, width) / 40))
    draw.line([col - arm, row, col + arm, row], fill=(255, 255, 255), width=line)
    draw.line([col, row - arm, col, row + arm], fill=(255, 255, 255), width=line)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path
