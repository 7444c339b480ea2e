"""External validation: a trained run applied, unchanged, to another lab's cells.

A thin view over core.validation.external (layout scan, class mapping, loading, the one evaluation flow,
Tables 14/15, storage, fine-tuning with its settings) and core.validation.stain (colour normalisation to the
run's training set). Typed paths are confined to the server's data roots (core.access.paths, through the
scan's `roots`); a dataset can also be uploaded as a zip, unpacked by core.data.uploads.extract_dataset.
TensorFlow is imported, through core.inference.precompute (the process-wide model cache), only when an
evaluation is run or a stored one is explained. An evaluation runs in a background task (core.tasks, one per
Evaluate click: it stores exactly one evaluation) whose progress ui.progress draws while the page stays usable.
The result shown is always labelled with the settings it was computed with; when a setting has changed since,
it is marked as not current, with a button to evaluate again.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import streamlit as st

from core.store.runs import RunStore
from ui.guard import guard
from ui.links import page_link
from ui.session import page_user

# -- settings -------------------------------------------------------------------------------------------
LEAVE_OUT = "(leave out)"
LAYOUTS = {"folder": "Folder per class", "csv": "CSV of path,label", "zip": "Upload a zip (folder per class)"}
SAMPLE_CELLS = 8  # cells shown in the normalisation comparison
CAM_CELLS = 4  # correct and wrong cells each in the Grad-CAM section
THUMB_PX = 128
NORMALIZE_HELP = {"none": "the images as they are.",
                  "reinhard": "each image's L\\*a\\*b\\* mean and spread are moved to the training images'.",
                  "macenko": "the stain colours are estimated from the whole set and re-rendered with the "
                             "training images' stain colours."}

page_user("external")  # opened by URL without the role: one message, and the page stops
st.title("External validation", anchor=False)
st.caption("Apply a trained BloodMNIST run, unchanged, to cells from another lab (a folder per class, as in "
           "Raabin-WBC, or a CSV of path,label). Scores follow the study's Tables 14/15, with the argmax over "
           "all 8 classes and over the classes the dataset shares with BloodMNIST. Each evaluation is stored "
           "with its run.")


def runs_or_stop() -> list[dict]:
    with guard():
        runs = RunStore().list_runs("val_accuracy DESC")
    if not runs:
        st.info("No trained runs yet. External validation applies a trained run to another lab's cells: train one "
                "first (or with `python -m core train`).", icon=":material/model_training:")
        page_link("train", "Train a model", ":material/model_training:")
        st.stop()
    return runs


runs = runs_or_stop()  # the empty state first, before the modules below (plotly, scikit-learn) are imported

import hashlib  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core import tasks  # noqa: E402
from core.access.paths import data_roots  # noqa: E402
from core.data.images import RESIZE_MODES  # noqa: E402
from core.data.uploads import MAX_FILE_BYTES, MAX_ZIP_MEMBERS, MAX_ZIP_PIXELS, extract_dataset  # noqa: E402
from core.errors import UserFacingError  # noqa: E402
from core.inference import precompute  # noqa: E402
from core.store.runs import open_run  # noqa: E402
from core.validation import stain  # noqa: E402
from core.validation.external import finetune, flow, loading, mapping, report, scan, scoring, storage  # noqa: E402
from ui.figures import confusion_heatmap  # noqa: E402
from ui.guard import show_error  # noqa: E402
from ui.images import enlarge  # noqa: E402
from ui.model import model_when_ready  # noqa: E402
from ui.progress import await_task, task_result  # noqa: E402
from ui.runs import run_label  # noqa: E402
from ui.text import RESIZE_HELP, RESIZE_TITLES, md_escape, plural  # noqa: E402


@st.cache_data(max_entries=4, show_spinner=False)
def load_data(location: str, kind: str, csv_base: str, class_map: tuple, size: int, resize: str,
              labels: tuple, signature: tuple, cell_fraction: float | None,
              roots: tuple[str, ...]) -> loading.ExternalImages:
    return read_data(location, kind, csv_base, class_map, size, resize, labels, cell_fraction, roots)


def read_data(location: str, kind: str, csv_base: str, class_map: tuple, size: int, resize: str, labels: tuple,
              cell_fraction: float | None, roots: tuple[str, ...]) -> loading.ExternalImages:
    source = (scan.scan(csv_base or None, location, roots=roots) if kind == "csv"
              else scan.scan(location, roots=roots))
    return loading.load_images(source, size, dict(class_map), resize, list(labels), cell_fraction=cell_fraction,
                               roots=roots)


def table14_frame(metrics: dict) -> pd.DataFrame:
    df = pd.DataFrame(scoring.table14(metrics))
    df["class"] = df["class"].str.capitalize()
    return df


def table14_view(metrics: dict, key: str) -> None:
    df = table14_frame(metrics).rename(columns={
        "class": "Class", "precision": "Precision", "recall": "Recall", "f1": "F1-score", "support": "Support",
        "accuracy": "Accuracy (Table 15)"})
    st.dataframe(df, hide_index=True, key=key, column_config={
        "Precision": st.column_config.NumberColumn(format="%.2f"),
        "Recall": st.column_config.NumberColumn(format="%.2f"),
        "F1-score": st.column_config.NumberColumn(format="%.2f"),
        "Accuracy (Table 15)": st.column_config.NumberColumn(format="%.4f")})
    caption = ("Table 14 (precision, recall, F1, support) and Table 15 (per-class accuracy = recall) of the study, "
               "for the classes the dataset has. Overall: macro averages of precision, recall and F1, and the "
               "accuracy over all images.")
    if metrics.get("predicted_outside_total"):
        outside = ", ".join(f"{k} {v}" for k, v in metrics["predicted_outside"].items())
        caption += f" Called a class the dataset does not have: {outside}."
    st.caption(caption)


def own_accuracy(run_path: str) -> float | None:
    """The run's accuracy on its own test split (None when its metrics cannot be read)."""
    try:
        return float(open_run(run_path).metrics["test"]["accuracy"])
    except (UserFacingError, KeyError, TypeError, ValueError):
        return None


