"""The job queue's own SQLite database, `artifacts/jobs.sqlite` (beside `runs/` and the run index).

The run index (`index.sqlite`) is derived data that `python -m core runs --reindex` rebuilds or moves aside;
the queue is not derived from anything, so it lives here and survives the index being deleted, damaged or
rebuilt. Older versions kept the `jobs` and `settings` tables inside the index: they are copied here once
(into a temporary file, fsynced, then linked into place, so two processes migrating at once cannot both win)
and then dropped from the index.

Every failure to use this file is a JobStoreError (a StoreError) naming it, with its own recovery.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

from core.errors import StoreError, UserFacingError
from core.store.io import fsync_dir, fsync_file
from core.store.sqlite_schema import add_missing_columns

JOBS_FILE = "jobs.sqlite"
MIGRATED_KEY = "index_migrated"  # set in `settings` once the index holds no old jobs table
JOBS_TABLE_SQL = """CREATE TABLE IF NOT EXISTS jobs (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, owner TEXT NOT NULL,
                    config_json TEXT NOT NULL, created REAL NOT NULL, sweep TEXT, run_id TEXT, run_path TEXT,
                    pid INTEGER, pid_start REAL, started REAL, finished REAL, heartbeat REAL,
                    epoch INTEGER NOT NULL DEFAULT 0, epochs INTEGER NOT NULL DEFAULT 0,
                    batch INTEGER NOT NULL DEFAULT 0, batches INTEGER NOT NULL DEFAULT 0,
                    fraction REAL NOT NULL DEFAULT 0, images_per_second REAL, eta_seconds REAL,
                    error TEXT, log_tail TEXT, cancel_requested_at REAL, phase TEXT, detail TEXT,
                    gpu INTEGER, executor TEXT)"""
# columns added after the table first shipped: (name, SQL type), added to an existing file by `create`
# gpu: the GPU (core.devices index) a local job is pinned to; executor: NULL for a local process, "ray" for a Ray task
ADDED_COLUMNS = (("phase", "TEXT"), ("detail", "TEXT"), ("gpu", "INTEGER"), ("executor", "TEXT"))
SETTINGS_TABLE_SQL = "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
# columns an old index's jobs table shares with this one, copied as they are
_KEPT = ("id", "status", "config_json", "created", "sweep", "run_id", "run_path", "pid", "started", "finished",
         "heartbeat", "epoch", "epochs", "batch", "batches", "fraction", "images_per_second", "eta_seconds",
         "error", "log_tail")
MIGRATED_OWNER = "local"  # jobs from before owners existed belong to the local administrator


class JobStoreError(StoreError):
    pass


def jobs_path(artifacts: Path) -> Path:
    return Path(artifacts) / JOBS_FILE


def jobs_message(path: Path, error: Exception) -> str:
    return (f"Could not use the job queue {path} ({error.__class__.__name__}: {error}). If the file is damaged, "
            f"move it aside (e.g. rename it to {path.name}.damaged): the queue then starts empty, while finished "
            f"runs stay in {path.parent / 'runs'} and the run index is unaffected.")


@contextmanager
def jobs_errors(path: Path) -> Iterator[None]:
    """SQLite and file errors met while using the job queue at `path` as one JobStoreError."""
    try:
        yield
    except UserFacingError:  # already a message (AccessDenied is also a PermissionError, an OSError)
        raise
    except (sqlite3.Error, OSError) as e:
        raise JobStoreError(jobs_message(path, e)) from e


def connect(path: Path) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit: BEGIN IMMEDIATE) with rows by name."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    return db


def create(path: Path) -> None:
    """The tables, and on a file from an older version the columns it lacks (core.store.sqlite_schema)."""
    with closing(connect(path)) as db:
        db.execute(JOBS_TABLE_SQL)
        db.execute(SETTINGS_TABLE_SQL)
        add_missing_columns(db, "jobs", ADDED_COLUMNS)


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _copy_into(tmp: Path, index: sqlite3.Connection, tables: set[str]) -> None:
    """Build a complete jobs database in `tmp` from the index's old tables."""
    with closing(sqlite3.connect(tmp, isolation_level=None)) as new:
        new.execute(JOBS_TABLE_SQL)
        new.execute(SETTINGS_TABLE_SQL)
        new.execute("BEGIN")
        if "jobs" in tables:
            old_columns = {r[1] for r in index.execute("PRAGMA table_info(jobs)")}
            columns = [c for c in (*_KEPT, "cancel_requested") if c in old_columns]
            for row in index.execute(f"SELECT {', '.join(columns)} FROM jobs ORDER BY id"):
                values = dict(zip(columns, row))
                requested = values.pop("cancel_requested", 0)
                values["owner"] = MIGRATED_OWNER
                values["cancel_requested_at"] = (values.get("finished") or values.get("heartbeat") or
                                                 values.get("created")) if requested else None
                # pid_start is not copied: the old one was a /proc clock-tick count; None means "by pid only"
                cols = ", ".join(values)
                new.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(values))})",
                            list(values.values()))
        if "settings" in tables:
            for key, value in index.execute("SELECT key, value FROM settings"):
                new.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))
        new.execute("COMMIT")
    fsync_file(tmp)


def migrate_from_index(path: Path, index_path: Path) -> bool:
    """Move an old index's `jobs` and `settings` tables into the jobs database at `path` (created from them
    when it does not exist yet), then drop them from the index. Returns True when the index is now free of
    them (or never had them); False when the index could not be read (a damaged one: retried next time)."""
    if not index_path.is_file():
        return True
    try:
        with closing(sqlite3.connect(index_path, timeout=30, isolation_level=None)) as index:
            tables = _tables(index) & {"jobs", "settings"}
            if not tables:
                return True
            if not path.exists():
                tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
                try:
                    _copy_into(tmp, index, tables)
                    try:
                        os.link(tmp, path)  # atomic, and refuses to replace a queue another process created
                    except FileExistsError:
                        pass
                    fsync_dir(path.parent)
                finally:
                    tmp.unlink(missing_ok=True)
            index.execute("BEGIN IMMEDIATE")
            for table in sorted(tables):
                index.execute(f"DROP TABLE IF EXISTS {table}")
            index.execute("COMMIT")
        return True
    except sqlite3.DatabaseError:
        return False
