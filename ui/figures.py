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


def clickable_cells(fig: go.Figure, rows: Sequence[str], columns: Sequence[str] | None = None,
                    chosen: tuple[int, int] | None = None) -> go.Figure:
    """Make a heatmap's cells clickable in Streamlit: plotly selects scatter points on click but not heatmap
    cells, so an invisible marker sits on each cell's centre (st.plotly_chart(on_select=..., selection_mode=
    "points") then returns its row and column labels as the point's y and x). The `chosen` (row, column) cell
    is outlined. The heatmap's own hover is handed to the markers, so one label shows."""
    columns = list(rows if columns is None else columns)
    rows = list(rows)
    heat = fig.data[0]
    text = np.asarray(heat.text, dtype=object).ravel().tolist() if heat.text is not None else None
    fig.add_trace(go.Scatter(
        x=[c for _ in rows for c in columns], y=[r for r in rows for _ in columns], mode="markers", text=text,
        hovertemplate=heat.hovertemplate, showlegend=False,
        marker=dict(symbol="square", size=24, opacity=0),
        selected=dict(marker=dict(opacity=0)), unselected=dict(marker=dict(opacity=0))))
    heat.hoverinfo = "skip"
    heat.hovertemplate = None
    # the markers must not widen the axes (autorange pads for marker size): one cell per unit, as the heatmap
    fig.update_xaxes(range=[-0.5, len(columns) - 0.5], autorange=False)
    fig.update_yaxes(range=[len(rows) - 0.5, -0.5], autorange=False)
    if chosen is not None:
        r, c = chosen
        fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=r - 0.5, y1=r + 0.5, line=dict(color="#111111", width=3))
    fig.update_layout(hovermode="closest", clickmode="event+select", dragmode=False)
    return fig


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


PARALLEL_BINS = 8  # colour steps of the lines (one SVG trace each, however many runs)


def parallel_coordinates(dims: Sequence[dict], colour_title: str = "val acc") -> go.Figure:
    """Parallel coordinates drawn as SVG lines (go.Scatter), not go.Parcoords: Parcoords draws its lines with
    WebGL, which headless browsers and some remote desktops lack (the axes showed, the lines did not).

    `dims`: core.store.results.parallel_dimensions (label, values, optional tickvals/ticktext); the last one
    colours the lines. Each axis is scaled to 0-1 between its smallest and largest value; runs are drawn in
    PARALLEL_BINS colour steps of the last axis, best on top; hovering a line's vertex gives the run's value."""
    n_axes = len(dims)
    scaled, ticks = [], []
    for d in dims:
        values = np.asarray(d["values"], float)
        known = np.asarray(d.get("tickvals", values), float)
        low = float(np.nanmin(np.concatenate([values, known]))) if len(values) else 0.0
        high = float(np.nanmax(np.concatenate([values, known]))) if len(values) else 1.0
        span = high - low or 1.0
        scaled.append((values - low) / span if high > low else np.full(len(values), 0.5))
        if "tickvals" in d:
            ticks.append([((v - low) / span if high > low else 0.5, t) for v, t in zip(d["tickvals"], d["ticktext"])])
        else:
            ticks.append([(0.0 if high > low else 0.5, f"{low:.3g}"), (1.0, f"{high:.3g}")] if high > low
                         else [(0.5, f"{low:.3g}")])
    colour = np.asarray(dims[-1]["values"], float)
    lo, hi = (float(colour.min()), float(colour.max())) if len(colour) else (0.0, 1.0)
    bins = np.clip(((colour - lo) / ((hi - lo) or 1.0) * PARALLEL_BINS).astype(int), 0, PARALLEL_BINS - 1)
    colours = _scale_colours([0.2 + 0.8 * (b + 0.5) / PARALLEL_BINS for b in range(PARALLEL_BINS)])
    fig = go.Figure()
    x_axes = list(range(n_axes))
    for b in range(PARALLEL_BINS):  # worst first, so the best lines are drawn on top
        runs = np.flatnonzero(bins == b)
        if not len(runs):
            continue
        xs, ys, texts = [], [], []
        for r in runs:
            xs += [*x_axes, None]
            ys += [*(float(s[r]) for s in scaled), None]
            texts += [*(f"{d['label']}: {_value_text(d, r)}" for d in dims), None]
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", text=texts, hovertemplate="%{text}<extra></extra>", showlegend=False,
            line=dict(width=2, color=colours[b]), marker=dict(size=5),
            opacity=0.85))
    fig.add_trace(go.Scatter(  # the colour bar only
        x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
        marker=dict(color=[lo, hi], cmin=lo, cmax=hi,
                    colorscale=[[t, c] for t, c in zip((0, 0.5, 1), _scale_colours([0.2, 0.6, 1.0]))],
                    showscale=True,
                    colorbar=dict(title=colour_title, thickness=12))))
    # axes and their tick labels set at once (add_shape/add_annotation one by one cost ~10 ms each)
    fig.update_layout(
        shapes=[dict(type="line", x0=i, x1=i, y0=0, y1=1, line=dict(color="#666", width=1), layer="below")
                for i in range(n_axes)],
        annotations=[dict(x=i, y=y, text=str(label), showarrow=False, xanchor="right", xshift=-4,
                          font=dict(size=11), bgcolor="rgba(255,255,255,0.7)")
                     for i, axis_ticks in enumerate(ticks) for y, label in axis_ticks])
    fig.update_xaxes(tickmode="array", tickvals=x_axes, ticktext=[f"<b>{d['label']}</b>" for d in dims], side="top",
                     range=[-0.6, n_axes - 0.7], showgrid=False, zeroline=False)
    fig.update_yaxes(visible=False, range=[-0.08, 1.08])
    fig.update_layout(height=380, margin=dict(l=20, r=20, t=50, b=20), plot_bgcolor="#ffffff", hovermode="closest")
    return fig


