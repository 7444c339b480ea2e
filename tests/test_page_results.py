"""The Results page, run headless by Streamlit's AppTest over real tiny trained runs (seeds 1-3)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from page_helpers import PROJECT_ROOT, figures, frame_with, open_page, page, texts
from results_fixtures import copy_store, seeded_artifacts

from core.access.roles import User
from core.store.runs import RunStore
from ui.session import USER_KEY

PAGE = page("results")
TIMEOUT = 120  # seconds per script run; the machine may be busy training


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_run, tiny_npz) -> Path:
    return seeded_artifacts(tmp_path_factory, trained_run, tiny_npz)


def test_runs_table_matrix_and_details(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    store = RunStore(artifacts / "runs")
    ids = {r["run_id"] for r in store.list_runs()}
    assert "Runs (3 of 3)" in texts(at)
    runs = frame_with(at, "run_id")
    assert set(runs["run_id"]) == ids
    assert {"test_accuracy", "val_accuracy", "f1_monocyte", "tags"} <= set(runs.columns)
    # the matrix: all three seeds in one cell, "mean ± sd (n)"
    heat = figures(at)[0]["data"][0]
    cells = [t for row in heat["text"] for t in row if t]
    assert len(cells) == 1 and "±" in cells[0] and cells[0].endswith("(3)")
    # selected runs default to all three; their per-class bars, curves and the parallel coordinates show
    assert set(at.multiselect(key="sel_runs").value) == ids
    kinds = [f["data"][0]["type"] for f in figures(at)]
    assert kinds.count("bar") == 1 and "parcoords" in kinds and "scatter" in kinds
    per_class = frame_with(at, "support")
    assert len(per_class) == 8
    assert not at.error


def test_study_table_12_in_one_click(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.button[0].click().run()  # "Study Table 12"
    assert not at.exception
    assert at.multiselect(key="mx_rows").value == ["arch", "batch_size"]
    assert at.multiselect(key="mx_cols").value == ["size"]
    assert at.selectbox(key="mx_metric").value == "test_accuracy"
    assert at.toggle(key="mx_recipe").value is True
    ours, study = figures(at)[:2]
    assert study["data"][0]["y"][:4] == ["ResNet-101 · batch 16", "ResNet-101 · batch 32", "ResNet-50 · batch 16",
                                        "ResNet-50 · batch 32"]
    assert study["data"][0]["x"][:3] == ["224 px", "128 px", "64 px"]
    assert study["data"][0]["text"][0][:3] == ["0.988", "0.981", "0.969"]
    comparison = frame_with(at, "study")
    row = comparison[(comparison["arch"] == "resnet50") & (comparison["batch_size"] == 32)
                     & (comparison["size"] == 64)].iloc[0]
    assert row["study"] == pytest.approx(0.9775) and row["n"] == 0
    ours_row = comparison[(comparison["arch"] == "resnet18") & (comparison["size"] == 28)
                          & (comparison["batch_size"] == 32)].iloc[0]
    assert ours_row["n"] == 3  # our tiny runs follow the study's recipe
    assert not at.warning  # accuracy is reliable everywhere


def test_class_f1_marks_the_unreliable_study_columns(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.button[0].click().run()
    at.selectbox(key="mx_metric").set_value("f1_monocyte").run()
    assert not at.exception
    study = figures(at)[1]["data"][0]
    assert study["text"][0][0] == "0.990" and study["text"][1][0] == "0.990 †"
    assert any("ordering error" in w.value for w in at.warning)


def test_filters(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.multiselect(key="flt_seed").set_value([2]).run()
    assert "Runs (1 of 3)" in texts(at)
    assert list(frame_with(at, "run_id")["seed"]) == [2]
    at.multiselect(key="flt_seed").set_value([]).run()
    at.multiselect(key="flt_tags").set_value(["fixture"]).run()
    assert "Runs (1 of 3)" in texts(at)


def test_tag_then_delete_with_confirmation(monkeypatch, artifacts, tmp_path):
    private = copy_store(artifacts, tmp_path / "artifacts")
    store = RunStore(private / "runs")
    ids = sorted(r["run_id"] for r in store.list_runs())
    at = open_page(monkeypatch, PAGE, private, TIMEOUT)
    at.multiselect(key="sel_runs").set_value(ids[:2]).run()
    at.text_input(key="tag_text").set_value("keep").run()
    next(b for b in at.button if b.label == "Tag 2 runs").click().run()
    assert not at.exception
    assert "Tagged 2 runs with “keep”." in [s.value for s in at.success]
    for run_id in ids[:2]:
        assert "keep" in json.loads((store.runs_dir / run_id / "config.json").read_text())["tags"]
    assert at.multiselect(key="flt_tags").options and "keep" in at.multiselect(key="flt_tags").options

    at.multiselect(key="sel_runs").set_value(ids[:1]).run()
    next(b for b in at.button if b.label == "Delete 1 run…").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    assert (store.runs_dir / ids[0]).is_dir()  # nothing deleted before confirming
    at.button(key="confirm_no").click().run()
    assert not any("cannot be undone" in w.value for w in at.warning)
    assert (store.runs_dir / ids[0]).is_dir()
    next(b for b in at.button if b.label == "Delete 1 run…").click().run()
    at.button(key="confirm_yes").click().run()
    assert not at.exception
    assert not (store.runs_dir / ids[0]).exists()
    assert "Deleted 1 run." in [s.value for s in at.success]
    assert "Runs (2 of 2)" in texts(at)


def test_a_trainer_tags_through_the_page_and_cannot_delete(monkeypatch, artifacts, tmp_path):
    """The page acts as the session's user: a trainer's tag is stored; Delete is disabled for them (the store
    refuses it too: test_faults_jobs; a viewer sees neither: test_faults_access)."""
    private = copy_store(artifacts, tmp_path / "artifacts")
    store = RunStore(private / "runs")
    ids = sorted(r["run_id"] for r in store.list_runs())
    at = open_page(monkeypatch, PAGE, private, TIMEOUT)
    at.session_state[USER_KEY] = User("tess", ("trainer",))
    at.multiselect(key="sel_runs").set_value(ids[:1]).run()
    at.text_input(key="tag_text").set_value("mine").run()
    next(b for b in at.button if b.label == "Tag 1 run").click().run()
    assert not at.exception and "Tagged 1 run with “mine”." in [s.value for s in at.success]
    assert "mine" in json.loads((store.runs_dir / ids[0] / "config.json").read_text())["tags"]
    assert next(b for b in at.button if b.label == "Delete 1 run…").disabled
    assert (store.runs_dir / ids[0]).is_dir() and store.count() == len(ids)


def test_empty_store(monkeypatch, tmp_path):
    at = open_page(monkeypatch, PAGE, tmp_path / "artifacts", TIMEOUT)
    assert "No runs yet" in texts(at)
    # the study's Table 12 is still there to look at
    at.button[0].click().run()
    assert not at.exception
    assert len(figures(at)) == 2


def test_app_navigation_lists_the_pages():
    tree = ast.parse((PROJECT_ROOT / "app.py").read_text())
    pages = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
             and n.value.startswith("pages/")}
    assert {"pages/results.py", "pages/confusion.py"} <= pages
