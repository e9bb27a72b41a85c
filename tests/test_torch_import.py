"""PyTorch checkpoints imported into can-tf backbones compute what the PyTorch models compute.

Randomly initialised torchvision and torchxrayvision models (batch-norm statistics moved away from
their defaults, eval mode) are saved, imported, and run side by side on real NIH radiographs: torch
gets its input exactly as its weights expect (torchxrayvision: ``[-1024, 1024]``, one channel;
torchvision: ImageNet-normalised RGB), the Keras backbone gets raw ``[0, 255]`` pixels, so the
comparison also proves that the input scaling travels inside the graph. Feature maps, pooled
features and a random 14-class head must agree to 1e-4 in float32.

PyTorch and torchxrayvision come with ``pip install "can-tf[torch]"``; without them the tests that
need them skip, unless ``CAN_TF_REQUIRE_TORCH=1`` (then they fail).
"""

from __future__ import annotations

import doctest
import functools
import hashlib
import importlib
import importlib.metadata
import os
import sys
import urllib.error

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from can_tf.errors import ModelFileError  # noqa: E402
from can_tf.models import backbones as bb  # noqa: E402
from can_tf.models import torch_import as ti  # noqa: E402
from can_tf.models.weights_info import WeightsInfo, read_weights_info, write_weights_info  # noqa: E402

REQUIRE_ENV = "CAN_TF_REQUIRE_TORCH"
TOLERANCE = 1e-4
IMAGENET_MEAN = np.array(bb.IMAGENET_MEAN_RGB, "float32").reshape(1, 3, 1, 1)
IMAGENET_STD = np.array(bb.IMAGENET_STDDEV_RGB, "float32").reshape(1, 3, 1, 1)
NUM_CLASSES = 14


def require(module: str):
    """``module`` imported; skips without it, or fails where CAN_TF_REQUIRE_TORCH=1."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = (f"{module} is not installed ({e}); pip install \"can-tf[torch]\" to run the PyTorch "
                  f"import checks")
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1 makes this an error)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def torch():
    require("torch")
    module = ti.import_torch()  # before torchvision: see test_triton_after_tensorflow_still_crashes
    module.manual_seed(0)
    return module


@pytest.fixture(scope="module")
def xrv(torch):
    return require("torchxrayvision")


@pytest.fixture(scope="module")
def torchvision(torch):
    return require("torchvision")


@pytest.fixture
def densenet_tiny(monkeypatch):
    """A registered DenseNet with one dense layer per block: the DenseNet-121 layout, small enough
    for a default test (Keras' generic DenseNet constructor, torchxrayvision's block_config=(1,1,1,1))."""
    densenet = importlib.import_module("keras.src.applications.densenet")  # the generic constructor
    spec = bb.BackboneSpec(functools.partial(densenet.DenseNet, [1, 1, 1, 1]), "densenet", "torch", 68,
                           imagenet=False)
    monkeypatch.setitem(bb.BACKBONES, "densenet_tiny", spec)
    monkeypatch.setitem(ti.SUPPORTED_BACKBONES, "densenet_tiny", "densenet")
    return "densenet_tiny"


def gray_images(folder, size, count=3):
    """``count`` real NIH radiographs, resized to ``size`` px: uint8 ``(count, size, size)``."""
    from PIL import Image

    names = sorted(os.listdir(folder / "images"))[:count]
    return np.stack([np.asarray(Image.open(folder / "images" / n).convert("L").resize((size, size), Image.BILINEAR))
                     for n in names])


def randomize_batch_norm(torch, model, calibration):
    """Batch-norm parameters and statistics away from their defaults, at a realistic scale.

    Random affine parameters; running statistics measured on ``calibration`` (one train-mode
    batch, a cumulative average), then moved a little at random. Activations so stay O(1) through
    the whole network, and a 1e-4 tolerance on them means something (float32 noise grows with the
    size of what is compared). A residual branch's last batch norm is damped, as the residual
    stream would otherwise grow with every block. The model is left in eval mode.
    """
    generator = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            n = m.num_features
            m.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=generator))
            m.bias.copy_(0.1 * torch.randn(n, generator=generator))
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one batch gives its statistics
        for block in model.modules():
            if hasattr(block, "bn3"):  # torchvision's Bottleneck
                block.bn3.weight.mul_(0.2)
        model.train()
        model(calibration)
        for m in norms:
            n = m.num_features
            m.running_mean += 0.05 * torch.randn(n, generator=generator) * m.running_var.sqrt()
            m.running_var *= 0.9 + 0.2 * torch.rand(n, generator=generator)
    model.eval()


def torch_inputs(torch, gray, preprocessing):
    """What the torch model is fed: the weights' own scaling, done in torch, outside any graph."""
    x = torch.from_numpy(gray.astype("float32"))[:, None]
    if preprocessing == "xrv":  # torchxrayvision.datasets.normalize(img, 255) on one channel
        return x / 255.0 * 2048.0 - 1024.0
    x = x.repeat(1, 3, 1, 1) / 255.0
    return (x - torch.from_numpy(IMAGENET_MEAN)) / torch.from_numpy(IMAGENET_STD)


