"""SavedModel export for TF Serving: encoded image bytes in, probabilities and logits out.

The export is a ``tf.Module`` (not ``keras.Model.export``, which writes every variable twice) that
holds the weights the fused output needs exactly once and no optimizer state. Its signatures:

- ``serving_default``: ``image_bytes`` tf.string ``(B,)``, PNG or JPEG of any size, gray or colour,
  8- or 16-bit. Each image passes the image door's checks inside the graph before anything is
  decompressed (:func:`can_tf.images.checked_decode`): an empty, unknown, truncated or DICOM file,
  or one whose header claims more than ``max_pixels`` pixels (a decompression bomb is a few KB of
  PNG that inflates to gigabytes), is refused with an ``InvalidArgumentError`` whose message holds
  ``request image <i>: <reason>``, the reason in the same words as ``can-tf predict`` and the edge
  script. Decoding, gray, the run's ``data.aspect`` policy and the antialiased resize are the
  training pipeline's own functions, traced into the graph.
- ``serving_images``: ``images`` float32 ``(B, H, W, 1 or 3)`` in [0, 255], any ``H, W`` (the same
  aspect policy and resize); pixels that are not finite or look wrongly scaled ([0, 1], [-1, 1],
  above 255) are refused (:func:`can_tf.images.assert_pixels`).
- ``metadata``: no inputs; ``class_names`` ``(C,)``, ``thresholds`` ``(C,)`` (NaN when the run had
  none), ``temperatures`` ``(C,)`` (1 when the run is not calibrated), ``image_size``, ``max_pixels``
  and ``aspect``.

Both image signatures return ``probabilities`` and ``logits`` float32 ``(B, C)``. The export's
``assets/`` hold ``labels.txt`` (one class a line, output order), ``thresholds.json`` when the run
has one, and the run's ``config.yaml``; ``assets.extra/provenance.json`` is the run's provenance
record (which data the model learned from, see :mod:`can_tf.provenance`) when the source has one;
``assets.extra/tf_serving_warmup_requests`` holds TF Serving warm-up requests made of the
verification images, replayed through the staged export before it is published
(:mod:`can_tf.export.warmup`); ``assets.extra/model_card.json`` and ``model_card.md`` are the model's
card (:mod:`can_tf.model_card`: its data, its latest test-split evaluation with intervals and
subgroups, intended use and limitations). A calibrated run's temperatures
(``calibration.json``, fitted by ``can-tf evaluate``) are baked into the graph: ``logits`` are the
fused logits divided by them and ``probabilities`` their sigmoid, the same numbers ``can-tf
predict`` gives on the run; ``assets/calibration.json`` records them and ``metadata`` returns them.

It is published in TF Serving's layout ``<base>/<name>/<version>/`` only after a fresh Python process
that does not import can_tf has loaded it and reproduced the Keras model's probabilities on real
images (:mod:`can_tf.export.verify`). Without an explicit version, the version is chosen when the
export is published, under a lock on the model folder, so concurrent exports get different ones.

Example:
    >>> from can_tf.export import export_saved_model
    >>> result = export_saved_model("runs/small-1a2b3c4d", "exports/serving/models")  # doctest: +SKIP
    >>> result.path  # doctest: +SKIP
    PosixPath('exports/serving/models/can/1')
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Optional, Union

import numpy as np
import tensorflow as tf

from can_tf.export import versioning, warmup
from can_tf.export.source import ExportSource, load_source, sample_images
from can_tf.export.verify import VerificationError, VerificationReport, describe_images, verify_saved_model
from can_tf.export.versioning import ExportError
from can_tf.files import (make_folders, remove_empty_folders, remove_stale_temporaries, staging_folder,
                          write_json)
from can_tf.images import DEFAULT_MAX_PIXELS, checked_decode, pixels_to_model_input
from can_tf.model_card import card_for_run, write_model_card
from can_tf.provenance import phantom_warning

PathLike = Union[str, os.PathLike]

class ServingModule(tf.Module):
    """The exported object: the fused-logits graph's variables (once) and the serving functions.

    Args:
        logits_model: a Keras model from images ``(B, S, S, channels)`` to fused logits ``(B, C)``
            (:meth:`ExportSource.logits_model`).
        class_names: output order.
        image_size: ``S``.
        thresholds: per-class thresholds or None.
        max_pixels: the decompression-bomb limit of the bytes signature.
        aspect: how non-square images are made square (``data.aspect``).
        assets: ``{file name: path}`` of files to carry in the export's ``assets/``.

    Example:
        >>> module = ServingModule(source.logits_model(), source.class_names, 64)  # doctest: +SKIP
        >>> tf.saved_model.save(module, "out", signatures=module.signatures())  # doctest: +SKIP
    """

    def __init__(self, logits_model, class_names, image_size: int, thresholds=None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, aspect: str = "stretch", assets: Optional[dict] = None,
                 temperatures=None):
        super().__init__(name="can_tf_serving")
        self.assets = {name: tf.saved_model.Asset(str(path)) for name, path in (assets or {}).items()}
        num_classes = len(class_names)
        channels = int(logits_model.inputs[0].shape[-1])
        thresholds = [float("nan")] * num_classes if thresholds is None else [float(t) for t in thresholds]
        # Informational: logits_model already divides by them (ExportSource.logits_model).
        temperatures = [1.0] * num_classes if temperatures is None else [float(t) for t in temperatures]

        def outputs(model_input):
            if channels == 3:
                model_input = tf.repeat(model_input, 3, axis=-1)
            logits = tf.cast(logits_model(model_input, training=False), tf.float32)
            return {"probabilities": tf.sigmoid(logits), "logits": logits}

        # autograph=False: the graphs use explicit tf.cond / tf.map_fn, nothing to convert.
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
                     autograph=False)
        def serve_bytes(image_bytes):
            def one(item):
                contents, index = item
                label = tf.strings.format("request image {}: ", index)
                return checked_decode(contents, image_size, aspect, max_pixels, label)

            batch = tf.map_fn(
                one, (image_bytes, tf.range(tf.shape(image_bytes)[0])),
                fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.float32),
            )
            return outputs(batch)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32, name="images")],
                     autograph=False)
        def serve_images(images):
            return outputs(pixels_to_model_input(images, image_size, aspect))

        @tf.function(input_signature=[], autograph=False)
        def metadata():
            return {
                "class_names": tf.constant(list(class_names), tf.string),
                "thresholds": tf.constant(thresholds, tf.float32),
                "temperatures": tf.constant(temperatures, tf.float32),
                "image_size": tf.constant(image_size, tf.int32),
                "max_pixels": tf.constant(max_pixels, tf.int64),
                "aspect": tf.constant(aspect, tf.string),
            }

        self.serve_bytes, self.serve_images, self.metadata = serve_bytes, serve_images, metadata
        # The only tracked state: the tf.Variables the traced functions read, each once. Tracking
        # these (not the Keras variable wrappers, and not the Keras model, which stays a closure)
        # saves nothing else of the model (optimizer, metrics, seed states), and lets TF1's session
        # loader - the one TF Serving uses - bind every captured variable to its restored value.
        used = {}
        for function in (serve_bytes, serve_images):
            for variable in function.get_concrete_function().variables:
                used.setdefault(id(variable), variable)
        self.model_variables = list(used.values())

    def signatures(self) -> dict:
        return {"serving_default": self.serve_bytes, "serving_images": self.serve_images,
                "metadata": self.metadata}


@dataclasses.dataclass
class SavedModelExport:
    """Where an export went and how it compared with the Keras model."""

    path: Path
    version: int
    verification: VerificationReport
    provenance: Optional[dict] = None
    warmup_requests: int = 0  # records in assets.extra/tf_serving_warmup_requests

    def summary(self) -> str:
        warm = f", with {self.warmup_requests} TF Serving warm-up requests" if self.warmup_requests else ""
        lines = [f"SavedModel version {self.version} at {self.path}{warm}", self.verification.summary()]
        warning = phantom_warning(self.provenance)
        return "\n".join(lines + ([warning] if warning else []))


def export_saved_model(
    source: Union[PathLike, ExportSource],
    base_dir: PathLike,
    name: str = "can",
    version: Optional[int] = None,
    images=None,
    *,
    num_images: int = 8,
    max_pixels: Optional[int] = None,
    atol: float = 1e-4,
) -> SavedModelExport:
    """Exports, verifies in a fresh process and publishes ``<base_dir>/<name>/<version>/``.

    Args:
        source: a run directory, a ``.keras`` file, or an :class:`ExportSource`.
        base_dir: TF Serving's model base path (the folder holding one folder per model name).
        name: the model name (its folder; the ``<name>`` in ``/v1/models/<name>:predict``).
        version: a positive integer; default: one more than the highest existing version.
        images: real images to verify on (folder, image, ``.txt`` list or list of paths);
            default: ``num_images`` from the run's training split.
        max_pixels: images whose header claims more pixels are refused by ``serving_default``;
            default: the run's ``data.max_pixels``.
        atol: largest accepted absolute difference from the Keras model's probabilities.

    Returns:
        A :class:`SavedModelExport`.

    Raises:
        ExportError: the version exists, the images cannot be read, the disk is full, or
            verification failed; the staging folder is removed first, so nothing half-written is left.

    Example:
        >>> export_saved_model("runs/small-1a2b3c4d", "exports/serving/models", name="can")  # doctest: +SKIP
    """
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"--name must be a plain folder name, got {name!r}")
    if not isinstance(source, ExportSource):
        source = load_source(source)
    model_dir = Path(base_dir) / name
    if version is not None:
        versioning.check_version_free(model_dir, version)  # before any work; checked again when publishing
    samples = sample_images(source, images, limit=num_images)
    expected = source.probabilities(_as_model_input(samples.images, source.input_channels))
    provenance = getattr(source, "provenance", None)
    described = describe_images(len(samples.paths), images, provenance, source.run_dir)

    remove_stale_temporaries(model_dir)  # staging folders of killed exports
    created, staging, asset_dir = [], None, None
    try:
        created = make_folders(model_dir)
        staging = versioning.staging_dir(model_dir, version)
        # The asset files are staged on the export's own disk too: a full system temporary folder
        # should not stop an export, and a full target disk is then the only one named.
        asset_dir = staging_folder(model_dir, "assets")
        module = ServingModule(
            source.logits_model(), source.class_names, source.image_size, source.thresholds,
            max_pixels=source.max_pixels if max_pixels is None else int(max_pixels), aspect=source.aspect,
            assets=_write_assets(source, asset_dir),
            temperatures=None if source.temperatures is None else source.temperatures.values,
        )
        tf.saved_model.save(module, str(staging), signatures=module.signatures())
        versioning.discard(asset_dir)
        if provenance is not None:
            # assets.extra: TF Serving's place for files beside the model that the graph does not read.
            write_json(staging / "assets.extra" / "provenance.json", provenance)
        write_model_card(staging / "assets.extra", card_for_run(
            source.run_dir, provenance, name=name, export=f"SavedModel for TF Serving, model name {name!r}",
            thresholds=source.threshold_set(), temperatures=source.temperatures))
        # Replayed here as TF Serving will at load time: a broken record fails the export, not the server.
        warmup_requests = warmup.add_warmup_requests(staging, samples.paths, samples.images, name, expected,
                                                     atol=atol)
        report = verify_saved_model(
            staging, samples.paths, samples.images, expected, class_names=source.class_names,
            num_weights=source.num_weights, atol=atol, images_description=described,
        )
        path = versioning.publish_dir(staging, model_dir, version)
    except BaseException as e:
        versioning.discard(staging)
        versioning.discard(asset_dir)
        remove_empty_folders(created)
        full = isinstance(e, Exception) and versioning.disk_full_error(
            e, _failed_path(e, model_dir), "nothing was published and the partial export was removed")
        if full:
            raise full from None
        if isinstance(e, (VerificationError, warmup.WarmupError)):
            raise ExportError(f"the export was not published (nothing was left behind): {e}") from None
        raise
    return SavedModelExport(path=path, version=int(path.name), verification=report, provenance=provenance,
                            warmup_requests=warmup_requests)


def _failed_path(error: BaseException, model_dir: Path) -> Path:
    # The file a full disk was hit on, unless it is in the model folder, where it would be a
    # hidden staging name: the fresh-process check works in the system's temporary folder.
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        filename = getattr(error, "filename", None)
        if filename:
            path = Path(filename)
            return model_dir if path.resolve().is_relative_to(model_dir.resolve()) else path
        error = error.__cause__ or error.__context__
    return model_dir


def _as_model_input(images, channels: int):
    return np.repeat(images, 3, axis=-1) if channels == 3 else images


def _write_assets(source: ExportSource, folder: Path) -> dict:
    assets = {"labels": folder / "labels.txt"}
    assets["labels"].write_text("".join(f"{n}\n" for n in source.class_names), encoding="utf-8")
    if source.threshold_set() is not None:
        assets["thresholds"] = folder / "thresholds.json"
        assets["thresholds"].write_text(source.threshold_set().to_text(), encoding="utf-8")
    if source.temperatures is not None:
        assets["calibration"] = folder / "calibration.json"
        assets["calibration"].write_text(source.temperatures.to_text(), encoding="utf-8")
    if source.config_path is not None:
        assets["config"] = folder / "config.yaml"
        shutil.copyfile(source.config_path, assets["config"])
    return assets