def show_metrics(record: dict, key: str, own: float | None) -> None:
    m_all, m_shared = record["metrics"]["all"], record["metrics"]["shared"]
    c = st.columns(5)
    c[0].metric("Images scored", record["n_images"])
    c[1].metric("Accuracy, all 8 classes", f"{m_all['accuracy']:.3f}",
                help=f"95% CI {m_all['accuracy_ci95'][0]:.3f}–{m_all['accuracy_ci95'][1]:.3f}")
    c[2].metric("Accuracy, shared classes", f"{m_shared['accuracy']:.3f}",
                help=f"95% CI {m_shared['accuracy_ci95'][0]:.3f}–{m_shared['accuracy_ci95'][1]:.3f}")
    c[3].metric("Balanced accuracy (all 8)", f"{m_all['balanced_accuracy']:.3f}",
                help="Mean recall over the dataset's classes: not dominated by the largest class.")
    c[4].metric("Files left out", storage.excluded_total(record.get("excluded", {})))
    st.markdown(f"Accuracy over all 8 classes **{report.accuracy_text(m_all)}**; over the shared classes "
                f"**{report.accuracy_text(m_shared)}**.")
    st.info(report.cross_lab_sentence(record, own), icon=":material/science:")
    excluded = record.get("excluded", {})
    if excluded.get("no_cell"):
        st.warning(f"{plural(excluded['no_cell'], 'image')} skipped: cell-centred framing found no cell, so they "
                   "are left out, not framed by a guess.", icon=":material/crop_free:")
        with st.expander("Why files were left out"):
            st.code("\n".join(excluded.get("messages", [])), language=None)
    tab_all, tab_shared = st.tabs(["Argmax over all 8 classes", "Argmax over the shared classes only"])
    for tab, m, mode in ((tab_all, m_all, "all"), (tab_shared, m_shared, "shared")):
        with tab:
            left, right = st.columns([1, 1])
            with left:
                table14_view(m, f"{key}_t14_{mode}")
            with right:
                st.plotly_chart(confusion_heatmap(np.asarray(m["confusion"]), m["rows"], m["columns"]),
                                key=f"{key}_cf_{mode}")
                st.caption("Rows: the dataset's label; columns: the model's call. Each cell: count and share of "
                           "its row." + (" Columns include the classes the dataset does not have." if mode == "all"
                                         else ""))


