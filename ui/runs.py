"""Labels of runs in pickers: one format on every page."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from core.models.architectures import display_name

LABEL_FIELDS = ("run_id", "arch", "size", "batch_size", "val_accuracy")


def run_label(run: Mapping[str, Any], best_id: str | None = None) -> str:
    """'<run id> · ResNet-50 · 64 px · batch 32 · val 0.974', then ' · best' for `best_id`; a run without a
    validation accuracy (not finished) shows its status instead. `run`: a run store row or a runs-table row."""
    acc = run.get("val_accuracy")
    score = f"val {acc:.3f}" if acc is not None and acc == acc else str(run.get("status") or "no metrics")
    best = " · best" if best_id is not None and run["run_id"] == best_id else ""
    return (f"{run['run_id']} · {display_name(str(run['arch']))} · {run['size']} px · batch {run['batch_size']} · "
            f"{score}{best}")


def run_labels(runs: pd.DataFrame | Iterable[Mapping[str, Any]], best_id: str | None = None) -> dict[str, str]:
    """run_id -> run_label, in the order given (a DataFrame is read column-wise: fast for 1,000 runs)."""
    if isinstance(runs, pd.DataFrame):
        fields = [f for f in (*LABEL_FIELDS, "status") if f in runs.columns]
        runs = runs[fields].to_dict("records")
    return {r["run_id"]: run_label(r, best_id) for r in runs}
