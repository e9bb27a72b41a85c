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
        >>> row = localization_table(recs).loc[0]
        >>> row["finding"], float(row["hit_rate"]), float(row["chance"])
        ('Mass', 0.5, 0.1)
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



@dataclasses.dataclass
class BoxCoverage:
    """How many of the images being explained have a box of each requested class in a box file.

    Built by :meth:`count`; its methods write the lines ``can-tf explain`` prints, so that a
    localisation table is shown only for classes some image has a box of.

    Example:
        >>> boxes = pd.DataFrame({"image_index": ["a.png", "b.png", "x.png"], "finding": ["Mass", "Mass", "Nodule"],
        ...                       "x": 0.0, "y": 0.0, "w": 1.0, "h": 1.0})
        >>> coverage = BoxCoverage.count(boxes, ["a.png", "c.png"], ["Nodule"], "BBox_List_2017.csv")
        >>> coverage.summary()
        'box file BBox_List_2017.csv: 0 of 2 images have a box of Nodule (boxes there: Mass 2, Nodule 1)'
        >>> coverage.no_scores()
        'no localisation scores: none of the images has a box of Nodule'
        >>> coverage.nothing_written()
        'nothing written: none of the 2 images has a box of Nodule in BBox_List_2017.csv (boxes there: Mass 2, Nodule 1)'
    """

    box_file: str
    images: int  # images being explained
    boxed: dict  # class -> how many of those images have at least one box of it
    boxes_per_class: dict  # finding -> boxes of it in the whole file

    @classmethod
    def count(cls, boxes: pd.DataFrame, image_names: Sequence[str], classes: Sequence[str],
              box_file) -> "BoxCoverage":
        """Counts from :func:`read_boxes`' table, the images' file names and the classes explained."""
        from can_tf.labels import CLASS_NAMES

        names = set(image_names)
        boxed = {c: int(boxes.loc[boxes["finding"] == c, "image_index"].drop_duplicates().isin(names).sum())
                 for c in classes}
        counts = boxes["finding"].value_counts()
        order = sorted(counts.index, key=lambda f: (CLASS_NAMES.index(f) if f in CLASS_NAMES else len(CLASS_NAMES), f))
        return cls(box_file=str(box_file), images=len(image_names), boxed=boxed,
                   boxes_per_class={f: int(counts[f]) for f in order})

    @property
    def unboxed(self) -> list:
        """The requested classes no image has a box of."""
        return [c for c, n in self.boxed.items() if n == 0]

    @property
    def boxes_there(self) -> str:
        """``boxes there: Atelectasis 180, Cardiomegaly 146, ...``: what the file has boxes of."""
        return "boxes there: " + (", ".join(f"{f} {n:,}" for f, n in self.boxes_per_class.items()) or "none")

    def summary(self) -> str:
        """``box file <name>: 2 of 3 images have a box of Cardiomegaly (boxes there: ...)``."""
        counted = ", ".join(f"{n:,} of {self.images:,} image{'' if self.images == 1 else 's'} "
                            f"{'has' if self.images == 1 else 'have'} a box of {c}" for c, n in self.boxed.items())
        return f"box file {Path(self.box_file).name}: {counted} ({self.boxes_there})"

    def no_scores(self) -> Optional[str]:
        """What to print instead of a localisation table for the classes no image has a box of."""
        if not self.unboxed:
            return None
        return f"no localisation scores: none of the images has a box of {' or '.join(self.unboxed)}"

    def nothing_written(self) -> str:
        """Why explaining only the boxed images leaves nothing to do."""
        which = ("the image has no box of" if self.images == 1
                 else f"none of the {self.images:,} images has a box of")
        return f"nothing written: {which} {' or '.join(self.boxed)} in {self.box_file} ({self.boxes_there})"
