"""The built-in phantom data set: synthetic chest-like radiographs in exactly the NIH layout.

:func:`write_phantom` writes what the NIH ships for ChestX-ray14, so the same loader reads both::

    OUT/images/00000001_000.png      patient 1, follow-up 0 (8-bit gray PNG, image_size px square)
    OUT/Data_Entry_2017.csv          NIH's columns: Image Index, Finding Labels, Follow-up #, ...
    OUT/train_val_list.txt           the official-style split, by patient (about 80 / 20)
    OUT/test_list.txt
    OUT/BBox_List_2017.csv           one box per planted finding: Image Index, Finding Label, Bbox [x,y,w,h]
    OUT/README.md                    what the folder is

Box coordinates are in the pixel space of the written images (``image_size`` x ``image_size``, origin
top left, x right, y down), not NIH's 1024 px space: multiply by ``model_size / image_size`` for a
resized input. Every planted finding has a box (NIH boxes only a few), so the phantom is ground truth
for heat-map localisation as well as for classification.

Each image is a chest-like background (dark surround, bright body, two dark lung fields with rib
shadows and vessel texture, spine, mediastinum, heart, abdomen below the diaphragm, noise) placed with
a slight random shift, scale and tilt, so position varies as it does in real films. Each of the 14
findings is a visually distinct pattern at a random but anatomically plausible place, sized in units
of the image so that it survives downsampling to 64 px:

================== ==========================================================================
Atelectasis        a plate-like bright band across a lower-mid lung zone
Cardiomegaly       an enlarged heart shadow (cardiothoracic ratio ~0.6 instead of ~0.4)
Effusion           bright fluid filling one lung base, with a meniscus rising laterally
Infiltration       patchy, blotchy opacity in one lung
Mass               a large (>3 cm) bright lobulated blob in a lung
Nodule             a small bright round disc in a lung
Pneumonia          a large soft-edged hazy opacity in a lower lung zone
Pneumothorax       a dark region without lung markings at one apex, edged by a bright pleural line
                   over the denser, collapsed lung
Consolidation      a dense uniform opacity of an upper zone with a sharp horizontal (fissure) border
Edema              bilateral symmetric perihilar haze ("bat wings")
Emphysema          larger, darker (hyperlucent) lungs with a narrow heart
Fibrosis           a bilateral reticular net pattern at the lung bases, laterally
Pleural_Thickening a bright band along the lateral chest wall of one lung
Hernia             a round retrocardiac bubble at the diaphragm, air above a fluid level
================== ==========================================================================

Prevalence is imbalanced like NIH's: the NIH counts mapped linearly so that Infiltration is ~18%
and Hernia ~1.5% of images (NIH's 0.2% would leave a small phantom with none), the order of all
classes kept. Chronic findings (Cardiomegaly, Emphysema, Fibrosis) persist, in the same place,
across a patient's follow-ups, and each patient's anatomy is shared by their images: as in real
data, a split that is not patient-disjoint leaks.

Generation is deterministic given the seed (the same bytes on the same platform) and fast: the
default 240 patients (~600 images) at 128 px take 2-5 s on one CPU core. The files are written in a
hidden staging folder and moved into place only once all of them are complete (the label file
last), so a failed write (a full disk: `DataError` naming the folder) leaves the folder as it was.

Example:
    >>> from can_tf.data.phantom import write_phantom
    >>> out = write_phantom("phantom", num_patients=20, image_size=64, seed=0)  # doctest: +SKIP
    >>> sorted(p.name for p in out.iterdir())  # doctest: +SKIP
    ['BBox_List_2017.csv', 'Data_Entry_2017.csv', 'README.md', 'images', 'test_list.txt',
     'train_val_list.txt']
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np

from can_tf.data.errors import DataError
from can_tf.files import (fsync_dir, is_disk_full, make_folders, no_space_message, remove_empty_folders,
                          remove_stale_temporaries, staging_folder)
from can_tf.labels import CLASS_NAMES, NO_FINDING

# Bump when the images or files change, so cached phantoms of an older version are not reused.
PHANTOM_VERSION = 3

DATA_ENTRY_FILE = "Data_Entry_2017.csv"
BBOX_FILE = "BBox_List_2017.csv"
TRAIN_VAL_FILE = "train_val_list.txt"
TEST_FILE = "test_list.txt"
IMAGE_DIR = "images"

# NIH's headers, verbatim (the 2020 label file's columns; the box file's header has three empty
# trailing fields while its rows have six values).
DATA_ENTRY_COLUMNS = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

# Positive images per class in the full NIH release (112,120 images).
NIH_COUNTS = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894,
    "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302, "Consolidation": 4667,
    "Edema": 2303, "Emphysema": 2516, "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227,
}
NIH_IMAGES = 112120
_LOWEST, _HIGHEST = 0.015, 0.18  # the phantom's prevalence of the rarest and the commonest class


def _phantom_prevalence() -> dict:
    """NIH prevalence mapped linearly onto [1.5%, 18%]: the order kept, the rarest still present."""
    nih = {name: count / NIH_IMAGES for name, count in NIH_COUNTS.items()}
    lo, hi = min(nih.values()), max(nih.values())
    return {name: _LOWEST + (p - lo) * (_HIGHEST - _LOWEST) / (hi - lo) for name, p in nih.items()}


PREVALENCE = _phantom_prevalence()
# Chronic findings persist across follow-ups. Pleural thickening and hiatal hernia persist in real
# patients too, but as rare classes they are sampled per image here: a handful of patients each
# would leave too few distinct examples to learn from in a small phantom.
CHRONIC = ("Cardiomegaly", "Emphysema", "Fibrosis")
_CHRONIC_SHOWN = 0.85  # chance a chronic finding of the patient shows on a given follow-up
_MIN_PATIENTS_PER_CLASS = 6  # so that even a small phantom has every class in train and test

# Lung geometry in body coordinates (image fractions, origin at the chest centre, y down).
_LUNG_X, _LUNG_Y, _LUNG_A, _LUNG_B = 0.18, -0.04, 0.14, 0.28


# ---- small vectorised drawing primitives ------------------------------------------------------
def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _ellipse_r(X, Y, cx, cy, a, b):
    """Normalised elliptic radius: 1 on the ellipse's edge."""
    return np.sqrt(((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2)


def _soft_ellipse(X, Y, cx, cy, a, b, edge=0.06):
    """1 inside, 0 outside, with a soft edge ``edge`` wide in units of the radius."""
    return _sigmoid((1.0 - _ellipse_r(X, Y, cx, cy, a, b)) / edge)


@functools.lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells) bilinear interpolation weights: coarse noise -> smooth image-sized noise."""
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    frac = pos - lo
    m = np.zeros((size, cells), np.float32)
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean unit-ish noise with about ``cells`` blobs across the image."""
    m = _interp_matrix(size, cells)
    return m @ rng.standard_normal((cells, cells)).astype(np.float32) @ m.T


# ---- anatomy ------------------------------------------------------------------------------------
@dataclass
class _Canvas:
    """The image being drawn and its body-coordinate grids."""

    X: np.ndarray  # body coordinates (image fractions, centre of chest at 0, scaled and tilted)
    Y: np.ndarray
    image: np.ndarray  # float32 (size, size), 0..255
    lungs: tuple  # soft masks of the image-left and image-right lung
    heart: np.ndarray
    heart_value: float
    size: int

    def lung(self, side: int) -> np.ndarray:
        return self.lungs[0 if side < 0 else 1]


def _draw_anatomy(rng, patient: dict, size: int, cardiomegaly: bool, emphysema: bool) -> _Canvas:
    u = (np.arange(size, dtype=np.float32) + 0.5) / size
    U, V = np.meshgrid(u, u)
    # Per-image placement: the patient's own position plus a small jitter (shift, scale, tilt).
    cx = patient["cx"] + rng.normal(0, 0.008)
    cy = patient["cy"] + rng.normal(0, 0.008)
    scale = patient["scale"] * rng.uniform(0.98, 1.02)
    tilt = math.radians(rng.uniform(-2.0, 2.0))
    dx, dy = (U - cx) / scale, (V - cy) / scale
    X = math.cos(tilt) * dx + math.sin(tilt) * dy
    Y = -math.sin(tilt) * dx + math.cos(tilt) * dy

    bg = rng.uniform(8, 22)
    body_value = patient["body"] + rng.uniform(-6, 6)
    body = _soft_ellipse(X, Y, 0.0, 0.06, 0.43, 0.56, edge=0.05)
    image = bg + (body_value - bg) * body
    # Abdomen below the diaphragm is denser than the chest wall.
    image += 25.0 * body * _sigmoid((Y - 0.26) / 0.02)

    la, lb, lung_drop = _LUNG_A * patient["lung"], _LUNG_B * patient["lung"], 85.0
    lung_y = _LUNG_Y
    if emphysema:  # hyperinflated, hyperlucent, flattened diaphragm
        la, lb, lung_y, lung_drop = la * 1.1, lb * 1.13, lung_y + 0.025, lung_drop + 30.0
    lungs = tuple(_soft_ellipse(X, Y, side * _LUNG_X, lung_y, la, lb, edge=0.07) for side in (-1, 1))
    lung_mask = np.maximum(*lungs)
    image -= lung_drop * lung_mask
    # Posterior rib shadows curve down laterally; vessel markings fan out from the hila.
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (Y + 0.9 * X ** 2) / 0.085 + patient["rib_phase"])
    vessels = _smooth_noise(rng, size, 14) * np.exp(-(np.abs(X) - 0.06) * 4.0).clip(0, 1)
    texture = (11.0 * ribs + (3.0 if emphysema else 7.0) * vessels) * lung_mask
    image += texture
    spine = np.exp(-(X / 0.035) ** 2) * body
    image += 28.0 * spine * (1 - 0.6 * lung_mask)
    # Mediastinum: the dense band between the lungs above the heart.
    image += 20.0 * _soft_ellipse(X, Y, 0.0, -0.2, 0.07, 0.2, edge=0.1)

    # Heart on the image's right (the patient's left in a PA film), replacing lung darkness.
    ha, hb = patient["heart_a"], patient["heart_b"]
    if cardiomegaly:
        ha, hb = ha * rng.uniform(1.45, 1.6), hb * rng.uniform(1.2, 1.3)
    elif emphysema:
        ha = ha * 0.85
    heart = _soft_ellipse(X, Y, 0.035 + 0.3 * (ha - 0.12), 0.15, ha, hb, edge=0.06)
    heart_value = body_value + 22.0
    image = image * (1 - heart) + heart_value * heart
    return _Canvas(X, Y, image, lungs, heart, heart_value, size)


