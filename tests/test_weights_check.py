"""``can-tf weights import ... --check IMAGES`` and ``verify_import``: an imported backbone is run beside
the PyTorch model it came from on real NIH radiographs, and a wrong tensor fails the check.

The models are the tiny DenseNet of ``tests/test_torch_import.py`` (one dense layer per block) with
random weights and batch-norm statistics moved off their defaults, saved as torchxrayvision and
CheXNet checkpoints; the torch side is torchvision's ``DenseNet`` with the same blocks. Without
PyTorch the tests that need it skip, unless ``CAN_TF_REQUIRE_TORCH=1`` (then they fail).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")

from can_tf.errors import DataError, ModelFileError  # noqa: E402
from can_tf.images import load_image  # noqa: E402
from can_tf.models import backbones as bb  # noqa: E402
from can_tf.models import torch_import as ti  # noqa: E402
from can_tf.models.weights_info import read_weights_info, write_weights_info  # noqa: E402
from can_tf_cli.main import main  # noqa: E402
from test_torch_import import (  # noqa: E402,F401  (torch, xrv, torchvision, densenet_tiny: fixtures)
    densenet_tiny, randomize_batch_norm, require, torch, torch_inputs, torchvision, xrv,
)

SIZE = 64
DIFF_LINE = re.compile(r"^(feature map|pooled features|logits|probabilities) \(([\d, ]+)\): max \|diff\| (\S+) "
                       r"\(largest \|value\| (\S+), limit (\S+)\) (ok|OVER TOLERANCE)$")


@pytest.fixture
def tiny(densenet_tiny, monkeypatch):
    """The tiny DenseNet backbone, and torchvision's DenseNet with the same blocks as its torch model."""
    monkeypatch.setitem(ti.TORCHVISION_ARCHITECTURES, densenet_tiny,
                        lambda models: models.DenseNet(block_config=(1, 1, 1, 1)))
    return densenet_tiny


@pytest.fixture(scope="module")
def nih_images(chestxray14_dir):
    """Two real NIH radiographs (1024 px PNGs)."""
    return sorted((chestxray14_dir / "images").glob("*.png"))[:2]


def _pixels(paths, size=SIZE):
    return np.stack([load_image(p, size).pixels for p in paths])


def _xrv_checkpoint(torch, xrv, paths, path, seed=0):
    """A tiny torchxrayvision DenseNet (1-channel conv0, 18 pathologies, op_threshs) as a state dict."""
    torch.manual_seed(seed)
    model = xrv.models.DenseNet(block_config=(1, 1, 1, 1), weights=None)
    model.op_threshs = torch.rand(18)
    randomize_batch_norm(torch, model, torch_inputs(torch, _pixels(paths)[..., 0], "xrv"))
    torch.save(model.state_dict(), path)
    return path


def _import(runner, checkpoint, backbone, out, *extra):
    return runner.invoke(main, ["weights", "import", str(checkpoint), "--backbone", backbone, "--out", str(out),
                                "--image-size", str(SIZE), *extra])


def _diff_lines(output):
    return {m[1]: (tuple(int(v) for v in m[2].split(",") if v.strip()), float(m[3]), float(m[4]), float(m[5]), m[6])
            for m in map(DIFF_LINE.match, output.splitlines()) if m}


def _perturb_kernel(path, backbone, layer="conv2_block1_2_conv", factor=1.001):
    """One kernel of an imported file scaled by ``factor``, the file's info kept."""
    info = read_weights_info(path)
    model = bb.build_backbone(backbone, 32, weights=str(path))
    kernel = model.get_layer(layer).kernel
    kernel.assign(kernel * factor)
    model.save_weights(path)
    write_weights_info(path, info)


# --- no PyTorch needed ---------------------------------------------------------------------------


