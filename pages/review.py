"""Review: a pathologist goes through a model's calls one cell at a time, as with a digital morphology
analyser's pre-classification: agree, reclassify, unsure or not a cell, with a note.

A thin view over core.validation.review (SQLite sessions that survive restarts and resume where they stopped). The
model (TensorFlow, through ui.model, the shared model cache) is loaded only once a session is started or shown:
it gives the Grad-CAM evidence for each call.

Keyboard: in the decision form, Enter in the note field submits "Agree" (the form's first button); the
buttons also have shortcuts, shown on them: A agree, U unsure, X not a cell, 1-8 reclassify as that class,
B back, N next. Shortcuts are ignored while typing in a text field.

The reviewer is the logged-in user (ui.session), never a typed name: a user sees and continues their own
sessions (an admin: everyone's). A decision the database could not save (busy) stays in the page with a
"Save it again" button; a damaged database is one message, with a button for an admin to move it aside.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.access.paths import data_roots
from core.data.cell_framing import run_fraction
from core.data.images import RESIZE_MODES
from core.data.uploads import UPLOAD_TYPES
from core.errors import UserFacingError
from core.store.runs import RunStore
from core.validation import review as rv
from ui.figures import confusion_heatmap
from ui.guard import guard, show_error
from ui.images import enlarge
from ui.model import classifier
from ui.runs import run_label
from ui.session import page_user
from ui.text import RESIZE_HELP, RESIZE_TITLES, md_escape

# -- settings -------------------------------------------------------------------------------------------
DISPLAY_PX = 320  # the cell image is scaled to this many pixels a side
DEFAULT_CELLS = 50

user = page_user("review")  # opened by URL without the role: one message, and the page stops
st.title("Review", anchor=False)
st.caption("Go through a model's calls one cell at a time, with its confidence and Grad-CAM evidence, and agree, "
           "reclassify, mark unsure or 'not a cell'. Sessions are saved as you go and can be resumed later; two "
           "reviewers of the same cells can be compared (Cohen's kappa).")


@st.cache_data(max_entries=64, show_spinner=False)
def cell_view(run_path: str, image_ref: str, resize: str) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(the original image when it is larger than the model's input, the model's input scaled up, the same
    with the Grad-CAM of the model's call over it)."""
    from core.explain.overlay import overlay  # noqa: PLC0415

    clf = classifier(run_path)
    original, model_input = rv.cell_pixels(image_ref, clf.image_size, resize, run_fraction(run_path, resize))
    expl = clf.explain(model_input[None], "gradcam")
    big = enlarge(model_input, DISPLAY_PX)
    shown = enlarge(original, DISPLAY_PX) if original.shape[:2] != model_input.shape[:2] else None
    return shown, big, overlay(big, expl.heatmaps[0])


def session_label(s: dict) -> str:
    done = "done" if s["reviewed"] >= s["n_cells"] else f"{s['reviewed']}/{s['n_cells']}"
    return (f"#{s['id']} · {s['reviewer']} · {rv.SOURCE_TITLES[s['source_kind']].lower()} · "
            f"{s['run_id']} · {done}")


def open_session(session_id: int) -> None:
    st.session_state.review_sid = int(session_id)
    st.session_state.review_pos = store.next_item(session_id)


def damaged_store(error: rv.ReviewStoreError) -> None:
    """One message; an admin may move the damaged database aside (kept for recovery) and start a new one."""
    show_error(error)
    if isinstance(error, rv.ReviewBusyError):
        st.stop()
    if user.is_admin:
        if st.button("Move the damaged database aside and start a new one", icon=":material/restore_page:",
                     key="review_move_aside"):
            with guard():
                aside = rv.ReviewStore.move_aside()
            st.session_state.review_notice = f"The damaged review database was moved to {aside}; a new one started."
            st.session_state.pop("review_sid", None)
            st.rerun()
    else:
        st.info("Ask an admin to open this page: they can move the damaged file aside and start a new one.")
    st.stop()


