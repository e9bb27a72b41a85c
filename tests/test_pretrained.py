"""Starting from pretrained backbones: ``model.weights`` per branch, and the options that travel.

Weights imported from PyTorch need their input scaling and batch-norm epsilon in the graph. These
tests check that ``model.weights`` (one value or one per branch; ``xrv:`` names; imported files)
is validated with one line naming it, that :func:`can_tf.models.build_model` builds each branch
with its file's options, and that the options are part of the model's config, so a saved model
reloads (in safe mode) into the same graph. The slow test runs the whole path a user takes: two
PyTorch checkpoints imported, ``can-tf fit``, reload, ``can-tf export`` (SavedModel and TFLite,
which check parity with the Keras model themselves).

Tests that need PyTorch skip without it, unless ``CAN_TF_REQUIRE_TORCH=1`` (then they fail).
"""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from can_tf.config import ConfigError, ModelConfig, RunConfig  # noqa: E402
from can_tf.errors import ModelFileError  # noqa: E402
from can_tf.models import (BaselineModel, CANModel, backbone_options, branch_backbone_options,  # noqa: E402
                           build_model, resolve_weights)
from can_tf.models import backbones as bb  # noqa: E402
from can_tf.models import torch_import as ti  # noqa: E402
from can_tf.models.weights_info import WeightsInfo, write_weights_info  # noqa: E402
from can_tf.presets import PRESETS  # noqa: E402
from test_torch_import import require  # noqa: E402  (skips, or fails under CAN_TF_REQUIRE_TORCH=1)

XRV_OPTIONS = {"preprocessing": "xrv", "batchnorm_epsilon": 1e-5}
RNG = np.random.default_rng(0)


def imported_tiny(path, *, framework="torchxrayvision", preprocessing="xrv", backbone="tiny", source="x.pth"):
    """A tiny backbone's weights file as ``can-tf weights import`` writes it (no PyTorch needed):
    random weights away from the initialisation, and the WeightsInfo."""
    model = bb.build_backbone("tiny", 32, batchnorm_epsilon=1e-5)
    model.set_weights([w + RNG.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()])
    model.save_weights(path)
    write_weights_info(path, WeightsInfo(backbone=backbone, preprocessing=preprocessing, source=source,
                                         framework=framework))
    return str(path)


def images(n, size):
    return RNG.uniform(0, 255, (n, size, size, 1)).astype("float32")


def epsilons(backbone) -> set:
    return {layer.epsilon for layer in bb._batch_norm_layers(backbone)}


def config_error(overrides) -> str:
    with pytest.raises(ConfigError) as info:
        RunConfig.resolve(preset="small", overrides=overrides)
    return str(info.value)


# --- model.weights: validation ------------------------------------------------------------------------


def test_bad_weights_give_one_line_naming_model_weights(tmp_path):
    densenet = "model.backbones=[densenet121, densenet121]"
    assert config_error(["model.weights=[null, null, null]"]) == (
        "model.weights lists 3 entries for 2 backbone(s) ['tiny', 'tiny']; give one per backbone, or one value "
        "for all")
    assert config_error([f"model.weights=[null, {tmp_path}/nope.h5]"]) == (
        f"model.weights[1] must be null, 'imagenet', a weights file, 'xrv:<name>', or a list of those (one per "
        f"backbone); no file at '{tmp_path}/nope.h5'")
    assert config_error([f"model.weights={tmp_path}/nope.h5"]).startswith("model.weights must be null")
    message = config_error([densenet, "model.weights=xrv:densenet121-res999-all"])
    assert message.startswith("model.weights: unknown torchxrayvision weights 'xrv:densenet121-res999-all'; "
                              "known: xrv:densenet121-res224-all, xrv:densenet121-res224-chex")
    assert config_error([densenet, "model.weights=[imagenet, xrv:resnet50-res512-all]"]) == (
        "model.weights[1]: 'xrv:resnet50-res512-all' fits backbone 'resnet50_tv', not 'densenet121'")
    path = imported_tiny(tmp_path / "t.weights.h5")
    assert config_error([densenet, f"model.weights=[{path}, imagenet]"]) == (
        f"model.weights[0]: {path} was imported for backbone 'tiny', not 'densenet121'")
    assert config_error(["model.weights=imagenet"]) == (
        "model.weights: backbone 'tiny' has no ImageNet weights; use null, a weights file or an xrv: name")
    assert config_error(["model.weights=[3, null]"]).startswith("model.weights[0] must be null, 'imagenet'")
    for message in (config_error(["model.weights={a: 1}"]),):
        assert "\n" not in message and message.startswith("model.weights must be")


