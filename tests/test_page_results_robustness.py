"""The Results page's corruption-robustness section, run headless by Streamlit's AppTest over a copy of the shared
tiny trained run: a stored report's figures as the report holds them, the command when a run has none, and a
damaged report as its message (the rest of the page still shows)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import mirror_run
from page_helpers import array, figures, frame_with, open_page, page, texts

from core.evaluation.corruptions import CORRUPTIONS
from core.evaluation.robustness import COMMAND, evaluate_robustness, report_path

PAGE = page("results")
TIMEOUT = 120  # seconds per script run; the machine may be busy training


@pytest.fixture(scope="module")
def measured(tmp_path_factory, trained_run):
    """An artifacts folder holding a copy of the run with a real (small) robustness report."""
    artifacts = tmp_path_factory.mktemp("robustness-page") / "artifacts"
    run_dir = mirror_run(trained_run, artifacts)
    return artifacts, run_dir, evaluate_robustness(run_dir, limit=8, seed=1)


def test_a_stored_report_is_shown(monkeypatch, measured):
    artifacts, run_dir, report = measured
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    assert "Corruption robustness" in texts(at)
    summary = frame_with(at, "corrupted")
    row = summary.iloc[0]
    assert row["run_id"] == run_dir.name and row["n"] == report.n and row["seed"] == 1
    assert row["clean"] == report.clean_accuracy and row["corrupted"] == report.mean_corrupted_accuracy
    heat = next(f["data"][0] for f in figures(at) if f["data"][0].get("y") == [c.title for c in CORRUPTIONS])
    expected = [[*c.accuracies, c.mean_accuracy] for c in report.corruptions]
    assert np.allclose(array(heat["z"]), expected)
    assert heat["x"][-1] == "mean" and len(heat["x"]) == 6
    assert COMMAND not in texts(at) and not at.error


def test_a_run_without_a_report_says_how_to_make_one(monkeypatch, tmp_path, trained_run):
    run_dir = mirror_run(trained_run, tmp_path / "artifacts")
    at = open_page(monkeypatch, PAGE, tmp_path / "artifacts", TIMEOUT)
    assert f"{COMMAND} {run_dir}" in texts(at)
    assert not any(f["data"][0].get("y") == [c.title for c in CORRUPTIONS] for f in figures(at))


def test_a_damaged_report_is_its_message_not_a_traceback(monkeypatch, tmp_path, trained_run):
    run_dir = mirror_run(trained_run, tmp_path / "artifacts")
    report_path(run_dir).write_text('{"schema_version": 1, "corruptions": ')
    at = open_page(monkeypatch, PAGE, tmp_path / "artifacts", TIMEOUT)  # open_page fails on an exception
    (error,) = [e.value for e in at.error]
    assert "robustness.json is damaged or not a robustness report" in error and COMMAND in error
    assert "Settings against validation accuracy" in texts(at)  # the page went on after the section
