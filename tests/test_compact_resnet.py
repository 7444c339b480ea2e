"""The compact ResNet (core.models.compact_resnet): its registry entry, every width and depth at 28 and 64 px, its
Grad-CAM layers and BatchNorm layers, one real tiny training run, and the cost estimates of it and of ResNet-18's
stems. Real Keras and real data, no timing (speeds are measured by hand, not asserted)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from core.config import ConfigError, RunConfig
from core.data.dataset import load_npz
from core.explain.cam.gradcam import GradCAM
from core.jobs.sweeps import relative_cost, training_speed
from core.models import architectures
from core.models.architectures import COMPACT_DEPTHS, COMPACT_WIDTHS
from core.models.batchnorm import batchnorm_layers, recalibrate
from core.models.build import WRITTEN_HERE, build_model, cam_layers, last_conv_block
from core.models.preprocessing import preprocess
from core.store.runs import RunStore
from core.training.pipeline import bn_statistics_dataset
from core.training.trainer import train

ARCH = "compactresnet"
N_CLASSES = 8


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def compact(size: int, **kw) -> keras.Model:
    return build_model(RunConfig(arch=ARCH, weights="none", size=size, **kw), N_CLASSES, size)


def conv_macs(model: keras.Model) -> float:
    """Multiply-adds of the model's convolutions per image, in billions."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            total += h * w * c_out * layer.kernel_size[0] * layer.kernel_size[1] * layer.input.shape[-1]
    return total / 1e9


def test_the_registry_entry_is_complete():
    spec = architectures.get(ARCH)
    assert spec.name == "Compact ResNet" and architectures.display_name(ARCH) == "Compact ResNet"
    assert spec.preprocessing == "torch"  # per-channel standardisation
    assert not spec.imagenet_weights and spec.keras_builder is None and ARCH in WRITTEN_HERE
    assert spec.min_input == 0 and spec.upsample_to(28) is None and spec.small_input_stem == 32
    assert spec.width_depth == (RunConfig().width, RunConfig().depth) == (32, 2)
    assert RunConfig.default_weights(ARCH) == "none"
    with pytest.raises(ConfigError, match="ImageNet"):
        RunConfig(arch=ARCH, weights="imagenet")
    x = np.full((1, 28, 28, 3), 255, np.uint8)
    assert np.asarray(preprocess(x, ARCH)).max() == pytest.approx((1 - 0.406) / 0.225)


@pytest.mark.parametrize("name, bad", [("width", 12), ("width", 72), ("width", 8), ("width", "32"),
                                       ("depth", 0), ("depth", 5), ("depth", 2.0)])
def test_width_and_depth_are_validated(name, bad):
    with pytest.raises(ConfigError) as info:
        RunConfig(arch=ARCH, weights="none", **{name: bad})
    assert info.value.field == name


@pytest.mark.parametrize("size", [28, 64])
def test_every_width_and_depth_builds_with_its_blocks_and_batchnorm(size):
    """Every width and depth at 28 px; at 64 px (only the stem's stride differs) the smallest and the largest."""
    side = size if size <= 32 else size // 2  # stride-1 stem up to 32 px, stride 2 above
    params = {}
    grid = [(w, d) for w in COMPACT_WIDTHS for d in COMPACT_DEPTHS]
    for width, depth in grid if size <= 32 else [grid[0], grid[-1]]:
        model = compact(size, width=width, depth=depth)
        assert model.input_shape == (None, size, size, 3) and model.output_shape == (None, N_CLASSES)
        assert not [layer for layer in model.layers if isinstance(layer, keras.Model)]  # flat graph
        assert model.get_layer("conv1_conv").output.shape[1:] == (side, side, width)
        last = last_conv_block(model)
        assert last == f"conv4_block{depth}_out"
        assert model.get_layer(last).output.shape[1:] == (-(-side // 4), -(-side // 4), 4 * width)
        assert [c.name for c in cam_layers(model)] == [f"conv{s}_block{depth}_out" for s in (2, 3, 4)]
        # stem + 2 per block + the projections opening stages 3 and 4, all with the from-scratch momentum
        bns = batchnorm_layers(model)
        assert len(bns) == 1 + 3 * depth * 2 + 2 and {layer.momentum for layer in bns} == {0.9}
        params[width, depth] = model.count_params()
        keras.backend.clear_session()
    if size > 32:
        return
    assert 0.3e6 < params[32, 2] < 2e6  # the defaults
    assert params[16, 3] == pytest.approx(0.27e6, rel=0.05)  # ResNet-20's size (plus projections)
    assert all(params[w, d] < params[w + 8, d] for w in COMPACT_WIDTHS[:-1] for d in COMPACT_DEPTHS)
    assert all(params[w, d] < params[w, d + 1] for w in COMPACT_WIDTHS for d in COMPACT_DEPTHS[:-1])


@pytest.mark.parametrize("size", [28, 64])
def test_defaults_predict_and_run_no_full_resolution_64_channel_conv(size):
    model = compact(size)
    wide_full = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
                 and layer.filters >= 64 and layer.output.shape[1] == size]
    assert wide_full == []
    p = np.asarray(model(np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)))
    assert p.shape == (2, N_CLASSES) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("size, width, depth", [(224, 32, 2), (28, 32, 2), (64, 32, 2), (28, 16, 3), (64, 64, 4)])
