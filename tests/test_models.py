"""Model building: every architecture, flat graphs, ResNet-18 stems (and old configs keeping theirs), attention,
BN momentum, and weights (ImageNet offline -> a clear error; a local weights file -> exactly those weights).
Real Keras, no mocks. The compact ResNet's own tests are in tests/test_compact_resnet.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from core.config import RunConfig
from core.models import architectures
from core.models.architectures import KEYS
from core.models.batchnorm import batchnorm_layers
from core.models.build import (
    SCRATCH_BN_MOMENTUM,
    WeightsUnavailableError,
    build_model,
    feature_layer_names,
    last_conv_block,
)

N_CLASSES = 8
KERAS_DEFAULT_BN_MOMENTUM = keras.layers.BatchNormalization().momentum  # 0.99 in Keras 3
# The large backbones upsample 28 px to 32 anyway; at 64 px only the cheaper ones are built (time).
CASES = [(arch, 28) for arch in KEYS] + [
    (arch, 64) for arch in ("resnet18", "compactresnet", "resnet50", "mobilenetv3small", "efficientnetb0")]


LAST_BLOCK = {"resnet18": "conv5_block2_out", "resnet50": "conv5_block3_out", "resnet101": "conv5_block3_out",
              "compactresnet": "conv4_block2_out"}


def scratch(arch: str, size: int, **kw) -> keras.Model:
    return build_model(RunConfig(arch=arch, weights="none", size=size, **kw), N_CLASSES, size)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()  # keep memory flat across the many builds


@pytest.mark.parametrize("arch, size", CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_builds_flat_and_outputs_probabilities(arch, size):
    model = scratch(arch, size)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, N_CLASSES)
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert nested == [], f"sub-models nested in the graph: {nested}"
    for name in ("logits", "probabilities", "avg_pool", "head_dropout"):
        model.get_layer(name)
    assert ("upsample" in {layer.name for layer in model.layers}) == (size < architectures.get(arch).min_input)

    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    p = np.asarray(model(x, training=False))
    assert p.shape == (2, N_CLASSES)
    assert np.all(p >= 0) and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # last_conv_block is a real, spatial layer of the backbone
    block = model.get_layer(last_conv_block(model))
    assert len(block.output.shape) == 4 and block.output.shape[1] >= 1
    if arch in LAST_BLOCK:
        assert block.name == LAST_BLOCK[arch]
    # weights "none" = from scratch: every BN layer gets the faster momentum
    bns = batchnorm_layers(model)
    assert bns and all(layer.momentum == SCRATCH_BN_MOMENTUM == 0.9 for layer in bns)


def test_resnet18_full_stem_at_28px_keeps_resolution():
    model = scratch("resnet18", 28, resnet18_stem="full")
    conv1 = model.get_layer("conv1_conv")
    assert conv1.kernel_size == (3, 3) and conv1.strides == (1, 1)
    assert "pool1_pool" not in {layer.name for layer in model.layers}
    assert model.get_layer("conv2_block2_out").output.shape[1:3] == (28, 28)
    assert model.get_layer("conv5_block2_out").output.shape[1:] == (4, 4, 512)
    assert last_conv_block(model) == "conv5_block2_out"
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    # basic blocks: 1 stem + 8 blocks x 2 convs + 3 projection shortcuts = 20 convs, ~11.2 M parameters
    assert len(convs) == 20
    assert 11.0e6 < sum(int(np.prod(w.shape)) for layer in convs for w in layer.weights) < 11.3e6


def _full_resolution_64_channel_convs(model: keras.Model, size: int) -> list[str]:
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
            and layer.filters >= 64 and layer.output.shape[1] == size and layer.kernel_size != (1, 1)]


@pytest.mark.parametrize("size", [28, 64])
def test_resnet18_default_stem_runs_no_full_resolution_64_channel_conv(size):
    model = scratch("resnet18", size)
    assert RunConfig().resnet18_stem == "strided"
    assert _full_resolution_64_channel_convs(model, size) == []
    assert model.get_layer("conv1_conv").strides == (2, 2)
    assert model.get_layer("conv2_block2_out").output.shape[1] <= size // 2
    if size == 28:  # 3x3/2, no max-pool: stage 1 at 14x14, a quarter of the full stem's pixels
        assert model.get_layer("conv1_conv").kernel_size == (3, 3)
        assert "pool1_pool" not in {layer.name for layer in model.layers}
        assert model.get_layer("conv2_block2_out").output.shape[1:] == (14, 14, 64)
        assert model.get_layer("conv5_block2_out").output.shape[1:] == (2, 2, 512)
        # the control: the old stem does run them (the stem and stage 1's four convs)
        assert len(_full_resolution_64_channel_convs(scratch("resnet18", 28, resnet18_stem="full"), 28)) == 5


@pytest.mark.parametrize("stem", ["strided", "full"])
def test_resnet18_stem_at_64px_is_the_imagenet_one(stem):
    model = scratch("resnet18", 64, resnet18_stem=stem)
    conv1 = model.get_layer("conv1_conv")
    assert conv1.kernel_size == (7, 7) and conv1.strides == (2, 2)
    assert model.get_layer("pool1_pool").output.shape[1:3] == (16, 16)
    assert model.get_layer("conv5_block2_out").output.shape[1:] == (2, 2, 512)


def _layer_shapes(model: keras.Model) -> list[tuple]:
    return [(layer.name, tuple(layer.output.shape), tuple(tuple(w.shape) for w in layer.weights))
            for layer in model.layers]


def test_a_saved_config_without_the_stem_setting_rebuilds_the_old_stem():
    """Run folders and incomplete runs saved before `resnet18_stem` existed were built with the full stem."""
    old = RunConfig(arch="resnet18", weights="none", size=28).to_dict()
    del old["resnet18_stem"]
    config = RunConfig.from_dict(old)
    assert config.resnet18_stem == "full" and RunConfig().resnet18_stem == "strided"
    rebuilt = build_model(config, N_CLASSES, 28)
    assert _layer_shapes(rebuilt) == _layer_shapes(scratch("resnet18", 28, resnet18_stem="full"))
    assert _layer_shapes(rebuilt) != _layer_shapes(scratch("resnet18", 28))
    assert rebuilt.get_layer("conv1_conv").strides == (1, 1)
    # only ResNet-18 is built differently; other configs without the key take the default stem
    assert RunConfig.from_dict({"epochs": 2, "precision": "auto"}) == RunConfig(epochs=2)
    # a config saved with the setting keeps what it says
    assert RunConfig.from_dict(RunConfig(arch="resnet18", weights="none", size=28).to_dict()).resnet18_stem \
        == "strided"


def test_attention_adds_named_layers_but_not_the_default_cam_layer():
    plain = scratch("resnet18", 28)
    model = scratch("resnet18", 28, attention=True)
    added = {layer.name for layer in model.layers} - {layer.name for layer in plain.layers}
    assert added and all(name.startswith("attention_") for name in added)
    assert {"attention_squeeze", "attention_spatial_map", "attention_out"} <= added
    assert model.get_layer("avg_pool").input.shape == model.get_layer("attention_out").output.shape
    assert last_conv_block(model) == "conv5_block2_out"
    assert "attention_out" in feature_layer_names(model)
    p = np.asarray(model(np.zeros((2, 28, 28, 3), np.float32), training=False))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def resnet50_weights(tmp_path_factory):
    """A ResNet-50 backbone (no top) saved as a local weights file: (path, {layer name: weights})."""
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / "w.weights.h5"
    backbone.save_weights(path)
    return path, {layer.name: layer.get_weights() for layer in backbone.layers if layer.weights}


def test_pretrained_configs_keep_keras_bn_momentum(resnet50_weights):
    """Only from-scratch runs change momentum; a run from given weights keeps the backbone's own."""
    assert not RunConfig(arch="resnet50", weights="imagenet").from_scratch
    assert RunConfig(arch="resnet50", weights="none").from_scratch
    path, _ = resnet50_weights
    bns = batchnorm_layers(build_model(RunConfig(arch="resnet50", weights=str(path), size=28), N_CLASSES, 28))
    assert bns and {layer.momentum for layer in bns} == {KERAS_DEFAULT_BN_MOMENTUM}
    assert KERAS_DEFAULT_BN_MOMENTUM != SCRATCH_BN_MOMENTUM


