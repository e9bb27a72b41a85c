"""``can-tf weights import`` and ``can-tf weights info`` through click's test runner."""

from __future__ import annotations

import urllib.error

import pytest
from click.testing import CliRunner

from can_tf.models import backbones as bb
from can_tf.models import torch_import as ti
from can_tf_cli import weights as cli_weights
from can_tf_cli.main import main
from test_torch_import import densenet_tiny, require  # noqa: F401,F811  (densenet_tiny: a fixture)


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def torch():
    require("torch")
    return ti.import_torch()


def _resnet_checkpoint(torch, tmp_path, depth):
    torchvision = require("torchvision")
    torch.manual_seed(0)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict(), path)
    return path


@pytest.fixture
def xrv_checkpoint(torch, tmp_path):
    """torchxrayvision's DenseNet with one dense layer per block (fits the densenet_tiny backbone)."""
    xrv = require("torchxrayvision")
    torch.manual_seed(0)
    model = xrv.models.DenseNet(block_config=(1, 1, 1, 1), weights=None)
    model.op_threshs = torch.rand(18)
    path = tmp_path / "xrv-tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("args", [["weights"], ["weights", "import"], ["weights", "info"]])
def test_help_has_an_example(runner, args):
    result = runner.invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "can-tf weights" in result.output


def test_preprocessing_choices_match_the_library():
    assert cli_weights.PREPROCESSING_MODES == bb.PREPROCESSING_MODES


def test_import_then_info(runner, xrv_checkpoint, densenet_tiny, tmp_path):
    out = tmp_path / "xrv.weights.h5"
    result = runner.invoke(main, ["weights", "import", str(xrv_checkpoint), "--backbone", densenet_tiny,
                                  "--out", str(out), "--image-size", "256"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"wrote {out} (") and " MB) in " in lines[0]
    # conv0 + norm0 (1 + 4), 4 dense layers (norm1, conv1, norm2, conv2: 10 each), 3 transitions (5), norm5 (4).
    assert lines[1] == f"backbone {densenet_tiny}: 64 tensors mapped, 195,648 parameters"
    assert "(torchxrayvision, 1-channel input), preprocessing 'xrv'" in lines[2]
    assert lines[3] == "ignored: classifier.bias, classifier.weight, op_threshs"

    result = runner.invoke(main, ["weights", "info", str(out)])
    assert result.exit_code == 0, result.output
    fields = dict(line.split(": ", 1) for line in result.output.splitlines())
    assert fields["backbone"] == densenet_tiny and fields["preprocessing"] == "xrv"
    assert fields["framework"] == "torchxrayvision" and fields["image_size"] == "256"
    assert fields["input_channels"] == "1"
    assert fields["source"] == str(xrv_checkpoint) and fields["sha256"] == ti.sha256_of(xrv_checkpoint)

    result = runner.invoke(main, ["weights", "import", str(xrv_checkpoint), "--backbone", densenet_tiny,
                                  "--out", str(out), "--preprocessing", "unit"])
    assert result.exit_code == 0, result.output
    assert "preprocessing 'unit'" in result.output
    assert runner.invoke(main, ["weights", "info", str(out)]).output.splitlines()[1] == "preprocessing: unit"


@pytest.mark.slow
def test_import_resnet50(runner, torch, tmp_path):
    checkpoint = _resnet_checkpoint(torch, tmp_path, 50)
    out = tmp_path / "r50.weights.h5"
    result = runner.invoke(main, ["weights", "import", str(checkpoint), "--backbone", "resnet50_tv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1] == "backbone resnet50_tv: 265 tensors mapped, 23,561,152 parameters"
    assert "(torchvision, 3-channel input), preprocessing 'torch'" in lines[2]
    assert lines[3] == "ignored: fc.bias, fc.weight"


def test_errors_are_one_line(runner, torch, densenet_tiny, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    result = runner.invoke(main, ["weights", "import", str(junk), "--backbone", "densenet121",
                                  "--out", str(tmp_path / "d.weights.h5")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {junk}: not a PyTorch checkpoint") and result.output.count("\n") == 1

    result = runner.invoke(main, ["weights", "import", str(_resnet_checkpoint(torch, tmp_path, 18)),
                                  "--backbone", densenet_tiny, "--out", str(tmp_path / "d.weights.h5")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "no first convolution 'conv0.weight'" in result.output
    assert not (tmp_path / "d.weights.h5").exists()

    result = runner.invoke(main, ["weights", "info", str(junk)])
    assert result.exit_code == 1 and result.output == (
        f"Error: {junk} carries no can-tf weights info (not written by can-tf weights import, or not an HDF5 "
        f"weights file)\n")


def test_named_weights_offline_name_the_url_and_the_cache(runner, torch, monkeypatch, tmp_path):
    monkeypatch.setenv("CAN_TF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ti.Path, "home", staticmethod(lambda: tmp_path / "home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(ti.urllib.request, "urlopen", offline)
    entry = ti.NAMED_WEIGHTS["densenet121-res224-all"]
    result = runner.invoke(main, ["weights", "import", "densenet121-res224-all", "--backbone", "densenet121",
                                  "--out", str(tmp_path / "xrv.weights.h5")])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: cannot download weights 'densenet121-res224-all' from {entry.url} (Temporary failure in name "
        f"resolution); download that file elsewhere and put it, under the same name, in "
        f"{tmp_path / 'cache' / 'weights'}/ (set CAN_TF_CACHE to move that folder)\n")
    assert not (tmp_path / "xrv.weights.h5").exists()
