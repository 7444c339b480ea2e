"""Run the queue's jobs on a Ray cluster: `python -m core worker --ray ADDRESS`.

The queue stays what it is (core.jobs.queue: SQLite, states, cancel, resume); only where a claimed job's
process runs changes. `RayExecutor.submit` hands the job to Ray as a task with its resources (1 GPU when the
cluster has GPUs, else `cpus_per_job` CPUs); the task (`supervise`) runs the same job body as a local job
(`python -m core job-exec ID`, in a process of its own, so each job starts with a fresh TensorFlow) on
whichever node Ray picks, its output appended to the job's log. Ray sets CUDA_VISIBLE_DEVICES for a task
that asked for a GPU, so the job trains on the GPU Ray gave it.

What every node must share (README, "A cluster through Ray"): the project at the same path, with the same
Python environment, and the artifacts folder (runs, job logs, jobs.sqlite), on a filesystem all nodes see.

Status, progress and cancel go through the queue's SQLite as for a local job: the job's process writes its
progress there, and a cancel sets the flag its `should_cancel` reads. This executor also forwards a cancel
to Ray (`ray.cancel`), which drops a task that has not started yet and interrupts one that has (its
supervisor then sends the job's process SIGTERM, as a local cancel does, and SIGKILL after the grace).

Liveness: a Ray job has no local pid. Its row says `executor = "ray"`, and this executor vouches for it
(refreshes its heartbeat) at every tick while its task is pending or running, and settles it as soon as
the task ends (the job's process has usually recorded the outcome itself). If this worker stops, Ray ends
the tasks it owns; nobody vouches for their jobs any more, and any tick settles them as failed (resumable)
after core.jobs.queue.REMOTE_STALE_SECONDS. While this executor ticks it holds the queue's lease, so the app
(which ticks with the local executor) starts no jobs of its own meanwhile.

Ray is imported here only, and only when a RayExecutor is made: the app and the local queue never need it.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from core.jobs.queue import CANCEL_GRACE_SECONDS, DIED, JobQueue
from core.store.runs import PROJECT_ROOT

NAME = "ray"
POLL_SECONDS = 0.5
CLOSE_WAIT_SECONDS = 20.0  # how long `close` waits for the interrupted tasks to end
PASSED_ENV_PREFIXES = ("CELLSCOPE_", "TF_")  # the driver's settings a job needs on any node


# Run in the job's process before the job: die with the Ray task that started it (PR_SET_PDEATHSIG, kept
# across exec; Linux), then `python -m core job-exec ...`. A prelude rather than Popen's preexec_fn, which is
# unsafe in a threaded process such as a Ray worker.
CHILD_PRELUDE = """
import ctypes, os, runpy, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit("ray: the task that started this job is gone")
sys.argv = ["python -m core", *sys.argv[2:]]
runpy.run_module("core", run_name="__main__", alter_sys=True)
"""


def supervise(job_id: int, runs_dir: str, project_root: str, env: dict[str, str], grace: float) -> int:
    """The Ray task: run job `job_id`'s process on this node and wait for it; its exit status.

    A Ray cancel raises KeyboardInterrupt here: the job's process gets SIGTERM (it stops at once, or after the
    checkpoint write in progress) and SIGKILL `grace` seconds later. If this worker dies, the job's process
    gets SIGTERM from the kernel, so no training goes on unseen."""
    log_path = os.path.join(os.path.dirname(runs_dir), "jobs", f"{job_id}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"ray: job {job_id} on {socket.gethostname()} (Python {platform.python_version()}), "
                  f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_PRELUDE, str(os.getpid()), "job-exec", str(job_id), "--runs-dir",
             runs_dir, "--no-next"],
            cwd=project_root, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:  # polled, so that Ray's KeyboardInterrupt is raised between two waits
            try:
                return proc.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


class RayExecutor:
    """The queue's jobs as Ray tasks. `address`: a running cluster ("auto", "ray://host:10001", host:port);
    when Ray is already initialised in this process (a test's local instance) that connection is used."""

    name = NAME

    def __init__(self, address: str | None = None, cpus_per_job: int = 1, gpus_per_job: int | None = None):
        import ray  # noqa: PLC0415  (only when the Ray executor is chosen)

        self.ray = ray
        # `supervise` travels by value (it needs only the standard library), so a Ray worker need not have the
        # project on its import path to start it; the job's own process runs in the project folder
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        if cpus_per_job < 1:
            raise ValueError("cpus_per_job must be at least 1")
        if not ray.is_initialized():
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        self.address = address or "local"
        resources = ray.cluster_resources()
        self.cluster_gpus = int(resources.get("GPU", 0))
        self.cluster_cpus = int(resources.get("CPU", 0))
        self.gpus_per_job = (1 if self.cluster_gpus else 0) if gpus_per_job is None else gpus_per_job
        self.cpus_per_job = cpus_per_job
        self._remote = ray.remote(supervise)
        self.tasks: dict[int, Any] = {}  # job id -> ObjectRef of its task
        self.cancelled: set[int] = set()

    def resources(self) -> dict[str, Any]:
        """What each job's task asks Ray for (never retried: a job failed is the user's to resume)."""
        out: dict[str, Any] = {"num_cpus": self.cpus_per_job, "max_retries": 0}
        if self.gpus_per_job:
            out["num_gpus"] = self.gpus_per_job
        return out

    def default_concurrency(self) -> int:
        """How many jobs at once unless the admin set a limit: as many as the cluster holds."""
        if self.gpus_per_job:
            return max(1, self.cluster_gpus // self.gpus_per_job)
        return max(1, self.cluster_cpus // self.cpus_per_job)

    def describe(self) -> str:
        per_job = f"{self.gpus_per_job} GPU + {self.cpus_per_job} CPU" if self.gpus_per_job \
            else f"{self.cpus_per_job} CPU"
        return (f"Ray at {self.address}: {self.cluster_cpus} CPUs, {self.cluster_gpus} GPUs; {per_job} per job, "
                f"up to {self.default_concurrency()} at once")

    # -- the queue's hooks ------------------------------------------------------------------------------
    def submit(self, queue: JobQueue, job_id: int) -> None:
        env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}
        env.update(CELLSCOPE_ARTIFACTS=str(queue.store.runs_dir.parent), PYTHONUNBUFFERED="1",
                   TF_FORCE_GPU_ALLOW_GROWTH="true")
        env.pop("CUDA_VISIBLE_DEVICES", None)  # Ray's, on the node
        ref = self._remote.options(name=f"cellscope-job-{job_id}", **self.resources()).remote(
            job_id, str(queue.store.runs_dir), str(PROJECT_ROOT), env, CANCEL_GRACE_SECONDS)
        self.tasks[job_id] = ref
        queue._update(job_id, heartbeat=time.time())

    def reap(self, queue: JobQueue) -> None:
        """Hold the queue's lease; settle the jobs whose task ended; forward cancels; vouch for the rest."""
        queue.set_executor_lease(self.name, self.address)
        if not self.tasks:
            return
        ready, _ = self.ray.wait(list(self.tasks.values()), num_returns=len(self.tasks), timeout=0)
        ended = set(ready)
        now = time.time()
        for job_id, ref in list(self.tasks.items()):
            if ref in ended:
                del self.tasks[job_id]
                self.cancelled.discard(job_id)
                self._settle(queue, job_id, ref)
                continue
            job = queue.get(job_id)
            if job.status != "running" or (job.cancel_requested and job_id not in self.cancelled):
                self.ray.cancel(ref)  # a pending task never starts; a running one is interrupted
                self.cancelled.add(job_id)
            if job.status == "running":
                queue._update(job_id, heartbeat=now)

    def _settle(self, queue: JobQueue, job_id: int, ref: Any) -> None:
        error = None
        try:
            code = self.ray.get(ref)
            if code:
                error = f"the job's process exited with status {code}; see the log tail"
        except self.ray.exceptions.TaskCancelledError:
            pass
        except self.ray.exceptions.RayError as e:  # the node or worker was lost, or the task raised
            error = f"its Ray task failed: {e.__class__.__name__}: {str(e).strip().splitlines()[-1][:300]}"
        job = queue.get(job_id)
        if job.status != "running":  # the job's process recorded its outcome (or a queued cancel won)
            return
        if queue._recover_published(job, ("running",)):
            return
        tail = queue.log_tail(job_id)
        if job.cancel_requested:
            queue._finish(job_id, "running", "cancelled", log_tail=tail)
        else:
            queue._finish(job_id, "running", "failed", log_tail=tail, error=error or DIED)

    def close(self, queue: JobQueue) -> None:
        """Stop: interrupt the tasks still pending or running (their jobs stop as cancelled ones do, keeping
        their checkpoints, and are recorded failed: resumable), then give the queue's lease back."""
        for ref in self.tasks.values():
            self.ray.cancel(ref)
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        while self.tasks and time.monotonic() < deadline:
            for job_id, ref in list(self.tasks.items()):
                if self.ray.wait([ref], timeout=0)[0]:
                    del self.tasks[job_id]
                    job = queue.get(job_id)
                    if job.status == "running" and not queue._recover_published(job, ("running",)):
                        status = "cancelled" if job.cancel_requested else "failed"
                        queue._finish(job_id, "running", status, log_tail=queue.log_tail(job_id),
                                      **({} if status == "cancelled" else
                                         {"error": "the Ray worker stopped while it ran; resume it"}))
            time.sleep(POLL_SECONDS)
        queue.set_executor_lease(None)