def _new_patient(rng) -> dict:
    return {
        "cx": 0.5 + rng.normal(0, 0.015), "cy": 0.5 + rng.normal(0, 0.015),
        "scale": rng.uniform(0.93, 1.04), "body": rng.uniform(140, 155),
        "lung": rng.uniform(0.94, 1.06), "heart_a": rng.uniform(0.11, 0.13),
        "heart_b": rng.uniform(0.085, 0.095), "rib_phase": rng.uniform(0, 2 * np.pi),
    }


# ---- findings: each draws on the canvas and returns its footprint (for the box) -----------------
def _point_in_lung(rng, side, y_range=(-0.2, 0.15), x_range=(-0.5, 0.5)):
    """A point inside a lung: ``x_range`` in fractions of its half width, ``y_range`` from its centre."""
    x = side * _LUNG_X + side * rng.uniform(*x_range) * _LUNG_A
    y = _LUNG_Y + rng.uniform(*y_range)
    return x, y


def _atelectasis(c: _Canvas, rng):
    side = rng.choice((-1, 1))
    x0, y0 = _point_in_lung(rng, side, (0.02, 0.16), (-0.3, 0.3))
    angle = math.radians(rng.uniform(-15, 15))
    along = math.cos(angle) * (c.X - x0) + math.sin(angle) * (c.Y - y0)
    across = -math.sin(angle) * (c.X - x0) + math.cos(angle) * (c.Y - y0)
    band = _sigmoid((rng.uniform(0.085, 0.1) - np.abs(along)) / 0.006) * _sigmoid(
        (rng.uniform(0.03, 0.036) - np.abs(across)) / 0.004
    )
    band *= c.lung(side) > 0.3
    c.image += 70.0 * band
    return band


