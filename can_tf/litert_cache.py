"""LiteRT as ``predict``'s CPU runtime for Keras models: converted once, cached beside the model,
parity-checked.

On a CPU, the float32 LiteRT conversion of a can-tf model runs faster than the Keras graph it comes
from (``python -m benchmarks.predict_levers``: at 224 px, about 1.9x the images per second at batch 8
and 0.7x the latency at batch 1 on a 2-core AVX-512 machine), and its output matches Keras to ~1e-6.
:func:`litert_runtime` gives that runtime for a ``.keras`` file (a run's ``best.keras``):

- The first call converts the model (builtin ops only, float32, any batch size), with the run's
  calibration baked in as every export has it, and runs Keras and LiteRT side by side on
  :data:`PARITY_IMAGES` fixed images. Only a conversion within :data:`TOLERANCE` of Keras is kept.
- The file goes to ``<model folder>/litert-cache/<stem>-<key>.tflite`` with a ``.json`` record (the
  key, Keras and LiteRT versions, the parity error, the SHA-256 of the file). The key is a hash of
  the ``.keras`` file's bytes, the temperatures and the TensorFlow version, so a new
  ``best.keras``, a new ``calibration.json`` or an upgraded TensorFlow converts again; older files of
  the same stem are removed.
- Later calls load the cached file without loading Keras at all (a second or less, against several
  for the Keras model), after checking its SHA-256 against the record: a changed or truncated file
  is converted again, never run.
- Where the folder cannot be written (a read-only model store), the conversion is used from memory
  for this process.

:class:`LiteRTUnavailable` says why LiteRT cannot serve a model (the conversion failed, or it
differed from Keras); :class:`~can_tf.predictor.Predictor` then runs Keras and says so.

Example:
    >>> from can_tf.litert_cache import litert_runtime
    >>> runtime = litert_runtime("runs/small-1a2b3c4d/best.keras")  # doctest: +SKIP
    >>> runtime.format, runtime.cache_note  # doctest: +SKIP
    ('tflite', 'LiteRT conversion cached in runs/small-1a2b3c4d/litert-cache/best-3f2a9c1e0b7d.tflite')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from can_tf.errors import LiteRTUnavailable, ModelFileError
from can_tf.files import sha256_of
from can_tf.runtime import LiteRTRuntime

PathLike = Union[str, os.PathLike]

CACHE_FOLDER = "litert-cache"
# Largest accepted |p_litert - p_keras| (the float32 export's own tolerance).
TOLERANCE = 1e-4
PARITY_IMAGES = 4
_RECORD_VERSION = 1


def cache_key(model_path: PathLike, temperatures: Optional[Sequence[float]] = None) -> str:
    """12 hex digits naming one conversion: the ``.keras`` bytes, the temperatures, TensorFlow's version."""
    import tensorflow as tf

    parts = [sha256_of(model_path), json.dumps(None if temperatures is None else [float(t) for t in temperatures]),
             tf.__version__, str(_RECORD_VERSION)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def parity_images(image_size: int, count: int = PARITY_IMAGES) -> np.ndarray:
    """Fixed float32 ``(count, S, S, 1)`` images in [0, 255]: a gradient, flat grey, and seeded noise.

    They exercise the whole input range; the check is that LiteRT computes what Keras computes,
    which needs no real radiograph.
    """
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 255.0, image_size, dtype=np.float32)
    images = [np.add.outer(ramp, ramp) / 2.0, np.full((image_size, image_size), 127.0, np.float32)]
    while len(images) < count:
        images.append(rng.uniform(0.0, 255.0, (image_size, image_size)).astype(np.float32))
    return np.stack(images[:count])[..., None].astype(np.float32)


