"""The runs as pages show them: the runs table, cached until the index changes, and labels for pickers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import streamlit as st

from core.models.architectures import display_name
from core.store import results
from core.store.runs import RunStore
from ui.text import md_escape

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


def linked_run_picker(table: pd.DataFrame, key: str) -> tuple[str, dict[str, str]]:
    """The page's run: a picker over the complete runs, best on validation first, that opens on the run the
    address names (`?run=<id>`, a job card's or a colleague's link; once per link, so the user may pick another)
    and writes the run picked back into the address, so the page can be shared as the user sees it.
    `key`: the picker's session key (one per page). Returns the run's id and every run's label, in that order."""
    ranked = table.sort_values("val_accuracy", ascending=False, kind="stable")
    labels_by_run = run_labels(ranked)
    run_ids = list(labels_by_run)
    linked, seen = st.query_params.get("run"), f"{key}_for"
    if linked is not None and linked not in run_ids:
        st.warning(f"Run `{md_escape(linked)}` is not a complete run here (still training, deleted, or from "
                   "another store): showing the best run instead.", icon=":material/link_off:")
    elif linked is not None and st.session_state.get(seen) != linked:
        st.session_state[seen] = linked
        st.session_state[key] = linked

    def share_run() -> None:
        st.query_params["run"] = st.session_state[key]
        st.session_state[seen] = st.session_state[key]

    picked = st.selectbox("Run (best on validation first)", run_ids, key=key, format_func=labels_by_run.get,
                          on_change=share_run)
    return picked, labels_by_run
