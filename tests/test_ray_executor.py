"""The queue's executors: remote jobs' liveness and lease (no Ray needed), and the Ray executor on a local Ray
instance started by the test (two real tiny jobs to success, a third cancelled)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from core.access.roles import LOCAL_ADMIN
from core.config import RunConfig
from core.jobs.queue import REMOTE_DIED, REMOTE_STALE_SECONDS, JobQueue
from core.store.runs import RunStore, open_run


def tiny(npz: Path, seed: int, **changes) -> RunConfig:
    return RunConfig(**{**dict(data=str(npz), size=28, arch="resnet18", weights="none", epochs=1, batch_size=32,
                               limit_train=64, seed=seed, bn_recalibration_batches=2), **changes})


def wait_for(predicate, timeout: float, queue: JobQueue, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        queue.tick()
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LostEngine:
    """An executor whose engine went away after taking the job: it submits nothing and never vouches (what the
    queue sees when `python -m core worker --ray` is killed)."""

    name = "ray"

    def default_concurrency(self) -> int:
        return 1

    def submit(self, queue: JobQueue, job_id: int) -> None:
        pass

    def reap(self, queue: JobQueue) -> None:
        queue.set_executor_lease(self.name, "lost")


def test_a_remote_job_is_not_reaped_by_pid_and_is_settled_once_nobody_vouches_for_it(tmp_path, tiny_npz):
    store = RunStore(tmp_path / "runs")
    remote = JobQueue(store, LostEngine())
    first, second = remote.submit_many([tiny(tiny_npz, 1), tiny(tiny_npz, 2)], LOCAL_ADMIN)
    assert remote.tick() == [first]
    app = JobQueue(store)  # the app's queue: local executor
    assert app.executor_lease()["name"] == "ray"
    app.set_max_concurrent(2, LOCAL_ADMIN)
    assert app.tick() == []  # the executor holds the queue: the app starts nothing, though a slot is free
    job = app.get(first)
    assert (job.status, job.executor, job.pid, job.alive) == ("running", "ray", None, True)  # no pid, yet alive
    app._update(first, heartbeat=time.time() - REMOTE_STALE_SECONDS - 1)
    remote.set_executor_lease(None)  # the worker is gone: its lease lapses
    app._reap()
    job = app.get(first)
    assert (job.status, job.error, job.alive) == ("failed", REMOTE_DIED, False)
    assert app.executor_lease() is None and app._claim_next() == second  # the app's queue takes over


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_two_jobs_run_as_ray_tasks_and_a_third_is_cancelled(tmp_path, tiny_npz, ray_local):
    from core.jobs.ray_executor import RayExecutor

    store = RunStore(tmp_path / "runs")
    executor = RayExecutor(cpus_per_job=1)
    assert executor.resources() == {"num_cpus": 1, "max_retries": 0}  # no GPU in this instance
    queue = JobQueue(store, executor)
    assert queue.max_concurrent == 2  # the cluster's 2 CPUs, one each
    queue.set_max_concurrent(3, LOCAL_ADMIN)  # so the third task waits inside Ray for a CPU
    ids = queue.submit_many([tiny(tiny_npz, s) for s in (1, 2, 3)], LOCAL_ADMIN)
    assert queue.tick() == ids
    assert all((j.executor, j.pid) == ("ray", None) for j in map(queue.get, ids))
    JobQueue(store).cancel(ids[2], LOCAL_ADMIN)  # as the app does: the flag in SQLite; the executor forwards it
    wait_for(lambda: queue.get(ids[2]).status == "cancelled", 120, queue, "the third job cancelled")
    wait_for(lambda: not executor.tasks, 600, queue, "the two jobs' tasks to end")
    jobs = [queue.get(i) for i in ids[:2]]
    assert [j.status for j in jobs] == ["succeeded", "succeeded"], [j.error or j.log_tail for j in jobs]
    for job in jobs:
        assert open_run(job.run_path).run_id == job.run_id
        log = queue.log_path(job.id).read_text()
        assert f"ray: job {job.id} on " in log and "device: " in log  # the task's line, then the job's own
    executor.close(queue)
    assert queue.executor_lease() is None  # the app's queue may start jobs again


def test_the_local_queue_never_imports_ray(tmp_path):
    import subprocess

    code = ("import sys; from core.jobs.queue import JobQueue, worker; from core.store.runs import RunStore; "
            f"worker(RunStore({str(tmp_path / 'runs')!r}), once=True); assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
