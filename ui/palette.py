"""The dashboard's colours, from the theme in .streamlit/config.toml (a stained blood film's purple-red)."""

from __future__ import annotations

ACCENT = "#8e2453"  # the theme's primaryColor: the chosen class, training curves, the first run
SECONDARY = "#2f6f9f"  # a contrasting blue: validation curves, the test split
LIGHT_ACCENT = "#d08aa8"  # the accent, lighter: a third series beside ACCENT and SECONDARY
MUTED = "#c9bfc6"  # bars that are not the point
# Sequential scale for heatmaps and coloured lines: zero stays a visible tint (an empty cell is not blank
# paper), then through the theme's pink to the accent.
SCALE = [[0.0, "#f7f2f5"], [0.15, "#f0d3e0"], [0.5, "#c46b92"], [1.0, ACCENT]]
DIVERGING = "RdBu_r"  # differences around zero: red more, blue less
# One colour a run (or other series) when several are drawn together, the accent first.
SERIES = (ACCENT, "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#7f7f7f", "#bcbd22")


def series_colours(keys: list) -> dict:
    """key -> colour, in order, repeating after len(SERIES)."""
    return {k: SERIES[i % len(SERIES)] for i, k in enumerate(keys)}
