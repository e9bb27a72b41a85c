"""Import PyTorch checkpoints (torchvision, torchxrayvision, CheXNet) into can-tf backbones.

A checkpoint is mapped tensor by tensor onto a backbone built by
:func:`can_tf.models.backbones.build_backbone`, and the result is a Keras ``.weights.h5`` file that
carries a :class:`can_tf.models.weights_info.WeightsInfo` (source, sha256, input scaling). Keras'
DenseNet-121/169/201 have torchvision's layout already; torchvision's ResNets (v1.5) go into
``resnet50_tv`` / ``resnet101_tv``. What changes between the frameworks:

- Convolution kernels: torch stores ``(O, I, H, W)``, Keras ``(H, W, I, O)``: a transpose.
- Batch norm: ``gamma * (x - running_mean) / sqrt(running_var + eps) + beta`` in both, the four
  tensors copied as they are; torch's ``eps = 1e-5`` (Keras' applications use ``1.001e-5``) is set
  on the backbone by :func:`can_tf.models.backbones.backbone_options`.
- A gray first convolution (torchxrayvision: ``I = 1``) meets the backbone's RGB input, which is
  the radiograph replicated three times: with the kernel divided by 3 on each channel,
  ``sum_c (w / 3) * x = w * x`` exactly.
- Input scaling: torchxrayvision's models take ``[-1024, 1024]``, torchvision's ImageNet mean/std;
  both become the backbone's :class:`~can_tf.models.backbones.ImagePreprocessing` mode (``"xrv"``,
  ``"torch"``), so the backbone still takes pixels in ``[0, 255]``.
- Classifier heads (``classifier``, ``fc``) and torchxrayvision's extras (``op_threshs``,
  ``pathologies``) have no place in a backbone: they are left out and reported.

Every other tensor must find its layer and every layer its tensors, with the same shape; otherwise
one :class:`can_tf.errors.ModelFileError` lists what did not fit and nothing is written.

An import is checked by running both sides (:func:`verify_import`, ``can-tf weights import ...
--check IMAGES``): the torch model the checkpoint belongs to, fed as its weights expect, and the
Keras backbone built from the written file, fed ``[0, 255]`` gray; the max ``|diff|`` of the
feature map, the pooled features and the checkpoint's own classifier (logits, probabilities) must
stay within ``tolerance * max(1, max |value|)`` (default ``1e-4``: above float32 rounding through a
DenseNet-121, orders of magnitude below a wrong tensor).

PyTorch is needed only here and only when a checkpoint is read (``pip install "can-tf[torch]"``).

Example (the key mapping needs no PyTorch):
    >>> torch_module_name("densenet", "conv2_block1_1_conv")
    'denseblock1.denselayer1.conv1'
    >>> torch_module_name("resnet", "conv3_block1_0_bn")
    'layer2.0.downsample.1'
    >>> normalize_key("features.denseblock1.denselayer1.norm.1.weight")  # torchvision's old names
    'features.denseblock1.denselayer1.norm1.weight'
    >>> import numpy as np
    >>> kernel = conv_kernel(np.ones((64, 1, 7, 7), "float32"), input_channels=3)
    >>> kernel.shape, float(kernel.sum(axis=2)[0, 0, 0])  # gray kernel spread over RGB
    ((7, 7, 3, 64), 1.0)
    >>> check = VerifyResult("x.pth", Path("x.weights.h5"), "torchvision densenet121", "densenet121", "torch",
    ...                      224, ("a.png",), {"feature map": 2e-6, "pooled features": 0.03},
    ...                      {"feature map": 9.0, "pooled features": 1.0}, {"feature map": (1, 7, 7, 1024),
    ...                      "pooled features": (1, 1024)})
    >>> check.failures
    ('pooled features',)
    >>> check.failure()
    'x.weights.h5 does not compute what x.pth computes: pooled features max |diff| 0.03 > 0.0001 (tolerance 0.0001) on 1 images at 224 px'
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

import keras
import numpy as np

from can_tf.errors import ModelFileError
from can_tf.files import sha256_of
from can_tf.models.weights_info import WeightsInfo, read_weights_info, write_weights_info

TORCH_MISSING = 'PyTorch is needed to import checkpoints: pip install "can-tf[torch]"'
CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin", ".ckpt")
WEIGHTS_SUFFIX = ".weights.h5"
BUILD_SIZE = 224  # the size the backbone is built at to take the tensors; weights fit any size
MAX_LISTED = 5  # keys named in an error before "... and N more"

_XRV_RELEASES = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"


@dataclasses.dataclass(frozen=True)
class NamedWeights:
    """A published checkpoint known by name (torchxrayvision's ``weights=`` strings)."""

    url: str
    backbone: str
    image_size: int
    framework: str = "torchxrayvision"
    preprocessing: str = "xrv"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _xrv_densenet(file: str) -> NamedWeights:
    return NamedWeights(_XRV_RELEASES + file, "densenet121", 224)


# torchxrayvision's `xrv.models.model_urls` (1.5.x), the checkpoints a backbone can take.
NAMED_WEIGHTS: dict[str, NamedWeights] = {
    "densenet121-res224-all": _xrv_densenet(
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"),
    "densenet121-res224-nih": _xrv_densenet("nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"),
    "densenet121-res224-pc": _xrv_densenet("pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"),
    "densenet121-res224-chex": _xrv_densenet("chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"),
    "densenet121-res224-rsna": _xrv_densenet("kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"),
    "densenet121-res224-mimic_nb": _xrv_densenet(
        "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"),
    "densenet121-res224-mimic_ch": _xrv_densenet(
        "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"),
    "resnet50-res512-all": NamedWeights(_XRV_RELEASES + "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
                                        "resnet50_tv", 512),
}

# Backbone -> the family of its key mapping (see torch_module_name).
SUPPORTED_BACKBONES = {
    "densenet121": "densenet", "densenet169": "densenet", "densenet201": "densenet",
    "resnet50_tv": "resnet", "resnet101_tv": "resnet",
}
# The first convolution's torch module: whatever stands before it in a key is the prefix to strip.
_FIRST_CONV = {"densenet": "conv0", "resnet": "conv1"}
# Modules and entries beside the backbone: heads and torchxrayvision's extras.
IGNORED_MODULES = ("classifier", "fc", "op_threshs", "pathologies", "targets")


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """What :func:`import_checkpoint` wrote.

    Attributes:
        out: the ``.weights.h5`` file.
        info: the :class:`WeightsInfo` stored in it.
        tensors_mapped: checkpoint tensors copied into the backbone.
        parameters: values in the backbone (batch-norm statistics included).
        ignored: checkpoint keys and entries left out (heads, torchxrayvision extras), sorted;
            batch norm's ``num_batches_tracked`` counters are not listed.
        seconds: wall time of the import.
        file_size: bytes of ``out``.
    """

    out: Path
    info: WeightsInfo
    tensors_mapped: int
    parameters: int
    ignored: tuple
    seconds: float
    file_size: int

    def summary(self) -> str:
        """A few lines for the command line."""
        shown = ", ".join(self.ignored[:8]) + (f", ... ({len(self.ignored)} in all)" if len(self.ignored) > 8 else "")
        return "\n".join([
            f"wrote {self.out} ({self.file_size / 1e6:.1f} MB) in {self.seconds:.1f} s",
            f"backbone {self.info.backbone}: {self.tensors_mapped} tensors mapped, {self.parameters:,} parameters",
            f"source {self.info.source} ({self.info.framework}, {self.info.input_channels}-channel input), "
            f"preprocessing {self.info.preprocessing!r}",
            f"ignored: {shown or 'nothing'}",
        ])


# --- the key mapping -------------------------------------------------------------------------------

_DENSE_LAYER = re.compile(r"conv(\d)_block(\d+)_(0_bn|1_conv|1_bn|2_conv)")
_TRANSITION = re.compile(r"pool(\d)_(bn|conv)")
_DENSE_PARTS = {"0_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2"}
_BOTTLENECK = re.compile(r"conv(\d)_block(\d+)_(\d)_(conv|bn)")
# torchvision's DenseNet once named its layers "norm.1", "conv.2"; its loader renames them so.
_OLD_DENSE_KEY = re.compile(r"(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")


def torch_module_name(family: str, layer: str) -> str:
    """The torch module (relative to the model's features) behind a Keras layer of the backbone.

    ``family`` is ``"densenet"`` (Keras' DenseNet names against torchvision's ``features.*``) or
    ``"resnet"`` (``resnet*_tv`` names against torchvision's ResNet). A ValueError for a layer
    without a counterpart.
    """
    if family == "densenet":
        fixed = {"conv1_conv": "conv0", "conv1_bn": "norm0", "bn": "norm5"}
        if layer in fixed:
            return fixed[layer]
        match = _DENSE_LAYER.fullmatch(layer)
        if match:
            block, index, part = match.groups()
            return f"denseblock{int(block) - 1}.denselayer{index}.{_DENSE_PARTS[part]}"
        match = _TRANSITION.fullmatch(layer)
        if match:
            return f"transition{int(match[1]) - 1}.{'norm' if match[2] == 'bn' else 'conv'}"
    elif family == "resnet":
        if layer in ("conv1_conv", "conv1_bn"):
            return "conv1" if layer == "conv1_conv" else "bn1"
        match = _BOTTLENECK.fullmatch(layer)
        if match:
            stage, block, index, kind = match.groups()
            head = f"layer{int(stage) - 1}.{int(block) - 1}"
            if index == "0":
                return f"{head}.downsample.{0 if kind == 'conv' else 1}"
            return f"{head}.{kind}{index}"
    raise ValueError(f"no torch counterpart for layer {layer!r} of a {family} backbone")


def normalize_key(key: str) -> str:
    """A state-dict key in today's torchvision names (``norm.1`` -> ``norm1`` in dense layers)."""
    match = _OLD_DENSE_KEY.fullmatch(key)
    return match[1] + match[2] if match else key


def conv_kernel(weight: np.ndarray, input_channels: int) -> np.ndarray:
    """A torch ``(O, I, H, W)`` kernel as Keras' ``(H, W, I, O)``.

    A one-channel kernel taking ``input_channels=3`` is divided by 3 and repeated over the
    channels: exact for a gray image replicated to RGB, which is what the backbones get.
    """
    kernel = np.transpose(weight, (2, 3, 1, 0))
    if kernel.shape[2] == 1 and input_channels == 3:
        kernel = np.repeat(kernel / 3.0, 3, axis=2)
    return kernel


# --- reading checkpoints -----------------------------------------------------------------------------

def import_torch():
    """``import torch`` made safe in a process that has loaded TensorFlow; a clear error without it.

    Works around tensorflow/tensorflow#124205: TensorFlow >= 2.20 wheels load their LLVM with
    ``RTLD_GLOBAL``, and importing Triton (>= 3.7, a dependency of Linux PyTorch wheels, imported
    by ``torch._dynamo``, e.g. when ``torchvision`` loads or a torchvision model is unpickled)
    afterwards crashes the interpreter with SIGSEGV. Nothing here needs Triton (it compiles GPU
    kernels), so where TensorFlow is loaded and Triton is not, Triton is marked absent: the crash
    becomes the ImportError that PyTorch handles as "no Triton". ``tests/test_torch_import.py``
    checks that the crash is still there.

    Raises:
        ModelFileError: PyTorch is not installed (``pip install "can-tf[torch]"``).
    """
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None
    try:
        import torch
    except ImportError:
        raise ModelFileError(TORCH_MISSING) from None
    return torch


def load_state_dict(path, *, trust_pickle: bool = False) -> tuple[dict, list]:
    """The tensors of a PyTorch checkpoint as float32 numpy arrays, and the entries left out.

    ``path`` holds a state dict, a dict with a ``state_dict`` or ``model`` entry (training
    checkpoints; their other entries, e.g. ``epoch`` or ``optimizer``, are left out), or a whole
    pickled ``nn.Module``. Files are read with ``torch.load(weights_only=True)``; a whole module
    needs full unpickling, which can run code from the file, so it is done only with
    ``trust_pickle=True``.

    Returns:
        ``(tensors, ignored)``: ``{key: array}`` and the names of the entries left out.
    """
    torch = import_torch()
    path = os.fspath(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"checkpoint not found: {path}") from None
    except Exception as e:  # torch raises pickle, zip, EOF and runtime errors alike for a bad file
        # The safe unpickler names the class it refused ("Unsupported global: ...DenseNet"); any
        # other failure means the file is no checkpoint at all.
        if "Unsupported global" not in str(e):
            raise ModelFileError(f"{path}: not a PyTorch checkpoint ({_load_failure(e)})") from None
        if not trust_pickle:
            raise ModelFileError(
                f"{path} holds pickled Python objects (e.g. a whole nn.Module), and unpickling can run code "
                f"from the file; pass trust_pickle=True (can-tf weights import --trust-pickle) only for a "
                f"checkpoint from a source you trust") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as e:
            raise ModelFileError(f"{path} pickles classes of module {e.name!r}, which is not installed "
                                 f"(torchxrayvision's models: pip install \"can-tf[torch]\")") from None
        except Exception as e:
            raise ModelFileError(f"{path}: not a PyTorch checkpoint ({_first_line(e)})") from None
    ignored = []
    for _ in range(3):  # {"model": {"state_dict": ...}} and the like
        if isinstance(obj, torch.nn.Module):
            ignored += [name for name in ("pathologies", "targets") if hasattr(obj, name)]
            obj = obj.state_dict()
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            tensors = {str(k): v.detach().cpu() for k, v in obj.items()}
            return {k: (v.float().numpy() if v.is_floating_point() else v.numpy()) for k, v in tensors.items()}, ignored
        entry = next((name for name in ("state_dict", "model", "model_state_dict") if name in obj), None)
        if entry is None:
            break
        ignored += [str(k) for k in obj if k != entry]
        obj = obj[entry]
    kind = type(obj).__name__
    keys = f" with entries {', '.join(map(str, list(obj)[:MAX_LISTED]))}" if isinstance(obj, dict) else ""
    raise ModelFileError(f"{path}: no state dict found (a {kind}{keys}); expected a state dict, a dict with "
                         f"'state_dict' or 'model', or an nn.Module")


def _load_failure(error: BaseException) -> str:
    """The informative part of torch.load's error (its safe unpickler wraps it in advice)."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        return f"unreadable pickle data: {detail}" if detail else "unreadable pickle data"
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --- mapping -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Mapping:
    assignments: list  # (variable, array)
    ignored: list
    prefix: str
    input_channels: int
    tensors_mapped: int


def _listed(items) -> str:
    items = list(items)
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _key_prefix(tensors: dict, name: str, source: str) -> tuple:
    """``(prefix, outer)``: what stands before the backbone's keys, and before the whole model's.

    The model's keys sit below a prefix ("module." from DataParallel, "densenet121.features." in
    CheXNet, "model." in torchxrayvision's ResNet): the one in front of the first convolution.
    ``outer`` is that prefix without DenseNet's ``features.``: where its classifier sits.
    """
    family = SUPPORTED_BACKBONES[name]
    first = _FIRST_CONV[family]
    anchors = sorted((k for k in tensors if k == f"{first}.weight" or k.endswith(f".{first}.weight")), key=len)
    if not anchors:
        raise ModelFileError(
            f"{source} does not fit backbone {name!r}: no first convolution '{first}.weight' among its "
            f"{len(tensors)} keys ({_listed(sorted(tensors))}); is it a {family} checkpoint?")
    prefix = anchors[0][: -len(f"{first}.weight")]
    return prefix, prefix[: -len("features.")] if prefix.endswith("features.") else prefix


def _map_state_dict(tensors: dict, backbone, name: str, source: str) -> _Mapping:
    """Pairs checkpoint tensors with the backbone's variables; one ModelFileError for any misfit."""
    family = SUPPORTED_BACKBONES[name]
    first = _FIRST_CONV[family]
    tensors = {normalize_key(k): v for k, v in tensors.items()}
    prefix, outer = _key_prefix(tensors, name, source)

    wanted = {}  # torch key -> (variable, converter name)
    for layer in backbone.layers:
        if not layer.weights:
            continue
        module = prefix + torch_module_name(family, layer.name)
        if isinstance(layer, keras.layers.Conv2D):
            wanted[f"{module}.weight"] = (layer.kernel, "conv")
            if layer.use_bias:
                wanted[f"{module}.bias"] = (layer.bias, "copy")
        elif isinstance(layer, keras.layers.BatchNormalization):
            for param, variable in (("weight", layer.gamma), ("bias", layer.beta),
                                    ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)):
                wanted[f"{module}.{param}"] = (variable, "copy")
        else:
            raise ModelFileError(f"backbone {name!r}: layer {layer.name} ({type(layer).__name__}) has no "
                                 f"PyTorch mapping")

    first_shape = np.shape(tensors[f"{prefix}{first}.weight"])
    input_channels = int(first_shape[1]) if len(first_shape) == 4 else 3  # else: a shape mismatch below
    assignments, ignored, unmatched, mismatched = [], [], [], []
    for key, array in tensors.items():
        if key.endswith(".num_batches_tracked"):
            continue
        if key in wanted:
            variable, how = wanted.pop(key)
            conv = how == "conv"
            value = conv_kernel(array, variable.shape[2]) if conv and np.ndim(array) == 4 else array
            if tuple(value.shape) != tuple(variable.shape):
                # Both in torch's (O, I, H, W) order, so the two can be compared at a glance.
                shape = tuple(variable.shape)
                expected = tuple(shape[i] for i in (3, 2, 0, 1)) if conv else shape
                mismatched.append(f"{key} {_shape(np.shape(array))} vs {_shape(expected)}")
            else:
                assignments.append((variable, value))
            continue
        head = key[len(outer):].split(".", 1)[0] if key.startswith(outer) else None
        if head in IGNORED_MODULES or key.rsplit(".", 1)[-1] in ("op_threshs",):
            ignored.append(key)
        else:
            unmatched.append(f"{key} {_shape(np.shape(array))}")
    missing = list(wanted)
    problems = [f"{len(items)} {what} ({_listed(items)})" for what, items in
                (("unmatched checkpoint keys", unmatched), ("missing keys", missing),
                 ("shape mismatches (checkpoint vs backbone)", mismatched)) if items]
    if problems:
        raise ModelFileError(f"{source} does not fit backbone {name!r} (key prefix {prefix!r}): "
                             f"{'; '.join(problems)}; nothing was written")
    return _Mapping(assignments, ignored, prefix, input_channels, len(assignments))


# --- named weights and the cache ---------------------------------------------------------------------

def weights_cache_dir() -> Path:
    """Where checkpoints are downloaded and imported: ``$CAN_TF_CACHE/weights``, else
    ``~/.cache/can-tf/weights``."""
    from can_tf.data.phantom import cache_root

    return cache_root() / "weights"


def _named(name: str) -> NamedWeights:
    if name not in NAMED_WEIGHTS:
        raise ModelFileError(f"unknown weights name {name!r}; known: {', '.join(sorted(NAMED_WEIGHTS))}")
    return NAMED_WEIGHTS[name]


def named_checkpoint(name: str) -> Path:
    """The checkpoint file of named weights, downloaded into :func:`weights_cache_dir` on first use.

    A file already in the cache (or in torchxrayvision's own cache, ``~/.torchxrayvision/models_data``)
    is used as it is. Where the internet cannot be reached, the error names the URL and the path to
    put the file at.
    """
    entry = _named(name)
    target = weights_cache_dir() / entry.filename
    for candidate in (target, Path.home() / ".torchxrayvision" / "models_data" / entry.filename):
        if candidate.is_file():
            return candidate
    from can_tf.files import atomic_write

    def download(tmp):
        with urllib.request.urlopen(entry.url, timeout=60) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)

    try:
        return atomic_write(target, download)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or _first_line(e)
        raise ModelFileError(
            f"cannot download weights {name!r} from {entry.url} ({reason}); download that file elsewhere "
            f"and put it, under the same name, in {target.parent}{os.sep} (set CAN_TF_CACHE to move that "
            f"folder)") from None


