"""Where a model comes from: data, splits, preset, model, seeds, best epoch and software versions.

A run records its provenance in ``<run>/provenance.json`` (:class:`can_tf.run.Run` writes it when
training starts and again when it finishes); reports and every export carry a copy, so a model
file says which data it learned from wherever it goes. A model trained on the built-in phantom
data says so in bold wherever it is used (:func:`phantom_warning`): it is not a diagnostic model.

Example:
    >>> from can_tf.config import RunConfig
    >>> p = build_provenance(RunConfig.from_preset("small"))
    >>> p["data"]["phantom"], p["model"]["image_size"]
    (True, 64)
    >>> phantom_warning(p)
    "**Trained on can-tf's phantom data (synthetic images, not radiographs): not a diagnostic model.**"
"""

from __future__ import annotations

import datetime
import platform
from typing import Optional

FORMAT_VERSION = 1
PHANTOM_DESCRIPTION = "built-in phantom data (synthetic images)"
# The first line of the README that `can_tf.data.phantom.write_phantom` puts in every phantom folder.
PHANTOM_README_TITLE = "# can-tf phantom data set"
PHANTOM_WARNING = ("**Trained on can-tf's phantom data (synthetic images, not radiographs): "
                   "not a diagnostic model.**")


def software_versions() -> dict:
    """``{"can_tf", "tensorflow", "keras", "python"}`` of this process (TF/Keras where installed)."""
    import sys

    from can_tf import __version__

    versions = {"can_tf": __version__, "python": platform.python_version()}
    for name in ("tensorflow", "keras"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions[name] = getattr(module, "__version__", "unknown")
    return versions


def is_phantom_source(source) -> bool:
    """True for the built-in phantom data (``None``) and for a folder written by ``can-tf data synth``.

    A URL (``gs://...``: packed data, read through TensorFlow) is not looked at on the local disk.
    """
    if source is None:
        return True
    if "://" in str(source):
        return False
    from pathlib import Path

    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    try:
        with open(folder / "README.md", encoding="utf-8") as f:
            return f.readline().startswith(PHANTOM_README_TITLE)
    except (OSError, UnicodeDecodeError):
        return False


def describe_data(data_config) -> str:
    """A one-line description of ``data.source``: the path, or the built-in phantom data; for
    ``data.sources``, each data set's."""
    if data_config.sources:
        from can_tf.data.table import source_specs

        return "merge of " + "; ".join(_describe_source(spec["source"]) for spec in source_specs(data_config.sources))
    return _describe_source(data_config.source)


def _describe_source(source) -> str:
    if source is None:
        return PHANTOM_DESCRIPTION
    if is_phantom_source(source):
        return f"phantom data at {source} (synthetic images)"
    return str(source)


def trained_on_phantom(data_config) -> bool:
    """True when any of the data a config trains on is phantom data (one source, or any of several)."""
    if data_config.sources:
        from can_tf.data.table import source_specs

        return any(is_phantom_source(spec["source"]) for spec in source_specs(data_config.sources))
    return is_phantom_source(data_config.source)


def split_counts(splits: dict) -> dict:
    """``{split: {"images": n, "patients": m}}`` of split frames with a ``patient_id`` column."""
    return {name: {"images": int(len(frame)), "patients": int(frame["patient_id"].nunique())}
            for name, frame in splits.items()}


def build_provenance(config, *, splits: Optional[dict] = None, table_attrs: Optional[dict] = None,
                     best_epoch: Optional[int] = None, epochs_run: Optional[int] = None) -> dict:
    """The provenance record of a run of ``config`` (JSON-serialisable).

    Args:
        config: the resolved :class:`can_tf.config.RunConfig`.
        splits: ``{"train": df, "val": df, "test": df}`` as the run uses them.
        table_attrs: ``df.attrs`` of the loaded data table (format, missing images, filters).
        best_epoch: 1-based epoch of the best model, once known.
        epochs_run: finished epochs, once known.
    """
    data = config.data
    attrs = dict(table_attrs or {})
    filters = {"views": data.views, "one_per_patient": data.one_per_patient}
    for key in ("missing_images", "dropped_by_view", "dropped_by_one_per_patient", "bad_images"):
        if key in attrs:
            value = attrs[key]
            filters[key] = int(value) if isinstance(value, (int, float)) else len(value)
    return {
        "format_version": FORMAT_VERSION,
        "data": {
            "source": data.source,
            "description": describe_data(data),
            "phantom": trained_on_phantom(data),
            "sources": data.sources or None,
            "format": attrs.get("format", data.format),
            "image_root": data.image_root,
            "split": data.split,
            "split_counts": split_counts(splits) if splits else None,
            "filters": filters,
            "class_names": list(data.class_names),
        },
        "preset": config.preset,
        "model": {
            "kind": config.model.kind,
            "backbones": list(config.model.backbones),
            "weights": config.model.weights,
            "image_size": data.image_size,
            "input_channels": config.model.input_channels,
        },
        "loss": config.loss.name,
        "seeds": {"data": data.seed, "train": config.train.seed},
        "deterministic": bool(getattr(config.train, "deterministic", False)),
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "versions": software_versions(),
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def is_phantom(provenance: Optional[dict]) -> bool:
    """True when ``provenance`` says the model was trained on the built-in phantom data."""
    return bool(provenance and (provenance.get("data") or {}).get("phantom"))


def phantom_warning(provenance: Optional[dict]) -> Optional[str]:
    """The bold "not a diagnostic model" line for a phantom-trained model, else None."""
    return PHANTOM_WARNING if is_phantom(provenance) else None


def summary_lines(provenance: Optional[dict]) -> list:
    """Human-readable ``- key: value`` lines (Markdown) of a provenance record; [] for None."""
    if not provenance:
        return []
    data, model = provenance.get("data") or {}, provenance.get("model") or {}
    lines = [f"- data: {data.get('description')}"]
    counts = data.get("split_counts") or {}
    if counts:
        lines.append("- splits: " + ", ".join(
            f"{name} {c['images']} images / {c['patients']} patients" for name, c in counts.items()))
    filters = data.get("filters") or {}
    dropped = {k: v for k, v in filters.items() if k not in ("views", "one_per_patient") and v}
    if filters.get("views") or filters.get("one_per_patient") or dropped:
        lines.append("- filters: " + ", ".join(f"{k}={v}" for k, v in filters.items() if v not in (None, False, 0)))
    lines.append(f"- preset: {provenance.get('preset')}; model: {model.get('kind')} "
                 f"({', '.join(model.get('backbones') or [])}), {model.get('image_size')} px, "
                 f"weights {model.get('weights')}; loss: {provenance.get('loss')}")
    seeds = provenance.get("seeds") or {}
    lines.append(f"- seeds: data {seeds.get('data')}, train {seeds.get('train')}"
                 + ("; deterministic mode" if provenance.get("deterministic") else ""))
    if provenance.get("best_epoch") is not None:
        lines.append(f"- best epoch: {provenance['best_epoch']} of {provenance.get('epochs_run')}")
    versions = provenance.get("versions") or {}
    lines.append("- software: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines
