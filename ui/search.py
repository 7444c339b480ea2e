"""The Results page's Searches section: a search's trials (state, validation accuracy, settings, pruned epoch),
the best so far and the parameter importances, all read through core.jobs.search (Optuna's storage and the
jobs database); a search still running can be cancelled by its owner."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core.config import SETTINGS
from core.errors import UserFacingError
from core.jobs import search
from core.jobs.queue import JobQueue
from core.store.runs import RunStore
from ui.guard import show_error
from ui.palette import ACCENT
from ui.session import current_user
from ui.text import md_escape, plural

STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


def _cancel(store: RunStore, name: str) -> None:
    try:
        search.cancel_search(JobQueue(store), name, current_user())
    except UserFacingError as e:
        st.session_state["search_error"] = str(e)


def importance_figure(importances: dict[str, float]) -> go.Figure:
    names = [SETTINGS[n].label for n in importances][::-1]
    fig = go.Figure(go.Bar(x=list(importances.values())[::-1], y=names, orientation="h", marker_color=ACCENT,
                           hovertemplate="%{y}: %{x:.2f}<extra></extra>"))
    fig.update_layout(height=60 + 34 * len(names), margin=dict(l=10, r=10, t=10, b=10),
                      xaxis=dict(title="share of the variance in validation accuracy", range=[0, 1]))
    return fig


def searches_section(store: RunStore) -> None:
    """Subheader, a picker of the searches, then the chosen one's figures, trials and importances."""
    st.subheader("Searches", anchor=False)
    artifacts = Path(store.runs_dir).parent
    try:
        rows = search.list_searches(artifacts)
    except UserFacingError as e:
        show_error(e)
        return
    if not rows:
        st.caption("No searches yet: the Train page's **Search** mode, or `python -m core search --space "
                   "lr=1e-4:1e-2:log ...`, lets Optuna choose settings and stop poor trials early.")
        return
    names = {r.name: r for r in rows}
    name = st.selectbox("Search", list(names), key="search_pick",
                        format_func=lambda n: f"{n} · {names[n].status} · {names[n].trials_summary()}")
    try:
        view = search.show(artifacts, name)
    except UserFacingError as e:
        show_error(e)
        return
    if "search_error" in st.session_state:
        st.error(md_escape(st.session_state.pop("search_error")))
    if view.search.error:
        st.warning(f"The last attempt to drive this search failed; it is retried as the queue runs: "
                   f"{md_escape(view.search.error)}", icon=":material/warning:")
    best = view.best
    cols = st.columns(4)
    cols[0].metric("Status", view.search.status)
    row = view.search
    if row.refund:
        cols[1].metric("Budget spent", f"{row.spent_text} of {row.trials} trials",
                       help=f"{plural(row.asked, 'trial')} so far. Trials that stop early (pruned) spend the share "
                            f"of epochs they trained; the rest funds further trials.")
    else:
        cols[1].metric("Trials", f"{row.asked} of {row.trials}")
    cols[2].metric("Pruned", view.count("PRUNED"))
    cols[3].metric("Best validation accuracy", f"{best.value:.4f}" if best else "–")
    st.caption(md_escape(f"{view.search.name}: {row.trials_summary()}; {view.count('COMPLETE')} complete, "
                         f"{view.count('PRUNED')} pruned, "
                         f"{view.count('FAIL')} failed. Searched: "
                         + "; ".join(d.describe() for d in view.spec.space)
                         + f". {search.PRUNERS[view.spec.pruner].capitalize()}. Each trial is told its run's "
                           "validation accuracy (never test)."))
    if best is not None:
        settings = ", ".join(f"{SETTINGS[k].label.lower()} {search.fmt_value(v)}" for k, v in best.params.items())
        st.markdown(f"**Best so far: trial {best.number}**, validation accuracy **{best.value:.4f}** "
                    f"({md_escape(settings)})")
        if best.run_id:
            st.page_link("pages/results.py", label=f"Open run {best.run_id}", icon=":material/leaderboard:",
                         query_params={"run": best.run_id})
    else:
        st.caption("No trial has completed yet.")
    number = st.column_config.NumberColumn
    st.dataframe(view.table(), hide_index=True, key="search_trials", column_config={
        "trial": "Trial", "state": "State", "val_accuracy": number("Val accuracy", format="%.4f"),
        **{d.name: number(SETTINGS[d.name].label, format="%g") if d.is_range else SETTINGS[d.name].label
           for d in view.spec.space},
        "pruned_at_epoch": "Pruned at epoch", "job": "Job", "run": "Run", "error": "Why it failed"})
    st.markdown("**Parameter importances**")
    if view.importances:
        st.plotly_chart(importance_figure(view.importances), key="search_importances",
                        config={"displayModeBar": False})
        st.caption(md_escape(view.importance_note) + ".")
    else:
        st.caption(md_escape(view.importance_note[0].upper() + view.importance_note[1:]) + ".")
    if view.search.status == "running" and current_user().can("train", owner=view.search.owner):
        st.button("Cancel search", key="search_cancel", icon=":material/stop_circle:", on_click=_cancel,
                  args=(store, view.search.name),
                  help=f"No more trials; its queued and running jobs are cancelled "
                       f"({plural(view.count('RUNNING'), 'trial')} running now).")
