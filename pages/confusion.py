"""Confusions: where a run's test images go, above all monocytes and immature granulocytes.

Reads the run's metrics.json for its confusion matrix (rows = true class). Clicking a cell of the matrix or a row
of the ranked confusions opens that (true, predicted) cell: its test images right below, and the Grad-CAM of the
image clicked beside them. The images need the run's test predictions, kept in the run folder (made by the
training job, or once in the background for an older run while the rest of the page stays usable); Grad-CAM
needs the run's model, loaded once per server (core.inference.precompute), also in the background.

`?run=<run id>` (a job card's link) opens that run; picking a run writes it back to the address.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import UserFacingError
from core.evaluation import confusion
from core.store.runs import Run, RunStore
from ui.guard import guard
from ui.links import page_link
from ui.runs import linked_run_picker, runs_table
from ui.session import page_user

# -- settings -------------------------------------------------------------------------------------------
MAX_THUMBNAILS = 24
THUMBS_PER_ROW = 4  # thumbnails left, the chosen image's Grad-CAM right
THUMB_PX = 96
CAM_PX = 150  # each panel of the image · heatmap · overlay strip

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
if table.empty:  # drawn before the figure libraries load: the empty page says so at once
    st.info("No complete runs yet. Train one on the Train page or with `python -m core train`.",
            icon=":material/grid_on:")
    st.stop()

import plotly.graph_objects as go  # noqa: E402 - after the empty state, which needs none of these

from core.evaluation import predictions  # noqa: E402
from core.explain import best_map  # noqa: E402
from core.explain.cam import METHOD_NAMES, METHOD_TITLES  # noqa: E402
from core.inference import precompute  # noqa: E402
from core.store.csv_safe import safe_frame  # noqa: E402
from ui.faithful import chosen_because, default_heatmap  # noqa: E402
from ui.figures import bold_if, clickable_cells, confusion_heatmap, difference_heatmap  # noqa: E402
from ui.images import enlarge  # noqa: E402
from ui.palette import SERIES  # noqa: E402
from ui.progress import await_task, task_result  # noqa: E402

run_id, labels_by_run = linked_run_picker(table, "cf_run")
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

# -- the matrix and the ranked confusions: a click on either picks the cell the images come from --------------
ranked = confusion.ranked_confusions(counts, labels, focus or labels)
TRUE_KEY, PRED_KEY = f"cf_true_{run_id}", f"cf_pred_{run_id}"  # the chosen cell: two dropdowns that follow clicks
if TRUE_KEY not in st.session_state or st.session_state[TRUE_KEY] not in labels:
    top = ranked.iloc[0] if not ranked.empty else None
    st.session_state[TRUE_KEY] = top["true"] if top is not None else labels[0]
    st.session_state[PRED_KEY] = top["predicted"] if top is not None else labels[0]


def pick_cell(true_cls: str, pred_cls: str) -> None:
    if true_cls in labels and pred_cls in labels:
        st.session_state[TRUE_KEY], st.session_state[PRED_KEY] = true_cls, pred_cls


def picked_in_matrix() -> None:
    points = st.session_state[f"cf_matrix_{run_id}"]["selection"]["points"]
    if points:
        pick_cell(str(points[0].get("y")), str(points[0].get("x")))
        # the ranked table's ticked row is another cell now: untick it
        st.session_state[f"cf_ranked_{run_id}"] = {"selection": {"rows": [], "columns": [], "cells": []}}


def picked_in_ranking() -> None:
    """A row of the ranked table as drawn in the run that showed it (a callback keeps that run's `ranked`)."""
    rows = st.session_state[f"cf_ranked_{run_id}"]["selection"]["rows"]
    if rows and rows[0] < len(ranked):
        pick_cell(str(ranked.iloc[rows[0]]["true"]), str(ranked.iloc[rows[0]]["predicted"]))


st.subheader("Confusion matrix (test split)", anchor=False)
matrix_col, rank_col = st.columns([1, 1], gap="large")
chosen = (labels.index(st.session_state[TRUE_KEY]), labels.index(st.session_state[PRED_KEY]))
with matrix_col:
    st.plotly_chart(clickable_cells(confusion_heatmap(counts, labels, colour_by=colour_by, focus=focus), labels,
                                    chosen=chosen),
                    key=f"cf_matrix_{run_id}", on_select=picked_in_matrix, selection_mode="points",
                    config={"displayModeBar": False})  # no toolbar over the top row of numbers
    st.caption(f"{int(counts.sum())} test images; each cell: count and share of its true class (row). "
               "Bold: focus classes. **Click a cell** to see its images below.")
with rank_col:
    st.markdown(f"**Confusions of {', '.join(focus) if focus else 'all classes'}**, most frequent first")
    if ranked.empty:
        st.caption("No confusions involving these classes.")
    else:
        shown_ranked = pd.DataFrame({"confusion": ranked["true"] + " → " + ranked["predicted"],
                                     "count": ranked["count"], "share": ranked["share"]})
        st.dataframe(shown_ranked, hide_index=True, height=min(460, 38 + 35 * len(ranked)),
                     key=f"cf_ranked_{run_id}", on_select=picked_in_ranking, selection_mode="single-row",
                     column_config={
                         "confusion": st.column_config.TextColumn("True → predicted", width="medium"),
                         "count": st.column_config.NumberColumn("Images", width="small"),
                         "share": st.column_config.ProgressColumn(
                             "Share", format="percent", min_value=0, max_value=1, width="small",
                             help="Images of the true class that went to this class")})
        st.caption("Click a row's box to see its images below.")
    st.download_button("Confusion matrix as CSV",
                       lambda: safe_frame(pd.DataFrame(counts, index=pd.Index(labels, name="true"), columns=labels))
                       .to_csv().encode(), file_name=f"confusion-{run_id}.csv", mime="text/csv",
                       on_click="ignore", icon=":material/download:")
    page_link("feature_map", "See the classes on the feature map", ":material/scatter_plot:", {"run": run_id})


# -- the images behind one cell, and the Grad-CAM of the one clicked beside them ----------------------------------
def test_predictions() -> predictions.TestPredictions | None:
    """The run's cached test predictions; for an older run without them, a background task makes them (its
    progress shown here) and None until it is done. UserFacingError when they cannot be made."""
    found = predictions.cached(run_dir)
    if found is not None:
        return found
    task = precompute.step_task(run_dir, "test_predictions")
    found = task_result(task)
    if found is None:
        await_task(task, "Predicting this run's test split once with its model (then kept in its folder): the "
                         "images behind each cell appear when it is done. The matrix and the recall stay usable.")
    return found


def model_for_cam():
    """The run's model when loaded; else starts loading it in the background, shows its progress, None."""
    clf = precompute.loaded(run_dir)
    if clf is not None:
        return clf
    task = precompute.model_task(run_dir)
    clf = task_result(task)
    if clf is None:
        await_task(task, "Loading this run's model for Grad-CAM (once per server)…")
    return clf


@st.fragment
def cell_explorer() -> None:
    st.subheader("Images behind a cell", anchor=False)
    true_col, pred_col = st.columns(2)
    true_cls = true_col.selectbox("True class", labels, key=TRUE_KEY)
    pred_cls = pred_col.selectbox("Predicted as", labels, key=PRED_KEY)
    ti, pi = labels.index(true_cls), labels.index(pred_cls)
    if counts[ti, pi] == 0:
        st.caption(f"No test image of {true_cls} was predicted as {pred_cls}.")
        return
    try:
        found = test_predictions()
        if found is None:
            return
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
                "Click Grad-CAM under an image to see what the model looked at, beside the images.")
    from core.evaluation.calibration import describe  # noqa: PLC0415

    st.caption(f"p: the probability of the predicted class, {describe(found.temperature)}.")
    picked_key = f"cf_cam_{run_id}"
    picked = st.session_state.get(picked_key)  # (true, predicted, image index) of the image clicked
    picked = picked[2] if picked and picked[:2] == (ti, pi) and picked[2] < len(images) else None
    thumbs, cam_panel = st.columns([3, 2], gap="medium")
    with thumbs:
        for start in range(0, len(shown), THUMBS_PER_ROW):
            for cell, index in zip(st.columns(THUMBS_PER_ROW), shown[start:start + THUMBS_PER_ROW]):
                index = int(index)
                chosen_here = index == picked
                cell.image(enlarge(images[index], THUMB_PX), width="stretch",
                           caption=f"{'▶ ' if chosen_here else ''}#{index} · p={found.probabilities[index, pi]:.2f}")
                cell.button("Grad-CAM", key=f"cf_cam_btn_{run_id}_{index}", width="stretch",
                            type="primary" if chosen_here else "secondary",
                            help=f"What the model looked at in test image #{index}, shown on the right",
                            on_click=st.session_state.__setitem__, args=(picked_key, (ti, pi, index)))
    with cam_panel:
        cam_of(found, images, picked)