def dataset_section(run_path: str, resize: str, normalize: str, compare: bool) -> dict | None:
    """Path -> scan -> mapping -> Evaluate. Returns the settings an evaluation would use now (None: no dataset
    that can be scored)."""
    st.subheader("1 · Dataset", anchor=False)
    kind_key = st.segmented_control("Layout", list(LAYOUTS), format_func=LAYOUTS.get, default="folder",
                                    required=True, key="ext_kind")
    csv_base = ""
    if kind_key == "folder":
        location = st.text_input("Dataset folder", key="ext_folder", placeholder="/data/raabin/TestA",
                                 help="One subfolder per class with the images inside (subfolders of a class "
                                      "folder count for that class), as in Raabin-WBC. It must be inside a "
                                      "folder this server may read.")
    elif kind_key == "csv":
        location = st.text_input("CSV file", key="ext_csv", placeholder="/data/labels.csv",
                                 help="Rows of path,label; a header row such as path,label is recognised. The "
                                      "file and every image it names must be inside a folder this server may "
                                      "read.")
        csv_base = st.text_input("Folder of relative paths (optional)", key="ext_csv_base",
                                 help="Relative paths in the CSV are read from here; default: the CSV's folder.")
    else:
        location = uploaded_zip_folder()
    roots = tuple(str(r) for r in data_roots())
    if not location.strip():
        if kind_key != "zip":
            st.info("Enter the path of a dataset on this machine to begin.", icon=":material/folder_open:")
            st.caption("Folders this server may read: " + ", ".join(f"`{r}`" for r in roots))
        return None
    kind_key = "csv" if kind_key == "csv" else "folder"
    try:
        source = (scan.scan(location.strip(), roots=roots) if kind_key == "folder"
                  else scan.scan(csv_base.strip() or None, location.strip(), roots=roots))
    except UserFacingError as e:
        show_error(e)
        return None

    classes, counts = source.classes, source.counts
    auto = mapping.auto_mapping(classes)
    st.markdown(f"**{len(source.files)} image files** in **{len(classes)} classes** at `{source.location}`. "
                "Check the mapping to BloodMNIST's classes; classes left out are not scored.")
    map_key = hashlib.sha1(("\0".join(classes) + source.location).encode()).hexdigest()[:10]
    options = mapping.short_label_list() + [LEAVE_OUT]
    chosen: dict[str, str | None] = {}
    grid = st.columns(4)
    for i, name in enumerate(classes):
        default = auto.get(name) or LEAVE_OUT
        with grid[i % 4]:
            choice = st.selectbox(f"{name} ({counts[name]} images)", options, index=options.index(default),
                                  key=f"ext_map_{map_key}_{i}",
                                  help="Mapped automatically: the name matches" if auto.get(name)
                                  else "No BloodMNIST class matches this name: left out unless you pick one")
        chosen[name] = None if choice == LEAVE_OUT else choice

    problems = source.problems()
    notes = []
    left_out = [k for k, v in chosen.items() if v is None]
    if left_out:
        notes.append("Left out (unmapped): " + ", ".join(f"{k} ({counts[k]} images)" for k in left_out))
    if problems["empty_classes"]:
        notes.append("Empty class folders: " + ", ".join(problems["empty_classes"]))
    for field, text in (("not_images", "files that are not images"),
                        ("loose_files", "images outside any class folder"), ("bad_rows", "malformed CSV rows"),
                        ("missing_files", "CSV rows naming missing files"),
                        ("outside", "files or rows leading outside the folders this server may read")):
        if problems[field]:
            notes.append(f"{problems[field]} {text}: skipped")
    if problems["nested_files"]:
        notes.append(f"{problems['nested_files']} images in nested subfolders: used with their class folder")
    if notes:
        st.warning("  \n".join(notes), icon=":material/info:")
    if source.messages:
        with st.expander(f"Details ({len(source.messages)})"):
            st.code("\n".join(source.messages), language=None)
    if not any(chosen.values()):
        st.error("No class is mapped to a BloodMNIST class: there is nothing to score.")
        return None

    settings = {"run_path": run_path, "location": source.location, "kind": kind_key, "csv_base": csv_base.strip(),
                "mapping": tuple(sorted(chosen.items())), "resize": resize, "normalize": normalize,
                "compare": bool(compare), "signature": source.signature()}
    building = st.session_state.get("ext_request")
    if st.button("Evaluate", type="primary", icon=":material/play_arrow:", key="ext_go", disabled=building is not None):
        request_evaluation(settings)
    return settings


