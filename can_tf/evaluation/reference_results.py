"""Published ChestX-ray14 AUROCs, to print beside our own numbers, each with its source and split.

Numbers from studies on different test splits are not comparable: CheXNet and its reimplementation
used a random 70/10/20 patient split, the CAN paper and most later work the official
``train_val_list.txt`` / ``test_list.txt`` split. Every entry therefore carries its ``split`` label,
its ``source`` and whether the number was checked against that source; reports print them.

Example:
    >>> from can_tf.evaluation.reference_results import get_reference
    >>> ref = get_reference("CheXNet 2017")
    >>> ref.per_class["Hernia"], ref.mean, ref.split
    (0.9164, 0.841, 'random 70/10/20 patient split')
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping, Optional

from can_tf.labels import CLASS_NAMES

RANDOM_SPLIT = "random 70/10/20 patient split"
OFFICIAL_SPLIT_UNVERIFIED = "official split (secondary source, unverified)"
OFFICIAL_SPLIT = "official split"
SPLIT_NOT_STATED = "split not stated in source"

_SECONDARY = "secondary source (not checked against the paper)"
_CHEXNET_TABLE = (
    "README of the public repository arnoweng/CheXNet, which reproduces CheXNet's Table 1 "
    "(Rajpurkar et al. 2017)"
)


@dataclasses.dataclass(frozen=True)
class ReferenceResult:
    """One published result: per-class AUROCs (or only a mean), with source and split."""

    name: str
    split: str
    source: str
    verified: bool
    mean: float
    per_class: Optional[Mapping[str, float]] = None
    description: str = ""
    decimals: int = 3  # as published: reports print the values with this many decimals

    def format(self, value: float) -> str:
        """A published value as printed in its source (e.g. ``0.8870``, not ``0.887``)."""
        return f"{value:.{self.decimals}f}"

    @property
    def label(self) -> str:
        """Column heading for reports: name and split."""
        return f"{self.name} ({self.split})"


def _per_class(*values: float) -> Mapping[str, float]:
    assert len(values) == len(CLASS_NAMES)
    return types.MappingProxyType(dict(zip(CLASS_NAMES, values)))


# Per-class tables, in CLASS_NAMES order (Atelectasis ... Hernia).
PER_CLASS_REFERENCES = (
    ReferenceResult(
        name="Wang 2017",
        split=SPLIT_NOT_STATED,
        source=_CHEXNET_TABLE,
        verified=True,
        mean=0.738,
        per_class=_per_class(
            0.716, 0.807, 0.784, 0.609, 0.706, 0.671, 0.633,
            0.806, 0.708, 0.835, 0.815, 0.769, 0.708, 0.767,
        ),  # fmt: skip
        description="ChestX-ray8/14 paper (Wang et al., CVPR 2017)",
    ),
    ReferenceResult(
        name="Yao 2017",
        split=SPLIT_NOT_STATED,
        source=_CHEXNET_TABLE,
        verified=True,
        mean=0.803,
        per_class=_per_class(
            0.772, 0.904, 0.859, 0.695, 0.792, 0.717, 0.713,
            0.841, 0.788, 0.882, 0.829, 0.767, 0.765, 0.914,
        ),  # fmt: skip
        description="Yao et al. 2017, label dependencies with an LSTM",
    ),
    ReferenceResult(
        name="CheXNet 2017",
        split=RANDOM_SPLIT,
        source=_CHEXNET_TABLE,
        verified=True,
        mean=0.841,
        per_class=_per_class(
            0.8094, 0.9248, 0.8638, 0.7345, 0.8676, 0.7802, 0.7680,
            0.8887, 0.7901, 0.8878, 0.9371, 0.8047, 0.8062, 0.9164,
        ),  # fmt: skip
        description="Rajpurkar et al. 2017, DenseNet-121",
        decimals=4,
    ),
    ReferenceResult(
        name="arnoweng reimpl.",
        split=RANDOM_SPLIT,
        source="README of the public repository arnoweng/CheXNet",
        verified=True,
        mean=0.843,
        per_class=_per_class(
            0.8294, 0.9165, 0.8870, 0.7143, 0.8597, 0.7873, 0.7745,
            0.8726, 0.8142, 0.8932, 0.9254, 0.8304, 0.7831, 0.9104,
        ),  # fmt: skip
        description="PyTorch reimplementation of CheXNet",
        decimals=4,
    ),
)

# Means only, on the official split.
OFFICIAL_SPLIT_MEANS = (
    ReferenceResult(
        name="CAN 2019",
        split=OFFICIAL_SPLIT_UNVERIFIED,
        source=_SECONDARY,
        verified=False,
        mean=0.817,
        description="Ma, Wang & Hoi, MICCAI 2019: two DenseNet-121s with cross-attention",
    ),
    ReferenceResult(
        name="Guendel 2018",
        split=OFFICIAL_SPLIT_UNVERIFIED,
        source=_SECONDARY,
        verified=False,
        mean=0.807,
    ),
    ReferenceResult(
        name="Baltruschat 2019",
        split=OFFICIAL_SPLIT_UNVERIFIED,
        source=_SECONDARY,
        verified=False,
        mean=0.806,
    ),
    ReferenceResult(
        name="Hermoza 2020",
        split=OFFICIAL_SPLIT_UNVERIFIED,
        source=_SECONDARY,
        verified=False,
        mean=0.821,
    ),
    ReferenceResult(
        name="Medical-MAE ViT-S",
        split=OFFICIAL_SPLIT,
        source="hustvl/EVA-X classification/README.md",
        verified=True,
        mean=0.823,
    ),
    ReferenceResult(
        name="EVA-X-B",
        split=OFFICIAL_SPLIT,
        source="hustvl/EVA-X classification/README.md",
        verified=True,
        mean=0.835,
    ),
)

REFERENCES = PER_CLASS_REFERENCES + OFFICIAL_SPLIT_MEANS

NOT_COMPARABLE_NOTE = (
    "Random-split and official-split numbers are not comparable: they are measured on different "
    "test patients. Compare a result only with references on the same split."
)


def get_reference(name: str) -> ReferenceResult:
    """The reference called ``name`` (see :data:`REFERENCES`); a clear error lists the choices."""
    for ref in REFERENCES:
        if ref.name == name:
            return ref
    raise KeyError(
        f"unknown reference result {name!r}; choose from {', '.join(r.name for r in REFERENCES)}"
    )
