"""Training jobs: a queue in its own SQLite database (core.jobs.jobdb), each job trained in its own OS process.

States: queued -> running -> succeeded | failed | cancelled. Every status change is compare-and-set from the
state(s) it leaves (`_transition`), so two processes racing (a reaper and a job that is finishing) can never
overwrite each other's outcome. A job's process writes its progress (epoch, batch, images/s, ETA) and a
heartbeat; its stdout/stderr go to `artifacts/jobs/<id>.log`. Anyone may call `JobQueue.tick()` (the Train
page's live view, `python -m core jobs`, the headless `python -m core worker`, and every job process that
succeeds or fails, as it ends; a cancelled one just exits, and the next tick settles it): it settles jobs
whose process is gone (a published run: succeeded; a cancel: cancelled; else failed, with the log tail) and
starts queued jobs in order while fewer than `max_concurrent` run. Liveness is the pid and the process's
creation time (core.jobs.liveness, psutil). The queue survives restarts of the app, and no job stays
"running" after its process is gone.

A job reports its progress through core.progress: its phase (loading, training, validating, testing,
publishing, precomputing), a detail line ("epoch 2/5 · batch 4/16 · 820 images/s"), the fraction done and the
time left, from the plan of core.jobs.sweeps.phase_plan (the preview's estimate) revised by its own measured
pace. Every (re)start of a job's process starts from "loading" with the previous attempt's progress cleared.

Jobs belong to the user who submitted them (core.access.roles): submitting needs the train role and, except
for admins, at most ACTIVE_JOBS_PER_USER queued or running jobs; cancel, resume and delete need the train
role on one's own job (admins: any); the concurrent-job limit is the admin's.

Cancel records when it was asked and sends SIGTERM to the job's process group; the job stops at the next
Python instruction, except inside a checkpoint or publish write, which it finishes first (core.store.io
.uninterrupted). It keeps its last completed epoch's checkpoint (so it can be resumed). The job stays
"running" (cancel requested) and holds its slot until its process is gone; a process still there
CANCEL_GRACE_SECONDS after the cancel is killed. `cancel` itself waits up to CANCEL_SETTLE_SECONDS for the
process to go and settles it at once when it has, so the usual cancel reads "cancelled" within seconds.

GPUs (core.devices): on a machine with N GPUs the local queue runs up to N jobs at once (fewer when the admin's
limit says so), each pinned to a GPU no other running job has (`gpu` column; CUDA_VISIBLE_DEVICES in its
process's environment). CPU-only machines are unchanged.

Executors: the default runs each job as a local process. `JobQueue(store, executor)` hands each claimed job
to another engine instead (core.jobs.ray_executor: a Ray task running the same `job-exec` body on a node of
the cluster). Such a job's row says so (`executor`), it has no local pid, and its liveness is its heartbeat:
the executor that holds the task refreshes it every tick while the task is pending or running, and settles
the job as soon as the task ends; when nobody refreshes it for REMOTE_STALE_SECONDS (that executor stopped),
any tick settles it like a job whose process died. While an executor holds the queue's lease
(`settings.executor_lease`, refreshed every tick), local tickers (the app, job processes) start no jobs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from core import devices
from core.access.roles import ACTIVE_JOBS_PER_USER, AccessDenied, User, require
from core.config import RunConfig
from core.errors import UserFacingError
from core.jobs import jobdb, liveness
from core.progress import Progress, Tracker
from core.store.io import RUN_ID_PATTERN, interrupt_or_defer
from core.store.runs import INCOMPLETE, PROJECT_ROOT, RunStore

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
# From the cancel (not the last heartbeat): long enough for a normal run's validation, checkpoint, test pass and
# publish, during which no heartbeat comes; a process still there after it is killed.
CANCEL_GRACE_SECONDS = 60.0
KILL_WAIT_SECONDS = 2.0  # after SIGKILL, how long a tick waits to see the process gone
CANCEL_SETTLE_SECONDS = 3.0  # how long `cancel` waits for the process to stop before it returns
SPAWN_GRACE_SECONDS = 30.0
PROGRESS_INTERVAL = 1.0
LOG_TAIL_LINES = 30
DIED = ("the training process ended without reporting (killed, out of memory, or the machine restarted); "
        "see the log tail")
REMOTE_STALE_SECONDS = 60.0  # a remote job nobody has vouched for this long is settled as gone
EXECUTOR_LEASE_SECONDS = 30.0  # how long an executor's claim on the queue lasts without a tick
REMOTE_DIED = ("its executor stopped vouching for it (the `worker --ray` that ran it stopped, or its node was "
               "lost); see the log tail")
_COLUMN = re.compile(r"^[a-z_]+\Z")


class JobError(UserFacingError):
    pass


@dataclass(frozen=True)
class Job:
    id: int
    status: str
    owner: str
    config: RunConfig
    created: float
    sweep: str | None
    run_id: str | None
    run_path: str | None
    pid: int | None
    pid_start: float | None
    started: float | None
    finished: float | None
    heartbeat: float | None
    epoch: int
    epochs: int
    batch: int
    batches: int
    fraction: float
    images_per_second: float | None
    eta_seconds: float | None
    error: str | None
    log_tail: str | None
    cancel_requested_at: float | None
    phase: str | None = None  # core.progress phase of a running job (None: a job from before phases)
    detail: str | None = None
    gpu: int | None = None  # the GPU (core.devices index) a local job was pinned to; None: the CPU, or remote
    executor: str | None = None  # None: a local process; "ray": a Ray task (liveness by heartbeat)

    @property
    def progress(self) -> Progress:
        """Where a queued or running job stands, as core.progress draws it."""
        if self.status == "queued":
            return Progress("queued", 0.0, None, "")
        return Progress(self.phase or "loading", self.fraction, self.eta_seconds, self.detail or "")

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_requested_at is not None

    @property
    def resumable(self) -> bool:
        return self.status in ("failed", "cancelled") and self.run_id is not None and self.run_path is None

    @property
    def alive(self) -> bool:
        """Whether this job's process is still there (a remote job: while running, whether its executor vouched for
        it lately; its executor settles it once its task has ended)."""
        if self.executor is not None:
            return self.status == "running" and self.heartbeat is not None and \
                time.time() - self.heartbeat < REMOTE_STALE_SECONDS
        return liveness.alive(self.pid, self.pid_start)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        d = dict(row)
        d["config"] = RunConfig.from_dict(json.loads(d.pop("config_json")))
        return cls(**d)


# what a job's progress columns hold before its process reports: each (re)start begins here
FRESH_PROGRESS: dict[str, Any] = {"phase": "loading", "detail": "", "epoch": 0, "batch": 0, "batches": 0,
                                  "fraction": 0.0, "images_per_second": None, "eta_seconds": None}


class JobQueue:
    """The jobs database beside the run index. Every failure to use it is a JobStoreError (a StoreError) naming
    the file, with its own recovery."""

    def __init__(self, store: RunStore | None = None, executor: Any = None):
        self.store = store or RunStore()
        self.executor = executor  # None: local processes; else e.g. core.jobs.ray_executor.RayExecutor
        artifacts = self.store.runs_dir.parent
        self.db_path = jobdb.jobs_path(artifacts)
        self.log_dir = artifacts / "jobs"
        with jobdb.jobs_errors(self.db_path):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if not self.db_path.exists():
                jobdb.migrate_from_index(self.db_path, self.store.index_path)
            jobdb.create(self.db_path)
        with self._db() as db:
            if db.execute("SELECT 1 FROM settings WHERE key=?", (jobdb.MIGRATED_KEY,)).fetchone() is None:
                if jobdb.migrate_from_index(self.db_path, self.store.index_path):
                    db.execute("INSERT OR REPLACE INTO settings VALUES (?, '1')", (jobdb.MIGRATED_KEY,))

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """An autocommit connection, closed after the block; SQLite and file errors as JobStoreError."""
        with jobdb.jobs_errors(self.db_path), closing(jobdb.connect(self.db_path)) as db:
            yield db

    @staticmethod
    def statuses_by_run(store: RunStore) -> dict[str, str]:
        """run_id -> status of the latest job that trained it, read without creating the queue (a store whose
        queue was never used has no jobs database: then empty)."""
        path = jobdb.jobs_path(store.runs_dir.parent)
        if not path.is_file():
            return {}
        with jobdb.jobs_errors(path), closing(sqlite3.connect(path, timeout=30)) as db:
            rows = db.execute("SELECT run_id, status FROM jobs WHERE run_id IS NOT NULL ORDER BY id").fetchall()
        return {run_id: status for run_id, status in rows}

    # -- settings -------------------------------------------------------------------------------------
    @property
    def max_concurrent(self) -> int:
        with self._db() as db:
            row = db.execute("SELECT value FROM settings WHERE key='max_concurrent'").fetchone()
        if row:
            return int(row[0])
        if self.executor is not None:
            return self.executor.default_concurrency()
        return max(1, len(devices.placement_gpus()))  # one job per GPU, else one at a time

    def set_max_concurrent(self, n: int, user: User) -> None:
        require(user, "admin", what="set the concurrent-job limit")
        if not 1 <= int(n) <= 16:
            raise JobError("max concurrent jobs must be 1..16")
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO settings VALUES ('max_concurrent', ?)", (str(int(n)),))

    # -- queries ----------------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id}")
        return Job.from_row(row)

    def list(self, statuses: Iterable[str] | None = None, limit: int = 500) -> list[Job]:
        query, args = "SELECT * FROM jobs", []
        if statuses:
            statuses = list(statuses)
            query += f" WHERE status IN ({','.join('?' * len(statuses))})"
            args = statuses
        query += " ORDER BY id DESC LIMIT ?"
        with self._db() as db:
            return [Job.from_row(r) for r in db.execute(query, [*args, limit])]

    def log_path(self, job_id: int) -> Path:
        return self.log_dir / f"{job_id}.log"

    def log_tail(self, job_id: int, lines: int = LOG_TAIL_LINES) -> str:
        path = self.log_path(job_id)
        if not path.is_file():
            return ""
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
        # progress lines end in \r; keep the last state of each line
        rows = [part.split("\r")[-1] for part in text.split("\n")]  # progress lines redraw with \r
        return "\n".join([r for r in rows if r.strip()][-lines:])

    def work_dir(self, job: Job) -> Path | None:
        """The job's run work folder (`runs/.incomplete/<run_id>`), when it has a run id."""
        if not job.run_id or not RUN_ID_PATTERN.match(job.run_id):
            return None
        return self.store.runs_dir / INCOMPLETE / job.run_id

    def history(self, job: Job) -> list[dict[str, float]]:
        """Per-epoch history so far (from the run's work directory, or the finished run)."""
        from core.store.runs import read_history  # noqa: PLC0415

        if job.run_path:
            return read_history(Path(job.run_path))
        work = self.work_dir(job)
        if work is None:
            return []
        # once published (while it precomputes, before the job records its run) the history is in the run
        return read_history(work) or read_history(self.store.runs_dir / work.name)

    # -- commands ---------------------------------------------------------------------------------------
    def submit(self, config: RunConfig, user: User, sweep: str | None = None) -> int:
        return self.submit_many([config], user, sweep)[0]

    def submit_many(self, configs: Iterable[RunConfig], user: User, sweep: str | None = None) -> list[int]:
        """Queue jobs owned by `user`, all or none: a non-admin may have at most ACTIVE_JOBS_PER_USER queued or
        running jobs, each job of a sweep counting."""
        require(user, "train", what="launch training jobs")
        configs = list(configs)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                active = db.execute("SELECT COUNT(*) FROM jobs WHERE owner=? AND status IN (?, ?)",
                                    (user.name, *ACTIVE)).fetchone()[0]
                if not user.is_admin and active + len(configs) > ACTIVE_JOBS_PER_USER:
                    raise AccessDenied(
                        f"{user.name} has {active} job(s) queued or running and may have at most "
                        f"{ACTIVE_JOBS_PER_USER} at once; {len(configs)} more would exceed that. Nothing was "
                        f"queued: wait for some to finish, or cancel some.")
                now, ids = time.time(), []
                for config in configs:
                    cur = db.execute("INSERT INTO jobs (status, owner, config_json, created, sweep, epochs) "
                                     "VALUES ('queued',?,?,?,?,?)",
                                     (user.name, config.to_json(), now, sweep, config.epochs))
                    ids.append(int(cur.lastrowid))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return ids

    def _owned(self, job_id: int, user: User) -> Job:
        job = self.get(job_id)
        require(user, "train", owner=job.owner, what=f"job {job_id}")
        return job

    def cancel(self, job_id: int, user: User) -> None:
        job = self._owned(job_id, user)
        if job.status == "queued":
            now = time.time()
            if self._transition(job_id, "queued", "cancelled", finished=now, cancel_requested_at=now):
                return
            job = self.get(job_id)  # claimed meanwhile: cancel it running
        if job.status != "running":
            raise JobError(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")
        with self._db() as db:  # the grace is counted from the first cancel; a second one changes nothing
            first = db.execute("UPDATE jobs SET cancel_requested_at=? WHERE id=? AND status='running' "
                               "AND cancel_requested_at IS NULL", (time.time(), job_id)).rowcount == 1
        if first and job.alive and job.executor is None:  # a remote job's executor forwards the cancel
            try:
                os.killpg(job.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            # most jobs stop within a second or two: settle it now rather than at the next tick
            if liveness.wait_gone(job.pid, job.pid_start, CANCEL_SETTLE_SECONDS):
                self._reap()

    def resume(self, job_id: int, user: User) -> None:
        job = self._owned(job_id, user)
        if not job.resumable:
            raise JobError(f"job {job_id} is {job.status}; only failed or cancelled jobs can be resumed")
        if job.alive:
            raise JobError(f"job {job_id}'s process is still stopping; resume it in a moment")
        if self._recover_published(job, ("failed", "cancelled")):
            return
        self._transition(job_id, ("failed", "cancelled"), "queued", error=None, finished=None,
                         cancel_requested_at=None, pid=None, pid_start=None, gpu=None, executor=None,
                         **FRESH_PROGRESS)

    def delete(self, job_id: int, user: User) -> None:
        """Remove a finished job, its log and (unless its run was published) its run's work folder."""
        job = self._owned(job_id, user)
        if job.status in ACTIVE:
            raise JobError(f"job {job_id} is {job.status}; cancel it first")
        if job.alive:
            raise JobError(f"job {job_id}'s process is still stopping; delete it in a moment")
        with self._db() as db:
            deleted = db.execute("DELETE FROM jobs WHERE id=? AND status IN (?, ?, ?)", (job_id, *FINISHED)).rowcount
        if not deleted:
            raise JobError(f"job {job_id} changed meanwhile; try again")
        work = self.work_dir(job)
        if work is not None and not job.run_path:
            shutil.rmtree(work, ignore_errors=True)
        self.log_path(job_id).unlink(missing_ok=True)

    # -- scheduling -------------------------------------------------------------------------------------
    def tick(self) -> list[int]:
        """Settle jobs whose process is gone, enforce overdue cancels, start queued jobs. Returns the ids
        started."""
        self._reap()
        from core.jobs.search import drive  # noqa: PLC0415 - Optuna only once a search is running

        drive(self)  # searches: tell the trials whose jobs ended, queue their next trials (core.jobs.search)
        if self.executor is None and self.executor_lease() is not None:
            return []  # an executor (python -m core worker --ray) starts the jobs
        started = []
        while True:
            job_id = self._claim_next()
            if job_id is None:
                break
            if self.executor is not None:
                self.executor.submit(self, job_id)
            else:
                self._spawn(job_id)
            started.append(job_id)
        return started

    def executor_lease(self) -> dict[str, Any] | None:
        """The executor that holds the queue now ({"name", "address", "until"}), or None."""
        with self._db() as db:
            row = db.execute("SELECT value FROM settings WHERE key='executor_lease'").fetchone()
        try:
            lease = json.loads(row[0]) if row else None
        except ValueError:
            return None
        return lease if isinstance(lease, dict) and float(lease.get("until", 0)) > time.time() else None

    def set_executor_lease(self, name: str | None, address: str = "") -> None:
        """Hold the queue for executor `name` for EXECUTOR_LEASE_SECONDS (None: give it back)."""
        with self._db() as db:
            if name is None:
                db.execute("DELETE FROM settings WHERE key='executor_lease'")
                return
            value = json.dumps({"name": name, "address": address, "until": time.time() + EXECUTOR_LEASE_SECONDS})
            db.execute("INSERT OR REPLACE INTO settings VALUES ('executor_lease', ?)", (value,))

    def _reap(self) -> None:
        if self.executor is not None:
            self.executor.reap(self)  # its tasks: settle the ended ones, forward cancels, vouch for the rest
        now = time.time()
        for job in self.list(["running"]):
            if job.pid is None and job.executor is None and now - (job.started or 0) < SPAWN_GRACE_SECONDS:
                continue  # claimed by another ticker a moment ago; its pid is on the way
            alive = job.alive
            if alive and job.executor is None and job.cancel_requested and \
                    now - job.cancel_requested_at > CANCEL_GRACE_SECONDS:
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                alive = not liveness.wait_gone(job.pid, job.pid_start, KILL_WAIT_SECONDS)
            if alive:
                continue
            if self._recover_published(job, ("running",)):
                continue
            tail = self.log_tail(job.id)
            if job.cancel_requested:
                self._finish(job.id, "running", "cancelled", log_tail=tail)
            else:
                self._finish(job.id, "running", "failed", log_tail=tail, error=REMOTE_DIED if job.executor else DIED)

    def _recover_published(self, job: Job, expected: tuple[str, ...]) -> bool:
        """A job whose run is already published (its process died after the rename) is succeeded."""
        run = self.store.published(job.run_id) if job.run_id else None
        if run is None:
            return False
        self._finish(job.id, expected, "succeeded", run_path=str(run.path), fraction=1.0, eta_seconds=0.0,
                     error=None, log_tail=self.log_tail(job.id))
        return True

    def _claim_next(self) -> int | None:
        """Atomically move the oldest queued job to running if a slot is free (a job being cancelled holds its
        slot until its process is gone) and, on a machine with GPUs, pin it to one no running job has."""
        limit = self.max_concurrent
        gpus = devices.placement_gpus() if self.executor is None else []  # a remote engine places its own
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                used = [r[0] for r in db.execute("SELECT gpu FROM jobs WHERE status='running'")]
                row = db.execute("SELECT id FROM jobs WHERE status='queued' ORDER BY id LIMIT 1").fetchone()
                free = [g.index for g in gpus if g.index not in used]
                if len(used) >= limit or row is None or (gpus and not free):
                    db.execute("ROLLBACK")
                    return None
                now = time.time()
                claimed = self._transition(int(row[0]), "queued", "running", db=db, started=now, heartbeat=now,
                                           pid=None, pid_start=None, cancel_requested_at=None,
                                           gpu=free[0] if gpus else None,
                                           executor=self.executor.name if self.executor else None,
                                           **FRESH_PROGRESS)
                db.execute("COMMIT")
                return int(row[0]) if claimed else None
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _spawn(self, job_id: int) -> None:
        env = dict(os.environ)
        env["CELLSCOPE_ARTIFACTS"] = str(self.store.runs_dir.parent)
        env["PYTHONUNBUFFERED"] = "1"
        pinned = self.get(job_id).gpu
        if pinned is not None:  # this GPU alone, with memory growth (core.devices)
            env.update(devices.job_environment(next((g for g in devices.placement_gpus() if g.index == pinned),
                                                    devices.Gpu(pinned, f"GPU {pinned}"))))
        try:
            with open(self.log_path(job_id), "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "core", "job-exec", str(job_id), "--runs-dir",
                     str(self.store.runs_dir)],
                    cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
        except OSError as e:
            self._finish(job_id, "running", "failed", error=f"could not start the training process: {e}")
            return
        started = liveness.start_time(proc.pid)
        self._update(job_id, pid=proc.pid, pid_start=liveness.GONE if started is None else started)

    # -- bookkeeping, used by the job process too ---------------------------------------------------------
    def _transition(self, job_id: int, expected: str | tuple[str, ...], new: str,
                    db: sqlite3.Connection | None = None, **values: Any) -> bool:
        """The one way a job's status changes: UPDATE ... WHERE id=? AND status IN (expected), so a change
        that lost a race to another process changes nothing. Returns whether it happened."""
        if new not in STATES:
            raise ValueError(f"unknown job state {new!r}")
        expected = (expected,) if isinstance(expected, str) else tuple(expected)
        cols = ["status=?", *(f"{self._column(k)}=?" for k in values)]
        sql = (f"UPDATE jobs SET {', '.join(cols)} WHERE id=? AND status IN ({','.join('?' * len(expected))})")
        args = [new, *values.values(), job_id, *expected]
        if db is not None:
            return db.execute(sql, args).rowcount == 1
        with self._db() as own:
            return own.execute(sql, args).rowcount == 1

    def _finish(self, job_id: int, expected: str | tuple[str, ...], status: str, **values: Any) -> bool:
        return self._transition(job_id, expected, status, finished=time.time(), **values)

    def _update(self, job_id: int, **values: Any) -> None:
        """Change columns other than the status (progress, pid); status changes go through `_transition`."""
        if "status" in values:
            raise ValueError("status changes go through _transition")
        cols = ", ".join(f"{self._column(k)}=?" for k in values)
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id=?", [*values.values(), job_id])

    @staticmethod
    def _column(name: str) -> str:
        if not _COLUMN.match(name):
            raise ValueError(f"not a column: {name!r}")
        return name

    def cancel_requested(self, job_id: int) -> bool:
        with self._db() as db:
            row = db.execute("SELECT cancel_requested_at FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row and row[0] is not None)


def job_plan(config: RunConfig, store: RunStore, run_id: str | None) -> list[tuple[str, float]]:
    """The phases a job's process is about to walk and their expected seconds (core.jobs.sweeps.phase_plan:
    the preview's estimate), for the epochs its checkpoint has not done yet. Reads only the data file's labels
    and the checkpoint's state, before TensorFlow is imported."""
    from core.data.dataset import SPLITS, class_counts, resolve  # noqa: PLC0415
    from core.jobs.sweeps import phase_plan  # noqa: PLC0415
    from core.progress import PhaseTimes  # noqa: PLC0415
    from core.store import checkpoints  # noqa: PLC0415

    try:
        counts = class_counts(resolve(config.data, config.size))
        sizes = [sum(counts[s]) for s in SPLITS]
    except UserFacingError:  # the trainer says what is wrong with the data in a moment
        sizes = [0, 0, 0]
    epochs_done = 0
    if run_id and RUN_ID_PATTERN.match(run_id):
        try:
            checkpoint = checkpoints.load(store.runs_dir / INCOMPLETE / run_id)
            epochs_done = int(checkpoint.state.get("epochs_done", 0)) if checkpoint else 0
        except UserFacingError:
            pass
    try:
        history = store.list_runs()
    except UserFacingError:  # a damaged run index: estimate from defaults; training itself does not need it
        history = []
    plan, _ = phase_plan(config, *sizes, history, PhaseTimes.in_artifacts(store.runs_dir.parent), epochs_done)
    return plan


def execute(job_id: int, store: RunStore, start_next: bool = True) -> int:
    """Body of a job process (`python -m core job-exec ID`): train, precompute what the run's pages need,
    record the outcome, start the next job (not with `start_next=False`: a job an executor runs, whose
    executor starts the next).

    A cancelled job records nothing itself: it exits, and the next tick that sees its process gone marks it
    cancelled, so its slot is free only once the process is."""
    queue = JobQueue(store)
    job = queue.get(job_id)
    print(devices.job_device_line(), flush=True)  # the GPU this process was given, before TensorFlow loads
    if job.status != "running":
        print(f"job {job_id} is {job.status}, not running: nothing to do", flush=True)
        return 1
    if queue._recover_published(job, ("running",)):  # published before its process died: never train again
        print(f"run {job.run_id} was already published", flush=True)
        if start_next:
            queue.tick()
        return 0
    signal.signal(signal.SIGTERM, interrupt_or_defer)  # a cancel: stop now, or after the write in progress
    last: dict[str, Any] = {"progress": 0.0, "report": 0.0, "phase": None}

    def report(p: Progress) -> None:  # the card's phase, detail, fraction and time left
        now = time.time()
        if p.phase != last["phase"] or now - last["report"] >= PROGRESS_INTERVAL:
            last.update(report=now, phase=p.phase)
            queue._update(job_id, heartbeat=now, phase=p.phase, detail=p.detail, fraction=p.fraction,
                          eta_seconds=p.eta_seconds)

    from core.jobs.sweeps import PACE_FOLLOWS  # noqa: PLC0415

    tracker = Tracker(job_plan(job.config, store, job.run_id), report, follows=PACE_FOLLOWS)
    tracker.start("loading", "TensorFlow, the data and the model")
    from core.training.trainer import Progress as BatchProgress  # noqa: PLC0415 - heavy import, job process only
    from core.training.trainer import Trainer, TrainingCancelled  # noqa: PLC0415

    def progress(p: BatchProgress) -> None:  # epoch and batch, for the card's curves and the command line
        now = time.time()
        if now - last["progress"] >= PROGRESS_INTERVAL or p.batch == p.batches:
            last["progress"] = now
            queue._update(job_id, heartbeat=now, epoch=p.epoch, epochs=p.epochs, batch=p.batch,
                          batches=p.batches, images_per_second=p.images_per_second)

    def should_cancel() -> bool:
        return queue.cancel_requested(job_id)

    from core.jobs.search import trial_reporter  # noqa: PLC0415

    # a search's trial: each epoch's validation accuracy goes to its study, whose pruner may stop it there
    reporter = trial_reporter(queue, job_id, lambda m: print(m, flush=True))
    status, extra = "failed", {}
    try:
        trainer = Trainer(job.config, store, progress=progress, should_cancel=should_cancel,
                          echo=lambda m: print(m, flush=True), run_id=job.run_id, tracker=tracker,
                          on_epoch=reporter)
        queue._update(job_id, run_id=trainer.run_id)
        run = trainer.run()
        precompute(run.path, tracker, store, job.config, trainer.classifier())
        tracker.finish()
        status, extra = "succeeded", {"run_path": str(run.path), "fraction": 1.0, "eta_seconds": 0.0,
                                      "phase": "done", "detail": reporter.outcome if reporter else ""}
    except (TrainingCancelled, KeyboardInterrupt):
        print("cancelled", flush=True)
        status = "cancelled"
    except UserFacingError as e:
        print(f"error: {e}", flush=True)
        extra = {"error": str(e)}
    except Exception as e:  # recorded for the user; the traceback is in the job log
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        extra = {"error": f"{e.__class__.__name__}: {e}"}
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the outcome is being recorded; SIGKILL still ends it
    sys.stdout.flush()
    if status != "succeeded" and queue.cancel_requested(job_id):
        return 1  # settled as cancelled (or succeeded, if the cancel came after publishing) once this is gone
    queue._finish(job_id, "running", status, log_tail=queue.log_tail(job_id), heartbeat=time.time(), **extra)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the jobs it starts must not inherit an ignored SIGTERM
    if start_next:
        queue.tick()  # start whatever waits, even when nobody has the page open
    return 0 if status == "succeeded" else 1


def precompute(run_path: Path, tracker: Tracker, store: RunStore, config: RunConfig, model: Any = None) -> None:
    """The job's last phase: what the run's pages need (core.inference.precompute), so none of them blocks on
    first use. A step that fails is logged and skipped; the run is already published and the job succeeds.
    `model`: the trainer's model as a Classifier (its kept weights, as published), so the job neither loads it
    again nor traces Grad-CAM, which no step needs."""
    from core.inference.precompute import default_job_steps, job_steps, precompute_all  # noqa: PLC0415
    from core.jobs.sweeps import times_key  # noqa: PLC0415
    from core.progress import PhaseTimes  # noqa: PLC0415

    tracker.start("precomputing")  # each step's title follows as the detail
    start = time.monotonic()
    try:
        steps = job_steps()
    except UserFacingError as e:  # a mistyped server setting: say so, and prepare what a job does by default
        print(f"precomputing the default steps: {e}", flush=True)
        steps = default_job_steps()
    skipped = precompute_all(run_path, lambda title, fraction: tracker.advance(fraction, title.lower()), model,
                             steps)
    for step, message in skipped.items():
        print(f"precomputing {step} skipped: {message}", flush=True)
    PhaseTimes.in_artifacts(store.runs_dir.parent).record(times_key(config),
                                                          {"precomputing": time.monotonic() - start})


def worker(store: RunStore, poll_seconds: float = 2.0, once: bool = False, executor: Any = None) -> None:
    """Run the queue headless: keep ticking until interrupted (or until idle, with once=True); with an
    `executor` (core.jobs.ray_executor) each job runs there, and the queue's lease is given back at the end."""
    queue = JobQueue(store, executor)
    try:
        while True:
            queue.tick()
            if once and not queue.list(ACTIVE):
                return
            time.sleep(poll_seconds)
    finally:
        if executor is not None:
            executor.close(queue)
