"""The tf.data pipeline and each backbone's preprocessing, checked against Keras' own functions and exact
geometric transforms (no mocks: real TensorFlow ops, real data subsets)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.config import ARCHITECTURES, RunConfig
from core.data.dataset import load_npz
from core.models import architectures
from core.models.preprocessing import MODES, preprocess
from core.training.pipeline import (
    Augmentation,
    augment_batch,
    augmentation_matrices,
    bn_statistics_dataset,
    inference_dataset,
    steps_per_epoch,
    training_dataset,
)

N_CLASSES = 8
NO_AUG = dict(aug_shear=0.0, aug_zoom=0.0, aug_hflip=False, aug_vflip=False, aug_rot90=False)


def random_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def seed_tensor(a: int, b: int = 0) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


# -- preprocessing ------------------------------------------------------------------------------------

def test_every_architecture_has_a_preprocessing_mode():
    assert {a.preprocessing for a in architectures.ARCHITECTURES} <= set(MODES)
    assert {a.key for a in architectures.ARCHITECTURES} == set(ARCHITECTURES)


@pytest.mark.parametrize("arch, keras_fn", [
    ("resnet50", keras.applications.resnet.preprocess_input),
    ("resnet101", keras.applications.resnet.preprocess_input),
    ("densenet121", keras.applications.densenet.preprocess_input),
    ("resnet18", keras.applications.densenet.preprocess_input),  # ImageNet mean/std like torchvision
])
def test_preprocess_matches_keras_applications(arch, keras_fn):
    images = random_images(4, 12, seed=1)
    expected = keras_fn(images.astype(np.float32).copy())
    got = preprocess(tf.constant(images), arch).numpy()
    assert got.dtype == np.float32 and got.shape == images.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # and the same from float input in [0, 255]
    got_float = preprocess(tf.constant(images.astype(np.float32)), arch).numpy()
    np.testing.assert_allclose(got_float, expected, rtol=1e-5, atol=1e-4)


def test_caffe_mode_is_bgr_minus_mean_not_plain_scaling():
    """Pure red in RGB must land in the last (R) channel of the BGR output."""
    red = np.zeros((1, 2, 2, 3), np.uint8)
    red[..., 0] = 255
    out = preprocess(tf.constant(red), "resnet50").numpy()[0, 0, 0]
    np.testing.assert_allclose(out, [-103.939, -116.779, 255 - 123.68], atol=1e-3)


@pytest.mark.parametrize("arch, keras_fn", [
    ("mobilenetv3small", keras.applications.mobilenet_v3.preprocess_input),
    ("efficientnetb0", keras.applications.efficientnet.preprocess_input),
])
def test_builtin_preprocessing_is_identity(arch, keras_fn):
    images = random_images(3, 10, seed=2)
    got = preprocess(tf.constant(images), arch).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, images.astype(np.float32))
    np.testing.assert_array_equal(got, keras_fn(images.astype(np.float32).copy()))


# -- augmentation: exact transforms -------------------------------------------------------------------

def test_augmentation_all_off_is_identity():
    aug = Augmentation(shear=0.0, zoom=0.0, hflip=False, vflip=False, rot90=False)
    assert not aug.active
    images = random_images(8, 16, seed=3).astype(np.float32)
    out = augment_batch(tf.constant(images), aug, seed_tensor(7)).numpy()
    np.testing.assert_allclose(out, images, atol=1e-3)
    m = augmentation_matrices(8, 16, aug, seed_tensor(7)).numpy()
    np.testing.assert_allclose(m, np.tile([1, 0, 0, 0, 1, 0, 0, 0], (8, 1)), atol=1e-6)


def test_training_dataset_without_augmentation_passes_images_and_labels_through(tmp_path):
    """Aug off: every batch image is exactly one of the inputs (identity preprocessing), with its label."""
    images = random_images(40, 12, seed=4)
    labels = np.arange(40) % N_CLASSES
    by_bytes = {img.astype(np.float32).tobytes(): int(lab) for img, lab in zip(images, labels)}
    config = RunConfig(arch="mobilenetv3small", weights="none", size=28, batch_size=8, seed=0, **NO_AUG)
    seen = set()
    for x, y in training_dataset(images, labels, config, N_CLASSES).take(5):  # one full pass
        x, y = x.numpy(), y.numpy()
        for img, onehot in zip(x, y):
            key = img.tobytes()
            assert key in by_bytes, "an image changed although augmentation is off"
            assert onehot.argmax() == by_bytes[key]
            seen.add(key)
    assert len(seen) == 40  # 5 batches of 8 = one shuffled pass over all 40 images


def _match_transforms(inp: np.ndarray, out: np.ndarray, candidates) -> list[int]:
    """For each image, the index of the candidate transform it equals exactly (-1 if none)."""
    found = []
    for a, b in zip(inp, out):
        hits = [k for k, f in enumerate(candidates) if np.allclose(b, f(a), atol=1e-3)]
        found.append(hits[0] if len(hits) == 1 else -1)
    return found


@pytest.mark.parametrize("aug, candidates", [
    (Augmentation(0.0, 0.0, hflip=True, vflip=False, rot90=False),
     [lambda a: a, lambda a: a[:, ::-1]]),  # left-right: columns reversed
    (Augmentation(0.0, 0.0, hflip=False, vflip=True, rot90=False),
     [lambda a: a, lambda a: a[::-1, :]]),  # up-down: rows reversed
    (Augmentation(0.0, 0.0, hflip=False, vflip=False, rot90=True),
     [lambda a, k=k: np.rot90(a, k, axes=(0, 1)) for k in range(4)]),
], ids=["hflip", "vflip", "rot90"])
def test_flips_and_rotations_are_exact(aug, candidates):
    images = random_images(64, 16, seed=5).astype(np.float32)
    out = augment_batch(tf.constant(images), aug, seed_tensor(11, 3)).numpy()
    found = _match_transforms(images, out, candidates)
    assert -1 not in found, "an output is not an exact allowed transform of its input"
    assert set(found) == set(range(len(candidates))), f"not every outcome occurred: {sorted(set(found))}"


def test_shear_only_matrices_are_pure_shear_within_bound():
    bound = 0.3
    m = augmentation_matrices(256, 28, Augmentation(shear=bound, zoom=0.0, hflip=False), seed_tensor(1)).numpy()
    a0, a1, b0, b1 = m[:, 0], m[:, 1], m[:, 3], m[:, 4]
    s = np.arcsin(-a1)
    np.testing.assert_allclose(a0, 1.0, atol=1e-6)
    np.testing.assert_allclose(b0, 0.0, atol=1e-6)
    np.testing.assert_allclose(b1, np.cos(s), atol=1e-5)
    assert np.all(np.abs(s) <= bound + 1e-5)
    assert s.min() < -0.6 * bound and s.max() > 0.6 * bound  # really drawn over +-bound
    np.testing.assert_allclose(m[:, 6:], 0.0)


def test_zoom_only_matrices_scale_each_axis_within_bound():
    z = 0.2
    m = augmentation_matrices(256, 28, Augmentation(shear=0.0, zoom=z, hflip=False), seed_tensor(2)).numpy()
    zx, zy = m[:, 0], m[:, 4]
    np.testing.assert_allclose(m[:, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(m[:, 3], 0.0, atol=1e-6)
    for f in (zx, zy):
        assert np.all((f >= 1 - z - 1e-6) & (f <= 1 + z + 1e-6))
        assert f.min() < 1 - 0.6 * z and f.max() > 1 + 0.6 * z
    assert not np.allclose(zx, zy)  # the two axes are drawn independently


def test_default_augmentation_fixes_the_image_centre_and_stays_bounded():
    size, aug = 28, Augmentation()  # shear 0.2, zoom 0.2, hflip
    m = augmentation_matrices(128, size, aug, seed_tensor(3)).numpy()
    c = (size - 1) / 2.0
    centre = np.stack([m[:, 0] * c + m[:, 1] * c + m[:, 2], m[:, 3] * c + m[:, 4] * c + m[:, 5]], axis=1)
    np.testing.assert_allclose(centre, c, atol=1e-4)
    det = np.abs(m[:, 0] * m[:, 4] - m[:, 1] * m[:, 3])
    assert np.all(det <= (1 + aug.zoom) ** 2 + 1e-5)
    assert np.all(det >= (1 - aug.zoom) ** 2 * math.cos(aug.shear) - 1e-5)
    images = random_images(16, size, seed=6).astype(np.float32)
    out = augment_batch(tf.constant(images), aug, seed_tensor(3)).numpy()
    assert out.shape == images.shape
    assert out.min() >= images.min() - 1e-3 and out.max() <= images.max() + 1e-3  # bilinear + nearest edge


# -- seeding ------------------------------------------------------------------------------------------

def _batches(config: RunConfig, images, labels, n: int = 3):
    return [(x.numpy(), y.numpy()) for x, y in training_dataset(images, labels, config, N_CLASSES).take(n)]


def test_same_seed_same_batches_different_seed_different():
    images = random_images(64, 16, seed=8)
    labels = np.arange(64) % N_CLASSES
    config = RunConfig(arch="resnet18", weights="none", size=28, batch_size=16, seed=5)  # default augmentation
    first, again = _batches(config, images, labels), _batches(config, images, labels)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    other = _batches(config.replace(seed=6), images, labels)
    assert any(not np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(first, other))


def test_augmentation_randomness_depends_on_the_seed_not_only_the_shuffle():
    images = tf.constant(random_images(32, 16, seed=9).astype(np.float32))
    aug = Augmentation()
    a = augment_batch(images, aug, seed_tensor(1, 0)).numpy()
    b = augment_batch(images, aug, seed_tensor(1, 0)).numpy()
    c = augment_batch(images, aug, seed_tensor(1, 1)).numpy()  # next step
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# -- real data ----------------------------------------------------------------------------------------

def test_training_dataset_on_real_tiny_data(tiny_npz):
    data = load_npz(tiny_npz)
    config = RunConfig(data=str(tiny_npz), arch="resnet18", weights="none", size=28, batch_size=32, seed=0)
    assert steps_per_epoch(len(data.train), config.batch_size) == 8
    for x, y in training_dataset(data.train.images, data.train.labels, config, data.n_classes).take(3):
        assert x.shape == (32, 28, 28, 3) and x.dtype == tf.float32
        assert y.shape == (32, data.n_classes) and y.dtype == tf.float32
        y = y.numpy()
        assert set(np.unique(y)) <= {0.0, 1.0}
        np.testing.assert_array_equal(y.sum(axis=1), 1.0)
        # torch-mode preprocessing: roughly zero-centred, not raw 0..255 pixels
        assert -3.0 < float(tf.reduce_min(x)) and float(tf.reduce_max(x)) < 3.0


def test_training_dataset_on_real_64px_data(tiny_npz_64):
    data = load_npz(tiny_npz_64)
    config = RunConfig(data=str(tiny_npz_64), arch="resnet50", weights="none", size=64, batch_size=16)
    x, y = next(iter(training_dataset(data.train.images, data.train.labels, config, data.n_classes)))
    assert x.shape == (16, 64, 64, 3) and y.shape == (16, data.n_classes)


def test_inference_and_bn_statistics_datasets_are_unaugmented(tiny_npz):
    data = load_npz(tiny_npz)
    images = data.val.images[:70]
    batches = [x.numpy() for x in inference_dataset(images, "resnet18", 32)]
    assert [len(b) for b in batches] == [32, 32, 6]
    np.testing.assert_allclose(np.concatenate(batches), preprocess(images, "resnet18").numpy(), atol=1e-6)

    images = random_images(70, 12, seed=10)  # distinct images, so each output row has one source
    stats = np.concatenate([x.numpy() for x in bn_statistics_dataset(images, "densenet121", 32, seed=1)])
    expected = preprocess(images, "densenet121").numpy()
    assert stats.shape == expected.shape
    # a permutation of the clean images: each row equals one input row, all rows used
    order = [int(np.argmin(np.abs(expected - row).reshape(len(expected), -1).max(axis=1))) for row in stats]
    assert sorted(order) == list(range(len(images)))
    np.testing.assert_allclose(stats, expected[order], atol=1e-5)
    assert order != list(range(len(images)))  # shuffled


def test_batches_are_the_same_whether_prepared_for_a_cpu_or_a_gpu(tiny_npz, monkeypatch):
    """On a CPU the map is plain, one batch ahead, with tf.data's autotuner off (deleting an autotuned iterator
    waited up to a minute); on a GPU it is explicitly parallel and autotuned (core.training.pipeline._map_batches):
    only the speed may differ, never a pixel, a label or the order."""
    data = load_npz(tiny_npz)
    config = RunConfig(data=str(tiny_npz), arch="resnet18", weights="none", size=28, batch_size=32, seed=3,
                       aug_vflip=True, aug_rot90=True, aug_scale=0.2, aug_stain=0.2, aug_noise=0.02)

    def batches(gpus: list) -> list[tuple[np.ndarray, np.ndarray]]:
        monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
        ds = training_dataset(data.train.images, data.train.labels, config, data.n_classes)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(9)]  # past the end of the first epoch (8 steps)

    cpu, gpu = batches([]), batches(["a GPU"])
    assert len(cpu) == len(gpu) == 9
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    for ds in (training_dataset(data.train.images, data.train.labels, config, data.n_classes),
               inference_dataset(data.val.images, "resnet18", 32), bn_statistics_dataset(data.train.images,
                                                                                        "resnet18", 32, seed=1)):
        assert ds.options().autotune.enabled is False
    for (x1, y1), (x2, y2) in zip(cpu, gpu):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