def settings_text(settings: dict) -> str:
    """The settings an evaluation was computed with, in words."""
    mapped = sum(1 for _, v in settings["mapping"] if v)
    return (f"{Path(settings['location']).name} · {mapped} classes mapped · "
            f"{stain.METHOD_TITLES[settings['normalize']]} normalisation"
            + (" (compared with none)" if settings["compare"] else "")
            + f" · {RESIZE_TITLES.get(settings['resize'], settings['resize'])} resize · run "
              f"{Path(settings['run_path']).name}")


def request_evaluation(settings: dict) -> None:
    """One click, one evaluation: the request gets its own key, so reruns join the same background task."""
    st.session_state.ext_request = {"nonce": secrets.token_hex(8), "settings": settings}
    st.rerun()


def evaluation_task(request: dict) -> tasks.Task:
    """Load the model, measure the run's training images when a setting needs it, read and score the images:
    in the background, as phases with the times they took last time."""
    settings = request["settings"]
    run_path, resize, normalize = settings["run_path"], settings["resize"], settings["normalize"]
    roots = tuple(str(r) for r in data_roots())

    def work(tracker):
        if precompute.loaded(run_path) is None:
            tracker.start("loading", "the run's model")
        clf = precompute.classifier(run_path)
        if measuring:
            tracker.start("measuring", "the run's training images (once per run)")
        fraction = precompute.run_step(run_path, "cell_framing").fraction if resize == "cell" else None
        target = precompute.run_step(run_path, "stain_target") if normalize != "none" else None
        tracker.start("predicting", "reading and scoring the images")
        data = read_data(settings["location"], settings["kind"], settings["csv_base"], settings["mapping"],
                         clf.image_size, resize, tuple(clf.labels), fraction, roots)
        records = flow.run_external(clf, data, normalize, compare=("none",) if settings["compare"] else (),
                                    run_dir=run_path, target=target)
        return records[-1]["id"], data

    measuring = ((resize == "cell" and not precompute.ready(run_path, "cell_framing"))
                 or (normalize != "none" and not precompute.ready(run_path, "stain_target")))
    plan = []
    if precompute.loaded(run_path) is None:
        plan.append(("loading", precompute.expected_seconds(run_path, "loading")))
    if measuring:
        plan.append(("measuring", precompute.DEFAULT_SECONDS["measuring"]))
    plan.append(("predicting", precompute.DEFAULT_SECONDS["predicting"]))
    return tasks.start(f"ext-eval:{request['nonce']}", "Evaluating", plan, work)


