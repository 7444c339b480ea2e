"""Pathologist review of a model's calls, as a digital morphology analyser's pre-classification is reviewed.

A review session is a fixed, ordered set of cells (a run's test split, an external dataset, or uploaded
images saved under the artifacts folder) with the model's call and confidence for each. A reviewer goes
through them one at a time and decides: agree, reclassify (to one of the 8 classes), unsure, or not a
cell, with an optional note. Everything lives in SQLite (`artifacts/reviews.sqlite`, beside the run
index), so sessions survive restarts and resume at the first cell not yet reviewed.

Order: lowest model confidence first, or the morphologically ambiguous classes (monocyte, immature
granulocyte; the study's weak spots) first, each by confidence; or exactly the cells the run's 'unidentified'
threshold leaves for a person (calibrated confidence below the threshold chosen on validation from a target
accuracy, core.evaluation.calibration), lowest first. Confidences are calibrated (the run's temperature).
Two reviewers who start sessions over the same run, source, order and size get the same cells, so their
agreement (Cohen's kappa) can be measured.

Who reviews is the logged-in user (`core.access.roles.User`), never a typed name: starting a session needs the
"review" permission, and a decision can be recorded or cleared only in the user's own session (an admin may
act on any). A write that finds the database busy waits a few seconds (`BUSY_SECONDS`), then raises
`ReviewBusyError` saying the decision was not saved, so the page can keep it and offer to save it again. A
damaged database is a `ReviewStoreError` naming the file; `move_aside` moves it (and its WAL files) away so
a new, empty one starts.

Building a session runs the model (TensorFlow, imported inside those functions only); the store itself,
summaries and exports need neither TensorFlow nor Streamlit.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from core.access.roles import User, require
from core.data.cell_framing import run_fraction
from core.data.dataset import read_split
from core.data.registry import short_label
from core.errors import StoreError, UserFacingError
from core.evaluation.confusion import ambiguous_labels
from core.evaluation.metrics import evaluate_calls
from core.store.csv_safe import safe_row
from core.store.sqlite_schema import add_missing_columns
from core.validation.external.loading import load_images
from core.validation.external.mapping import build_mapping
from core.validation.external.scan import scan

REVIEWS_DB = "reviews.sqlite"
UPLOADS_DIR = "review_uploads"
UPLOAD_MAX_SIDE = 2048  # an uploaded review image's longer side, at most (CellaVision originals: ~360 px)
UPLOAD_ORPHAN_AGE_S = 3600.0  # uploads no session uses are removed after this (a session is made right after)
DECISIONS = ("agree", "reclassify", "unsure", "not_cell")
DECISION_TITLES = {"agree": "Agree", "reclassify": "Reclassify", "unsure": "Unsure", "not_cell": "Not a cell"}
UNSURE, NOT_CELL = "unsure", "not a cell"  # reviewer categories besides the 8 classes
ORDERS = ("confidence", "ambiguous", "unidentified")
ORDER_TITLES = {"confidence": "Lowest confidence first",
                "ambiguous": f"Ambiguous classes first ({', '.join(ambiguous_labels())})",
                "unidentified": "Unidentified by the run's threshold (every cell below it, lowest first)"}
SOURCES = ("test", "external", "uploads")
SOURCE_TITLES = {"test": "Test split of the run", "external": "External dataset", "uploads": "Uploaded images"}
MAX_NOTE = 2000
BUSY_SECONDS = 3.0  # how long a write waits for another writer's lock before saying it was not saved
CSV_COLUMNS = ("session_id", "reviewer", "position", "cell_key", "image", "true_label", "model_label",
               "model_confidence", "model_top3", "decision", "reviewer_label", "note", "decided_at")
TOP_K = 3  # the model's most likely classes kept per cell (its call first)


class ReviewError(UserFacingError, ValueError):
    """A review input a user can fix (a name, a decision, a session that does not exist)."""


class ReviewStoreError(StoreError):
    """The review database could not be opened, read or written (SQLite's errors, wrapped)."""


class ReviewBusyError(ReviewStoreError):
    """Another program held the review database's write lock for longer than BUSY_SECONDS: nothing was saved."""


def default_db_path() -> Path:
    from core.store.runs import default_runs_dir  # noqa: PLC0415

    return default_runs_dir().parent / REVIEWS_DB


@dataclass(frozen=True)
class CellSpec:
    key: str  # identity of the cell across sessions (test:<index>, or the image file's path)
    image: str  # where the pixels are: npz:<file>#<split>:<index>, or an image file's path
    true_label: str | None  # the dataset's label, when it has one (never shown while reviewing)
    model_label: str
    confidence: float
    top: tuple[tuple[str, float], ...] = ()  # the model's TOP_K most likely classes with probabilities, call first


def top_classes(probabilities: np.ndarray, labels: Sequence[str], k: int = TOP_K) -> tuple[tuple[str, float], ...]:
    """The `k` most likely classes of one probability row, most likely first (ties: the lower class index)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    order = sorted(range(len(probabilities)), key=lambda i: (-probabilities[i], i))[:k]
    return tuple((short_label(labels[i]), round(float(probabilities[i]), 6)) for i in order)


def top_text(top: Sequence[Sequence[Any]]) -> str:
    """'neutrophil 91.2%; immature granulocytes 6.1%; monocyte 1.0%' (the CSV's model_top3 column)."""
    return "; ".join(f"{label} {p:.1%}" for label, p in top)


def set_key(run_id: str, cells: Sequence[CellSpec]) -> str:
    """The same run and the same cells in the same order give the same key (for inter-reviewer kappa)."""
    h = hashlib.sha1(run_id.encode())
    for c in cells:
        h.update(b"\0" + c.key.encode())
    return h.hexdigest()[:16]


def reviewer_category(decision: str | None, label: str | None) -> str | None:
    """What the reviewer called the cell: a class, 'unsure' or 'not a cell' (None: not reviewed)."""
    if decision in ("agree", "reclassify"):
        return label
    if decision == "unsure":
        return UNSURE
    if decision == "not_cell":
        return NOT_CELL
    return None


def clamp_position(position: int | None, n_cells: int) -> int:
    """A cell position kept inside a session of `n_cells` cells (the first cell when there is none yet)."""
    return 0 if position is None else min(max(int(position), 0), n_cells - 1)


def reviewed_agreement(agreement: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A summary's per-call agreement rows without the model's calls no reviewed cell has."""
    return [row for row in agreement if row["reviewed"] > 0]


def reviewed_confusion(confusion: dict[str, Any]) -> tuple[np.ndarray, list[str], list[str]]:
    """A summary's model-vs-reviewer matrix as (counts, rows, columns), without the rows of the model's calls
    no reviewed cell has (the columns, the reviewer's calls, all stay)."""
    matrix = np.asarray(confusion["matrix"])
    keep = matrix.sum(axis=1) > 0
    return matrix[keep], [r for r, k in zip(confusion["rows"], keep) if k], list(confusion["columns"])


class ReviewStore:
    """Sessions, their cells and the decisions, in one SQLite file (WAL, safe for several app sessions)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ReviewStoreError(f"Cannot create the folder of the review database {self.path} "
                                   f"({e.strerror or e})") from None
        with self._db(write=True) as db:
            db.executescript(
                """CREATE TABLE IF NOT EXISTS review_sessions (
                       id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, reviewer TEXT NOT NULL,
                       run_id TEXT NOT NULL, run_path TEXT NOT NULL, source_kind TEXT NOT NULL,
                       source TEXT NOT NULL, order_mode TEXT NOT NULL, resize TEXT NOT NULL,
                       set_key TEXT NOT NULL, labels_json TEXT NOT NULL, n_cells INTEGER NOT NULL);
                   CREATE TABLE IF NOT EXISTS review_cells (
                       session_id INTEGER NOT NULL REFERENCES review_sessions(id) ON DELETE CASCADE,
                       position INTEGER NOT NULL, cell_key TEXT NOT NULL, image TEXT NOT NULL,
                       true_label TEXT, model_label TEXT NOT NULL, confidence REAL NOT NULL,
                       PRIMARY KEY (session_id, position));
                   CREATE TABLE IF NOT EXISTS review_decisions (
                       session_id INTEGER NOT NULL REFERENCES review_sessions(id) ON DELETE CASCADE,
                       position INTEGER NOT NULL, decision TEXT NOT NULL, label TEXT, note TEXT NOT NULL,
                       reviewer TEXT NOT NULL, decided_at REAL NOT NULL, PRIMARY KEY (session_id, position));
                   CREATE INDEX IF NOT EXISTS review_sessions_set ON review_sessions(set_key);""")
            # databases written before the model's top classes were kept
            add_missing_columns(db, "review_cells", (("top_json", "TEXT"),))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_SECONDS)  # SQLite retries a busy database this long
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection (in a transaction when `write`); SQLite's errors come out as ReviewStoreError."""
        try:
            with closing(self._connect()) as db:
                if write:
                    with db:
                        yield db
                else:
                    yield db
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                done = "Nothing was saved" if write else "It could not be read"
                raise ReviewBusyError(f"The review database {self.path} is busy: another program has held it "
                                      f"for more than {BUSY_SECONDS:g} s. {done}; try again.") from None
            raise self._damaged(e) from None
        except sqlite3.Error as e:
            raise self._damaged(e) from None

    def _damaged(self, e: Exception) -> ReviewStoreError:
        return ReviewStoreError(f"The review database {self.path} cannot be used ({e}). If it is damaged, move "
                                f"it aside (the Review page offers this to an admin) and a new, empty one is "
                                f"started; the old file is kept for recovery.")

    @staticmethod
    def move_aside(path: str | Path | None = None) -> Path:
        """Rename a damaged review database (and its -wal/-shm files) to `<name>.damaged-<UTC time>`, so the
        next ReviewStore starts a new one; the old file stays for recovery. Returns the new name."""
        path = Path(path) if path else default_db_path()
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
                               f"-{secrets.token_hex(2)}")
        try:
            for suffix in ("-wal", "-shm", ""):  # the main file last: until then, the store is still the old one
                part = path.with_name(path.name + suffix)
                if part.exists():
                    os.replace(part, aside.with_name(aside.name + suffix))
        except OSError as e:
            raise ReviewStoreError(f"Cannot move {path} aside ({e.strerror or e})") from None
        return aside

    # -- sessions -----------------------------------------------------------------------------------------
    def create_session(self, user: User, run_id: str, run_path: str | Path, source_kind: str, source: str,
                       order: str, cells: Sequence[CellSpec], labels: Sequence[str],
                       resize: str = "medmnist") -> int:
        """A new session of `user`'s (who needs the "review" permission)."""
        require(user, "review", what="start a review session")
        reviewer = user.name
        if source_kind not in SOURCES:
            raise ReviewError(f"source must be one of {', '.join(SOURCES)}")
        if order not in ORDERS:
            raise ReviewError(f"order must be one of {', '.join(ORDERS)}")
        if not cells:
            raise ReviewError("There are no cells to review in this source")
        labels = [short_label(x) for x in labels]
        with self._db(write=True) as db:
            cur = db.execute(
                "INSERT INTO review_sessions (created, reviewer, run_id, run_path, source_kind, source, order_mode, "
                "resize, set_key, labels_json, n_cells) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), reviewer, run_id, str(run_path), source_kind, source, order, resize,
                 set_key(run_id, cells), json.dumps(labels), len(cells)))
            sid = int(cur.lastrowid)
            db.executemany(
                "INSERT INTO review_cells (session_id, position, cell_key, image, true_label, model_label, "
                "confidence, top_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(sid, i, c.key, c.image, c.true_label, c.model_label, float(c.confidence),
                  json.dumps([[label, float(p)] for label, p in c.top]) if c.top else None)
                 for i, c in enumerate(cells)])
        self.clean_uploads()
        return sid

    def sessions(self, user: User | None = None) -> list[dict[str, Any]]:
        """`user`'s own sessions (an admin's: everyone's; None: all, for comparisons), newest first, with how
        many cells each has reviewed."""
        query = ("SELECT s.*, (SELECT COUNT(*) FROM review_decisions d WHERE d.session_id = s.id) AS reviewed "
                 "FROM review_sessions s")
        args: tuple = ()
        if user is not None and not user.is_admin:
            query += " WHERE s.reviewer = ?"
            args = (user.name,)
        with self._db() as db:
            rows = [dict(r) for r in db.execute(query + " ORDER BY s.id DESC", args)]
        for r in rows:
            r["labels"] = json.loads(r.pop("labels_json"))
        return rows

    def session(self, session_id: int) -> dict[str, Any]:
        with self._db() as db:
            row = db.execute("SELECT s.*, (SELECT COUNT(*) FROM review_decisions d WHERE d.session_id = s.id) "
                             "AS reviewed FROM review_sessions s WHERE s.id = ?", (int(session_id),)).fetchone()
        if row is None:
            raise ReviewError(f"No review session {session_id}")
        out = dict(row)
        out["labels"] = json.loads(out.pop("labels_json"))
        return out

    def delete_session(self, session_id: int, user: User) -> None:
        s = self.session(session_id)
        require(user, "review", owner=s["reviewer"], what=f"review session #{session_id}")
        with self._db(write=True) as db:
            db.execute("DELETE FROM review_decisions WHERE session_id = ?", (int(session_id),))
            db.execute("DELETE FROM review_cells WHERE session_id = ?", (int(session_id),))
            db.execute("DELETE FROM review_sessions WHERE id = ?", (int(session_id),))
        self.clean_uploads(min_age_s=0.0 if s["source_kind"] == "uploads" else UPLOAD_ORPHAN_AGE_S)

    @property
    def uploads_dir(self) -> Path:
        """Where this store's uploaded review images are saved (`save_uploads`), beside the database."""
        return self.path.parent / UPLOADS_DIR

    def clean_uploads(self, min_age_s: float = UPLOAD_ORPHAN_AGE_S) -> int:
        """Remove the uploaded images (only files directly in `uploads_dir`, never a dataset's) that no session
        uses and that are older than `min_age_s`: images left out of a session by its size limit, and those
        of deleted sessions. Returns how many were removed."""
        folder = self.uploads_dir
        if not folder.is_dir():
            return 0
        with self._db() as db:
            used = {Path(r[0]).name for r in db.execute("SELECT DISTINCT image FROM review_cells")
                    if Path(r[0]).parent == folder}
        removed, now = 0, time.time()
        for f in folder.glob("*.png"):
            try:
                if f.name not in used and now - f.stat().st_mtime >= min_age_s:
                    f.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # removed by another session's clean at the same time
        return removed

    # -- cells and decisions ------------------------------------------------------------------------------
    def cells(self, session_id: int) -> list[dict[str, Any]]:
        """Every cell of a session in review order, with its decision (None where not reviewed yet)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT c.position, c.cell_key, c.image, c.true_label, c.model_label, c.confidence, c.top_json, "
                "d.decision, d.label, d.note, d.reviewer, d.decided_at FROM review_cells c "
                "LEFT JOIN review_decisions d ON d.session_id = c.session_id AND d.position = c.position "
                "WHERE c.session_id = ? ORDER BY c.position", (int(session_id),)).fetchall()
        return [_cell_row(r) for r in rows]

    def cell(self, session_id: int, position: int) -> dict[str, Any]:
        with self._db() as db:
            row = db.execute(
                "SELECT c.position, c.cell_key, c.image, c.true_label, c.model_label, c.confidence, c.top_json, "
                "d.decision, d.label, d.note, d.reviewer, d.decided_at FROM review_cells c "
                "LEFT JOIN review_decisions d ON d.session_id = c.session_id AND d.position = c.position "
                "WHERE c.session_id = ? AND c.position = ?", (int(session_id), int(position))).fetchone()
        if row is None:
            raise ReviewError(f"Session {session_id} has no cell {position + 1}")
        return _cell_row(row)

    def record(self, session_id: int, position: int, decision: str, label: str | None = None,
               note: str = "", *, user: User) -> None:
        """Store (or change) `user`'s decision on one cell of their own session (an admin: any session);
        'agree' takes the model's call as the label."""
        if decision not in DECISIONS:
            raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}")
        s = self.session(session_id)
        require(user, "review", owner=s["reviewer"], what=f"review session #{session_id}")
        cell = self.cell(session_id, position)
        labels = s["labels"]
        if decision == "agree":
            label = cell["model_label"]
        elif decision == "reclassify":
            if label not in labels:
                raise ReviewError(f"reclassify needs one of the classes: {', '.join(labels)}")
        else:
            label = None
        note = str(note or "").strip()
        if len(note) > MAX_NOTE:
            raise ReviewError(f"The note is longer than {MAX_NOTE} characters")
        with self._db(write=True) as db:
            db.execute("INSERT OR REPLACE INTO review_decisions (session_id, position, decision, label, note, "
                       "reviewer, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (int(session_id), int(position), decision, label, note, user.name, time.time()))

    def clear(self, session_id: int, position: int, *, user: User) -> None:
        s = self.session(session_id)
        require(user, "review", owner=s["reviewer"], what=f"review session #{session_id}")
        with self._db(write=True) as db:
            db.execute("DELETE FROM review_decisions WHERE session_id = ? AND position = ?",
                       (int(session_id), int(position)))

    def last_decided(self, session_id: int) -> int | None:
        """The position of the session's most recent decision (None: no decision yet)."""
        with self._db() as db:
            row = db.execute("SELECT position FROM review_decisions WHERE session_id = ? "
                             "ORDER BY decided_at DESC, rowid DESC LIMIT 1", (int(session_id),)).fetchone()
        return None if row is None else int(row[0])

    def undo_last(self, session_id: int, *, user: User) -> int | None:
        """Take back the session's most recent decision (its note goes with it); returns that cell's position, so
        the reviewer goes back to it (None: there was nothing to undo)."""
        position = self.last_decided(session_id)
        if position is not None:
            self.clear(session_id, position, user=user)
        return position

    def progress(self, session_id: int) -> tuple[int, int]:
        s = self.session(session_id)
        return int(s["reviewed"]), int(s["n_cells"])

    def first_unreviewed(self, session_id: int, after: int = -1) -> int | None:
        """The first cell without a decision after `after` (wrapping round); None when all are done."""
        with self._db() as db:
            rows = db.execute(
                "SELECT c.position FROM review_cells c LEFT JOIN review_decisions d ON d.session_id = c.session_id "
                "AND d.position = c.position WHERE c.session_id = ? AND d.decision IS NULL ORDER BY c.position",
                (int(session_id),)).fetchall()
        positions = [int(r[0]) for r in rows]
        if not positions:
            return None
        later = [p for p in positions if p > after]
        return later[0] if later else positions[0]

    def next_item(self, session_id: int, after: int | None = None) -> int:
        """The cell a reviewer goes to next. Opening a session (`after` None): the first cell without a decision,
        or the first cell when all are done. After deciding on cell `after`: the next cell without a decision
        (wrapping round); when none is left, the cell after it (or `after` itself, at the last cell)."""
        nxt = self.first_unreviewed(session_id, -1 if after is None else after)
        if nxt is not None:
            return nxt
        if after is None:
            return 0
        return after + 1 if after + 1 < self.session(session_id)["n_cells"] else after

    def same_set(self, session_id: int) -> list[dict[str, Any]]:
        """Other sessions over exactly the same cells (other reviewers, or the same one again)."""
        s = self.session(session_id)
        return [r for r in self.sessions() if r["set_key"] == s["set_key"] and r["id"] != s["id"]]

    # -- summary and export -------------------------------------------------------------------------------
    def summary(self, session_id: int) -> dict[str, Any]:
        s = self.session(session_id)
        labels = s["labels"]
        cells = self.cells(session_id)
        reviewed = [c for c in cells if c["decision"]]
        categories = labels + [UNSURE, NOT_CELL]
        index = {c: j for j, c in enumerate(categories)}
        calls = [(index[c["model_label"]], index[cat]) for c in reviewed
                 if c["model_label"] in labels and (cat := reviewer_category(c["decision"], c["label"])) in index]
        model_calls, reviewer_calls = (np.asarray(x, dtype=int) for x in (zip(*calls) if calls else ((), ())))
        confusion = evaluate_calls(model_calls, reviewer_calls, categories, rows=range(len(labels))).confusion
        per_class = {label: {"reviewed": 0, "agree": 0, "reclassify": 0, "unsure": 0, "not_cell": 0}
                     for label in labels}
        for c in reviewed:
            entry = per_class.setdefault(c["model_label"], {"reviewed": 0, "agree": 0, "reclassify": 0,
                                                            "unsure": 0, "not_cell": 0})
            entry["reviewed"] += 1
            entry[c["decision"]] += 1
        # Agreement is over the cells the reviewer gave a class to (agree or reclassify): "unsure" and "not a
        # cell" say nothing about whether the model's call was right, so they are outside the denominator.
        agreement = []
        for label, e in per_class.items():
            definite = e["agree"] + e["reclassify"]
            agreement.append({"model_label": label, **e, "definite": definite,
                              "agreement": e["agree"] / definite if definite else None})
        n_agree = sum(1 for c in reviewed if c["decision"] == "agree")
        n_definite = sum(1 for c in reviewed if c["decision"] in ("agree", "reclassify"))
        truth = [c for c in reviewed if c["true_label"]]
        vs_truth = None
        if truth:
            vs_truth = {"n": len(truth),
                        "model_accuracy": sum(c["model_label"] == c["true_label"] for c in truth) / len(truth),
                        "reviewer_accuracy": sum(reviewer_category(c["decision"], c["label"]) == c["true_label"]
                                                 for c in truth) / len(truth)}
        return {
            "session_id": int(session_id), "reviewer": s["reviewer"], "n_cells": len(cells),
            "reviewed": len(reviewed), "decisions": {d: sum(c["decision"] == d for c in reviewed) for d in DECISIONS},
            "agreement_overall": n_agree / n_definite if n_definite else None,
            "agreement_n": n_definite,
            "agreement": agreement,
            "confusion": {"rows": labels, "columns": categories, "matrix": confusion},
            "vs_truth": vs_truth,
        }

    def kappa(self, session_a: int, session_b: int) -> dict[str, Any]:
        """Cohen's kappa between two sessions' reviewer calls over the cells both reviewed."""
        return kappa_between(self.cells(session_a), self.cells(session_b))

    def export_csv(self, session_id: int) -> str:
        s = self.session(session_id)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for c in self.cells(session_id):
            decided = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c["decided_at"]))
                       if c["decided_at"] else "")
            writer.writerow(safe_row([
                s["id"], c["reviewer"] or s["reviewer"], c["position"] + 1, c["cell_key"], c["image"],
                c["true_label"] or "", c["model_label"], f"{c['confidence']:.6f}", top_text(c["top"]),
                c["decision"] or "",
                reviewer_category(c["decision"], c["label"]) or "", c["note"] or "", decided]))
        return buf.getvalue()


