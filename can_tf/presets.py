"""Named run presets: plain dicts of config values plus metadata (the keras-hub way).

Each preset gives the sections of :class:`can_tf.config.RunConfig` that differ from the defaults.

The ``-xrv`` presets start from chest X-ray weights instead of ImageNet: torchxrayvision's
DenseNet-121 trained on seven public chest X-ray data sets (``xrv:densenet121-res224-all``,
downloaded and imported on first use; see :mod:`can_tf.models.torch_import`). The paper
initialises both branches from ImageNet (``paper``); ``paper-xrv``, ``chexnet-xrv`` and
``hetero-xrv`` are our variants. Their backbones stay frozen for the first epoch, so the new heads
and the cross-attention settle before the pretrained features move, then train at a tenth of the
learning rate (``train.freeze_epochs``, ``train.unfreeze_lr_factor``).

Example:
    >>> from can_tf.presets import PRESETS
    >>> sorted(PRESETS)
    ['chexnet', 'chexnet-xrv', 'hetero', 'hetero-xrv', 'paper', 'paper-xrv', 'small', 'small-baseline']
    >>> PRESETS["hetero-xrv"]["config"]["model"]["weights"]
    ['xrv:densenet121-res224-all', 'imagenet']
"""

from __future__ import annotations

import copy

from can_tf.config import ConfigError

# torchxrayvision's DenseNet-121 trained on NIH, PadChest, CheXpert, MIMIC-CXR, Google, OpenI and RSNA.
XRV_ALL = "xrv:densenet121-res224-all"
# Transfer from pretrained backbones: heads and cross-attention first, then everything, gently.
TRANSFER = {"freeze_epochs": 1, "unfreeze_lr_factor": 0.1}

PRESETS = {
    "paper": {
        "description": "The paper's configuration: two DenseNet-121 branches with cross-attention, "
                       "224 px, CAN loss (balance + attention), ImageNet weights (the paper's choice; "
                       "'paper-xrv' starts from chest X-ray weights instead).",
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
    "paper-xrv": {
        "description": "The paper's architecture (two DenseNet-121 branches with cross-attention, 224 px, "
                       "CAN loss) with chest X-ray initialisation: both branches start from torchxrayvision's "
                       "densenet121-res224-all. Ours; the paper's choice is ImageNet ('paper'). Backbones "
                       "frozen for the first epoch, then trained at 0.1x the learning rate.",
        "config": {
            "model": {"kind": "can", "backbones": ["densenet121", "densenet121"], "weights": XRV_ALL,
                      "attention_dim": 256},
            "data": {"image_size": 224},
            "loss": {"name": "can", "gamma": 2.0, "attention_weight": 1.0},
            "train": {"epochs": 30, "batch_size": 32, "optimizer": "adamw", "learning_rate": 1e-4,
                      "schedule": "cosine", "warmup_epochs": 1.0, **TRANSFER},
        },
    },
    "chexnet-xrv": {
        "description": "The CheXNet baseline (one DenseNet-121, 224 px, class-weighted BCE, Adam with "
                       "reduce-on-plateau) started from torchxrayvision's densenet121-res224-all instead of "
                       "CheXNet's ImageNet ('chexnet'). Ours. Backbone frozen for the first epoch, then "
                       "trained at 0.1x the learning rate.",
        "config": {
            "model": {"kind": "baseline", "backbones": ["densenet121"], "weights": XRV_ALL},
            "data": {"image_size": 224},
            "loss": {"name": "weighted_bce"},
            "train": {"epochs": 30, "batch_size": 16, "optimizer": "adam", "learning_rate": 1e-3,
                      "schedule": "plateau", "warmup_epochs": 0.0, **TRANSFER},
        },
    },
    "hetero-xrv": {
        "description": "Heterogeneous initialisation: two DenseNet-121 branches, branch 1 from "
                       "torchxrayvision's densenet121-res224-all (chest X-rays), branch 2 from ImageNet, "
                       "224 px, CAN loss. Ours; the paper initialises both from ImageNet ('paper'). "
                       "Backbones frozen for the first epoch, then trained at 0.1x the learning rate.",
        "config": {
            "model": {"kind": "can", "backbones": ["densenet121", "densenet121"], "weights": [XRV_ALL, "imagenet"],
                      "attention_dim": 256},
            "data": {"image_size": 224},
            "loss": {"name": "can", "gamma": 2.0, "attention_weight": 1.0},
            "train": {"epochs": 30, "batch_size": 32, "optimizer": "adamw", "learning_rate": 1e-4,
                      "schedule": "cosine", "warmup_epochs": 1.0, **TRANSFER},
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
