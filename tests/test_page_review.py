"""The Review page, run headless by Streamlit's AppTest over the real tiny trained run: start a session on its
test split, decide on cells, 'restart' (a new AppTest on the same database) and resume where it stopped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from external_fixtures import captions, private_store, until
from page_helpers import button, metrics, ok, page, texts
from streamlit.testing.v1 import AppTest

from core.access.roles import User
from core.validation import review as rv
from ui.session import USER_KEY

PAGE = page("review")
TIMEOUT = 300  # seconds per script run; the machine may be busy training


def open_as(monkeypatch, artifacts: Path, name: str, roles: tuple[str, ...] = ("reviewer",)) -> AppTest:
    """The Review page for a logged-in user (what ui.login puts in the session after a login)."""
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(artifacts))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state[USER_KEY] = User(name, roles)
    return ok(at.run())


def start_session(at: AppTest, cells: int) -> AppTest:
    at.number_input(key="review_limit").set_value(cells)
    ok(button(at, "Start session").click().run())
    return until(at, f"cell 1 of {cells}")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_run) -> Path:
    return private_store(tmp_path_factory, trained_run, "review-page-artifacts")


def test_review_session_start_decide_restart_resume(monkeypatch, artifacts):
    at = open_as(monkeypatch, artifacts, "Dr Page")
    assert "Reviewing as **Dr Page**" in texts(at)
    assert not [t for t in at.text_input if t.label == "Reviewer"]  # no typed name: the logged-in user reviews
    start_session(at, 6)
    assert any(p.proto.text.startswith("0 of 6 reviewed") for p in at.get("progress"))
    assert "Most likely classes: 1. " in texts(at)  # the model's top 3, with probabilities
    assert "No decisions yet" in texts(at)
    until(at, "Grad-CAM: evidence for")  # the model loads in the background, then the CAM is drawn
    assert len(at.get("image")) >= 2  # the cell and its Grad-CAM
    assert "largest copy of this cell here" in captions(at)  # the fixture's 28 px file has no larger copy

    ok(button(at, "Agree").click().run())
    assert "cell 2 of 6" in texts(at)
    assert any(p.proto.text.startswith("1 of 6 reviewed") for p in at.get("progress"))
    tally = at.table[0].value
    assert list(tally.columns)[:4] == ["Model's call", "Reviewed", "Agreed", "Reclassified"]
    assert tally["Reviewed"].sum() == 1 and tally["Agreed"].sum() == 1
    assert "Agreement 1 of 1 cells given a class (100.0%)." in texts(at)
    next(t for t in at.text_input if t.label.startswith("Note")).input("looks like a band form")
    other = next(b for b in at.button if b.label in ("neutrophil", "monocyte") and not b.disabled)
    ok(other.click().run())  # reclassify (the model's own call is disabled)
    assert "cell 3 of 6" in texts(at)
    ok(button(at, "Back").click().run())
    assert "cell 2 of 6" in texts(at) and "Reviewed: reclassify" in texts(at)
    assert "looks like a band form" in texts(at)

    store = rv.ReviewStore(artifacts / rv.REVIEWS_DB)
    session = store.sessions(User("Dr Page", ("reviewer",)))[0]
    assert session["reviewer"] == "Dr Page"
    assert session["reviewed"] == 2 and session["n_cells"] == 6 and session["source_kind"] == "test"
    cells = store.cells(session["id"])
    assert cells[0]["decision"] == "agree" and cells[1]["decision"] == "reclassify"
    assert cells[1]["note"] == "looks like a band form"

    # a restart: a fresh app session over the same database resumes at the first unreviewed cell
    at = open_as(monkeypatch, artifacts, "Dr Page")
    ok(button(at, "Resume").click().run())
    assert "cell 3 of 6" in texts(at)
    ok(button(at, "Not a cell").click().run())
    assert store.progress(session["id"]) == (3, 6)
    shown = metrics(at)
    assert shown["Reviewed"] == "3 of 6" and shown["Not a cell"] == "1"
    assert shown["Agreement with the model"] == "50.0%"  # 1 agreed of 2 given a class; not a cell left out
    assert "Agreement 1 of 2 cells given a class (50.0%); 1 unsure or not a cell left out of it." in texts(at)
    ok(button(at, "Undo last").click().run())  # takes back "not a cell" and returns to that cell
    assert store.progress(session["id"]) == (2, 6) and "cell 3 of 6" in texts(at)
    ok(button(at, "Not a cell").click().run())
    download = at.get("download_button")
    assert download, "a CSV download"
    csv_text = store.export_csv(session["id"])
    assert len(pd.read_csv(pd.io.common.StringIO(csv_text))) == 6


def test_another_reviewer_sees_kappa(monkeypatch, artifacts):
    store = rv.ReviewStore(artifacts / rv.REVIEWS_DB)
    first = store.sessions(User("Dr Page", ("reviewer",)))
    at = open_as(monkeypatch, artifacts, "Dr Second")
    start_session(at, 6)
    ok(button(at, "Agree").click().run())
    if first:
        assert "Cohen's kappa with Dr Page" in texts(at)
    mine = store.sessions(User("Dr Second", ("reviewer",)))[0]
    assert [s["id"] for s in store.same_set(mine["id"])] == [s["id"] for s in first]


def test_an_external_folder_without_path_is_a_clear_error(monkeypatch, artifacts):
    at = open_as(monkeypatch, artifacts, "Dr Third")
    ok(at.radio(key="review_source").set_value("external").run())
    ok(button(at, "Start session").click().run())
    assert any("external dataset's folder" in str(e.value) for e in at.error)
