"""Heat maps for a list of image files: overlays on disk and, with boxes, a localisation table.

:func:`explain_files` is what ``can-tf explain`` runs. Heat maps are computed at the model's input
size; overlays are drawn on the image as read, shown at 512 to 1024 px (smaller images are scaled
up, larger ones down: :func:`can_tf.explanation.overlay.render_overlay`) with a colour bar and a
caption of class, probability and method, named after the original file
(``00000001_000_Cardiomegaly_gradcam.png``). With a box file, each image that has a box of the
explained class is scored (:mod:`can_tf.explanation.localization`) at the heat map's resolution;
``result.box_summary`` says how many inputs have such a box, and when none has,
``result.localization`` is None and ``result.localization_note`` says so (no table of NaNs).

Box coordinates are scaled from the space they were drawn in: ``box_space="image"`` (default)
means each image file's own pixels, right for the phantom data and for the NIH release as
published (1024 px images, boxes in 1024 px). For copies resized after the boxes were drawn (the
512 px NIH sample beside this project), give the side the boxes refer to: ``box_space=1024``.
A model trained with ``data.aspect=pad`` or ``crop`` saw a non-square file as a padded or cropped
square; its overlays show that square and the boxes move with it (:func:`can_tf.images.aspect_window`).

Example:
    >>> from can_tf.explanation.explain import explain_files
    >>> result = explain_files("runs/small-1a2b3c4d", ["phantom/images"], "Cardiomegaly",
    ...                        out_dir="heatmaps", bbox_file="phantom/BBox_List_2017.csv")  # doctest: +SKIP
    >>> result.localization.loc[0, ["finding", "hit_rate", "chance"]]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from can_tf.explanation.localization import Box
from can_tf.images import aspect_window

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass
class ExplanationResult:
    """Overlays written, per-image probabilities, errors and (with boxes) localisation scores."""

    overlays: dict  # input path -> overlay PNG path
    probabilities: dict  # input path -> probability of the explained class
    errors: dict  # input path -> reason it was skipped
    records: list  # LocalizationRecord per scored (image, box)
    localization: Optional[object] = None  # pandas DataFrame from localization_table, or None
    localization_path: Optional[Path] = None
    class_name: str = ""  # the explained class, spelt as the model names it
    box_summary: Optional[str] = None  # with boxes: how many inputs have a box of the class
    localization_note: Optional[str] = None  # with boxes but no score: why there is no table


def _boxes_on_square(boxes, box_space, decoded: tuple, aspect: str) -> list:
    """Boxes drawn in ``box_space`` moved into the pixels of the overlay's image: the file as decoded
    (height, width ``decoded``), padded or cropped by the model's aspect policy."""
    height, width = decoded
    side_x, side_y = (float(box_space),) * 2 if box_space != "image" else (float(width), float(height))
    on_file = [b.scaled(width / side_x, height / side_y) for b in boxes]
    window = aspect_window(height, width, aspect)
    if window is None:  # stretch: the overlay is the file itself
        return on_file
    top, left, _ = window
    return [Box(b.x - left, b.y - top, b.w, b.h) for b in on_file]


