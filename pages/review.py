"""Review: a pathologist goes through a model's calls one cell at a time, as with a digital morphology
analyser's pre-classification: agree, reclassify, unsure or not a cell, with a note.

A thin view over core.validation.review (SQLite sessions that survive restarts and resume where they stopped).
Like a review station's screen, each cell shows its largest image here (an upload as stored; a dataset cell from
the largest BloodMNIST size on this machine) with a zoom and an "Enlarge" dialog, the model's three most likely
classes, and a running tally per class. Nothing blocks the page: a session's cells are predicted, and the model
for the Grad-CAM evidence is loaded (core.inference.precompute, the process-wide model cache), in background
tasks (core.tasks) whose progress is drawn by ui.progress while the rest of the page stays usable.

Keyboard: in the decision form, Enter in the note field submits "Agree" (the form's first button); the
buttons also have shortcuts, shown on them: A agree, U unsure, X not a cell, 1-8 reclassify as that class,
B back, N next, Z undo the last decision. Shortcuts are ignored while typing in a text field.

The reviewer is the logged-in user (ui.session), never a typed name: a user sees and continues their own
sessions (an admin: everyone's). A decision the database could not save (busy) stays in the page with a
"Save it again" button; a damaged database is one message, with a button for an admin to move it aside.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import streamlit as st

from core.errors import UserFacingError
from core.store.runs import RunStore, open_run
from ui.guard import guard, show_error
from ui.links import page_link
from ui.session import page_user
from ui.text import md_escape

# -- settings -------------------------------------------------------------------------------------------
DISPLAY_PX = 320  # the cell image is scaled to this many pixels a side
ENLARGED_PX = 720  # in the "Enlarge" dialog
ZOOMS = (1, 2, 3, 4)  # the zoom crops the image's centre to 1/zoom of its side and scales it back up
DEFAULT_CELLS = 50

user = page_user("review")  # opened by URL without the role: one message, and the page stops
st.title("Review", anchor=False)
st.caption("Go through a model's calls one cell at a time, with its confidence and Grad-CAM evidence, and agree, "
           "reclassify, mark unsure or 'not a cell'. Sessions are saved as you go and can be resumed later; two "
           "reviewers of the same cells can be compared (Cohen's kappa).")
runs = []
with guard(stop=False):
    runs = RunStore().list_runs("val_accuracy DESC")
if not runs:  # the empty state first, before the review modules (scikit-learn, plotly) are imported
    st.info("No trained runs yet: a review goes through a trained model's calls. Train one first:",
            icon=":material/model_training:")
    page_link("train", "Train a model", ":material/model_training:")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core import tasks  # noqa: E402
from core.access.paths import data_roots  # noqa: E402
from core.data.cell_framing import run_fraction  # noqa: E402
from core.data.images import RESIZE_MODES  # noqa: E402
from core.data.uploads import UPLOAD_TYPES  # noqa: E402
from core.inference import precompute  # noqa: E402
from core.validation import review as rv  # noqa: E402
from ui.figures import confusion_heatmap  # noqa: E402
from ui.images import enlarge  # noqa: E402
from ui.progress import await_task, task_result  # noqa: E402
from ui.runs import run_label  # noqa: E402
from ui.text import RESIZE_HELP, RESIZE_TITLES  # noqa: E402


@st.cache_data(max_entries=64, show_spinner=False)
def original_view(image_ref: str) -> tuple[np.ndarray, str]:
    """The cell as the reviewer sees it: its largest image here (rv.original_cell), and where it comes from."""
    original = rv.original_cell(image_ref)
    return original.image, original.note


@st.cache_data(max_entries=64, show_spinner=False)
def cam_view(run_path: str, image_ref: str, resize: str) -> np.ndarray:
    """What the model sees, scaled up, with the Grad-CAM of its call over it (the model must be loaded)."""
    from core.explain.overlay import overlay  # noqa: PLC0415

    clf = precompute.classifier(run_path)
    _, model_input = rv.cell_pixels(image_ref, clf.image_size, resize, run_fraction(run_path, resize))
    expl = clf.explain(model_input[None], "gradcam")
    big = enlarge(model_input, DISPLAY_PX)
    return overlay(big, expl.heatmaps[0])


def zoomed(image: np.ndarray, zoom: int) -> np.ndarray:
    """The centre 1/zoom of the image (a reviewer zooms in on the cell, which sits in the middle)."""
    if zoom <= 1:
        return image
    h, w = image.shape[:2]
    ch, cw = max(1, round(h / zoom)), max(1, round(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top:top + ch, left:left + cw]


@st.dialog("The cell, enlarged", width="large")
def enlarged(image: np.ndarray, note: str) -> None:
    zoom = st.select_slider("Zoom", ZOOMS, value=1, format_func=lambda z: f"{z}×", key="review_dialog_zoom")
    st.image(enlarge(zoomed(image, zoom), ENLARGED_PX), caption=md_escape(note), width="stretch")


def waiting_for(run_path: str, resize: str) -> tasks.Task | None:
    """The background task the Grad-CAM waits for (the model, or the run's cell framing), None when ready. A
    task that failed is returned as it is, not started again at every rerun (the page offers a retry)."""
    resolved = Path(run_path).resolve()
    if resize == "cell" and not precompute.ready(run_path, "cell_framing"):
        failed = tasks.get(f"cell_framing:{resolved}")
        return failed if failed is not None and failed.failed else precompute.step_task(run_path, "cell_framing")
    if precompute.loaded(run_path) is None:
        failed = tasks.get(f"model:{resolved}")
        return failed if failed is not None and failed.failed else precompute.model_task(run_path)
    return None


def unidentified_note(run_path: str) -> str:
    """What the 'unidentified' order takes from this run."""
    from core.evaluation.calibration import stored  # noqa: PLC0415

    found = stored(run_path)
    if found is None:
        return ("Every cell below the run's threshold; the run is calibrated first (its model predicts its "
                "validation and test splits once).")
    u = found.unidentified
    share = f" ({u.test_review_fraction:.1%} of its test cells)" if u.test_review_fraction is not None else ""
    return (f"Every cell whose calibrated confidence is below the run's threshold {u.threshold:.3f} (target "
            f"{u.target:.0%} accuracy on validation){share}, however many.")


def agreement_sentence(summary: dict) -> str:
    """'Agreement 12 of 14 cells given a class (85.7%); 3 unsure or not a cell are left out of it.'"""
    left_out = summary["decisions"]["unsure"] + summary["decisions"]["not_cell"]
    if summary["agreement_overall"] is None:
        text = "Agreement: none yet (it counts the cells you agree with or reclassify)"
    else:
        agreed = summary["decisions"]["agree"]
        text = (f"Agreement {agreed} of {summary['agreement_n']} cells given a class "
                f"({summary['agreement_overall']:.1%})")
    return text + (f"; {left_out} unsure or not a cell left out of it." if left_out else ".")


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


# -- building a session: in the background (core.tasks), the page stays usable ----------------------------
def cells_task(request: dict) -> tasks.Task:
    """External or uploaded cells, predicted by the run's model in a background task (one per Start click)."""
    run_path, kind = request["run_path"], request["kind"]

    def work(tracker) -> list[rv.CellSpec]:
        if precompute.loaded(run_path) is None:
            tracker.start("loading", "the run's model")
        clf = precompute.classifier(run_path)
        tracker.start("predicting", "the cells, then ordering them")
        if kind == "external":
            return rv.cells_from_external(clf, request["folder"], resize=request["resize"], limit=request["limit"],
                                          order=request["order"], roots=data_roots())
        cells = rv.cells_from_files(clf, request["paths"], request["resize"], request["order"])
        return cells[:request["limit"] or None]  # 0: all (the 'unidentified' order)

    plan = [("predicting", precompute.DEFAULT_SECONDS["predicting"])]
    if precompute.loaded(run_path) is None:
        plan.insert(0, ("loading", precompute.expected_seconds(run_path, "loading")))
    return tasks.start(f"review-cells:{request['nonce']}", "Predicting the cells", plan, work)


def build_session(request: dict) -> None:
    """Draw the progress of the session being built; create and open it once its cells are ready."""
    unidentified = request["order"] == "unidentified"
    if unidentified and not precompute.ready(request["run_path"], "calibration"):
        task = precompute.step_task(request["run_path"], "calibration")  # the run's threshold (and predictions)
        if task.running:
            await_task(task, "Calibrating the run's confidence once, to find the cells its threshold leaves "
                             "unidentified…")
            return
    if request["kind"] == "test":
        task = None if precompute.ready(request["run_path"], "test_predictions") else \
            precompute.step_task(request["run_path"], "test_predictions")
    else:
        task = cells_task(request)
    if task is not None and task.running:
        await_task(task, "Preparing the session: the model predicts the cells once, then they are ordered. The "
                         "rest of the page stays usable meanwhile.")
        return
    st.session_state.pop("review_request", None)
    try:
        result = task_result(task)
        if request["kind"] == "test":
            from core.evaluation import predictions  # noqa: PLC0415

            stored = predictions.cached(request["run_path"])  # calibrated, as every page shows them
            if stored is None:
                raise rv.ReviewError("The run's test predictions could not be read; start the session again")
            threshold = rv.unidentified_threshold(request["run_path"]) if unidentified else None
            cells = rv.cells_from_predictions(open_run(request["run_path"]).training_data(), request["labels"],
                                              stored.y_true, stored.probabilities, request["limit"],
                                              request["order"], threshold)
            source = "test split"
        else:
            cells = result
            source = request["source"]
        sid = store.create_session(user, request["run_id"], request["run_path"], request["kind"], source,
                                   request["order"], cells, request["labels"], request["resize"])
    except UserFacingError as e:
        show_error(e)
        return
    finally:
        if task is not None and request["kind"] != "test":
            tasks.forget(task.key)
    open_session(sid)
    st.rerun()


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
    if runs:
        best_id = runs[0]["run_id"]
        c1, c2 = st.columns(2)
        run = c1.selectbox("Run whose calls are reviewed", runs, key="review_run",
                           format_func=lambda r: run_label(r, best_id))
        kind = c2.radio("Cells", rv.SOURCES, format_func=rv.SOURCE_TITLES.get, key="review_source", horizontal=True)
        c1, c2, c3 = st.columns(3)
        order = c1.radio("Order", rv.ORDERS, format_func=rv.ORDER_TITLES.get, key="review_order")
        limit = c2.number_input("Cells in the session", 1, 5000, DEFAULT_CELLS, key="review_limit",
                                help="The first cells in the chosen order.", disabled=order == "unidentified")
        if order == "unidentified":
            c2.caption(unidentified_note(run["path"]))
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
        building = st.session_state.get("review_request")
        if st.button("Start session", type="primary", icon=":material/play_arrow:", key="review_start",
                     disabled=building is not None):
            try:
                request = {"nonce": secrets.token_hex(8), "run_id": run["run_id"], "run_path": run["path"],
                           "kind": kind, "order": order, "limit": 0 if order == "unidentified" else int(limit),
                           "resize": resize,
                           "labels": list(open_run(run["path"]).metrics["test"]["labels"])}
                if kind == "external":
                    if not folder.strip():
                        raise rv.ReviewError("Enter the external dataset's folder")
                    request.update(folder=folder.strip(), source=folder.strip())
                elif kind == "uploads":
                    if not files:
                        raise rv.ReviewError("Upload at least one image")
                    paths, problems = rv.save_uploads((f.name, f.getvalue()) for f in files)
                    for p in problems:
                        st.warning(p)
                    if not paths:
                        raise rv.ReviewError("None of the uploaded files could be read as an image")
                    request.update(paths=paths, source=f"{len(paths)} uploaded images")
                st.session_state.review_request = building = request
            except UserFacingError as e:
                show_error(e)
        if building is not None:
            build_session(building)

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
summary = store.summary(sid)
st.divider()
st.subheader(f"Session #{sid} · cell {pos + 1} of {n}", anchor=False)
st.progress(done / total, text=f"{done} of {total} reviewed · "
                              f"{rv.ORDER_TITLES[session['order_mode']].lower()} · run {session['run_id']}")
cell = store.cell(sid, pos)

left, right = st.columns([6, 5], gap="large")
with left:
    a, b = st.columns(2)
    with a:
        try:
            original, where = original_view(cell["image"])
        except UserFacingError as e:
            st.error(f"This cell's image cannot be shown: {md_escape(e)}")
        else:
            zoom = st.session_state.get("review_zoom", 1)
            st.image(enlarge(zoomed(original, zoom), DISPLAY_PX), width="stretch",
                     caption=md_escape(f"The cell: {where}"))
            st.select_slider("Zoom", ZOOMS, value=1, format_func=lambda z: f"{z}×", key="review_zoom",
                             help="Zooms in on the centre of the image, where the cell is.")
            if st.button("Enlarge", icon=":material/zoom_in:", key="review_enlarge", width="stretch"):
                enlarged(original, where)
    with b:
        waiting = None
        try:  # the run may have been deleted since the session started: the review goes on without its CAM
            waiting = waiting_for(session["run_path"], session["resize"])
            if waiting is not None and not waiting.failed:
                await_task(waiting, "Loading the model for the Grad-CAM evidence (once per server); you can "
                                    "decide meanwhile.")
            else:
                task_result(waiting)  # a failed load: its message
                cam = cam_view(session["run_path"], cell["image"], session["resize"])
                st.image(cam, width="stretch", caption=f"Grad-CAM: evidence for {cell['model_label']}, on what "
                                                       f"the model sees ({session['resize']} resize)")
        except UserFacingError as e:
            st.error(f"The Grad-CAM of this cell cannot be shown: {md_escape(e)}")
            if waiting is not None and waiting.failed and st.button("Try again", key="review_cam_retry",
                                                                    icon=":material/refresh:"):
                tasks.forget(waiting.key)
                st.rerun()
with right:
    st.markdown(f"Model's call: **{md_escape(cell['model_label'])}**")
    st.progress(float(cell["confidence"]), text=f"confidence {cell['confidence']:.1%}")
    if cell["top"]:
        st.markdown("Most likely classes: " + " · ".join(
            f"{i + 1}. {md_escape(label)} **{p:.1%}**" for i, (label, p) in enumerate(cell["top"])))
    else:
        st.caption("This session was started before the model's next most likely classes were kept.")
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

    def undo() -> None:
        try:
            back_to = store.undo_last(sid, user=user)
        except UserFacingError as e:
            st.session_state.review_error = str(e)
            return
        if back_to is not None:
            st.session_state.review_pos = back_to
            st.session_state.pop("review_note_for", None)  # the cell's note field is emptied with its decision

    nav1, nav2, nav3 = st.columns(3)
    nav1.button("Back", shortcut="B", on_click=move, args=(-1,), disabled=pos == 0, icon=":material/arrow_back:",
                width="stretch", key="review_back")
    nav2.button("Next", shortcut="N", on_click=move, args=(1,), disabled=pos >= n - 1,
                icon=":material/arrow_forward:", width="stretch", key="review_next")
    nav3.button("Undo last", shortcut="Z", on_click=undo, disabled=done == 0, icon=":material/undo:",
                width="stretch", key="review_undo", help="Take back the latest decision and go back to its cell.")
    st.caption("Keys: A agree · U unsure · X not a cell · 1–8 reclassify · B back · N next · Z undo the last "
               "decision · Enter in the note = agree.")

    st.markdown("**Tally by the model's call**")
    tally = rv.reviewed_agreement(summary["agreement"])
    if tally:
        st.table(pd.DataFrame([{"Model's call": r["model_label"], "Reviewed": r["reviewed"], "Agreed": r["agree"],
                                "Reclassified": r["reclassify"], "Unsure / not a cell": r["unsure"] + r["not_cell"]}
                               for r in tally]), hide_index=True)
    else:
        st.caption("No decisions yet: each class's counts appear here as you decide.")
    st.caption(agreement_sentence(summary))

# -- summary ----------------------------------------------------------------------------------------------
st.divider()
st.subheader("Summary", anchor=False)
c = st.columns(4)
c[0].metric("Reviewed", f"{summary['reviewed']} of {summary['n_cells']}")
c[1].metric("Agreement with the model",
            "–" if summary["agreement_overall"] is None else f"{summary['agreement_overall']:.1%}",
            help="Agreed ÷ (agreed + reclassified): cells marked unsure or not a cell are left out, since they say "
                 "nothing about whether the model's call was right.")
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
        st.caption("Agreement per class: agreed ÷ (agreed + reclassified); unsure and not-a-cell decisions are "
                   "counted but left out of it.")
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