def keras_inputs(gray):
    """What the Keras backbone is fed: raw pixels replicated to RGB, as image_input does."""
    return np.repeat(gray.astype("float32")[..., None], 3, axis=-1)


def densenet_features(torch, model, x):
    return torch.nn.functional.relu(model.features(x))


def resnet_features(torch, model, x):
    m = model
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def compare(torch, features_fn, model, backbone, gray, preprocessing):
    """Max |diff| of the feature map, the pooled features and a random 14-class head."""
    with torch.no_grad():
        features = features_fn(torch, model, torch_inputs(torch, gray, preprocessing))
        pooled = features.mean(dim=(2, 3))
        head = torch.nn.Linear(pooled.shape[1], NUM_CLASSES)
        logits = head(pooled)
    ours = backbone(keras_inputs(gray))
    pooled_ours = keras.layers.GlobalAveragePooling2D()(ours)
    dense = keras.layers.Dense(NUM_CLASSES)
    dense.build((None, pooled.shape[1]))
    dense.set_weights([head.weight.detach().numpy().T, head.bias.detach().numpy()])
    logits_ours = dense(pooled_ours)
    expected = features.numpy().transpose(0, 2, 3, 1)
    assert np.abs(expected).max() > 0.1, "activations vanished: the comparison would prove nothing"
    return {
        "largest feature": float(np.abs(expected).max()),
        "feature map": float(np.abs(np.asarray(ours) - expected).max()),
        "pooled": float(np.abs(np.asarray(pooled_ours) - pooled.numpy()).max()),
        "logits": float(np.abs(np.asarray(logits_ours) - logits.numpy()).max()),
    }


def assert_close(diffs):
    assert all(d <= TOLERANCE for key, d in diffs.items() if key != "largest feature"), diffs


def temporaries(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


# --- no PyTorch needed ---------------------------------------------------------------------------


def test_module_doctests():
    result = doctest.testmod(ti, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_xrv_preprocessing_matches_torchxrayvision_scaling():
    x = np.array([[[[0.0, 0.0, 0.0], [127.5, 127.5, 127.5], [255.0, 255.0, 255.0], [51.0, 51.0, 51.0]]]], "float32")
    got = np.asarray(bb.ImagePreprocessing("xrv")(x))
    # torchxrayvision.datasets.normalize(img, maxval=255): img / 255 * 2048 - 1024, every channel alike.
    np.testing.assert_allclose(got[0, 0, :, 0], [-1024.0, 0.0, 1024.0, 51 / 255 * 2048 - 1024], atol=1e-3)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])
    assert bb.ImagePreprocessing.from_config(bb.ImagePreprocessing("xrv").get_config()).mode == "xrv"


