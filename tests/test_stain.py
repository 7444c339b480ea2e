"""Colour normalisation: Reinhard moves each image's L*a*b* mean and spread to the target; Macenko re-renders
stains; a run's training-set target is computed once from its real training images and cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import EXTERNAL_DEV, mirror_run
from external_fixtures import cell_image

from core.data.images import read_file, to_model_input
from core.validation import stain


def smear_batch(seed: int, n: int = 6) -> np.ndarray:
    return np.stack([cell_image(seed * 100 + i, 48) for i in range(n)])


def test_reinhard_moves_lab_mean_and_std_to_the_target():
    source = smear_batch(1)
    # a different "lab": bluer and darker
    other = np.clip(source.astype(int) * [0.85, 0.9, 1.0] + [0, 0, 12], 0, 255).astype(np.uint8)
    target = stain.fit_reinhard(smear_batch(2))
    before_mean, _ = stain.lab_moments(other)
    out = stain.reinhard(other, target)
    assert out.shape == other.shape and out.dtype == np.uint8
    mean, std = stain.lab_moments(out)
    for m, s in zip(mean, std):
        np.testing.assert_allclose(m, target.mean, atol=1.0)  # L* 0-100, a*/b* about +-127: within 1 unit
        np.testing.assert_allclose(s, target.std, rtol=0.05, atol=0.5)
    assert np.abs(before_mean - np.asarray(target.mean)).max() > 3  # it really moved


def test_fit_reinhard_is_the_mean_of_per_image_moments():
    images = smear_batch(3)
    mean, std = stain.lab_moments(images)
    t = stain.fit_reinhard(images)
    np.testing.assert_allclose(t.mean, mean.mean(0), rtol=1e-5)
    np.testing.assert_allclose(t.std, std.mean(0), rtol=1e-5)
    assert stain.LabStats.from_dict(t.to_dict()) == t


def test_lab_conversion_round_trips():
    images = smear_batch(4)
    back = stain.from_lab(stain.to_lab(images))
    assert np.abs(back.astype(int) - images.astype(int)).max() <= 1


def real_external(n: int = 12) -> np.ndarray:
    files = sorted(EXTERNAL_DEV.glob("*/*.png"))[:n]
    return np.stack([to_model_input(read_file(f), 64) for f in files])


def test_macenko_with_its_own_stains_is_nearly_the_identity():
    images = real_external()
    own = stain.fit_macenko(images)
    out = stain.macenko(images, own, own)
    assert np.abs(out.astype(int) - images.astype(int)).mean() < 1.0


def test_macenko_moves_colours_towards_the_target_and_keeps_the_background(tiny_npz_64):
    images = real_external()
    train = stain.sample_npz_images(tiny_npz_64, n=64)
    target = stain.fit_macenko(train)
    out = stain.macenko(images, target)
    assert out.shape == images.shape and out.dtype == np.uint8
    # the background (brightest pixels) takes the target's background colour
    np.testing.assert_allclose(stain.background_colour(out), target.background, atol=12)
    # the stain vectors estimated again from the output are the target's
    again = stain.fit_macenko(out)
    cos = (np.asarray(again.matrix) * np.asarray(target.matrix)).sum(axis=0)
    assert cos.min() > 0.97


def test_macenko_refuses_images_without_stain():
    white = np.full((2, 32, 32, 3), 250, np.uint8)
    with pytest.raises(stain.StainError):
        stain.fit_macenko(white)
    target = stain.StainTarget(stain.fit_reinhard(smear_batch(5)), None, 6, "x")
    with pytest.raises(stain.StainError):
        stain.normalize(white, "macenko", target)


def test_normalize_dispatch():
    images = smear_batch(6)
    same, note = stain.normalize(images, "none", None)
    assert same is images or np.array_equal(same, images)
    assert note == {"method": "none"}
    with pytest.raises(stain.StainError):
        stain.normalize(images, "histogram", None)
    with pytest.raises(stain.StainError):
        stain.normalize(images, "reinhard", None)


def test_sample_npz_images_streams_evenly(tiny_npz):
    with np.load(tiny_npz) as npz:
        train = npz["train_images"]
    sample = stain.sample_npz_images(tiny_npz, n=10)
    step = len(train) // 10
    assert np.array_equal(sample, train[::step][:10])
    with pytest.raises(stain.StainError):
        stain.sample_npz_images(tiny_npz, key="nope")


def test_run_target_is_computed_once_and_cached(tmp_path, trained_run):
    run = mirror_run(Path(trained_run), tmp_path)
    target = stain.run_target(run)
    cache = run / stain.STATS_FILE
    assert cache.is_file() and target.n_images > 0
    stamp = cache.stat().st_mtime_ns
    assert stain.run_target(run) == target
    assert cache.stat().st_mtime_ns == stamp  # read back, not recomputed
    cache.write_text("{ damaged")
    assert stain.run_target(run) == target  # a damaged cache is recomputed