def evaluation_progress() -> None:
    """While an evaluation runs: its progress; once it ends, it becomes the current result."""
    request = st.session_state.get("ext_request")
    if request is None:
        return
    task = evaluation_task(request)
    if task.running:
        await_task(task, "Evaluating: the run's model reads and scores the images; the page stays usable.")
        return
    st.session_state.pop("ext_request", None)
    try:
        eval_id, data = task_result(task)
    except UserFacingError as e:
        show_error(e)
        return
    finally:
        tasks.forget(task.key)
    st.session_state.ext_current = {"run_path": request["settings"]["run_path"], "id": eval_id,
                                    "settings": request["settings"]}
    st.session_state.ext_data = (eval_id, data)


def uploaded_zip_folder() -> str:
    """The zip uploader: a new zip is unpacked (safely, within its budgets) into a folder of its own under the
    artifacts folder, which is then scanned like a typed folder. Returns that folder, or "" for none."""
    upload = st.file_uploader("Dataset zip", type=["zip"], key="ext_zip",
                              help=f"A zip with one folder per class, images inside; up to "
                                   f"{MAX_FILE_BYTES // 2**20} MB, {MAX_ZIP_MEMBERS:,} files and "
                                   f"{MAX_ZIP_PIXELS:,} pixels in all. It is unpacked on the server and "
                                   "removed after a day.")
    if upload is None:
        st.info("Upload a zip with one folder per class to begin.", icon=":material/folder_zip:")
        return ""
    done = st.session_state.get("ext_zip_done")
    if not done or done[0] != upload.file_id:
        try:
            with st.spinner("Unpacking the zip…"):
                folder, problems = extract_dataset(upload.name, upload.getvalue())
        except UserFacingError as e:
            show_error(e)
            return ""
        done = (upload.file_id, str(folder), problems)
        st.session_state.ext_zip_done = done
    if done[2]:
        with st.expander(f"Files in the zip that were not unpacked ({len(done[2])})"):
            st.code("\n".join(done[2][:scan.MAX_MESSAGES]), language=None)
    return done[1]