def _value_text(dim: dict, index: int) -> str:
    value = float(dim["values"][index])
    for tick, text in zip(dim.get("tickvals", ()), dim.get("ticktext", ())):
        if abs(float(tick) - value) < 1e-6:
            return str(text)
    return f"{value:.4g}"


def _scale_colours(positions: Sequence[float]) -> list[str]:
    from plotly.colors import sample_colorscale  # noqa: PLC0415

    return sample_colorscale(SCALE, list(positions))


# -- calibrated confidence (core.evaluation.calibration) ---------------------------------------------------------
SPLIT_TITLES = {"val": "validation", "test": "test"}


def reliability_diagram(curves: Sequence, title: str = "Reliability") -> go.Figure:
    """Accuracy against mean confidence per confidence bin (core.evaluation.calibration.SplitCurves), before
    (dotted, faded) and after temperature scaling (solid; validation in the accent, test in blue); the diagonal
    is perfect calibration; a marker's size grows with its bin's cells. Hover: the bin, its cells, its confidence
    and accuracy."""
    from ui.palette import ACCENT, SECONDARY  # noqa: PLC0415

    colours = {"val": ACCENT, "test": SECONDARY}
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999", dash="dash", width=1),
                               hoverinfo="skip", showlegend=False))
    for c in curves:
        colour = colours.get(c.split, ACCENT)
        for which, bins, dash, opacity in (("before", c.before, "dot", 0.45), ("after", c.after, "solid", 1.0)):
            kept = [b for b in bins if b.count]
            fig.add_trace(go.Scatter(
                x=[b.confidence for b in kept], y=[b.accuracy for b in kept], mode="lines+markers", opacity=opacity,
                name=f"{SPLIT_TITLES.get(c.split, c.split)} {which}", line=dict(color=colour, dash=dash),
                marker=dict(size=[4 + min(10, b.count ** 0.5) for b in kept]),
                customdata=[[f"{b.lower:.2f}-{b.upper:.2f}", b.count] for b in kept],
                hovertemplate="confidence %{customdata[0]} (%{customdata[1]} cells)<br>mean confidence %{x:.3f}"
                              "<br>accuracy %{y:.3f}<extra>%{fullData.name}</extra>"))
    fig.update_xaxes(title="confidence (top-class probability)", range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(title="accuracy", range=[0, 1.02], tickformat=".0%")
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=360, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(font=dict(size=11)), plot_bgcolor="#ffffff")
    return fig


def risk_coverage_plot(curves: Sequence, threshold: float | None = None, target: float | None = None,
                       title: str = "Risk–coverage") -> go.Figure:
    """Accuracy of the cells kept against the fraction kept, most confident first, per split; with the chosen
    'unidentified' threshold marked where it cuts each curve (and the target accuracy as a dashed line)."""
    from ui.palette import ACCENT, SECONDARY  # noqa: PLC0415

    colours = {"val": ACCENT, "test": SECONDARY}
    fig = go.Figure()
    for c in curves:
        rc = c.risk_coverage
        name = SPLIT_TITLES.get(c.split, c.split)
        fig.add_trace(go.Scatter(
            x=rc.coverage, y=rc.accuracy, mode="lines", name=name, line=dict(color=colours.get(c.split, ACCENT)),
            customdata=rc.confidence,
            hovertemplate="keeping %{x:.1%} (confidence ≥ %{customdata:.3f})<br>accuracy %{y:.2%}<extra>"
                          + name + "</extra>"))
        if threshold is not None:
            coverage, accuracy = rc.at_threshold(threshold)
            if accuracy is not None:
                fig.add_trace(go.Scatter(
                    x=[coverage], y=[accuracy], mode="markers", showlegend=False,
                    marker=dict(size=11, symbol="diamond", color=colours.get(c.split, ACCENT),
                                line=dict(color="#111", width=1)),
                    hovertemplate=f"threshold {threshold:.3f}: keeps %{{x:.1%}} of {name}, accuracy "
                                  f"%{{y:.2%}}; {1 - coverage:.1%} to review<extra></extra>"))
    if target is not None:
        fig.add_hline(y=target, line=dict(color="#666", dash="dash", width=1),
                      annotation_text=f"target {target:.0%}", annotation_position="bottom left")
    fig.update_xaxes(title="coverage (fraction of cells kept, the rest to review)", range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(title="accuracy of the cells kept", tickformat=".1%")
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=360, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(font=dict(size=11)), plot_bgcolor="#ffffff")
    return fig
