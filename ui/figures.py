"""The confusion-matrix figures: one for a run, a dataset or a review session, and the difference of two runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from core.evaluation.confusion import row_normalise
from ui.palette import DIVERGING, SCALE

TRUE_PREDICTED = ("true class", "predicted class")


def bold_if(labels: Sequence[str], focus: Sequence[str] = ()) -> list[str]:
    """Tick labels with the focus classes in bold."""
    return [f"<b>{label}</b>" if label in focus else label for label in labels]


def _style(fig: go.Figure, rows: Sequence[str], columns: Sequence[str], focus: Sequence[str],
           axes: tuple[str, str], title: str) -> go.Figure:
    """Rows read top-down, columns slanted; both categorical, focus classes in bold; height follows the rows."""
    fig.update_yaxes(autorange="reversed", title=axes[0], type="category", tickmode="array", tickvals=list(rows),
                     ticktext=bold_if(rows, focus))
    fig.update_xaxes(title=axes[1], tickangle=-35, type="category", tickmode="array", tickvals=list(columns),
                     ticktext=bold_if(columns, focus))
    top = 40 if title else 10
    fig.update_layout(height=150 + 40 * len(rows) + top, margin=dict(l=10, r=10, t=top, b=10),
                      title=dict(text=title, font=dict(size=14)) if title else None)
    return fig


def confusion_heatmap(counts: np.ndarray, rows: Sequence[str], columns: Sequence[str] | None = None, *,
                      colour_by: str = "share", focus: Sequence[str] = (), title: str = "",
                      axes: tuple[str, str] = TRUE_PREDICTED) -> go.Figure:
    """A confusion matrix (rows: the reference, e.g. the true class; columns: the call), each cell with its
    count and its share of the row. `colour_by` "share" (0-100 %, comparable across rows) or "count"."""
    columns = list(rows if columns is None else columns)
    counts = np.asarray(counts)
    shares = row_normalise(counts)
    text = [[f"{int(c)}<br>{s:.0%}" if c else "" for c, s in zip(cr, sr)]
            for cr, sr in zip(counts, np.nan_to_num(shares))]
    by_share = colour_by == "share"
    fig = go.Figure(go.Heatmap(
        z=shares if by_share else counts, x=columns, y=list(rows), text=text, texttemplate="%{text}",
        colorscale=SCALE, xgap=1, ygap=1, zmin=0, zmax=1 if by_share else None,
        colorbar=dict(thickness=12, tickformat=".0%" if by_share else None),
        hovertemplate=f"{axes[0]} %{{y}} → {axes[1]} %{{x}}<br>%{{text}}<extra></extra>"))
    return _style(fig, rows, columns, focus, axes, title)


def difference_heatmap(diff: np.ndarray, labels: Sequence[str], focus: Sequence[str] = (), *,
                       axes: tuple[str, str] = TRUE_PREDICTED) -> go.Figure:
    """Row shares of run B minus run A (core.evaluation.confusion.difference): red where B sends more of a
    class there, blue fewer; the colour range is symmetric around zero."""
    limit = max(0.05, float(np.nanmax(np.abs(diff)))) if np.isfinite(diff).any() else 1.0
    text = [[f"{d:+.0%}" if abs(d) >= 0.005 else "" for d in row] for row in np.nan_to_num(diff)]
    fig = go.Figure(go.Heatmap(
        z=diff, x=list(labels), y=list(labels), text=text, texttemplate="%{text}", colorscale=DIVERGING, zmid=0,
        zmin=-limit, zmax=limit, xgap=1, ygap=1, colorbar=dict(thickness=12, tickformat="+.0%"),
        hovertemplate=f"{axes[0]} %{{y}} → {axes[1]} %{{x}}<br>B − A: %{{z:+.1%}}<extra></extra>"))
    return _style(fig, labels, labels, focus, axes, "")