def test_torch_mode_is_imagenet_mean_and_std():
    x = np.random.RandomState(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    expected = (x / 255.0 - np.array(bb.IMAGENET_MEAN_RGB)) / np.array(bb.IMAGENET_STDDEV_RGB)
    np.testing.assert_allclose(np.asarray(bb.ImagePreprocessing("torch")(x)), expected, atol=1e-5)
    assert bb.BACKBONES["resnet50_tv"].preprocessing == "torch" and not bb.BACKBONES["resnet50_tv"].imagenet


def test_without_torch_there_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(ModelFileError) as info:
        ti.import_checkpoint(tmp_path / "a.pth", "densenet121", tmp_path / "a.weights.h5")
    assert str(info.value) == 'PyTorch is needed to import checkpoints: pip install "can-tf[torch]"'


def test_bad_output_name_and_backbone_are_refused(tmp_path):
    with pytest.raises(ModelFileError, match=r"must be a file name ending in \.weights\.h5.*b\.weights\.h5"):
        ti.import_checkpoint("x.pth", "densenet121", tmp_path / "b.h5")
    with pytest.raises(ModelFileError, match="'resnet50' cannot take PyTorch checkpoints; use resnet50_tv"):
        ti.import_checkpoint("x.pth", "resnet50", tmp_path / "b.weights.h5")
    with pytest.raises(ModelFileError, match="unknown weights name 'densenet121-res999'"):
        ti.resolve_named_weights("densenet121-res999")
    assert list(tmp_path.iterdir()) == []


def test_resnet_tv_has_torchvision_shape_and_size():
    backbone = bb.build_backbone("resnet50_tv", 64)
    assert backbone.output.shape == (None, 2, 2, 2048)
    # torchvision's resnet50: 25,557,032 parameters - fc (2048 * 1000 + 1000) + 53,120 BN running statistics.
    assert backbone.count_params() == 25_557_032 - 2_049_000 + 53_120
    assert {layer.epsilon for layer in bb._batch_norm_layers(backbone)} == {1e-5}
    # v1.5: the stride sits on the 3x3 convolution of a downsampling block, not on its first 1x1.
    assert backbone.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert backbone.get_layer("conv3_block1_2_conv").strides == (2, 2)


def _tiny_weights_file(tmp_path, framework, preprocessing="xrv"):
    path = tmp_path / "tiny.weights.h5"
    bb.build_backbone("tiny", 32).save_weights(path)
    write_weights_info(path, WeightsInfo(backbone="tiny", preprocessing=preprocessing, source="x.pth",
                                         framework=framework))
    return path


def test_weights_file_sets_preprocessing_and_epsilon(tmp_path):
    path = _tiny_weights_file(tmp_path, "torchvision")
    assert bb.backbone_options(path) == {"preprocessing": "xrv", "batchnorm_epsilon": 1e-5}
    assert bb.backbone_options(None) == {} and bb.backbone_options("imagenet") == {}
    backbone = bb.build_backbone("tiny", 32, weights=str(path))
    assert backbone.get_layer("preprocessing").mode == "xrv"
    epsilons = {layer.epsilon for layer in bb._batch_norm_layers(backbone)}
    assert epsilons == {1e-5}
    # The default build keeps Keras' own epsilon, so existing backbones are unchanged.
    assert {layer.epsilon for layer in bb._batch_norm_layers(bb.build_backbone("tiny", 32))} == {1e-3}
    with pytest.raises(ValueError, match="preprocessing='unit' contradicts the weights file"):
        bb.build_backbone("tiny", 32, weights=str(path), preprocessing="unit")
    plain = bb.build_backbone("tiny", 32)
    with pytest.raises(ValueError, match=r"preprocessing 'unit' \(needs 'xrv'\).*batch-norm epsilon.*backbone_options"):
        bb.load_backbone_weights(plain, "tiny", str(path))
    with pytest.raises(ValueError, match="imported for backbone 'tiny', not 'densenet121'"):
        bb.load_backbone_weights(bb.build_backbone("densenet121", 32), "densenet121", str(path))


def test_saved_backbone_keeps_epsilon_and_preprocessing(tmp_path):
    path = _tiny_weights_file(tmp_path, "torchxrayvision")
    backbone = bb.build_backbone("tiny", 32, weights=str(path))
    # Small running variances make the epsilon matter: 1e-5 against Keras' 1e-3 here.
    for layer in bb._batch_norm_layers(backbone):
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1e-5, "float32"))
    model_path = tmp_path / "b.keras"
    backbone.save(model_path)
    reloaded = keras.models.load_model(model_path)
    assert {layer.epsilon for layer in bb._batch_norm_layers(reloaded)} == {1e-5}
    assert reloaded.get_layer("preprocessing").mode == "xrv"
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(backbone(x)), rtol=1e-6, atol=1e-6)
    default = bb.build_backbone("tiny", 32, preprocessing="xrv")
    default.set_weights(backbone.get_weights())
    assert np.abs(np.asarray(default(x)) - np.asarray(backbone(x))).max() > 1e-3  # the check has teeth