def _effusion(c: _Canvas, rng):
    side = rng.choice((-1, 1))
    level = rng.uniform(0.0, 0.07)
    lateral = side * (c.X - side * _LUNG_X)  # > 0 towards the chest wall
    surface = level - 0.35 * np.clip(lateral, 0, None)  # meniscus rising laterally
    # The whole lung base up to the meniscus, costophrenic angle included, whatever overlies it.
    base = _soft_ellipse(c.X, c.Y, side * _LUNG_X, _LUNG_Y, _LUNG_A * 1.05, _LUNG_B * 1.05, edge=0.03)
    fluid = _sigmoid((c.Y - surface) / 0.01) * base
    c.image += (c.heart_value + 8.0 - c.image) * fluid
    return fluid


def _infiltration(c: _Canvas, rng):
    side = rng.choice((-1, 1))
    x0, y0 = _point_in_lung(rng, side, (-0.15, 0.1), (-0.3, 0.3))
    region = _soft_ellipse(c.X, c.Y, x0, y0, rng.uniform(0.085, 0.1), rng.uniform(0.11, 0.14), 0.15)
    region *= c.lung(side)
    patches = np.clip(_smooth_noise(rng, c.size, 18) * 1.2 + 0.4, 0, 1.5)
    c.image += 60.0 * patches * region
    return region