def _cell_row(row: sqlite3.Row) -> dict[str, Any]:
    """One cell as a dict, its stored top classes as [(label, probability), ...] ([] for older sessions)."""
    out = dict(row)
    try:
        out["top"] = [(str(label), float(p)) for label, p in json.loads(out.pop("top_json") or "[]")]
    except (ValueError, TypeError):
        out["top"] = []
    return out


def kappa_between(cells_a: Iterable[dict[str, Any]], cells_b: Iterable[dict[str, Any]]) -> dict[str, Any]:
    from sklearn.metrics import cohen_kappa_score  # noqa: PLC0415

    a = {c["cell_key"]: reviewer_category(c["decision"], c["label"]) for c in cells_a}
    b = {c["cell_key"]: reviewer_category(c["decision"], c["label"]) for c in cells_b}
    keys = [k for k in a if a[k] is not None and b.get(k) is not None]
    ya, yb = [a[k] for k in keys], [b[k] for k in keys]
    agree = sum(x == y for x, y in zip(ya, yb))
    out: dict[str, Any] = {"n": len(keys), "observed_agreement": agree / len(keys) if keys else None, "kappa": None}
    if len(keys) >= 2 and len(set(ya) | set(yb)) >= 2:
        value = float(cohen_kappa_score(ya, yb))
        out["kappa"] = value if value == value else None  # NaN when undefined
    return out