# --- with PyTorch: the tiny DenseNet (default) ------------------------------------------------------


def _xrv_tiny(torch, xrv, gray):
    torch.manual_seed(0)
    model = xrv.models.DenseNet(block_config=(1, 1, 1, 1), weights=None)
    model.op_threshs = torch.rand(18)  # what named weights carry; a buffer, so it is in the state dict
    randomize_batch_norm(torch, model, torch_inputs(torch, gray, "xrv"))
    return model


def test_tiny_xrv_densenet_matches_torch(torch, xrv, densenet_tiny, chestxray14_dir, tmp_path):
    gray = gray_images(chestxray14_dir, 64)
    model = _xrv_tiny(torch, xrv, gray)
    checkpoint = tmp_path / "xrv.pt"
    torch.save(model.state_dict(), checkpoint)
    result = ti.import_checkpoint(checkpoint, densenet_tiny, tmp_path / "tiny.weights.h5")

    assert result.ignored == ("classifier.bias", "classifier.weight", "op_threshs")
    n_tensors = sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))
    assert result.tensors_mapped == n_tensors - 3
    assert result.file_size == os.path.getsize(result.out) and result.seconds > 0
    info = read_weights_info(result.out)
    assert info == result.info
    assert (info.backbone, info.preprocessing, info.framework, info.input_channels, info.image_size) == \
        (densenet_tiny, "xrv", "torchxrayvision", 1, 224)
    assert info.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    backbone = bb.build_backbone(densenet_tiny, 64, weights=str(result.out))
    assert result.parameters == backbone.count_params()
    assert_close(compare(torch, densenet_features, model, backbone, gray, "xrv"))

    # Saved and reloaded, the backbone computes the same (epsilon and scaling are in its config).
    backbone.save(tmp_path / "b.keras")
    reloaded = keras.models.load_model(tmp_path / "b.keras")
    assert {layer.epsilon for layer in bb._batch_norm_layers(reloaded)} == {1e-5}
    x = keras_inputs(gray)
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(backbone(x)), rtol=1e-6, atol=1e-6)


def test_chexnet_layout_and_old_keys_map_the_same(torch, xrv, densenet_tiny, chestxray14_dir, tmp_path):
    """arnoweng/CheXNet: `module.densenet121.features...`, torchvision's old `norm.1` names, a
    `classifier.0` head, saved as a .pth.tar training checkpoint."""
    gray = gray_images(chestxray14_dir, 64, count=2)
    model = _xrv_tiny(torch, xrv, gray)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    old = {}
    for key, value in model.state_dict().items():
        if key == "op_threshs":
            continue
        key = key.replace("classifier.", "classifier.0.")
        for part in ("norm1", "norm2", "conv1", "conv2"):
            key = key.replace(f"denselayer1.{part}.", f"denselayer1.{part[:-1]}.{part[-1]}.")
        old[f"module.densenet121.{key}"] = value
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in old
    chexnet = tmp_path / "model.pth.tar"
    torch.save({"epoch": 5, "state_dict": old, "best_loss": 0.1}, chexnet)

    a = ti.import_checkpoint(plain, densenet_tiny, tmp_path / "a.weights.h5")
    b = ti.import_checkpoint(chexnet, densenet_tiny, tmp_path / "b.weights.h5")
    assert b.ignored == ("best_loss", "epoch", "module.densenet121.classifier.0.bias",
                         "module.densenet121.classifier.0.weight")
    assert "'module.densenet121.features.' stripped" in b.info.notes
    first = bb.build_backbone(densenet_tiny, 32, weights=str(a.out))
    second = bb.build_backbone(densenet_tiny, 32, weights=str(b.out))
    for x, y in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(x, y)