def _mass(c: _Canvas, rng):
    side = rng.choice((-1, 1))
    x0, y0 = _point_in_lung(rng, side, (-0.15, 0.1), (-0.35, 0.35))
    radius = rng.uniform(0.07, 0.09)
    theta = np.arctan2(c.Y - y0, c.X - x0)
    lobulated = radius * (1 + 0.12 * np.cos(3 * theta + rng.uniform(0, 2 * np.pi)))
    dist = np.sqrt((c.X - x0) ** 2 + (c.Y - y0) ** 2)
    blob = _sigmoid((lobulated - dist) / 0.008)
    c.image += 85.0 * blob
    return blob


def _nodule(c: _Canvas, rng):
    side = rng.choice((-1, 1))
    x0, y0 = _point_in_lung(rng, side, (-0.2, 0.12), (-0.5, 0.5))
    radius = rng.uniform(0.035, 0.045)
    disc = _sigmoid((radius - np.sqrt((c.X - x0) ** 2 + (c.Y - y0) ** 2)) / 0.004)
    c.image += 100.0 * disc
    return disc


def _pneumonia(c: _Canvas, rng):
    side = rng.choice((-1, 1))
    x0, y0 = _point_in_lung(rng, side, (0.0, 0.14), (-0.25, 0.25))
    sigma = rng.uniform(0.065, 0.08)
    haze = np.exp(-((c.X - x0) ** 2 + (c.Y - y0) ** 2) / (2 * sigma ** 2)) * c.lung(side)
    c.image += 85.0 * haze
    return haze / max(float(haze.max()), 1e-6) >= 0.5