# -- building sessions (runs the model) ------------------------------------------------------------------

def unidentified_threshold(run_dir: str | Path) -> float:
    """The run's 'unidentified' threshold (chosen on validation); ReviewError while the run has none."""
    from core.evaluation.calibration import stored  # noqa: PLC0415

    found = stored(run_dir)
    if found is None:
        raise ReviewError(f"Run {Path(run_dir).name} has no calibrated threshold yet: calibrate it first (Results "
                          f"page, or python -m core calibrate {run_dir})")
    return found.unidentified.threshold


def order_cells(cells: Sequence[CellSpec], order: str, labels: Sequence[str],
                threshold: float | None = None) -> list[CellSpec]:
    """Lowest confidence first; or cells the model calls an ambiguous class first, each group by confidence; or
    ("unidentified") only the cells whose confidence is below `threshold` (the run's), lowest first."""
    if order not in ORDERS:
        raise ReviewError(f"order must be one of {', '.join(ORDERS)}")
    ambiguous = set(ambiguous_labels(labels))
    if order == "unidentified":
        if threshold is None:
            raise ReviewError("'Unidentified by the run's threshold' needs the run's threshold")
        return sorted((c for c in cells if c.confidence < threshold), key=lambda c: (c.confidence, c.key))
    if order == "confidence":
        return sorted(cells, key=lambda c: (c.confidence, c.key))
    return sorted(cells, key=lambda c: (c.model_label not in ambiguous, c.confidence, c.key))


