"""RunConfig: presets, files, overrides and validation messages that name the field at fault."""

import json

import pytest

from can_tf.config import ConfigError, RunConfig
from can_tf.presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_and_validates(name):
    config = RunConfig.resolve(preset=name)
    assert config.preset == name
    expected_branches = 2 if config.model.kind == "can" else 1
    assert len(config.model.backbones) == expected_branches


def test_paper_preset_is_two_densenet121_at_224():
    config = RunConfig.resolve(preset="paper")
    assert config.model.backbones == ["densenet121", "densenet121"]
    assert config.data.image_size == 224
    assert config.loss.name == "can"


def test_default_preset_is_small():
    assert RunConfig.resolve().preset == "small"


def test_overrides_parse_values_as_yaml():
    config = RunConfig.resolve(
        preset="small",
        overrides=["train.epochs=3", "train.learning_rate=5e-3", "data.views=[PA, AP]", "model.weights=null"],
    )
    assert config.train.epochs == 3
    assert config.train.learning_rate == pytest.approx(0.005)
    assert config.data.views == ["PA", "AP"]
    assert config.model.weights is None


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.epochs=0", "train.epochs"),
        ("train.epochs=many", "train.epochs"),
        ("data.split=sideways", "data.split"),
        ("data.split_fractions=[0.5, 0.5, 0.5]", "data.split_fractions"),
        ("model.backbones=[tiny]", "model.backbones"),
        ("model.backbones=[tiny, nosuchnet]", "model.backbones"),
        ("model.weights=/no/such/file.h5", "model.weights"),
        ("loss.gamma=-1", "loss.gamma"),
        ("train.mixed_precision=float8", "train.mixed_precision"),
        ("data.views=[LL]", "data.views"),
        ("loss.alpha=0.25", "loss.alpha"),  # the small preset's loss is 'can', not 'focal'
    ],
)
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        RunConfig.resolve(preset="small", overrides=[override])


@pytest.mark.parametrize("override", ["train.nosuch=1", "nosuch.epochs=1", "epochs=1", "train.epochs"])
def test_unknown_or_malformed_overrides_are_refused(override):
    with pytest.raises(ConfigError, match="override"):
        RunConfig.resolve(preset="small", overrides=[override])


def test_can_loss_needs_a_can_model():
    with pytest.raises(ConfigError, match="loss.name='can'"):
        RunConfig.resolve(preset="small", overrides=["model.kind=baseline", "model.backbones=[tiny]"])


def test_focal_alpha_reaches_the_loss_and_is_range_checked():
    from can_tf.losses.factory import build_loss

    focal = ["model.kind=baseline", "model.backbones=[tiny]", "loss.name=focal"]
    config = RunConfig.resolve(preset="small", overrides=focal + ["loss.alpha=0.25"])
    losses, _ = build_loss(config.loss, "baseline", [0.2] * config.num_classes)
    assert losses["fused"].get_config()["alpha"] == 0.25
    unweighted, _ = build_loss(RunConfig.resolve(preset="small", overrides=focal).loss, "baseline", None)
    assert unweighted["fused"].get_config()["alpha"] is None
    with pytest.raises(ConfigError, match=r"loss\.alpha must be in \[0, 1\]"):
        RunConfig.resolve(preset="small", overrides=focal + ["loss.alpha=1.5"])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="paper"):
        RunConfig.resolve(preset="nosuch")


def test_yaml_file_over_its_preset_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: paper\ntrain:\n  epochs: 5\ndata:\n  image_size: 256\n")
    config = RunConfig.resolve(config_file=str(path), overrides=["train.epochs=7"])
    assert config.preset == "paper"
    assert config.model.backbones == ["densenet121", "densenet121"]  # from the preset
    assert config.data.image_size == 256  # from the file
    assert config.train.epochs == 7  # from the override


def test_file_preset_conflicting_with_option_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: paper\n")
    with pytest.raises(ConfigError, match="disagrees"):
        RunConfig.resolve(preset="small", config_file=str(path))


def test_unknown_field_in_file_is_named_with_the_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"train": {"epoch": 3}}))
    with pytest.raises(ConfigError, match=r"run\.json.*train\.epoch"):
        RunConfig.resolve(config_file=str(path))


def test_wrong_type_in_file_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  augment: sometimes\n")
    with pytest.raises(ConfigError, match="data.augment must be bool"):
        RunConfig.resolve(config_file=str(path))


def test_invalid_yaml_and_missing_file_are_clear(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        RunConfig.resolve(config_file=str(path))
    with pytest.raises(ConfigError, match="cannot read config file"):
        RunConfig.resolve(config_file=str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_saved_config_reads_back_identically(tmp_path, suffix):
    config = RunConfig.resolve(preset="hetero", overrides=["train.epochs=2", "data.views=[PA]"])
    path = tmp_path / f"config{suffix}"
    config.save(str(path))
    again = RunConfig.resolve(config_file=str(path))
    assert again.to_dict() == config.to_dict()
    assert not list(tmp_path.glob("*.tmp"))
