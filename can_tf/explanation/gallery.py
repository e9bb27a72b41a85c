"""A gallery of heat maps for an evaluation report: for each class, the evaluated image the model
was most confident about among those labelled positive.

A reader of a report should see what the model looks at when it is right, and whether that is the
finding or a shortcut (text markers, tubes, the image border). Picking the top-scoring true
positive per class gives that at a glance; a class without a labelled positive in the evaluated
split is left out, and the caption says which image, its label and the probability.

Example:
    >>> from can_tf.explanation.gallery import pick_examples
    >>> import numpy as np
    >>> y = np.array([[1, 0], [1, 1], [0, 1]], "float32"); p = np.array([[.9, .1], [.6, .4], [.2, .8]])
    >>> pick_examples(y, p, ["Edema", "Mass"], limit=2)
    [(0, 0), (2, 1)]
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def pick_examples(y_true, y_prob, class_names: Sequence[str], limit: int = 6) -> list:
    """``[(row, class index)]``: per class in order, the labelled-positive row with the highest
    probability, each row used once, at most ``limit``."""
    y_true, y_prob = np.asarray(y_true, np.float64), np.asarray(y_prob, np.float64)
    picked, used = [], set()
    for c in range(len(class_names)):
        if len(picked) >= limit:
            break
        rows = [int(r) for r in np.flatnonzero(y_true[:, c] == 1) if int(r) not in used]
        if not rows:
            continue
        best = max(rows, key=lambda r: (y_prob[r, c], -r))
        picked.append((best, c))
        used.add(best)
    return picked


def gallery_items(predictor, paths: Sequence[str], y_true, y_prob, *, limit: int = 6,
                  method: str = "gradcam") -> list:
    """``[{"title", "caption", "png"}]`` heat maps of :func:`pick_examples`, ready for
    :func:`can_tf.evaluation.html_report.render_html`.

    ``predictor`` must hold a Keras model (run directory or ``.keras``); ``y_prob`` are the
    probabilities the report shows (calibrated when the run is), which the captions quote.
    """
    from can_tf.explanation.cam import HeatmapExplainer
    from can_tf.explanation.overlay import overlay_png
    from can_tf.inputs import load_images

    class_names = predictor.class_names
    examples = pick_examples(y_true, y_prob, class_names, limit=limit)
    if not examples:
        return []
    explainer = HeatmapExplainer(predictor.keras_model, method=method, branch="fused")
    batch = load_images([paths[row] for row, _ in examples], predictor.image_size, aspect=predictor.aspect,
                        max_pixels=predictor.max_pixels, keep_originals=True)
    items = []
    for (row, c), path in zip(examples, [paths[row] for row, _ in examples]):
        if str(path) in batch.errors:
            continue
        index = batch.paths.index(str(path))
        heatmap = explainer(batch.images[index:index + 1], c)[0]
        probability = float(y_prob[row, c])
        png = overlay_png(batch.originals[index], heatmap, class_name=class_names[c], probability=probability,
                          method=method, title=Path(path).name)
        items.append({"title": f"{class_names[c]}: {Path(path).name}",
                      "caption": f"labelled {class_names[c]}; the model's probability {probability:.3f} "
                                 f"(the highest among this split's labelled {class_names[c]} images)",
                      "png": png})
    return items
