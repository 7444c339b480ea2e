"""GroupNorm (RunConfig.norm "group", core.models.normalization) for every network the registry lists as taking it.

Each GroupNorm model has the BatchNorm model's layers, names and trainable weights with GroupNormalization in
place of every BatchNormalization, and nothing for the BatchNorm re-estimate to do; an image's prediction does
not depend on the other images in its batch (it does with BatchNorm in training mode); the small networks train
through the trainer and come back from the run store with the same predictions; the Keras ResNets take one
training step and a weights file saved from their GroupNorm model. "batch" builds the models of before the
setting existed (layer names, counts and parameters measured on that code). Real Keras and real images.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest

from core.config import RunConfig
from core.data.dataset import load_npz
from core.evaluation.metrics import evaluate
from core.inference.classifier import Classifier
from core.models import architectures
from core.models.architectures import COMPACT_WIDTHS, GROUP_NORM_KEYS
from core.models.batchnorm import batchnorm_layers, recalibrate
from core.models.build import SCRATCH_BN_MOMENTUM, WeightsUnavailableError, build_model, last_conv_block
from core.models.normalization import BN_EPSILON, GN_GROUPS, group_count, normalization_layer
from core.models.preprocessing import preprocess
from core.store.runs import RunStore
from core.training.pipeline import bn_statistics_dataset
from core.training.trainer import train

N_CLASSES = 8
LAST_BLOCK = {"resnet18": "conv5_block2_out", "compactresnet": "conv4_block2_out",
              "resnet50": "conv5_block3_out", "resnet101": "conv5_block3_out"}
SMALL = ("resnet18", "compactresnet")  # written here, built at 28 and 64 px
CASES = [(arch, size) for size in (28, 64) for arch in SMALL]
# The Keras ResNets, at 28 px (upsampled to 32 inside the model): ResNet-50 with its weights file below, ResNet-101
# (the same blocks, more of them) in the slow test that trains a step. Normalisation layers per network:
KERAS_RESNET_NORM_LAYERS = {"resnet50": 53, "resnet101": 104}
assert set(GROUP_NORM_KEYS) == set(SMALL) | set(KERAS_RESNET_NORM_LAYERS)  # every network that takes GroupNorm
# Every channel count a normalisation layer sees in these networks
CHANNELS = sorted({m * w for w in COMPACT_WIDTHS for m in (1, 2, 4)} | {64, 128, 256, 512, 1024, 2048})


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def build(arch: str, size: int, norm: str, **kw) -> keras.Model:
    return build_model(RunConfig(arch=arch, weights="none", size=size, norm=norm, **kw), N_CLASSES, size)


def group_norm_layers(model: keras.Model) -> list[keras.layers.GroupNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.GroupNormalization)]


def weight_count(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


# -- the group count ------------------------------------------------------------------------------------------

def test_group_count_is_valid_for_every_channel_count():
    assert group_count(64) == group_count(2048) == GN_GROUPS == 32  # Wu & He's default where it fits
    assert (group_count(16), group_count(24), group_count(40), group_count(56)) == (8, 12, 20, 28)
    for channels in CHANNELS:
        groups = group_count(channels)
        assert channels % groups == 0 and groups <= GN_GROUPS and channels // groups >= 2, channels
        # the largest such count: no valid count between it and the cap
        assert not any(channels % g == 0 and channels // g >= 2 for g in range(groups + 1, GN_GROUPS + 1))
    with pytest.raises(ValueError, match="at least 2 channels"):
        group_count(1)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalization_layer("layer", 64, "x_bn")


# -- building -------------------------------------------------------------------------------------------------

def assert_group_norm_model(model: keras.Model, arch: str, size: int) -> None:
    """No BatchNorm, GroupNorm layers named `*_bn` with valid group counts, a flat graph with Grad-CAM's
    default layer, probabilities out."""
    assert batchnorm_layers(model) == []
    gns = group_norm_layers(model)
    assert gns and model.non_trainable_weights == []  # GroupNorm keeps no moving statistics
    for layer in gns:
        channels = layer.input.shape[-1]
        assert layer.name.endswith("_bn") and layer.groups == group_count(channels), layer.name
        assert channels % layer.groups == 0
    assert [layer.name for layer in model.layers if isinstance(layer, keras.Model)] == []
    assert last_conv_block(model) == LAST_BLOCK[arch]
    assert ("upsample" in {layer.name for layer in model.layers}) == (size < architectures.get(arch).min_input)
    p = np.asarray(model(np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)))
    assert p.shape == (2, N_CLASSES) and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def assert_same_graph_but_group_norm(group: keras.Model, batch: keras.Model) -> None:
    """The same layers in the same order under the same names, BatchNorm -> GroupNorm only."""
    assert len(group_norm_layers(group)) == len(batchnorm_layers(batch)) > 0
    assert [layer.name for layer in group.layers] == [layer.name for layer in batch.layers]
    for g, b in zip(group.layers, batch.layers):
        expected = keras.layers.GroupNormalization if isinstance(b, keras.layers.BatchNormalization) else type(b)
        assert type(g) is expected, g.name
        assert g.output.shape == b.output.shape, g.name
    # trainable weights alike: gamma and beta per channel
    assert weight_count(group.trainable_weights) == weight_count(batch.trainable_weights)


@pytest.mark.parametrize("arch, size", CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_group_norm_model_is_the_batch_norm_model_with_group_norm(arch, size):
    group = build(arch, size, "group")
    assert_group_norm_model(group, arch, size)
    assert_same_graph_but_group_norm(group, build(arch, size, "batch"))


def test_the_batch_norm_re_estimate_finds_nothing_in_a_group_norm_model():
    config = RunConfig(arch="compactresnet", weights="none", size=28, norm="group", width=16, depth=1)
    assert config.from_scratch and config.bn_recalibration == "auto"
    model = build_model(config, N_CLASSES, 28)
    before = [w.copy() for w in model.get_weights()]
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 3), dtype=np.uint8)
    assert recalibrate(model, bn_statistics_dataset(images, config.arch, 4, seed=0), 2) == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# Measured on the code before RunConfig.norm existed (commit 7d5289b): layers, BatchNorm layers, parameters
# (moving statistics included) and a digest of every layer's name and class, in graph order.
BATCH_NORM_MODELS = {
    ("resnet18", 28): (70, 20, 11_182_536, "6fae28c19b9403b6"),
    ("compactresnet", 28): (54, 15, 698_600, "d1ec763e1f2e8a56"),
    ("resnet50", 28): (180, 53, 23_604_104, "6777c39b2b702006"),
}


def layer_digest(model: keras.Model) -> str:
    return hashlib.sha256("\n".join(f"{layer.name}:{type(layer).__name__}" for layer in model.layers)
                          .encode()).hexdigest()[:16]


@pytest.mark.parametrize("arch, size", list(BATCH_NORM_MODELS), ids=[f"{a}-{s}" for a, s in BATCH_NORM_MODELS])
def test_batch_builds_the_models_of_before(arch, size):
    assert RunConfig().norm == "batch"
    model = build(arch, size, "batch")
    n_layers, n_bn, n_params, digest = BATCH_NORM_MODELS[(arch, size)]
    bns = batchnorm_layers(model)
    assert (len(model.layers), len(bns), model.count_params(), layer_digest(model)) == (
        n_layers, n_bn, n_params, digest)
    assert {layer.momentum for layer in bns} == {SCRATCH_BN_MOMENTUM}
    assert {layer.epsilon for layer in bns} == {BN_EPSILON}
    assert group_norm_layers(model) == []


def test_a_config_saved_before_the_setting_builds_batch_norm():
    saved = RunConfig(arch="compactresnet", weights="none", size=28, width=16, depth=1).to_dict()
    del saved["norm"]
    config = RunConfig.from_dict(saved)
    assert config.norm == "batch"
    model = build_model(config, N_CLASSES, 28)
    assert len(batchnorm_layers(model)) == 9 and group_norm_layers(model) == []


# -- per-image normalisation --------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", SMALL)
def test_a_prediction_does_not_depend_on_the_rest_of_the_batch(arch, tiny_npz):
    images = load_npz(tiny_npz).test.images[:3]
    x = preprocess(images, arch).numpy()
    first_with = {}
    for norm in ("group", "batch"):
        model = build(arch, 28, norm, dropout=0.0, width=16, depth=1)
        logits = keras.Model(model.input, model.get_layer("logits").output)
        first_with[norm] = [np.asarray(logits(x[[0, other]], training=True))[0] for other in (1, 2)]
        if norm == "group":  # and training mode changes nothing: there are no batch statistics
            np.testing.assert_allclose(np.asarray(logits(x[[0, 1]], training=False))[0], first_with[norm][0],
                                       rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(*first_with["group"], rtol=1e-5, atol=1e-5)
    assert np.abs(first_with["batch"][0] - first_with["batch"][1]).max() > 1e-2


# -- training, saving, loading ------------------------------------------------------------------------------

@pytest.mark.slow
def test_trains_through_the_trainer_and_reloads_from_the_run_store_with_the_same_predictions(tiny_npz, tmp_path):
    """The compact ResNet (the other networks take one training step below: the same layers, longer to trace)."""
    arch = "compactresnet"
    config = RunConfig(data=str(tiny_npz), size=28, arch=arch, weights="none", norm="group", epochs=1,
                       batch_size=32, limit_train=128, width=16, depth=1, seed=0, bn_recalibration_batches=2)
    assert not config.recalibrate_bn  # GroupNorm keeps no batch statistics: nothing to re-estimate
    run = train(config, RunStore(tmp_path / "runs"), echo=None)
    assert run.config.norm == "group" and run.metrics["epochs_run"] == 1 and not run.metrics["bn_recalibrated"]

    classifier = Classifier(run.path)
    assert batchnorm_layers(classifier.model) == [] and group_norm_layers(classifier.model)
    assert [layer.groups for layer in group_norm_layers(classifier.model)] == [
        group_count(layer.input.shape[-1]) for layer in group_norm_layers(classifier.model)]
    assert last_conv_block(classifier.model) == "conv4_block1_out"  # depth 1
    data = load_npz(tiny_npz)
    test = evaluate(data.test.labels, classifier.raw_probabilities(data.test.images), data.labels)  # as stored: raw
    stored = run.metrics["test"]
    assert test.accuracy == stored["accuracy"] and test.confusion == stored["confusion"]
    assert test.loss == pytest.approx(stored["loss"], rel=1e-5)


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, on the refused BatchNorm file
def test_resnet50_group_norm_copy_and_its_weights_file(tmp_path):
    """Keras' ResNet-50 rebuilt with GroupNorm: its graph with GroupNorm for BatchNorm; a weights file saved from
    it is loaded exactly, one saved from the BatchNorm model is refused with a clear message."""
    keras.utils.set_random_seed(1)
    group, batch = build("resnet50", 28, "group"), build("resnet50", 28, "batch")
    assert_group_norm_model(group, "resnet50", 28)
    assert len(group_norm_layers(group)) == KERAS_RESNET_NORM_LAYERS["resnet50"]
    assert_same_graph_but_group_norm(group, batch)

    files = {}
    for norm, model in (("group", group), ("batch", batch)):
        files[norm] = tmp_path / f"{norm}.weights.h5"
        keras.Model(model.inputs, model.get_layer(LAST_BLOCK["resnet50"]).output).save_weights(files[norm])
    loaded = build_model(RunConfig(arch="resnet50", weights=str(files["group"]), size=28, norm="group"),
                         N_CLASSES, 28)
    compared = 0
    for layer in (layer for layer in group.layers if layer.weights and layer.name.startswith("conv")):
        for saved, got in zip(layer.get_weights(), loaded.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(got, saved, err_msg=layer.name)
            compared += 1
    assert compared == 2 * (53 + 53) > 200  # kernel and bias of 53 convs, gamma and beta of 53 GroupNorms
    with pytest.raises(WeightsUnavailableError, match="Could not load weights file") as refused:
        build_model(RunConfig(arch="resnet50", weights=str(files["batch"]), size=28, norm="group"), N_CLASSES, 28)
    assert "saved from a GroupNorm ResNet-50 backbone" in str(refused.value)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", *KERAS_RESNET_NORM_LAYERS])
def test_takes_a_training_step(arch, tiny_npz):
    """One step on 2 real images at 28 px (upsampled to 32 inside the Keras ResNets) trains GroupNorm's scale."""
    config = RunConfig(arch=arch, weights="none", size=28, norm="group", batch_size=2, seed=0)
    model = build_model(config, N_CLASSES, 28)
    assert_group_norm_model(model, arch, 28)
    if arch in KERAS_RESNET_NORM_LAYERS:
        assert len(group_norm_layers(model)) == KERAS_RESNET_NORM_LAYERS[arch]
    # plain SGD: the trainer's compile (AUC over 8 labels, its optimizer) would triple the cost of this one step
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy", jit_compile=False)
    data = load_npz(tiny_npz)
    x = preprocess(data.train.images[:2], arch).numpy()
    y = keras.utils.to_categorical(data.train.labels[:2], N_CLASSES)
    gn = group_norm_layers(model)[-1]  # the last block's
    before = gn.gamma.numpy().copy()
    loss = model.train_on_batch(x, y)
    assert np.all(np.isfinite(np.asarray(loss)))
    assert not np.array_equal(before, gn.gamma.numpy())  # GroupNorm's scale is trained