def resolve_named_weights(name: str, backbone: Optional[str] = None) -> Path:
    """The imported ``.weights.h5`` of named weights in :func:`weights_cache_dir`, imported once.

    Args:
        name: a key of :data:`NAMED_WEIGHTS`, e.g. ``"densenet121-res224-all"``.
        backbone: the backbone to import into; default (and the only one that fits) the entry's.

    Returns:
        The path of ``<cache>/<name>.<backbone>.weights.h5``, for ``model.weights``.
    """
    entry = _named(name)
    backbone = backbone or entry.backbone
    if backbone != entry.backbone:
        raise ModelFileError(f"weights {name!r} fit backbone {entry.backbone!r}, not {backbone!r}")
    out = weights_cache_dir() / f"{name}.{backbone}{WEIGHTS_SUFFIX}"
    info = read_weights_info(out) if out.is_file() else None
    if info is not None and info.source == name and info.backbone == backbone:
        return out
    return import_checkpoint(name, backbone, out).out


# --- the import --------------------------------------------------------------------------------------

def import_checkpoint(source: Union[str, os.PathLike], backbone: str, out: Union[str, os.PathLike], *,
                      image_size: Optional[int] = None, preprocessing: Optional[str] = None,
                      trust_pickle: bool = False) -> ImportResult:
    """Imports a PyTorch checkpoint into a backbone and writes it as a ``.weights.h5`` file.

    Args:
        source: a checkpoint file (``.pth``, ``.pth.tar``, ``.pt``: a state dict, a dict with a
            ``state_dict`` or ``model`` entry, or a pickled ``nn.Module``), or a torchxrayvision
            weights name (a key of :data:`NAMED_WEIGHTS`; downloaded into the cache once).
        backbone: the :data:`can_tf.models.backbones.BACKBONES` name, one of
            :data:`SUPPORTED_BACKBONES` (``densenet121``, ``resnet50_tv``, ...).
        out: the file to write; must end in ``.weights.h5``. Written atomically: it is either the
            complete new file or untouched.
        image_size: the input size the checkpoint was trained at, recorded in the info (named
            weights know theirs; default 224). The weights fit a backbone of any size.
        preprocessing: the input scaling to record, instead of the one inferred: ``"xrv"`` for
            torchxrayvision (named weights, a gray first convolution, or ``op_threshs``),
            ``"torch"`` (ImageNet mean/std) for other checkpoints.
        trust_pickle: allow full unpickling (a whole pickled ``nn.Module``; it can run code).
            Named weights come from torchxrayvision's releases and are always allowed.

    Returns:
        An :class:`ImportResult`.

    Raises:
        ModelFileError: PyTorch missing, a bad source or output name, or a checkpoint that does not
            fit the backbone (unmatched, missing or misshapen keys, listed).
    """
    from can_tf.files import atomic_write
    from can_tf.models import backbones

    started = time.perf_counter()
    out = Path(out)
    if not out.name.endswith(WEIGHTS_SUFFIX) or out.name == WEIGHTS_SUFFIX:
        raise ModelFileError(f"output {out} must be a file name ending in {WEIGHTS_SUFFIX} "
                             f"(a Keras weights file), e.g. {out.stem or 'backbone'}{WEIGHTS_SUFFIX}")
    if backbone not in SUPPORTED_BACKBONES:
        hint = f"; use {backbone}_tv (torchvision's layout)" if f"{backbone}_tv" in SUPPORTED_BACKBONES else ""
        raise ModelFileError(f"backbone {backbone!r} cannot take PyTorch checkpoints{hint}; "
                             f"supported: {', '.join(SUPPORTED_BACKBONES)}")
    if preprocessing is not None and preprocessing not in backbones.PREPROCESSING_MODES:
        raise ModelFileError(f"preprocessing must be one of {', '.join(backbones.PREPROCESSING_MODES)}; "
                             f"got {preprocessing!r}")
    import_torch()  # before any download

    source_text = os.fspath(source)
    entry = NAMED_WEIGHTS.get(source_text) if not os.path.exists(source_text) else None
    if entry is not None:
        if backbone != entry.backbone:
            raise ModelFileError(f"weights {source_text!r} fit backbone {entry.backbone!r}, not {backbone!r}")
        path = named_checkpoint(source_text)
        trust_pickle = True
    else:
        path = Path(source_text)
        if not path.is_file():
            raise ModelFileError(f"checkpoint not found: {path} (a file, or one of the weights names "
                                 f"{', '.join(sorted(NAMED_WEIGHTS))})")
    tensors, extra = load_state_dict(path, trust_pickle=trust_pickle)

    model = backbones.build_backbone(backbone, BUILD_SIZE, batchnorm_epsilon=backbones.TORCH_BATCHNORM_EPSILON)
    mapping = _map_state_dict(tensors, model, backbone, source_text)
    for variable, value in mapping.assignments:
        variable.assign(value.astype(variable.dtype))

    from_xrv = entry is not None or mapping.input_channels == 1 or any(k.endswith("op_threshs") for k in tensors)
    framework = entry.framework if entry is not None else ("torchxrayvision" if from_xrv else "torchvision")
    notes = [f"batch-norm epsilon {backbones.TORCH_BATCHNORM_EPSILON:g}"]
    if mapping.prefix:
        notes.append(f"key prefix {mapping.prefix!r} stripped")
    if mapping.input_channels == 1:
        notes.append("1-channel first convolution spread over RGB (divided by 3)")
    info = WeightsInfo(
        backbone=backbone,
        preprocessing=preprocessing or ("xrv" if from_xrv else "torch"),
        source=source_text if entry is not None else os.path.abspath(source_text),
        framework=framework,
        sha256=sha256_of(path),
        input_channels=mapping.input_channels,
        image_size=image_size or (entry.image_size if entry is not None else BUILD_SIZE),
        notes="; ".join(notes),
    )

    def write(tmp):
        model.save_weights(tmp)
        write_weights_info(tmp, info)

    atomic_write(out, write, suffix=WEIGHTS_SUFFIX)
    return ImportResult(out=out, info=info, tensors_mapped=mapping.tensors_mapped,
                        parameters=int(model.count_params()), ignored=tuple(sorted(extra + mapping.ignored)),
                        seconds=time.perf_counter() - started, file_size=out.stat().st_size)


