"""The job runner with real job processes training tiny real models."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from core.access.roles import LOCAL_ADMIN
from core.config import RunConfig
from core.inference import precompute
from core.jobs import jobdb, liveness
from core.jobs.queue import JobError, JobQueue
from core.jobs.sweeps import times_key
from core.progress import PhaseTimes
from core.store.runs import RunStore, open_run

pytestmark = pytest.mark.slow


def tiny_config(npz: Path, **changes) -> RunConfig:
    base = dict(data=str(npz), size=28, arch="resnet18", weights="none", epochs=1, batch_size=32,
                limit_train=64, seed=3, bn_recalibration_batches=2)
    return RunConfig(**{**base, **changes})


def wait_for(predicate, timeout: float, queue: JobQueue | None = None, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if queue is not None:
            queue.tick()
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_queue_survives_restart_and_runs_one_at_a_time(tmp_path, tiny_npz):
    store = RunStore(tmp_path / "runs")
    first = JobQueue(store)
    assert first.max_concurrent == 1
    ids = first.submit_many([tiny_config(tiny_npz, seed=1), tiny_config(tiny_npz, seed=2)], LOCAL_ADMIN, sweep="s")
    assert [first.get(i).status for i in ids] == ["queued", "queued"]
    del first  # "the app restarts": a fresh queue object over the same index finds the queued jobs

    queue = JobQueue(RunStore(tmp_path / "runs"))
    started = queue.tick()
    assert started == [ids[0]]
    assert queue.get(ids[1]).status == "queued"
    wait_for(lambda: all(queue.get(i).status in ("succeeded", "failed") for i in ids), 600, queue, "both jobs")
    jobs = [queue.get(i) for i in ids]
    assert [j.status for j in jobs] == ["succeeded", "succeeded"], [j.error or j.log_tail for j in jobs]
    assert jobs[1].started >= jobs[0].finished - 1.0, "with max 1 concurrent the second waits for the first"
    for job in jobs:
        run = open_run(job.run_path)
        assert run.run_id == job.run_id and run.metrics["epochs_run"] == 1
    assert {r["run_id"] for r in store.list_runs()} == {j.run_id for j in jobs}
    assert "run complete" in (store.runs_dir / jobs[0].run_id / "train.log").read_text()
    # the job's last phase prepared what the run's pages need, and its phase times were measured
    for job in jobs:
        assert job.phase == "done" and job.progress.text() == "Done"
        assert all(precompute.ready(job.run_path, step) for step in ("test_predictions", "ood_stats"))
        assert set(open_run(job.run_path).metrics["phase_seconds"]) == {"loading", "training", "validating",
                                                                        "testing"}
    times = PhaseTimes.in_artifacts(store.runs_dir.parent)
    key = times_key(jobs[0].config)
    assert all(times.expected(key, phase) > 0 for phase in ("loading", "training", "validating", "testing",
                                                            "publishing", "precomputing"))


def test_cancel_then_resume_from_saved_epoch(tmp_path, tiny_npz):
    store = RunStore(tmp_path / "runs")
    queue = JobQueue(store)
    job_id = queue.submit(tiny_config(tiny_npz, epochs=3, limit_train=256, batch_size=16), LOCAL_ADMIN)
    queue.tick()
    # let one epoch complete (its checkpoint is written), then cancel during the second
    wait_for(lambda: len(queue.history(queue.get(job_id))) >= 1, 600, None, "first epoch")
    pid = queue.get(job_id).pid
    queue.cancel(job_id, LOCAL_ADMIN)
    wait_for(lambda: queue.get(job_id).status == "cancelled", 30, queue, "cancelled status")
    assert not liveness.alive(pid, None)  # cancelled (and its slot free) only once its process is gone
    job = queue.get(job_id)
    assert job.resumable and job.run_path is None
    epochs_done = len(queue.history(job))
    assert 1 <= epochs_done < 3
    assert store.list_runs() == []  # a cancelled run is never listed as complete

    queue.resume(job_id, LOCAL_ADMIN)
    wait_for(lambda: queue.get(job_id).status in ("succeeded", "failed"), 600, queue, "resumed job")
    job = queue.get(job_id)
    assert job.status == "succeeded", job.error or job.log_tail
    run = open_run(job.run_path)
    history = run.history()
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert run.metrics["epochs_run"] == 3
    log = (run.path / "train.log").read_text()
    assert f"resuming after epoch {epochs_done}" in log


def test_killed_process_is_marked_failed_and_store_intact(tmp_path, tiny_npz, trained_run):
    runs_dir = Path(trained_run).parent
    store = RunStore(runs_dir)
    before = {r["run_id"] for r in store.list_runs()}
    assert before  # the shared fixture run
    queue = JobQueue(store)
    job_id = queue.submit(tiny_config(tiny_npz, epochs=50, limit_train=256, batch_size=16), LOCAL_ADMIN)
    queue.tick()
    wait_for(lambda: queue.get(job_id).batch >= 1, 600, None, "training to start")
    os.killpg(queue.get(job_id).pid, signal.SIGKILL)
    wait_for(lambda: queue.get(job_id).status == "failed", 20, queue, "failed status")
    job = queue.get(job_id)
    assert "ended without reporting" in job.error
    assert "run " in (job.log_tail or "")  # the log tail shows what the job printed
    assert {r["run_id"] for r in store.list_runs()} == before
    for run_id in before:
        open_run(runs_dir / run_id)  # still complete and readable
    assert store.reindex() == len(before)


def test_queue_commands_validate(tmp_path, tiny_npz):
    queue = JobQueue(RunStore(tmp_path / "runs"))
    job_id = queue.submit(tiny_config(tiny_npz), LOCAL_ADMIN)
    with pytest.raises(JobError, match="only failed or cancelled"):
        queue.resume(job_id, LOCAL_ADMIN)
    with pytest.raises(JobError, match="cancel it first"):
        queue.delete(job_id, LOCAL_ADMIN)
    queue.cancel(job_id, LOCAL_ADMIN)  # a queued job is cancelled without a process
    assert queue.get(job_id).status == "cancelled"
    assert not queue.get(job_id).resumable  # nothing was trained, so nothing to resume
    queue.delete(job_id, LOCAL_ADMIN)
    with pytest.raises(JobError, match="no job"):
        queue.get(job_id)
    with pytest.raises(JobError):
        queue.set_max_concurrent(0, LOCAL_ADMIN)
    queue.set_max_concurrent(2, LOCAL_ADMIN)
    assert JobQueue(RunStore(tmp_path / "runs")).max_concurrent == 2


OLD_JOBS_TABLE = """CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, owner TEXT NOT NULL, config_json TEXT NOT NULL,
    created REAL NOT NULL, sweep TEXT, run_id TEXT, run_path TEXT, pid INTEGER, pid_start REAL, started REAL,
    finished REAL, heartbeat REAL, epoch INTEGER NOT NULL DEFAULT 0, epochs INTEGER NOT NULL DEFAULT 0,
    batch INTEGER NOT NULL DEFAULT 0, batches INTEGER NOT NULL DEFAULT 0, fraction REAL NOT NULL DEFAULT 0,
    images_per_second REAL, eta_seconds REAL, error TEXT, log_tail TEXT, cancel_requested_at REAL)"""


def test_an_older_jobs_database_gains_the_phase_columns_and_keeps_its_jobs(tmp_path, tiny_npz):
    import sqlite3

    store = RunStore(tmp_path / "runs")
    path = jobdb.jobs_path(tmp_path)
    with sqlite3.connect(path) as db:  # a queue written before jobs had phases, with a job half-way
        db.execute(OLD_JOBS_TABLE)
        db.execute(jobdb.SETTINGS_TABLE_SQL)
        db.execute("INSERT INTO settings VALUES (?, '1')", (jobdb.MIGRATED_KEY,))
        db.execute("INSERT INTO jobs (status, owner, config_json, created, epoch, epochs, batch, batches, fraction,"
                   " eta_seconds, run_id) VALUES ('failed', 'local', ?, 1.0, 2, 3, 4, 8, 0.5, 120.0, "
                   "'20250101-000000-abcdef')", (tiny_config(tiny_npz).to_json(),))
    queue = JobQueue(store)
    with sqlite3.connect(path) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    assert {"phase", "detail"} <= columns
    job = queue.get(1)
    assert (job.status, job.phase, job.batch, job.config) == ("failed", None, 4, tiny_config(tiny_npz))
    JobQueue(store)  # opening it again adds nothing twice
    # resumed: it starts again from "loading", the previous attempt's batch 4/8 and time left cleared
    queue.resume(1, LOCAL_ADMIN)
    assert queue._claim_next() == 1
    job = queue.get(1)
    assert (job.phase, job.detail, job.epoch, job.batch, job.batches, job.fraction, job.eta_seconds) == (
        "loading", "", 0, 0, 0, 0.0, None)
    assert job.progress.text() == "Loading"
