"""Unknown labels: NaN in ``y_true`` is masked out of every loss in this package.

ChestX-ray14 labels every image, but merged or relabelled data sets leave some findings unknown;
those entries are stored as NaN (see the data table contract). A loss must neither count them nor
let the NaN reach the gradient. Multiplying a NaN term by zero gives NaN (and ``where`` on a NaN
term still back-propagates NaN through the unselected branch), so the labels are replaced *before*
any term is computed, and the finished terms are then zeroed with the mask.

Example:
    >>> import numpy as np
    >>> from can_tf.losses.masking import mask_unknown_labels, masked_mean
    >>> labels, known = mask_unknown_labels(np.array([[1.0, np.nan, 0.0]]))
    >>> labels.numpy().tolist(), known.numpy().tolist()
    ([[1.0, 0.0, 0.0]], [[1.0, 0.0, 1.0]])
    >>> float(masked_mean(np.array([[2.0, 99.0, 4.0]]), known)[0])
    3.0
"""

from __future__ import annotations

from keras import ops


def mask_unknown_labels(y_true):
    """Splits labels into (labels with NaN replaced by 0, float mask of known entries).

    Both are float32 with the shape of ``y_true``. The replaced value is irrelevant (its terms are
    zeroed by the mask); it only has to be finite so that no NaN enters the computation.
    """
    y_true = ops.cast(y_true, "float32")
    known = ops.logical_not(ops.isnan(y_true))
    labels = ops.where(known, y_true, ops.zeros_like(y_true))
    return labels, ops.cast(known, "float32")


def masked_mean(values, known, axis=-1):
    """Mean of ``values`` over ``axis`` counting only entries where ``known`` is 1.

    A row with no known entry gives 0 (not NaN): it adds nothing to the loss and no gradient.
    """
    values = ops.cast(values, "float32")
    known = ops.cast(known, "float32")
    total = ops.sum(ops.where(known > 0, values, ops.zeros_like(values)), axis=axis)
    return ops.divide_no_nan(total, ops.sum(known, axis=axis))
