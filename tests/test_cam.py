"""Grad-CAM on a real trained run and on a hand-built model whose evidence sits in a known place; the overlay
helpers. Real Keras models, no mocks."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from core.data.dataset import load_npz
from core.explain.cam import method
from core.explain.cam.gradcam import GradCAM
from core.explain.overlay import colorize, overlay, panels, triptych, with_caption
from core.models.build import last_conv_block
from core.models.preprocessing import preprocess


@pytest.fixture(scope="module")
def trained(trained_run, tiny_npz):
    """The shared tiny ResNet-18 run's model and six preprocessed real test images."""
    model = keras.models.load_model(trained_run / "model.keras", compile=False)
    images = load_npz(tiny_npz).test.images[:6]
    return model, preprocess(images, "resnet18").numpy()


def test_registry_gives_gradcam():
    assert method("gradcam") is GradCAM
    with pytest.raises(ValueError):
        method("no-such-method")


def test_default_layer_heatmaps_shape_and_range(trained):
    model, x = trained
    cam = GradCAM(model)
    assert cam.layer_name == last_conv_block(model) == "conv5_block2_out"
    heat = cam(x)
    assert heat.shape == (6, 28, 28) and heat.dtype == np.float32
    assert np.all(np.isfinite(heat)) and heat.min() >= 0.0 and heat.max() <= 1.0
    for h in heat:  # each map is normalised on its own: either all zero or spanning 0..1
        assert h.max() == 0.0 or (np.isclose(h.max(), 1.0) and np.isclose(h.min(), 0.0))
    assert heat.max() == pytest.approx(1.0)


def test_an_earlier_layer_can_be_chosen(trained):
    model, x = trained
    assert model.get_layer("conv3_block2_out").output.shape[1:3] == (14, 14)
    early = GradCAM(model, "conv3_block2_out")
    assert early.layer_name == "conv3_block2_out"
    heat = early(x)
    assert heat.shape == (6, 28, 28) and heat.min() >= 0.0 and heat.max() <= 1.0
    assert not np.allclose(heat, GradCAM(model)(x))


def test_unknown_layer_is_a_value_error(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="no layer named"):
        GradCAM(model, "conv9_block9_out")


def test_class_index_none_explains_the_prediction(trained):
    model, x = trained
    cam = GradCAM(model)
    predicted = np.asarray(model(x, training=False)).argmax(axis=1)
    np.testing.assert_allclose(cam(x), cam(x, class_index=predicted.tolist()), atol=1e-5)
    other = (predicted + 4) % 8
    assert not np.allclose(cam(x), cam(x, class_index=other.tolist()), atol=1e-3)
    single = cam(x[:1], class_index=int(other[0]))  # one int for the batch
    np.testing.assert_allclose(single[0], cam(x, class_index=other.tolist())[0], atol=1e-5)


def test_with_block_releases_the_graph(trained):
    model, x = trained
    with GradCAM(model) as cam:
        assert not cam.released
        assert cam(x[:2]).shape == (2, 28, 28)
    assert cam.released
    with pytest.raises(RuntimeError, match="released"):
        cam(x[:2])


# -- a model whose evidence for class 1 lies only in the top-left quadrant ---------------------------------

SIZE = 32