def _pneumothorax(c: _Canvas, rng):
    side = rng.choice((-1, 1))
    lx = side * _LUNG_X
    # The collapsed lung: a smaller ellipse pulled medially and down; air fills the gap above it.
    a, b = _LUNG_A * rng.uniform(0.6, 0.72), _LUNG_B * rng.uniform(0.7, 0.8)
    cx, cy = lx - side * rng.uniform(0.03, 0.04), _LUNG_Y + rng.uniform(0.05, 0.08)
    collapsed = _soft_ellipse(c.X, c.Y, cx, cy, a, b, edge=0.03)
    air = c.lung(side) * (1 - collapsed) * _sigmoid((0.02 - c.Y) / 0.02)
    pleura = np.exp(-((_ellipse_r(c.X, c.Y, cx, cy, a, b) - 1.0) / 0.05) ** 2) * (c.lung(side) > 0.5)
    pleura *= c.Y < 0.02
    # The collapsed lung is denser than aerated lung: a bright edge and a brighter body under the air.
    c.image = c.image * (1 - air) + (c.image.min() + 22.0) * air + 55.0 * pleura
    c.image += 30.0 * collapsed * c.lung(side) * (1 - c.heart)
    return air


def _consolidation(c: _Canvas, rng):
    side = rng.choice((-1, 1))
    fissure = _LUNG_Y + rng.uniform(-0.03, 0.03)
    top = fissure - rng.uniform(0.14, 0.2)
    lobe = _sigmoid((fissure - c.Y) / 0.004) * _sigmoid((c.Y - top) / 0.03) * c.lung(side)
    c.image += (c.heart_value - 12.0 - c.image) * lobe * 0.92
    return lobe


def _edema(c: _Canvas, rng):
    sx, sy = rng.uniform(0.06, 0.07), rng.uniform(0.09, 0.11)
    y0 = rng.uniform(-0.03, 0.03)
    wings = sum(
        np.exp(-(((c.X - s * 0.11) / sx) ** 2 + ((c.Y - y0) / sy) ** 2) / 2) * c.lung(s) for s in (-1, 1)
    )
    c.image += 70.0 * wings
    return wings >= 0.5 * float(wings.max())


def _fibrosis(c: _Canvas, rng):
    period = rng.uniform(0.055, 0.065)
    phase_x, phase_y = rng.uniform(0, 2 * np.pi, size=2)
    net = np.maximum(
        np.cos(2 * np.pi * c.X / period + phase_x), np.cos(2 * np.pi * c.Y / period + phase_y)
    ).clip(0, 1) ** 2
    y0 = rng.uniform(0.04, 0.1)
    zone = sum(
        _soft_ellipse(c.X, c.Y, s * (_LUNG_X + 0.05), y0, 0.08, 0.1, edge=0.15) * c.lung(s) for s in (-1, 1)
    )
    c.image += 65.0 * net * zone
    return zone >= 0.5


def _pleural_thickening(c: _Canvas, rng):
    side = rng.choice((-1, 1))
    r = _ellipse_r(c.X, c.Y, side * _LUNG_X, _LUNG_Y, _LUNG_A, _LUNG_B)
    lateral = side * (c.X - side * _LUNG_X) > 0.02
    y0, y1 = sorted(rng.uniform(-0.25, 0.15, size=2))
    y1 = max(y1, y0 + 0.15)
    band = _sigmoid((r - rng.uniform(0.64, 0.7)) / 0.02) * _sigmoid((1.08 - r) / 0.02) * lateral
    band = band * _sigmoid((c.Y - y0) / 0.01) * _sigmoid((y1 - c.Y) / 0.01)
    c.image += (c.heart_value + 10.0 - c.image) * band
    return band


def _hernia(c: _Canvas, rng):
    x0, y0 = rng.uniform(-0.02, 0.06), rng.uniform(0.21, 0.26)
    radius = rng.uniform(0.07, 0.085)
    dist = np.sqrt((c.X - x0) ** 2 + (c.Y - y0) ** 2)
    bubble = _sigmoid((radius - dist) / 0.006)
    air = bubble * _sigmoid((y0 - 0.01 - c.Y) / 0.004)
    rim = np.exp(-((dist - radius) / 0.012) ** 2)
    c.image = c.image * (1 - bubble) + (c.heart_value + 25.0) * bubble
    c.image += -(c.heart_value - 25.0) * air * 0.9 + 35.0 * rim
    return bubble


