"""Checks a SavedModel the way a server sees it: in a fresh process that has never imported can_tf.

:func:`verify_saved_model` runs this file as a script in a new Python process. The script imports
only TensorFlow and NumPy (it asserts that no ``can_tf`` module got loaded, so the export does not
secretly depend on the package's Python code), loads the export with ``tf.saved_model.load``, calls
``serving_default`` on the real image files' bytes and ``serving_images`` on the same images as
tensors, reads ``metadata`` and the variables in the checkpoint, and writes all of it to JSON. The
parent process then compares the probabilities with the Keras model's and checks that the
checkpoint holds the model's weights once and no optimizer state.

Example:
    >>> report = verify_saved_model("staging", paths, images, expected,  # doctest: +SKIP
    ...                             class_names=names, num_weights=123456)
    >>> report.max_abs_error["serving_default"] < 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

# Checkpoint keys of optimizer state: slot variables (Adam's m and v...) and Keras optimizer objects.
_OPTIMIZER_MARKERS = (".OPTIMIZER_SLOT", "optimizer", "_iterations", "/iteration")


class VerificationError(RuntimeError):
    """The export did not pass verification; the message says which check and by how much."""


@dataclasses.dataclass
class VerificationReport:
    """What the fresh process saw."""

    max_abs_error: dict  # signature name -> max |probability - Keras probability|
    num_images: int
    checkpoint_scalars: int
    model_scalars: int
    checkpoint_variables: int
    signatures: list
    images: str = ""  # what the images were, from `describe_images`

    def summary(self) -> str:
        errors = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_error.items())
        return (f"verified in a fresh process on {self.images or describe_images(self.num_images)}: "
                f"max |p - p_keras| {errors}; "
                f"{self.checkpoint_variables} variables, {self.checkpoint_scalars} scalars "
                f"(model weights: {self.model_scalars})")


def describe_images(count: int, images=None, provenance: Optional[dict] = None, run_dir=None) -> str:
    """What an export was checked on, for its summary: where the images came from, never "real".

    Images the user gave are named by their folder (or list file); otherwise they are the run's
    training images, named by the provenance record's data description, which says so when they
    are the built-in phantom's synthetic images.

    Example:
        >>> describe_images(8, provenance={"data": {"description": "built-in phantom data (synthetic images)"}})
        '8 images of built-in phantom data (synthetic images)'
        >>> describe_images(2, ["xrays/a.png", "xrays/b.png"])
        '2 images from xrays'
    """
    counted = f"{count} image{'' if count == 1 else 's'}"
    if isinstance(images, (list, tuple)):
        if images:
            folders = [os.path.dirname(str(p)) or "." for p in images]
            try:
                folder = os.path.commonpath(folders)
            except ValueError:  # relative and absolute paths mixed
                folder = os.path.commonpath([os.path.abspath(f) for f in folders])
            return f"{counted} from {folder}"
    elif images is not None:
        return f"{counted} from {images}"
    description = ((provenance or {}).get("data") or {}).get("description")
    if description:
        return f"{counted} of {description}"
    if run_dir is not None:
        return f"{counted} of the training split of run {run_dir}"
    return counted


def check_close(name: str, actual, expected, atol: float) -> float:
    """Max absolute difference of two probability arrays; raises if above ``atol`` or misshaped."""
    import numpy as np

    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise VerificationError(f"{name} returned probabilities of shape {actual.shape}, expected {expected.shape}")
    error = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    if not error <= atol:  # also catches NaN
        raise VerificationError(
            f"{name} differs from the Keras model by up to {error:.3g} (allowed {atol:g}) on the sample images"
        )
    return error


def verify_saved_model(export_dir, image_paths, images, expected, *, class_names, num_weights: int,
                       atol: float = 1e-4, timeout: float = 900,
                       images_description: Optional[str] = None) -> VerificationReport:
    """Loads ``export_dir`` in a fresh process and checks it against the Keras model's ``expected``.

    Args:
        export_dir: the SavedModel folder.
        image_paths: real PNG/JPEG files fed as bytes to ``serving_default``.
        images: the same images, preprocessed, float32 ``(N, S, S, 1)``, fed to ``serving_images``.
        expected: the Keras model's probabilities ``(N, C)`` for them.
        class_names: what ``metadata`` must return.
        num_weights: scalars in the model's weights; the checkpoint must hold this many (once).
        atol: allowed absolute difference of the probabilities.
        images_description: what the images are, for the report (see `describe_images`).

    Raises:
        VerificationError: with the reason (the child's traceback when it failed).
        can_tf.files.DiskFullError: the temporary folder the check works in is full.
    """
    import numpy as np

    # Imported here, not at the top: this file also runs as the child script, which must not load can_tf.
    from can_tf.files import DiskFullError, is_disk_full

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        request = {"export_dir": str(Path(export_dir).resolve()), "image_paths": [str(p) for p in image_paths],
                   "images": str(work / "images.npy"), "result": str(work / "result.json")}
        try:
            np.save(work / "images.npy", np.asarray(images, np.float32))
            (work / "request.json").write_text(json.dumps(request))
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError(work) from e
            raise
        # The check runs on the CPU: on a GPU, TensorFloat-32 matmuls alone differ by ~1e-3.
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        try:
            run = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(work / "request.json")],
                                 capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise VerificationError(f"loading and calling the export took over {timeout:g} s") from None
        if run.returncode != 0:
            tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-15:])
            if os.strerror(errno.ENOSPC) in tail:
                raise DiskFullError(work)  # the child could not write its result there
            raise VerificationError(f"the export failed in a fresh Python process:\n{tail}")
        result = json.loads((work / "result.json").read_text())

    if result["can_tf_modules"]:
        raise VerificationError(f"loading the export imported can_tf ({result['can_tf_modules'][:3]}); "
                                f"it must run without the package")
    missing = {"serving_default", "serving_images", "metadata"} - set(result["signatures"])
    if missing:
        raise VerificationError(f"signatures missing from the export: {sorted(missing)}")
    if result["class_names"] != list(class_names):
        raise VerificationError(f"metadata class_names {result['class_names']} != model's {list(class_names)}")
    optimizer_keys = [k for k in result["variables"] if any(m in k for m in _OPTIMIZER_MARKERS)]
    if optimizer_keys:
        raise VerificationError(f"the export holds optimizer state: {optimizer_keys[:5]}")
    scalars = int(sum(result["variables"].values()))
    if scalars != num_weights:
        raise VerificationError(
            f"the export holds {scalars} variable scalars but the model has {num_weights} weights "
            f"({'duplicated' if scalars > num_weights else 'missing'} variables)"
        )
    errors = {name: check_close(name, result["probabilities"][name], expected, atol)
              for name in ("serving_default", "serving_images")}
    return VerificationReport(max_abs_error=errors, num_images=len(image_paths), checkpoint_scalars=scalars,
                              model_scalars=num_weights, checkpoint_variables=len(result["variables"]),
                              signatures=sorted(result["signatures"]),
                              images=images_description or describe_images(len(image_paths)))


def _child(request_path: str) -> None:
    """The fresh process: TensorFlow and NumPy only."""
    import numpy as np
    import tensorflow as tf

    request = json.loads(Path(request_path).read_text())
    export_dir = request["export_dir"]
    loaded = tf.saved_model.load(export_dir, tags=["serve"])
    signatures = loaded.signatures
    data = [Path(p).read_bytes() for p in request["image_paths"]]
    images = np.load(request["images"])
    by_bytes = signatures["serving_default"](image_bytes=tf.constant(data, tf.string))
    by_tensor = signatures["serving_images"](images=tf.constant(images))
    for name, out in (("serving_default", by_bytes), ("serving_images", by_tensor)):
        if not np.allclose(tf.sigmoid(out["logits"]).numpy(), out["probabilities"].numpy(), atol=1e-6):
            raise SystemExit(f"{name}: probabilities != sigmoid(logits)")
    metadata = signatures["metadata"]()
    ckpt = os.path.join(export_dir, "variables", "variables")
    variables = {name: int(np.prod(shape)) for name, shape in tf.train.list_variables(ckpt)
                 if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    result = {
        "signatures": sorted(signatures.keys()),
        "probabilities": {"serving_default": by_bytes["probabilities"].numpy().tolist(),
                          "serving_images": by_tensor["probabilities"].numpy().tolist()},
        "class_names": [c.decode() for c in metadata["class_names"].numpy()],
        "variables": variables,
        "can_tf_modules": sorted(m for m in sys.modules if m == "can_tf" or m.startswith("can_tf.")),
    }
    Path(request["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    # Run as a script: drop this file's folder from the import path so that no sibling module
    # (or the can_tf package around it) can be picked up by accident.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    _child(sys.argv[1])
