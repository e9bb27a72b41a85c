"""Class activation maps (Grad-CAM, Grad-CAM++, Score-CAM) for CAN and baseline models.

The maps come from ``tf-keras-vis``; this module decides *where* to look and *what* to explain:

- **output** (``branch``): ``"fused"`` explains the fused logits (what the model predicts);
  ``"branch_1"`` / ``"branch_2"`` explain one CAN branch's own logits. The baseline has only
  ``"fused"``.
- **feature maps**: the last spatial (4-D) tensors the chosen output depends on, found by walking
  the Keras graph back from that output. For a CAN branch this is that branch's attended feature
  map; for the fused output it is both attended maps, since the fused head reads both. Their maps
  are computed separately, upsampled to the input size and summed before normalising: for Grad-CAM
  this equals Grad-CAM over the two maps' channels taken together (the fused head is linear in
  their pooled channels). For the baseline it is the backbone's last feature map.
- **score**: the class's logit for the gradient methods (gradients of a saturated sigmoid vanish);
  Score-CAM ranks masked inputs by the class probability. ``tf-keras-vis``' Score-CAM applies a
  softmax to the model output, so the explained view returns the pair ``(0, logit)``, whose softmax
  is ``(1 - p, p)`` with ``p = sigmoid(logit)``: the score is exactly the sigmoid probability.

Maps are returned at the input size, one per image, scaled to [0, 1] (0 where the map is flat).

Example:
    >>> from can_tf.explanation.cam import HeatmapExplainer
    >>> explainer = HeatmapExplainer(model, method="gradcam", branch="fused")  # doctest: +SKIP
    >>> maps = explainer(images, class_index=1)  # images: float32 (B, S, S, 1) in [0, 255]  # doctest: +SKIP
    >>> maps.shape, float(maps.max())  # doctest: +SKIP
    ((4, 64, 64), 1.0)
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from can_tf.images import check_pixels

METHODS = ("gradcam", "gradcam++", "scorecam")
BRANCHES = ("fused", "branch_1", "branch_2")


def model_outputs(model) -> dict:
    """``{output name: KerasTensor}`` of a functional model: a dict-output model's own names, or
    ``{"fused": output}`` for a single-output model (the baseline, or an inference view)."""
    structure = getattr(model, "_outputs_struct", None)
    if structure is None:
        structure = model.output
    if isinstance(structure, dict):
        return dict(structure)
    outputs = model.outputs
    if len(outputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(outputs)} unnamed outputs; expected a dict "
                         f"of logits or one output")
    return {"fused": outputs[0]}


def spatial_sources(tensor) -> list:
    """The nearest 4-D tensors (``(B, h, w, c)``, ``h * w > 1``) upstream of ``tensor``.

    Walks the functional graph breadth-first and stops at the first spatial tensor on each path,
    so the attention map inside a CAN block (upstream of the attended features) is never chosen.
    """
    found, seen, frontier = [], set(), [tensor]
    while frontier:
        next_frontier = []
        for current in frontier:
            if id(current) in seen:
                continue
            seen.add(id(current))
            shape = current.shape
            if current is not tensor and len(shape) == 4 and (shape[1] or 2) * (shape[2] or 2) > 1:
                found.append(current)
                continue
            history = getattr(current, "_keras_history", None)
            if history is None:
                continue
            operation, node_index, _ = history
            node = operation._inbound_nodes[node_index]
            next_frontier.extend(node.input_tensors)
        frontier = next_frontier
    # One tensor may be reached by several paths; keep the first, in graph order.
    unique = []
    for t in found:
        if all(t is not u for u in unique):
            unique.append(t)
    return unique


def _tensor_tap(tensor):
    """A stand-in Layer whose ``.output`` is ``tensor``.

    ``tf-keras-vis`` takes the feature map as a layer and reads ``layer.output``; the tensors we
    explain may be one of several outputs of a layer (e.g. a cross-attention block returning both
    attended maps), which a layer object cannot name. This tap names the tensor itself.
    """
    import keras

    class _Tap(keras.layers.Layer):
        @property
        def output(self):
            return self._tap_tensor

    tap = _Tap(name="cam_feature_tap")
    object.__setattr__(tap, "_tap_tensor", tensor)  # bypass Keras attribute tracking
    return tap


class HeatmapExplainer:
    """Heat maps for one output (``branch``) of a CAN or baseline model with one CAM method.

    Args:
        model: a functional Keras model: the training model with dict-of-logits outputs (CAN or
            baseline, as saved in ``best.keras``) or a single-output model.
        method: ``"gradcam"``, ``"gradcam++"`` or ``"scorecam"``.
        branch: ``"fused"``, ``"branch_1"`` or ``"branch_2"`` (the last two on CAN only).
        scorecam_max_channels: Score-CAM forwards one masked copy of the input per feature
            channel; above this many channels the highest-variance ones are used (Faster
            Score-CAM), which keeps a DenseNet's 1024-channel map affordable on a CPU.
    """

    def __init__(self, model, method: str = "gradcam", branch: str = "fused",
                 scorecam_max_channels: Optional[int] = 64):
        if method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        outputs = model_outputs(model)
        if branch not in outputs:
            raise ValueError(
                f"--branch {branch!r} is not an output of this model (outputs: "
                f"{', '.join(outputs)}); the baseline has only 'fused'"
            )
        self.method = method
        self.branch = branch
        self.scorecam_max_channels = scorecam_max_channels
        logits = outputs[branch]
        if _is_probability(logits):
            # An inference view ends in a sigmoid; explain the logit beneath it.
            logits = _sigmoid_input(logits)
        self.features = spatial_sources(logits)
        if not self.features:
            raise ValueError(f"no spatial feature map found upstream of output {branch!r} of {model.name!r}")
        self.num_classes = int(logits.shape[-1])
        self._model_inputs = model.inputs
        self._logits = logits
        self._views = {}

    def __call__(self, images: np.ndarray, class_index: int) -> np.ndarray:
        """float32 ``(B, S, S, C)`` images in [0, 255] -> float32 ``(B, S, S)`` maps in [0, 1]."""
        images = check_pixels(images)
        if not 0 <= class_index < self.num_classes:
            raise ValueError(f"class index {class_index} out of range for {self.num_classes} classes")
        total = None
        for feature in self.features:
            cam = np.asarray(self._one_map(images, class_index, feature), dtype=np.float32)
            total = cam if total is None else total + cam
        return _normalise(total)

    def _one_map(self, images: np.ndarray, class_index: int, feature) -> np.ndarray:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.scorecam import Scorecam

        import keras

        tap = _tensor_tap(feature)
        common = dict(penultimate_layer=tap, seek_penultimate_conv_layer=False, normalize_cam=False,
                      expand_cam=True)
        view = self._view(class_index)
        if self.method == "scorecam":
            channels = int(feature.shape[-1])
            max_n = self.scorecam_max_channels
            max_n = None if max_n is None or max_n >= channels else max_n
            # Score-CAM runs model.predict, whose progress bar would flood the terminal.
            interactive = keras.config.is_interactive_logging_enabled()
            keras.config.disable_interactive_logging()
            try:
                return Scorecam(view)(lambda output: output[:, 1], images, max_N=max_n,
                                      batch_size=64, **common)
            finally:
                if interactive:
                    keras.config.enable_interactive_logging()
        cls = Gradcam if self.method == "gradcam" else GradcamPlusPlus
        return cls(view)(lambda output: output[:, 0], images, **common)

    def _view(self, class_index: int):
        """A model from the input to one class's logit ``(B, 1)``; for Score-CAM the pair
        ``(0, logit)`` ``(B, 2)`` (see the module docstring). Built once per class."""
        import keras

        if class_index not in self._views:
            logit = keras.layers.Lambda(lambda z: z[:, class_index:class_index + 1],
                                        name=f"cam_class_{class_index}")(self._logits)
            if self.method == "scorecam":
                logit = keras.layers.Lambda(
                    lambda z: keras.ops.concatenate([keras.ops.zeros_like(z), z], axis=-1),
                    name="cam_logit_pair")(logit)
            self._views[class_index] = keras.Model(inputs=self._model_inputs, outputs=logit,
                                                   name=f"cam_view_{self.branch}_{class_index}")
        return self._views[class_index]


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Per image, to [0, 1] by min and max; a flat map becomes all zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def _is_probability(tensor) -> bool:
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return False
    operation = history[0]
    activation = getattr(operation, "activation", None)
    name = getattr(activation, "__name__", "") or getattr(operation, "name", "")
    return "sigmoid" in name and type(operation).__name__ in ("Activation", "Dense")


def _sigmoid_input(tensor):
    operation, node_index, _ = tensor._keras_history
    if type(operation).__name__ != "Activation":
        raise ValueError(
            f"cannot explain {operation.name!r}: its sigmoid sits inside a Dense layer, so there is "
            f"no logit tensor to explain; explain the training model (dict of logits) instead"
        )
    return operation._inbound_nodes[node_index].input_tensors[0]