def _specs_from(probs: np.ndarray, labels: Sequence[str], keys: Sequence[str], refs: Sequence[str],
                truths: Sequence[str | None]) -> list[CellSpec]:
    labels = [short_label(x) for x in labels]
    idx = probs.argmax(axis=1)
    return [CellSpec(k, r, t, labels[int(i)], float(p[int(i)]), top_classes(p, labels))
            for k, r, t, i, p in zip(keys, refs, truths, idx, probs)]


def _specs(clf, images: np.ndarray, keys: Sequence[str], refs: Sequence[str],
           truths: Sequence[str | None]) -> list[CellSpec]:
    return _specs_from(clf.probabilities(images), clf.labels, keys, refs, truths)


def cells_from_predictions(data_file: str | Path, labels: Sequence[str], y_true: np.ndarray,
                           probabilities: np.ndarray, limit: int = 100, order: str = "confidence",
                           threshold: float | None = None) -> list[CellSpec]:
    """A run's test split from its stored predictions (core.evaluation.predictions: no model needed; calibrated
    as shown), ordered and cut to the first `limit` cells (0: all). `data_file`: the npz the split is read from;
    `threshold`: the run's, for the "unidentified" order."""
    short = [short_label(x) for x in labels]
    n = len(y_true)
    specs = _specs_from(np.asarray(probabilities), labels, [f"test:{i}" for i in range(n)],
                        [f"npz:{data_file}#test:{i}" for i in range(n)], [short[int(t)] for t in y_true])
    ordered = order_cells(specs, order, labels, threshold)
    return ordered[:limit] if limit else ordered


