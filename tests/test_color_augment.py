"""Scale, stain, colour, blur and noise augmentation of training batches (core.training.color_augment and the
scale step of core.training.pipeline), measured on real blood-cell images: each changes the image within the
bounds its setting states, never the labels, draws the same for the same seed, and adds nothing when off."""

from __future__ import annotations

from dataclasses import fields

import cv2
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from core.config import RunConfig
from core.data.dataset import load_npz
from core.models.preprocessing import preprocess
from core.training import color_augment as ca
from core.training.pipeline import (
    Augmentation,
    augment_batch,
    augmentation_matrices,
    background_colours,
    geometric_transform,
    inference_dataset,
    training_dataset,
)

GREY = np.array(ca.GREY_WEIGHTS)
EVERYTHING = dict(aug_scale=0.3, aug_stain=0.2, aug_brightness=0.2, aug_contrast=0.25, aug_saturation=0.25,
                  aug_hue=0.05, aug_blur=1.0, aug_noise=0.02)


def seed(a: int, b: int = 0) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


@pytest.fixture(scope="module")
def cells(tiny_npz_64) -> np.ndarray:
    """40 real 64 px training images, float [0, 255]."""
    return load_npz(tiny_npz_64).train.images[:40].astype(np.float32)


def unclipped(out: np.ndarray) -> np.ndarray:
    """(..., H, W) mask of pixels no channel of which was clipped."""
    return np.all((out > 0.5) & (out < 254.5), axis=-1)


