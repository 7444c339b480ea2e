"""The run store: one directory per run, and a SQLite index beside it for fast listing.

A run is built in `<runs>/.incomplete/<run_id>/` (config, log, history and checkpoints as training goes)
and moved to `<runs>/<run_id>/` by one `os.rename` once `metrics.json` and `model.keras` are written and
fsynced; the checkpoints are removed only after that rename is durable. So a directory directly under
`<runs>/` is always a complete run, and a crash at any point leaves the resumable checkpoint or the finished
run (or both), never neither. Run ids are generated (time + random), never built from user text.

The index (`<runs>/../index.sqlite`, i.e. `artifacts/index.sqlite`) is derived data: `reindex()` rebuilds
it from the directories at any time (the job queue has its own database, core.jobs.jobdb). Deleting runs
needs the admin role, tagging them the train role (core.access.roles).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import time
import zipfile
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from core.access.roles import User, require
from core.config import SETTINGS, RunConfig
from core.data.dataset import DatasetError, read_split, resolve
from core.errors import StoreError
from core.store import checkpoints
from core.store.csv_safe import safe_dict
from core.store.io import (
    RUN_ID_PATTERN,
    add_to_finished_run,
    fsync_dir,
    fsync_file,
    json_text,
    new_run_id,
    run_created,
    uninterrupted,
    write_atomic,
    write_json,
)

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_ENV = "CELLSCOPE_ARTIFACTS"
INCOMPLETE = ".incomplete"

CONFIG_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, LOG_FILE = (
    "config.json", "history.csv", "metrics.json", "model.keras", "train.log")


REINDEX_HINT = "python -m core runs --reindex"
CALIBRATION_KEY = "calibration"  # metrics.json's block of core.evaluation.calibration.Calibration.to_dict()


class RunStoreError(StoreError):
    pass


def index_message(path: Path, error: Exception) -> str:
    """The one message for an index (runs or jobs) that cannot be read: the file, the cause, the repair."""
    return (f"Could not read the run index {path} ({error.__class__.__name__}: {error}). If it is damaged, "
            f"rebuild it from the run folders: {REINDEX_HINT}")


@contextmanager
def index_errors(path: Path) -> Iterator[None]:
    """Turn SQLite and file errors met while using the index at `path` into one RunStoreError."""
    try:
        yield
    except (sqlite3.Error, OSError) as e:
        raise RunStoreError(index_message(path, e)) from e


def default_runs_dir() -> Path:
    return Path(os.environ.get(ARTIFACTS_ENV, PROJECT_ROOT / "artifacts")) / "runs"


def history_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(safe_dict(r) for r in rows)
    return buf.getvalue()


def read_history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as e:
        raise RunStoreError(f"The training history {path} cannot be read ({e.__class__.__name__}: {e}); the run's "
                            f"model and metrics are not affected") from None


def per_class_f1_json(metrics: dict[str, Any]) -> str | None:
    """The test split's per-class F1 as JSON {label: f1}, as the index stores it; None when absent."""
    per_class = metrics.get("test", {}).get("per_class")
    if not per_class:
        return None
    return json.dumps({label: v["f1"] for label, v in per_class.items()})