def _threshold_for(clf, order: str) -> float | None:
    return unidentified_threshold(clf.run.path) if order == "unidentified" else None


def cells_from_test_split(clf, limit: int = 100, order: str = "confidence") -> list[CellSpec]:
    """The run's test split, predicted, ordered, and cut to the first `limit` cells (0: all)."""
    images, truth = clf.run.test_split()
    return cells_from_predictions(clf.run.training_data(), clf.labels, truth, clf.probabilities(images), limit,
                                  order, _threshold_for(clf, order))


def cells_from_external(clf, folder: str | None = None, csv_file: str | None = None,
                        overrides: dict[str, str | None] | None = None, resize: str = "medmnist",
                        limit: int = 0, order: str = "confidence", include_unmapped: bool = True,
                        roots=None) -> list[CellSpec]:
    """An external dataset's images (unmapped classes too: a reviewer may look at any cell); `roots`: the data
    roots a page confines the folder, the CSV and their images to (core.access.paths; None: the local admin)."""
    source = scan(folder, csv_file, roots)
    mapping = build_mapping(source.classes, overrides, clf.labels)
    data = load_images(source, clf.image_size, mapping, resize, clf.labels, keep_unmapped=include_unmapped,
                       cell_fraction=run_fraction(clf.run.path, resize), roots=roots)
    truths = [mapping.get(s) for s in data.source_classes]
    specs = _specs(clf, data.images, data.paths, data.paths, truths)
    ordered = order_cells(specs, order, clf.labels, _threshold_for(clf, order))
    return ordered[:limit] if limit else ordered


