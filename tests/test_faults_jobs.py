"""Faults in jobs and runs (issue 12), with real processes, real files and real SQLite:

- SIGKILL and a full disk (ENOSPC) at each write of a checkpoint and of publishing leave the previous
  checkpoint or the finished run, never neither; a job killed around publishing ends in a consistent state
  (failed and resumable before the rename, succeeded after it, never trained again);
- status changes are compare-and-set: a reaper racing a finishing job cannot turn succeeded into failed;
- a cancel's grace counts from the cancel, a write in progress is finished before the job stops, and a
  cancelled job holds its slot until its process is gone; liveness is pid + creation time (psutil);
- one user cannot cancel, resume or delete another's jobs, and the roles and quotas hold;
- deleting a job removes its work folder and log;
- the queue lives in its own database: a damaged run index is one message, `runs --reindex` repairs it, and
  the queue is intact; an old index's jobs are migrated once.

Faults are injected from outside production code (tests/fault_injection.py): a wrapper process that patches
the write operations and SIGKILLs itself at the k-th, or the same patch in-process raising ENOSPC.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_injection import fake_metrics, install, save_final, write_checkpoint

from core.access.roles import ACTIVE_JOBS_PER_USER, LOCAL_ADMIN, AccessDenied, User
from core.cli import main as cli_main
from core.config import RunConfig
from core.errors import StoreError
from core.jobs import jobdb, liveness
from core.jobs import queue as Q
from core.jobs.queue import JobQueue
from core.store import checkpoints
from core.store.runs import INCOMPLETE, REINDEX_HINT, RunStore, RunWriter, open_run, read_history

HERE = Path(__file__).resolve().parent
WRAPPER = HERE / "fault_injection.py"
PROJECT_ROOT = HERE.parent
ALICE, BOB = User("alice", ("trainer",)), User("bob", ("trainer",))
VIEWER = User("vic", ("viewer",))


def config(**changes) -> RunConfig:
    return RunConfig(**{**dict(size=28, arch="resnet18", weights="none", epochs=1, batch_size=32, seed=3,
                                 limit_train=64, bn_recalibration_batches=2), **changes})


def wrapper(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WRAPPER), *map(str, args)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


def count_writes(action) -> list[str]:
    """The write operations `action` does, in order ("replace /path", "fsync 7", ...)."""
    counter = install(0, "count")
    try:
        action()
    finally:
        counter.restore()
    return counter.seen


# -- the checkpoint unit ----------------------------------------------------------------------------------
@pytest.fixture
def epoch_one(tmp_path) -> Path:
    """A work folder holding epoch 1's complete checkpoint."""
    work = tmp_path / "work"
    work.mkdir()
    write_checkpoint(work, 1)
    return work


def assert_one_complete_checkpoint(work: Path) -> int:
    """The pointer names a complete unit, epoch 1's or epoch 2's, whose parts agree; returns its epoch."""
    unit = checkpoints.load(work)
    assert unit is not None, "the checkpoint is gone"
    epoch = unit.state["epochs_done"]
    assert epoch in (1, 2)
    assert unit.model_path.read_bytes() == f"model-{epoch}".encode()
    assert [w.tolist() for w in unit.best_weights()] == [[float(epoch)] * 4]
    assert len(unit.state["history"]) == epoch
    return epoch


def test_a_checkpoint_is_one_unit_switched_by_its_pointer(epoch_one):
    first = checkpoints.load(epoch_one)
    write_checkpoint(epoch_one, 2)
    assert assert_one_complete_checkpoint(epoch_one) == 2
    assert not first.unit.exists()  # the old unit is removed only after the switch
    units = [p.name for p in epoch_one.iterdir() if p.name.startswith("ckpt-")]
    assert units == [checkpoints.load(epoch_one).unit.name]


def test_sigkill_at_each_write_of_a_checkpoint_leaves_a_complete_one(epoch_one, tmp_path):
    probe = tmp_path / "probe"
    shutil.copytree(epoch_one, probe)
    writes = count_writes(lambda: write_checkpoint(probe, 2))
    switch = writes.index(f"replace {probe / checkpoints.POINTER}") + 1  # the k of the pointer's replace
    assert switch >= 8  # model, best weights and state each written and fsynced before it
    for k in range(1, len(writes) + 1):
        work = tmp_path / f"kill-{k}"
        shutil.copytree(epoch_one, work)
        proc = wrapper("kill", k, "all", "checkpoint", work)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        # killed before the switch: epoch 1's checkpoint, whole; after it: epoch 2's, whole
        assert assert_one_complete_checkpoint(work) == (1 if k <= switch else 2), writes[k - 1]
    work = tmp_path / "kill-after-switch"
    shutil.copytree(epoch_one, work)
    assert wrapper("kill-after", switch, "all", "checkpoint", work).returncode == -signal.SIGKILL
    assert assert_one_complete_checkpoint(work) == 2


