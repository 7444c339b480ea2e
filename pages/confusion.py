"""Confusions: where a run's test images go, above all monocytes and immature granulocytes.

Reads the run's metrics.json for its confusion matrix (rows = true class). The images behind a cell need the
run's test predictions: computed once with the run's model (TensorFlow loads then, through core) and cached
in the run folder, so later visits are fast. Grad-CAM of a thumbnail goes through core.explain.cam as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import UserFacingError
from core.evaluation import confusion, predictions
from core.store.csv_safe import safe_frame
from core.store.runs import Run, RunStore
from ui.figures import bold_if, confusion_heatmap, difference_heatmap
from ui.guard import guard
from ui.images import enlarge
from ui.model import classifier
from ui.palette import SERIES
from ui.runs import run_labels, runs_table
from ui.session import page_user

# -- settings -------------------------------------------------------------------------------------------
MAX_THUMBNAILS = 24
THUMBS_PER_ROW = 8
THUMB_PX = 96

page_user("confusion")  # opened by URL without the role: one message, and the page stops
st.title("Confusions", anchor=False)
st.caption("Which classes a run mixes up on its test split, the images behind each mistake, and what the model "
           "looked at. Monocytes and immature granulocytes, the study's hardest classes, are in focus by default.")


@st.cache_data(show_spinner=False, max_entries=16)
def load_metrics(run_dir: str) -> dict:
    return Run(Path(run_dir)).metrics


@st.cache_resource(show_spinner=False, max_entries=2)
def load_test_images(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    return Run(Path(run_dir)).test_split()


# -- the run ------------------------------------------------------------------------------------------------
with guard():
    store = RunStore()
    table = runs_table(store, include_incomplete=False)
if table.empty:
    st.info("No complete runs yet. Train one on the Train page or with `python -m core train`.",
            icon=":material/grid_on:")
    st.stop()

ranked_runs = table.sort_values("val_accuracy", ascending=False, kind="stable")
labels_by_run = run_labels(ranked_runs)
run_ids = list(labels_by_run)
run_id = st.selectbox("Run (best on validation first)", run_ids, key="cf_run", format_func=labels_by_run.get)
run_dir = str(store.runs_dir / run_id)
try:
    metrics = load_metrics(run_dir)
    counts, labels = confusion.from_metrics(metrics, "test")
except (OSError, ValueError, KeyError) as e:
    st.error(f"Could not read this run's metrics ({e}).")
    st.stop()

focus_default = [c for c in confusion.AMBIGUOUS if c in labels]
view, focus_col = st.columns([1, 2], vertical_alignment="bottom")
colour_by = view.segmented_control("Colour cells by", ["share", "count"], default="share", key="cf_colour",
                                   format_func={"share": "Share of true class", "count": "Count"}.get) or "share"
focus = focus_col.multiselect("Focus classes", labels, default=focus_default, key="cf_focus")

# -- the matrix and the ranked confusions ---------------------------------------------------------------------
st.subheader("Confusion matrix (test split)", anchor=False)
matrix_col, rank_col = st.columns([4, 3], gap="large")
with matrix_col:
    st.plotly_chart(confusion_heatmap(counts, labels, colour_by=colour_by, focus=focus), key="cf_matrix")
    st.caption(f"{int(counts.sum())} test images; each cell: count and share of its true class (row). "
               "Bold: focus classes.")
ranked = confusion.ranked_confusions(counts, labels, focus or labels)
with rank_col:
    st.markdown(f"**Confusions of {', '.join(focus) if focus else 'all classes'}**, most frequent first")
    if ranked.empty:
        st.caption("No confusions involving these classes.")
    else:
        shown_ranked = pd.DataFrame({"confusion": ranked["true"] + " → " + ranked["predicted"],
                                     "count": ranked["count"], "share": ranked["share"]})
        st.dataframe(shown_ranked, hide_index=True, height=min(460, 38 + 35 * len(ranked)), column_config={
            "confusion": st.column_config.TextColumn("True → predicted"),
            "count": st.column_config.NumberColumn("Images", width="small"),
            "share": st.column_config.ProgressColumn("Share", format="percent", min_value=0, max_value=1,
                                                     width="small",
                                                     help="Images of the true class that went to this class")})
    st.download_button("Confusion matrix as CSV",
                       lambda: safe_frame(pd.DataFrame(counts, index=pd.Index(labels, name="true"), columns=labels))
                       .to_csv().encode(), file_name=f"confusion-{run_id}.csv", mime="text/csv",
                       on_click="ignore", icon=":material/download:")


# -- the images behind one cell ---------------------------------------------------------------------------------
@st.fragment
def cell_explorer() -> None:
    st.subheader("Images behind a cell", anchor=False)
    top = ranked.iloc[0] if not ranked.empty else None
    true_col, pred_col = st.columns(2)
    true_cls = true_col.selectbox("True class", labels, key=f"cf_true_{run_id}",
                                  index=labels.index(top["true"]) if top is not None else 0)
    pred_cls = pred_col.selectbox("Predicted as", labels, key=f"cf_pred_{run_id}",
                                  index=labels.index(top["predicted"]) if top is not None else 0)
    ti, pi = labels.index(true_cls), labels.index(pred_cls)
    if counts[ti, pi] == 0:
        st.caption(f"No test image of {true_cls} was predicted as {pred_cls}.")
        return
    try:
        found = predictions.cached(run_dir)
        if found is None:
            with st.spinner("Predicting the test split once with this run's model (then cached in its folder)…"):
                found = predictions.compute(run_dir, classifier(run_dir))
        images, _ = load_test_images(run_dir)
    except UserFacingError as e:
        st.warning(str(e), icon=":material/image_not_supported:")
        return
    mismatch = confusion.mismatch(counts, found.y_true, found.y_pred)
    if mismatch:
        st.caption(f"Note: recomputed predictions differ from metrics.json for {mismatch} image(s) (numerical "
                   "noise); thumbnails follow the recomputed predictions.")
    members = confusion.cell_members(found.y_true, found.y_pred, found.probabilities, ti, pi)
    shown = members[:MAX_THUMBNAILS]
    kind = "correct" if ti == pi else "mistaken"
    st.markdown(f"**{len(members)}** {true_cls} image{'s' * (len(members) != 1)} predicted as **{pred_cls}** "
                f"({kind}){f'; the {len(shown)} most confident shown' if len(members) > len(shown) else ''}. "
                "Click Grad-CAM under an image to see what the model looked at.")
    picked_key = f"cf_cam_{run_id}"
    for start in range(0, len(shown), THUMBS_PER_ROW):
        cells = st.columns(THUMBS_PER_ROW)
        for cell, index in zip(cells, shown[start:start + THUMBS_PER_ROW]):
            index = int(index)
            cell.image(enlarge(images[index], THUMB_PX), width="stretch",
                       caption=f"#{index} · p={found.probabilities[index, pi]:.2f}")
            if cell.button("Grad-CAM", key=f"cf_cam_btn_{run_id}_{index}", width="stretch",
                           help=f"What the model looked at in test image #{index}"):
                st.session_state[picked_key] = index
    picked = st.session_state.get(picked_key)
    if picked is None or picked >= len(images):
        return
    from core.explain.overlay import triptych  # noqa: PLC0415 - OpenCV only when a heatmap is drawn

    with st.container(border=True):
        st.markdown(f"**Test image #{picked}**: true {labels[found.y_true[picked]]}, predicted "
                    f"{labels[found.y_pred[picked]]} (p={found.probabilities[picked].max():.2f})")
        explain = [(int(found.y_pred[picked]), "predicted")]
        if found.y_true[picked] != found.y_pred[picked]:
            explain.append((int(found.y_true[picked]), "true class"))
        try:
            with st.spinner("Grad-CAM…"):
                heats = predictions.gradcam(classifier(run_dir), images[picked], [c for c, _ in explain])
        except (UserFacingError, ValueError) as e:
            st.warning(f"Grad-CAM is not available for this run: {e}")
            return
        panels = [(f"Evidence for “{labels[c]}” ({what})", heat) for (c, what), heat in zip(explain, heats)]
        for (title, heat), col in zip(panels, st.columns(2)):
            col.image(triptych(images[picked], heat, display=168), caption=f"{title}: image · heatmap · overlay")


cell_explorer()

# -- recall with intervals, and a second run -----------------------------------------------------------------------
st.subheader("Per-class recall with 95% intervals", anchor=False)
others = [r for r in run_ids if r != run_id]
NO_SECOND = "none"
compare_id = st.selectbox("Compare with", [NO_SECOND, *others], key="cf_compare", index=1 if others else 0,
                          format_func=lambda r: "— no second run —" if r == NO_SECOND else labels_by_run[r])
runs = [(run_id, counts)]
if compare_id != NO_SECOND:
    try:
        other_counts, other_labels = confusion.from_metrics(load_metrics(str(store.runs_dir / compare_id)), "test")
    except (OSError, ValueError, KeyError) as e:
        st.error(f"Could not read the second run's metrics ({e}).")
        compare_id = None
    else:
        if other_labels != labels:
            st.warning("The two runs have different classes; they cannot be compared.")
            compare_id = None
        else:
            runs.append((compare_id, other_counts))

recall_fig = go.Figure()
recalls = []
for (rid, c), colour in zip(runs, SERIES):
    r = confusion.recall_intervals(c, labels).assign(run_id=rid)
    recalls.append(r)
    recall_fig.add_trace(go.Bar(
        name=("A " if len(runs) > 1 and rid == run_id else "B " if len(runs) > 1 else "") + rid, x=r["class"],
        y=r["recall"], marker_color=colour,
        error_y=dict(type="data", symmetric=False, array=r["high"] - r["recall"], arrayminus=r["recall"] - r["low"],
                     thickness=1.2, width=4),
        customdata=np.stack([r["low"], r["high"], r["correct"], r["support"]], axis=1),
        hovertemplate="%{x}: %{y:.1%} (%{customdata[2]}/%{customdata[3]})<br>95% CI %{customdata[0]:.1%}–"
                      "%{customdata[1]:.1%}<extra></extra>"))
recall_fig.update_layout(barmode="group", height=360, yaxis=dict(title="recall", range=[0, 1.05], tickformat=".0%"),
                         margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=1.12))
recall_fig.update_xaxes(type="category", tickmode="array", tickvals=labels, ticktext=bold_if(labels, focus))
st.plotly_chart(recall_fig, key="cf_recall")
st.caption("Error bars: 95% Wilson score intervals for each class's recall, from its number of test images.")
st.download_button("Recall table as CSV", lambda: safe_frame(pd.concat(recalls)).to_csv(index=False).encode(),
                   file_name="recall.csv", mime="text/csv", on_click="ignore", icon=":material/download:")

if len(runs) == 2:
    st.subheader("Two runs side by side", anchor=False)
    left, right = st.columns(2)
    left.plotly_chart(confusion_heatmap(counts, labels, focus=focus, title=f"A: {run_id}"), key="cf_a")
    right.plotly_chart(confusion_heatmap(runs[1][1], labels, focus=focus, title=f"B: {compare_id}"), key="cf_b")
    st.markdown("**Difference B − A** (share of each true class): red where B sends more images there, blue "
                "where fewer. On the diagonal, red means B gets the class right more often.")
    st.plotly_chart(difference_heatmap(confusion.difference(counts, runs[1][1]), labels, focus), key="cf_diff")
