"""The Confusions page by AppTest over real tiny trained runs, and core.evaluation.predictions' on-disk cache.

Clicks on the matrix and the ranked table are browser events (tests/test_browser_results.py); here the cell is
picked with the dropdowns those clicks set."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from page_helpers import array, figures, open_page, page, texts
from results_fixtures import copy_store, seeded_artifacts
from streamlit.testing.v1 import AppTest

from core import tasks
from core.evaluation import confusion, predictions
from core.inference import precompute
from core.store.runs import Run, RunStore, open_run

PAGE = page("confusion")
TIMEOUT = 240  # the first visit loads TensorFlow and predicts the test split; the machine may be busy


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_run, tiny_npz) -> Path:
    return seeded_artifacts(tmp_path_factory, trained_run, tiny_npz)


@pytest.fixture(scope="module")
def best(artifacts) -> dict:
    return RunStore(artifacts / "runs").best_run()


def wait_for(task: tasks.Task, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while task.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert task.done, task.error


def test_predictions_are_computed_once_and_cached(best):
    run_dir = Path(best["path"])
    (run_dir / predictions.PREDICTIONS_FILE).unlink(missing_ok=True)
    assert predictions.cached(run_dir) is None
    created = run_dir.stat().st_mtime_ns
    found = predictions.compute(run_dir)
    assert (run_dir / predictions.PREDICTIONS_FILE).is_file()
    assert run_dir.stat().st_mtime_ns == created
    metrics = Run(run_dir).metrics
    assert len(found) == metrics["test"]["n"]
    counts, _ = confusion.from_metrics(metrics)
    recomputed = confusion.from_predictions(found.y_true, found.y_pred, 8)
    assert np.abs(recomputed - counts).sum() <= 2  # the saved model reproduces the run's test confusions
    again = predictions.cached(run_dir)
    assert again is not None and (again.y_pred == found.y_pred).all()
    assert np.allclose(again.probabilities, found.probabilities)


def test_grad_cam_of_one_test_image_for_two_classes(best):
    run_dir = Path(best["path"])
    images, labels = open_run(run_dir).test_split()
    assert images.shape[1:] == (28, 28, 3) and len(images) == len(labels)
    heats = predictions.gradcam(predictions.load_classifier(run_dir), images[0], [int(labels[0]), 3])
    assert heats.shape == (2, 28, 28) and heats.min() >= 0 and heats.max() <= 1


def test_page_shows_the_best_run_its_confusions_and_thumbnails(monkeypatch, artifacts, best):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    assert at.selectbox(key="cf_run").value == best["run_id"]  # best on validation by default
    assert at.multiselect(key="cf_focus").value == ["monocyte", "immature granulocytes"]
    matrix = figures(at)[0]["data"][0]
    counts, labels = confusion.from_metrics(Run(Path(best["path"])).metrics)
    assert matrix["type"] == "heatmap" and matrix["x"] == labels
    assert array(matrix["z"]) == pytest.approx(confusion.row_normalise(counts), nan_ok=True)
    shown = at.dataframe[0].value
    assert list(shown.columns) == ["confusion", "count", "share"]
    ranked = confusion.ranked_confusions(counts, labels)
    assert list(shown["confusion"]) == [f"{t} → {p}" for t, p in zip(ranked["true"], ranked["predicted"])]
    assert list(shown["count"]) == list(ranked["count"]) and len(shown) > 0
    # the cell explorer opens on the top confusion and shows its images
    top = ranked.iloc[0]
    assert at.selectbox(key=f"cf_true_{best['run_id']}").value == top["true"]
    assert at.selectbox(key=f"cf_pred_{best['run_id']}").value == top["predicted"]
    n_images = min(int(top["count"]), 24)
    assert len(at.get("image")) == n_images
    assert (Path(best["path"]) / predictions.PREDICTIONS_FILE).is_file()
    # recall with 95% intervals for this run and the second one, and the difference matrix
    kinds = [f["data"][0]["type"] for f in figures(at)]
    assert kinds.count("bar") == 1 and kinds.count("heatmap") == 4
    recall = next(f for f in figures(at) if f["data"][0]["type"] == "bar")
    assert len(recall["data"]) == 2 and "error_y" in recall["data"][0]
    assert "Two runs side by side" in [s.value for s in at.subheader]


def test_grad_cam_on_click_beside_the_images(monkeypatch, artifacts, best):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    buttons = [b for b in at.button if b.label == "Grad-CAM"]
    assert buttons
    before = len(at.get("image"))
    buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.value.startswith("**Test image #") for m in at.markdown)
    if precompute.loaded(best["path"]) is None:  # the model loads in the background, its progress shown
        wait_for(precompute.model_task(best["path"]))
        at.run()
    assert len(at.get("image")) > before  # the heatmap panels, beside the thumbnails
    cams = [i for i in at.get("image") if "image · heatmap · overlay" in str(i.proto)]
    assert 1 <= len(cams) <= 2
    assert [b for b in at.button if b.label == "Grad-CAM"][0].proto.type == "primary"  # the chosen image


def test_first_use_predicts_in_the_background_and_the_page_stays_usable(monkeypatch, artifacts, best, tmp_path):
    private = copy_store(artifacts, tmp_path / "artifacts", [best["run_id"]])
    run_dir = private / "runs" / best["run_id"]
    (run_dir / predictions.PREDICTIONS_FILE).unlink(missing_ok=True)
    at = open_page(monkeypatch, PAGE, private, TIMEOUT)
    assert "Predicting this run's test split once" in texts(at)
    assert len(at.get("image")) == 0
    kinds = [f["data"][0]["type"] for f in figures(at)]
    assert "heatmap" in kinds and "bar" in kinds  # the matrix and the recall are there meanwhile
    wait_for(precompute.step_task(run_dir, "test_predictions"))
    at.run()
    assert not at.exception and (run_dir / predictions.PREDICTIONS_FILE).is_file()
    assert len(at.get("image")) > 0


def test_a_link_opens_its_run(monkeypatch, artifacts, best):
    runs = RunStore(artifacts / "runs").list_runs()
    other = next(r["run_id"] for r in runs if r["run_id"] != best["run_id"])
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(artifacts))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["run"] = other
    at.run()
    assert not at.exception and at.selectbox(key="cf_run").value == other
    at.selectbox(key="cf_run").set_value(best["run_id"]).run()  # picking another run updates the address
    assert at.query_params["run"] in (best["run_id"], [best["run_id"]])
    at.query_params["run"] = "20990101-000000-abcdef"
    at.run()
    assert any("is not a complete run here" in w.value for w in at.warning)


def test_pick_any_cell_and_no_second_run(monkeypatch, artifacts, best):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    run_id = best["run_id"]
    at.selectbox(key=f"cf_true_{run_id}").set_value("platelet").run()
    at.selectbox(key=f"cf_pred_{run_id}").set_value("platelet").run()
    assert not at.exception
    assert any("predicted as **platelet** (correct)" in m.value for m in at.markdown) or \
        any("No test image of platelet" in c.value for c in at.caption)
    at.selectbox(key="cf_compare").set_value("none").run()
    assert "Two runs side by side" not in [s.value for s in at.subheader]
    assert len(next(f for f in figures(at) if f["data"][0]["type"] == "bar")["data"]) == 1


def test_no_runs(monkeypatch, tmp_path):
    at = open_page(monkeypatch, PAGE, tmp_path / "artifacts", TIMEOUT)
    assert any("No complete runs yet" in i.value for i in at.info)