def results_section(run_path: str, settings: dict | None) -> None:
    current = st.session_state.get("ext_current")
    if not current or current["run_path"] != run_path:
        return
    try:
        main = storage.load_evaluation(run_path, current["id"])
    except UserFacingError as e:
        show_error(e)
        return
    records = report.compared_records(main)
    computed_with = current["settings"]
    st.subheader("2 · Zero-shot result", anchor=False)
    if settings != computed_with:  # a setting changed since: this result is not the current settings' result
        with st.container(border=True):
            st.warning(f"**Not the current settings' result.** The last evaluation ({main['id']}, accuracy "
                       f"{main['metrics']['all']['accuracy']:.3f} over all 8 classes) was computed with: "
                       f"{md_escape(settings_text(computed_with))}."
                       + (f"  \nThe settings are now: {md_escape(settings_text(settings))}." if settings else "")
                       + "  \nIt stays under Stored evaluations below.", icon=":material/history:")
            if settings is not None and st.button("Evaluate again with the current settings", icon=":material/refresh:",
                                                  key="ext_again",
                                                  disabled=st.session_state.get("ext_request") is not None):
                request_evaluation(settings)
        return
    st.caption(f"Evaluation {main['id']} · computed with: {md_escape(settings_text(computed_with))} · "
               f"stored in {Path(run_path).name}/external/")
    show_metrics(main, "ext_main", own_accuracy(run_path))
    clf = model_when_ready(run_path)  # after a restart: loads in the background, its bar here
    if clf is None:
        return
    held = st.session_state.get("ext_data")
    if held and held[0] == main["id"]:
        data = held[1]
    else:
        fraction = (precompute.run_step(run_path, "cell_framing").fraction if computed_with["resize"] == "cell"
                    else None)
        data = load_data(computed_with["location"], computed_with["kind"], computed_with["csv_base"],
                         computed_with["mapping"], clf.image_size, computed_with["resize"], tuple(clf.labels),
                         computed_with["signature"], fraction, tuple(str(r) for r in data_roots()))

    # -- normalisation, side by side
    st.subheader("3 · Colour normalisation", anchor=False)
    if len(records) > 1:
        st.markdown("**Metrics with and without normalisation** (same images, same model)")
        st.dataframe(report.comparison_table(records).rename(columns=stain.METHOD_TITLES).style.format("{:.3f}"),
                     key="ext_compare_table")
    target = None
    if precompute.ready(run_path, "stain_target"):
        try:
            target = precompute.run_step(run_path, "stain_target")
        except UserFacingError as e:
            st.warning(f"Normalisation needs the run's training images: {e}")
    else:
        measure = tasks.get(f"stain_target:{Path(run_path).resolve()}")  # a failure is shown, not retried in a loop
        if measure is None or not measure.failed:
            measure = precompute.step_task(run_path, "stain_target")
        if measure.failed:
            st.warning(f"Normalisation needs the run's training images: {measure.error}")
        else:
            await_task(measure, "Measuring the colours of the run's training images (once per run), to show these "
                                "cells normalised.")
    pick = report.sample_indices(len(data), SAMPLE_CELLS)
    shown = {"none": data.images}
    if target is not None:
        for m in ("reinhard", "macenko"):
            try:
                shown[m] = stain.normalize(data.images, m, target)[0]
            except UserFacingError as e:
                st.caption(f"{stain.METHOD_TITLES[m]}: {e}")
    st.caption("The same cells as the model sees them, in each colour normalisation (labels: the dataset's class).")
    for m, images in shown.items():
        st.markdown(f"**{stain.METHOD_TITLES[m]}**" + ("  · as scored" if m == main["normalize"] else ""))
        st.image([enlarge(images[i], 96) for i in pick], width=96, caption=[data.source_classes[i] for i in pick])

    # -- Grad-CAM of correct and wrong cells
    st.subheader("4 · Grad-CAM of correct and wrong cells", anchor=False)
    from core.explain.overlay import triptych  # noqa: PLC0415 - OpenCV only when a heatmap is drawn

    scored = shown.get(main["normalize"], data.images)
    groups = report.correct_and_wrong(main, len(data), CAM_CELLS)
    if groups is None:
        st.caption("The images have changed since this evaluation; evaluate again to see Grad-CAM.")
    else:
        preds = main["predictions"]
        for title, group in (("Correct", groups["correct"]), ("Wrong", groups["wrong"])):
            idx = group.indices
            st.markdown(f"**{title}** ({group.count} of {group.total})")
            if not len(idx):
                st.caption("None.")
                continue
            with st.spinner("Grad-CAM…"):
                expl = clf.explain(scored[idx], "gradcam")
            grid = st.columns(CAM_CELLS)
            for j, i in enumerate(idx):
                strip = triptych(scored[i], expl.heatmaps[j], display=THUMB_PX)
                grid[j % CAM_CELLS].image(strip, width="stretch", caption=f"{preds[i]['true']} → {preds[i]['pred']} "
                                                                          f"({preds[i]['confidence']:.2f})")
        st.caption("Each strip: the cell as scored, Grad-CAM for the model's call, and the two overlaid; captions: "
                   "the dataset's class → the model's call (confidence). Red: evidence for that class.")

    # -- fine-tuning
    st.subheader("5 · Fine-tune on part of the data (optional)", anchor=False)
    st.caption("The study's approach: fine-tune the model on a stratified part of the external data and score the "
               "held-out rest. Reported apart from the zero-shot result; the run's model file is never changed.")
    ft_default, ft_range = finetune.FineTuneConfig(), finetune.FineTuneConfig.RANGES
    with st.form("ext_ft_form", border=True):
        f1, f2, f3 = st.columns(3)
        fraction = f1.slider("Fine-tune share (per class)", *ft_range["fraction"], ft_default.fraction, 0.05)
        epochs = f2.number_input("Epochs", *map(int, ft_range["epochs"]), ft_default.epochs)
        lr = f3.select_slider("Learning rate", finetune.FineTuneConfig.LR_CHOICES, value=ft_default.lr,
                              format_func=lambda v: f"{v:g}")
        go_ft = st.form_submit_button("Fine-tune and score the held-out part", icon=":material/tune:")
    if go_ft:
        try:
            config = finetune.FineTuneConfig(fraction=float(fraction), epochs=int(epochs), lr=float(lr))
            with st.spinner("Fine-tuning a copy of the model…"):
                finetune.fine_tune(clf, data, main["normalize"], config, run_dir=run_path, eval_id=main["id"],
                                   target=target if main["normalize"] != "none" else None)
            main = storage.load_evaluation(run_path, main["id"])
        except UserFacingError as e:
            show_error(e)
    ft = main.get("fine_tune")
    if ft:
        st.dataframe(report.fine_tune_table(ft).style.format("{:.3f}"), key="ext_ft_table")
        st.caption(f"Fine-tuned on {ft['n_fine_tune']} images, scored on {ft['n_held_out']} held-out images "
                   f"({ft['epochs']} epochs, lr {ft['lr']:g}, BatchNorm frozen, seed {ft['seed']}, "
                   f"{ft['seconds']:.0f} s).")


