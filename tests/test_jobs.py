"""The job runner with real job processes training tiny real models."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from core.access.roles import LOCAL_ADMIN
from core.config import RunConfig
from core.jobs import liveness
from core.jobs.queue import JobError, JobQueue
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