def test_check_images_from_files_and_folders(tmp_path):
    for name in ("b.png", "a.JPG", "c.dcm", "notes.txt", "d.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image is no image
    assert [p.name for p in ti.check_image_paths(tmp_path)] == ["a.JPG", "b.png", "c.dcm", "d.jpeg"]
    assert [p.name for p in ti.check_image_paths(tmp_path, limit=2)] == ["a.JPG", "b.png"]
    # A file is taken whatever its name (its kind is read from its bytes); lists are concatenated, then cut.
    assert [p.name for p in ti.check_image_paths([tmp_path / "notes.txt", tmp_path], limit=3)] == \
        ["notes.txt", "a.JPG", "b.png"]
    many = tmp_path / "many"
    many.mkdir()
    for i in range(12):
        (many / f"{i:02d}.png").write_bytes(b"x")
    assert len(ti.check_image_paths(many)) == ti.MAX_CHECK_IMAGES == 8
    with pytest.raises(DataError, match=r"^check images: .*missing\.png is neither an image file nor a folder$"):
        ti.check_image_paths(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no PNG, JPEG or DICOM file \(\.png, .*\) in .*empty$"):
        ti.check_image_paths(tmp_path / "empty")


def test_result_verdict_and_summary():
    result = ti.VerifyResult(
        source="m.pth", weights_file=ti.Path("m.weights.h5"), torch_model="torchvision densenet121",
        backbone="densenet121", preprocessing="xrv", image_size=224, images=("a.png", "b.png"),
        diffs={"feature map": 3e-6, "pooled features": 1e-4, "logits": float("nan")},
        largest={"feature map": 8.0, "pooled features": 1.5, "logits": 4.0},
        shapes={"feature map": (2, 7, 7, 1024), "pooled features": (2, 1024), "logits": (2, 18)},
        same_checkpoint=False)
    assert result.failures == ("logits",) and not result.passed  # 1e-4 itself passes; NaN never does
    # Outputs beyond 1 get the tolerance in proportion: 8 * 1e-4 for the feature map, 1e-4 for |value| <= 1.
    assert (result.limit("feature map"), result.limit("pooled features")) == pytest.approx((8e-4, 1.5e-4))
    assert result.failure() == ("m.weights.h5 does not compute what m.pth computes: logits max |diff| nan > "
                                "0.0004 (tolerance 0.0001) on 2 images at 224 px")
    lines = result.summary().splitlines()
    assert lines[1] == "note: m.pth is not the checkpoint recorded in m.weights.h5 (sha256 differs)"
    assert lines[2] == "feature map (2, 7, 7, 1024): max |diff| 3e-06 (largest |value| 8, limit 0.0008) ok"
    assert lines[4] == "logits (2, 18): max |diff| nan (largest |value| 4, limit 0.0004) OVER TOLERANCE"
    assert lines[-1] == "FAILED: logits over tolerance 0.0001"
    with pytest.raises(ModelFileError, match=r"logits max \|diff\| nan"):
        result.check()
    fine = ti.VerifyResult(**{**result.__dict__, "diffs": {"feature map": 7.9e-3}, "tolerance": 1e-3})
    assert fine.check() is fine and fine.summary().endswith("all within tolerance 0.001")


def test_a_file_without_weights_info_is_refused(tmp_path):
    plain = tmp_path / "plain.weights.h5"
    bb.build_backbone("tiny", 32).save_weights(plain)
    with pytest.raises(ModelFileError, match=r"plain\.weights\.h5 carries no can-tf weights info"):
        ti.verify_import("x.pth", plain, tmp_path)


# --- with PyTorch ----------------------------------------------------------------------------------


def test_torch_scaling_is_what_the_weights_were_trained_on(torch, xrv, torchvision):
    pixels = np.random.RandomState(0).randint(0, 256, (2, 8, 8, 1)).astype("float32")
    got = ti.torch_scaled(torch, pixels, "xrv", 1).numpy()
    np.testing.assert_array_equal(got, xrv.datasets.normalize(pixels.transpose(0, 3, 1, 2), 255))
    normalize = torchvision.transforms.Normalize(bb.IMAGENET_MEAN_RGB, bb.IMAGENET_STDDEV_RGB)
    rgb = torch.from_numpy(np.repeat(pixels.transpose(0, 3, 1, 2), 3, axis=1) / 255.0)
    np.testing.assert_allclose(ti.torch_scaled(torch, pixels, "torch", 3).numpy(), normalize(rgb).numpy(),
                               rtol=1e-6, atol=1e-6)
    assert ti.torch_scaled(torch, pixels, "xrv", 3).shape == (2, 3, 8, 8)
    with pytest.raises(ModelFileError, match="a 1-channel model cannot take 'torch' scaling"):
        ti.torch_scaled(torch, pixels, "torch", 1)


def test_check_passes_and_prints_the_diffs(torch, xrv, tiny, nih_images, tmp_path):
    checkpoint = _xrv_checkpoint(torch, xrv, nih_images, tmp_path / "xrv.pt")
    out = tmp_path / "xrv.weights.h5"
    result = _import(CliRunner(), checkpoint, tiny, out, "--check", str(nih_images[0]), "--check", str(nih_images[1]))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"wrote {out} (")
    assert lines[4] == (f"checked {out} ({tiny}) against torchvision {tiny} (1-channel input) on 2 images at "
                        f"{SIZE} px (torch fed 'xrv' scaling, Keras [0, 255] gray)")
    diffs = _diff_lines(result.output)
    # 64 px at stride 32: a 2 x 2 map; 64 channels, +32 per dense layer, halved by each transition: 68.
    assert {k: v[0] for k, v in diffs.items()} == {"feature map": (2, 2, 2, 68), "pooled features": (2, 68),
                                                   "logits": (2, 18), "probabilities": (2, 18)}
    assert all(diff <= limit == pytest.approx(1e-4 * max(1, largest), rel=1e-2) and verdict == "ok"
               for _, diff, largest, limit, verdict in diffs.values()), diffs
    assert diffs["feature map"][2] > 0.1  # the activations did not vanish: the diffs mean something
    assert lines[-1] == "all within tolerance 0.0001"


def test_verify_import_agrees_with_torchxrayvision_itself(torch, xrv, tiny, nih_images, tmp_path):
    """The torch side of the check is the model torchxrayvision runs: its own forward (op_norm off)."""
    checkpoint = _xrv_checkpoint(torch, xrv, nih_images, tmp_path / "xrv.pt")
    out = ti.import_checkpoint(checkpoint, tiny, tmp_path / "xrv.weights.h5", image_size=SIZE).out
    result = ti.verify_import(checkpoint, out, nih_images).check()
    assert result.passed and result.same_checkpoint and result.images == tuple(nih_images)

    model = xrv.models.DenseNet(block_config=(1, 1, 1, 1), weights=None)
    model.op_threshs = torch.zeros(18)  # a place for the checkpoint's
    model.load_state_dict(torch.load(checkpoint))
    model.op_threshs = None  # forward then returns the classifier's logits
    model.eval()
    with torch.no_grad():
        logits = model(ti.torch_scaled(torch, _pixels(nih_images), "xrv", 1)).numpy()
    backbone = bb.build_backbone(tiny, SIZE, weights=str(out))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(np.repeat(_pixels(nih_images), 3, axis=-1)))
    ours = np.asarray(pooled) @ model.classifier.weight.detach().numpy().T + model.classifier.bias.detach().numpy()
    assert np.abs(ours - logits).max() <= 1e-4
    assert result.largest["logits"] == pytest.approx(np.abs(logits).max(), rel=1e-5)