def test_a_full_disk_at_each_write_of_a_checkpoint_leaves_a_complete_one(epoch_one, tmp_path):
    probe = tmp_path / "probe"
    shutil.copytree(epoch_one, probe)
    writes = count_writes(lambda: write_checkpoint(probe, 2))
    switch = writes.index(f"replace {probe / checkpoints.POINTER}") + 1
    for k in range(1, switch + 1):  # a full disk after the switch: nothing is written any more
        work = tmp_path / f"full-{k}"
        shutil.copytree(epoch_one, work)
        counter = install(k, "enospc")
        try:
            with pytest.raises(OSError, match="No space left"):
                write_checkpoint(work, 2)
        finally:
            counter.restore()
        assert assert_one_complete_checkpoint(work) == 1
        write_checkpoint(work, 2)  # once there is room again, the next checkpoint goes through
        assert assert_one_complete_checkpoint(work) == 2
        assert len(list(work.glob("ckpt-*"))) == 1  # and the cut unit was cleaned away


def test_a_damaged_checkpoint_is_a_store_error_not_a_crash(epoch_one):
    (epoch_one / checkpoints.POINTER).write_text('{"unit": "ckpt-0009-gone00"}')
    with pytest.raises(StoreError, match="damaged"):
        checkpoints.load(epoch_one)


# -- publishing --------------------------------------------------------------------------------------------
@pytest.fixture
def unpublished(runs_dir) -> tuple[RunStore, str]:
    """A run with one epoch done: config, history, log and a complete checkpoint in its work folder."""
    store = RunStore(runs_dir)
    writer = store.writer(config())
    writer.write_history([{"epoch": 1, "loss": 1.0}])
    write_checkpoint(writer.work_dir, 1)
    writer.close()
    return store, writer.run_id


def assert_checkpoint_or_run(store: RunStore, run_id: str) -> str:
    """Either the finished run (complete, its model the final one) or the resumable checkpoint: never neither."""
    final, work = store.runs_dir / run_id, store.runs_dir / INCOMPLETE / run_id
    if (final / "metrics.json").is_file():
        run = open_run(final)
        assert run.model_path.read_bytes() == b"final-model" and run.metrics["epochs_run"] == 1
        return "published"
    assert not final.exists()
    assert assert_one_complete_checkpoint(work) == 1
    return "resumable"


def publish_writes(store: RunStore, run_id: str, tmp_path: Path) -> tuple[Path, RunStore, list[str]]:
    """A pristine copy of the store (to restore before each fault), and the writes one publish makes, counted
    on a probe copy: (pristine folder, probe store, writes)."""
    pristine = tmp_path / "pristine"
    shutil.copytree(store.runs_dir.parent, pristine)
    probe = RunStore(tmp_path / "probe" / "runs")
    shutil.copytree(store.runs_dir, probe.runs_dir, dirs_exist_ok=True)
    writer = RunWriter(probe, config(), run_id)
    return pristine, probe, count_writes(lambda: writer.publish(fake_metrics(), save_final))


def test_sigkill_at_each_write_of_publish_leaves_the_checkpoint_or_the_run(unpublished, tmp_path):
    store, run_id = unpublished
    pristine, _, writes = publish_writes(store, run_id, tmp_path)
    n = len(writes)
    outcomes = []
    for k in list(range(1, n + 1)) + ["after"]:
        shutil.rmtree(store.runs_dir.parent)
        shutil.copytree(pristine, store.runs_dir.parent)
        mode, at = ("kill-after", n) if k == "after" else ("kill", k)
        proc = wrapper(mode, at, "all", "publish", store.runs_dir, run_id)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        outcomes.append(assert_checkpoint_or_run(store, run_id))
        if outcomes[-1] == "published":  # a later look tidies and indexes it: found, never trained again
            assert store.published(run_id) is not None
            assert [r["run_id"] for r in store.list_runs()] == [run_id]
            assert not list((store.runs_dir / run_id).glob("ckpt-*"))
    assert outcomes[0] == "resumable" and outcomes[-1] == "published"
    # the rename is the switch: killed just after it, the run is complete (its checkpoints may still be there)
    shutil.rmtree(store.runs_dir.parent)
    shutil.copytree(pristine, store.runs_dir.parent)
    assert wrapper("kill-after", 1, "rename", "publish", store.runs_dir, run_id).returncode == -signal.SIGKILL
    assert assert_checkpoint_or_run(store, run_id) == "published"


