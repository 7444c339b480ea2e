"""Results: every run in one table, a matrix of any metric over any fields, and the study's figures beside ours.

A thin view over core.store.results (the SQLite run index, read once per index change) and core.store.reference (the
study's Tables 1-15). It never loads TensorFlow: the page opens fast even with a thousand runs.

`?run=<run id>` (a job card's link) puts that run first in the runs table and among the selected runs; picking
runs writes the first one back to the address, so it can be shared.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.errors import UserFacingError
from core.store import reference, results
from core.store.csv_safe import safe_frame
from core.store.runs import RunStore
from ui.figures import parallel_coordinates
from ui.guard import guard
from ui.palette import SCALE, series_colours
from ui.robustness import robustness_section
from ui.runs import run_labels, runs_table
from ui.search import searches_section
from ui.session import current_user, page_user
from ui.text import md_escape, plural

# -- settings -------------------------------------------------------------------------------------------
DEFAULT_ROWS, DEFAULT_COLS, DEFAULT_METRIC = ["arch", "batch_size"], ["size"], "test_accuracy"
DEFAULT_SELECTED = 3  # runs picked for the per-class and curve views when the user has not chosen
PARALLEL_FIELDS = tuple(f for f in results.MAIN_FIELDS if f != "seed")  # seeds are repeats, not a setting

user = page_user("results")  # opened by URL without the role: one message, and the page stops
st.title("Results", anchor=False)
st.caption("Every run's best epoch (chosen on validation, never the last epoch), as a table and as a matrix "
           "over any settings, with the study's published numbers beside ours.")


def csv_bytes(df: pd.DataFrame):
    return lambda: safe_frame(df).to_csv(index=False).encode()  # formula cells escaped


# -- the runs and the filters -----------------------------------------------------------------------------
with guard():
    store = RunStore()
    table = runs_table(store)

if table.empty:
    st.info("No runs yet. Train one on the Train page or with `python -m core train`; it appears here when done.",
            icon=":material/table_chart:")

notice = st.session_state.pop("results_notice", None)
if notice:
    st.success(notice, icon=":material/check_circle:")

filters: dict[str, list] = {}
chosen_tags: list[str] = []
with st.expander("Filter runs", icon=":material/filter_list:", expanded=False):
    varied = [f for f in (*results.MAIN_FIELDS, *[c for c in results.CONFIG_FIELDS if c not in results.MAIN_FIELDS])
              if f in table and len(results.sorted_values(table[f])) > 1]
    tag_options = results.all_tags(table)
    status_options = results.sorted_values(table["status"])
    grid = st.columns(4)
    slot = 0
    if len(status_options) > 1:
        filters["status"] = grid[slot % 4].multiselect("Status", status_options, key="flt_status")
        slot += 1
    if tag_options:
        chosen_tags = grid[slot % 4].multiselect("Tags (any of)", tag_options, key="flt_tags")
        slot += 1
    for field in varied:
        filters[field] = grid[slot % 4].multiselect(
            results.field_label(field), results.sorted_values(table[field]), key=f"flt_{field}",
            format_func=lambda v, f=field: results.describe_value(f, v))
        slot += 1
    if not varied and not tag_options and len(status_options) < 2:
        st.caption("All runs share every setting so far: nothing to filter on.")

linked = st.query_params.get("run")  # a job card's link: that run first and selected
if linked is not None and linked not in set(table["run_id"]):
    st.warning(f"No run `{md_escape(linked)}` here (deleted, or from another store): showing every run.",
               icon=":material/link_off:")
    linked = None
search = st.text_input("Search runs", key="run_search", placeholder="run id, tag or setting: e.g. resnet50 64 px",
                       help="Runs whose id, status, tags or settings contain every word typed.")
shown = results.search_runs(results.filter_runs(table, filters, chosen_tags), search)
if linked is not None:  # the linked run first, even when the filters would hide it
    shown = pd.concat([table[table["run_id"] == linked], shown[shown["run_id"] != linked]])
complete = shown[shown["status"] == "complete"]

st.subheader(f"Runs ({len(shown)} of {len(table)})", anchor=False)
f1_cols = results.f1_columns(shown)
order = results.display_columns(shown)
number = lambda label, fmt="%.3f": st.column_config.NumberColumn(label, format=fmt)  # noqa: E731
column_config = {c: results.field_label(c) for c in order}
column_config.update({c: number(results.field_label(c)) for c in
                      ("val_accuracy", "val_auc", "test_accuracy", "test_auc", "test_macro_f1", *f1_cols)})
column_config.update({
    "created": st.column_config.DatetimeColumn("Created", format="YYYY-MM-DD HH:mm"),
    "lr": number("Learning rate", "%g"), "dropout": number("Dropout", "%.2f"),
    "train_seconds": number("Train time (s)", "%.0f"), "images_per_second": number("Images/s", "%.0f"),
})
if linked is not None:
    column_config["run_id"] = st.column_config.TextColumn("Run", help="First: the run this page was opened for")
# the column choice: by default what the run is, how it ended and the settings that differ between the runs
default_columns = order[:order.index("tags") + 1]
if "run_columns" in st.session_state:  # a column chosen earlier that these runs lack (no F1 yet) is dropped
    st.session_state["run_columns"] = [c for c in st.session_state["run_columns"] if c in order]
with st.popover("Columns", icon=":material/view_column:"):
    chosen_columns = st.multiselect("Columns shown", order, default=default_columns, key="run_columns",
                                    format_func=results.field_label,
                                    help="Kept while you use the dashboard; none chosen: the default ones.")
    st.caption("By default: the run, its status and scores, then the settings that differ between the runs shown.")
columns = chosen_columns or default_columns
view = shown[columns]
unfinished = shown["status"] != "complete"
if unfinished.any():  # a run without scores yet shows its status there ("running"), not "None"
    styled = view.style
    for status in results.sorted_values(shown.loc[unfinished, "status"]):
        rows = shown.index[shown["status"] == status]
        scores = [c for c in view.columns if c in results.INDEX_METRICS or c.startswith(results.F1_PREFIX)]
        if scores:
            styled = styled.format(na_rep=status, subset=pd.IndexSlice[rows, scores])
    view = styled
st.dataframe(view, hide_index=True, column_config=column_config, height=min(420, 38 + 35 * len(shown)),
             key="runs_table")
st.download_button("Runs as CSV", csv_bytes(shown[order]), file_name="runs.csv", mime="text/csv",
                   on_click="ignore", icon=":material/download:", help="Every column of the runs shown.")

# -- the matrix -----------------------------------------------------------------------------------------------
st.subheader("Matrix", anchor=False)
st.caption("Pick the fields for rows and columns and a metric: each cell is the mean ± sample SD over the runs "
           "there (usually seeds), with their number in brackets.")

metrics = results.metric_options(table)
field_choices = [f for f in (*results.MAIN_FIELDS, *results.CONFIG_FIELDS) if f != "seed"]
field_choices = list(dict.fromkeys(field_choices))
st.session_state.setdefault("mx_rows", DEFAULT_ROWS)
st.session_state.setdefault("mx_cols", DEFAULT_COLS)
st.session_state.setdefault("mx_metric", DEFAULT_METRIC)
st.session_state.setdefault("mx_recipe", False)
if st.session_state["mx_metric"] not in metrics:
    st.session_state["mx_metric"] = DEFAULT_METRIC


def apply_table12() -> None:
    st.session_state.update(mx_rows=list(results.TABLE12["rows"]), mx_cols=list(results.TABLE12["cols"]),
                            mx_metric=results.TABLE12["metric"], mx_recipe=True,
                            mx_levels_for=(tuple(results.TABLE12["rows"]), tuple(results.TABLE12["cols"])))


pick_rows, pick_cols, pick_metric, pick_preset = st.columns([3, 3, 3, 2], vertical_alignment="bottom")
rows = pick_rows.multiselect("Rows", field_choices, key="mx_rows", format_func=results.field_label)
st.session_state["mx_cols"] = [c for c in st.session_state["mx_cols"] if c not in rows]
cols = pick_cols.multiselect("Columns", [f for f in field_choices if f not in rows], key="mx_cols",
                             format_func=results.field_label)
metric_key = pick_metric.selectbox("Metric", list(metrics), key="mx_metric", format_func=lambda k: metrics[k].label)
pick_preset.button("Study Table 12", on_click=apply_table12, icon=":material/table_view:",
                   help="Rows architecture × batch size, columns image size, test accuracy, the study's recipe "
                        "only; the study's numbers beside ours.")
recipe = st.toggle("Only runs with the study's final recipe (dropout 0.3, Adam 1e-4, no attention, "
                   "no class weights)", key="mx_recipe")
metric = metrics[metric_key]

matrix_runs = results.filter_runs(complete, results.TABLE12["recipe"]) if recipe else complete
matrix_filters = {**filters, **(results.TABLE12["recipe"] if recipe else {})}
levels = (results.TABLE12["levels"]
          if st.session_state.get("mx_levels_for") == (tuple(rows), tuple(cols)) else None)
ours = results.matrix(matrix_runs, rows, cols, metric.key, levels=levels)
study = results.reference_matrix(ours, matrix_filters)
if study is not None and study.empty:
    study = None


def heatmap(m: results.Matrix, text: pd.DataFrame, zrange: tuple[float, float] | None, title: str) -> go.Figure:
    z = m.mean.to_numpy(float)
    fig = go.Figure(go.Heatmap(
        z=z, x=m.col_labels(), y=m.row_labels(), texttemplate="%{text}", customdata=text.to_numpy(),
        text=text.replace(r" \((\d+)\)", r"<br>(\1)", regex=True).to_numpy(),  # n (· best of k settings) below
        colorscale=SCALE, zmin=zrange[0] if zrange else None,
        zmax=zrange[1] if zrange else None, xgap=2, ygap=2, colorbar=dict(thickness=12),
        hovertemplate="%{y} · %{x}<br>" + metric.label + ": %{customdata}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="top")
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=110 + 46 * len(m.row_labels()),
                      margin=dict(l=10, r=10, t=80, b=10), plot_bgcolor="#ffffff")
    return fig


values = [v for v in ours.mean.to_numpy(float).ravel() if not math.isnan(v)]
if study is not None:
    values += [v for v in study.matrix.mean.to_numpy(float).ravel() if not math.isnan(v)]
zrange = (min(values), max(values)) if values else None
if ours.n.to_numpy().sum() == 0:
    st.info("No complete run matches these filters for this metric yet: the cells are empty.",
            icon=":material/grid_off:")
if ours.mixed:
    st.warning(f"{plural(ours.mixed, 'cell')} {'holds' if ours.mixed == 1 else 'hold'} runs that differ in more "
               "than the seed, which are not pooled: such a cell shows its best setting (\u201cbest of k "
               "settings\u201d). Add the fields that differ to the rows or columns, or filter the runs, to see "
               "each setting.", icon=":material/call_split:")
if study is not None:
    left, right = st.columns(2)
    left.plotly_chart(heatmap(ours, ours.text(metric), zrange, f"Ours: {metric.label}"), key="mx_ours")
    right.plotly_chart(heatmap(study.matrix, study.text(metric), zrange, f"Study: {metric.label}"), key="mx_study")
    if study.unreliable.to_numpy().any():
        st.warning(f"{reference.UNRELIABLE_MARK} Unreliable: the study's Table 13 batch-32 columns carry a "
                   "class-name ordering error from its original notebooks, so these per-class values may belong "
                   "to another class.", icon=":material/warning:")
    st.caption("Study values come from its tables (listed in the comparison below); cells with several study "
               "configurations show their mean ± SD (n).")
else:
    st.plotly_chart(heatmap(ours, ours.text(metric), zrange, f"Ours: {metric.label}"), key="mx_ours")
comparison = results.comparison_table(ours, study)
with st.expander("Cells as a table" + (" with the study's values and the difference" if study is not None else ""),
                 icon=":material/table_rows:"):
    st.dataframe(comparison, hide_index=True, column_config={
        "mean": number("Ours (mean)", "%.4f"), "sd": number("Ours (SD)", "%.4f"), "n": "Runs",
        "study": number("Study", "%.4f"), "difference": number("Ours − study", "%+.4f"),
        "study_tables": "Study tables", "study_reliable": "Study value reliable"})
st.download_button("Matrix as CSV", csv_bytes(comparison), file_name=f"matrix-{metric.key}.csv", mime="text/csv",
                   on_click="ignore", icon=":material/download:")

# -- selected runs: per class, curves -------------------------------------------------------------------------
st.subheader("Selected runs", anchor=False)
candidates = shown.sort_values("val_accuracy", ascending=False, na_position="last")
labels = run_labels(candidates)
default = list(complete.sort_values("val_accuracy", ascending=False)["run_id"][:DEFAULT_SELECTED])
if linked is not None:
    default = [linked, *[r for r in default if r != linked]][:DEFAULT_SELECTED]
    if st.session_state.get("sel_runs_for") != linked:  # a new link: select its run again
        st.session_state["sel_runs"] = [linked, *[r for r in st.session_state.get("sel_runs", default)
                                                  if r != linked and r in labels]]
        st.session_state["sel_runs_for"] = linked


def share_selection() -> None:
    """The first selected run into the address (?run=), so the page can be shared as the user sees it."""
    picked = st.session_state.get("sel_runs") or []
    if picked:
        st.query_params["run"] = picked[0]
        st.session_state["sel_runs_for"] = picked[0]
    else:
        st.query_params.pop("run", None)


selected = st.multiselect("Runs to compare (best on validation first)", list(labels), default=default,
                          format_func=lambda r: labels.get(r, r), key="sel_runs", on_change=share_selection)
selected_complete = [r for r in selected if r in set(complete["run_id"])]

if selected:
    with guard():  # a run file damaged since it was indexed: one message
        per_class = results.per_class_table(store, selected_complete)
        curves = results.curves(store, selected)
    colour = series_colours(selected)
    if len(selected) > 1:
        diff = results.settings_diff(table, selected)
        st.markdown("**Settings that differ** between the selected runs" if len(diff) else
                    "The selected runs share every setting (they differ in nothing but chance).")
        if len(diff):
            st.dataframe(diff, hide_index=True, key="settings_diff", column_config={"setting": "Setting"})

    st.markdown("**Per class (test split)**")
    if per_class.empty:
        st.caption("The selected runs have no per-class metrics yet.")
    else:
        which = st.segmented_control("Bars show", ["f1", "precision", "recall"], default="f1", key="pc_metric",
                                     format_func=lambda k: {"f1": "F1", "precision": "Precision",
                                                            "recall": "Recall"}[k]) or "f1"
        bars = go.Figure([go.Bar(name=run_id, x=g["class"], y=g[which], marker_color=colour[run_id],
                                 hovertemplate="%{x}: %{y:.3f}<extra>" + run_id + "</extra>")
                          for run_id, g in per_class.groupby("run_id", sort=False)])
        bars.update_layout(barmode="group", height=340, yaxis=dict(title=which, range=[0, 1.02]),
                           margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=1.12))
        st.plotly_chart(bars, key="pc_bars")
        wide, metric_columns = results.per_class_wide(per_class)  # "18cbbc F1": run id's random part, metric
        st.dataframe(wide, hide_index=True, column_config={c: number(c) for c in metric_columns})
        st.download_button("Per-class metrics as CSV", csv_bytes(per_class), file_name="per-class.csv",
                           mime="text/csv", on_click="ignore", icon=":material/download:")

    st.markdown("**Training curves** (solid: training, dashed: validation; as the study's Figure 1)")
    if curves.empty:
        st.caption("No training history for the selected runs.")
    else:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"), horizontal_spacing=0.08)
        for run_id, g in curves.groupby("run_id", sort=False):
            for col, m in ((1, "loss"), (2, "accuracy")):
                for split, dash in (("train", "solid"), ("val", "dash")):
                    line = g[(g["metric"] == m) & (g["split"] == split)]
                    fig.add_trace(go.Scatter(
                        x=line["epoch"], y=line["value"], mode="lines+markers", name=f"{run_id} {split}",
                        legendgroup=run_id, showlegend=col == 1, line=dict(color=colour[run_id], dash=dash),
                        hovertemplate=f"{run_id} {split} {m}" + "<br>epoch %{x}: %{y:.4f}<extra></extra>"),
                        row=1, col=col)
        fig.update_xaxes(title_text="epoch", dtick=1)
        fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), legend=dict(font=dict(size=11)))
        st.plotly_chart(fig, key="curves")
        st.download_button("Curves as CSV", csv_bytes(curves), file_name="curves.csv", mime="text/csv",
                           on_click="ignore", icon=":material/download:")

    # external validation (stored by the External validation page and `python -m core external`)
    from core.validation.external.storage import evaluations_table

    st.markdown("**External validation** (zero-shot on another lab's cells; details on the External validation "
                "page)")
    external_rows = evaluations_table({r: results.run_path(store, r) for r in selected_complete})
    if external_rows:
        st.dataframe(pd.DataFrame(external_rows)[
            ["run_id", "id", "dataset", "normalize", "resize", "n_images", "excluded", "accuracy_all",
             "accuracy_shared", "balanced_accuracy_all", "fine_tuned_accuracy"]], hide_index=True, key="ext_evals",
            column_config={"id": "evaluation", "n_images": "images", "excluded": "left out",
                           "accuracy_all": number("acc (all 8)"), "accuracy_shared": number("acc (shared)"),
                           "balanced_accuracy_all": number("balanced acc"),
                           "fine_tuned_accuracy": number("fine-tuned acc (held-out)")})
    else:
        st.caption("No external evaluations of the selected runs yet.")

    st.markdown("**Corruption robustness** (MedMNIST-C's blood-cell corruptions at five severities, on the test "
                "split; stored by `python -m core robustness`)")
    robustness_section({r: results.run_path(store, r) for r in selected_complete})

    # calibrated confidence (ui.calibration: temperature fitted on validation, threshold, reliability, risk-coverage)
    from ui.calibration import calibration_section

    st.markdown("**Calibrated confidence** (temperature scaling fitted on validation; the 'unidentified' threshold "
                "chosen from a target accuracy)")
    if selected_complete:
        cal_run = selected_complete[0] if len(selected_complete) == 1 else st.selectbox(
            "Run", selected_complete, key="cal_run", format_func=lambda r: labels.get(r, r))
        with guard(stop=False):
            calibration_section(results.run_path(store, cal_run), "cal")
    else:
        st.caption("Select a complete run to see its calibration.")
else:
    st.caption("Select runs above to see their per-class metrics and training curves.")

# -- hyperparameters against validation accuracy ----------------------------------------------------------------
st.subheader("Settings against validation accuracy", anchor=False)
dims = results.parallel_dimensions(complete, PARALLEL_FIELDS, "val_accuracy")
if len(complete) < 2 or len(dims) < 2:
    st.caption("Needs at least two complete runs that differ in a setting.")
else:
    st.plotly_chart(parallel_coordinates(dims, "val acc"), key="parallel")
    st.caption("One line per run across its settings, coloured by validation accuracy (darker is better); hover "
               "a point for its value.")

# -- searches (core.jobs.search): trials, best so far, parameter importances --------------------------------------
searches_section(store)

# -- tag and delete ------------------------------------------------------------------------------------------
if not user.can("train"):  # tagging is a trainer's, deleting an admin's; a viewer's page ends here
    st.stop()
st.subheader("Tag or delete runs", anchor=False)


def do_tag(run_ids: list[str], add: bool) -> None:
    tag = st.session_state.get("tag_text", "")
    try:
        n = store.tag_runs(run_ids, current_user(), add=[tag] if add else [], remove=[] if add else [tag])
    except UserFacingError as e:
        st.session_state["results_error"] = str(e)
        return
    st.session_state["results_notice"] = (f"{'Tagged' if add else 'Untagged'} {plural(n, 'run')} "
                                          f"{'with' if add else 'from'} “{tag.strip()}”.")


def ask_delete(run_ids: list[str]) -> None:
    st.session_state["confirm_delete"] = list(run_ids)


def do_delete() -> None:
    run_ids = st.session_state.pop("confirm_delete", [])
    try:
        for run_id in run_ids:
            store.delete(run_id, current_user())
    except UserFacingError as e:  # not an admin, or the store failed: one message, nothing half-said
        st.session_state["results_error"] = str(e)
        return
    st.session_state["results_notice"] = f"Deleted {plural(len(run_ids), 'run')}."


error = st.session_state.pop("results_error", None)
if error:
    st.error(md_escape(error))
if not selected_complete:
    st.caption("Select complete runs above to tag or delete them.")
else:
    n = len(selected_complete)
    tag_col, add_col, remove_col, delete_col = st.columns([4, 2, 2, 2], vertical_alignment="bottom")
    tag_col.text_input("Tag", key="tag_text", placeholder="e.g. baseline", max_chars=40,
                       help="A free label (no commas) to find and group runs; it is stored in each run's config.")
    add_col.button(f"Tag {plural(n, 'run')}", on_click=do_tag, args=(selected_complete, True),
                   icon=":material/sell:")
    remove_col.button("Remove tag", on_click=do_tag, args=(selected_complete, False))
    delete_col.button(f"Delete {plural(n, 'run')}…", on_click=ask_delete, args=(selected_complete,),
                      icon=":material/delete:", disabled=not user.is_admin,
                      help=None if user.is_admin else "Only an admin deletes runs.")
    pending = st.session_state.get("confirm_delete")
    if pending:
        with st.container(border=True):
            st.warning(f"Delete {plural(len(pending), 'run')} and all their files (model, "
                       f"metrics, history)? This cannot be undone.\n\n" + "\n".join(f"- `{r}`" for r in pending),
                       icon=":material/delete_forever:")
            yes, no = st.columns(2)
            yes.button("Yes, delete", type="primary", on_click=do_delete, key="confirm_yes")
            no.button("Cancel", on_click=lambda: st.session_state.pop("confirm_delete", None), key="confirm_no")
