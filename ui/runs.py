"""The runs as pages show them: the runs table, cached until the index changes, and labels for pickers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import streamlit as st

from core.models.architectures import display_name
from core.store import results
from core.store.runs import RunStore

LABEL_FIELDS = ("run_id", "arch", "size", "batch_size", "val_accuracy")


def run_label(run: Mapping[str, Any], best_id: str | None = None) -> str:
    """'ResNet-50 · 64 px · batch 32 · val 0.974 · <run id>', then ' · best' for `best_id`: what tells runs
    apart first, so a narrow picker still shows it. A run without a validation accuracy (not finished) shows
    its status instead. `run`: a run store row or a runs-table row."""
    acc = run.get("val_accuracy")
    score = f"val {acc:.3f}" if acc is not None and acc == acc else str(run.get("status") or "no metrics")
    best = " · best" if best_id is not None and run["run_id"] == best_id else ""
    return (f"{display_name(str(run['arch']))} · {run['size']} px · batch {run['batch_size']} · {score} · "
            f"{run['run_id']}{best}")


def run_labels(runs: pd.DataFrame | Iterable[Mapping[str, Any]], best_id: str | None = None) -> dict[str, str]:
    """run_id -> run_label, in the order given (a DataFrame is read column-wise: fast for 1,000 runs)."""
    if isinstance(runs, pd.DataFrame):
        fields = [f for f in (*LABEL_FIELDS, "status") if f in runs.columns]
        runs = runs[fields].to_dict("records")
    return {r["run_id"]: run_label(r, best_id) for r in runs}


@st.cache_data(show_spinner=False, max_entries=4)
def _runs_table(runs_dir: str, signature: tuple, include_incomplete: bool) -> pd.DataFrame:
    return results.runs_table(RunStore(runs_dir), include_incomplete=include_incomplete)


def runs_table(store: RunStore, include_incomplete: bool = True) -> pd.DataFrame:
    """core.store.results.runs_table, read from the index again only when the index has changed (its files'
    times and sizes are the cache key), so reruns of a page with 1,000 runs stay fast. Raises StoreError."""
    return _runs_table(str(store.runs_dir), results.index_signature(store), include_incomplete)
