"""Training jobs: a queue in the SQLite index, each job trained in its own OS process.

States: queued -> running -> succeeded | failed | cancelled. A job's process writes its progress (epoch,
batch, images/s, ETA) and a heartbeat into the `jobs` table; its stdout/stderr go to
`artifacts/jobs/<id>.log`. Anyone may call `JobQueue.tick()` (the Train page's live view, the headless
`python -m core worker`, and every job process as it ends): it marks jobs whose process died as failed, with
their log tail, and starts queued jobs in order while fewer than `max_concurrent` run. The queue therefore
survives restarts of the app, and no job stays "running" after its process is gone.

Cancel sends SIGTERM to the job's process group; the job stops at the next Python instruction, keeps its
last completed epoch's checkpoint (so it can be resumed) and records itself cancelled. A job that has not
exited within `CANCEL_GRACE_SECONDS` is killed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from core.config import RunConfig
from core.errors import UserFacingError
from core.store.runs import INCOMPLETE, PROJECT_ROOT, RunStore, index_errors

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
CANCEL_GRACE_SECONDS = 5.0
SPAWN_GRACE_SECONDS = 30.0
PROGRESS_INTERVAL = 1.0
LOG_TAIL_LINES = 30


class JobError(UserFacingError):
    pass


@dataclass(frozen=True)
class Job:
    id: int
    status: str
    config: RunConfig
    created: float
    sweep: str | None
    run_id: str | None
    run_path: str | None
    pid: int | None
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
    cancel_requested: bool

    @property
    def resumable(self) -> bool:
        return self.status in ("failed", "cancelled") and self.run_id is not None and self.run_path is None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        d = dict(row)
        d["config"] = RunConfig.from_dict(json.loads(d.pop("config_json")))
        d["cancel_requested"] = bool(d["cancel_requested"])
        d.pop("pid_start", None)
        return cls(**d)


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process (guards against PID reuse); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def process_alive(pid: int | None, start_token: str | None) -> bool:
    if not pid:
        return False
    token = _process_start_time(pid)
    if token is None:
        return False
    return start_token is None or token == start_token


JOBS_TABLE_SQL = """CREATE TABLE IF NOT EXISTS jobs (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, config_json TEXT NOT NULL,
                    created REAL NOT NULL, sweep TEXT, run_id TEXT, run_path TEXT,
                    pid INTEGER, pid_start TEXT, started REAL, finished REAL, heartbeat REAL,
                    epoch INTEGER NOT NULL DEFAULT 0, epochs INTEGER NOT NULL DEFAULT 0,
                    batch INTEGER NOT NULL DEFAULT 0, batches INTEGER NOT NULL DEFAULT 0,
                    fraction REAL NOT NULL DEFAULT 0, images_per_second REAL, eta_seconds REAL,
                    error TEXT, log_tail TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0)"""


class JobQueue:
    """The jobs table beside the run index. Every failure to use it is a RunStoreError (a StoreError) naming
    the file, with the index's one repair hint."""

    def __init__(self, store: RunStore | None = None):
        self.store = store or RunStore()
        self.db_path = self.store.index_path
        self.log_dir = self.store.runs_dir.parent / "jobs"
        with index_errors(self.db_path):
            self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(JOBS_TABLE_SQL)
            db.execute("CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        return db

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """An autocommit connection, closed after the block; SQLite and file errors as RunStoreError."""
        with index_errors(self.db_path), closing(self._connect()) as db:
            yield db

    @staticmethod
    def statuses_by_run(store: RunStore) -> dict[str, str]:
        """run_id -> status of the latest job that trained it, read without creating the queue (a store whose
        queue was never used has no jobs table: then empty)."""
        with index_errors(store.index_path), closing(sqlite3.connect(store.index_path, timeout=30)) as db:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone() is None:
                return {}
            rows = db.execute("SELECT run_id, status FROM jobs WHERE run_id IS NOT NULL ORDER BY id").fetchall()
        return {run_id: status for run_id, status in rows}

    # -- settings -------------------------------------------------------------------------------------
    @property
    def max_concurrent(self) -> int:
        with self._db() as db:
            row = db.execute("SELECT value FROM settings WHERE key='max_concurrent'").fetchone()
        return int(row[0]) if row else 1

    def set_max_concurrent(self, n: int) -> None:
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

    def history(self, job: Job) -> list[dict[str, float]]:
        """Per-epoch history so far (from the run's work directory, or the finished run)."""
        from core.store.runs import read_history  # noqa: PLC0415

        if job.run_path:
            return read_history(Path(job.run_path))
        if job.run_id:
            return read_history(self.store.runs_dir / INCOMPLETE / job.run_id)
        return []

    # -- commands ---------------------------------------------------------------------------------------
    def submit(self, config: RunConfig, sweep: str | None = None) -> int:
        with self._db() as db:
            cur = db.execute("INSERT INTO jobs (status, config_json, created, sweep, epochs) VALUES (?,?,?,?,?)",
                             ("queued", config.to_json(), time.time(), sweep, config.epochs))
            return int(cur.lastrowid)

    def submit_many(self, configs: Iterable[RunConfig], sweep: str | None = None) -> list[int]:
        return [self.submit(c, sweep) for c in configs]

    def cancel(self, job_id: int) -> None:
        job = self.get(job_id)
        if job.status == "queued":
            self._update(job_id, status="cancelled", finished=time.time(), cancel_requested=1)
            return
        if job.status != "running":
            raise JobError(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")
        self._update(job_id, cancel_requested=1)
        with self._db() as db:
            start = db.execute("SELECT pid_start FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
        if process_alive(job.pid, start):
            try:
                os.killpg(job.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def resume(self, job_id: int) -> None:
        job = self.get(job_id)
        if not job.resumable:
            raise JobError(f"job {job_id} is {job.status}; only failed or cancelled jobs can be resumed")
        self._update(job_id, status="queued", error=None, finished=None, cancel_requested=0, pid=None)

    def delete(self, job_id: int) -> None:
        job = self.get(job_id)
        if job.status in ACTIVE:
            raise JobError(f"job {job_id} is {job.status}; cancel it first")
        with self._db() as db:
            db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
        self.log_path(job_id).unlink(missing_ok=True)

    # -- scheduling -------------------------------------------------------------------------------------
    def tick(self) -> list[int]:
        """Reap dead jobs, enforce overdue cancels, start queued jobs. Returns the ids started."""
        self._reap()
        started = []
        while True:
            job_id = self._claim_next()
            if job_id is None:
                break
            self._spawn(job_id)
            started.append(job_id)
        return started

    def _reap(self) -> None:
        with self._db() as db:
            rows = db.execute("SELECT id, pid, pid_start, cancel_requested, heartbeat, started FROM jobs "
                              "WHERE status='running'").fetchall()
        now = time.time()
        for row in rows:
            if row["pid"] is None and now - (row["started"] or 0) < SPAWN_GRACE_SECONDS:
                continue  # claimed by another ticker a moment ago; its pid is on the way
            alive = process_alive(row["pid"], row["pid_start"])
            if alive and row["cancel_requested"] and now - (row["heartbeat"] or now) > CANCEL_GRACE_SECONDS:
                try:
                    os.killpg(row["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
                alive = False
            if alive:
                continue
            tail = self.log_tail(row["id"])
            if row["cancel_requested"]:
                self._finish(row["id"], "cancelled", log_tail=tail)
            else:
                self._finish(row["id"], "failed", log_tail=tail,
                             error="the training process ended without reporting (killed, out of memory, "
                                   "or the machine restarted); see the log tail")

    def _claim_next(self) -> int | None:
        """Atomically move the oldest queued job to running if a slot is free."""
        limit = self.max_concurrent
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                running = db.execute("SELECT COUNT(*) FROM jobs WHERE status='running'").fetchone()[0]
                row = db.execute("SELECT id FROM jobs WHERE status='queued' ORDER BY id LIMIT 1").fetchone()
                if running >= limit or row is None:
                    db.execute("ROLLBACK")
                    return None
                db.execute("UPDATE jobs SET status='running', started=?, heartbeat=?, pid=NULL, "
                           "cancel_requested=0 WHERE id=?", (time.time(), time.time(), row[0]))
                db.execute("COMMIT")
                return int(row[0])
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _spawn(self, job_id: int) -> None:
        env = dict(os.environ)
        env["CELLSCOPE_ARTIFACTS"] = str(self.store.runs_dir.parent)
        env["PYTHONUNBUFFERED"] = "1"
        log = open(self.log_path(job_id), "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "core", "job-exec", str(job_id), "--runs-dir", str(self.store.runs_dir)],
                cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        except OSError as e:
            self._finish(job_id, "failed", error=f"could not start the training process: {e}")
            return
        finally:
            log.close()
        self._update(job_id, pid=proc.pid, pid_start=_process_start_time(proc.pid))

    # -- bookkeeping, used by the job process too ---------------------------------------------------------
    def _update(self, job_id: int, **values: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in values)
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id=?", [*values.values(), job_id])

    def _finish(self, job_id: int, status: str, **values: Any) -> None:
        self._update(job_id, status=status, finished=time.time(), **values)

    def cancel_requested(self, job_id: int) -> bool:
        with self._db() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row and row[0])


def execute(job_id: int, store: RunStore) -> int:
    """Body of a job process (`python -m core job-exec ID`): train, record the outcome, start the next job."""
    from core.training.trainer import Progress, Trainer, TrainingCancelled  # noqa: PLC0415 - heavy import, job process only

    queue = JobQueue(store)
    job = queue.get(job_id)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt("cancelled")  # unwinds training at the next Python instruction

    signal.signal(signal.SIGTERM, on_sigterm)
    last = [0.0]

    def progress(p: Progress) -> None:
        now = time.time()
        if now - last[0] >= PROGRESS_INTERVAL or p.batch == p.batches:
            last[0] = now
            queue._update(job_id, heartbeat=now, epoch=p.epoch, epochs=p.epochs, batch=p.batch,
                          batches=p.batches, fraction=p.fraction, images_per_second=p.images_per_second,
                          eta_seconds=p.eta_seconds)

    def should_cancel() -> bool:
        return queue.cancel_requested(job_id)

    status, extra = "failed", {}
    try:
        trainer = Trainer(job.config, store, progress=progress, should_cancel=should_cancel,
                          echo=lambda m: print(m, flush=True), run_id=job.run_id)
        queue._update(job_id, run_id=trainer.run_id)
        run = trainer.run()
        status, extra = "succeeded", {"run_path": str(run.path), "fraction": 1.0, "eta_seconds": 0.0}
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
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stdout.flush()
    queue._finish(job_id, status, log_tail=queue.log_tail(job_id), heartbeat=time.time(), **extra)
    queue.tick()  # start whatever waits, even when nobody has the page open
    return 0 if status == "succeeded" else 1


def worker(store: RunStore, poll_seconds: float = 2.0, once: bool = False) -> None:
    """Run the queue headless: keep ticking until interrupted (or until idle, with once=True)."""
    queue = JobQueue(store)
    while True:
        queue.tick()
        if once and not queue.list(ACTIVE):
            return
        time.sleep(poll_seconds)