# -- the reviewer and the sessions ------------------------------------------------------------------------
notice = st.session_state.pop("review_notice", None)
if notice:
    st.success(md_escape(notice), icon=":material/check:")
try:
    store = rv.ReviewStore()
    mine = store.sessions(user)  # the user's own sessions; an admin's: everyone's
except rv.ReviewStoreError as e:
    damaged_store(e)
st.caption(f":material/person: Reviewing as **{md_escape(user.name)}**")
start_tab, resume_tab = st.tabs(["Start a session", f"Resume ({len(mine)})"])

with resume_tab:
    if not mine:
        st.caption("No sessions of yours yet.")
    else:
        with st.form("review_resume_form", border=False):
            picked = st.selectbox("Session", mine, format_func=session_label, key="review_resume_pick")
            if st.form_submit_button("Resume", icon=":material/play_arrow:"):
                open_session(picked["id"])

with start_tab:
    runs = []
    with guard(stop=False):
        runs = RunStore().list_runs("val_accuracy DESC")
    if not runs:
        st.info("No trained runs yet: train one on the **Train** page first.", icon=":material/model_training:")
    else:
        best_id = runs[0]["run_id"]
        c1, c2 = st.columns(2)
        run = c1.selectbox("Run whose calls are reviewed", runs, key="review_run",
                           format_func=lambda r: run_label(r, best_id))
        kind = c2.radio("Cells", rv.SOURCES, format_func=rv.SOURCE_TITLES.get, key="review_source", horizontal=True)
        c1, c2, c3 = st.columns(3)
        order = c1.radio("Order", rv.ORDERS, format_func=rv.ORDER_TITLES.get, key="review_order")
        limit = c2.number_input("Cells in the session", 1, 5000, DEFAULT_CELLS, key="review_limit",
                                help="The first cells in the chosen order.")
        resize = c3.radio("Resize (image files)", RESIZE_MODES, key="review_resize", format_func=RESIZE_TITLES.get,
                          help=RESIZE_HELP)
        folder, files = "", []
        if kind == "external":
            folder = st.text_input("External dataset folder (one subfolder per class)", key="review_folder",
                                   help="It must be inside a folder this server may read: "
                                        + ", ".join(str(r) for r in data_roots()))
        elif kind == "uploads":
            files = st.file_uploader("Cell images", type=[t for t in UPLOAD_TYPES if t != "zip"],
                                     accept_multiple_files=True,
                                     key="review_files")
        if st.button("Start session", type="primary", icon=":material/play_arrow:", key="review_start"):
            try:
                with st.spinner("Predicting the cells and ordering them…"):
                    clf = classifier(run["path"])
                    if kind == "test":
                        cells, source = rv.cells_from_test_split(clf, int(limit), order), "test split"
                    elif kind == "external":
                        if not folder.strip():
                            raise rv.ReviewError("Enter the external dataset's folder")
                        cells = rv.cells_from_external(clf, folder.strip(), resize=resize, limit=int(limit),
                                                       order=order, roots=data_roots())
                        source = folder.strip()
                    else:
                        if not files:
                            raise rv.ReviewError("Upload at least one image")
                        paths, problems = rv.save_uploads((f.name, f.getvalue()) for f in files)
                        for p in problems:
                            st.warning(p)
                        cells = rv.cells_from_files(clf, paths, resize, order)[:int(limit)]
                        source = f"{len(paths)} uploaded images"
                    sid = store.create_session(user, run["run_id"], run["path"], kind, source, order, cells,
                                               clf.labels, resize)
                open_session(sid)
                st.rerun()
            except UserFacingError as e:
                show_error(e)

sid = st.session_state.get("review_sid")
if sid is None:
    st.stop()
try:
    session = store.session(sid)
except UserFacingError:
    st.session_state.pop("review_sid", None)
    st.stop()
if not user.can("review", owner=session["reviewer"]):
    st.info(f"Session #{sid} belongs to {session['reviewer']}; resume one of yours above.")
    st.stop()

