"""How well a heat map points at a finding whose bounding box is known.

Two scores, per class, against boxes in the NIH ``BBox_List_2017.csv`` format:

- **hit rate**: the fraction of boxes that contain the heat map's peak (its arg-max pixel);
- **IoU**: intersection over union between the box and the heat map thresholded at a fraction of
  its maximum (``threshold=0.5`` keeps the pixels at least half as hot as the peak).

Chance level for the hit rate is the box's share of the image: a peak dropped uniformly at random
lands in a box covering 5 % of the image 5 % of the time. :func:`localization_table` reports it
beside each class so a hit rate can be read against it.

Pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``; it belongs to a box when its centre
``(col + 0.5, row + 0.5)`` lies inside the box.

Example:
    >>> import numpy as np
    >>> heatmap = np.zeros((8, 8)); heatmap[2, 5] = 1.0
    >>> box = Box(x=4, y=1, w=3, h=3)  # columns 4..6, rows 1..3
    >>> peak_in_box(heatmap, box)
    True
    >>> round(heatmap_iou(heatmap, box), 4)  # 1 hot pixel vs 9 box pixels: 1 / 9
    0.1111
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from can_tf.data.errors import DataError

# The NIH box file spells one class differently from the label file.
CLASS_ALIASES = {"Infiltrate": "Infiltration"}


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: top-left corner ``(x, y)``, width ``w``, height ``h``."""

    x: float
    y: float
    w: float
    h: float

    def scaled(self, sx: float, sy: float) -> "Box":
        """The same box in an image resized by ``sx`` horizontally and ``sy`` vertically."""
        return Box(self.x * sx, self.y * sy, self.w * sx, self.h * sy)

    def area_fraction(self, height: int, width: int) -> float:
        """The share of a ``height x width`` image the box covers (clipped to the image)."""
        return float(box_mask((height, width), self).mean())


def read_boxes(path: str | Path) -> pd.DataFrame:
    """Reads a box file in the NIH format into ``image_index, finding, x, y, w, h`` columns.

    The NIH file has the header ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the four numbers
    sit in the third to sixth columns. ``.csv.gz`` is read too. ``Infiltrate`` becomes
    ``Infiltration`` so that box classes match the label names.

    Raises:
        DataError: naming the file, and the row, when the file cannot be read or a box is malformed.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, header=0, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read bounding box file {path}: {e}") from None
    if raw.shape[1] < 6:
        raise DataError(
            f"bounding box file {path} has {raw.shape[1]} columns; expected the NIH layout "
            f"'Image Index,Finding Label,Bbox [x,y,w,h]' with x, y, w, h in columns 3 to 6"
        )
    rows = []
    for i, values in enumerate(raw.itertuples(index=False), start=2):  # row 1 is the header
        image_index, finding = values[0].strip(), values[1].strip()
        try:
            x, y, w, h = (float(v) for v in values[2:6])
        except ValueError:
            raise DataError(
                f"{path}, row {i}: box {list(values[2:6])!r} of {image_index!r} is not four numbers"
            ) from None
        if not image_index or not finding:
            raise DataError(f"{path}, row {i}: empty image name or finding label")
        if w <= 0 or h <= 0:
            raise DataError(f"{path}, row {i}: box of {image_index!r} has non-positive size {w} x {h}")
        rows.append((image_index, CLASS_ALIASES.get(finding, finding), x, y, w, h))
    return pd.DataFrame(rows, columns=["image_index", "finding", "x", "y", "w", "h"])


def box_mask(shape: Sequence[int], box: Box) -> np.ndarray:
    """A boolean ``(height, width)`` mask of the pixels whose centres lie inside ``box``."""
    height, width = shape
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    inside_cols = (cols >= box.x) & (cols <= box.x + box.w)
    inside_rows = (rows >= box.y) & (rows <= box.y + box.h)
    return inside_rows[:, None] & inside_cols[None, :]


def peak_location(heatmap: np.ndarray) -> tuple:
    """``(row, col)`` of the heat map's maximum (the first one where several pixels tie)."""
    heatmap = np.asarray(heatmap)
    return tuple(int(i) for i in np.unravel_index(np.argmax(heatmap), heatmap.shape))


def peak_in_box(heatmap: np.ndarray, box: Box) -> bool:
    """Whether the heat map's peak pixel lies inside the box."""
    row, col = peak_location(heatmap)
    return bool(box_mask(np.shape(heatmap), box)[row, col])


def heatmap_iou(heatmap: np.ndarray, box: Box, threshold: float = 0.5) -> float:
    """IoU of the box with the pixels at least ``threshold`` times the heat map's maximum.

    A heat map that is zero everywhere selects nothing and scores 0.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    peak = heatmap.max()
    if peak <= 0:
        return 0.0
    hot = heatmap >= threshold * peak
    inside = box_mask(heatmap.shape, box)
    union = np.logical_or(hot, inside).sum()
    return float(np.logical_and(hot, inside).sum() / union) if union else 0.0


@dataclasses.dataclass
class LocalizationRecord:
    """One heat map scored against one box."""

    image_index: str
    finding: str
    hit: bool
    iou: float
    box_fraction: float  # chance level of a hit for this box


def score_heatmap(image_index: str, finding: str, heatmap: np.ndarray, box: Box,
                  threshold: float = 0.5) -> LocalizationRecord:
    """Scores one heat map (already at the box's pixel scale) against one box."""
    height, width = np.shape(heatmap)
    return LocalizationRecord(
        image_index=image_index,
        finding=finding,
        hit=peak_in_box(heatmap, box),
        iou=heatmap_iou(heatmap, box, threshold),
        box_fraction=box.area_fraction(height, width),
    )


def localization_table(records: Iterable[LocalizationRecord]) -> pd.DataFrame:
    """Per-class summary: boxes, hits, hit rate, chance hit rate, mean IoU (plus an ``all`` row).

    Example:
        >>> recs = [LocalizationRecord("a.png", "Mass", True, 0.5, 0.1),
        ...         LocalizationRecord("b.png", "Mass", False, 0.0, 0.1)]
        >>> localization_table(recs).loc[0, ["finding", "hit_rate", "chance"]].tolist()
        ['Mass', 0.5, 0.1]
    """
    frame = pd.DataFrame([dataclasses.asdict(r) for r in records],
                         columns=["image_index", "finding", "hit", "iou", "box_fraction"])

    def summary(group: pd.DataFrame, name: str) -> dict:
        return {
            "finding": name,
            "boxes": int(len(group)),
            "hits": int(group["hit"].sum()),
            "hit_rate": float(group["hit"].mean()) if len(group) else float("nan"),
            "chance": float(group["box_fraction"].mean()) if len(group) else float("nan"),
            "mean_iou": float(group["iou"].mean()) if len(group) else float("nan"),
        }

    rows = [summary(group, name) for name, group in frame.groupby("finding", sort=True)]
    rows.append(summary(frame, "all"))
    return pd.DataFrame(rows, columns=["finding", "boxes", "hits", "hit_rate", "chance", "mean_iou"])


def boxes_for(boxes: pd.DataFrame, image_index: str, finding: Optional[str] = None) -> list:
    """The boxes of one image (optionally of one finding) from :func:`read_boxes`' table."""
    selected = boxes[boxes["image_index"] == image_index]
    if finding is not None:
        selected = selected[selected["finding"] == finding]
    return [Box(r.x, r.y, r.w, r.h) for r in selected.itertuples(index=False)]