def test_chexnet_layout_with_imagenet_scaling_and_a_folder(torch, torchvision, tiny, nih_images, tmp_path):
    """A torchvision DenseNet (RGB, ImageNet scaling) saved as CheXNet saves it: `module.densenet121.`
    keys, a `classifier.0` head of 14 classes, a training checkpoint; the images given as a folder."""
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(block_config=(1, 1, 1, 1), num_classes=14)
    randomize_batch_norm(torch, model, torch_inputs(torch, _pixels(nih_images)[..., 0], "torch"))
    state = {f"module.densenet121.{k.replace('classifier.', 'classifier.0.')}": v for k, v in model.state_dict().items()}
    checkpoint = tmp_path / "model.pth.tar"
    torch.save({"epoch": 3, "state_dict": state}, checkpoint)
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in nih_images:
        (folder / path.name).symlink_to(path)

    out = ti.import_checkpoint(checkpoint, tiny, tmp_path / "chexnet.weights.h5", image_size=SIZE).out
    result = ti.verify_import(checkpoint, out, folder)
    assert result.torch_model == f"torchvision {tiny} (3-channel input)" and result.preprocessing == "torch"
    assert result.shapes["logits"] == (2, 14) and len(result.images) == 2
    assert result.passed, result.summary()


def test_a_perturbed_kernel_fails_the_check(torch, xrv, tiny, nih_images, monkeypatch, tmp_path):
    checkpoint = _xrv_checkpoint(torch, xrv, nih_images, tmp_path / "xrv.pt")
    real_import = ti.import_checkpoint

    def import_then_corrupt(*args, **kwargs):
        result = real_import(*args, **kwargs)
        _perturb_kernel(result.out, tiny)  # one 3x3 kernel 0.1% off: what a wrong transpose or eps hides in
        return result

    monkeypatch.setattr(ti, "import_checkpoint", import_then_corrupt)
    out = tmp_path / "bad.weights.h5"
    result = _import(CliRunner(), checkpoint, tiny, out, "--check", str(nih_images[0]), "--check", str(nih_images[1]))
    assert result.exit_code == 1, result.output
    diffs = _diff_lines(result.output)
    assert diffs["feature map"][1] > diffs["feature map"][3] and diffs["feature map"][4] == "OVER TOLERANCE"
    last = result.output.splitlines()[-1]
    assert last.startswith(f"Error: {out} does not compute what {checkpoint} computes: feature map max |diff| ")
    assert last.endswith(f"(tolerance 0.0001) on 2 images at {SIZE} px")
    assert result.output.count("Error:") == 1 and out.exists()  # kept for a look, the exit status says it failed

    # A looser tolerance lets the same 0.1% through: the option reaches the check.
    result = _import(CliRunner(), checkpoint, tiny, out, "--check", str(nih_images[0]), "--tolerance", "1")
    assert result.exit_code == 0, result.output