def quadrant_model() -> keras.Model:
    """features: channel 0 detects red pixels, channel 1 green; class 1 is scored on red only, class 0 on
    green only. With red painted in the top-left quadrant alone, class 1's score depends only on it."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(2, 1, strides=2, activation="relu", name="features")(inputs)  # 16x16 map
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(2, name="logits")(x)
    outputs = keras.layers.Activation("softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    kernel = np.array([[1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], np.float32)[None, None]  # (1,1,3,2)
    model.get_layer("features").set_weights([kernel, np.zeros(2, np.float32)])
    dense = np.array([[0.0, 6.0], [6.0, 0.0]], np.float32)  # red -> class 1, green -> class 0
    model.get_layer("logits").set_weights([dense, np.zeros(2, np.float32)])
    return model


def quadrant_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((SIZE, SIZE, 3), np.float32)
    img[..., 1] = rng.uniform(0.5, 1.0, (SIZE, SIZE))  # green everywhere ...
    half = SIZE // 2
    img[:half, :half, 1] = 0.0
    img[:half, :half, 0] = rng.uniform(0.5, 1.0, (half, half))  # ... except a red top-left quadrant
    return img


def test_heat_for_a_class_lies_where_its_evidence_is():
    model = quadrant_model()
    x = np.stack([quadrant_image(0), quadrant_image(1)])
    inside = np.zeros((SIZE, SIZE), bool)
    inside[:SIZE // 2, :SIZE // 2] = True
    with GradCAM(model, "features") as cam:
        heat1 = cam(x, class_index=1)
        heat0 = cam(x, class_index=0)
        predicted = cam(x)
    for h in heat1:
        assert h[inside].mean() > 3 * h[~inside].mean(), (h[inside].mean(), h[~inside].mean())
    for h in heat0:  # and the other class's evidence is everywhere but that quadrant
        assert h[~inside].mean() > 3 * h[inside].mean(), (h[inside].mean(), h[~inside].mean())
    # three green quadrants outweigh one red one: class 0 is predicted, and None explains it
    assert np.asarray(model(x)).argmax(axis=1).tolist() == [0, 0]
    np.testing.assert_allclose(predicted, heat0, atol=1e-6)


# -- overlay helpers --------------------------------------------------------------------------------------

def test_colorize_overlay_and_triptych():
    rgb = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)

    coloured = colorize(heat)
    assert coloured.shape == (28, 28, 3) and coloured.dtype == np.uint8
    # RGB order: jet is dark blue at 0 and dark red at 1
    assert colorize(np.zeros((2, 2)))[0, 0].tolist() == [0, 0, 128]
    assert colorize(np.ones((2, 2)))[0, 0].tolist() == [128, 0, 0]

    blended = overlay(rgb, heat, alpha=0.4)
    assert blended.shape == (28, 28, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(overlay(rgb, heat, alpha=0.0), rgb)
    np.testing.assert_array_equal(overlay(rgb, heat, alpha=1.0), coloured)
    assert overlay(rgb, np.zeros((7, 7), np.float32)).shape == (28, 28, 3)  # a coarse map is resized

    strip = triptych(rgb, heat, display=224)
    assert strip.dtype == np.uint8
    assert strip.shape == (224, 3 * 224 + 2 * 4, 3)
    big = strip[:, :224]
    np.testing.assert_array_equal(big[::8, ::8], rgb)  # the original, scaled up by pixel repetition
    assert np.all(strip[:, 224:228] == 255)  # white gap
    image, heatmap, blend = panels(rgb, heat, display=224)  # the same three pieces, apart (Classify page)
    np.testing.assert_array_equal(np.concatenate([image, strip[:, 224:228], heatmap, strip[:, 224:228], blend],
                                                 axis=1), strip)
    assert panels(rgb, heat)[0].shape == (252, 252, 3)  # 256 px by default: 28 px x 9


def test_a_caption_strip_names_what_an_overlay_shows():
    rgb = np.full((252, 252, 3), 90, np.uint8)
    lines = ["immature granulocytes 97.3% · Grad-CAM++ · layer conv5_block2_out", "cellule_é.jpg"]
    out = with_caption(rgb, lines)
    assert out.shape[1] == 320 and out.shape[0] > 252 + 2 * 18  # widened to 320 px, the long line wrapped
    np.testing.assert_array_equal(out[:252, 34:286], rgb)  # the image itself, centred and untouched
    strip = out[252:]
    assert (strip < 128).any() and (strip == 255).mean() > 0.7  # dark text on white
    assert with_caption(rgb, []).shape == (264, 320, 3)  # no lines: only the margins