_DRAW: dict[str, Callable] = {
    "Atelectasis": _atelectasis, "Effusion": _effusion, "Infiltration": _infiltration,
    "Mass": _mass, "Nodule": _nodule, "Pneumonia": _pneumonia, "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation, "Edema": _edema, "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening, "Hernia": _hernia,
}
# Drawn in this order: opacities first, air (pneumothorax) and the retrocardiac hernia last, so the
# later ones stay visible where findings overlap.
_DRAW_ORDER = (
    "Consolidation", "Effusion", "Edema", "Pneumonia", "Infiltration", "Fibrosis", "Atelectasis",
    "Pleural_Thickening", "Mass", "Nodule", "Pneumothorax", "Hernia",
)


def _box(footprint: np.ndarray) -> Optional[tuple]:
    """(x, y, w, h) in pixels of where ``footprint`` > 0.5, or None where it is empty."""
    mask = np.asarray(footprint, dtype=np.float32) > 0.5
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def render_image(rng, patient: dict, findings: dict, size: int) -> tuple:
    """Draws one radiograph; returns (uint8 (size, size) image, {finding: (x, y, w, h)}).

    ``findings`` maps a class name to the random generator that places it, so a chronic finding
    drawn with a patient-level generator lands in the same place on every follow-up.
    """
    canvas = _draw_anatomy(rng, patient, size, "Cardiomegaly" in findings, "Emphysema" in findings)
    boxes = {}
    if "Cardiomegaly" in findings:
        boxes["Cardiomegaly"] = _box(canvas.heart)
    if "Emphysema" in findings:
        boxes["Emphysema"] = _box(np.maximum(*canvas.lungs))
    for name in _DRAW_ORDER:
        if name in findings:
            boxes[name] = _box(_DRAW[name](canvas, findings[name]))
    image = canvas.image + rng.normal(0.0, 2.0, size=(size, size)) + 3.0 * _smooth_noise(rng, size, 6)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), boxes


# ---- the data set ------------------------------------------------------------------------------
def _sample_findings(seed: int, num_patients: int, images_per_patient: tuple) -> list:
    """Per patient: (patient dict, [(follow-up, {finding: rng}), ...]). Pure function of its args."""
    lo, hi = images_per_patient
    root = np.random.default_rng([seed, 0])
    patients = []
    for pid in range(1, num_patients + 1):
        rng = np.random.default_rng([seed, 1, pid])
        patient = _new_patient(rng)
        patient.update(
            id=pid, images=int(rng.integers(lo, hi + 1)), sex="M" if rng.random() < 0.56 else "F",
            age=int(np.clip(round(rng.normal(47, 16)), 1, 90)),
        )
        chronic = [n for n in CHRONIC if rng.random() < PREVALENCE[n] / _CHRONIC_SHOWN]
        patient["chronic"] = chronic
        patient["acute"] = [
            [n for n in CLASS_NAMES if n not in CHRONIC and rng.random() < PREVALENCE[n]]
            for _ in range(patient["images"])
        ]
        patient["shown"] = [
            [n for n in chronic if rng.random() < _CHRONIC_SHOWN] for _ in range(patient["images"])
        ]
        patients.append(patient)
    # Every class on at least a few patients, so even a small phantom can be split and evaluated.
    for name in CLASS_NAMES:
        has = [any(name in a + s for a, s in zip(p["acute"], p["shown"])) for p in patients]
        missing = max(0, min(_MIN_PATIENTS_PER_CLASS, num_patients) - sum(has))
        candidates = [p for p, has_it in zip(patients, has) if not has_it]
        for p in root.choice(len(candidates), size=missing, replace=False) if missing else []:
            candidates[p]["acute"][0].append(name)
    return patients


def _finding_rngs(seed: int, patient: dict, follow_up: int) -> dict:
    shown = set(patient["acute"][follow_up]) | set(patient["shown"][follow_up])
    out = {}
    for i, name in enumerate(CLASS_NAMES):
        if name in shown:
            # Chronic findings: a patient-level stream (same place each follow-up); acute: per image.
            key = [seed, 2, patient["id"], i] if name in CHRONIC else [seed, 3, patient["id"], follow_up, i]
            out[name] = np.random.default_rng(key)
    return out


