"""The masking faithfulness score: exact mask sizes, seeded random masks, mean-colour fill, and that a map
pointing at the deciding region scores far above random while a wrong map does not."""

from __future__ import annotations

import numpy as np
import pytest

from core.explain.faithfulness import apply_mask, faithfulness, random_masks, top_mask

SIZE = 20


def red_region_model(batch: np.ndarray) -> np.ndarray:
    """Class 0's probability is the share of pure-red pixels in the top-left 6x6 square."""
    region = batch[:, :6, :6].astype(int)
    red = ((region[..., 0] > 200) & (region[..., 1] < 50) & (region[..., 2] < 50)).mean(axis=(1, 2))
    p0 = 0.1 + 0.85 * red
    return np.stack([p0, 1.0 - p0], axis=1)


def image_with_red_square() -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), 200, np.uint8)
    img[:6, :6] = (255, 0, 0)
    return img


def test_top_mask_takes_exactly_the_fraction_with_the_most_heat():
    heat = np.arange(100, dtype=np.float32).reshape(10, 10)
    mask = top_mask(heat, 0.2)
    assert mask.sum() == 20 and mask[-2:].all() and not mask[:-2].any()
    flat = np.zeros((10, 10), np.float32)  # ties: still exactly 20 pixels
    assert top_mask(flat, 0.2).sum() == 20


def test_random_masks_are_seeded_and_sized():
    a, b = random_masks((10, 10), 0.2, 4, seed=3), random_masks((10, 10), 0.2, 4, seed=3)
    assert a.shape == (4, 10, 10) and np.array_equal(a, b) and (a.sum(axis=(1, 2)) == 20).all()
    assert not np.array_equal(a, random_masks((10, 10), 0.2, 4, seed=4))


def test_random_masks_are_blobs_not_scattered_pixels():
    from scipy import ndimage

    for mask in random_masks((64, 64), 0.2, 5, seed=0):
        _, regions = ndimage.label(mask)
        assert regions <= 12  # a few blobs, like a CAM's hot spots (scattered pixels would give hundreds)


def test_masked_pixels_take_the_image_mean_colour():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2] = (200, 100, 0)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[3, 3] = True
    out = apply_mask(img, mask)
    assert tuple(out[0, 0]) == (100, 50, 0) and tuple(out[3, 3]) == (100, 50, 0)
    assert np.array_equal(out[~mask], img[~mask]) and np.array_equal(img[0, 0], (200, 100, 0))


def test_a_map_on_the_deciding_region_beats_random_and_a_wrong_map_does_not():
    img = image_with_red_square()
    right = np.zeros((SIZE, SIZE), np.float32)
    right[:6, :6] = 1.0
    rows, cols = np.mgrid[:SIZE, :SIZE]
    wrong = (rows + cols).astype(np.float32)  # hottest bottom-right, far from the square
    good = faithfulness(red_region_model, img, right, 0)
    bad = faithfulness(red_region_model, img, wrong, 0)
    assert good.probability == pytest.approx(0.95)
    assert good.top_drop == pytest.approx(0.85)  # the whole square is masked (36 px < 80 px)
    assert 0.0 < good.random_drop < 0.4
    assert good.difference == pytest.approx(good.top_drop - good.random_drop) and good.difference > 0.4
    assert bad.top_drop < 0.2 and bad.difference < 0.05
    assert faithfulness(red_region_model, img, right, 0) == good  # seeded: reproducible


def test_one_batched_call_to_the_model():
    calls = []

    def predict(batch):
        calls.append(len(batch))
        return red_region_model(batch)

    faithfulness(predict, image_with_red_square(), np.zeros((SIZE, SIZE), np.float32), 0, n_random=3)
    assert calls == [1 + 1 + 3]


def test_bad_arguments():
    img = image_with_red_square()
    with pytest.raises(ValueError, match="does not match"):
        faithfulness(red_region_model, img, np.zeros((5, 5)), 0)
    with pytest.raises(ValueError, match="fraction"):
        faithfulness(red_region_model, img, np.zeros((SIZE, SIZE)), 0, fraction=1.5)


def test_with_a_real_cam_on_the_synthetic_model():
    """Grad-CAM of the hand-weighted colour model is faithful by construction."""
    from test_cam_methods import SIZE as S
    from test_cam_methods import square_image, synthetic_model

    from core.explain.cam import method

    model = synthetic_model()
    img = (square_image({0: (4, 20)}) * 255).astype(np.uint8)
    with method("gradcam")(model, "features") as cam:
        heat = cam(img[None].astype(np.float32) / 255.0, 0)[0]
    score = faithfulness(lambda b: model(b.astype(np.float32) / 255.0).numpy(), img, heat, 0)
    assert heat.shape == (S, S)
    assert score.top_drop > 0.3 and score.difference > 0.3  # the mean-colour fill is a faint red here
