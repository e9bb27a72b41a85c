"""The one configuration object that flows from the CLI into the library.

A run is described by a :class:`RunConfig` made of four typed sections (``data``, ``model``,
``loss``, ``train``). It comes from a named preset (see :mod:`can_tf.presets`), optionally a
YAML/JSON file, and ``section.field=value`` overrides, in that order. :meth:`RunConfig.validate`
runs before anything else and names the field at fault; the resolved config is written into every
run directory and every export so a result can be reproduced.

Example:
    >>> from can_tf.config import RunConfig
    >>> cfg = RunConfig.from_preset("small", overrides=["train.epochs=2"])
    >>> cfg.train.epochs
    2
    >>> cfg.to_dict()["model"]["backbones"]
    ['tiny', 'tiny']
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from can_tf.files import atomic_write_text
from can_tf.images import ASPECTS, DEFAULT_MAX_PIXELS
from can_tf.labels import CLASS_NAMES


from can_tf.errors import ConfigError  # noqa: E402  (defined there, kept importable from here)


@dataclass
class DataConfig:
    """Where the images and labels come from and how they are fed to the model.

    ``source`` is a ChestX-ray14 folder (label file + images below it), a CSV file (generic mode),
    or ``None`` for the built-in phantom data set.
    """

    source: Optional[str] = None
    format: str = "auto"  # auto | one of can_tf.data.table.READERS (chestxray14, csv, chexpert, mimic, ...)
    label_file: Optional[str] = None  # ChestX-ray14: overrides the Data_Entry file found in source
    image_root: Optional[str] = None  # where images live if not below source
    path_column: str = "path"  # CSV mode
    patient_column: Optional[str] = None  # CSV mode; None: every image is its own patient
    class_names: list = field(default_factory=lambda: list(CLASS_NAMES))
    split: str = "patient"  # patient (seeded random, by patient) | official (train_val/test lists)
    split_fractions: list = field(default_factory=lambda: [0.7, 0.1, 0.2])  # train/val/test
    val_fraction: float = 0.1  # official split: patients of train_val carved out for validation
    split_dir: Optional[str] = None  # reuse the split files written by an earlier run
    seed: int = 0
    views: Optional[list] = None  # e.g. ["PA"]; None keeps every view
    one_per_patient: bool = False
    image_size: int = 224
    augment: bool = True
    cache: str = "memory"  # none | memory | a file path prefix
    on_bad_image: str = "stop"  # stop | skip
    # Non-square images: stretch | pad | crop (see can_tf.images); stored with the model, applied by
    # every runtime (training, predict, serving signatures, the TFLite edge script).
    aspect: str = "stretch"
    # Images whose header claims more pixels are refused before decoding (decompression bombs).
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Fixed tf.data element order (parallel decode and augmentation hand over elements in order):
    # a rerun sees the same batches, though op results may still vary (GPU kernels, large graphs).
    # train.deterministic implies it.
    deterministic: bool = False
    # Reader options of the format (can_tf.data.<format>): e.g. {uncertainty: ones} for CheXpert/MIMIC,
    # {readers: any} for VinDr-CXR, {labeler: negbio} for MIMIC.
    options: dict = field(default_factory=dict)
    # Several data sets trained on together: each "path", "format:path" or {source, format, image_root,
    # options}; patients stay apart within each. Replaces source when given.
    sources: list = field(default_factory=list)
    phantom_patients: int = 240  # built-in phantom data set size when source is None
    phantom_image_size: int = 128

    def validate(self) -> None:
        from can_tf.data.table import FORMATS  # lazy: the table module imports pandas

        _one_of("data.format", self.format, FORMATS)
        if self.sources and self.source is not None:
            raise ConfigError("give data.source (one data set) or data.sources (several), not both")
        _one_of("data.split", self.split, ("patient", "official"))
        _one_of("data.on_bad_image", self.on_bad_image, ("stop", "skip"))
        _one_of("data.aspect", self.aspect, ASPECTS)
        if not isinstance(self.max_pixels, int) or self.max_pixels < self.image_size ** 2:
            raise ConfigError(f"data.max_pixels must be a whole number of at least data.image_size^2 "
                              f"({self.image_size ** 2}), got {self.max_pixels!r}")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions):
            raise ConfigError(
                f"data.split_fractions must be three non-negative numbers (train, val, test), "
                f"got {self.split_fractions!r}"
            )
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ConfigError(
                f"data.split_fractions must add up to 1, got {self.split_fractions!r} "
                f"(sum {sum(self.split_fractions):g})"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.image_size < 16:
            raise ConfigError(f"data.image_size must be at least 16 pixels, got {self.image_size}")
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"data.class_names must be non-empty and unique, got {self.class_names!r}")
        if self.views is not None:
            for view in self.views:
                _one_of("data.views", view, ("PA", "AP"))
        if self.phantom_patients < 10:
            raise ConfigError(f"data.phantom_patients must be at least 10, got {self.phantom_patients}")


# model.weights names torchxrayvision's published weights with this prefix ("xrv:densenet121-res224-all").
NAMED_WEIGHTS_PREFIX = "xrv:"


@dataclass
class ModelConfig:
    """Which network to build. ``kind='can'`` takes two backbones, ``'baseline'`` one.

    ``weights`` initialises the backbones: ``None`` (random), ``"imagenet"``, a local weights file
    (a Keras backbone ``.weights.h5`` or ``*_notop.h5``, or one written by ``can-tf weights import``),
    ``"xrv:<name>"`` (torchxrayvision's published weights, see
    :data:`can_tf.models.torch_import.NAMED_WEIGHTS`; downloaded and imported on first use), or a
    list of those with one entry per backbone, e.g. ``["xrv:densenet121-res224-all", "imagenet"]``.
    A single value goes into every backbone.
    """

    kind: str = "can"  # can | baseline
    backbones: list = field(default_factory=lambda: ["densenet121", "densenet121"])
    # A str, None, or a list of those (one per backbone): `object` lets _coerce accept every form, and
    # validate() checks them with one message naming model.weights.
    weights: Optional[object] = "imagenet"
    attention_dim: int = 256
    dropout: float = 0.0
    input_channels: int = 1

    def validate(self) -> None:
        from can_tf.models.backbones import BACKBONES  # lazy: pulls in Keras

        _one_of("model.kind", self.kind, ("can", "baseline"))
        expected = 2 if self.kind == "can" else 1
        if len(self.backbones) != expected:
            raise ConfigError(
                f"model.backbones must list {expected} backbone(s) for model.kind={self.kind!r}, "
                f"got {self.backbones!r}"
            )
        for name in self.backbones:
            _one_of("model.backbones", name, tuple(sorted(BACKBONES)))
        self.branch_weights()  # raises for any bad entry
        if self.attention_dim < 1:
            raise ConfigError(f"model.attention_dim must be positive, got {self.attention_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        _one_of("model.input_channels", self.input_channels, (1, 3))

    def branch_weights(self) -> list:
        """``model.weights`` as one entry per backbone (a single value repeated), each checked.

        Checked without downloading anything: a file must exist, and a file written by
        ``can-tf weights import`` must have been imported for its branch's backbone; an ``xrv:`` name
        must be known and fit its branch's backbone; ``"imagenet"`` needs a backbone Keras publishes
        ImageNet weights for. ``xrv:`` names are resolved to files by
        :func:`can_tf.models.build_model`.

        Raises:
            ConfigError: naming ``model.weights`` (and the entry) at fault.
        """
        from can_tf.models.backbones import BACKBONES  # lazy: pulls in Keras

        forms = "null, 'imagenet', a weights file, 'xrv:<name>', or a list of those (one per backbone)"
        entries = self.weights
        if isinstance(entries, (list, tuple)):
            if len(entries) != len(self.backbones):
                raise ConfigError(f"model.weights lists {len(entries)} entries for {len(self.backbones)} "
                                  f"backbone(s) {list(self.backbones)!r}; give one per backbone, or one value "
                                  f"for all")
            entries, label = list(entries), "model.weights[{}]"
        else:
            entries, label = [entries] * len(self.backbones), "model.weights"
        for index, (entry, backbone) in enumerate(zip(entries, self.backbones)):
            field_name = label.format(index)
            if entry is not None and not isinstance(entry, (str, os.PathLike)):
                raise ConfigError(f"{field_name} must be {forms}; got {entry!r}")
            if entry is None:
                continue
            entry = os.fspath(entry)
            if entry == "imagenet":
                if backbone in BACKBONES and not BACKBONES[backbone].imagenet:
                    raise ConfigError(f"{field_name}: backbone {backbone!r} has no ImageNet weights; use null, "
                                      f"a weights file or an xrv: name")
            elif entry.startswith(NAMED_WEIGHTS_PREFIX):
                _check_named_weights(field_name, entry, backbone)
            elif not os.path.isfile(entry):
                raise ConfigError(f"{field_name} must be {forms}; no file at {entry!r}")
            else:
                from can_tf.models.weights_info import read_weights_info

                info = read_weights_info(entry)
                if info is not None and info.backbone != backbone:
                    raise ConfigError(f"{field_name}: {entry} was imported for backbone {info.backbone!r}, "
                                      f"not {backbone!r}")
        return entries


def _check_named_weights(field_name: str, entry: str, backbone: str) -> None:
    from can_tf.models.torch_import import NAMED_WEIGHTS  # lazy: pulls in Keras

    name = entry[len(NAMED_WEIGHTS_PREFIX):]
    if name not in NAMED_WEIGHTS:
        known = ", ".join(NAMED_WEIGHTS_PREFIX + n for n in sorted(NAMED_WEIGHTS))
        raise ConfigError(f"{field_name}: unknown torchxrayvision weights {entry!r}; known: {known}")
    if NAMED_WEIGHTS[name].backbone != backbone:
        raise ConfigError(f"{field_name}: {entry!r} fits backbone {NAMED_WEIGHTS[name].backbone!r}, "
                          f"not {backbone!r}")


@dataclass
class LossConfig:
    """The training loss. ``can`` = balance loss on the fused output + attention loss on branches."""

    name: str = "can"  # can | balance | bce | weighted_bce | focal
    gamma: float = 2.0  # focusing parameter of the balance and focal losses
    attention_weight: float = 1.0  # lambda of the attention loss (CAN only)
    alpha: Optional[float] = None  # focal loss only: positive weight in [0, 1] (negatives 1 - alpha)

    def validate(self) -> None:
        _one_of("loss.name", self.name, ("can", "balance", "bce", "weighted_bce", "focal"))
        if self.alpha is not None:
            if self.name != "focal":
                raise ConfigError(f"loss.alpha applies to loss.name='focal' only (got loss.name={self.name!r}); "
                                  f"the balance and CAN losses weight each class by its prevalence instead")
            if not 0.0 <= self.alpha <= 1.0:
                raise ConfigError(f"loss.alpha must be in [0, 1], got {self.alpha}")
        if self.gamma < 0:
            raise ConfigError(f"loss.gamma must be >= 0, got {self.gamma}")
        if self.attention_weight < 0:
            raise ConfigError(f"loss.attention_weight must be >= 0, got {self.attention_weight}")


@dataclass
class TrainConfig:
    """Optimisation, distribution and run-directory settings."""

    epochs: int = 30
    batch_size: int = 32  # global batch size, split across replicas
    optimizer: str = "adamw"  # adamw | adam | sgd
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    schedule: str = "cosine"  # cosine | plateau | constant
    warmup_epochs: float = 1.0
    steps_per_epoch: Optional[int] = None  # None: one pass over the training split
    steps_per_execution: int = 1
    mixed_precision: str = "off"  # off | auto | float16 | bfloat16
    xla: bool = False
    early_stopping_patience: int = 10  # epochs without a better val mean AUROC; 0 disables
    # Transfer learning: the backbones stay frozen (weights and batch-norm statistics) for the first
    # freeze_epochs epochs while the heads and cross-attention train; then every layer trains, at
    # the learning rate times unfreeze_lr_factor. See can_tf.training.callbacks.BackboneFreeze.
    freeze_epochs: int = 0
    unfreeze_lr_factor: float = 0.1
    strategy: str = "auto"  # auto | default | mirrored | multi_worker
    run_dir: Optional[str] = None  # None: runs/<timestamp>
    seed: int = 0
    # A rerun on the same machine repeats the run exactly (history, checkpoints, metrics): seeds,
    # TF op determinism (which also forces deterministic tf.data whatever data.deterministic says)
    # and Grappler off. See can_tf.training.determinism for what it covers and costs.
    deterministic: bool = False
    verbose: str = "auto"  # auto | 0 | 1 | 2 (Keras progress bar at a terminal)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be at least 1, got {self.batch_size}")
        _one_of("train.optimizer", self.optimizer, ("adamw", "adam", "sgd"))
        _one_of("train.schedule", self.schedule, ("cosine", "plateau", "constant"))
        _one_of("train.mixed_precision", self.mixed_precision, ("off", "auto", "float16", "bfloat16"))
        _one_of("train.strategy", self.strategy, ("auto", "default", "mirrored", "multi_worker"))
        _one_of("train.verbose", str(self.verbose), ("auto", "0", "1", "2"))
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be positive, got {self.learning_rate}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"train.steps_per_epoch must be positive, got {self.steps_per_epoch}")
        if self.steps_per_execution < 1:
            raise ConfigError(f"train.steps_per_execution must be positive, got {self.steps_per_execution}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.freeze_epochs < 0 or (self.freeze_epochs > 0 and self.freeze_epochs >= self.epochs):
            raise ConfigError(f"train.freeze_epochs must be >= 0 and less than train.epochs ({self.epochs}), "
                              f"got {self.freeze_epochs}")
        if not 0.0 < self.unfreeze_lr_factor <= 1.0:
            raise ConfigError(f"train.unfreeze_lr_factor must be in (0, 1], got {self.unfreeze_lr_factor}")


@dataclass
class RunConfig:
    """Everything needed to reproduce a run: data, model, loss and training sections."""

    preset: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, *, where: str = "config") -> "RunConfig":
        """Builds a config from nested dicts, rejecting unknown sections and fields by name."""
        return _from_dict(cls, values, prefix="", where=where)

    @classmethod
    def from_preset(cls, name: str, overrides: Optional[list] = None) -> "RunConfig":
        return cls.resolve(preset=name, overrides=overrides, validate=False)

    @classmethod
    def from_file(cls, path: str, overrides: Optional[list] = None) -> "RunConfig":
        """Reads a YAML or JSON file over its ``preset`` (default ``small``), then the overrides."""
        return cls.resolve(config_file=path, overrides=overrides, validate=False)

    @classmethod
    def resolve(cls, preset: Optional[str] = None, config_file: Optional[str] = None,
                overrides: Optional[list] = None, validate: bool = True) -> "RunConfig":
        """The CLI's entry: preset (default ``small``), then a config file over it, then overrides.

        A file may name its own ``preset``; naming a different one with ``--preset`` is an error.
        """
        from can_tf.presets import preset_config

        values = _read_config_file(config_file) if config_file else {}
        file_preset = values.pop("preset", None)
        if preset and file_preset and preset != file_preset:
            raise ConfigError(f"--preset {preset!r} disagrees with preset {file_preset!r} in {config_file}")
        name = preset or file_preset or "small"
        config = cls.from_dict(_deep_merge(preset_config(name), values),
                               where=config_file or f"preset {name!r}")
        config.preset = name
        config = config.with_overrides(overrides or [])
        return config.validate() if validate else config

    def with_overrides(self, overrides: list) -> "RunConfig":
        """Applies ``section.field=value`` strings; values are parsed as YAML (``[a, b]``, ``null``)."""
        values = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.field=value")
            key, raw = item.split("=", 1)
            parts = key.strip().split(".")
            if len(parts) != 2 or parts[0] not in values or not isinstance(values[parts[0]], dict):
                raise ConfigError(
                    f"override {item!r}: unknown field {key!r}; use section.field with section one of "
                    f"{', '.join(s for s in values if isinstance(values[s], dict))}"
                )
            section, name = parts
            if name not in values[section]:
                raise ConfigError(
                    f"override {item!r}: {section} has no field {name!r}; known: "
                    f"{', '.join(sorted(values[section]))}"
                )
            try:
                values[section][name] = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as e:
                raise ConfigError(f"override {item!r}: cannot parse value {raw!r}: {e}") from None
        return RunConfig.from_dict(values, where="overrides")

    # ---- checking and saving ------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        self.data.validate()
        self.model.validate()
        self.loss.validate()
        self.train.validate()
        if self.loss.name == "can" and self.model.kind != "can":
            raise ConfigError("loss.name='can' needs model.kind='can' (the attention loss uses both branches)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        """Writes the config as YAML (``.yaml``/``.yml``) or JSON, atomically."""
        if str(path).endswith(".json"):
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        else:
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        atomic_write_text(path, text)

    @property
    def num_classes(self) -> int:
        return len(self.data.class_names)


# ---- helpers ------------------------------------------------------------------------------------
def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_config_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    kind = "JSON" if path.endswith(".json") else "YAML"
    try:
        values = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path} is not valid {kind}: {e}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(values).__name__}")
    return values


def _from_dict(cls, values: Any, prefix: str, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(prefix + u for u in unknown)}; "
            f"known: {', '.join(prefix + k for k in sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{prefix}{name}.", where)
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, hint, where)
    return cls(**kwargs)


def _coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """Checks a scalar field's type, accepting ints for floats and tuples for lists."""
    optional = False
    if get_origin(hint) is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = len(args) < len(get_args(hint))
        hint = args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {name} must not be null")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads exponent floats without a dot ("5e-3") as strings.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is list and isinstance(value, tuple):
        return list(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool) and name.endswith("verbose"):
        return str(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where}: {name} must be {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value
