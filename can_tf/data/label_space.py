"""One label space: every data set's finding names mapped onto can-tf's class names.

Each reader (ChestX-ray14, CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR, the NIH Google-2019
adjudicated labels) reads its publisher's names and hands them to :func:`relabel`, which returns the
labels of the classes a run asks for (``data.class_names``, by default NIH's 14), with NaN where the
data set does not say: a class the data set lacks is unknown, never negative, and the losses mask it.

The mapping (:data:`DATASET_LABELS`) is written out per data set, publisher's spelling -> can-tf
class. Where two data sets name the same finding differently it is one class (NIH ``Effusion`` =
CheXpert ``Pleural Effusion`` = PadChest ``pleural effusion``); where a data set's finding is wider
or narrower than a class it is **not** mapped onto it (CheXpert ``Lung Lesion`` covers NIH ``Mass``
and ``Nodule`` and more, so it is its own class). Composite classes (:data:`COMPOSITES`) join
classes another data set reports together: NIH-Google's ``Nodule or mass`` is can-tf's
``Nodule or Mass`` = NIH ``Mass`` or ``Nodule``. A composite's label follows from its parts (positive
if any part is, negative if all are known negative, else unknown), a part's from a negative
composite (negative), and a model's probability for a composite is the largest of its parts'
(:func:`composite_probabilities`), so an NIH-trained model can be scored on NIH-Google's labels.

Example:
    >>> import numpy as np
    >>> columns = {"Pleural Effusion": np.array([1.0, 0.0]), "Cardiomegaly": np.array([0.0, np.nan])}
    >>> relabel(columns, "chexpert", ["Effusion", "Cardiomegaly", "Hernia"]).tolist()
    [[1.0, 0.0, nan], [0.0, nan, nan]]
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from can_tf.data.errors import DataError, preview
from can_tf.labels import CLASS_NAMES

# Classes beyond NIH's 14 that other data sets label (can-tf's spelling).
EXTRA_CLASSES = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Lung Opacity",
    "Lung Lesion",
    "Fracture",
    "Support Devices",
    "Pleural Other",
    "Airspace Opacity",
    "Nodule or Mass",
)
ALL_CLASSES = tuple(CLASS_NAMES) + EXTRA_CLASSES

# A composite class and the classes it joins (label: any of them; probability: the largest).
COMPOSITES = {"Nodule or Mass": ("Mass", "Nodule")}

_IDENTITY = {name: name for name in CLASS_NAMES}
# CheXpert's 14 observations (Irvin et al. 2019); MIMIC-CXR-JPG's CheXpert and NegBio label files use them too.
_CHEXPERT = {
    "No Finding": "No Finding",
    "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
    "Cardiomegaly": "Cardiomegaly",
    "Lung Opacity": "Lung Opacity",
    "Lung Lesion": "Lung Lesion",
    "Edema": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Effusion",
    "Pleural Other": "Pleural Other",
    "Fracture": "Fracture",
    "Support Devices": "Support Devices",
}

# data set -> {publisher's finding name: can-tf class}
DATASET_LABELS = {
    "chestxray14": {**_IDENTITY, "No Finding": "No Finding"},
    "chexpert": _CHEXPERT,
    "mimic": _CHEXPERT,
    # The four findings of Majkowska et al. 2020 (Radiology), as spelled in their label files.
    "nih-google": {
        "Fracture": "Fracture",
        "Pneumothorax": "Pneumothorax",
        "Airspace opacity": "Airspace Opacity",
        "Nodule or mass": "Nodule or Mass",
    },
    # PadChest (Bustos et al. 2020): entries of the 'Labels' lists, lower-cased and stripped. A label
    # maps where it names the class's finding or a more specific kind of it (PadChest's own taxonomy:
    # 'lobar atelectasis' is an atelectasis); look-alikes that are not the finding stay unmapped
    # (can_tf/data/padchest.py, NEAR_MISSES: 'pseudonodule', 'subcutaneous emphysema', ...).
    "padchest": {
        "normal": "No Finding",
        "atelectasis": "Atelectasis",
        "laminar atelectasis": "Atelectasis",
        "lobar atelectasis": "Atelectasis",
        "segmental atelectasis": "Atelectasis",
        "round atelectasis": "Atelectasis",
        "total atelectasis": "Atelectasis",
        "atelectasis basal": "Atelectasis",
        "cardiomegaly": "Cardiomegaly",
        "pleural effusion": "Effusion",
        "loculated pleural effusion": "Effusion",
        "loculated fissural effusion": "Effusion",
        "infiltrates": "Infiltration",
        "mass": "Mass",
        "pulmonary mass": "Mass",
        "mediastinal mass": "Mass",
        "pleural mass": "Mass",
        "nodule": "Nodule",
        "multiple nodules": "Nodule",
        "pneumonia": "Pneumonia",
        "atypical pneumonia": "Pneumonia",
        "pneumothorax": "Pneumothorax",
        "hydropneumothorax": "Pneumothorax",  # the reader also counts it as 'pleural effusion'
        "consolidation": "Consolidation",
        "pulmonary edema": "Edema",
        "emphysema": "Emphysema",
        "pulmonary fibrosis": "Fibrosis",
        "pleural thickening": "Pleural_Thickening",
        "apical pleural thickening": "Pleural_Thickening",
        "calcified pleural thickening": "Pleural_Thickening",
        "hiatal hernia": "Hernia",
        "fracture": "Fracture",
        "rib fracture": "Fracture",
        "callus rib fracture": "Fracture",
        "clavicle fracture": "Fracture",
        "humeral fracture": "Fracture",
        "vertebral fracture": "Fracture",
    },
    # VinDr-CXR (Nguyen et al. 2022, PhysioNet 1.0.0): image-level label columns, as spelled in
    # annotations/image_labels_{train,test}.csv; the others are not mapped (can_tf/data/vindr.py, UNMAPPED).
    "vindr": {
        "No finding": "No Finding",
        "Atelectasis": "Atelectasis",
        "Cardiomegaly": "Cardiomegaly",
        "Pleural effusion": "Effusion",
        "Infiltration": "Infiltration",
        "Nodule/Mass": "Nodule or Mass",
        "Pneumonia": "Pneumonia",
        "Pneumothorax": "Pneumothorax",
        "Consolidation": "Consolidation",
        "Edema": "Edema",
        "Emphysema": "Emphysema",
        "Pulmonary fibrosis": "Fibrosis",
        "Pleural thickening": "Pleural_Thickening",
        "Lung Opacity": "Lung Opacity",
        "Rib fracture": "Fracture",
        "Clavicle fracture": "Fracture",
    },
}


def dataset_classes(dataset: str) -> list:
    """The can-tf classes a data set labels (directly, not through composites)."""
    _check_dataset(dataset)
    return sorted(set(DATASET_LABELS[dataset].values()), key=_order)


def relabel(columns: Mapping[str, np.ndarray], dataset: str, class_names: Sequence[str]) -> np.ndarray:
    """float32 ``(N, C)`` labels of ``class_names`` from a data set's own label columns.

    Args:
        columns: publisher's finding name -> float array (1 positive, 0 negative, NaN unknown),
            every array of the same length; names not in the data set's mapping are an error.
        dataset: a key of :data:`DATASET_LABELS`.
        class_names: the can-tf classes wanted, in output order.

    Raises:
        DataError: a column the mapping does not know (naming it and the data set).
    """
    _check_dataset(dataset)
    mapping = DATASET_LABELS[dataset]
    unknown = [name for name in columns if name not in mapping]
    if unknown:
        raise DataError(f"{dataset}: finding(s) {preview(unknown)} are not in can-tf's label map for "
                        f"this data set (can_tf/data/label_space.py)")
    n = len(next(iter(columns.values()))) if columns else 0
    direct = {}
    for name, values in columns.items():
        target = mapping[name]
        values = np.asarray(values, np.float32)
        # Two source columns onto one class: positive if either is, negative only if both are.
        direct[target] = values if target not in direct else _any(direct[target], values)
    out = np.full((n, len(class_names)), np.nan, np.float32)
    for c, name in enumerate(class_names):
        if name in direct:
            out[:, c] = direct[name]
        elif name in COMPOSITES and all(part in direct for part in COMPOSITES[name]):
            out[:, c] = _any(*(direct[part] for part in COMPOSITES[name]))
        else:
            # A negative composite the data set labels says this part is absent too.
            for composite, parts in COMPOSITES.items():
                if name in parts and composite in direct:
                    out[:, c] = np.where(direct[composite] == 0, 0.0, np.nan)
    return out


def composite_probabilities(probabilities: np.ndarray, model_classes: Sequence[str],
                            class_names: Sequence[str]) -> np.ndarray:
    """A model's probabilities for ``class_names``: its own, or for a composite its parts' largest.

    Raises:
        DataError: a class the model neither has nor can compose (naming it).

    Example:
        >>> p = np.array([[0.2, 0.7], [0.1, 0.3]])
        >>> composite_probabilities(p, ["Mass", "Nodule"], ["Nodule or Mass", "Mass"]).tolist()
        [[0.7, 0.2], [0.3, 0.1]]
    """
    model_classes = list(model_classes)
    columns = []
    for name in class_names:
        if name in model_classes:
            columns.append(probabilities[:, model_classes.index(name)])
        elif name in COMPOSITES and all(part in model_classes for part in COMPOSITES[name]):
            columns.append(np.max([probabilities[:, model_classes.index(p)] for p in COMPOSITES[name]], axis=0))
        else:
            raise DataError(f"the model has no output for class {name!r} (its classes: {', '.join(model_classes)})")
    return np.stack(columns, axis=1) if columns else np.zeros((len(probabilities), 0), probabilities.dtype)


def comparable_classes(model_classes: Sequence[str], dataset: str) -> tuple:
    """``(compared, not_compared)``: the classes a model can be scored on with a data set's labels
    (shared or composable), and ``{class: why not}`` for the model's other classes."""
    labelled = set(dataset_classes(dataset))
    model_classes = list(model_classes)
    compared = [c for c in model_classes if c in labelled]
    compared += [c for c, parts in COMPOSITES.items()
                 if c in labelled and c not in compared and all(p in model_classes for p in parts)]
    not_compared = {c: f"{dataset} does not label them" for c in model_classes
                    if c not in compared and not any(c in COMPOSITES.get(k, ()) for k in compared)}
    return compared, not_compared


def _any(*arrays) -> np.ndarray:
    stacked = np.stack([np.asarray(a, np.float32) for a in arrays])
    positive = (stacked == 1).any(axis=0)
    negative = (stacked == 0).all(axis=0)
    return np.where(positive, 1.0, np.where(negative, 0.0, np.nan)).astype(np.float32)


def _order(name: str) -> int:
    return ALL_CLASSES.index(name) if name in ALL_CLASSES else len(ALL_CLASSES)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASET_LABELS:
        raise DataError(f"no label map for data set {dataset!r}; known: {', '.join(DATASET_LABELS)}")