# -- one cell at a time -----------------------------------------------------------------------------------
labels = session["labels"]
n = session["n_cells"]
pos = rv.clamp_position(st.session_state.get("review_pos"), n)
done, total = store.progress(sid)
st.divider()
st.subheader(f"Session #{sid} · cell {pos + 1} of {n}", anchor=False)
st.progress(done / total, text=f"{done} of {total} reviewed · "
                              f"{rv.ORDER_TITLES[session['order_mode']].lower()} · run {session['run_id']}")
cell = store.cell(sid, pos)

try:
    original, seen, cam = cell_view(session["run_path"], cell["image"], session["resize"])
except UserFacingError as e:
    st.error(f"This cell's image cannot be shown: {md_escape(e)}")
    seen = None

left, right = st.columns([6, 5], gap="large")
with left:
    if seen is not None:
        a, b = st.columns(2)
        if original is not None:
            a.image(original, caption="The cell (original image)", width="stretch")
            b.image(cam, caption=f"Grad-CAM for {cell['model_label']}, on what the model sees "
                                 f"({session['resize']} resize)", width="stretch")
        else:
            a.image(seen, caption="The cell, as the model sees it", width="stretch")
            b.image(cam, caption=f"Grad-CAM: evidence for {cell['model_label']}", width="stretch")
with right:
    st.markdown(f"Model's call: **{cell['model_label']}**")
    st.progress(float(cell["confidence"]), text=f"confidence {cell['confidence']:.1%}")
    if cell["decision"]:
        said = rv.reviewer_category(cell["decision"], cell["label"])
        st.success(f"Reviewed: {rv.DECISION_TITLES[cell['decision']].lower()}"
                   + (f" → {said}" if cell["decision"] == "reclassify" else "")
                   + (f" · note: {cell['note']}" if cell["note"] else ""), icon=":material/check:")

    def save(decision: dict) -> None:
        """Record one decision; one the database could not save stays pending in the page."""
        try:
            store.record(sid, decision["pos"], decision["decision"], decision["label"], decision["note"], user=user)
        except rv.ReviewBusyError as e:
            st.session_state.review_pending = decision
            st.session_state.review_error = str(e)
            return
        except UserFacingError as e:
            st.session_state.review_error = str(e)
            return
        st.session_state.pop("review_pending", None)
        st.session_state.review_pos = store.next_item(sid, after=decision["pos"])

    def decide(decision: str, label: str | None = None) -> None:
        # The form and its buttons keep the same keys from cell to cell (a shortcut then triggers one button
        # only), so the cell is the one on screen: review_pos, as the last run drew it.
        here = int(st.session_state.get("review_pos") or 0)
        note = st.session_state.get(f"review_note_{sid}", "")
        save({"sid": sid, "pos": here, "decision": decision, "label": label, "note": note})

    st.session_state.review_pos = pos
    if st.session_state.get("review_note_for") != (sid, pos):  # a new cell: its stored note, or nothing
        st.session_state[f"review_note_{sid}"] = cell["note"] or ""
        st.session_state.review_note_for = (sid, pos)
    with st.form(f"review_form_{sid}", border=True, enter_to_submit=True):
        st.text_input("Note (optional; Enter = agree)", key=f"review_note_{sid}", max_chars=rv.MAX_NOTE)
        b1, b2, b3 = st.columns(3)
        b1.form_submit_button("Agree", type="primary", shortcut="A", on_click=decide, args=("agree",),
                              icon=":material/check:", width="stretch", key="review_agree")
        b2.form_submit_button("Unsure", shortcut="U", on_click=decide, args=("unsure",), width="stretch",
                              key="review_unsure")
        b3.form_submit_button("Not a cell", shortcut="X", on_click=decide, args=("not_cell",), width="stretch",
                              key="review_not_cell")
        st.caption("Reclassify as:")
        grid = st.columns(2)
        for i, label in enumerate(labels):
            grid[i % 2].form_submit_button(label, shortcut=str(i + 1), on_click=decide, args=("reclassify", label),
                                           disabled=label == cell["model_label"], width="stretch",
                                           key=f"review_re_{i}")
    error = st.session_state.pop("review_error", None)
    if error:
        st.error(md_escape(error))
    pending = st.session_state.get("review_pending")
    if pending and pending["sid"] == sid:
        said = rv.DECISION_TITLES[pending["decision"]].lower() + (f" → {pending['label']}" if pending["label"] else "")
        st.warning(f"Not saved yet: {md_escape(said)} on cell {pending['pos'] + 1}"
                   + (f" (note: {md_escape(pending['note'])})" if pending["note"] else "") + ".",
                   icon=":material/save:")
        st.button("Save it again", on_click=save, args=(pending,), icon=":material/save:", key="review_retry")

    def move(step: int) -> None:
        here = int(st.session_state.get("review_pos") or 0)
        st.session_state.review_pos = rv.clamp_position(here + step, n)

    nav1, nav2 = st.columns(2)
    nav1.button("Back", shortcut="B", on_click=move, args=(-1,), disabled=pos == 0, icon=":material/arrow_back:",
                width="stretch", key="review_back")
    nav2.button("Next", shortcut="N", on_click=move, args=(1,), disabled=pos >= n - 1,
                icon=":material/arrow_forward:", width="stretch", key="review_next")
    st.caption("Keys: A agree · U unsure · X not a cell · 1–8 reclassify · B back · N next · Enter in the note "
               "= agree.")