def save_uploads(files: Iterable[tuple[str, bytes]], folder: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Decode uploads within one upload's budget (`core.data.uploads.iter_uploads`: decoded pixels and time,
    zips checked) and save each as a PNG under a generated name in `folder` (default: the review store's
    uploads folder), its longer side at most UPLOAD_MAX_SIDE; returns (paths, problems and notes)."""
    from PIL import Image  # noqa: PLC0415

    from core.data.uploads import iter_uploads  # noqa: PLC0415

    folder = Path(folder) if folder else default_db_path().parent / UPLOADS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths, problems = [], []
    for item in iter_uploads(files):
        if not item.ok:
            problems.append(str(item.error))
            continue
        image = Image.fromarray(item.image)
        if max(image.size) > UPLOAD_MAX_SIDE:
            image.thumbnail((UPLOAD_MAX_SIDE, UPLOAD_MAX_SIDE), Image.Resampling.LANCZOS)
            problems.append(f"{item.name}: reduced to {image.width}x{image.height} pixels (uploads for review are "
                            f"kept at most {UPLOAD_MAX_SIDE} px); the model and the review see it at that size")
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}.png"
        image.save(path, "PNG")
        paths.append(str(path))
    return paths, problems


def cells_from_files(clf, paths: Sequence[str], resize: str = "medmnist", order: str = "confidence") -> list[CellSpec]:
    from core.data.images import ImageInputError, read_file, to_model_input  # noqa: PLC0415

    images, kept = [], []
    fraction = run_fraction(clf.run.path, resize)
    for p in paths:
        try:
            images.append(to_model_input(read_file(p), clf.image_size, resize, fraction, Path(p).name))
            kept.append(p)
        except ImageInputError:
            continue
    if not kept:
        return []
    specs = _specs(clf, np.stack(images), kept, kept, [None] * len(kept))
    return order_cells(specs, order, clf.labels, _threshold_for(clf, order))


# -- pixels of a cell -----------------------------------------------------------------------------------

SAME_CELL_MAX_DIFF = 8.0  # mean absolute difference (0-255) of a larger copy, scaled down, and the cell itself


@dataclass(frozen=True)
class Original:
    """The largest image of a cell this server holds, and where it comes from ("64 px copy in
    bloodmnist_64.npz", "the uploaded image, 360 x 363 px")."""

    image: np.ndarray
    note: str


@lru_cache(maxsize=3)
def _split(path: str, split: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    return read_split(path, split)


def _read_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of an npz, read once per file version and kept (a reviewer goes through many of its cells)."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as e:
        raise ReviewError(f"The cell's image file {path} cannot be read ({e.strerror or e})") from None
    return _split(str(path), split, mtime)


def larger_copies(path: str | Path, size: int) -> list[tuple[int, Path]]:
    """Files that may hold the same cells as the BloodMNIST-layout npz `path` (whose images are `size` px) at a
    larger size, largest first: the same name with the size changed, beside it (pbc_bloodmnist_28.npz ->
    pbc_bloodmnist_64.npz; bloodmnist.npz -> bloodmnist_64.npz), and BloodMNIST in the data root. MedMNIST's
    files of different sizes share their split indices; `original_cell` checks that the cell really matches."""
    import re  # noqa: PLC0415

    from core.config import SIZES  # noqa: PLC0415
    from core.data import registry  # noqa: PLC0415

    path = Path(path)
    found: dict[Path, int] = {}
    for bigger in sorted((s for s in SIZES if s > size), reverse=True):
        names = {re.sub(rf"(?<!\d){size}(?!\d)", str(bigger), path.name)}
        if path.name == registry.file_name(size):
            names.add(registry.file_name(bigger))
        candidates = [path.with_name(n) for n in names if n != path.name] + [registry.local_path(bigger)]
        for c in candidates:
            if c.is_file() and c.resolve() != path.resolve():
                found.setdefault(c.resolve(), bigger)
    return sorted(((s, p) for p, s in found.items()), key=lambda x: -x[0])


def original_cell(image_ref: str) -> Original:
    """What a reviewer looks at: an image file as stored (an upload: its saved original, at most
    UPLOAD_MAX_SIDE px); a dataset cell: the largest copy of that cell any size of its file holds here (checked:
    same split length and labels, and the copy scaled down matches the cell), else the cell itself."""
    from PIL import Image  # noqa: PLC0415

    from core.data.images import read_file  # noqa: PLC0415

    if not image_ref.startswith("npz:"):
        rgb = read_file(image_ref)
        return Original(rgb, f"the image file as stored, {rgb.shape[1]} x {rgb.shape[0]} px")
    path, _, where = image_ref[4:].rpartition("#")
    split, _, index = where.partition(":")
    images, labels = _read_split(path, split)
    cell = images[int(index)]
    size = int(cell.shape[0])
    for bigger, other in larger_copies(path, size):
        try:
            big_images, big_labels = _read_split(other, split)
        except UserFacingError:
            continue
        if len(big_labels) != len(labels) or not np.array_equal(big_labels, labels):
            continue
        big = big_images[int(index)]
        small = np.asarray(Image.fromarray(big).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
        if np.abs(small - cell).mean() <= SAME_CELL_MAX_DIFF:
            return Original(big, f"the {bigger} px copy of this cell ({other.name}); the model saw it at {size} px")
    return Original(cell, f"{size} px, the largest copy of this cell here (larger BloodMNIST sizes are not "
                          f"downloaded)")


@lru_cache(maxsize=2)
def cell_pixels(image_ref: str, size: int, resize: str = "medmnist",
                cell_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(what to show, what the model sees) for a cell: the original file (or npz image) and its model input
    (`cell_fraction`: the run's framing target, for the cell resize mode)."""
    from core.data.images import read_file, to_model_input  # noqa: PLC0415

    if image_ref.startswith("npz:"):
        path, _, where = image_ref[4:].rpartition("#")
        split, _, index = where.partition(":")
        image = _read_split(path, split)[0][int(index)]
        return image, to_model_input(image, size, "plain")
    rgb = read_file(image_ref)
    return rgb, to_model_input(rgb, size, resize, cell_fraction, Path(image_ref).name)