def litert_runtime(model_path: PathLike, *, temperatures=None, model=None,
                   num_threads: Optional[int] = None) -> LiteRTRuntime:
    """The LiteRT runtime standing in for the Keras model at ``model_path`` (see the module docs).

    Args:
        model_path: a ``.keras`` file.
        temperatures: the run's :class:`~can_tf.evaluation.calibration.Temperatures`, or None.
        model: the Keras model already loaded from ``model_path`` (saves loading it again on a miss).
        num_threads: interpreter threads; default all CPUs.

    Returns:
        a :class:`~can_tf.runtime.LiteRTRuntime` with ``cache_note``, one line saying where its
        file is (or that it runs from memory) and how far it was from Keras.

    Raises:
        LiteRTUnavailable: the model does not convert with builtin ops, or LiteRT differs from Keras
            by more than :data:`TOLERANCE`.
        ModelFileError: ``model_path`` cannot be read or loaded.
    """
    model_path = Path(model_path)
    values = None if temperatures is None else tuple(float(t) for t in temperatures.values)
    try:
        key = cache_key(model_path, values)
    except OSError as e:
        raise ModelFileError(f"cannot read {model_path}: {e.strerror or e}") from None
    folder = model_path.parent / CACHE_FOLDER
    target = folder / f"{model_path.stem}-{key}.tflite"
    record_path = target.with_suffix(".json")

    cached = _read_cached(target, record_path, key)
    if cached is not None:
        runtime = LiteRTRuntime(target, num_threads=num_threads)
        runtime.cache_note = (f"LiteRT conversion cached in {target} (within {cached['max_abs_diff']:.1e} of Keras "
                              f"when converted)")
        return runtime

    flatbuffer, diff = _convert_checked(model_path, model, temperatures)
    record = {"version": _RECORD_VERSION, "key": key, "source": model_path.name, "max_abs_diff": diff,
              "tolerance": TOLERANCE, "parity_images": PARITY_IMAGES,
              "sha256": hashlib.sha256(flatbuffer).hexdigest(), **_versions()}
    if _write_cache(folder, target, record_path, flatbuffer, record, model_path.stem):
        runtime = LiteRTRuntime(target, num_threads=num_threads)
        runtime.cache_note = f"LiteRT conversion written to {target} (within {diff:.1e} of Keras)"
    else:
        runtime = LiteRTRuntime(flatbuffer, num_threads=num_threads)
        runtime.cache_note = (f"LiteRT conversion kept in memory ({folder} cannot be written; within {diff:.1e} "
                              f"of Keras)")
    return runtime


def _versions() -> dict:
    import keras
    import tensorflow as tf

    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # the distribution's metadata is missing: the record is informative only
        litert = "unknown"
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "ai_edge_litert": litert}


def _read_cached(target: Path, record_path: Path, key: str) -> Optional[dict]:
    """The record of a cached conversion whose file is intact, else None (convert again)."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("key") != key or not target.is_file() or sha256_of(target) != record.get("sha256"):
            return None
        float(record["max_abs_diff"])
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _convert_checked(model_path: Path, model, temperatures) -> tuple:
    """``(flatbuffer, max |LiteRT - Keras|)`` for the model, or :class:`LiteRTUnavailable`."""
    from can_tf.export.source import ExportSource
    from can_tf.export.tflite import convert_tflite
    from can_tf.export.versioning import ExportError
    from can_tf.runtime import load_keras_model

    if model is None:
        model = load_keras_model(model_path)
    try:
        source = ExportSource.from_model(model)
        if temperatures is not None:
            source.class_names = list(temperatures.class_names)
            source.temperatures = temperatures
        else:  # the conversion needs only the number of classes
            from can_tf.models import inference_model

            source.class_names = [str(c) for c in range(int(inference_model(model).outputs[0].shape[-1]))]
        flatbuffer = convert_tflite(source, batch_size=None)
    except ExportError as e:
        raise LiteRTUnavailable(f"{model_path} does not convert to LiteRT: {e}") from None
    images = parity_images(source.image_size)
    expected = source.probabilities(images)
    actual = LiteRTRuntime(flatbuffer).predict(images)
    diff = float(np.max(np.abs(actual - expected))) if np.all(np.isfinite(actual)) else float("inf")
    if not diff <= TOLERANCE:
        raise LiteRTUnavailable(f"the LiteRT conversion of {model_path} differs from Keras by {diff:.2g} "
                                f"(more than {TOLERANCE:g})")
    return flatbuffer, diff


def _write_cache(folder: Path, target: Path, record_path: Path, flatbuffer: bytes, record: dict, stem: str) -> bool:
    """Publishes the file, then its record (a reader trusts only a file its record vouches for);
    removes older conversions of ``stem`` and dead processes' temporaries. False where the folder
    cannot be written."""
    from can_tf.files import atomic_write_bytes, remove_stale_temporaries, write_json

    try:
        folder.mkdir(exist_ok=True)
        remove_stale_temporaries(folder)  # what a predict killed mid-write left
        atomic_write_bytes(target, flatbuffer)
        write_json(record_path, record)
    except OSError:
        return False
    older = re.compile(re.escape(stem) + r"-[0-9a-f]{12}\.(tflite|json)")
    for old in folder.iterdir():
        if older.fullmatch(old.name) and old.stem != target.stem:
            try:
                old.unlink()
            except OSError:
                pass
    return True