# -- weights --------------------------------------------------------------------------------------------

@pytest.fixture
def offline_keras(monkeypatch, tmp_path):
    """Real Keras download code, but the weights URL points at a closed local port and the cache is empty."""
    import keras.src.applications.resnet as keras_resnet
    import keras.src.backend.config as keras_config

    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    # keras resolves KERAS_HOME once at import time; get_file() reads it through keras_home()
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    monkeypatch.setattr(keras_resnet, "BASE_WEIGHTS_PATH", "http://127.0.0.1:9/")
    return home


def test_keras_itself_fails_offline(offline_keras):
    """The control: under the fixture, plain Keras raises its own bare Exception (not our error)."""
    with pytest.raises(Exception) as info:
        keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=(32, 32, 3))
    assert not isinstance(info.value, WeightsUnavailableError)
    assert "URL fetch failure" in str(info.value) and "127.0.0.1:9" in str(info.value)
    assert not list((offline_keras / "models").glob("*.h5"))  # nothing half-downloaded left behind


def test_imagenet_offline_raises_a_helpful_error(offline_keras):
    config = RunConfig(arch="resnet50", weights="imagenet", size=28)
    with pytest.raises(WeightsUnavailableError) as info:
        build_model(config, N_CLASSES, 28)
    message = str(info.value)
    assert "ImageNet weights for ResNet-50" in message
    assert "from scratch" in message and "--weights none" in message
    assert "local weights file" in message and "--weights PATH" in message
    assert "URL fetch failure" in message  # Keras' reason is kept, on one line


