"""The backbone registry: feature-map shapes, in-graph preprocessing, and weight loading."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from can_tf.models import backbones as bb  # noqa: E402
from can_tf.models.backbones import (  # noqa: E402
    BACKBONES,
    ImagePreprocessing,
    build_backbone,
    fold_normalization_scale,
    image_input,
    load_backbone_weights,
)

RNG = np.random.RandomState(0)


def _images(n, size, channels=3):
    return RNG.uniform(0, 255, (n, size, size, channels)).astype("float32")


def _expected_grid(size, stride):
    return -(-size // stride)  # ceil


def _check_backbone(name, size):
    spec = BACKBONES[name]
    backbone = build_backbone(name, size, model_name=f"{name}_under_test")
    grid = _expected_grid(size, spec.stride)
    assert backbone.output.shape == (None, grid, grid, spec.channels)
    out = np.asarray(backbone(_images(1, size)))
    assert out.shape == (1, grid, grid, spec.channels)
    assert np.isfinite(out).all()
    return backbone


def test_registry_covers_the_families():
    families = {spec.family for spec in BACKBONES.values()}
    assert families == {"densenet", "resnet", "efficientnet", "efficientnetv2", "convnext", "mobilenetv3", "tiny"}
    for name in ("densenet121", "densenet169", "densenet201", "resnet50", "resnet101", "efficientnetb0",
                 "efficientnetb4", "efficientnetv2b0", "efficientnetv2b3", "efficientnetv2s", "convnext_tiny",
                 "convnext_small", "mobilenetv3small", "mobilenetv3large", "tiny"):
        assert name in BACKBONES
    for spec in BACKBONES.values():
        assert spec.preprocessing in bb.PREPROCESSING_MODES


def test_tiny_backbone_has_stride_8():
    backbone = _check_backbone("tiny", 64)
    assert backbone.output.shape == (None, 8, 8, 64)
    assert backbone.count_params() < 100_000


# One representative per family. DenseNet-121 and ResNet-50 are checked in test_can_model's
# heterogeneous pair and in the preprocessing test below, MobileNetV3 in test_can_model's
# different-grid pair.
@pytest.mark.parametrize("name", ["efficientnetb0", "efficientnetv2b0", "convnext_tiny"])
def test_family_feature_map_shape(name):
    _check_backbone(name, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(BACKBONES) - {"tiny"}))
def test_every_registered_backbone(name):
    _check_backbone(name, 64)


def test_image_input_replicates_grayscale():
    image, rgb = image_input(32, 1)
    model = keras.Model(image, rgb)
    x = _images(2, 32, 1)
    out = np.asarray(model(x))
    assert out.shape == (2, 32, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], x[..., 0])
    image3, rgb3 = image_input(32, 3)
    assert rgb3 is image3
    with pytest.raises(ValueError, match="input_channels"):
        image_input(32, 2)


@pytest.mark.parametrize("mode, module", [("torch", "densenet"), ("caffe", "resnet"),
                                          ("tf", "mobilenet_v2")])
def test_preprocessing_modes_match_keras_applications(mode, module):
    x = _images(2, 8)
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    got = np.asarray(ImagePreprocessing(mode)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_preprocessing_unit_and_config():
    layer = ImagePreprocessing("unit", name="p")
    np.testing.assert_allclose(np.asarray(layer(np.array([[0.0, 51.0, 255.0]], "float32"))), [[0.0, 0.2, 1.0]])
    clone = ImagePreprocessing.from_config(layer.get_config())
    assert clone.mode == "unit"
    with pytest.raises(ValueError, match="mode must be one of"):
        ImagePreprocessing("bgr")


def test_densenet_preprocessing_is_inside_the_graph():
    """Feeding [0, 255] to our backbone equals feeding preprocess_input(x) to the bare application.

    The bare DenseNet-121 is the part of our backbone after its preprocessing layer (the slow test
    below compares against a separately built keras.applications model).
    """
    ours = _check_backbone("densenet121", 32)
    bare = keras.Model(ours.get_layer("preprocessing").output, ours.output)
    x = _images(2, 32)
    expected = np.asarray(bare(keras.applications.densenet.preprocess_input(x.copy())))
    np.testing.assert_allclose(np.asarray(ours(x)), expected, rtol=1e-4, atol=1e-4)
    # ...and differs from feeding the raw pixels, so the check has teeth.
    assert not np.allclose(np.asarray(bare(x)), expected, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name, application, module", [("densenet121", "DenseNet121", "densenet"),
                                                       ("resnet50", "ResNet50", "resnet")])
def test_preprocessing_matches_the_keras_application(name, application, module):
    ours = build_backbone(name, 32)
    raw = getattr(keras.applications, application)(include_top=False, weights=None, input_shape=(32, 32, 3))
    raw.set_weights(ours.get_weights())
    x = _images(2, 32)
    expected = np.asarray(raw(getattr(keras.applications, module).preprocess_input(x.copy())))
    np.testing.assert_allclose(np.asarray(ours(x)), expected, rtol=1e-4, atol=1e-4)


def test_weights_file_round_trip(tmp_path):
    source = build_backbone("tiny", 32)
    # Move the batch-norm statistics away from their defaults so every weight kind is checked.
    source.set_weights([w + RNG.normal(0, 0.1, w.shape).astype(w.dtype) for w in source.get_weights()])
    path = str(tmp_path / "tiny.weights.h5")
    source.save_weights(path)
    target = build_backbone("tiny", 32, weights=path)
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = _images(2, 32)
    np.testing.assert_allclose(np.asarray(target(x)), np.asarray(source(x)), rtol=1e-6, atol=1e-6)


def test_keras_applications_style_h5_file(tmp_path):
    """A legacy '.h5' file saved from the bare application (as Keras ships its '_notop.h5'
    ImageNet files) loads into our backbone, whose extra preprocessing layer has no weights."""
    h5py = pytest.importorskip("h5py")
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    bare = bb.TinyBackbone(input_shape=(32, 32, 3))
    bare.set_weights([RNG.normal(0, 1, w.shape).astype(w.dtype) for w in bare.get_weights()])
    path = str(tmp_path / "tiny_notop.h5")
    with h5py.File(path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, bare)
    ours = build_backbone("tiny", 32, weights=path)
    for a, b in zip(bare.get_weights(), ours.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_errors_name_the_backbone_and_source(tmp_path):
    with pytest.raises(ValueError, match="'tiny' has no ImageNet weights"):
        build_backbone("tiny", 32, weights="imagenet")
    with pytest.raises(ValueError, match="no file at"):
        build_backbone("tiny", 32, weights=str(tmp_path / "missing.weights.h5"))
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = str(tmp_path / "dense.weights.h5")
    other.save_weights(path)
    with pytest.raises(ValueError, match=r"dense\.weights\.h5 does not fit backbone 'tiny'"):
        build_backbone("tiny", 32, weights=path)
    with pytest.raises(ValueError, match="unknown backbone 'densenet122'; known backbones: convnext_small"):
        build_backbone("densenet122", 32)
    with pytest.raises(ValueError, match="at least 32 pixels"):
        build_backbone("tiny", 16)


def test_imagenet_download_failure_is_explained(monkeypatch):
    def offline(**kwargs):
        raise OSError("URL fetch failure: no route to host")

    monkeypatch.setitem(BACKBONES, "fake_app", bb.BackboneSpec(offline, "fake", "none", 64, imagenet=True))
    backbone = build_backbone("tiny", 32)
    with pytest.raises(ValueError, match="could not get the ImageNet weights of backbone 'fake_app'.*model.weights"):
        load_backbone_weights(backbone, "fake_app", "imagenet")


def test_imagenet_weights_copy_layer_by_layer(monkeypatch):
    """The 'imagenet' path copies from a second build of the application, layer by layer."""
    reference = {}

    def pretrained_tiny(include_top=False, weights=None, input_tensor=None, input_shape=None):
        model = bb.TinyBackbone(input_shape=input_shape)
        model.set_weights([RNG.normal(0, 1, w.shape).astype(w.dtype) for w in model.get_weights()])
        reference["model"] = model
        return model

    monkeypatch.setitem(BACKBONES, "pretrained_tiny", bb.BackboneSpec(pretrained_tiny, "tiny", "unit", 64, 8))
    backbone = build_backbone("tiny", 32)
    load_backbone_weights(backbone, "pretrained_tiny", "imagenet")
    for a, b in zip(reference["model"].get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fold_normalization_scale():
    """(x - m) / sqrt(v) / sqrt(s) == (x - m) / sqrt(v * s), the released EfficientNet fix-up."""
    layer = keras.layers.Normalization(axis=-1)
    layer.build((None, 3))
    mean, variance = np.array([0.5, 0.4, 0.3]), np.array([0.229, 0.224, 0.225])
    layer.set_weights([mean, variance, np.array(0)])
    layer.finalize_state()
    x = RNG.uniform(0, 1, (4, 3)).astype("float32")
    scale = np.array(bb.IMAGENET_STDDEV_RGB)
    fold_normalization_scale(layer, scale)
    expected = (x - mean) / np.sqrt(variance) / np.sqrt(scale)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5)