def stored_section(run_path: str) -> None:
    st.subheader("Stored evaluations of this run", anchor=False)
    earlier = storage.list_evaluations(run_path)
    if not earlier:
        st.caption("None yet.")
        return
    df = pd.DataFrame(earlier)
    df["fine_tuned_accuracy"] = [f"{v:.3f}" if isinstance(v, float) else "" for v in df["fine_tuned_accuracy"]]
    st.dataframe(df[["id", "dataset", "normalize", "resize", "n_images", "excluded", "accuracy_all",
                     "accuracy_shared", "fine_tuned_accuracy"]], hide_index=True, key="ext_earlier",
                 column_config={"accuracy_all": st.column_config.NumberColumn("acc (all 8)", format="%.3f"),
                                "accuracy_shared": st.column_config.NumberColumn("acc (shared)", format="%.3f"),
                                "fine_tuned_accuracy": "fine-tuned acc (held-out)",
                                "n_images": "images", "excluded": "left out"})
    by_id = {r["id"]: r for r in earlier}
    chosen = st.selectbox("Show a stored evaluation", list(by_id), index=None, key="ext_pick",
                          format_func=lambda i: f"{i} · {by_id[i]['dataset']} · {by_id[i]['normalize']} · "
                                                f"acc {by_id[i]['accuracy_all']:.3f}")
    if chosen:
        try:
            show_metrics(storage.load_evaluation(run_path, chosen), f"ext_old_{chosen}", own_accuracy(run_path))
        except UserFacingError as e:
            show_error(e)


# -- the page ---------------------------------------------------------------------------------------------
best_id = runs[0]["run_id"]
with st.sidebar:
    st.subheader("Model and settings", anchor=False)
    run = st.selectbox("Trained run", runs, format_func=lambda r: run_label(r, best_id), key="ext_run",
                       help="Default: the best by validation accuracy.")
    resize = st.radio("Resize", RESIZE_MODES, key="ext_resize", format_func=RESIZE_TITLES.get, help=RESIZE_HELP)
    normalize = st.radio("Colour normalisation", stain.METHODS, format_func=stain.METHOD_TITLES.get,
                         key="ext_normalize",
                         help="How the other lab's colours are made like the training images' before "
                              "scoring:\n\n" + "\n\n".join(f"**{stain.METHOD_TITLES[k]}**: {v}"
                                                          for k, v in NORMALIZE_HELP.items()))
    compare = normalize != "none" and st.toggle("Also evaluate without normalisation, to compare", value=True,
                                                key="ext_compare")

settings = dataset_section(run["path"], resize, normalize, compare)
evaluation_progress()
results_section(run["path"], settings)
stored_section(run["path"])
