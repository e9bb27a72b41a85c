"""Named run presets: plain dicts of config values plus metadata (the keras-hub way).

Each preset gives the sections of :class:`can_tf.config.RunConfig` that differ from the defaults.

Example:
    >>> from can_tf.presets import PRESETS
    >>> sorted(PRESETS)
    ['chexnet', 'hetero', 'paper', 'small', 'small-baseline']
"""

from __future__ import annotations

import copy

from can_tf.config import ConfigError

PRESETS = {
    "paper": {
        "description": "The paper's configuration: two DenseNet-121 branches with cross-attention, "
                       "224 px, CAN loss (balance + attention), ImageNet weights.",
        "config": {
            "model": {"kind": "can", "backbones": ["densenet121", "densenet121"], "weights": "imagenet",
                      "attention_dim": 256},
            "data": {"image_size": 224},
            "loss": {"name": "can", "gamma": 2.0, "attention_weight": 1.0},
            "train": {"epochs": 30, "batch_size": 32, "optimizer": "adamw", "learning_rate": 1e-4,
                      "schedule": "cosine", "warmup_epochs": 1.0},
        },
    },
    "hetero": {
        "description": "A heterogeneous pair: DenseNet-121 + ResNet-50 branches (feature maps of "
                       "different channels), 224 px, CAN loss.",
        "config": {
            "model": {"kind": "can", "backbones": ["densenet121", "resnet50"], "weights": "imagenet",
                      "attention_dim": 256},
            "data": {"image_size": 224},
            "loss": {"name": "can"},
            "train": {"epochs": 30, "batch_size": 32, "optimizer": "adamw", "learning_rate": 1e-4,
                      "schedule": "cosine"},
        },
    },
    "chexnet": {
        "description": "The CheXNet baseline: one DenseNet-121 with a sigmoid head, 224 px, "
                       "class-weighted BCE, Adam with reduce-on-plateau (Rajpurkar et al. 2017).",
        "config": {
            "model": {"kind": "baseline", "backbones": ["densenet121"], "weights": "imagenet"},
            "data": {"image_size": 224},
            "loss": {"name": "weighted_bce"},
            "train": {"epochs": 30, "batch_size": 16, "optimizer": "adam", "learning_rate": 1e-3,
                      "schedule": "plateau", "warmup_epochs": 0.0},
        },
    },
    "small": {
        "description": "A small, fast CAN for CPU demos and tests: two tiny backbones at 64 px, "
                       "trained from scratch on the built-in phantom data in a few minutes.",
        "config": {
            "model": {"kind": "can", "backbones": ["tiny", "tiny"], "weights": None, "attention_dim": 32},
            "data": {"image_size": 64, "cache": "memory"},
            "loss": {"name": "can"},
            # 40 short epochs (12 steps each on the default phantom set): `can-tf fit` takes ~1.5-2.5
            # min on 2 shared CPU cores for a test mean AUROC of 0.88-0.93; 8 epochs reached ~0.65.
            "train": {"epochs": 40, "batch_size": 32, "optimizer": "adamw", "learning_rate": 5e-3,
                      "schedule": "cosine", "warmup_epochs": 0.5, "early_stopping_patience": 0},
        },
    },
    "small-baseline": {
        "description": "The single-backbone baseline at the 'small' preset's size, for side-by-side "
                       "comparisons with it.",
        "config": {
            "model": {"kind": "baseline", "backbones": ["tiny"], "weights": None},
            "data": {"image_size": 64, "cache": "memory"},
            "loss": {"name": "balance"},
            # the same schedule as 'small', so that the two compare on equal terms
            "train": {"epochs": 40, "batch_size": 32, "optimizer": "adamw", "learning_rate": 5e-3,
                      "schedule": "cosine", "warmup_epochs": 0.5, "early_stopping_patience": 0},
        },
    },
}


def preset_config(name: str) -> dict:
    """The config values of a preset, as a fresh nested dict."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name]["config"])