@dataclass(frozen=True)
class Run:
    """A complete run on disk."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(json.loads((self.path / CONFIG_FILE).read_text()))

    @property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / METRICS_FILE).read_text())

    @property
    def calibration(self) -> dict[str, Any] | None:
        """metrics.json's "calibration" block (temperature fitted on validation, before/after figures, the
        unidentified threshold; core.evaluation.calibration reads it), or None for a run not calibrated yet."""
        block = self.metrics.get(CALIBRATION_KEY)
        return block if isinstance(block, dict) else None

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def history(self) -> list[dict[str, float]]:
        return read_history(self.path)

    def derived(self, name: str, read: Callable[[Path], T], compute: Callable[[], T],
                dump: Callable[[T], str | bytes], refresh: bool = False) -> T:
        """A value derived from this finished run (stain statistics, the cell-framing target, OOD statistics):
        read from `<run>/<name>` when it is there and readable, else computed and cached there (atomically,
        the folder's time kept). A damaged or outdated file (`read` raises) is computed again; a read-only
        folder is simply not cached."""
        path = self.path / name
        if path.is_file() and not refresh:
            try:
                return read(path)
            except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile):
                pass  # damaged or from another version: computed again below
        value = compute()
        try:
            add_to_finished_run(self.path, name, dump(value))
        except OSError:
            pass  # a read-only run folder: still usable, just not cached
        return value

    def training_data(self) -> Path:
        """The npz this run trained on: the file its metrics record (a relative path is tried from the working
        folder, then from the project folder), else its config's data file, else BloodMNIST at its size in
        the data root. DatasetError when none of them is on this machine."""
        source = self.metrics.get("dataset", {}).get("source") or self.config.data
        if source:
            p = Path(source).expanduser()
            for candidate in ([p] if p.is_absolute() else [p, PROJECT_ROOT / p]):
                if candidate.is_file():
                    return candidate
        path = resolve(self.config.data, self.config.size)
        if not path.is_file():
            raise DatasetError(f"The run's data file {path} is not on this machine.")
        return path

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(images (N,S,S,3) uint8, labels (N,)) of the test split this run was evaluated on, reading only
        those two arrays; DatasetError when the file is unreadable or holds another test split."""
        return self.split("test")

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The run's "val" or "test" split, as `test_split` reads the test one (checked against the size the
        run recorded for it)."""
        path = self.training_data()
        images, labels = read_split(path, name)
        expected = self.metrics[name]["n"]
        if len(labels) != expected:
            raise DatasetError(f"{path.name} does not hold the {name} split this run was evaluated on "
                               f"({len(labels)} images, the run had {expected})")
        return images, labels


def store_calibration(run_dir: str | Path, block: dict[str, Any]) -> None:
    """Put (or replace) the "calibration" block in a finished run's metrics.json, atomically, every other key as
    it was, the folder's time kept (the index has no column of it: nothing to reindex)."""
    run = open_run(run_dir)
    metrics = run.metrics
    metrics[CALIBRATION_KEY] = block
    add_to_finished_run(run.path, METRICS_FILE, json_text(metrics))


def open_run(path: str | Path) -> Run:
    """A complete run directory, or RunStoreError saying what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise RunStoreError(f"No run directory at {path}")
    missing = [n for n in (CONFIG_FILE, METRICS_FILE, MODEL_FILE) if not (path / n).is_file()]
    if missing:
        raise RunStoreError(f"{path} is not a complete run (missing {', '.join(missing)})")
    return Run(path)


class RunWriter:
    """Builds one run in `.incomplete/<id>/` and publishes it with a single rename."""

    def __init__(self, store: "RunStore", config: RunConfig, run_id: str | None = None):
        self.store = store
        self.config = config
        self.run_id = run_id or new_run_id()
        if not RUN_ID_PATTERN.match(self.run_id):
            raise RunStoreError(f"invalid run id {self.run_id!r}")
        self.work_dir = store.runs_dir / INCOMPLETE / self.run_id
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.work_dir / CONFIG_FILE, config.to_dict())
        self._log = open(self.work_dir / LOG_FILE, "a", buffering=1)

    def log(self, message: str) -> None:
        if self._log.closed:  # closed by a publish that then failed: reopen while the work folder is there
            if not self.work_dir.is_dir():
                return
            self._log = open(self.work_dir / LOG_FILE, "a", buffering=1)
        self._log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        write_atomic(self.work_dir / HISTORY_FILE, history_csv(rows))

    def publish(self, metrics: dict[str, Any], save_model) -> Run:
        """Write model (via `save_model(path)`) and metrics, fsync them, move the run into place with one
        rename, make the rename durable, and only then remove the checkpoints. A cancel waits for all of it
        (`uninterrupted`); a failure before the rename leaves the work folder with its checkpoint, resumable;
        one after it leaves the complete run (and at worst its checkpoints beside it)."""
        final = self.store.runs_dir / self.run_id
        if final.exists():
            raise RunStoreError(f"{final} already exists: this run was published before")
        tmp_model = self.work_dir / f".tmp-{MODEL_FILE}"
        with uninterrupted():
            try:
                save_model(tmp_model)
                fsync_file(tmp_model)
                os.replace(tmp_model, self.work_dir / MODEL_FILE)
            except BaseException:
                tmp_model.unlink(missing_ok=True)
                raise
            write_json(self.work_dir / METRICS_FILE, metrics)
            self.log("run complete")
            self._log.close()
            fsync_dir(self.work_dir)
            os.rename(self.work_dir, final)
            fsync_dir(final.parent)
            fsync_dir(self.work_dir.parent)
            checkpoints.remove_all(final)
        run = Run(final)
        self.store.index_run_if_possible(run)
        return run

    def close(self) -> None:
        if not self._log.closed:
            self._log.close()


_SQL_TYPES = {bool: "INTEGER", int: "INTEGER", float: "REAL", str: "TEXT", tuple: "TEXT"}
INDEXED_SETTINGS = tuple(s for s in SETTINGS.values() if s.indexed)  # each has its own column
RUNS_TABLE_SQL = f"""CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, path TEXT NOT NULL, created REAL NOT NULL,
    {", ".join(f"{s.name} {_SQL_TYPES[s.kind]}" for s in INDEXED_SETTINGS)},
    best_epoch INTEGER, epochs_run INTEGER,
    val_accuracy REAL, val_auc REAL, test_accuracy REAL, test_auc REAL, test_macro_f1 REAL,
    train_seconds REAL, images_per_second REAL, config_json TEXT NOT NULL,
    per_class_f1 TEXT)"""  # per_class_f1: JSON {label: test F1} at the best epoch, for the results matrix


def index_value(value: Any) -> Any:
    """A setting's value as its index column holds it: yes/no as 1/0, tags as "a,b"."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (tuple, list)):
        return ",".join(value)
    return value


