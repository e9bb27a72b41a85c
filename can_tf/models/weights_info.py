"""What an imported backbone weights file carries besides its weights: where they came from and the
input scaling they were trained with.

A weights file written by ``can-tf weights import`` is a Keras ``.weights.h5`` file of a backbone
built by :func:`can_tf.models.backbones.build_backbone`; this module stores one JSON document in the
file's root attributes (key ``can_tf_weights_info``), so the facts travel inside the one file and
cannot be separated from the weights. Keras ignores the attribute when it loads the weights.

The ``preprocessing`` field names an :class:`can_tf.models.backbones.ImagePreprocessing` mode: the
input scaling applied inside the graph, so callers keep feeding pixels in ``[0, 255]`` whatever the
weights were trained with (torchxrayvision: ``[-1024, 1024]``; torchvision: ImageNet mean/std).

Example:
    >>> import os, tempfile, h5py
    >>> from can_tf.models.weights_info import WeightsInfo, read_weights_info, write_weights_info
    >>> path = os.path.join(tempfile.mkdtemp(), "b.weights.h5")
    >>> h5py.File(path, "w").close()
    >>> write_weights_info(path, WeightsInfo(backbone="densenet121", preprocessing="xrv",
    ...                                      source="densenet121-res224-all", framework="torchxrayvision"))
    >>> read_weights_info(path).preprocessing
    'xrv'
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

ATTRIBUTE = "can_tf_weights_info"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """Provenance and input scaling of one backbone weights file.

    Attributes:
        backbone: the :data:`can_tf.models.backbones.BACKBONES` name the weights fit.
        preprocessing: the ``ImagePreprocessing`` mode they expect (e.g. ``"xrv"``, ``"torch"``).
        source: the checkpoint file or torchxrayvision weight name they were imported from.
        framework: ``"torchxrayvision"``, ``"torchvision"`` (a torchvision-layout state dict), ...
        sha256: of the source checkpoint file, when there was one.
        input_channels: input channels of the source model's first convolution (1 for
            torchxrayvision's gray models; mapped onto the backbone's RGB input).
        image_size: the input size the source model was trained at, when known.
        notes: free text shown to users (e.g. the key prefix that was stripped).
    """

    backbone: str
    preprocessing: str
    source: str
    framework: str
    sha256: Optional[str] = None
    input_channels: int = 3
    image_size: Optional[int] = None
    notes: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WeightsInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def write_weights_info(path, info: WeightsInfo) -> None:
    """Stores ``info`` in the root attributes of the HDF5 weights file at ``path`` (in place)."""
    import h5py

    with h5py.File(os.fspath(path), "a") as f:
        f.attrs[ATTRIBUTE] = json.dumps(info.to_dict(), sort_keys=True)


def read_weights_info(path) -> Optional[WeightsInfo]:
    """The :class:`WeightsInfo` of a weights file, or ``None`` for a file without one (a plain
    Keras weights file) or a file that is not HDF5."""
    import h5py

    try:
        with h5py.File(os.fspath(path), "r") as f:
            raw = f.attrs.get(ATTRIBUTE)
    except OSError:
        return None
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    return WeightsInfo.from_dict(json.loads(raw))
