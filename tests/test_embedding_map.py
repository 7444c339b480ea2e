"""The feature map (core.explain.embedding, its precompute step, pages/embedding_map.py and its Classify part) on
the real tiny trained run: its points are the test images in order, its file is reused and rebuilt when
damaged, an upload's nearest training images are real training images whose features are nearest, and the page
shows the points, filters them and explains the one clicked.

The run is mirrored into a temporary store (small files copied, the model linked), so the shared fixture's
folder never receives the map."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import PBC_SAMPLES, mirror_run
from page_helpers import open_page, page, texts
from PIL import Image

from core import tasks
from core.evaluation import predictions
from core.explain import embedding
from core.inference import precompute

PAGE = page("embedding_map")
TIMEOUT = 240  # the first visit may load TensorFlow and a model; the machine may be busy
SAMPLES = PBC_SAMPLES / "monocyte"  # real uploads (JPEGs of the PBC test split)


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_run) -> Path:
    return mirror_run(Path(trained_run), tmp_path_factory.mktemp("embedding-artifacts"))


@pytest.fixture(scope="module")
def emap(run) -> embedding.EmbeddingMap:
    """The map made by its precompute step, as a page's background task makes it."""
    return precompute.run_step(run, "embedding_map")


def data_split(npz: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(npz) as f:
        return f[f"{split}_images"], f[f"{split}_labels"].reshape(-1)


def test_the_points_are_the_test_images_in_order(run, emap, tiny_npz):
    images, labels = data_split(tiny_npz, "test")
    stored = predictions.cached(run)
    assert stored is not None and len(emap) == len(labels) == len(stored)
    assert (emap.y_true == labels).all() and (emap.y_true == stored.y_true).all()
    assert (emap.y_pred == stored.y_pred).all()
    assert np.allclose(emap.confidence, stored.probabilities.max(axis=1))
    assert emap.method == embedding.default_method() == "tsne"  # umap is not installed here
    assert emap.xy.shape == (len(labels), 2) and np.isfinite(emap.xy).all()
    # point i's features are test image i's, as the model computes them now
    clf = precompute.classifier(run)
    some = np.array([0, 1, len(labels) // 2, len(labels) - 1])
    assert np.allclose(emap.features[some].astype(np.float32), clf.probabilities_and_embeddings(images[some])[1],
                       atol=0.02, rtol=0.02)
    # thumbnail i is test image i (enlarged): nearer to it than to any other test image
    thumb = np.asarray(Image.open(io.BytesIO(emap.thumbnail(7))).convert("RGB").resize((28, 28)), float)
    errors = np.abs(images.astype(float) - thumb).mean(axis=(1, 2, 3))
    assert int(errors.argmin()) == 7


def test_the_file_is_reused_and_a_damaged_one_is_computed_again(run, emap):
    path = run / embedding.MAP_FILE
    written = path.stat().st_mtime_ns
    clf = precompute.classifier(run)
    calls = []

    def embed(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return clf.probabilities_and_embeddings(images)[1]

    def predicted():
        return predictions.load_or_compute(run, clf)

    again = embedding.load_or_compute(run, embed, predicted)
    assert calls == [] and path.stat().st_mtime_ns == written  # read back, nothing embedded or written
    assert np.array_equal(again.xy, emap.xy)
    assert precompute.run_step(run, "embedding_map") is not None and calls == []
    path.write_bytes(path.read_bytes()[:1000])  # cut short, as by a full disk
    assert embedding.cached(run) is None
    rebuilt = embedding.load_or_compute(run, embed, predicted)
    assert sum(calls) > len(emap) and embedding.cached(run) is not None  # embedded again and saved
    assert np.allclose(rebuilt.xy, emap.xy, atol=1e-3)  # same seed, same map


def test_an_uploads_nearest_training_images_are_real_and_nearest(run, emap, tiny_npz):
    train_images, train_labels = data_split(tiny_npz, "train")
    clf = precompute.classifier(run)
    sample = np.asarray(Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB").resize((28, 28)))
    queries = np.stack([sample, train_images[5]])
    features = clf.probabilities_and_embeddings(queries)[1].astype(np.float32)  # the model may give bfloat16
    found = emap.neighbours(features, k=4)
    assert found.train_index.shape == (2, 4) and len(found.thumbnails[0]) == 4
    assert (found.train_labels == train_labels[found.train_index]).all()  # real indices, with their labels
    assert found.train_index[1, 0] == 5 and found.distance[1, 0] < 0.05  # a training image finds itself
    # the nearest: by brute force over the model's features of every training image kept
    with np.load(run / embedding.MAP_FILE) as f:
        kept = f["train_index"]
    every = clf.probabilities_and_embeddings(train_images[kept])[1].astype(np.float32)
    brute = np.sqrt(((every[None] - features[:, None]) ** 2).sum(-1))
    for row in range(2):
        assert set(kept[np.argsort(brute[row])[:3]]) <= set(found.train_index[row])
        assert np.allclose(np.sort(brute[row])[:4], found.distance[row], rtol=0.02, atol=0.02)
    # placed where the map puts its nearest test images (t-SNE cannot place new points itself)
    placed = emap.place(features)
    assert "nearest test images" in placed.how and placed.xy.shape == (2, 2)
    assert (placed.xy >= emap.xy.min(axis=0) - 1e-3).all() and (placed.xy <= emap.xy.max(axis=0) + 1e-3).all()


def test_a_pca_map_places_new_points_by_its_own_projection():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 12)).astype(np.float32) * np.linspace(3, 0.1, 12)
    xy, method, mean, components = embedding.reduce(features, "pca")
    emap = embedding.EmbeddingMap(xy, np.zeros(60, np.int64), np.zeros(60, np.int64), np.ones(60, np.float32),
                                  method, ("a",), features.astype(np.float16), mean, components,
                                  np.zeros(0, np.uint8), np.zeros(60, np.int64))
    placed = emap.place(features[:5])
    assert "own projection" in placed.how
    assert np.allclose(placed.xy, xy[:5], atol=1e-4)
    with pytest.raises(ValueError, match="unknown map method"):
        embedding.reduce(features, "mds")


def chart_data(at) -> list[dict]:
    """The rows of the map's chart as the page sends them: its data (Arrow), then rows written in its spec."""
    import json

    import pyarrow as pa

    chart = at.get("vega_lite_chart")[0].proto
    rows = pa.ipc.open_stream(chart.data.data).read_all().to_pylist() if chart.HasField("data") else []
    for layer in json.loads(chart.spec).get("layer", []):
        rows += layer.get("data", {}).get("values", [])
    return rows


def test_the_page_shows_every_point_filters_and_explains_a_click(monkeypatch, run, emap):
    at = open_page(monkeypatch, PAGE, run.parent.parent, TIMEOUT)
    rows = chart_data(at)
    assert len(rows) == len(emap) and [r["index"] for r in rows] == list(range(len(emap)))
    assert all(r["image"].startswith("data:image/jpeg;base64,") for r in rows)
    assert sum(r["result"] == "wrong" for r in rows) == int((~emap.correct).sum())
    assert "Distances are only meaningful locally" in texts(at) and "t-SNE" in texts(at)
    # one click: only monocytes and immature granulocytes
    next(b for b in at.button if b.label.startswith("Only ")).click().run()
    rows = chart_data(at)
    hard = {"monocyte", "immature granulocytes"}
    assert {r["true"] for r in rows} == hard
    assert len(rows) == int(np.isin(emap.y_true, [i for i, x in enumerate(emap.labels) if x.split()[0] in
                                                  ("monocyte", "immature")]).sum())
    # a click on a point fills "Test image #": the cell and its Grad-CAM
    wrong = int(np.flatnonzero(~emap.correct)[0])
    at.number_input(key=f"fm_pick_{run.name}").set_value(wrong).run()
    assert not at.exception, [e.value for e in at.exception]
    if precompute.loaded(run) is None:
        tasks.wait(precompute.model_task(run), timeout=TIMEOUT)
        at.run()
    assert f"**Test image #{wrong}**" in texts(at) and "a wrong call" in texts(at)
    cams = [i for i in at.get("image") if "image · heatmap · overlay" in str(i.proto)]
    assert len(cams) == 2  # evidence for the predicted and the true class


def _upload_script(run_dir: str, sample: str) -> None:
    """Classify's call, on one uploaded cell (AppTest runs this function's source as the page)."""
    import numpy as np
    from PIL import Image

    from core.inference import precompute
    from ui.embedding_map import show_upload

    image = np.asarray(Image.open(sample).convert("RGB").resize((28, 28)))
    show_upload(run_dir, precompute.classifier(run_dir), image, "my cell.jpg")


def test_an_upload_appears_on_the_map_beside_its_nearest_training_images(run, emap):
    from streamlit.testing.v1 import AppTest

    sample = sorted(SAMPLES.glob("*.jpg"))[0]
    at = AppTest.from_function(_upload_script, args=(str(run), str(sample)), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    rows = chart_data(at)
    assert [r["name"] for r in rows if "name" in r and r["name"]] == ["my cell.jpg"]  # the diamond
    image = np.asarray(Image.open(sample).convert("RGB").resize((28, 28)))
    features = precompute.classifier(run).probabilities_and_embeddings(image[None])[1].astype(np.float32)
    expected = emap.neighbours(features).train_index[0]
    captions = [str(i.proto) for i in at.get("image")]
    assert len(expected) == embedding.NEIGHBOURS and len(captions) == len(expected)
    shown = {int(c.split("training #")[1].split(" ")[0]) for c in captions}  # drawn in columns, row by row
    assert shown == set(expected.tolist())
    assert "nearest test images in the feature space" in texts(at)


def test_a_run_without_its_map_makes_it_only_when_asked(tmp_path, trained_run):
    from streamlit.testing.v1 import AppTest

    bare = mirror_run(Path(trained_run), tmp_path / "artifacts")  # no map yet
    at = AppTest.from_function(_upload_script, args=(str(bare), str(sorted(SAMPLES.glob("*.jpg"))[0])),
                               default_timeout=TIMEOUT).run()
    assert not at.exception and "has no feature map yet" in texts(at)
    assert tasks.get(precompute.task_key("embedding_map", bare)) is None  # nothing started unasked
    assert not at.get("vega_lite_chart")
    at.button(key="fm_make").click().run()
    task = tasks.get(precompute.task_key("embedding_map", bare))
    assert task is not None and tasks.wait(task, timeout=TIMEOUT).done
    at.run()
    assert not at.exception and len(at.get("vega_lite_chart")) == 1 and (bare / embedding.MAP_FILE).is_file()