def test_the_registry_cost_follows_the_built_network(size, width, depth):
    """relative_cost is GFLOPs at 224 px scaled; for this network it tracks the convolutions' real count."""
    settings = RunConfig(arch=ARCH, weights="none", width=width, depth=depth).to_dict()
    model = compact(size, width=width, depth=depth)
    assert relative_cost(ARCH, size, settings) == pytest.approx(conv_macs(model), rel=0.05)


def test_resnet18_stem_costs_follow_the_built_networks():
    """The strided stem costs a quarter of the full one at 28 px; at 64 px both are the ImageNet stem."""
    full = RunConfig(arch="resnet18", weights="none", size=28, resnet18_stem="full").to_dict()
    strided = RunConfig(arch="resnet18", weights="none", size=28).to_dict()
    assert relative_cost("resnet18", 28, full) == pytest.approx(4 * relative_cost("resnet18", 28, strided))
    assert relative_cost("resnet18", 64, full) == relative_cost("resnet18", 64, strided)
    measured = {stem: conv_macs(build_model(RunConfig(arch="resnet18", weights="none", size=28,
                                                      resnet18_stem=stem), N_CLASSES, 28))
                for stem in ("full", "strided")}
    assert measured["full"] / measured["strided"] == pytest.approx(4.0, rel=0.1)


def test_speed_estimates_tell_stems_and_widths_apart():
    old = RunConfig(arch="resnet18", weights="none", size=28).to_dict()
    del old["resnet18_stem"]  # a run indexed before the setting: it ran the full stem
    rows = [{"arch": "resnet18", "size": 28, "images_per_second": 20.0, "config_json": json.dumps(old)},
            {"arch": ARCH, "size": 28, "images_per_second": 300.0,
             "config_json": RunConfig(arch=ARCH, weights="none", size=28).to_json()}]
    full = training_speed(RunConfig(arch="resnet18", weights="none", size=28, resnet18_stem="full"), rows)
    assert full.source == "measured" and full.images_per_second == 20.0
    strided = training_speed(RunConfig(arch="resnet18", weights="none", size=28), rows)
    assert strided.source == "scaled" and strided.images_per_second == pytest.approx(80.0)
    assert training_speed(RunConfig(arch=ARCH, weights="none", size=28), rows).source == "measured"
    wide = training_speed(RunConfig(arch=ARCH, weights="none", size=28, width=64), rows)
    assert wide.source == "scaled" and wide.images_per_second == pytest.approx(300.0 / 4)
    # rows without config.json (their columns over the defaults) and no history at all still give an estimate
    assert training_speed(RunConfig(arch=ARCH, weights="none", size=28),
                          [{"arch": ARCH, "size": 28, "images_per_second": 100.0}]).images_per_second == 100.0
    assert training_speed(RunConfig(arch=ARCH, weights="none", size=64, depth=4), []).source == "default"


def test_trains_one_tiny_epoch_publishes_a_run_and_is_explained(tiny_npz, tmp_path):
    config = RunConfig(data=str(tiny_npz), size=28, arch=ARCH, weights="none", epochs=1, batch_size=32,
                       width=16, depth=1, seed=0, bn_recalibration_batches=2)
    store = RunStore(tmp_path / "runs")
    run = train(config, store, echo=None)
    assert run.config == config and run.metrics["bn_recalibrated"]
    assert 0.0 <= run.metrics["test"]["accuracy"] <= 1.0 and run.metrics["epochs_run"] == 1
    assert [r["arch"] for r in store.list_runs()] == [ARCH]

    model = keras.models.load_model(run.model_path, compile=False)
    assert last_conv_block(model) == "conv4_block1_out"
    images = load_npz(tiny_npz).test.images[:4]
    heat = GradCAM(model)(preprocess(images, ARCH).numpy())
    assert heat.shape == (4, 28, 28) and 0.0 <= heat.min() and heat.max() <= 1.0

    # the BatchNorm re-estimate finds every BN layer of the saved model and replaces its statistics
    bns = batchnorm_layers(model)
    assert len(bns) == 9
    before = [layer.moving_mean.numpy().copy() for layer in bns]
    used = recalibrate(model, bn_statistics_dataset(load_npz(tiny_npz).train.images, ARCH, 32, 0), 2)
    assert used == 2
    assert all(not np.allclose(b, layer.moving_mean.numpy()) for b, layer in zip(before, bns))