def index_row(run_id: str, path: Path, created: float, config: RunConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """One row of the runs table: the run, its indexed settings and its best-epoch metrics."""
    return {
        "run_id": run_id, "path": str(path), "created": created,
        **{s.name: index_value(getattr(config, s.name)) for s in INDEXED_SETTINGS},
        "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run"),
        "val_accuracy": metrics["val"]["accuracy"], "val_auc": metrics["val"]["auc"],
        "test_accuracy": metrics["test"]["accuracy"], "test_auc": metrics["test"]["auc"],
        "test_macro_f1": metrics["test"].get("macro_f1"), "train_seconds": metrics.get("train_seconds"),
        "images_per_second": metrics.get("train_images_per_second"), "config_json": config.to_json(),
        "per_class_f1": per_class_f1_json(metrics),
    }


@lru_cache(maxsize=1)
def runs_columns() -> frozenset[str]:
    """The columns RUNS_TABLE_SQL defines, as SQLite itself reads them."""
    with closing(sqlite3.connect(":memory:")) as mem:
        mem.execute(RUNS_TABLE_SQL)
        return frozenset(row[1] for row in mem.execute("PRAGMA table_info(runs)"))


class RunStore:
    """The run folders and their SQLite index. Every failure to use the index is a RunStoreError (a StoreError)
    naming the file, with the one repair hint."""

    def __init__(self, runs_dir: str | Path | None = None):
        self.runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
        self.index_path = self.runs_dir.parent / "index.sqlite"
        with index_errors(self.index_path):
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:
                db.execute(RUNS_TABLE_SQL)
                stale = {row[1] for row in db.execute("PRAGMA table_info(runs)")} != runs_columns()
                if stale:  # written by an older version: the index is derived data, so rebuild it
                    db.execute("DROP TABLE runs")
                    db.execute(RUNS_TABLE_SQL)
        if stale:
            self.reindex()

    @classmethod
    def rebuilt(cls, runs_dir: str | Path | None = None) -> tuple["RunStore", Path | None]:
        """The store with its index rebuilt from the run folders, as `python -m core runs --reindex` does.

        An index file that SQLite cannot read at all is moved aside (`index.sqlite.damaged-<time>`, with its
        -wal/-shm files) and a new one is built, so the repair the error messages advise always works. The run
        folders are the data; the index is derived. Returns the store and where a damaged file went (or None).
        """
        try:
            store = cls(runs_dir)
        except RunStoreError as e:
            if not isinstance(e.__cause__, sqlite3.DatabaseError):
                raise
            index = (Path(runs_dir) if runs_dir else default_runs_dir()).parent / "index.sqlite"
            aside = index.with_name(f"{index.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            with index_errors(index):
                for suffix in ("-wal", "-shm", ""):
                    part = Path(f"{index}{suffix}")
                    if part.exists():
                        os.replace(part, f"{aside}{suffix}")
            store = cls(runs_dir)
        else:
            aside = None
        store.reindex()
        return store, aside

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.index_path, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        return db

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection to the index, committed and closed after the block; errors as RunStoreError."""
        with index_errors(self.index_path), closing(self._connect()) as db, db:
            yield db

    def writer(self, config: RunConfig) -> RunWriter:
        return RunWriter(self, config)

    def published(self, run_id: str) -> Run | None:
        """The complete run `run_id` if it was published (model.keras and metrics.json in its final folder),
        tidied (checkpoints a cut publish left removed) and indexed; else None. How a job whose process died
        after publishing is recovered as succeeded, never trained again."""
        if not RUN_ID_PATTERN.match(run_id or ""):
            return None
        path = self.runs_dir / run_id
        if not ((path / METRICS_FILE).is_file() and (path / MODEL_FILE).is_file()):
            return None
        try:
            checkpoints.remove_all(path)
        except OSError:
            pass  # leftovers are harmless beside a complete run
        run = Run(path)
        self.index_run_if_possible(run)
        return run

    def index_run_if_possible(self, run: Run) -> None:
        """Index a run that is already complete on disk. The index is derived data: when it cannot be written
        the run is still complete, and `python -m core runs --reindex` lists it."""
        try:
            self.index_run(run)
        except (RunStoreError, OSError, ValueError, KeyError):
            pass

    def index_run(self, run: Run) -> None:
        row = index_row(run.run_id, run.path, run_created(run.run_id), run.config, run.metrics)
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._db() as db:
            db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", row)

    def complete_runs(self) -> Iterator[Run]:
        for path in sorted(self.runs_dir.iterdir()):
            if path.is_dir() and RUN_ID_PATTERN.match(path.name) and (path / METRICS_FILE).is_file():
                yield Run(path)

    def reindex(self) -> int:
        """Rebuild the index from the run directories; returns the number of runs indexed."""
        with self._db() as db:
            db.execute("DELETE FROM runs")
        n = 0
        for run in self.complete_runs():
            try:
                self.index_run(run)
                n += 1
            except (OSError, ValueError, KeyError):
                continue  # a damaged run is skipped, never fatal for the listing
        return n

    def list_runs(self, order_by: str = "created DESC") -> list[dict[str, Any]]:
        allowed = {"created DESC", "val_accuracy DESC", "test_accuracy DESC"}
        if order_by not in allowed:
            raise RunStoreError(f"order_by must be one of {sorted(allowed)}")
        with self._db() as db:
            rows = [dict(r) for r in db.execute(f"SELECT * FROM runs ORDER BY {order_by}")]
        return [r for r in rows if Path(r["path"]).is_dir()]

    def count(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def best_run(self) -> dict[str, Any] | None:
        """The run with the highest validation accuracy (never chosen on test)."""
        rows = self.list_runs("val_accuracy DESC")
        return rows[0] if rows else None

    def delete(self, run_id: str, user: User) -> None:
        """Delete a complete run (folder and index row); admins only."""
        require(user, "admin", what=f"delete run {run_id}")
        if not RUN_ID_PATTERN.match(run_id):
            raise RunStoreError(f"invalid run id {run_id!r}")
        path = self.runs_dir / run_id
        with self._db() as db:
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        if path.is_dir():
            shutil.rmtree(path)

    def tag_runs(self, run_ids: Sequence[str], user: User, add: Iterable[str] = (),
                 remove: Iterable[str] = ()) -> int:
        """Add and/or remove tags on complete runs: rewrite each config.json atomically, then reindex the run.

        The run directory's modification time is kept (the index's `created` is read from it). Returns the
        number of runs changed. A bad tag, run id or run is a RunStoreError; a user without the train role is
        refused (AccessDenied).
        """
        require(user, "train", what="tag runs")
        add = [check_tag(t) for t in add]
        remove = {t.strip() for t in remove}
        changed = 0
        for run_id in run_ids:
            if not RUN_ID_PATTERN.match(run_id):
                raise RunStoreError(f"invalid run id {run_id!r}")
            path = self.runs_dir / run_id
            config_path = path / CONFIG_FILE
            if not config_path.is_file():
                raise RunStoreError(f"no complete run {run_id} in {self.runs_dir}")
            config = json.loads(config_path.read_text())
            old = list(config.get("tags") or [])
            new = [t for t in old if t not in remove]
            new += [t for t in add if t not in new]
            if new == old:
                continue
            config["tags"] = new
            RunConfig.from_dict(config)  # still a valid configuration
            add_to_finished_run(path, config_path.name, json_text(config))
            self.index_run(Run(path))
            changed += 1
        return changed


TAG_PATTERN = re.compile(r"^[^,\x00-\x1f]{1,40}\Z")


def check_tag(tag: str) -> str:
    tag = tag.strip()
    if not TAG_PATTERN.match(tag):
        raise RunStoreError(f"a tag is 1 to 40 characters without commas: {tag!r}")
    return tag
