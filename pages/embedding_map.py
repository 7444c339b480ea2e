"""Feature map: a run's test images placed by the features its network computes, to teach which classes it finds
alike (monocytes and immature granulocytes above all).

A thin view over core.explain.embedding (through ui.embedding_map): the map is made once per run (by its training
job, or here in the background for an older run, its progress shown) and read from the run folder after that.
Hover shows a point's cell; a click (or the "Test image #" box the click fills) shows the cell and its Grad-CAM
below, the model loaded once per server in the background. Filters: the classes shown (one click for the two
hard ones) and wrong calls only.

`?run=<run id>` opens that run; picking a run writes it back to the address.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core.errors import UserFacingError
from core.store.runs import Run, RunStore
from ui.guard import guard
from ui.runs import linked_run_picker, runs_table
from ui.session import page_user
from ui.text import md_escape

CAM_PX = 150  # each panel of the image · heatmap · overlay strip
IMAGE_PX = 160

page_user("feature_map")  # opened by URL without the role: one message, and the page stops
st.title("Feature map", anchor=False)
st.caption("Where a run's test images lie in its network's own feature space, drawn in two dimensions: the "
           "classes it finds alike overlap. Monocytes and immature granulocytes are the lesson.")

with guard():
    store = RunStore()
    table = runs_table(store, include_incomplete=False)
if table.empty:
    st.info("No complete runs yet. Train one on the Train page or with `python -m core train`.",
            icon=":material/scatter_plot:")
    st.stop()

from core.evaluation.confusion import AMBIGUOUS  # noqa: E402
from ui import embedding_map as fm  # noqa: E402 - after the empty state, which needs no chart library
from ui.images import enlarge  # noqa: E402
from ui.model import model_when_ready  # noqa: E402

run_id, _ = linked_run_picker(table, "fm_run")
run_dir = str(store.runs_dir / run_id)
try:
    emap = fm.map_when_ready(run_dir)
except UserFacingError as e:
    st.warning(f"No feature map for this run: {md_escape(e)}", icon=":material/scatter_plot:")
    st.stop()
if emap is None:
    st.stop()

labels = fm.short_labels(emap)
hard = [c for c in AMBIGUOUS if c in labels]
CLASSES_KEY, WRONG_KEY, PICK_KEY = "fm_classes", "fm_wrong_only", f"fm_pick_{run_id}"
if CLASSES_KEY not in st.session_state or not set(st.session_state[CLASSES_KEY]) <= set(labels):
    st.session_state[CLASSES_KEY] = list(labels)


def show_classes(chosen: list[str]) -> None:
    st.session_state[CLASSES_KEY] = list(chosen)


st.caption(md_escape(fm.explanation(emap.method)))
shown_classes = st.multiselect("Classes shown", labels, key=CLASSES_KEY)
hard_col, all_col, wrong_col = st.columns([3, 1.2, 2.4], vertical_alignment="center")
hard_col.button(f"Only {' + '.join(hard)}", on_click=show_classes, args=(hard,), disabled=not hard,
                help="Show only the two classes the network (and the study) confuses most", width="stretch")
all_col.button("All classes", on_click=show_classes, args=(labels,), width="stretch")
wrong_only = wrong_col.toggle("Wrong calls only", key=WRONG_KEY)

everything = fm.points(emap)
shown = everything[everything["true"].isin(shown_classes)]
if wrong_only:
    shown = shown[shown["result"] == "wrong"]


def picked_on_map() -> None:
    index = fm.picked_index(st.session_state.get(f"fm_chart_{run_id}"))
    if index is not None and 0 <= index < len(emap):
        st.session_state[PICK_KEY] = index


st.vega_lite_chart(shown, fm.chart(emap), key=f"fm_chart_{run_id}", on_select=picked_on_map,
                   selection_mode="pick")
wrong = int((~emap.correct).sum())
st.caption(f"{len(shown):,} of {len(emap):,} test images shown · {wrong:,} wrong calls in all · map: "
           f"{emap.method_title}. Double-click the map to clear the pick.")


# -- the image picked, and its Grad-CAM --------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=2)
def test_images(path: str) -> np.ndarray:
    return Run(Path(path)).test_split()[0]


st.subheader("A cell and its Grad-CAM", anchor=False)
picked = st.number_input("Test image #", min_value=0, max_value=len(emap) - 1, value=None, step=1, key=PICK_KEY,
                         help="Click a point on the map, or type a test image's number")
if picked is None:
    st.caption("Click a point on the map to see the cell and what the model looked at.")
    st.stop()
picked = int(picked)
true_i, pred_i = int(emap.y_true[picked]), int(emap.y_pred[picked])
st.markdown(f"**Test image #{picked}**: true {labels[true_i]}, predicted {labels[pred_i]} "
            f"(p={emap.confidence[picked]:.2f}){'' if true_i == pred_i else ' — a wrong call'}")
try:
    image = test_images(run_dir)[picked]
except UserFacingError as e:
    st.warning(f"The run's test images are not on this machine: {md_escape(e)}")
    st.stop()
image_col, cam_col = st.columns([1, 3], gap="medium")
image_col.image(enlarge(image, IMAGE_PX), caption=f"#{picked} · {labels[true_i]}", width=IMAGE_PX)
with cam_col:
    try:
        clf = model_when_ready(run_dir, "Loading this run's model for Grad-CAM (once per server)…")
        if clf is None:
            st.stop()
        from core.evaluation.predictions import gradcam
        from core.explain.overlay import triptych

        explain = [(pred_i, "predicted")] + ([(true_i, "true class")] if true_i != pred_i else [])
        with st.spinner("Grad-CAM…"):
            heats = gradcam(clf, image, [c for c, _ in explain])
    except (UserFacingError, ValueError) as e:
        st.warning(f"Grad-CAM is not available for this run: {md_escape(e)}")
        st.stop()
    for (c, what), heat in zip(explain, heats):
        st.image(triptych(image, heat, display=CAM_PX), width="stretch",
                 caption=f"Evidence for “{labels[c]}” ({what}): image · heatmap · overlay")