def test_checking_against_another_checkpoint_fails(torch, xrv, tiny, nih_images, tmp_path):
    first = _xrv_checkpoint(torch, xrv, nih_images, tmp_path / "first.pt", seed=0)
    other = _xrv_checkpoint(torch, xrv, nih_images, tmp_path / "other.pt", seed=1)
    out = ti.import_checkpoint(first, tiny, tmp_path / "first.weights.h5", image_size=SIZE).out
    result = ti.verify_import(other, out, nih_images[:1])
    assert not result.same_checkpoint and "sha256 differs" in result.summary()
    assert set(result.failures) == {"feature map", "pooled features", "logits", "probabilities"}
    with pytest.raises(ModelFileError, match=r"first\.weights\.h5 does not compute what .*other\.pt computes"):
        result.check()


@pytest.mark.slow
def test_named_weights_check_with_torchxrayvision(torch, xrv, nih_images, monkeypatch, tmp_path):
    """The command a user runs on the real `densenet121-res224-all`, here on a random DenseNet-121
    pickled as torchxrayvision publishes it and put in the cache: xrv.models.DenseNet(weights=name)
    reads it from there, nothing is downloaded."""
    monkeypatch.setenv("CAN_TF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ti.Path, "home", staticmethod(lambda: tmp_path / "home"))
    monkeypatch.setattr(ti.urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    monkeypatch.setattr(xrv.utils, "download", lambda *a, **k: pytest.fail("downloaded"))
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None)
    randomize_batch_norm(torch, model, torch_inputs(torch, _pixels(nih_images)[..., 0], "xrv"))
    name = "densenet121-res224-all"
    cached = tmp_path / "cache" / "weights" / ti.NAMED_WEIGHTS[name].filename
    cached.parent.mkdir(parents=True)
    torch.save(model, cached)

    out = tmp_path / "xrv.weights.h5"
    result = _import(CliRunner(), name, "densenet121", out, "--check", str(nih_images[0]), "--check",
                     str(nih_images[1]))
    assert result.exit_code == 0, result.output
    assert f"against torchxrayvision DenseNet(weights='{name}') on 2 images at {SIZE} px" in result.output
    diffs = _diff_lines(result.output)
    assert diffs["logits"][0] == (2, 18) and diffs["feature map"][0] == (2, 2, 2, 1024)
    assert all(v[4] == "ok" for v in diffs.values()), result.output
