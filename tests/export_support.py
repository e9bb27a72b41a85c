"""Shared pieces of the export tests: a tiny CAN model, real sample images, one SavedModel export.

Built once per test session (``functools.cache``) because a SavedModel export with its fresh-process
verification takes several seconds; tests that need their own export make it themselves.
"""

from __future__ import annotations

import atexit
import functools
import io
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

NUM_REAL = 4  # real 512 px NIH images used by every export test
IMAGE_SIZE = 64
# Hand-set thresholds travel with the export (values are arbitrary, one per class).
THRESHOLDS = [round(0.1 + 0.05 * i, 2) for i in range(14)]


def _scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="can-tf-export-test-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def tiny_model():
    """The small preset's CAN at 64 px, random weights (seeded)."""
    import keras

    from can_tf.config import ModelConfig
    from can_tf.models import build_model

    keras.utils.set_random_seed(0)
    config = ModelConfig(kind="can", backbones=["tiny", "tiny"], weights=None, attention_dim=8)
    return build_model(config, 14, IMAGE_SIZE)


def tiny_source(thresholds=THRESHOLDS):
    from can_tf.export.source import ExportSource

    return ExportSource.from_model(tiny_model(), thresholds=thresholds)


@functools.cache
def keras_file() -> Path:
    """The tiny model saved as a .keras file (no run directory around it)."""
    path = _scratch() / "tiny.keras"
    tiny_model().save(path)
    return path


def real_images(chestxray14_dir: Path, n: int = NUM_REAL) -> list:
    return sorted((chestxray14_dir / "images").glob("*.png"))[:n]


@functools.cache
def _sample_files(chestxray14_dir: Path) -> tuple:
    """Real images in every format the bytes signature must take.

    The 512 px gray PNGs as NIH ships them, plus, made from real images: a colour JPEG, a 16-bit
    gray PNG, and an RGBA 64 px PNG from the ``images-64`` folder.
    """
    from PIL import Image

    folder = _scratch() / "samples"
    folder.mkdir()
    real = real_images(chestxray14_dir)
    base = np.asarray(Image.open(real[0]).convert("L"))
    Image.fromarray(base).convert("RGB").save(folder / "colour.jpg", quality=95)
    Image.fromarray(base.astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    rgba = sorted((chestxray14_dir / "images-64").glob("*.png"))[0]
    Image.open(rgba).convert("RGBA").save(folder / "rgba_64px.png")
    return tuple(real) + (folder / "colour.jpg", folder / "sixteen_bit.png", folder / "rgba_64px.png")


def sample_files(chestxray14_dir: Path) -> list:
    return list(_sample_files(chestxray14_dir))


def keras_probabilities(paths) -> np.ndarray:
    """The Keras model's probabilities on files preprocessed by the training pipeline."""
    from can_tf.export.source import preprocess_files

    return tiny_source().probabilities(preprocess_files(paths, IMAGE_SIZE))


@functools.cache
def _saved_model(chestxray14_dir: Path):
    from can_tf.export.saved_model import export_saved_model

    base = _scratch() / "serving"
    return base, export_saved_model(tiny_source(), base, name="can", images=sample_files(chestxray14_dir))


def saved_model_export(chestxray14_dir: Path):
    """``(base_dir, SavedModelExport)`` of the tiny model with thresholds, verified on the samples."""
    return _saved_model(chestxray14_dir)


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid ~60-byte PNG whose IHDR claims ``width`` x ``height`` 8-bit gray pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def black_png(side: int) -> bytes:
    """A real, complete ``side`` x ``side`` black 8-bit PNG, compressed row by row.

    20000 px a side is 400 MB of pixels in ~390 KB of file: a decompression bomb.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte 0 + one byte per pixel
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def jpeg_bytes(path: Path) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).convert("L").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


# Runs a script as __main__ with the named top-level modules unimportable (as on a device or beside
# TF Serving without them), and checks none of them got loaded; the exit code passes through.
_BLOCKED_RUN = "\n".join([
    "import runpy, sys",
    "BLOCKED = sys.argv[1].split(',')",
    "class Block:",
    "    def find_spec(self, name, path=None, target=None):",
    "        if name.split('.')[0] in BLOCKED:",
    "            raise ImportError('blocked by the test: ' + name)",
    "sys.meta_path.insert(0, Block())",
    "sys.argv = sys.argv[2:]",
    "try:",
    "    runpy.run_path(sys.argv[0], run_name='__main__')",
    "finally:",
    "    assert not [m for m in sys.modules if m.split('.')[0] in BLOCKED]",
])
NO_TENSORFLOW = ("tensorflow", "keras", "can_tf")


def run_without(script, args, blocked=NO_TENSORFLOW, cwd=None, timeout: float = 300):
    """``subprocess.run`` of ``python script args...`` with ``blocked`` modules unimportable."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _BLOCKED_RUN, ",".join(blocked), str(script),
                           *[str(a) for a in args]], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=""))