def test_a_full_disk_at_each_write_of_publish_leaves_the_checkpoint(unpublished, tmp_path):
    store, run_id = unpublished
    pristine, probe, writes = publish_writes(store, run_id, tmp_path)
    rename = writes.index(f"rename {probe.runs_dir / run_id}") + 1
    assert rename > 5  # model and metrics written and fsynced before the rename
    for k in range(1, rename + 1):  # after the rename only fsyncs of folders remain
        shutil.rmtree(store.runs_dir.parent)
        shutil.copytree(pristine, store.runs_dir.parent)
        writer = RunWriter(store, config(), run_id)
        counter = install(k, "enospc")
        try:
            with pytest.raises(OSError, match="No space left"):
                writer.publish(fake_metrics(), save_final)
        finally:
            counter.restore()
        assert assert_checkpoint_or_run(store, run_id) == "resumable", k
        writer.log("failed: disk full")  # the trainer's failure path still has a log to write to
        writer.close()


# -- a real job killed around publishing ----------------------------------------------------------------------
def start_through_wrapper(queue: JobQueue, job_id: int, *fault: str) -> subprocess.Popen:
    """Claim `job_id` and start its job process as the queue would, but through the fault wrapper."""
    assert queue._claim_next() == job_id
    env = {**os.environ, "CELLSCOPE_ARTIFACTS": str(queue.store.runs_dir.parent), "PYTHONUNBUFFERED": "1"}
    with open(queue.log_path(job_id), "ab") as log:
        proc = subprocess.Popen([sys.executable, str(WRAPPER), *fault, "cli", "job-exec", str(job_id),
                                 "--runs-dir", str(queue.store.runs_dir)], cwd=PROJECT_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    queue._update(job_id, pid=proc.pid, pid_start=liveness.start_time(proc.pid))
    return proc


@pytest.mark.slow
def test_a_job_killed_before_or_after_publishing_ends_consistent(runs_dir, tiny_npz):
    store = RunStore(runs_dir)
    queue = JobQueue(store)
    job_id = queue.submit(config(data=str(tiny_npz)), ALICE)
    # killed just before the rename: failed, resumable from the checkpoint, nothing published
    assert start_through_wrapper(queue, job_id, "kill", "1", "rename").wait(300) == -signal.SIGKILL
    queue._reap()
    job = queue.get(job_id)
    assert job.status == "failed" and job.resumable and "ended without reporting" in job.error, queue.log_tail(job_id)
    assert checkpoints.load(store.runs_dir / INCOMPLETE / job.run_id).state["epochs_done"] == 1
    assert not (runs_dir / job.run_id).exists() and store.list_runs() == []
    # resumed, and killed just after the rename: the reaper finds the run published and records success
    queue.resume(job_id, ALICE)
    assert start_through_wrapper(queue, job_id, "kill-after", "1", "rename").wait(300) == -signal.SIGKILL
    queue._reap()
    job = queue.get(job_id)
    assert job.status == "succeeded", queue.log_tail(job_id)
    run = open_run(job.run_path)
    assert run.run_id == job.run_id and [r["run_id"] for r in store.list_runs()] == [run.run_id]
    assert not list(run.path.glob("ckpt-*")) and not (run.path / checkpoints.POINTER).exists()
    assert "resuming after epoch 1" in (run.path / "train.log").read_text()  # not trained from scratch


def test_a_job_whose_run_is_published_is_succeeded_on_resume_never_retrained(unpublished):
    store, run_id = unpublished
    RunWriter(store, config(), run_id).publish(fake_metrics(), save_final)
    queue = JobQueue(store)
    job_id = queue.submit(config(), ALICE)
    queue._update(job_id, run_id=run_id)
    assert queue._transition(job_id, "queued", "failed", error="killed")  # e.g. marked by an older version
    queue.resume(job_id, ALICE)
    job = queue.get(job_id)
    assert job.status == "succeeded" and job.run_path == str(store.runs_dir / run_id) and not job.resumable


# -- compare-and-set -------------------------------------------------------------------------------------
def dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = liveness.start_time(proc.pid)
    proc.wait()
    return proc.pid, started


def test_a_racing_reaper_cannot_turn_succeeded_into_failed(runs_dir, monkeypatch):
    queue = JobQueue(RunStore(runs_dir))
    job_id = queue.submit(config(), ALICE)
    assert queue._claim_next() == job_id
    pid, started = dead_pid()
    queue._update(job_id, pid=pid, pid_start=started)
    stale = queue.list(["running"])  # the reaper read the running jobs ...
    assert queue._finish(job_id, "running", "succeeded", run_path="/x")  # ... the job finished meanwhile ...
    monkeypatch.setattr(queue, "list", lambda *a, **k: stale)
    queue._reap()  # ... and the reaper, seeing the process gone, tries to record a failure
    job = queue.get(job_id)
    assert job.status == "succeeded" and job.error is None and job.run_path == "/x"
    assert not queue._transition(job_id, "running", "failed")
    with pytest.raises(ValueError):
        queue._update(job_id, status="failed")  # status writes have one way only


# -- cancel, grace, slots, liveness ------------------------------------------------------------------------
WRITER_SCRIPT = """
import signal, sys, time
sys.path.insert(0, {root!r})
from core.store.io import interrupt_or_defer, uninterrupted
signal.signal(signal.SIGTERM, interrupt_or_defer)
with open({out!r}, "w") as f:
    f.write("started\\n"); f.flush()
    with uninterrupted():  # a long checkpoint write, e.g. during validation, with no heartbeat
        time.sleep({seconds})
        f.write("write finished\\n"); f.flush()
    f.write("went on after the cancel\\n")
"""


def running_job(queue: JobQueue, script: str, owner: User = ALICE) -> tuple[int, subprocess.Popen]:
    job_id = queue.submit(config(), owner)
    assert queue._claim_next() == job_id
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    queue._update(job_id, pid=proc.pid, pid_start=liveness.start_time(proc.pid), heartbeat=time.time() - 3600)
    return job_id, proc


def writing_job(queue: JobQueue, tmp_path, seconds: float):
    """A running job whose process is inside an uninterrupted write of `seconds` (WRITER_SCRIPT), once it has
    started that write: (job id, process, the file it reports to)."""
    out = tmp_path / "out.txt"
    job_id, proc = running_job(queue, WRITER_SCRIPT.format(root=str(PROJECT_ROOT), out=str(out), seconds=seconds))
    while not out.is_file() or "started" not in out.read_text():
        time.sleep(0.05)
    return job_id, proc, out


def test_a_cancel_finishes_the_write_in_progress_then_stops(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Q, "CANCEL_SETTLE_SECONDS", 0.0)  # cancel returns at once; the reaper settles it
    queue = JobQueue(RunStore(runs_dir))
    job_id, proc, out = writing_job(queue, tmp_path, seconds=1.5)
    queue.cancel(job_id, ALICE)
    queue._reap()  # the last heartbeat is an hour old: the grace is counted from the cancel, not from it
    assert proc.poll() is None and queue.get(job_id).status == "running"
    proc.wait(10)
    assert out.read_text() == "started\nwrite finished\n"  # finished the write, then stopped
    queue._reap()
    assert queue.get(job_id).status == "cancelled"


def test_a_cancel_settles_at_once_when_the_process_stops_within_seconds(runs_dir, tmp_path):
    """The usual cancel: the process finishes its write and goes within CANCEL_SETTLE_SECONDS, and cancel()
    itself records "cancelled" (the page shows it on its next redraw, no tick needed)."""
    queue = JobQueue(RunStore(runs_dir))
    job_id, proc, out = writing_job(queue, tmp_path, seconds=0.3)
    queue.cancel(job_id, ALICE)
    assert proc.poll() is not None and queue.get(job_id).status == "cancelled"
    assert out.read_text() == "started\nwrite finished\n"


def test_the_grace_counts_from_the_cancel_and_the_slot_is_held_until_the_process_is_gone(runs_dir, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setattr(Q, "CANCEL_GRACE_SECONDS", 1.5)
    monkeypatch.setattr(Q, "CANCEL_SETTLE_SECONDS", 0.0)
    queue = JobQueue(RunStore(runs_dir))
    job_id, proc, _ = writing_job(queue, tmp_path, seconds=600)
    waiting = queue.submit(config(seed=4), BOB)
    cancelled_at = time.time()
    queue.cancel(job_id, ALICE)
    queue._reap()
    job = queue.get(job_id)
    assert job.status == "running" and job.cancel_requested and proc.poll() is None
    assert queue._claim_next() is None  # the cancelled job still holds the only slot
    while proc.poll() is None and time.time() - cancelled_at < 10:
        queue._reap()
        time.sleep(0.1)
    assert proc.returncode == -signal.SIGKILL
    assert time.time() - cancelled_at >= 1.5  # never before the grace, counted from the cancel
    assert queue.get(job_id).status == "cancelled"  # settled once the process is gone ...
    assert queue._claim_next() == waiting  # ... and only then is its slot free


def test_liveness_is_pid_and_creation_time_and_zombies_are_dead():
    me = os.getpid()
    assert liveness.alive(me, liveness.start_time(me))
    assert not liveness.alive(me, liveness.start_time(me) - 100)  # a recycled pid is another process
    assert not liveness.alive(None, None) and not liveness.alive(me, liveness.GONE)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while liveness.start_time(zombie.pid) is not None and time.time() < deadline:
        time.sleep(0.05)  # exited, never waited for: a zombie
    assert not liveness.alive(zombie.pid, None)
    zombie.wait()


def test_resume_never_starts_a_second_process_on_a_live_run(runs_dir):
    queue = JobQueue(RunStore(runs_dir))
    job_id, proc = running_job(queue, "import time; time.sleep(60)")
    try:
        queue._update(job_id, run_id="20250101-000000-abcdef")
        assert queue._transition(job_id, "running", "failed", error="wrongly")  # as an old reaper did
        with pytest.raises(Q.JobError, match="still stopping"):
            queue.resume(job_id, ALICE)
        assert queue.get(job_id).status == "failed"
    finally:
        proc.kill()
        proc.wait()
    queue.resume(job_id, ALICE)
    assert queue.get(job_id).status == "queued"


# -- users, roles and quotas -------------------------------------------------------------------------------
def test_another_user_cannot_cancel_resume_or_delete_a_job(runs_dir):
    queue = JobQueue(RunStore(runs_dir))
    mine = queue.submit(config(), ALICE)
    assert queue.get(mine).owner == "alice"
    for action in (queue.cancel, queue.resume, queue.delete):
        with pytest.raises(AccessDenied, match="belongs to alice"):
            action(mine, BOB)
    assert queue.get(mine).status == "queued"
    queue.cancel(mine, ALICE)
    with pytest.raises(AccessDenied):
        queue.delete(mine, BOB)
    queue.delete(mine, LOCAL_ADMIN)  # an admin may act on anyone's
    with pytest.raises(Q.JobError, match="no job"):
        queue.get(mine)


def test_roles_and_the_per_user_quota(runs_dir):
    store = RunStore(runs_dir)
    queue = JobQueue(store)
    with pytest.raises(AccessDenied, match="may not launch"):
        queue.submit(config(), VIEWER)
    with pytest.raises(AccessDenied):
        queue.set_max_concurrent(4, ALICE)
    queue.set_max_concurrent(4, LOCAL_ADMIN)
    queue.submit_many([config(seed=s) for s in range(ACTIVE_JOBS_PER_USER - 1)], ALICE)
    with pytest.raises(AccessDenied, match="at most"):  # a sweep is refused whole
        queue.submit_many([config(seed=100), config(seed=101)], ALICE, sweep="too big")
    assert len(queue.list()) == ACTIVE_JOBS_PER_USER - 1
    queue.submit(config(seed=200), ALICE)  # the last slot
    queue.submit_many([config(seed=s) for s in range(ACTIVE_JOBS_PER_USER)], BOB)  # per user
    queue.submit_many([config(seed=s) for s in range(ACTIVE_JOBS_PER_USER + 1)], LOCAL_ADMIN)  # admins: no cap
    run = RunWriter(store, config(), None)
    run.publish(fake_metrics(), save_final)
    with pytest.raises(AccessDenied):
        store.delete(run.run_id, ALICE)
    with pytest.raises(AccessDenied):
        store.tag_runs([run.run_id], VIEWER, add=["x"])
    assert store.tag_runs([run.run_id], ALICE, add=["x"]) == 1
    store.delete(run.run_id, LOCAL_ADMIN)
    assert store.count() == 0


# -- deleting a job --------------------------------------------------------------------------------------------
def test_deleting_a_failed_job_removes_its_work_folder_and_log(unpublished):
    store, run_id = unpublished
    queue = JobQueue(store)
    job_id = queue.submit(config(), ALICE)
    queue.log_path(job_id).write_text("epoch 1\n")
    queue._update(job_id, run_id=run_id)
    assert queue._transition(job_id, "queued", "failed")
    work = store.runs_dir / INCOMPLETE / run_id
    assert work.is_dir()
    queue.delete(job_id, ALICE)
    assert not work.exists() and not queue.log_path(job_id).exists()
    # a succeeded job's run stays: deleting the job removes only the job
    done = queue.submit(config(), ALICE)
    run = RunWriter(store, config(), None).publish(fake_metrics(), save_final)
    queue._update(done, run_id=run.run_id)
    assert queue._transition(done, "queued", "succeeded", run_path=str(run.path))
    queue.delete(done, ALICE)
    assert open_run(run.path).run_id == run.run_id


# -- the queue's own database ----------------------------------------------------------------------------------
def test_a_damaged_index_is_one_message_and_reindex_repairs_it_with_the_queue_intact(runs_dir, capsys):
    store = RunStore(runs_dir)
    run = RunWriter(store, config(), None).publish(fake_metrics(), save_final)
    queue = JobQueue(store)
    ids = queue.submit_many([config(seed=1), config(seed=2)], ALICE, sweep="s")
    queue.set_max_concurrent(3, LOCAL_ADMIN)
    with open(store.index_path, "r+b") as f:
        f.write(b"\x00garbage" * 12 + b"0123")  # the first 100 bytes (the header) overwritten
    with pytest.raises(StoreError) as info:
        RunStore(runs_dir)
    assert str(store.index_path) in str(info.value) and REINDEX_HINT in str(info.value)
    assert cli_main(["runs", "--runs-dir", str(runs_dir)]) == 2  # one line, no traceback
    assert "error: Could not read the run index" in capsys.readouterr().err
    assert cli_main(["runs", "--reindex", "--runs-dir", str(runs_dir)]) == 0
    assert run.run_id in capsys.readouterr().out
    queue = JobQueue(RunStore(runs_dir))
    assert [j.id for j in queue.list()] == ids[::-1] and queue.max_concurrent == 3
    assert {j.owner for j in queue.list()} == {"alice"} and {j.sweep for j in queue.list()} == {"s"}


def test_a_damaged_jobs_database_names_itself_and_its_own_recovery(runs_dir):
    store = RunStore(runs_dir)
    queue = JobQueue(store)
    queue.db_path.write_bytes(b"not a database" * 100)
    for use in (queue.list, lambda: JobQueue(store), lambda: JobQueue.statuses_by_run(store)):
        with pytest.raises(jobdb.JobStoreError) as info:
            use()
        message = str(info.value)
        assert str(queue.db_path) in message and "move it aside" in message and REINDEX_HINT not in message
    assert store.count() == 0  # the run index is unaffected


OLD_JOBS_SQL = """CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, config_json TEXT NOT NULL,
    created REAL NOT NULL, sweep TEXT, run_id TEXT, run_path TEXT,
    pid INTEGER, pid_start TEXT, started REAL, finished REAL, heartbeat REAL,
    epoch INTEGER NOT NULL DEFAULT 0, epochs INTEGER NOT NULL DEFAULT 0,
    batch INTEGER NOT NULL DEFAULT 0, batches INTEGER NOT NULL DEFAULT 0,
    fraction REAL NOT NULL DEFAULT 0, images_per_second REAL, eta_seconds REAL,
    error TEXT, log_tail TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0)"""


def test_an_old_index_queue_is_migrated_once_then_dropped_from_the_index(runs_dir):
    store = RunStore(runs_dir)
    with sqlite3.connect(store.index_path) as db:
        db.execute(OLD_JOBS_SQL)
        db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO settings VALUES ('max_concurrent', '2')")
        for status, cancel in (("succeeded", 0), ("cancelled", 1), ("queued", 0)):
            db.execute("INSERT INTO jobs (status, config_json, created, pid_start, cancel_requested, finished) "
                       "VALUES (?,?,?,?,?,?)", (status, config().to_json(), 1.0, "12345", cancel, 2.0))
    db.close()
    queue = JobQueue(store)
    jobs = queue.list()
    assert [(j.id, j.status, j.owner, j.cancel_requested) for j in jobs] == [
        (3, "queued", "local", False), (2, "cancelled", "local", True), (1, "succeeded", "local", False)]
    assert queue.max_concurrent == 2 and jobs[0].pid_start is None
    with sqlite3.connect(store.index_path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert "jobs" not in tables and "settings" not in tables and "runs" in tables
    job_id = queue.submit(config(), ALICE)
    assert [j.id for j in JobQueue(RunStore(runs_dir)).list()][0] == job_id == 4  # not migrated twice
    assert json.loads(queue.get(1).config.to_json())["seed"] == 3


def test_statuses_by_run_reads_the_jobs_database_without_creating_it(runs_dir):
    store = RunStore(runs_dir)
    assert JobQueue.statuses_by_run(store) == {} and not jobdb.jobs_path(runs_dir.parent).exists()
    queue = JobQueue(store)
    job_id = queue.submit(config(), ALICE)
    queue._update(job_id, run_id="20250101-000000-abcdef")
    assert JobQueue.statuses_by_run(store) == {"20250101-000000-abcdef": "queued"}


@pytest.mark.parametrize("store_file", ["index.sqlite", "jobs.sqlite"])
@pytest.mark.parametrize("name", ["home", "train", "results", "confusion", "classify", "external", "review"])
def test_every_page_shows_one_message_for_a_damaged_store(monkeypatch, tmp_path, trained_run, store_file, name):
    """The run index with its header overwritten, or the jobs database: each page shows one error naming the
    file (no traceback), the way a user meets it."""
    from conftest import mirror_run
    from page_helpers import page
    from streamlit.testing.v1 import AppTest

    runs_dir = mirror_run(trained_run, tmp_path / "artifacts").parent
    JobQueue(RunStore(runs_dir)).submit(config(seed=1), ALICE)
    damaged = runs_dir.parent / store_file
    with open(damaged, "r+b") as f:
        f.write(b"\x00garbage" * 12 + b"0123")
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(runs_dir.parent))
    monkeypatch.setenv("CELLSCOPE_SETTINGS", str(runs_dir.parent / "no-settings.toml"))  # login off
    at = AppTest.from_file(page(name), default_timeout=60)
    if name == "train":  # the queue is on its Jobs tab
        at.session_state["tab"] = at.query_params["tab"] = "Jobs"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if store_file == "jobs.sqlite" and name != "train":
        return  # pages that need no queue (Results reads it only for runs still in .incomplete/)
    shown = [e.value.replace("\\", "") for e in at.error]  # Markdown-escaped: test\_x -> test_x
    assert [str(damaged) in e for e in shown] == [True], shown


def test_a_damaged_history_is_one_message_on_results_and_on_its_job_card(monkeypatch, tmp_path, trained_run):
    from conftest import mirror_run
    from page_helpers import APP, page
    from streamlit.testing.v1 import AppTest

    run_dir = mirror_run(trained_run, tmp_path / "artifacts")
    (run_dir / "history.csv").write_bytes(b"epoch,loss\n1,\xff\xfe garbage\n")
    with pytest.raises(StoreError, match="training history .* cannot be read"):
        read_history(run_dir)
    store = RunStore(run_dir.parent)
    queue = JobQueue(store)
    job_id = queue.submit(config(), ALICE)
    with queue._db() as db:  # as a finished job that trained this run
        db.execute("UPDATE jobs SET status='succeeded', run_id=?, run_path=? WHERE id=?",
                   (run_dir.name, str(run_dir), job_id))
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(run_dir.parent.parent))
    monkeypatch.setenv("CELLSCOPE_SETTINGS", str(tmp_path / "no-settings.toml"))
    for name in ("results", "train"):
        if name == "train":  # through app.py, as served: the job card links to other pages of its navigation
            at = AppTest.from_file(APP, default_timeout=60)
            at.run()
            at.switch_page("pages/train.py")
            at.session_state["tab"] = at.query_params["tab"] = "Jobs"
        else:
            at = AppTest.from_file(page(name), default_timeout=60)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert ["training history" in e.value for e in at.error] == [True], [e.value for e in at.error]