def test_misfits_raise_one_error_and_write_nothing(torch, xrv, densenet_tiny, tmp_path):
    state = xrv.models.DenseNet(block_config=(1, 1, 1, 1), weights=None).state_dict()
    out = tmp_path / "out" / "x.weights.h5"

    missing = dict(state)
    del missing["features.norm5.running_var"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ModelFileError, match=r"1 missing keys \(features\.norm5\.running_var\); nothing was written"):
        ti.import_checkpoint(tmp_path / "missing.pt", densenet_tiny, out)

    extra = dict(state)
    extra["features.denseblock1.denselayer2.conv1.weight"] = torch.zeros(128, 96, 1, 1)
    extra["features.transition1.conv.weight"] = torch.zeros(48, 97, 1, 1)
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ModelFileError) as info:
        ti.import_checkpoint(tmp_path / "extra.pt", densenet_tiny, out)
    message = str(info.value)
    assert "1 unmatched checkpoint keys (features.denseblock1.denselayer2.conv1.weight (128, 96, 1, 1))" in message
    assert "features.transition1.conv.weight (48, 97, 1, 1) vs (48, 96, 1, 1)" in message
    assert "\n" not in message

    pickled = xrv.models.DenseNet(block_config=(1, 1, 1, 1), weights=None)
    pickled.pathologies = ["Atelectasis", "Effusion"]  # named weights carry their labels so
    torch.save(pickled, tmp_path / "module.pt")
    with pytest.raises(ModelFileError, match="pickled Python objects.*trust_pickle=True"):
        ti.import_checkpoint(tmp_path / "module.pt", densenet_tiny, out)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ModelFileError, match=r"junk\.pth: not a PyTorch checkpoint"):
        ti.import_checkpoint(tmp_path / "junk.pth", densenet_tiny, out)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []

    result = ti.import_checkpoint(tmp_path / "module.pt", densenet_tiny, out, trust_pickle=True)
    assert result.info.framework == "torchxrayvision" and {"pathologies", "targets"} <= set(result.ignored)
    assert temporaries(out.parent) == []


