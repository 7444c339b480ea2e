"""core.inference.precompute on the real tiny trained run: every step's file written once, a run whose data is
gone skipped with its message, one background task per run and step, one model load for concurrent callers.

The run is mirrored into temporary stores (small files copied, the model linked), so the shared fixture's
folder never receives derived files."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from conftest import mirror_run

from core import tasks
from core.inference import precompute
from core.progress import PhaseTimes

STEP_FILES = {name: step.file for name, step in precompute.STEPS.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_run) -> Path:
    return mirror_run(Path(trained_run), tmp_path_factory.mktemp("precompute-artifacts"))


def test_the_model_loads_once_for_concurrent_callers(run):
    precompute.forget_model(run)
    start, got = threading.Barrier(3), []

    def ask() -> None:
        start.wait()
        got.append(precompute.classifier(run))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(got) == 3 and got[0] is got[1] is got[2]  # two loads would give two objects
    assert precompute.loaded(run) is got[0] and precompute.classifier(run.parent / run.name) is got[0]
    assert PhaseTimes.in_artifacts(run.parent.parent).has("loading/resnet18/28")  # measured once loaded


def test_step_task_is_one_task_for_every_caller(run):
    first = precompute.step_task(run, "ood_stats")
    second = precompute.step_task(run.parent / ".." / run.parent.name / run.name, "ood_stats")  # same run
    assert first is second
    phases = []
    while first.running:  # what the page's bar shows meanwhile
        phases.append(first.current().text())
        time.sleep(0.05)
    assert any(p.startswith("Measuring · the features of the run's training images") for p in phases), phases
    stats = tasks.wait(first, timeout=300).result
    assert first.done and stats.threshold > 0 and stats.test_rate is not None
    assert (run / STEP_FILES["ood_stats"]).is_file()
    # what it took is the next expectation for runs like this one
    assert PhaseTimes.in_artifacts(run.parent.parent).has("ood_stats/resnet18/28")
    assert precompute.step_task(run, "ood_stats") is first  # done: kept, not run again


def test_precompute_all_writes_every_file_once(run):
    seen: list[tuple[str, float]] = []
    assert precompute.precompute_all(run, lambda title, f: seen.append((title, f))) == {}
    assert all((run / f).is_file() for f in STEP_FILES.values()), sorted(p.name for p in run.iterdir())
    assert seen[-1] == ("done", 1.0) and [f for _, f in seen] == sorted(f for _, f in seen)
    written = {f: (run / f).stat().st_mtime_ns for f in STEP_FILES.values()}
    again: list[tuple[str, float]] = []
    assert precompute.precompute_all(run, lambda title, f: again.append((title, f))) == {}
    assert again == [("done", 1.0)]  # nothing left to do
    assert {f: (run / f).stat().st_mtime_ns for f in STEP_FILES.values()} == written
    # a step whose file is there is read back without loading the model
    precompute.forget_model(run)
    assert precompute.run_step(run, "test_predictions") is not None and precompute.loaded(run) is None


def test_a_run_whose_data_is_gone_is_skipped_with_its_message(tmp_path, trained_run):
    run = mirror_run(Path(trained_run), tmp_path / "artifacts")
    (run / STEP_FILES["faithful_maps"]).unlink()  # the fixture's own measurement (conftest): none here
    gone = str(tmp_path / "gone.npz")
    for name, keys in (("metrics.json", ("dataset", "source")), ("config.json", ("data",))):
        doc = json.loads((run / name).read_text())
        (doc[keys[0]] if len(keys) == 2 else doc)[keys[-1]] = gone
        (run / name).write_text(json.dumps(doc))
    skipped = precompute.precompute_all(run)
    assert set(skipped) == set(STEP_FILES), skipped
    assert all("gone.npz" in m or "not on this machine" in m for m in skipped.values()), skipped
    assert not [f for f in STEP_FILES.values() if (run / f).exists()]
    assert precompute.loaded(run) is None  # no model loaded to find out that the data is gone
    # a page asking for the step gets the message, and does not restart it on every rerun
    task = tasks.wait(precompute.step_task(run, "ood_stats", retry=False), timeout=60)
    assert task.failed and "not on this machine" in task.error
    assert precompute.step_task(run, "ood_stats", retry=False) is task  # kept, with its message
    again = precompute.step_task(run, "ood_stats")  # "Try again": a new task
    assert again is not task and tasks.wait(again, timeout=60).failed


def test_a_job_prepares_the_steps_its_server_names(monkeypatch):
    """$CELLSCOPE_JOB_PRECOMPUTE: every step but the feature map by default, a named subset, none, and a typo
    is an error that names the real steps (a job then prepares the default ones: core.jobs.queue.precompute)."""
    from core.errors import UserFacingError

    monkeypatch.delenv(precompute.JOB_STEPS_ENV, raising=False)
    assert precompute.job_steps() == precompute.default_job_steps()
    assert precompute.default_job_steps() == tuple(n for n in precompute.STEPS if n != "embedding_map")
    monkeypatch.setenv(precompute.JOB_STEPS_ENV, " ood_stats, calibration ")
    assert precompute.job_steps() == ("ood_stats", "calibration")
    monkeypatch.setenv(precompute.JOB_STEPS_ENV, "none")
    assert precompute.job_steps() == ()
    monkeypatch.setenv(precompute.JOB_STEPS_ENV, "ood_stats,faithfull_maps")
    with pytest.raises(UserFacingError, match="faithfull_maps.*faithful_maps"):
        precompute.job_steps()
