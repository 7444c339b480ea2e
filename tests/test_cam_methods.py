"""Every CAM method: shape and range, heat on the region that decides the class, and release on `with` exit.

The synthetic model has hand-set weights: a 1x1 convolution whose channels detect pure red, green and blue
pixels, average-pooled to a coarser 8x8 map (the explained layer, `features`), then global pooling and a
dense `logits` layer that maps channel k to class k. A red square alone therefore decides class 0, and
the evidence for it is exactly where the square is.
"""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import pytest

from core.explain.cam import METHOD_NAMES, METHOD_TITLES, method
from core.explain.cam.base import normalise

SIZE = 32


def synthetic_model() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(3, 1, activation="relu", name="detect")(inputs)
    x = keras.layers.AveragePooling2D(4, name="features")(x)  # 8x8 map, like a late block
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(3, name="logits")(x)
    outputs = keras.layers.Activation("softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    # channel k responds to colour k and is suppressed by the other two (a pure-colour detector)
    kernel = np.full((1, 1, 3, 3), -1.0, np.float32)
    np.fill_diagonal(kernel[0, 0], 2.0)
    model.get_layer("detect").set_weights([kernel, np.zeros(3, np.float32)])
    model.get_layer("logits").set_weights([np.eye(3, dtype=np.float32) * 40.0, np.zeros(3, np.float32)])
    return model


def square_image(squares: dict[int, tuple[int, int]], side: int = 8) -> np.ndarray:
    """Black image with a pure-colour square per {channel: (top, left)}."""
    img = np.zeros((SIZE, SIZE, 3), np.float32)
    for channel, (top, left) in squares.items():
        img[top:top + side, left:left + side, channel] = 1.0
    return img


def inside_mask(top: int, left: int, side: int = 8) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[top:top + side, left:left + side] = True
    return m


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return synthetic_model()


def test_registry_lists_the_four_methods():
    assert METHOD_NAMES == ("gradcam", "gradcampp", "hirescam", "scorecam")
    assert set(METHOD_TITLES) == set(METHOD_NAMES)
    with pytest.raises(ValueError, match="unknown CAM method"):
        method("lime")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_shape_range_and_heat_on_the_deciding_region(model, name):
    top, left = 4, 20
    x = np.stack([square_image({0: (top, left)}), square_image({0: (20, 2)})])
    with method(name)(model, "features") as cam:
        result = cam.explain(x)
    heat = result.heatmaps
    assert heat.shape == (2, SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and np.isclose(heat.max(), 1.0)
    assert list(result.targets) == [0, 0]
    assert result.probabilities.shape == (2, 3) and np.allclose(result.probabilities.sum(axis=1), 1.0)
    for h, (row, col) in zip(heat, [(top, left), (20, 2)]):
        inside = inside_mask(row, col)
        peak = np.unravel_index(np.argmax(h), h.shape)
        assert inside[peak], f"{name}: peak at {peak}, square at {(row, col)}"
        assert h[inside].mean() > 0.6 and h[~inside].mean() < 0.2, name


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_class_to_explain_moves_the_heat(model, name):
    """Red top-left and green bottom-right: explaining green puts the heat bottom-right."""
    x = square_image({0: (0, 0), 1: (24, 24)})[None]
    with method(name)(model, "features") as cam:
        red, green = cam(x, 0)[0], cam(x, 1)[0]
    assert red[inside_mask(0, 0)].mean() > red[inside_mask(24, 24)].mean() + 0.5
    assert green[inside_mask(24, 24)].mean() > green[inside_mask(0, 0)].mean() + 0.5


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_evidence_gives_an_all_zero_map(model, name):
    """A black image activates nothing: the map is flat and normalises to zeros, never NaN."""
    with method(name)(model, "features") as cam:
        heat = cam(np.zeros((1, SIZE, SIZE, 3), np.float32), 0)
    assert np.all(np.isfinite(heat)) and heat.max() == 0.0


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_with_block_releases_the_graph(model, name):
    x = square_image({0: (4, 4)})[None]
    with method(name)(model, "features") as cam:
        cam(x)
        graph = weakref.ref(cam._graph)
        assert not cam.released
    assert cam.released
    gc.collect()
    assert graph() is None, "the CAM graph is still referenced after leaving the with block"
    with pytest.raises(RuntimeError, match="released"):
        cam(x)


def test_unknown_or_flat_layer_is_refused(model):
    with pytest.raises(ValueError, match="no layer named"):
        method("gradcam")(model, "conv9")
    with pytest.raises(ValueError, match="spatial"):
        method("gradcam")(model, "avg_pool")


def test_each_method_on_a_real_trained_run(trained_run):
    """The real ResNet-18 fixture at 28 px, through the classifier's fused predict+explain call."""
    from core.inference.classifier import Classifier
    from core.models.build import cam_layers

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    with Classifier(trained_run) as clf:
        expected = clf.probabilities(images)
        layers = cam_layers(clf.model)
        assert [c.name for c in layers if c.default] == ["conv5_block2_out"]
        assert [c.height for c in layers] == [28, 14, 7, 4]
        results = {}
        for name in METHOD_NAMES:
            result = results[name] = clf.explain(images, name)
            assert result.heatmaps.shape == (2, 28, 28)
            assert 0.0 <= result.heatmaps.min() and result.heatmaps.max() <= 1.0
            np.testing.assert_allclose(result.probabilities, expected, atol=1e-4)
            assert list(result.targets) == list(expected.argmax(axis=1))
            assert result.extras["avg_pool"].shape == (2, 512)
        fine = clf.explain(images, "gradcam", "conv3_block2_out", class_index=3)
        assert list(fine.targets) == [3, 3]
        # the last block feeds global average pooling and the head: its gradient is the same at every
        # position, so HiResCAM is Grad-CAM there (and the explanation says so); at an earlier block it is not
        grad, hires = results["gradcam"], results["hirescam"]
        assert grad.flat_gradients.tolist() == hires.flat_gradients.tolist() == [True, True]
        np.testing.assert_allclose(hires.heatmaps, grad.heatmaps, atol=1e-5)
        hires = clf.explain(images, "hirescam", "conv3_block2_out", class_index=3)
        assert fine.flat_gradients.tolist() == hires.flat_gradients.tolist() == [False, False]
        assert np.abs(hires.heatmaps - fine.heatmaps).max() > 0.05
        assert results["scorecam"].flat_gradients is None  # no gradient to speak of
        cams = list(clf._cams.values())
    assert all(cam.released for cam in cams)


def test_normalise_helper_keeps_numpy_api():
    maps = np.stack([np.arange(16, dtype=np.float32).reshape(4, 4), np.full((4, 4), 3.0, np.float32)])
    out = normalise(maps)
    assert out[0].min() == 0.0 and out[0].max() == 1.0 and np.all(out[1] == 0.0)