def write_phantom(
    out_dir: Union[str, os.PathLike],
    num_patients: int = 240,
    image_size: int = 128,
    seed: int = 0,
    images_per_patient: tuple = (1, 4),
) -> Path:
    """Writes a phantom ChestX-ray14 data set (NIH layout, see the module docstring) into ``out_dir``.

    Args:
        out_dir: folder to write into (created; existing phantom files are overwritten).
        num_patients: number of patients; each has ``images_per_patient`` images (inclusive range).
        image_size: side of the square 8-bit PNGs, in pixels.
        seed: the same seed gives the same files, byte for byte.
        images_per_patient: (fewest, most) follow-up images per patient.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        DataError: the disk is full; nothing was changed in ``out_dir`` (a folder this call created
            is removed again).

    Example:
        >>> write_phantom("/tmp/phantom", num_patients=20, image_size=64)  # doctest: +SKIP
        PosixPath('/tmp/phantom')
    """
    _check_arguments(num_patients, image_size, images_per_patient)
    out = Path(out_dir)
    created, staging = [], None
    with _disk_full_as_data_error(out, lambda: remove_empty_folders(created)):
        created.extend(make_folders(out))
        remove_stale_temporaries(out)  # what killed runs of this command left
        try:
            staging = staging_folder(out, "phantom")
            _write_files(staging, num_patients, image_size, seed, images_per_patient)
            _move_into(staging, out)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_arguments(num_patients: int, image_size: int, images_per_patient: tuple) -> None:
    lo, hi = images_per_patient
    if num_patients < 1:
        raise ValueError(f"num_patients must be at least 1, got {num_patients}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    if not 1 <= lo <= hi:
        raise ValueError(
            f"images_per_patient must be (fewest, most) with 1 <= fewest <= most, got {images_per_patient!r}"
        )


@contextlib.contextmanager
def _disk_full_as_data_error(out: Path, undo: Callable[[], None]) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        undo()
        if is_disk_full(e):
            raise DataError(no_space_message(out, "nothing was changed there")) from None
        raise


# The label file goes last: a folder with a Data_Entry_2017.csv holds a complete data set.
_PUBLISH_ORDER = (IMAGE_DIR, BBOX_FILE, TRAIN_VAL_FILE, TEST_FILE, "README.md", DATA_ENTRY_FILE)


def _move_into(staging: Path, out: Path) -> None:
    """Moves the complete files from ``staging`` into ``out``: renames only, which need no space."""
    for name in _PUBLISH_ORDER:
        source, target = staging / name, out / name
        if source.is_dir() and target.is_dir():
            for path in sorted(source.iterdir()):
                os.replace(path, target / path.name)
        else:
            os.replace(source, target)
    fsync_dir(out)


def _write_files(out: Path, num_patients: int, image_size: int, seed: int, images_per_patient: tuple) -> None:
    from PIL import Image

    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    spacing = round(0.143 * 2500 / image_size, 6)  # NIH's ~36 cm field of view over image_size px
    rows, boxes = [], []
    for patient in _sample_findings(seed, num_patients, tuple(images_per_patient)):
        age = patient["age"]
        for follow_up in range(patient["images"]):
            name = f"{patient['id']:08d}_{follow_up:03d}.png"
            rng = np.random.default_rng([seed, 4, patient["id"], follow_up])
            findings = _finding_rngs(seed, patient, follow_up)
            image, found = render_image(rng, patient, findings, image_size)
            Image.fromarray(image, mode="L").save(out / IMAGE_DIR / name, compress_level=6)
            age += int(rng.integers(0, 2)) if follow_up else 0
            labels = "|".join(sorted(findings)) or NO_FINDING
            view = "PA" if rng.random() < 0.6 else "AP"
            rows.append([name, labels, follow_up, patient["id"], age, patient["sex"], view,
                         image_size, image_size, spacing, spacing])
            for label in sorted(found):
                if found[label] is not None:
                    x, y, w, h = found[label]
                    boxes.append([name, label, f"{x:.1f}", f"{y:.1f}", f"{w:.1f}", f"{h:.1f}"])

    with open(out / DATA_ENTRY_FILE, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(DATA_ENTRY_COLUMNS)
        writer.writerows(rows)
    with open(out / BBOX_FILE, "w", newline="") as f:
        f.write(BBOX_HEADER + "\n")
        csv.writer(f, lineterminator="\n").writerows(boxes)

    test_ids = _test_patients(rows, num_patients, seed)
    train_val = [r[0] for r in rows if r[3] not in test_ids]
    test = [r[0] for r in rows if r[3] in test_ids]
    (out / TRAIN_VAL_FILE).write_text("".join(n + "\n" for n in train_val))
    (out / TEST_FILE).write_text("".join(n + "\n" for n in test))
    (out / "README.md").write_text(
        f"# can-tf phantom data set (version {PHANTOM_VERSION})\n\n"
        f"Synthetic chest-like radiographs in the NIH ChestX-ray14 layout: {num_patients} patients, "
        f"{len(rows)} images of {image_size}x{image_size} px, seed {seed}.\n"
        f"`{BBOX_FILE}` boxes every planted finding, in the pixel coordinates of these "
        f"{image_size} px images (x, y = top-left corner, w, h = size).\n"
        f"Written by `can_tf.data.phantom.write_phantom`; not real patients.\n"
    )


def _test_patients(rows: list, num_patients: int, seed: int) -> set:
    """~20% of patients for the official-style test list, every class on both sides where it can be.

    A plain random 20% of a small phantom often leaves a rare class (a handful of patients) with
    no test image, and its AUROC undefined; so, rarest class first, about a fifth of each class's
    patients (at least one, where it has two or more) go to test, then random patients up to 20%.
    """
    order = np.random.default_rng([seed, 5]).permutation(np.arange(1, num_patients + 1)).tolist()
    classes_of = {pid: set() for pid in order}
    for row in rows:
        classes_of[row[3]].update(row[1].split("|"))
    target = round(0.2 * num_patients) if num_patients > 1 else 0
    test: list = []
    with_class = {name: [pid for pid in order if name in classes_of[pid]] for name in CLASS_NAMES}
    for name in sorted(CLASS_NAMES, key=lambda n: len(with_class[n])):
        patients = with_class[name]
        want = max(1, round(0.2 * len(patients))) if len(patients) >= 2 else 0
        have = sum(pid in test for pid in patients)
        for pid in patients:
            if have >= want or len(test) >= target:
                break
            if pid not in test:
                test.append(pid)
                have += 1
    test += [pid for pid in order if pid not in test][: max(0, target - len(test))]
    return set(test)


def cache_root() -> Path:
    """Where generated data lives: ``$CAN_TF_CACHE``, else ``~/.cache/can-tf``."""
    return Path(os.environ.get("CAN_TF_CACHE") or Path.home() / ".cache" / "can-tf")


def default_phantom_dir(num_patients: int = 240, image_size: int = 128, seed: int = 0) -> Path:
    """The phantom data set with these parameters in the cache folder, generated on first use.

    It is written into a temporary folder beside its final place and renamed in one step, so an
    interrupted run never leaves half a data set behind, and two processes racing to create it
    both end up with the same complete folder.

    Example:
        >>> default_phantom_dir(240, 128)  # doctest: +SKIP
        PosixPath('/home/me/.cache/can-tf/phantom-v1-p240-s128-seed0')
    """
    root = cache_root()
    target = root / f"phantom-v{PHANTOM_VERSION}-p{num_patients}-s{image_size}-seed{seed}"
    if target.is_dir():
        return target
    _check_arguments(num_patients, image_size, (1, 4))
    tmp = None
    with _disk_full_as_data_error(target, lambda: None):
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root)
        try:
            tmp = staging_folder(root, "phantom")
            _write_files(tmp, num_patients, image_size, seed, (1, 4))
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # not a lost race with another process: a real failure
                    raise
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