def test_one_value_or_one_per_branch(tmp_path):
    path = imported_tiny(tmp_path / "t.weights.h5")
    assert ModelConfig(backbones=["tiny", "tiny"], weights=path).branch_weights() == [path, path]
    assert ModelConfig(backbones=["tiny", "tiny"], weights=None).branch_weights() == [None, None]
    mixed = ModelConfig(backbones=["densenet121", "tiny"], weights=("imagenet", path))
    assert mixed.branch_weights() == ["imagenet", path]
    # A list survives the YAML round trip of a run's config.yaml.
    config = RunConfig.resolve(preset="small", overrides=[f"model.weights=[{path}, null]"])
    saved = tmp_path / "config.yaml"
    config.save(str(saved))
    assert RunConfig.from_file(str(saved)).model.weights == [path, None]


def test_every_weights_form_resolves(tmp_path, monkeypatch):
    assert resolve_weights(None, "tiny") is None and resolve_weights("imagenet", "densenet121") == "imagenet"
    assert resolve_weights(tmp_path / "a.h5", "tiny") == str(tmp_path / "a.h5")
    # xrv: names come from the cache once imported; no PyTorch and no network needed then.
    monkeypatch.setenv("CAN_TF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(ti.NAMED_WEIGHTS, "tiny-res32-all", ti.NamedWeights("https://example.org/t.pt", "tiny", 32))
    cached = tmp_path / "cache" / "weights" / "tiny-res32-all.tiny.weights.h5"
    cached.parent.mkdir(parents=True)
    imported_tiny(cached, source="tiny-res32-all")
    assert resolve_weights("xrv:tiny-res32-all", "tiny") == str(cached)


# --- build_model: per-branch weights and options ---------------------------------------------------------


def test_build_model_gives_each_branch_its_weights_and_options(tmp_path):
    path = imported_tiny(tmp_path / "t.weights.h5")
    assert backbone_options(path) == XRV_OPTIONS
    config = ModelConfig(backbones=["tiny", "tiny"], weights=[path, None], attention_dim=8)
    model = build_model(config, num_classes=3, image_size=32)
    first, second = model.get_layer("branch_1_backbone"), model.get_layer("branch_2_backbone")
    assert first.get_layer("preprocessing").mode == "xrv" and epsilons(first) == {1e-5}
    assert second.get_layer("preprocessing").mode == "unit" and epsilons(second) == {1e-3}  # the registry's
    saved = bb.build_backbone("tiny", 32, weights=path)
    for a, b in zip(saved.get_weights(), first.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.get_config()["backbone_options"] == [XRV_OPTIONS, {}]
    assert branch_backbone_options(model) == [XRV_OPTIONS, {}]

    baseline = build_model(ModelConfig(kind="baseline", backbones=["tiny"], weights=[path]), 3, 32)
    assert baseline.get_config()["backbone_options"] == XRV_OPTIONS
    assert baseline.get_layer("backbone").get_layer("preprocessing").mode == "xrv"


def test_xrv_names_reach_the_branches(tmp_path, monkeypatch):
    monkeypatch.setenv("CAN_TF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(ti.NAMED_WEIGHTS, "tiny-res32-all", ti.NamedWeights("https://example.org/t.pt", "tiny", 32))
    cached = tmp_path / "cache" / "weights" / "tiny-res32-all.tiny.weights.h5"
    cached.parent.mkdir(parents=True)
    imported_tiny(cached, source="tiny-res32-all")
    model = build_model(ModelConfig(backbones=["tiny", "tiny"], weights=[None, "xrv:tiny-res32-all"],
                                    attention_dim=8), num_classes=3, image_size=32)
    assert branch_backbone_options(model) == [{}, XRV_OPTIONS]


def test_offline_xrv_weights_name_the_url_and_the_folder(tmp_path, monkeypatch):
    # The download comes before PyTorch reads anything; the message is what matters here.
    monkeypatch.setattr(ti, "import_torch", lambda: None)
    monkeypatch.setenv("CAN_TF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ti.Path, "home", staticmethod(lambda: tmp_path / "home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(ti.urllib.request, "urlopen", offline)
    entry = ti.NAMED_WEIGHTS["densenet121-res224-all"]
    config = ModelConfig(backbones=["densenet121", "densenet121"], weights=["xrv:densenet121-res224-all", None])
    with pytest.raises(ModelFileError) as info:
        build_model(config, num_classes=3, image_size=32)
    assert entry.url in str(info.value)
    assert f"put it, under the same name, in {tmp_path / 'cache' / 'weights'}/" in str(info.value)


# --- the options are part of the model's config ----------------------------------------------------------


def test_can_model_with_options_round_trips_its_config(tmp_path):
    model = CANModel(backbones=("tiny", "tiny"), num_classes=3, image_size=32, attention_dim=8,
                     backbone_options=[XRV_OPTIONS, {"preprocessing": "tf"}])
    config = json.loads(json.dumps(model.get_config()))
    assert config["backbone_options"] == [XRV_OPTIONS, {"preprocessing": "tf"}]
    rebuilt = CANModel.from_config(config)
    assert rebuilt.get_config() == model.get_config()
    assert rebuilt.get_layer("branch_1_backbone").get_layer("preprocessing").mode == "xrv"
    assert epsilons(rebuilt.get_layer("branch_1_backbone")) == {1e-5}
    assert rebuilt.get_layer("branch_2_backbone").get_layer("preprocessing").mode == "tf"
    assert epsilons(rebuilt.get_layer("branch_2_backbone")) == {1e-3}

    # Saved and reloaded in safe mode: the same function. Small running variances make a wrong
    # epsilon (1e-3 against 1e-5) show in the outputs.
    for layer in bb._batch_norm_layers(model):
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1e-4, "float32"))
    path = tmp_path / "can.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded, CANModel) and branch_backbone_options(reloaded) == [XRV_OPTIONS, {"preprocessing": "tf"}]
    x = images(2, 32)
    for name in ("fused", "branch_1", "branch_2"):
        np.testing.assert_allclose(np.asarray(reloaded(x)[name]), np.asarray(model(x)[name]), rtol=1e-5, atol=1e-5)
    plain = CANModel(backbones=("tiny", "tiny"), num_classes=3, image_size=32, attention_dim=8)
    plain.set_weights(model.get_weights())
    assert np.abs(np.asarray(plain(x)["fused"]) - np.asarray(model(x)["fused"])).max() > 1e-3  # teeth


def test_models_saved_without_options_still_load():
    model = CANModel(backbones=("tiny", "tiny"), num_classes=3, image_size=32, attention_dim=8)
    old = {k: v for k, v in model.get_config().items() if k != "backbone_options"}
    assert branch_backbone_options(CANModel.from_config(old)) == [{}, {}]
    baseline = BaselineModel(backbone="tiny", num_classes=3, image_size=32)
    old = {k: v for k, v in baseline.get_config().items() if k != "backbone_options"}
    rebuilt = BaselineModel.from_config(old)
    assert rebuilt.get_config()["backbone_options"] == {}
    assert rebuilt.get_layer("backbone").get_layer("preprocessing").mode == "unit"


def test_baseline_with_options_round_trips_its_config():
    model = BaselineModel(backbone="tiny", num_classes=3, image_size=32, backbone_options=XRV_OPTIONS)
    rebuilt = BaselineModel.from_config(json.loads(json.dumps(model.get_config())))
    assert rebuilt.get_config() == model.get_config()
    assert epsilons(rebuilt.get_layer("backbone")) == {1e-5}


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="one backbone_options dict"):
        CANModel(backbones=("tiny", "tiny"), image_size=32, backbone_options=[XRV_OPTIONS])
    with pytest.raises(ValueError, match=r"backbone_options\[1\]: unknown option\(s\) 'weights'"):
        CANModel(backbones=("tiny", "tiny"), image_size=32, backbone_options=[{}, {"weights": "imagenet"}])
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        BaselineModel(backbone="tiny", image_size=32, backbone_options={"preprocessing": "nope"})


# --- presets ---------------------------------------------------------------------------------------------


def test_chest_xray_presets():
    paper = RunConfig.resolve(preset="paper-xrv")
    assert (paper.model.kind, paper.model.backbones, paper.data.image_size, paper.loss.name) == \
        ("can", ["densenet121", "densenet121"], 224, "can")
    assert paper.model.branch_weights() == ["xrv:densenet121-res224-all"] * 2
    chexnet = RunConfig.resolve(preset="chexnet-xrv")
    assert (chexnet.model.kind, chexnet.model.backbones, chexnet.model.branch_weights()) == \
        ("baseline", ["densenet121"], ["xrv:densenet121-res224-all"])
    hetero = RunConfig.resolve(preset="hetero-xrv")
    assert hetero.model.backbones == ["densenet121", "densenet121"]
    assert hetero.model.branch_weights() == ["xrv:densenet121-res224-all", "imagenet"]
    for config in (paper, chexnet, hetero):
        assert (config.train.freeze_epochs, config.train.unfreeze_lr_factor) == (1, 0.1)
        description = PRESETS[config.preset]["description"]
        assert "Ours" in description and ("'paper'" in description or "'chexnet'" in description)
    # Everything but the initialisation and the transfer schedule is the paper's / CheXNet's.
    for ours, theirs in (("paper-xrv", "paper"), ("chexnet-xrv", "chexnet")):
        a, b = RunConfig.resolve(preset=ours).to_dict(), RunConfig.resolve(preset=theirs).to_dict()
        for section in ("data", "loss"):
            assert a[section] == b[section]
        assert {k: v for k, v in a["model"].items() if k != "weights"} == \
            {k: v for k, v in b["model"].items() if k != "weights"}
        changed = {k for k in a["train"] if a["train"][k] != b["train"][k]}
        assert changed == {"freeze_epochs"}  # unfreeze_lr_factor 0.1 is the default


# --- the whole path: import, fit, reload, export (slow) ----------------------------------------------------


@pytest.mark.slow
def test_can_from_two_imported_backbones_trains_saves_reloads_and_exports(tmp_path, phantom_dir):
    from click.testing import CliRunner

    from can_tf.predictor import Predictor
    from can_tf_cli.main import main

    require("torch")
    torch = ti.import_torch()  # before torchvision: see test_torch_import.test_triton_after_tensorflow_still_crashes
    torchvision, xrv = require("torchvision"), require("torchxrayvision")
    torch.manual_seed(0)
    torch.save(torchvision.models.densenet121(weights=None).state_dict(), tmp_path / "tv.pth")
    torch.save(xrv.models.DenseNet(weights=None).state_dict(), tmp_path / "xrv.pt")  # 1-channel conv0
    a = ti.import_checkpoint(tmp_path / "tv.pth", "densenet121", tmp_path / "tv.weights.h5")
    b = ti.import_checkpoint(tmp_path / "xrv.pt", "densenet121", tmp_path / "xrv.weights.h5")
    assert (a.info.preprocessing, b.info.preprocessing, b.info.input_channels) == ("torch", "xrv", 1)

    run = tmp_path / "run"
    invoke = lambda *args: CliRunner().invoke(main, list(args), catch_exceptions=False)  # noqa: E731
    result = invoke("fit", "--data", str(phantom_dir), "--run-dir", str(run), "--epochs", "1", "--batch-size", "8",
                    "--set", "train.steps_per_epoch=2", "--set", "data.augment=false", "--set", "train.verbose=2",
                    "--set", "model.backbones=[densenet121, densenet121]",
                    "--set", f"model.weights=[{a.out}, {b.out}]", "--set", "model.attention_dim=16")
    assert result.exit_code == 0, result.output

    x = images(3, 64)
    reloaded = keras.saving.load_model(run / "model.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(x)), Predictor.load(run).predict(x), rtol=1e-5, atol=1e-6)
    for branch, mode in (("branch_1_backbone", "torch"), ("branch_2_backbone", "xrv")):
        backbone = reloaded.get_layer(branch)
        assert backbone.get_layer("preprocessing").mode == mode and epsilons(backbone) == {1e-5}
    # The training graph is rebuilt from CANModel's own config: the options must be in it.
    best = keras.saving.load_model(run / "best.keras", safe_mode=True, compile=False)
    assert isinstance(best, CANModel)
    assert branch_backbone_options(best) == [{"preprocessing": "torch", "batchnorm_epsilon": 1e-5}, XRV_OPTIONS]
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(best(x)["fused"]))), np.asarray(reloaded(x)),
                               rtol=1e-5, atol=1e-6)

    # TFLite's export checks the converted graph against Keras on images; the SavedModel export of
    # these layers is the same graph traced once more (tests/test_export_saved_model.py covers it), so it is
    # left out of this, the slowest test of the suite.
    result = invoke("export", str(run), "--format", "tflite")
    assert result.exit_code == 0, result.output
    assert list((run / "tflite").glob("*.tflite"))
