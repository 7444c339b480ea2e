"""ROAD (core.explain.road) and each run's most faithful heatmap (core.explain.best_map).

- noisy linear imputation fills removed pixels from their neighbours (a constant image stays constant, a ramp
  stays a ramp) and leaves kept pixels alone;
- on a hand-set Keras model whose class-0 logit is the mean brightness of a fixed patch, ROAD ranks the map
  covering the patch above random blobs, the Sobel edges and the inverse map;
- the per-run choice is measured once on the real tiny run's validation sample (small settings: this is the
  mechanism, benchmarks/road.py measures the real step), kept in the run folder, read back without a model,
  measured again when damaged; the CLI prints its table;
- Classify preselects the run's chosen (method, layer) and shows the table it was chosen from (AppTest).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from classify_fixtures import settled
from conftest import mirror_run
from page_helpers import open_page, page, texts

from core.explain import best_map
from core.explain.road import FRACTIONS, impute, random_maps, removal_masks, road, sobel_maps
from core.inference import precompute
from core.store.runs import Run

S = 24
PATCH = (slice(4, 12), slice(12, 20))  # the pixels class 0's logit reads


# -- imputation -----------------------------------------------------------------------------------------------
def removed(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, S, S)) < fraction


def test_a_constant_image_stays_constant():
    images = np.full((3, S, S, 3), (120, 40, 200), np.uint8)
    mask = removed(3, 0.7)
    assert np.allclose(impute(images, mask, noise=0.0), images, atol=1e-6)


def test_a_linear_ramp_stays_a_ramp_and_kept_pixels_are_untouched():
    rows, cols = np.mgrid[:S, :S]
    ramp = np.repeat((3 * rows + 5 * cols + 20)[None, ..., None], 3, axis=-1).astype(np.uint8)
    mask = removed(1, 0.5, seed=1)
    out = impute(ramp, mask, noise=0.0)
    error = np.abs(out - ramp)[0, ..., 0]
    assert np.array_equal(out[~mask], ramp[~mask])
    assert error[2:-2, 2:-2].max() < 1.0  # inside, the neighbours' weighted mean of a plane is the plane
    assert error.max() < 0.05 * (ramp.max() - ramp.min())  # at the border, one-sided means bend it a little
    holes = np.zeros((1, S, S), bool)
    holes[0, 6:18, 6:18] = True  # a large hole: filled smoothly from its rim, not with one colour
    filled = impute(ramp, holes, noise=0.0)[0, 6:18, 6:18, 0]
    assert np.abs(filled - ramp[0, 6:18, 6:18, 0]).max() < 1.0


def test_noise_is_small_and_seeded():
    images = np.full((2, S, S, 3), 100, np.uint8)
    mask = removed(2, 0.5)
    a, b = impute(images, mask, seed=3), impute(images, mask, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, impute(images, mask, seed=4))
    assert 1.0 < np.std(a[mask] - 100) < 4.0  # 1% of 255
    with pytest.raises(ValueError, match="every pixel"):
        impute(images, np.ones((2, S, S), bool))


def test_removal_masks_take_exact_fractions_and_a_flat_map_removes_the_same_pixels_both_ways():
    heat = np.random.default_rng(0).random((2, S, S))
    morf, lerf = removal_masks(heat, 0.3, True), removal_masks(heat, 0.3, False)
    assert (morf.sum(axis=(1, 2)) == round(0.3 * S * S)).all() and not (morf & lerf).any()
    assert heat[morf].min() > heat[lerf].max()
    flat = np.zeros((1, S, S))
    assert np.array_equal(removal_masks(flat, 0.4, True), removal_masks(flat, 0.4, False))


# -- ROAD on a hand-set model -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def patch_model():
    """Class 0's logit is 10 x (the patch's mean brightness - 0.5), class 1's is 0: fixed weights, no training."""
    import keras

    weights = np.zeros((S, S, 3, 2), np.float32)
    weights[PATCH[0], PATCH[1], :, 0] = 10.0 / (8 * 8 * 3 * 255)
    model = keras.Sequential([keras.Input((S, S, 3)), keras.layers.Flatten(), keras.layers.Dense(2),
                              keras.layers.Softmax()])
    model.layers[1].set_weights([weights.reshape(-1, 2), np.array([-5.0, 0.0], np.float32)])
    return lambda batch: model(np.asarray(batch, np.float32), training=False).numpy()