def concentrations(images: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and residual per pixel, by the module's stain matrix and stain.py's OD."""
    return -np.log((images.astype(np.float64) + 1.0) / 256.0) @ ca.STAINS_FROM_RGB.astype(np.float64)


def spans(values, low: float, high: float) -> bool:
    """The draws really cover the range: some in its lowest and some in its highest quarter."""
    values = np.asarray(values)
    quarter = (high - low) / 4
    return bool(values.min() < low + quarter and values.max() > high - quarter)


# -- stain ------------------------------------------------------------------------------------------

def test_stain_space_is_ruifrok_johnston_haematoxylin_and_eosin():
    h, e, r = ca.RGB_FROM_STAINS
    np.testing.assert_allclose(h, np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29]), atol=1e-6)
    np.testing.assert_allclose(e, np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11]), atol=1e-6)
    assert abs(r @ h) < 1e-6 and abs(r @ e) < 1e-6 and abs(np.linalg.norm(r) - 1) < 1e-6
    np.testing.assert_allclose(ca.RGB_FROM_STAINS @ ca.STAINS_FROM_RGB, np.eye(3), atol=1e-5)


def test_stain_jitter_scales_and_shifts_each_stain_within_bounds(cells):
    s = 0.3
    out = ca.stain_jitter(tf.constant(cells), s, seed(1)).numpy()
    before, after = concentrations(cells), concentrations(out)
    keep = unclipped(out)
    scales = {0: [], 1: []}
    for i in range(len(cells)):
        k = keep[i]
        for stain in (0, 1):
            a, b = np.polyfit(before[i][k][:, stain], after[i][k][:, stain], 1)
            fitted = a * before[i][k][:, stain] + b
            assert np.abs(after[i][k][:, stain] - fitted).max() < 2e-3, "not one scale and shift per image"
            assert 1 - s - 1e-3 <= a <= 1 + s + 1e-3
            assert abs(b) <= s * ca.STAIN_BIAS + 1e-3
            scales[stain].append(a)
        assert np.abs(after[i][k][:, 2] - before[i][k][:, 2]).max() < 2e-3, "the residual changed"
    assert spans(scales[0], 1 - s, 1 + s) and spans(scales[1], 1 - s, 1 + s)
    assert not np.allclose(scales[0], scales[1])  # the two stains are drawn independently


# -- ColorJitter's four -------------------------------------------------------------------------------

def test_brightness_multiplies_each_image_by_one_factor_within_bounds(cells):
    b = 0.3
    out = ca.brightness_jitter(tf.constant(cells), b, seed(2)).numpy()
    factors = []
    for x, y in zip(cells, out):
        k = (y < 254.5) & (x > 10)
        ratio = y[k] / x[k]
        assert ratio.std() < 1e-4  # one factor for the whole image, before clipping
        factors.append(ratio.mean())
        assert 1 - b - 1e-4 <= y.mean() / x.mean() <= 1 + b + 1e-4  # clipping only ever pulls towards 1
    assert all(1 - b - 1e-4 <= f <= 1 + b + 1e-4 for f in factors) and spans(factors, 1 - b, 1 + b)


def test_contrast_blends_with_the_mean_grey_within_bounds(cells):
    c = 0.4
    out = ca.contrast_jitter(tf.constant(cells), c, seed(3)).numpy()
    factors = []
    for x, y in zip(cells, out):
        mean = float((x @ GREY).mean())
        k = unclipped(y)
        f, intercept = np.polyfit(x[k].ravel(), y[k].ravel(), 1)
        assert np.abs(y[k] - (f * x[k] + intercept)).max() < 1e-2
        assert intercept == pytest.approx((1 - f) * mean, abs=0.05)  # towards the image's mean grey
        factors.append(f)
    assert all(1 - c - 1e-4 <= f <= 1 + c + 1e-4 for f in factors) and spans(factors, 1 - c, 1 + c)


def test_saturation_blends_each_pixel_with_its_grey_within_bounds(cells):
    s = 0.5
    out = ca.saturation_jitter(tf.constant(cells), s, seed(4)).numpy()
    factors = []
    for x, y in zip(cells, out):
        k = unclipped(y)
        g = (x @ GREY)[..., None]
        chroma, new_chroma = (x - g)[k], (y - g)[k]
        f = float((chroma * new_chroma).sum() / (chroma ** 2).sum())
        assert np.abs(new_chroma - f * chroma).max() < 1e-2
        factors.append(f)
    assert all(1 - s - 1e-4 <= f <= 1 + s + 1e-4 for f in factors) and spans(factors, 1 - s, 1 + s)


def test_hue_turns_each_image_by_one_shift_within_bounds(cells):
    h = 0.1
    out = ca.hue_jitter(tf.constant(cells), h, seed(5)).numpy()

    def hsv(images):
        return np.stack([cv2.cvtColor(im / 255.0, cv2.COLOR_RGB2HSV) for im in images.astype(np.float32)])

    before, after = hsv(cells), hsv(out)
    shifts = []
    for a, b in zip(before, after):
        k = (a[..., 1] > 0.15) & (a[..., 2] > 0.15)  # hue is defined where there is colour
        turn = ((b[..., 0] - a[..., 0])[k] / 360.0 + 0.5) % 1.0 - 0.5
        assert turn.max() - turn.min() < 0.01
        np.testing.assert_allclose(b[..., 1:][k], a[..., 1:][k], atol=2e-3)  # saturation and value kept
        shifts.append(float(np.median(turn)))
    assert all(abs(t) <= h + 2e-3 for t in shifts) and spans(shifts, -h, h)


# -- blur and noise -------------------------------------------------------------------------------

def laplacian_energy(images: np.ndarray) -> np.ndarray:
    lap = (4 * images[:, 1:-1, 1:-1] - images[:, :-2, 1:-1] - images[:, 2:, 1:-1]
           - images[:, 1:-1, :-2] - images[:, 1:-1, 2:])
    return (lap ** 2).sum(axis=(1, 2, 3))


def test_blur_removes_fine_detail_but_never_more_than_its_largest_sigma(cells):
    b = 1.5
    out = ca.gaussian_blur(tf.constant(cells), b, seed(6)).numpy()
    strongest = ndimage.gaussian_filter(cells, sigma=(0, b, b, 0), mode="mirror", truncate=ca.BLUR_TRUNCATE)
    energy, energy_out, energy_max = (laplacian_energy(v) for v in (cells, out, strongest))
    assert np.all(energy_out <= energy * 1.001)
    assert np.all(energy_out >= energy_max * 0.98)
    assert np.mean(energy_out < 0.5 * energy) > 0.3  # most images really blurred, some barely
    assert np.any(energy_out > 0.9 * energy)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), cells.mean(axis=(1, 2, 3)), atol=1.0)


def test_noise_std_stays_within_its_bound(cells):
    n = 0.05
    out = ca.gaussian_noise(tf.constant(cells), n, seed(7)).numpy()
    stds = []
    for x, y in zip(cells, out):
        k = np.all((x > 60) & (x < 195), axis=-1)  # far from 0 and 255, so clipping does not bias the spread
        diff = (y - x)[k]
        assert abs(diff.mean()) < 1.0
        stds.append(diff.std())
    assert max(stds) <= n * 255 * 1.05 and spans(stds, 0, n * 255)


# -- scale -------------------------------------------------------------------------------------------

def test_scale_changes_the_cells_apparent_size_within_bounds(cells):
    """The nucleus (haematoxylin above 1 OD) of cells well inside the frame grows or shrinks by the drawn
    factor, which lies in [1/(1+s), 1+s]; a shrunken image's border is its own background colour."""
    s = 0.5
    nucleus = concentrations(cells)[..., 0] > 1.0
    central = []
    for i, m in enumerate(nucleus):
        ys, xs = np.nonzero(m)
        if len(ys) >= 30 and min(ys.min(), xs.min()) >= 12 and max(ys.max(), xs.max()) <= 51:
            central.append(i)
    assert len(central) >= 6, "too few cells well inside the frame to measure"
    x = tf.constant(cells[central])
    aug = Augmentation(shear=0.0, zoom=0.0, hflip=False, scale=s)
    out = augment_batch(x, aug, seed(8)).numpy()
    m = augmentation_matrices(len(central), 64, aug, seed(8)).numpy()
    np.testing.assert_allclose(m[:, 0], m[:, 4], atol=1e-6)  # isotropic
    np.testing.assert_allclose(m[:, [1, 3, 6, 7]], 0.0, atol=1e-6)
    drawn = 1.0 / m[:, 0]  # output -> input matrix: the cell looks 1/m times its size
    measured = np.sqrt((concentrations(out)[..., 0] > 1.0).sum(axis=(1, 2)) / nucleus[central].sum(axis=(1, 2)))
    assert np.all((drawn >= 1 / (1 + s) - 1e-5) & (drawn <= 1 + s + 1e-5))
    assert np.log(drawn).min() < -0.15 and np.log(drawn).max() > 0.15  # both smaller and larger cells
    np.testing.assert_allclose(measured, drawn, rtol=0.1)
    background = background_colours(x).numpy()
    for i in np.nonzero(drawn < 0.85)[0]:
        np.testing.assert_allclose(out[i, 0, 0], background[i], atol=1e-3)
        np.testing.assert_allclose(out[i, -1, -1], background[i], atol=1e-3)


def test_background_colour_is_the_brightest_tenth_of_pixels(cells):
    got = background_colours(tf.constant(cells[:4])).numpy()
    for img, colour in zip(cells[:4], got):
        px = img[::2, ::2].reshape(-1, 3)  # read on every other row and column
        brightest = px[np.argsort(-px.mean(axis=1), kind="stable")[: len(px) // 10]]
        np.testing.assert_allclose(colour, brightest.mean(axis=0), atol=0.05)
        assert colour.mean() > np.percentile(px.mean(axis=1), 85)


# -- the pipeline: settings, labels, seeds, nothing when off ---------------------------------------

def test_augmentation_carries_every_augmentation_setting():
    config = RunConfig(aug_shear=0.1, aug_zoom=0.15, aug_hflip=False, aug_vflip=True, aug_rot90=True, **EVERYTHING)
    aug = Augmentation.from_config(config)
    names = {f.name for f in fields(RunConfig) if f.name.startswith("aug_")}
    assert {f"aug_{f.name}" for f in fields(aug)} == names
    assert all(getattr(aug, n[4:]) == getattr(config, n) for n in names)
    assert aug.colour == {n: EVERYTHING[f"aug_{n}"] for n in ca.STEP_NAMES}
    assert Augmentation(shear=0.0, zoom=0.0, hflip=False, hue=0.1).active
    assert not Augmentation(shear=0.0, zoom=0.0, hflip=False).active
    with pytest.raises(ValueError, match="unknown colour augmentation"):
        ca.augment(tf.constant(np.zeros((1, 4, 4, 3), np.float32)), seed(0), {"sharpness": 0.2})


def test_augmentation_never_changes_labels_and_repeats_with_the_seed(tiny_npz):
    data = load_npz(tiny_npz)
    plain = RunConfig(data=str(tiny_npz), arch="resnet18", weights="none", size=28, batch_size=32, seed=3)
    full = plain.replace(**EVERYTHING)

    def batches(config):
        ds = training_dataset(data.train.images, data.train.labels, config, data.n_classes)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(3)]

    first, again, without = batches(full), batches(full), batches(plain)
    for (x, y), (x2, y2), (x0, y0) in zip(first, again, without):
        np.testing.assert_array_equal(y, y0)  # the same images in the same order with the same labels
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
        assert not np.allclose(x, x0, atol=0.05)
        assert np.isfinite(x).all()

    images = tf.constant(data.train.images[:16].astype(np.float32))
    aug = Augmentation.from_config(full)
    a, b, c = (augment_batch(images, aug, seed(3, step)).numpy() for step in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c, atol=0.5)  # the next step draws anew
    assert a.min() >= 0.0 and a.max() <= 255.0


# Today's (before scale existed) matrices for Augmentation() at seed (3, 5), batch 4, size 28: with every new
# setting at 0 a run must get exactly these.
TODAY = np.array([
    [-0.9818047, 0.1599617, 24.5948811, 0.0, 0.8722164, 1.7250786, 0.0, 0.0],
    [0.8044537, 0.0418243, 2.0752468, 0.0, 0.9838713, 0.2177382, 0.0, 0.0],
    [0.9589908, -0.1470601, 2.5389366, 0.0, 0.909471, 1.2221413, 0.0, 0.0],
    [1.1698358, -0.0393188, -1.7619801, 0.0, 0.9326293, 0.9095039, 0.0, 0.0],
])


def test_every_new_setting_at_zero_gives_todays_batches():
    aug = Augmentation.from_config(RunConfig())
    assert aug == Augmentation() and aug.colour == {} and not aug.scale
    matrices = augmentation_matrices(4, 28, aug, seed(3, 5)).numpy()
    np.testing.assert_allclose(matrices, TODAY, atol=1e-6)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3)).astype(np.float32))
    expected = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.constant(matrices), output_shape=[28, 28], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST").numpy()
    np.testing.assert_array_equal(augment_batch(images, aug, seed(3, 5)).numpy(), expected)


