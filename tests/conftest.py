"""Shared fixtures: the real ChestX-ray14 sample, tiny phantom data, temporary run folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real NIH images live beside the project, never inside it; CAN_TF_CHESTXRAY14 overrides the path.
CHESTXRAY14_DIR = Path(
    os.environ.get("CAN_TF_CHESTXRAY14", REPO_ROOT.parent / "shared" / "data" / "chestxray14")
)


@pytest.fixture(scope="session")
def chestxray14_dir() -> Path:
    """The real ChestX-ray14 sample; tests using it skip where it is absent (a fresh clone)."""
    if not (CHESTXRAY14_DIR / "images").is_dir():
        pytest.skip(
            f"real ChestX-ray14 sample not found at {CHESTXRAY14_DIR} "
            f"(set CAN_TF_CHESTXRAY14 to a folder with the NIH label file and images/)"
        )
    return CHESTXRAY14_DIR


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom data set in the NIH layout, generated once per test session."""
    from can_tf.data.phantom import write_phantom

    out = tmp_path_factory.mktemp("phantom")
    write_phantom(out, num_patients=60, image_size=64, seed=0)
    return out