def cam_of(found: predictions.TestPredictions, images: np.ndarray, picked: int | None) -> None:
    """The chosen image's Grad-CAM for its predicted class (and its true class when they differ)."""
    with st.container(border=True):
        if picked is None:
            st.caption("Grad-CAM of the image you click shows here, beside the images.")
            return
        st.markdown(f"**Test image #{picked}**: true {labels[found.y_true[picked]]}, predicted "
                    f"{labels[found.y_pred[picked]]} (p={found.probabilities[picked].max():.2f})")
        explain = [(int(found.y_pred[picked]), "predicted")]
        if found.y_true[picked] != found.y_pred[picked]:
            explain.append((int(found.y_true[picked]), "true class"))
        try:
            clf = model_for_cam()
            if clf is None:
                return
            from core.explain.overlay import triptych  # noqa: PLC0415 - OpenCV only when a heatmap is drawn

            layers = clf.cam_layers()  # the run's most faithful method and layer by default (ui.faithful)
            faithful, default_method, default_layer = default_heatmap(run_dir, layers)
            method_col, layer_col = st.columns(2)
            measured = "measured" if faithful is not None else "fallback"  # once measured, start at its choice
            method = method_col.selectbox("Method", METHOD_NAMES, index=default_method, format_func=METHOD_TITLES.get,
                                          key=f"cf_method_{run_id}_{measured}")
            layer = layer_col.selectbox("Layer", layers, index=default_layer, format_func=lambda c: c.label,
                                        key=f"cf_layer_{run_id}_{measured}")
            with st.spinner(f"{METHOD_TITLES[method]}…"):
                heats = best_map.heatmaps(clf, images[picked], [c for c, _ in explain], method, layer.name)
        except (UserFacingError, ValueError) as e:
            st.warning(f"Heatmaps are not available for this run: {e}")
            return
        for (c, what), heat in zip(explain, heats):
            st.image(triptych(images[picked], heat, display=CAM_PX), width="stretch",
                     caption=f"Evidence for “{labels[c]}” ({what}), {METHOD_TITLES[method]} at {layer.name}: "
                             "image · heatmap · overlay")
        chosen_because(faithful)


cell_explorer()

# -- recall with intervals, and a second run -----------------------------------------------------------------------
st.subheader("Per-class recall with 95% intervals", anchor=False)
others = [r for r in labels_by_run if r != run_id]
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
    no_toolbar = {"displayModeBar": False}  # it would cover the top row of numbers
    left.plotly_chart(confusion_heatmap(counts, labels, focus=focus, title=f"A: {run_id}"), key="cf_a",
                      config=no_toolbar)
    right.plotly_chart(confusion_heatmap(runs[1][1], labels, focus=focus, title=f"B: {compare_id}"), key="cf_b",
                       config=no_toolbar)
    st.markdown("**Difference B − A** (share of each true class): red where B sends more images there, blue "
                "where fewer. On the diagonal, red means B gets the class right more often.")
    st.plotly_chart(difference_heatmap(confusion.difference(counts, runs[1][1]), labels, focus), key="cf_diff",
                    config=no_toolbar)
