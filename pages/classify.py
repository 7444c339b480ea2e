"""Classify: upload cell images (or pick from the test set), get the predicted type, and see the evidence.

A thin view over core.inference.classify (uploads -> model inputs -> predictions, flags and explanations) and
core.data.uploads (reading files and zips safely). TensorFlow is imported, through core.inference.classify, only once a
trained run exists; the model is loaded once per run and kept by ui.model, shared with the other pages.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core.data.images import RESIZE_MODES
from core.data.uploads import (
    MAX_FILE_BYTES,
    MAX_UPLOAD_PIXELS,
    MAX_UPLOAD_SECONDS,
    MAX_ZIP_PIXELS,
    MAX_ZIP_SECONDS,
    UPLOAD_TYPES,
    iter_uploads,
)
from core.errors import UserFacingError
from core.explain.cam import METHOD_NAMES, METHOD_TITLES
from core.explain.overlay import COLORMAPS, panels
from core.store.runs import RunStore
from ui.guard import guard
from ui.model import classifier
from ui.palette import ACCENT, MUTED
from ui.runs import run_label
from ui.session import page_user
from ui.text import RESIZE_HELP, RESIZE_TITLES, md_escape

# -- settings -------------------------------------------------------------------------------------------
GALLERY_PER_CLASS = 2
GALLERY_COLUMNS = 8

page_user("classify")  # opened by URL without the role: one message, and the page stops
st.title("Classify", anchor=False)
st.caption("Upload microscope images of single blood cells, or pick one from the test set, to see what a trained "
           "model calls them, how sure it is, and where in the image its evidence lies. A teaching and research "
           "tool, not a diagnostic device.")

# -- the run --------------------------------------------------------------------------------------------
with guard():
    store = RunStore()
    runs = store.list_runs("val_accuracy DESC")

if not runs:
    st.info("No trained runs yet, so there is no model to ask. Train one on the **Train** page, or from a "
            "terminal in the project folder:", icon=":material/model_training:")
    st.code("python -m core train --arch resnet18 --size 28 --epochs 1 --limit-train 512", language="bash")
    st.caption(f"Runs are looked for in `{store.runs_dir}`.")
    st.stop()

from core.inference import classify as svc  # noqa: E402  (imports TensorFlow: only now that a model is needed)
from core.models.build import coarse_map_note  # noqa: E402  (Keras, as above)


@st.cache_resource(max_entries=3, show_spinner="Measuring the training data once for this run…")
def get_ood(run_path: str):
    return svc.ood_stats(classifier(run_path))


@st.cache_data(max_entries=3, show_spinner="Measuring the cells of the run's training images once…")
def get_cell_fraction(run_path: str, mode: str) -> float | None:
    return svc.cell_fraction(classifier(run_path), mode)


@st.cache_data(max_entries=3, show_spinner=False)
def get_gallery(run_path: str):
    return svc.gallery(run_path, GALLERY_PER_CLASS)


with st.sidebar:
    st.subheader("Model", anchor=False)
    best_id = runs[0]["run_id"]
    run = st.selectbox("Trained run", runs, format_func=lambda r: run_label(r, best_id),
                       help="Default: the best by validation accuracy.")
    mode = st.radio("Resize", RESIZE_MODES, format_func=RESIZE_TITLES.get, help=RESIZE_HELP)
    st.subheader("Flags", anchor=False)
    threshold = st.slider("Unidentified below confidence", 0.0, 1.0, svc.DEFAULT_THRESHOLD, 0.05,
                          help="Predictions whose top-class probability is below this are flagged "
                               "'unidentified', as digital morphology analysers leave such cells to a person.")
    check_ood = st.toggle("Flag images unlike the training data", value=True,
                          help="Mahalanobis distance of the image's features to the nearest class centre, "
                               "flagged beyond the 95th percentile of validation images (computed once per run).")

try:
    clf = classifier(run["path"])
except (UserFacingError, OSError, ValueError) as e:  # OSError, ValueError: Keras on a damaged model file
    st.error(f"Could not load run {run['run_id']}: {md_escape(e)}")
    st.stop()
labels = clf.short_labels
ood = None
if check_ood:
    try:
        ood = get_ood(run["path"])
    except UserFacingError as e:
        st.sidebar.warning(f"'Unlike the training data' is unavailable: {e}")

# -- the images -----------------------------------------------------------------------------------------
source = st.segmented_control("Images", ["Upload", "Test-set gallery"], default="Upload", required=True)
results: list = []
if source == "Upload":
    files = st.file_uploader(
        "Cell images (PNG, JPEG, TIFF, BMP, GIF) or a zip of them", type=list(UPLOAD_TYPES),
        accept_multiple_files=True,
        help=f"Up to {MAX_FILE_BYTES // 2**20} MB a file, {MAX_UPLOAD_PIXELS // 10**6:,} million pixels and "
             f"{MAX_UPLOAD_SECONDS:g} s of decoding per upload ({MAX_ZIP_PIXELS // 10**6:,} million pixels and "
             f"{MAX_ZIP_SECONDS:g} s per zip). Zips are read in memory, never unpacked to disk.")
    if files:
        key = (tuple(f.file_id for f in files), mode, run["path"])
        if st.session_state.get("classify_prepared_key") != key:
            try:
                fraction = get_cell_fraction(run["path"], mode)
            except UserFacingError as e:
                st.error(f"{RESIZE_TITLES[mode]} framing is unavailable for this run: {md_escape(e)}")
                st.stop()
            with st.spinner("Reading the files…"):
                st.session_state.classify_prepared = svc.prepare(
                    iter_uploads((f.name, f.getvalue()) for f in files), clf.image_size, mode, fraction)
            st.session_state.classify_prepared_key = key
        results = svc.classify(clf, st.session_state.classify_prepared, threshold, ood)
else:
    try:
        gallery = get_gallery(run["path"])
    except UserFacingError as e:
        st.warning(f"No test-set gallery for this run: {e}")
        gallery = []
    if gallery:
        cols = st.columns(GALLERY_COLUMNS)
        for i, g in enumerate(gallery):
            cols[i % GALLERY_COLUMNS].image(g.image, caption=f"{i + 1}. {labels[g.true_index]}", width="stretch")
        pick = st.selectbox("Image to classify", range(len(gallery)),
                            format_func=lambda i: f"{i + 1}. {gallery[i].name} · true class: "
                                                  f"{labels[gallery[i].true_index]}")
        chosen = gallery[pick]
        results = svc.classify(clf, [svc.Prepared(chosen.name, chosen.image, chosen.image)], threshold, ood)

if not results:
    st.caption("Results appear here once there is an image.")
    st.stop()

# -- batch: a table, a CSV and a gallery ------------------------------------------------------------------
good = [r for r in results if r.ok]
for r in results:
    if not r.ok:
        st.error(r.error, icon=":material/broken_image:")
if len(results) > 1:
    st.subheader(f"{len(results)} files: {len(good)} classified, {len(results) - len(good)} refused", anchor=False)
    st.dataframe(svc.table_rows(results, labels), hide_index=True,
                 column_config={"confidence": st.column_config.ProgressColumn(format="percent", min_value=0,
                                                                              max_value=1)})
    st.download_button("Download the table (CSV)", svc.results_csv(results, labels), "classifications.csv",
                       "text/csv", icon=":material/download:")
    with st.expander("Gallery", expanded=len(good) <= 16):
        cols = st.columns(GALLERY_COLUMNS)
        for i, r in enumerate(good):
            caption = f"{labels[r.index]} {r.confidence:.0%}" + (" ⚑" if r.flags else "")
            cols[i % GALLERY_COLUMNS].image(r.display, caption=caption, width="stretch")
if not good:
    st.stop()

# -- one image: prediction, flags, probabilities ---------------------------------------------------------
if len(good) > 1:
    r = good[st.selectbox("Image to explain", range(len(good)), format_func=lambda i: good[i].name)]
else:
    r = good[0]
st.subheader(r.name, anchor=False)
if r.note:
    st.caption(f"Converted: {r.note}.")
seen, chart = st.columns([1, 2], gap="large")
with seen:
    st.image(r.display, caption="As uploaded", width="stretch")
with chart:
    st.metric("Prediction", labels[r.index], f"{r.confidence:.1%} confident", delta_color="off", delta_arrow="off")
    if svc.UNIDENTIFIED in r.flags:
        st.warning(f"**Unidentified**: the model's confidence {r.confidence:.0%} is below your threshold "
                   f"{threshold:.0%}; a person should classify this cell.", icon=":material/help:")
    if svc.UNLIKE in r.flags:
        st.warning(f"**Unlike the training data**: distance {r.distance:.1f} from the nearest class centre, "
                   f"beyond {ood.threshold:.1f} (the {ood.percentile:.0f}th percentile of validation images). "
                   f"Treat the prediction with suspicion.", icon=":material/report:")
    colours = [ACCENT if i == r.index else MUTED for i in range(len(labels))]
    fig = go.Figure(go.Bar(x=r.probabilities, y=labels, orientation="h", marker_color=colours,
                           text=[f"{p:.1%}" for p in r.probabilities], textposition="outside"))
    fig.update_layout(height=280, margin=dict(l=0, r=40, t=10, b=0), xaxis=dict(range=[0, 1.15], tickformat=".0%"),
                      yaxis=dict(autorange="reversed"), showlegend=False)
    st.plotly_chart(fig, config={"displayModeBar": False})

# -- the explanation ---------------------------------------------------------------------------------------
st.subheader("Where the evidence is", anchor=False)
layers = clf.cam_layers()
default_layer = next(i for i, c in enumerate(layers) if c.default)
c1, c2, c3, c4, c5 = st.columns([1.2, 1.6, 1.4, 1, 1])
method = c1.selectbox("Method", METHOD_NAMES, format_func=lambda m: METHOD_TITLES[m],
                      help="Grad-CAM (as in the study); Grad-CAM++ (several regions); HiResCAM (exact "
                           "per-position contributions); Score-CAM (no gradients: masks the image, slower).")
layer = c2.selectbox("Layer", layers, index=default_layer, format_func=lambda c: c.label)
options = [None] + list(range(len(labels)))
target = c3.selectbox("Class to explain", options,
                      format_func=lambda i: f"predicted ({labels[r.index]})" if i is None else labels[i])
alpha = c4.slider("Opacity", 0.0, 1.0, 0.45, 0.05)
colormap = c5.selectbox("Colours", list(COLORMAPS))
st.caption(coarse_map_note(clf.image_size, layer))

with st.spinner("Explaining…"):
    ex = svc.explain(clf, r.model_input, method, layer.name, target)
model_view, heat_view, overlay_view = panels(r.model_input, ex.heatmap, alpha, colormap)
a, b, c = st.columns(3)
how = RESIZE_TITLES[mode] if source == "Upload" else "from the test split"
a.image(model_view, caption=f"As the model sees it ({clf.image_size}×{clf.image_size} px, {how})", width="stretch")
b.image(heat_view, caption=f"{METHOD_TITLES[method]} · {labels[ex.target]} · {layer.name}", width="stretch")
c.image(overlay_view, caption="Overlay", width="stretch")
st.download_button("Download the overlay (PNG)", svc.png_bytes(overlay_view),
                   f"{r.name.rsplit('/', 1)[-1].rsplit('.', 1)[0]}-{method}-overlay.png", "image/png",
                   icon=":material/download:")

f = ex.faithfulness
st.markdown("**Faithfulness** — does masking what the map highlights hurt the prediction more than masking at "
            "random?")
m1, m2, m3 = st.columns(3)
m1.metric(f"Top {f.fraction:.0%} masked", f"{-f.top_drop * 100:+.1f} pp",
          help=f"Probability of {labels[ex.target]}: {f.probability:.1%} before masking. Masked pixels take the "
               "image's mean colour.")
m2.metric(f"Random {f.fraction:.0%} masked", f"{-f.random_drop * 100:+.1f} pp",
          help="Mean over 5 seeded random blobs of the same area: where the map points against anywhere.")
m3.metric("Difference", f"{f.difference * 100:+.1f} pp",
          help="Top drop minus random drop. Positive: the highlighted pixels matter more to the model than random "
               "ones.")
if f.difference > 0.02:
    st.caption("The map points at pixels the model relies on: hiding them costs more confidence than hiding "
               "random ones.")
else:
    st.caption("Hiding the highlighted pixels costs no more confidence than hiding random ones: do not read too "
               "much into this map (try another method or an earlier layer).")