def explain_files(
    model,
    inputs: Sequence[str],
    class_name: str,
    *,
    method: str = "gradcam",
    branch: str = "fused",
    out_dir: PathLike = "heatmaps",
    bbox_file: Optional[PathLike] = None,
    box_space: Union[str, int] = "image",
    iou_threshold: float = 0.5,
    batch_size: int = 8,
    only_with_boxes: bool = False,
    on_batch: Optional[Callable[[int], None]] = None,
) -> ExplanationResult:
    """Writes one overlay PNG per readable input and scores localisation against ``bbox_file``.

    Args:
        model: a run directory or ``.keras`` file (heat maps need the Keras graph), or a loaded
            :class:`can_tf.predictor.Predictor`.
        inputs: image files, folders or CSV lists (see :func:`can_tf.inputs.expand_inputs`).
        class_name: the class to explain, one of the model's class names (matched as
            :func:`can_tf.labels.match_class_names` does: ``cardiomegaly`` finds ``Cardiomegaly``).
        method, branch: see :class:`can_tf.explanation.cam.HeatmapExplainer`.
        out_dir: folder for the overlays and ``localization.csv``.
        bbox_file: NIH-format box file; boxes of ``class_name`` are drawn and scored.
        box_space: ``"image"`` (each file's own pixels) or the side in pixels the boxes refer to.
        iou_threshold: heat map fraction of its peak that counts as "hot" for IoU.
        only_with_boxes: explain only the inputs that have a box of ``class_name``.

    Raises:
        DataError: an unknown class (naming the closest), an unreadable box file, or
            ``only_with_boxes`` when no input has a box of the class (``nothing written: ...``).
    """
    from can_tf.explanation.cam import HeatmapExplainer
    from can_tf.data.errors import DataError
    from can_tf.explanation.localization import (
        BoxCoverage,
        boxes_for,
        localization_table,
        read_boxes,
        score_heatmap,
    )
    from can_tf.explanation.overlay import overlay_filename, save_overlay
    from can_tf.inputs import expand_inputs, load_images
    from can_tf.labels import match_class_names
    from can_tf.predictor import Predictor

    if box_space != "image":
        try:
            if float(box_space) <= 0:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"--bbox-space must be 'image' or a positive number of pixels; got {box_space!r}") from None
    predictor = model if isinstance(model, Predictor) else Predictor.load(model, use_thresholds=False)
    (class_name,) = match_class_names(class_name, predictor.class_names, what="--class")
    class_index = predictor.class_names.index(class_name)
    explainer = HeatmapExplainer(predictor.keras_model, method=method, branch=branch)

    paths = expand_inputs(inputs)
    boxes = coverage = None
    if bbox_file is not None:
        boxes = read_boxes(bbox_file)
        coverage = BoxCoverage.count(boxes, [Path(p).name for p in paths], [class_name], bbox_file)
        boxes = boxes[boxes["finding"] == class_name]
        if only_with_boxes:
            with_box = set(boxes["image_index"])
            paths = [p for p in paths if Path(p).name in with_box]
            if not paths:
                raise DataError(coverage.nothing_written())
    out_dir = Path(out_dir)
    result = ExplanationResult(overlays={}, probabilities={}, errors={}, records=[], class_name=class_name,
                               box_summary=coverage.summary() if coverage is not None else None)
    size = predictor.image_size
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch = load_images(chunk, size, aspect=predictor.aspect, max_pixels=predictor.max_pixels,
                            keep_originals=True)
        result.errors.update(batch.errors)
        if batch.paths:
            heatmaps = explainer(batch.images, class_index)
            probabilities = predictor.predict(batch.images)[:, class_index]
            for path, original, decoded, heatmap, probability in zip(batch.paths, batch.originals, batch.sizes,
                                                                      heatmaps, probabilities):
                image_index = Path(path).name
                image_boxes = boxes_for(boxes, image_index) if boxes is not None else []
                on_original = _boxes_on_square(image_boxes, box_space, decoded, predictor.aspect)
                side_y, side_x = original.shape
                on_heatmap = [b.scaled(size / side_x, size / side_y) for b in on_original]
                target = out_dir / overlay_filename(path, class_name, method, branch)
                save_overlay(target, original, heatmap, boxes=on_original, class_name=class_name,
                             probability=float(probability), method=method, branch=branch,
                             title=Path(path).name)
                result.overlays[path] = target
                result.probabilities[path] = float(probability)
                for box in on_heatmap:
                    result.records.append(score_heatmap(image_index, class_name, heatmap, box, iou_threshold))
        if on_batch is not None:
            on_batch(len(chunk))
    if boxes is not None and result.records:
        result.localization = localization_table(result.records)
        result.localization_path = out_dir / "localization.csv"
        out_dir.mkdir(parents=True, exist_ok=True)
        result.localization.to_csv(result.localization_path, index=False, float_format="%.4f")
    elif boxes is not None:
        result.localization_note = coverage.no_scores() or (
            f"no localisation scores: no image with a box of {class_name} could be read")
    return result
