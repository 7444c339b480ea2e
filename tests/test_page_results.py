"""The Results page, run headless by Streamlit's AppTest over real tiny trained runs (seeds 1-3)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest
from page_helpers import PROJECT_ROOT, figures, frame_with, open_page, page, texts
from results_fixtures import copy_store, seeded_artifacts
from streamlit.testing.v1 import AppTest

from core.access.roles import User
from core.config import RunConfig
from core.store.runs import RunStore
from ui.session import USER_KEY

PAGE = page("results")


def display_values(element) -> pd.DataFrame:
    """What a styled st.dataframe shows in each cell (its Styler's display values), with its column names."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    values = convert_arrow_bytes_to_pandas_df(element.proto.arrow_data.styler.display_values)
    values.columns = element.value.columns
    return values
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
    # identity and outcome first, then the settings that differ between the runs; the rest on request
    assert list(runs.columns[:4]) == ["run_id", "status", "val_accuracy", "test_accuracy"]
    assert "seed" in runs.columns and runs.columns[-1] == "tags" and "f1_monocyte" not in runs.columns
    at.multiselect(key="run_columns").set_value(["run_id", "test_accuracy", "f1_monocyte"]).run()
    assert list(frame_with(at, "run_id").columns) == ["run_id", "test_accuracy", "f1_monocyte"]
    # the matrix: the fixture's seed 1 trained on all 256 images, seeds 2-3 on 64: two settings, not pooled
    heat = figures(at)[0]["data"][0]
    cells = [t for row in heat["text"] for t in row if t]
    assert len(cells) == 1 and cells[0].endswith("best of 2 settings")
    assert any("differ in more than the seed" in w.value for w in at.warning)
    # selected runs default to all three, with the settings in which they differ
    assert set(at.multiselect(key="sel_runs").value) == ids
    assert "Seed" in set(frame_with(at, "setting")["setting"])
    kinds = [f["data"][0]["type"] for f in figures(at)]
    assert kinds.count("bar") == 1 and "parcoords" not in kinds
    # parallel coordinates as SVG lines: one polyline per complete run (each ends in a gap)
    parallel = next(f for f in figures(at) if f["data"][0].get("mode") == "lines+markers"
                    and None in f["data"][0]["x"])
    assert sum(t["x"].count(None) for t in parallel["data"] if t.get("mode") == "lines+markers") == 3
    per_class = frame_with(at, "support")
    assert len(per_class) == 8
    assert not at.error


def test_a_link_to_a_run_puts_it_first_and_selects_it(monkeypatch, artifacts):
    store = RunStore(artifacts / "runs")
    worst = min(store.list_runs(), key=lambda r: r["val_accuracy"])["run_id"]
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(artifacts))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["run"] = worst
    at.run()
    assert not at.exception
    assert frame_with(at, "run_id")["run_id"].iloc[0] == worst
    assert at.multiselect(key="sel_runs").value[0] == worst
    # a search narrows the table; the linked run stays first
    other = next(r["run_id"] for r in store.list_runs() if r["run_id"] != worst)
    at.text_input(key="run_search").set_value(other[-6:]).run()
    assert list(frame_with(at, "run_id")["run_id"]) == [worst, other]
    # picking runs writes the first into the address, to share
    at.multiselect(key="sel_runs").set_value([other]).run()
    assert at.query_params["run"] in (other, [other])
    at.query_params["run"] = "20990101-000000-abcdef"  # a run that is not there
    at.run()
    assert any("No run `20990101-000000-abcdef` here" in w.value for w in at.warning)


def test_an_unfinished_run_shows_its_status_not_none(monkeypatch, artifacts, tmp_path):
    private = copy_store(artifacts, tmp_path / "artifacts")
    store = RunStore(private / "runs")
    config = store.list_runs()[0]["config_json"]
    writer = store.writer(RunConfig.from_dict(json.loads(config)))  # being trained: no scores yet
    at = open_page(monkeypatch, PAGE, private, TIMEOUT)
    table = next(d for d in at.dataframe if "run_id" in d.value.columns)
    assert "Runs (4 of 4)" in texts(at)
    shown = display_values(table)
    row = shown[shown["run_id"] == writer.run_id].iloc[0]
    assert row["status"] == row["val_accuracy"] == row["test_accuracy"] == "incomplete"
    done = shown[shown["run_id"] != writer.run_id]
    assert not done["val_accuracy"].isin(["incomplete", "None", ""]).any()
    writer.close()


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
    assert ours_row["n"] in (1, 2) and ours_row["settings"] == 2  # the study's recipe; two training-set sizes
    assert not any("ordering error" in w.value for w in at.warning)  # accuracy is reliable everywhere


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
