"""RunConfig: defaults, validation naming the bad field, round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest

from core.config import OPTIMIZERS, SETTINGS, SIZES, ConfigError, RunConfig
from core.errors import UserFacingError
from core.models import architectures

ARCHITECTURES = architectures.KEYS
NO_IMAGENET_WEIGHTS = ("resnet18", "compactresnet")  # written here; keras.applications has none for them


def test_defaults_are_the_study_recipe():
    c = RunConfig()
    assert c.data == ""
    assert c.size == 64
    assert c.limit_train == 0
    assert c.arch == "resnet50"
    assert c.weights == "imagenet"
    assert c.dropout == 0.3
    assert c.attention is False
    assert c.batch_size == 32
    assert c.epochs == 10
    assert c.optimizer == "adam"
    assert c.lr == 1e-4
    assert c.momentum == 0.9
    assert c.class_weights is False
    assert c.patience == 0
    assert c.aug_shear == 0.2
    assert c.aug_zoom == 0.2
    assert c.aug_hflip is True
    assert c.aug_vflip is False
    assert c.aug_rot90 is False
    assert c.bn_recalibration == "auto"
    assert c.bn_recalibration_batches == 50
    assert c.seed == 0
    assert c.deterministic is False
    assert c.tags == ()


def test_config_is_frozen():
    c = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_accepted_with_its_default_weights(arch):
    c = RunConfig(arch=arch, weights=RunConfig.default_weights(arch))
    assert c.arch == arch


@pytest.mark.parametrize("size", SIZES)
def test_every_size_accepted(size):
    assert RunConfig(size=size).size == size


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_every_optimizer_accepted(opt):
    assert RunConfig(optimizer=opt).optimizer == opt


INVALID = [
    ("arch", "vgg16"),
    ("arch", ""),
    ("optimizer", "adagrad"),
    ("size", 32),
    ("size", 0),
    ("size", "64"),
    ("size", 64.0),
    ("weights", ""),
    ("weights", "   "),
    ("weights", "/nonexistent/weights.h5"),
    ("batch_size", 0),
    ("batch_size", 1025),
    ("batch_size", 32.0),
    ("epochs", 0),
    ("epochs", 1001),
    ("epochs", 2.5),
    ("lr", 0.0),
    ("lr", -1e-3),
    ("lr", 1.5),
    ("momentum", -0.1),
    ("momentum", 1.0),
    ("dropout", -0.1),
    ("dropout", 1.0),
    ("patience", -1),
    ("patience", 1.5),
    ("limit_train", -1),
    ("limit_train", 10.0),
    ("aug_shear", -0.01),
    ("aug_shear", 0.81),
    ("aug_zoom", -0.1),
    ("aug_zoom", 1.0),
    ("bn_recalibration", "always"),
    ("bn_recalibration_batches", 0),
    ("bn_recalibration_batches", 2.0),
    ("seed", -1),
    ("seed", 2**31),
    ("seed", 1.0),
    ("tags", ("ok", 3)),
    # wrong types, as a hand-edited config.json may hold them: a ConfigError, never a TypeError
    ("data", None),
    ("weights", None),
    ("lr", "0.1"),
    ("momentum", None),
    ("dropout", "0.3"),
    ("aug_shear", None),
    ("aug_zoom", "0.2"),
    ("epochs", True),
    ("batch_size", "32"),
    ("attention", "false"),
    ("class_weights", 1),
    ("aug_hflip", "yes"),
    ("aug_vflip", None),
    ("aug_rot90", 0),
    ("deterministic", "true"),
    ("tags", "abc"),
]


@pytest.mark.parametrize("name,value", INVALID, ids=[f"{n}={v!r}" for n, v in INVALID])
def test_invalid_field_raises_config_error_naming_it(name, value):
    with pytest.raises(ConfigError) as info:
        RunConfig(**{name: value})
    err = info.value
    assert err.field == name
    assert str(err).startswith(f"{name}: ")
    assert err.message and err.message in str(err)
    assert isinstance(err, UserFacingError)
    assert isinstance(err, ValueError)


def test_valid_boundaries_accepted():
    RunConfig(batch_size=1, epochs=1, lr=1.0, momentum=0.0, dropout=0.0, aug_shear=0.0, aug_zoom=0.0,
              seed=0, patience=0, limit_train=0, bn_recalibration_batches=1)
    RunConfig(batch_size=1024, epochs=1000, aug_shear=0.8, seed=2**31 - 1, momentum=0.99, dropout=0.99)


def test_replace_validates():
    c = RunConfig()
    assert c.replace(epochs=3).epochs == 3
    with pytest.raises(ConfigError) as info:
        c.replace(epochs=0)
    assert info.value.field == "epochs"


@pytest.mark.parametrize("arch", NO_IMAGENET_WEIGHTS)
def test_resnet18_with_imagenet_refused(arch):
    with pytest.raises(ConfigError) as info:
        RunConfig(arch=arch, weights="imagenet")
    assert info.value.field == "weights"
    assert "ImageNet" in info.value.message
    assert arch in info.value.message


def test_resnet18_from_scratch_or_weights_file_ok(tmp_path):
    assert RunConfig(arch="resnet18", weights="none").from_scratch
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"x")
    c = RunConfig(arch="resnet18", weights=str(weights))
    assert c.weights == str(weights)
    assert not c.from_scratch


def test_missing_weights_file_message_names_path(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(ConfigError) as info:
        RunConfig(weights=str(missing))
    assert info.value.field == "weights"
    assert str(missing) in info.value.message


def test_default_weights():
    assert RunConfig.default_weights("resnet18") == "none"
    for arch in ARCHITECTURES:
        expected = "none" if arch in NO_IMAGENET_WEIGHTS else "imagenet"
        assert RunConfig.default_weights(arch) == expected
    assert RunConfig.default_weights("resnet50") == "imagenet"


def test_recalibrate_bn_auto_follows_from_scratch():
    assert RunConfig(weights="none").recalibrate_bn is True
    assert RunConfig(weights="imagenet").recalibrate_bn is False
    assert RunConfig(weights="imagenet", bn_recalibration="on").recalibrate_bn is True
    assert RunConfig(weights="none", bn_recalibration="off").recalibrate_bn is False


def test_to_dict_from_dict_round_trip():
    c = RunConfig(data="/x/y.npz", size=28, arch="resnet18", weights="none", dropout=0.5, attention=True,
                  batch_size=16, epochs=3, optimizer="sgd", lr=0.01, momentum=0.8, class_weights=True,
                  patience=2, aug_shear=0.1, aug_zoom=0.3, aug_hflip=False, aug_vflip=True, aug_rot90=True,
                  bn_recalibration="on", bn_recalibration_batches=7, seed=42, deterministic=True,
                  tags=("a", "b c"))
    d = c.to_dict()
    assert d["tags"] == ["a", "b c"]
    assert set(d) == set(RunConfig.field_names())
    assert RunConfig.from_dict(d) == c
    # through JSON too, as config.json stores it
    assert RunConfig.from_dict(json.loads(c.to_json())) == c
    assert json.loads(c.to_json()) == d


def test_from_dict_partial_uses_defaults():
    c = RunConfig.from_dict({"epochs": 2, "precision": "auto"})
    assert c == RunConfig(epochs=2)
    # a saved config without the precision setting ran in float32, as before it existed
    assert RunConfig.from_dict({"epochs": 2}) == RunConfig(epochs=2, precision="float32")


def test_from_dict_unknown_key_refused():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"epochs": 2, "learning_rate": 0.1})
    assert info.value.field == "learning_rate"
    assert "unknown" in info.value.message


def test_from_dict_validates_values():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"optimizer": "lbfgs"})
    assert info.value.field == "optimizer"


def test_field_names_cover_every_setting():
    names = RunConfig.field_names()
    assert names[0] == "data"
    assert "tags" in names and "seed" in names and len(names) == len(set(names))


def test_from_dict_wrong_type_in_stored_config_is_config_error():
    d = RunConfig().to_dict()
    d["lr"] = "0.0001"
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(d)
    assert info.value.field == "lr"


def test_architecture_registry_says_which_have_imagenet_weights():
    assert tuple(a.key for a in architectures.ARCHITECTURES if not a.imagenet_weights) == NO_IMAGENET_WEIGHTS
    assert architectures.display_name("densenet121") == "DenseNet-121"
    assert architectures.display_name("unknown") == "unknown"


def test_every_field_has_one_setting_with_label_help_and_group():
    assert list(SETTINGS) == RunConfig.field_names()
    for name, s in SETTINGS.items():
        assert s.name == name and s.label and s.help and s.group, name
        assert s.default == getattr(RunConfig(), name), name
        assert s.kind in (bool, int, float, str, tuple), name
        if s.choices:
            assert s.default in s.choices, name
    assert SETTINGS["tags"].kind is tuple and SETTINGS["aug_hflip"].cli_flag == "--no-hflip"
    assert SETTINGS["aug_vflip"].cli_flag == "--vflip" and SETTINGS["batch_size"].cli_flag == "--batch-size"


def test_a_setting_describes_its_values():
    assert SETTINGS["arch"].describe("resnet50") == "ResNet-50"
    assert SETTINGS["size"].describe(64) == "64 px"
    assert SETTINGS["batch_size"].describe(16) == "batch 16"
    assert SETTINGS["lr"].describe(1e-4) == "lr 0.0001"
    assert SETTINGS["attention"].describe(False) == "no attention"
    assert SETTINGS["weights"].describe("/x/y/backbone.h5") == "backbone.h5"
    assert SETTINGS["dropout"].describe(0.3) == "dropout 0.3"


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if s.kind is bool])
def test_every_switch_must_be_a_bool(name):
    with pytest.raises(ConfigError) as info:
        RunConfig(**{name: 1})
    assert info.value.field == name and "true or false" in info.value.message