def test_local_weights_file_is_loaded_exactly(resnet50_weights):
    path, saved_by_layer = resnet50_weights
    model = build_model(RunConfig(arch="resnet50", weights=str(path), size=28), N_CLASSES, 28)
    fresh = build_model(RunConfig(arch="resnet50", weights="none", size=28), N_CLASSES, 28)
    compared, differs_from_fresh = 0, False
    for name, saved_weights in saved_by_layer.items():
        for saved, loaded, init in zip(saved_weights, model.get_layer(name).get_weights(),
                                       fresh.get_layer(name).get_weights()):
            np.testing.assert_array_equal(loaded, saved, err_msg=name)
            differs_from_fresh |= not np.array_equal(init, saved)
            compared += 1
    assert compared == sum(len(w) for w in saved_by_layer.values()) > 300
    assert differs_from_fresh  # the equality above is not true of any freshly initialised model


def test_resnet18_local_weights_round_trip(tmp_path):
    source = scratch("resnet18", 28)
    backbone = keras.Model(source.inputs, source.get_layer("conv5_block2_out").output)
    path = tmp_path / "r18.weights.h5"
    backbone.save_weights(path)
    model = build_model(RunConfig(arch="resnet18", weights=str(path), size=28), N_CLASSES, 28)
    fresh = scratch("resnet18", 28)
    compared, differs_from_fresh = 0, False
    for layer in (layer for layer in backbone.layers if layer.weights):
        for saved, loaded, init in zip(layer.get_weights(), model.get_layer(layer.name).get_weights(),
                                       fresh.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(loaded, saved, err_msg=layer.name)
            differs_from_fresh |= not np.array_equal(init, saved)
            compared += 1
    assert compared == len(backbone.weights) > 0 and differs_from_fresh


@pytest.mark.filterwarnings("ignore:Skipping nested container")
@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv3small"])
def test_a_weights_file_for_another_network_is_a_user_facing_error(resnet50_weights, arch):
    path, _ = resnet50_weights
    with pytest.raises(WeightsUnavailableError, match="Could not load weights file"):
        build_model(RunConfig(arch=arch, weights=str(path), size=28), N_CLASSES, 28)