def test_resnet_checkpoint_into_densenet121_is_refused(torch, torchvision, tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "d.weights.h5"
    with pytest.raises(ModelFileError, match=r"does not fit backbone 'densenet121': no first convolution "
                                             r"'conv0\.weight' among its 122 keys \(bn1\.bias"):
        ti.import_checkpoint(tmp_path / "r18.pth", "densenet121", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pth"]


def test_named_weights_use_the_cache_and_explain_offline(torch, xrv, densenet_tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("CAN_TF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ti.Path, "home", staticmethod(lambda: tmp_path / "home"))
    entry = ti.NamedWeights("https://example.org/v1/tiny-xrv.pt", densenet_tiny, 64)
    monkeypatch.setitem(ti.NAMED_WEIGHTS, "tiny-res64-all", entry)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(ti.urllib.request, "urlopen", offline)
    cached = tmp_path / "cache" / "weights" / "tiny-xrv.pt"
    with pytest.raises(ModelFileError) as info:
        ti.resolve_named_weights("tiny-res64-all")
    assert str(info.value) == (f"cannot download weights 'tiny-res64-all' from {entry.url} (Name or service not "
                               f"known); download that file elsewhere and put it, under the same name, in "
                               f"{cached.parent}/ (set CAN_TF_CACHE to move that folder)")
    assert temporaries(cached.parent) == []

    torch.save(xrv.models.DenseNet(block_config=(1, 1, 1, 1), weights=None).state_dict(), cached)
    path = ti.resolve_named_weights("tiny-res64-all")  # no download: urlopen would raise
    assert path == tmp_path / "cache" / "weights" / f"tiny-res64-all.{densenet_tiny}.weights.h5"
    info = read_weights_info(path)
    assert (info.source, info.framework, info.preprocessing, info.image_size) == \
        ("tiny-res64-all", "torchxrayvision", "xrv", 64)
    monkeypatch.setattr(ti, "import_checkpoint", lambda *a, **k: pytest.fail("imported twice"))
    assert ti.resolve_named_weights("tiny-res64-all", densenet_tiny) == path
    with pytest.raises(ModelFileError, match="fit backbone 'densenet_tiny', not 'densenet121'"):
        ti.resolve_named_weights("tiny-res64-all", "densenet121")


def test_named_table_matches_torchxrayvision(xrv):
    for name, entry in ti.NAMED_WEIGHTS.items():
        assert xrv.models.model_urls[name]["weights_url"] == entry.url, name
        assert entry.backbone in bb.BACKBONES
        assert f"res{entry.image_size}" in name


@pytest.mark.slow
def test_triton_after_tensorflow_still_crashes(torch):
    """tensorflow/tensorflow#124205, worked around in import_torch: when this fails, the crash is
    fixed upstream and the workaround can go."""
    import subprocess

    try:
        importlib.metadata.distribution("triton")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Triton is not installed (PyTorch's Linux CUDA wheels bring it)")
    crashed = subprocess.run([sys.executable, "-c", "import tensorflow; import triton"], capture_output=True)
    assert crashed.returncode == -11, crashed.returncode


# --- with PyTorch: real backbones at 224 px (slow) ---------------------------------------------------


def _xrv_resnet50(torch, torchvision):
    """torchxrayvision's ResNet cannot be built without downloading its weights; this is what its
    constructor builds (torchvision's resnet50, 18 outputs, a 1-channel conv1) inside the same
    wrapper (`model.` keys, an `op_threshs` buffer)."""
    wrapper = torch.nn.Module()
    wrapper.model = torchvision.models.resnet50(num_classes=18, weights=None)
    wrapper.model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    wrapper.register_buffer("op_threshs", torch.rand(18))
    wrapper.forward = wrapper.model.forward
    return wrapper


@pytest.mark.slow
@pytest.mark.parametrize("case", ["torchvision-densenet121", "xrv-densenet121", "torchvision-resnet50",
                                  "xrv-resnet50"])
def test_real_backbones_match_torch(case, torch, torchvision, xrv, chestxray14_dir, tmp_path):
    torch.manual_seed(0)
    gray = gray_images(chestxray14_dir, 224, count=4)
    if case == "torchvision-densenet121":
        model, backbone_name, preprocessing, features = torchvision.models.densenet121(weights=None), \
            "densenet121", "torch", densenet_features
        state = model.state_dict
        save = lambda path: torch.save(state(), path)  # noqa: E731
    elif case == "xrv-densenet121":
        model, backbone_name, preprocessing, features = xrv.models.DenseNet(weights=None), "densenet121", "xrv", \
            densenet_features
        save = lambda path: torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)  # noqa: E731
    elif case == "torchvision-resnet50":
        model, backbone_name, preprocessing, features = torchvision.models.resnet50(weights=None), "resnet50_tv", \
            "torch", resnet_features
        save = lambda path: torch.save({"state_dict": model.state_dict(), "epoch": 90}, path)  # noqa: E731
    else:
        model, backbone_name, preprocessing = _xrv_resnet50(torch, torchvision), "resnet50_tv", "xrv"
        features = lambda torch_, m, x: resnet_features(torch_, m.model, x)  # noqa: E731
        save = lambda path: torch.save(model.state_dict(), path)  # noqa: E731
    randomize_batch_norm(torch, model, torch_inputs(torch, gray, preprocessing))
    checkpoint = tmp_path / ("model.pth.tar" if case == "torchvision-resnet50" else "model.pth")
    save(checkpoint)

    result = ti.import_checkpoint(checkpoint, backbone_name, tmp_path / "b.weights.h5")
    assert result.info.preprocessing == preprocessing
    assert result.info.input_channels == (1 if preprocessing == "xrv" else 3)
    backbone = bb.build_backbone(backbone_name, 224, weights=str(result.out))
    diffs = compare(torch, features, model, backbone, gray, preprocessing)
    assert_close(diffs)


@pytest.mark.slow
@pytest.mark.parametrize("architecture, backbone_name", [("densenet169", "densenet169"), ("densenet201", "densenet201"),
                                                         ("resnet101", "resnet101_tv")])
def test_every_torchvision_layout_maps_completely(architecture, backbone_name, torch, torchvision, tmp_path):
    model = getattr(torchvision.models, architecture)(weights=None)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    result = ti.import_checkpoint(tmp_path / "m.pth", backbone_name, tmp_path / "m.weights.h5")
    head = ("classifier.bias", "classifier.weight") if architecture.startswith("densenet") else ("fc.bias", "fc.weight")
    assert result.ignored == head
    tensors = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert result.tensors_mapped == len(tensors) - 2
    assert result.parameters == sum(v.numel() for v in tensors) - sum(model.state_dict()[k].numel() for k in head)


@pytest.mark.slow
def test_backbones_doctests():
    result = doctest.testmod(bb, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0
