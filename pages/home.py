"""Home: what CellScope is, which BloodMNIST files are here, and how the runs so far went.

A thin view over core.store.overview (file sizes and the SQLite run index); it never loads TensorFlow. Links to
other pages are st.page_link (ui.links), drawn only for pages the user may open.
"""

from __future__ import annotations

import streamlit as st

from core.data.registry import DATA_DIR_ENV, data_root
from core.models.architectures import display_name
from core.store.overview import (
    DatasetFile,
    RunsOverview,
    class_names,
    dataset_files,
    download_url,
    human_bytes,
    recent_table,
    runs_overview,
    weights_label,
)
from ui.guard import guard
from ui.links import page_link
from ui.session import page_user

page_user("home")  # opened by URL without the role: one message, and the page stops
st.title("CellScope", anchor=False)
classes = class_names()
listed = f" ({', '.join(classes)})" if classes else ""
st.markdown(
    "Train and compare neural networks that sort microscope images of single blood cells into the eight "
    f"**BloodMNIST** classes{listed}, see where each model goes "
    "wrong, and ask a trained model about your own images with a heat map of what it looked at. Built for "
    "students and teachers learning how such classifiers behave, and for pathologists who want to probe one: "
    "a teaching and research tool, not a diagnostic device."
)


def show_data(files: list[DatasetFile]) -> None:
    st.subheader("Data", anchor=False)
    root = data_root()
    for f in files:
        if f.present:
            st.markdown(f":green[:material/check_circle:] **{f.size} px** · `{f.file_name}` · "
                        f"{human_bytes(f.n_bytes)}")
        else:
            st.markdown(f":gray[:material/radio_button_unchecked:] **{f.size} px** · not downloaded")
    missing = [f for f in files if not f.present]
    st.caption(f"Data folder: `{root}` (set `{DATA_DIR_ENV}` to use another one).")
    if missing:
        st.markdown("Download a missing size (MD5-checked) with:")
        st.code("\n".join(f.download_command for f in missing), language="bash")
        with st.expander("No internet on this machine?", icon=":material/wifi_off:"):
            st.markdown("Download the file on another machine and copy it, under exactly this name, to:")
            for f in missing:
                url = download_url(f.size)
                source = f" from {url}" if url else ""
                st.markdown(f"- **{f.size} px**{source} → `{f.path}`")


def show_best(best: dict) -> None:
    with st.container(border=True):
        st.markdown(f"**Best run** · {display_name(best['arch'])} · {best['size']} px · "
                    f"{weights_label(best['weights'])} · batch {best['batch_size']}")
        val, test, auc, epoch = st.columns(4)
        val.metric("Val accuracy", f"{best['val_accuracy']:.1%}",
                   help="Accuracy on the validation split. The best run is chosen on it, never on test.")
        test.metric("Test accuracy", f"{best['test_accuracy']:.1%}",
                    help="Measured once, on held-out images, after the run's best epoch was chosen.")
        auc.metric("Test AUC", "—" if best["test_auc"] is None else f"{best['test_auc']:.3f}",
                   help="Macro one-vs-rest ROC AUC over the classes.")
        epoch.metric("Best epoch", f"{best['best_epoch']} of {best['epochs_run']}")
        st.caption(f"Run `{best['run_id']}`")
        links = st.columns(3)
        with links[0]:
            page_link("results", "Its results", ":material/table_chart:", {"run": best["run_id"]})
        with links[1]:
            page_link("confusion", "Its confusions", ":material/grid_on:", {"run": best["run_id"]})
        with links[2]:
            page_link("classify", "Classify a cell", ":material/biotech:")


def show_runs(files: list[DatasetFile]) -> RunsOverview:
    st.subheader("Runs", anchor=False)
    overview = runs_overview()
    if overview.best is None:
        present = [f for f in files if f.present]
        first = present[0] if present else next((f for f in files if f.size == 28), None)
        data = str(first.path) if first else "PATH/TO/bloodmnist.npz"
        steps = [] if present or first is None else [first.download_command]
        steps.append(f"python -m core train --data {data} --arch resnet18 --epochs 1 --limit-train 512")
        st.info("No runs yet. First step: train a small model (one epoch on a few hundred images takes a minute "
                "or two); every other page works from a trained run.", icon=":material/model_training:")
        page_link("train", "Train a first model", ":material/model_training:")
        st.caption("Or from a terminal in the project folder:")
        st.code("\n".join(steps), language="bash", wrap_lines=True)
        st.caption("Any MedMNIST-layout npz works with --data. Runs are saved in "
                   f"`{overview.runs_dir}`")
        return overview
    st.markdown(f"**{overview.count}** run{'s' if overview.count != 1 else ''} in `{overview.runs_dir}`")
    show_best(overview.best)
    return overview


def show_recent(overview: RunsOverview) -> None:
    st.subheader("Recent runs", anchor=False)
    st.dataframe(
        recent_table(overview.recent), hide_index=True,
        column_config={
            "Val accuracy": st.column_config.NumberColumn(format="%.3f"),
            "Test accuracy": st.column_config.NumberColumn(format="%.3f"),
            "Test AUC": st.column_config.NumberColumn(format="%.3f"),
        },
    )


files: list[DatasetFile] = []
overview: RunsOverview | None = None
data_col, runs_col = st.columns([2, 3], gap="large")
with data_col, guard(stop=False):
    files = dataset_files()
    show_data(files)
with runs_col, guard(stop=False):
    overview = show_runs(files)
if overview is not None and overview.recent:
    show_recent(overview)