# --- checking an import against the PyTorch model ----------------------------------------------------

MAX_CHECK_IMAGES = 8  # enough to see a wrong tensor; a CPU runs DenseNet-121 on them in seconds
DEFAULT_TOLERANCE = 1e-4
# Backbone -> the torchvision architecture a torchvision-layout checkpoint belongs to.
TORCHVISION_ARCHITECTURES = {
    "densenet121": lambda models: models.densenet121(weights=None),
    "densenet169": lambda models: models.densenet169(weights=None),
    "densenet201": lambda models: models.densenet201(weights=None),
    "resnet50_tv": lambda models: models.resnet50(weights=None),
    "resnet101_tv": lambda models: models.resnet101(weights=None),
}
_HEADS = ("classifier.", "classifier.0.", "fc.")  # torchvision's and CheXNet's (Linear, Sigmoid) heads


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify_import` measured: the Keras backbone against the PyTorch model.

    Attributes:
        source: the checkpoint file or weights name the torch model was built from.
        weights_file: the ``.weights.h5`` file the Keras backbone was built from.
        torch_model: the torch model, in words (e.g. ``torchxrayvision DenseNet(weights=...)``).
        backbone: the Keras backbone's name.
        preprocessing: the input scaling the weights expect (torch was fed so, Keras ``[0, 255]``).
        image_size: the square size both models ran at.
        images: the image files, in order.
        diffs: ``{output: max |keras - torch|}`` for ``"feature map"``, ``"pooled features"`` and,
            where the checkpoint has a classifier, ``"logits"`` and ``"probabilities"``.
        largest: ``{output: max |torch|}``: the scale each diff is read against.
        shapes: ``{output: shape}`` (channels last).
        tolerance: the largest diff that passes on outputs of magnitude up to 1; larger outputs
            get it in proportion (:meth:`limit`), as float32 rounding grows with the values.
        same_checkpoint: whether ``source``'s SHA-256 is the one recorded in ``weights_file``.
    """

    source: str
    weights_file: Path
    torch_model: str
    backbone: str
    preprocessing: str
    image_size: int
    images: tuple
    diffs: dict
    largest: dict
    shapes: dict
    tolerance: float = DEFAULT_TOLERANCE
    same_checkpoint: bool = True

    def limit(self, name: str) -> float:
        """The largest diff ``name`` may have: ``tolerance * max(1, largest |value|)``.

        Absolute for logits and probabilities; relative for feature maps, whose values reach 5-50,
        where float32 rounding through 121 layers alone comes near ``1e-4`` (a wrong tensor is off
        by orders of magnitude more).
        """
        return self.tolerance * max(1.0, self.largest.get(name, 1.0))

    @property
    def failures(self) -> tuple:
        """The outputs whose diff exceeds their :meth:`limit` (a NaN diff fails too)."""
        return tuple(name for name, diff in self.diffs.items() if not diff <= self.limit(name))

    @property
    def passed(self) -> bool:
        return not self.failures

    def failure(self) -> Optional[str]:
        """One line naming every output over the tolerance; None when all pass."""
        if self.passed:
            return None
        over = ", ".join(f"{name} max |diff| {self.diffs[name]:.3g} > {self.limit(name):.3g}" for name in self.failures)
        return (f"{self.weights_file} does not compute what {self.source} computes: {over} (tolerance "
                f"{self.tolerance:g}) on {len(self.images)} images at {self.image_size} px")

    def check(self) -> "VerifyResult":
        """Itself when every diff is within the tolerance; else a ModelFileError with :meth:`failure`."""
        if not self.passed:
            raise ModelFileError(self.failure())
        return self

    def summary(self) -> str:
        """A few lines for the command line: one per output, then the verdict."""
        lines = [f"checked {self.weights_file} ({self.backbone}) against {self.torch_model} on "
                 f"{len(self.images)} images at {self.image_size} px (torch fed {self.preprocessing!r} "
                 f"scaling, Keras [0, 255] gray)"]
        if not self.same_checkpoint:
            lines.append(f"note: {self.source} is not the checkpoint recorded in {self.weights_file} (sha256 differs)")
        for name, diff in self.diffs.items():
            verdict = "ok" if name not in self.failures else "OVER TOLERANCE"
            lines.append(f"{name} {_shape(self.shapes[name])}: max |diff| {diff:.3g} "
                         f"(largest |value| {self.largest[name]:.3g}, limit {self.limit(name):.3g}) {verdict}")
        lines.append(f"all within tolerance {self.tolerance:g}" if self.passed else
                     f"FAILED: {', '.join(self.failures)} over tolerance {self.tolerance:g}")
        return "\n".join(lines)


def check_image_paths(images, limit: int = MAX_CHECK_IMAGES) -> list:
    """Image files for :func:`verify_import`: ``images`` is a file, a folder (its PNG, JPEG and
    DICOM files by name) or a sequence of them; the first ``limit`` files in all.

    Raises:
        DataError: a path that does not exist, or no image among them.
    """
    from can_tf.errors import DataError
    from can_tf.images import IMAGE_SUFFIXES

    given = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    found = []
    for item in map(Path, given):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"check images: {item} is neither an image file nor a folder")
    if not found:
        raise DataError(f"check images: no PNG, JPEG or DICOM file ({', '.join(IMAGE_SUFFIXES)}) in "
                        f"{', '.join(map(str, given)) or 'the empty list'}")
    return found[:limit]


def torch_scaled(torch, pixels: np.ndarray, mode: str, channels: int):
    """What a PyTorch model is fed: ``(N, S, S, 1)`` gray in ``[0, 255]`` -> ``(N, C, S, S)``.

    Written out in torch, apart from :class:`can_tf.models.backbones.ImagePreprocessing`, so that a
    check compares the backbone's scaling with what the weights were trained on rather than with
    itself. ``"xrv"`` is ``torchxrayvision.datasets.normalize(img, 255)``: ``x / 255 * 2048 - 1024``.

    Raises:
        ModelFileError: a per-channel mode (``torch``, ``caffe``) for a one-channel model.
    """
    from can_tf.models import backbones

    if channels == 1 and mode in ("torch", "caffe"):
        raise ModelFileError(f"a 1-channel model cannot take {mode!r} scaling (it differs per RGB channel); "
                             f"import it with --preprocessing xrv, tf, unit or none")
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(pixels, (0, 3, 1, 2)), dtype=np.float32))
    x = x.repeat(1, channels, 1, 1)
    rgb = lambda values: torch.tensor(values, dtype=torch.float32).reshape(1, 3, 1, 1)  # noqa: E731
    if mode == "xrv":
        return x / 255.0 * (2.0 * backbones.XRV_RANGE) - backbones.XRV_RANGE
    if mode == "torch":
        return (x / 255.0 - rgb(backbones.IMAGENET_MEAN_RGB)) / rgb(backbones.IMAGENET_STDDEV_RGB)
    if mode == "caffe":
        return x.flip(1) - rgb(backbones.CAFFE_MEAN_BGR)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "unit":
        return x / 255.0
    return x


@dataclasses.dataclass
class _TorchModel:
    """A torch model cut where the backbone ends: feature map, pooling, and its head if any."""

    description: str
    features: object  # x -> (N, C, h, w)
    head: object  # torch.nn.Linear or None
    input_channels: int


def _require(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelFileError(f"{module} is needed to check {what}: pip install \"can-tf[torch]\"") from None


def _xrv_model(torch, name: str, entry: NamedWeights) -> _TorchModel:
    """torchxrayvision's own model for named weights, read from the file already cached."""
    xrv = _require("torchxrayvision", f"weights {name!r}")
    folder = os.fspath(named_checkpoint(name).parent)  # xrv downloads only what is not in cache_dir
    if SUPPORTED_BACKBONES[entry.backbone] == "densenet":
        model = xrv.models.DenseNet(weights=name, cache_dir=folder).eval()
        features = lambda x: torch.nn.functional.relu(model.features(x))  # noqa: E731 (as features2)
        return _TorchModel(f"torchxrayvision DenseNet(weights={name!r})", features, model.classifier,
                           model.features.conv0.in_channels)
    model = xrv.models.ResNet(weights=name, cache_dir=folder).eval()
    return _TorchModel(f"torchxrayvision ResNet(weights={name!r})", functools.partial(_resnet_stages, model.model),
                       model.model.fc, model.model.conv1.in_channels)


def _resnet_stages(m, x):
    return m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))


def _torchvision_model(torch, path: Path, backbone: str, trust_pickle: bool) -> _TorchModel:
    """The torchvision architecture of ``backbone`` holding a checkpoint's tensors, keys normalised
    and prefix stripped as the import does; a 1-channel first convolution where the checkpoint has one."""
    torchvision = _require("torchvision", f"a checkpoint for {backbone!r}")
    if backbone not in TORCHVISION_ARCHITECTURES:
        raise ModelFileError(f"no torchvision architecture known for backbone {backbone!r}; "
                             f"known: {', '.join(TORCHVISION_ARCHITECTURES)}")
    family = SUPPORTED_BACKBONES[backbone]
    tensors, _ = load_state_dict(path, trust_pickle=trust_pickle)
    tensors = {normalize_key(k): v for k, v in tensors.items()}
    prefix, outer = _key_prefix(tensors, backbone, os.fspath(path))
    model = TORCHVISION_ARCHITECTURES[backbone](torchvision.models)
    first = model.features.conv0 if family == "densenet" else model.conv1
    weight = tensors[f"{prefix}{_FIRST_CONV[family]}.weight"]
    if weight.shape[1] != first.in_channels:
        first = torch.nn.Conv2d(weight.shape[1], first.out_channels, first.kernel_size, first.stride,
                                first.padding, bias=False)
        if family == "densenet":
            model.features.conv0 = first
        else:
            model.conv1 = first
    # torchvision's keys: DenseNet's below "features.", ResNet's at the top.
    inner = "features." if family == "densenet" else ""
    state = {inner + k[len(prefix):]: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()
             if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0] not in IGNORED_MODULES}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.split(".", 1)[0] not in IGNORED_MODULES]
    if missing or unexpected:
        raise ModelFileError(f"{path} does not fit torchvision's {backbone} architecture: missing "
                             f"{_listed(missing) or 'none'}; unexpected {_listed(unexpected) or 'none'}")
    head = None
    for name in _HEADS:
        w, b = tensors.get(f"{outer}{name}weight"), tensors.get(f"{outer}{name}bias")
        if w is not None and np.ndim(w) == 2:
            head = torch.nn.Linear(w.shape[1], w.shape[0], bias=True)
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(w))
                head.bias.copy_(torch.from_numpy(b) if b is not None else torch.zeros(w.shape[0]))
            break
    model.eval()
    if family == "densenet":
        features = lambda x: torch.nn.functional.relu(model.features(x))  # noqa: E731 (DenseNet.forward)
    else:
        features = functools.partial(_resnet_stages, model)
    channels = "1-channel" if first.in_channels == 1 else f"{first.in_channels}-channel"
    return _TorchModel(f"torchvision {backbone.removesuffix('_tv')} ({channels} input)", features, head,
                       first.in_channels)


def verify_import(source: Union[str, os.PathLike], weights_file: Union[str, os.PathLike], images, *,
                  image_size: Optional[int] = None, tolerance: float = DEFAULT_TOLERANCE,
                  trust_pickle: bool = False) -> VerifyResult:
    """Runs an imported backbone and the PyTorch model it came from on the same images; the diffs.

    The torch model is the checkpoint's own: for torchxrayvision weights names,
    ``xrv.models.DenseNet(weights=name)`` / ``xrv.models.ResNet(weights=name)`` (from the cached
    file); for a checkpoint file, the torchvision architecture of the backbone recorded in
    ``weights_file`` (a 1-channel first convolution where the checkpoint has one). It is fed as
    its weights expect (:func:`torch_scaled`); the Keras backbone,
    ``build_backbone(..., weights=weights_file)``, gets ``[0, 255]`` gray replicated to RGB, so
    its in-graph scaling is checked too. Both see the images through :func:`can_tf.images.load_image`
    (decoded, resized and rounded as in training). Compared: the last feature map, the pooled
    features and, when the checkpoint has a classifier (torchxrayvision's 18 pathologies, CheXNet's
    14), its logits and sigmoid probabilities: a Keras ``Dense`` holding the classifier's weights on
    the Keras features against torch's own classifier (before torchxrayvision's ``op_norm``).
    TensorFloat-32 is switched off while Keras runs (GPUs would otherwise multiply in 10-bit
    mantissas); torch runs on the CPU.

    Args:
        source: what ``weights_file`` was imported from (a checkpoint file or a weights name).
        weights_file: the ``.weights.h5`` written by :func:`import_checkpoint`.
        images: an image file, a folder, or a sequence of them (the first
            :data:`MAX_CHECK_IMAGES` files; see :func:`check_image_paths`).
        image_size: the square size to run at; default the size the weights were trained at.
        tolerance: the largest max |diff| that passes, scaled by outputs larger than 1
            (:meth:`VerifyResult.limit`, :meth:`VerifyResult.check`).
        trust_pickle: as for :func:`import_checkpoint`.

    Returns:
        A :class:`VerifyResult`; it does not raise for diffs over the tolerance (see its ``check``).

    Raises:
        ModelFileError: no weights info in ``weights_file``, PyTorch (or torchvision,
            torchxrayvision) missing, or a checkpoint that does not fit.
        DataError: no images, or an image that cannot be read.
    """
    from can_tf.images import load_image
    from can_tf.models import backbones

    weights_file = Path(weights_file)
    info = read_weights_info(weights_file) if weights_file.is_file() else None
    if info is None:
        raise ModelFileError(f"{weights_file} carries no can-tf weights info (not written by can-tf weights "
                             f"import, or not an HDF5 weights file)")
    if info.backbone not in SUPPORTED_BACKBONES:
        raise ModelFileError(f"{weights_file} is for backbone {info.backbone!r}, which takes no PyTorch checkpoints")
    paths = check_image_paths(images)
    size = int(image_size or info.image_size or BUILD_SIZE)
    torch = import_torch()

    source_text = os.fspath(source)
    entry = NAMED_WEIGHTS.get(source_text) if not os.path.exists(source_text) else None
    if entry is not None:
        if entry.backbone != info.backbone:
            raise ModelFileError(f"weights {source_text!r} fit backbone {entry.backbone!r}, but {weights_file} "
                                 f"holds {info.backbone!r}")
        checkpoint = named_checkpoint(source_text)
        reference = _xrv_model(torch, source_text, entry)
    else:
        checkpoint = Path(source_text)
        if not checkpoint.is_file():
            raise ModelFileError(f"checkpoint not found: {checkpoint} (a file, or one of the weights names "
                                 f"{', '.join(sorted(NAMED_WEIGHTS))})")
        reference = _torchvision_model(torch, checkpoint, info.backbone, trust_pickle)

    pixels = np.stack([load_image(p, size).pixels for p in paths]).astype(np.float32)
    with torch.no_grad():
        features = reference.features(torch_scaled(torch, pixels, info.preprocessing, reference.input_channels))
        pooled = torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1)
        expected = {"feature map": features.permute(0, 2, 3, 1), "pooled features": pooled}
        if reference.head is not None and reference.head.in_features != pooled.shape[1]:
            raise ModelFileError(f"{source_text}: its classifier takes {reference.head.in_features} features, "
                                 f"the backbone gives {pooled.shape[1]}")
        if reference.head is not None:
            expected["logits"] = reference.head(pooled)
            expected["probabilities"] = torch.sigmoid(expected["logits"])
    expected = {k: v.numpy() for k, v in expected.items()}

    got = _keras_outputs(backbones, info.backbone, size, weights_file, pixels, reference.head)
    diffs = {k: float(np.abs(got[k] - expected[k]).max()) for k in expected}
    return VerifyResult(
        source=source_text, weights_file=weights_file, torch_model=reference.description, backbone=info.backbone,
        preprocessing=info.preprocessing, image_size=size, images=tuple(paths), diffs=diffs,
        largest={k: float(np.abs(v).max()) for k, v in expected.items()},
        shapes={k: tuple(v.shape) for k, v in expected.items()}, tolerance=float(tolerance),
        same_checkpoint=info.sha256 in (None, sha256_of(checkpoint)))


def _keras_outputs(backbones, name: str, size: int, weights_file: Path, pixels: np.ndarray, head) -> dict:
    """The Keras side of :func:`verify_import`, in full float32 (TensorFloat-32 off meanwhile)."""
    import tensorflow as tf

    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        backbone = backbones.build_backbone(name, size, weights=os.fspath(weights_file))
        features = backbone(np.repeat(pixels, 3, axis=-1), training=False)
        pooled = keras.layers.GlobalAveragePooling2D()(features)
        got = {"feature map": features, "pooled features": pooled}
        if head is not None:
            dense = keras.layers.Dense(head.out_features)
            dense.build((None, head.in_features))
            dense.set_weights([head.weight.detach().numpy().T, head.bias.detach().numpy()])
            got["logits"] = dense(pooled)
            got["probabilities"] = keras.ops.sigmoid(got["logits"])
        return {k: np.asarray(v, dtype=np.float32) for k, v in got.items()}
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(tf32)