def graph_ops(fn, images: tf.TensorSpec) -> list[str]:
    return [op.type for op in tf.function(fn).get_concrete_function(images).graph.get_operations()]


def augmenting(aug: Augmentation):
    return lambda x: augment_batch(x, aug, seed(1))


def test_a_setting_at_zero_adds_no_op_to_the_graph():
    images = tf.TensorSpec([None, 28, 28, 3], tf.float32)
    base = Augmentation()
    ops = graph_ops(augmenting(base), images)
    assert ops == graph_ops(lambda x: geometric_transform(x, base, seed(1)), images)
    new_op_types = {"Log", "Exp", "RGBToHSV", "HSVToRGB", "MirrorPad", "TopKV2", "StatelessRandomNormalV2"}
    assert not new_op_types & set(ops)
    for name in (*ca.STEP_NAMES, "scale"):
        with_step = graph_ops(augmenting(Augmentation(**{name: 0.2})), images)
        assert len(with_step) > len(ops), f"{name} at 0.2 added nothing"


def test_validation_and_inference_batches_are_never_augmented(tiny_npz):
    data = load_npz(tiny_npz)
    config = RunConfig(data=str(tiny_npz), arch="resnet18", weights="none", size=28, batch_size=32, **EVERYTHING)
    next(iter(training_dataset(data.train.images, data.train.labels, config, data.n_classes)))
    got = np.concatenate([x.numpy() for x in inference_dataset(data.val.images, config.arch, 64)])
    np.testing.assert_array_equal(got, preprocess(data.val.images, config.arch).numpy())
