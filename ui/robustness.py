"""The corruption benchmark of selected runs, as the Results page shows it: a line per run with its clean and mean
corrupted accuracy, and one run's corruption × severity accuracies as a heatmap. A view over
core.evaluation.robustness (it computes nothing; the figures are the stored report's)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.evaluation.corruptions import SEVERITIES
from core.evaluation.robustness import COMMAND, RobustnessReport, RobustnessReportError, load_report
from ui.palette import SCALE
from ui.text import md_escape, plural


def robustness_heatmap(report: RobustnessReport) -> go.Figure:
    """Accuracy per corruption (rows) and severity (columns), with each corruption's mean in the last column;
    colours over the full 0-1 range, so runs compare by eye."""
    columns = [f"severity {s}" for s in SEVERITIES] + ["mean"]
    rows = [c.title for c in report.corruptions]
    z = [[*c.accuracies, c.mean_accuracy] for c in report.corruptions]
    fig = go.Figure(go.Heatmap(
        z=z, x=columns, y=rows, text=[[f"{v:.3f}" for v in row] for row in z], texttemplate="%{text}",
        colorscale=SCALE, zmin=0, zmax=1, xgap=2, ygap=2, colorbar=dict(thickness=12, title="accuracy"),
        hovertemplate="%{y} · %{x}<br>accuracy %{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="top")
    fig.update_layout(height=110 + 34 * len(rows), margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="#ffffff")
    return fig


def summary_row(run_id: str, report: RobustnessReport) -> dict:
    return {"run_id": run_id, "n": report.n, "seed": report.seed, "clean": report.clean_accuracy,
            "corrupted": report.mean_corrupted_accuracy, "created": report.created}


def robustness_section(run_paths: Mapping[str, Path]) -> None:
    """The stored corruption benchmarks of these runs (run id -> run folder); for runs without one, the command
    that makes it; a damaged report is shown as its error, and the other runs still show."""
    reports: dict[str, RobustnessReport] = {}
    missing = []
    for run_id, path in run_paths.items():
        try:
            report = load_report(path)
        except RobustnessReportError as e:
            st.error(md_escape(e), icon=":material/error:")
            continue
        if report is None:
            missing.append((run_id, path))
        else:
            reports[run_id] = report
    if reports:
        st.dataframe(pd.DataFrame([summary_row(r, rep) for r, rep in reports.items()]), hide_index=True,
                     key="rob_summary", column_config={
                         "n": "test images", "clean": st.column_config.NumberColumn("clean accuracy", format="%.3f"),
                         "corrupted": st.column_config.NumberColumn("mean corrupted accuracy", format="%.3f"),
                         "created": "measured (UTC)"})
        shown = next(iter(reports))
        if len(reports) > 1:
            shown = st.selectbox("Corruption table of", list(reports), key="rob_run")
        st.plotly_chart(robustness_heatmap(reports[shown]), key="rob_heat")
        st.caption("Accuracy on the run's test split under each corruption of MedMNIST-C's BloodMNIST set at "
                   "severities 1-5; the mean corrupted accuracy is the mean of these 55 cells.")
    if missing:
        commands = "\n".join(f"{COMMAND} {path}" for _, path in missing)
        st.caption(f"No corruption benchmark yet for {plural(len(missing), 'selected run')}. Measure it with:")
        st.code(commands, language="bash")
