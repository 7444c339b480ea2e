"""External evaluations stored with their run: `<run>/external/<eval_id>.json`, written atomically (ids are
generated, never taken from user text), read back, and listed for tables (the Results page shows these).

Records written before `schema_version` existed have the same keys and read back unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from core.store.io import RUN_ID_PATTERN, new_run_id, write_json
from core.validation.external.errors import ExternalError

EXTERNAL_DIR = "external"
EVAL_ID = RUN_ID_PATTERN  # evaluation ids are made like run ids


def excluded_total(excluded: Mapping[str, Any]) -> int:
    """Files found but not evaluated: unmapped, unreadable, no cell found (cell framing), outside class folders,
    not images, missing, outside the data roots."""
    return int(excluded.get("unmapped_total", 0) + excluded.get("unreadable", 0) + excluded.get("no_cell", 0)
               + excluded.get("loose_files", 0) + excluded.get("not_images", 0) + excluded.get("missing_files", 0)
               + excluded.get("bad_rows", 0) + excluded.get("outside", 0))


def evaluations_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / EXTERNAL_DIR


def new_eval_id() -> str:
    return new_run_id()


def write_evaluation(run_dir: str | Path, record: dict[str, Any]) -> Path:
    folder = evaluations_dir(run_dir)
    folder.mkdir(exist_ok=True)
    path = folder / f"{record['id']}.json"
    write_json(path, record)
    return path


def load_evaluation(run_dir: str | Path, eval_id: str) -> dict[str, Any]:
    if not EVAL_ID.match(str(eval_id)):
        raise ExternalError(f"invalid evaluation id {eval_id!r}")
    path = evaluations_dir(run_dir) / f"{eval_id}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExternalError(f"no external evaluation {eval_id} in {run_dir}") from None
    except (OSError, ValueError) as e:
        raise ExternalError(f"external evaluation {eval_id} cannot be read ({e})") from None


def list_evaluations(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's stored external evaluations, newest first, as short rows (damaged files are skipped)."""
    folder = evaluations_dir(run_dir)
    if not folder.is_dir():
        return []
    rows = []
    for path in folder.glob("*.json"):
        if not EVAL_ID.match(path.stem):
            continue
        try:
            rows.append(evaluation_row(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(rows, key=lambda r: r["id"], reverse=True)


def evaluation_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One line per evaluation, for tables (the Results page shows these)."""
    m = record["metrics"]
    ft = record.get("fine_tune") or {}
    return {
        "id": record["id"], "created": record.get("created"), "dataset": Path(record["dataset"]["path"]).name,
        "dataset_path": record["dataset"]["path"], "normalize": record.get("normalize"),
        "resize": record.get("resize"), "n_images": record.get("n_images"),
        "excluded": excluded_total(record.get("excluded", {})),
        "accuracy_all": m["all"]["accuracy"], "accuracy_shared": m["shared"]["accuracy"],
        "balanced_accuracy_all": m["all"].get("balanced_accuracy"),
        "macro_f1_all": m["all"].get("macro_f1"),
        "fine_tuned_accuracy": (ft.get("fine_tuned") or {}).get("all", {}).get("accuracy"),
    }


def evaluations_table(run_dirs: Mapping[str, str | Path]) -> list[dict[str, Any]]:
    """Every stored external evaluation of some runs ({run_id: run folder}), one row each, newest first per run:
    what the Results page lists."""
    rows = []
    for run_id, folder in run_dirs.items():
        rows += [{"run_id": run_id, **r} for r in list_evaluations(folder)]
    return rows