# -- summary ----------------------------------------------------------------------------------------------
st.divider()
st.subheader("Summary", anchor=False)
summary = store.summary(sid)
c = st.columns(4)
c[0].metric("Reviewed", f"{summary['reviewed']} of {summary['n_cells']}")
c[1].metric("Agreement with the model",
            "–" if summary["agreement_overall"] is None else f"{summary['agreement_overall']:.1%}")
c[2].metric("Unsure", summary["decisions"]["unsure"])
c[3].metric("Not a cell", summary["decisions"]["not_cell"])
if summary["reviewed"]:
    t1, t2 = st.columns([1, 1])
    with t1:
        st.markdown("**Agreement with the model, by the model's call**")
        df = pd.DataFrame(rv.reviewed_agreement(summary["agreement"]))
        st.dataframe(df[["model_label", "reviewed", "agree", "reclassify", "unsure", "not_cell", "agreement"]],
                     hide_index=True, key="review_agree_table", column_config={
                         "model_label": "Model's call", "not_cell": "not a cell",
                         "agreement": st.column_config.ProgressColumn("Agreement", format="percent", min_value=0,
                                                                      max_value=1)})
        if summary["vs_truth"]:
            vt = summary["vs_truth"]
            st.caption(f"Against the dataset's labels ({vt['n']} reviewed cells that have one): model "
                       f"{vt['model_accuracy']:.1%}, reviewer {vt['reviewer_accuracy']:.1%}.")
    with t2:
        counts, rows, columns = rv.reviewed_confusion(summary["confusion"])
        st.plotly_chart(confusion_heatmap(counts, rows, columns, colour_by="count", title="Model vs reviewer",
                                          axes=("model's call", "reviewer's call")), key="review_confusion")

others = store.same_set(sid)
if others:
    other = st.selectbox("Compare with another review of the same cells", others, format_func=session_label,
                         key="review_kappa_pick")
    k = store.kappa(sid, other["id"])
    kappa_text = "undefined" if k["kappa"] is None else f"{k['kappa']:.3f}"
    agree_text = "" if k["observed_agreement"] is None else f", observed agreement {k['observed_agreement']:.1%}"
    st.markdown(f"Cohen's kappa with {other['reviewer']} (session #{other['id']}): **{kappa_text}** over "
                f"{k['n']} cells both reviewed{agree_text}.")
else:
    st.caption("Cohen's kappa: when another reviewer starts a session with the same run, cells, order and number "
               "of cells, the two can be compared here.")
st.download_button("Download the review (CSV)", store.export_csv(sid), file_name=f"review-{sid}.csv",
                   mime="text/csv", icon=":material/download:", key="review_csv")
