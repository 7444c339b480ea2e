"""The run's most faithful heatmap as the pages meet it (core.explain.best_map): the default method and layer
of Classify and Confusions, and the table it was chosen from in an expander. While the run is being measured
(a precompute step in the background, ui.model.step_when_ready), the default is Grad-CAM at the last block
and a progress bar says so."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import streamlit as st

from core.errors import UserFacingError
from core.explain import best_map
from ui.model import step_when_ready
from ui.text import md_escape

if TYPE_CHECKING:
    import pandas as pd

    from core.models.build import CamLayer

HELP = ("ROAD in points (x100): mean over removal fractions of (confidence with the least relevant pixels removed "
        "- with the most relevant removed) / 2; above 0 the map points at what the model uses; compare with the "
        "random blobs. MoRF p / LeRF p: mean confidence once the most / least relevant pixels are removed. "
        "masked-mean: the masking score below, in points.")
NOTE = ("ROAD (Rong et al. 2022) removes pixels by noisy linear imputation, filling each from its neighbours, so "
        "the model cannot see where pixels were removed. Measured once per run on a fixed, stratified sample of "
        "its validation images, never its test split; each map explains the predicted class.")


def default_heatmap(run_dir: str | Path, layers: Sequence["CamLayer"]
                    ) -> tuple[best_map.FaithfulMaps | None, int, int]:
    """(the run's measurement or None, default method index in METHOD_NAMES, default index in `layers`). While
    it is measured: a progress bar here and Grad-CAM at the last block."""
    try:
        found = step_when_ready(run_dir, "faithful_maps",
                                "Measuring which heatmap method and layer are most faithful for this run (once, on "
                                "validation images); Grad-CAM at the last block meanwhile.")
    except UserFacingError as e:
        found = None
        st.caption(f"The most faithful heatmap could not be measured ({md_escape(e)}): Grad-CAM at the last block.")
    return (found, *best_map.default_choice(found, layers))


def table(found: best_map.FaithfulMaps) -> "pd.DataFrame":
    import pandas as pd  # noqa: PLC0415

    return pd.DataFrame([{"method": r["method"], "layer": r["layer"], "ROAD": f"{r['ROAD']:+.1f}",
                          "MoRF p": f"{r['MoRF p']:.3f}", "LeRF p": f"{r['LeRF p']:.3f}",
                          "masked-mean": f"{r['masked-mean']:+.1f}", "default": "✓" if r["chosen"] else ""}
                         for r in found.rows()]).set_index("method")


def chosen_because(found: best_map.FaithfulMaps | None) -> None:
    """The default's reason and the table of scores it was chosen from, in a closed expander."""
    if found is None:
        return
    with st.expander(f"Default heatmap: {found.chosen.title} at {found.layer}, chosen because …"):
        st.markdown(found.reason())
        st.table(table(found))  # a static table: small, and no batch-results grid to mistake it for
        st.caption(HELP + " " + NOTE)