def textured_images(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(40, 90, (n, S, S, 3)).astype(np.uint8)  # a dark, textured background
    images[:, PATCH[0], PATCH[1]] = rng.integers(230, 256, (n, 8, 8, 3))  # the bright patch: class 0
    return images


def test_road_ranks_the_planted_map_above_random_sobel_and_the_inverse(patch_model):
    images = textured_images(6)
    assert (patch_model(images).argmax(axis=1) == 0).all()
    planted = np.zeros((6, S, S), np.float32)
    planted[:, PATCH[0], PATCH[1]] = 1.0
    targets = np.zeros(6, int)
    calls = []

    def predict(batch):
        calls.append(len(batch))
        return patch_model(batch)

    scores = {name: road(predict, images, heat, targets)
              for name, heat in (("planted", planted), ("random", random_maps((S, S), 6)),
                                 ("sobel", sobel_maps(images)), ("inverse", 1.0 - planted))}
    assert calls == [6, *[12] * len(FRACTIONS)] * 4  # the originals, then MoRF + LeRF of every image per fraction
    planted_score = scores["planted"].score
    assert planted_score > 0.3, planted_score  # removing the patch first kills class 0; removing it last keeps it
    assert planted_score > scores["random"].score + 0.2 and planted_score > scores["sobel"].score
    assert scores["inverse"].score < 0 < planted_score
    assert np.all(scores["planted"].morf[0] < scores["planted"].probability)  # MoRF at 10%: the patch is gone
    again = road(patch_model, images, planted, targets)
    assert np.array_equal(again.morf, scores["planted"].morf)  # seeded noise: reproducible


def test_a_flat_map_scores_exactly_zero(patch_model):
    images = textured_images(2)
    assert road(patch_model, images, np.zeros((2, S, S)), np.zeros(2, int)).score == 0.0


def test_bad_arguments(patch_model):
    images = textured_images(2)
    with pytest.raises(ValueError, match="do not match"):
        road(patch_model, images, np.zeros((2, 5, 5)), np.zeros(2, int))
    with pytest.raises(ValueError, match="fractions"):
        road(patch_model, images, np.zeros((2, S, S)), np.zeros(2, int), fractions=(0.5, 1.0))


# -- the per-run choice, on the real tiny run -------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured_run(tmp_path_factory, trained_run) -> Path:
    """A mirror of the tiny run, measured once through the precompute step with small settings (8 validation
    images, two fractions, two methods: the mechanism, not the numbers)."""
    run = mirror_run(Path(trained_run), tmp_path_factory.mktemp("road-artifacts"))
    (run / best_map.FILE).unlink(missing_ok=True)  # the fixture run's own measurement (conftest), not this one
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(best_map, "SAMPLE", 8)
        mp.setattr(best_map, "FRACTIONS", (0.3, 0.7))
        mp.setattr(best_map, "METHODS", ("gradcam", "hirescam"))
        precompute.run_step(run, "faithful_maps")
    return run


def test_the_choice_is_measured_on_validation_kept_and_read_back_without_a_model(measured_run):
    path = measured_run / best_map.FILE
    data = json.loads(path.read_text())
    assert data["version"] == best_map.VERSION and data["sample"] == 8 and data["fractions"] == [0.3, 0.7]
    found = best_map.FaithfulMaps.from_file(path)
    layers = [c.name for c in precompute.classifier(measured_run).cam_layers()]
    assert {(s.method, s.layer) for s in found.scores} == {(m, la) for m in ("gradcam", "hirescam")
                                                           for la in layers} | {("random", None), ("sobel", None)}
    assert found.chosen.road == max(s.road for s in found.scores if s.layer is not None)
    assert found.rows()[0]["ROAD"] >= found.rows()[-1]["ROAD"] and sum(r["chosen"] for r in found.rows()) == 1
    written = path.stat().st_mtime_ns
    precompute.forget_model(measured_run)
    assert precompute.run_step(measured_run, "faithful_maps") == found  # read back: no model, nothing rewritten
    assert precompute.loaded(measured_run) is None and path.stat().st_mtime_ns == written


def test_a_damaged_or_old_file_is_measured_again(tmp_path, measured_run):
    run = mirror_run(measured_run, tmp_path / "artifacts")
    kept = json.loads((measured_run / best_map.FILE).read_text())
    with pytest.raises(ValueError, match="missing"):  # a table without its choice is damaged
        (run / best_map.FILE).write_text(json.dumps({**kept, "method": "scorecam"}))
        best_map.FaithfulMaps.from_file(run / best_map.FILE)
    (run / best_map.FILE).write_text(json.dumps({"version": 0}))
    calls = []

    def model():
        calls.append(1)
        return precompute.classifier(run)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(best_map, "SAMPLE", 8)
        mp.setattr(best_map, "FRACTIONS", (0.5,))
        mp.setattr(best_map, "METHODS", ("gradcam",))
        found = best_map.load_or_measure(run, model)
    assert calls and found.version == best_map.VERSION and found.fractions == (0.5,)
    assert best_map.FaithfulMaps.from_file(run / best_map.FILE) == found


def test_one_pass_gives_each_method_its_own_map(measured_run):
    """The measurement's single traced pass over every gradient method and layer equals each method's own
    `explain`, which the pages draw."""
    from core.explain.cam import method
    from core.explain.cam.base import gradient_maps

    clf = precompute.classifier(measured_run)
    images = Run(measured_run).split("val")[0][:5]
    targets = np.array([0, 3, 5, 6, 7])
    layers = [c.name for c in clf.cam_layers()][:2]
    maps = gradient_maps(clf.model, best_map.METHODS, layers, images, targets, clf.preprocess, batch=3)
    assert set(maps) == {(m, la) for m in best_map.METHODS for la in layers}
    for name, layer in (("gradcampp", layers[0]), ("hirescam", layers[1])):  # two traces, not six
        with method(name)(clf.model, layer, preprocess=clf.preprocess) as cam:
            assert np.allclose(maps[(name, layer)], cam.explain(images, targets).heatmaps, atol=1e-4), (name, layer)


def test_default_choice_falls_back_to_grad_cam_at_the_last_block(measured_run):
    from core.explain.cam import METHOD_NAMES

    layers = precompute.classifier(measured_run).cam_layers()
    last = next(i for i, c in enumerate(layers) if c.default)
    assert best_map.default_choice(None, layers) == (METHOD_NAMES.index("gradcam"), last)
    found = best_map.FaithfulMaps.from_file(measured_run / best_map.FILE)
    method, layer = best_map.default_choice(found, layers)
    assert (METHOD_NAMES[method], layers[layer].name) == (found.method, found.layer)
    gone = best_map.FaithfulMaps(found.method, "no_such_layer", found.scores, 8, (0.5,), 0.0)
    assert best_map.default_choice(gone, layers) == (METHOD_NAMES.index("gradcam"), last)


def test_cli_prints_the_table(measured_run, capsys):
    from core.cli import main

    assert main(["faithfulness", str(measured_run)]) == 0  # the kept measurement: printed, not measured again
    out = capsys.readouterr().out
    assert "ROAD" in out and "Random blobs" in out and "Sobel edges" in out and "<- default" in out
    assert "Chosen because" in out and "kept in the run folder" in out
    assert main(["faithfulness", str(measured_run), "--sample", "3"]) == 2  # fewer than one image per class


def plant_choice(run: Path) -> best_map.FaithfulMaps:
    """A kept choice that is not today's default: Grad-CAM++ at the first layer, at +50 points."""
    found = best_map.FaithfulMaps.from_file(run / best_map.FILE)
    first = precompute.classifier(run).cam_layers()[0].name
    planted = best_map.Score("gradcampp", first, 0.5, 0.1, 0.9, 0.3)
    scores = tuple(s for s in found.scores if (s.method, s.layer) != ("gradcampp", first)) + (planted,)
    choice = best_map.FaithfulMaps("gradcampp", first, scores, 8, (0.3, 0.7), 1.0)
    (run / best_map.FILE).write_text(choice.to_json())
    return choice


def test_classify_preselects_the_chosen_method_and_layer(monkeypatch, measured_run):
    """A choice that is not today's default is what the page preselects, with the table it was chosen from."""
    choice = plant_choice(measured_run)
    layers = precompute.classifier(measured_run).cam_layers()
    at = open_page(monkeypatch, page("classify"), measured_run.parent.parent, 300)
    at.toggle[0].set_value(False)  # no 'unlike the training data' statistics: not what this test is about
    at.segmented_control[0].set_value("Test-set gallery")
    settled(at)  # the model loads in the background when an earlier test has not loaded it
    method = next(s for s in at.selectbox if s.label == "Method")
    layer = next(s for s in at.selectbox if s.label == "Layer")
    assert method.value == "gradcampp" and layer.value.name == layers[0].name
    shown = texts(at)
    assert "Chosen because Grad-CAM++" in shown and "+50.0 points" in shown
    table = next(t.value for t in at.table if "ROAD" in t.value.columns)
    assert table.iloc[0]["ROAD"] == "+50.0" and table.iloc[0]["default"] == "✓" and len(table) == len(choice.scores)


def test_confusions_preselects_the_chosen_method_and_layer(monkeypatch, measured_run):
    plant_choice(measured_run)
    at = open_page(monkeypatch, page("confusion"), measured_run.parent.parent, 300)
    settled(at)  # the test split predicted once in the background
    next(b for b in at.button if b.label == "Grad-CAM").click()
    settled(at)
    run_id = measured_run.name
    assert at.selectbox(key=f"cf_method_{run_id}_measured").value == "gradcampp"
    assert at.selectbox(key=f"cf_layer_{run_id}_measured").value.name == precompute.classifier(
        measured_run).cam_layers()[0].name
    assert any("Grad-CAM++ at" in str(i.proto) for i in at.get("image"))  # the heatmaps say which map they are
    assert "Chosen because Grad-CAM++" in texts(at)
