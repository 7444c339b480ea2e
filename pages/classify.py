"""Classify: upload cell images (or pick from the test set), get the predicted type, and see the evidence.

A thin view over core.inference.classify (uploads -> model inputs -> predictions, flags and explanations) and
core.data.uploads (reading files and zips safely). Nothing here waits for a model before the uploader and the
gallery are drawn: the run's model is loaded, and its 'unlike the training data' statistics and cell framing
are measured, as background tasks (core.inference.precompute through ui.model), each shown as a progress
bar with its phase and time left. Files uploaded meanwhile stay in the box and are classified as soon as the
model is ready. Importing this page loads no TensorFlow; the background load does.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core.data.images import CELL, RESIZE_MODES
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
from core.evaluation.calibration import describe
from core.explain.cam import METHOD_NAMES, METHOD_TITLES, SAME_AS_GRADCAM_NOTE
from core.explain.overlay import COLORMAPS, panels
from core.inference import classify as svc
from core.inference import ood as ood_model
from core.store.runs import RunStore
from ui.embedding_map import show_upload
from ui.faithful import chosen_because, default_heatmap
from ui.guard import guard
from ui.model import model_when_ready, step_when_ready
from ui.palette import ACCENT, MUTED
from ui.runs import run_label
from ui.session import page_user
from ui.text import RESIZE_HELP, RESIZE_TITLES, md_escape

# -- settings -------------------------------------------------------------------------------------------
GALLERY_PER_CLASS = 2
GALLERY_COLUMNS = 8
PICK_KEY, EXPLAIN_KEY = "classify_gallery_pick", "classify_explain"

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


@st.cache_data(max_entries=3, show_spinner=False)
def get_gallery(run_path: str):
    return svc.gallery(run_path, GALLERY_PER_CLASS)


OOD_HELP = ("Mahalanobis distance of the image's features to the nearest class centre of the training images, "
            f"flagged beyond the {ood_model.PERCENTILE:g}th percentile of the run's validation images (about 1 "
            f"ordinary image in {100 / (100 - ood_model.PERCENTILE):.0f}), measured once per run.")

with st.sidebar:
    st.subheader("Model", anchor=False)
    best_id = runs[0]["run_id"]
    run = st.selectbox("Trained run", runs, format_func=lambda r: run_label(r, best_id),
                       help="Default: the best by validation accuracy.")
    mode = st.radio("Resize", RESIZE_MODES, format_func=RESIZE_TITLES.get, help=RESIZE_HELP)
    st.subheader("Flags", anchor=False)
    run_threshold, run_cal = svc.default_threshold(run["path"])  # the run's, chosen on validation (no model)
    threshold = st.slider("Unidentified below confidence", 0.0, 1.0, run_threshold, 0.005, format="%.3f",
                          key=f"classify_threshold_{run['run_id']}_{run_threshold:.6f}",  # follows the run's
                          help="Predictions whose top-class probability (calibrated) is below this are flagged "
                               "'unidentified', as digital morphology analysers leave such cells to a person. "
                               "Default: the run's threshold, the lowest at which the validation cells it "
                               "accepts reach its target accuracy.")
    if run_cal is not None:
        u = run_cal.unidentified
        st.caption(f"Run's threshold {u.threshold:.3f} for {u.target:.0%} accuracy on validation: "
                   f"{u.val_review_fraction:.1%} of validation" + (f" and {u.test_review_fraction:.1%} of test"
                   if u.test_review_fraction is not None else "") + " cells go to review.")
    else:
        st.caption(f"This run is not calibrated yet: probabilities are uncalibrated and the threshold is a fixed "
                   f"{svc.DEFAULT_THRESHOLD:.2f} until it is (prepared below once the model is loaded).")
    check_ood = st.toggle("Flag images unlike the training data", value=True, help=OOD_HELP)
    ood_note = st.empty()  # what the flag costs on this run's own cells, once measured

try:
    labels = svc.run_labels(run["path"])
except UserFacingError as e:
    st.error(md_escape(e))
    st.stop()

# -- the images (drawn before any model is needed) ---------------------------------------------------------
source = st.segmented_control("Images", ["Upload", "Test-set gallery"], default="Upload", required=True)
files, chosen = [], None
if source == "Upload":
    files = st.file_uploader(
        "Cell images (PNG, JPEG, TIFF, BMP, GIF) or a zip of them", type=list(UPLOAD_TYPES),
        accept_multiple_files=True,
        help=f"Up to {MAX_FILE_BYTES // 2**20} MB a file, {MAX_UPLOAD_PIXELS // 10**6:,} million pixels and "
             f"{MAX_UPLOAD_SECONDS:g} s of decoding per upload ({MAX_ZIP_PIXELS // 10**6:,} million pixels and "
             f"{MAX_ZIP_SECONDS:g} s per zip). Zips are read in memory, never unpacked to disk.") or []
else:
    try:
        gallery = get_gallery(run["path"])
    except UserFacingError as e:
        st.warning(f"No test-set gallery for this run: {md_escape(e)}")
        gallery = []
    if gallery:
        cols = st.columns(GALLERY_COLUMNS)
        for i, g in enumerate(gallery):
            with cols[i % GALLERY_COLUMNS]:
                st.image(g.image, caption=f"{i + 1}. {labels[g.true_index]}", width="stretch")
                st.button("Classify", key=f"classify_gallery_{i}", width="stretch",
                          type="primary" if st.session_state.get(PICK_KEY, 0) == i else "secondary",
                          on_click=st.session_state.__setitem__, args=(PICK_KEY, i),
                          help=f"Classify {g.name} (true class: {labels[g.true_index]})")
        pick = st.selectbox("Image to classify", range(len(gallery)), key=PICK_KEY,
                            format_func=lambda i: f"{i + 1}. {gallery[i].name} · true class: "
                                                  f"{labels[gallery[i].true_index]}")
        chosen = gallery[pick]

# -- the model and what the images need from the run, prepared in the background ---------------------------
try:
    clf = model_when_ready(run["path"], "Loading the run's model (once per server); the images above are "
                                        "classified as soon as it is ready.")
    fraction = None
    if clf is not None and mode == CELL and source == "Upload":
        target = step_when_ready(run["path"], "cell_framing",
                                 "Measuring the cells of the run's training images once, for cell-centred framing…")
        fraction = None if target is None else target.fraction
except UserFacingError as e:
    st.error(f"Could not prepare run {run['run_id']}: {md_escape(e)}")
    st.stop()
framing_pending = clf is not None and mode == CELL and source == "Upload" and fraction is None
if clf is None or framing_pending:
    if files:
        st.caption(f"{len(files)} file{'s' if len(files) != 1 else ''} waiting: classified as soon as the "
                   f"{'cell framing' if framing_pending else 'model'} is ready.")
    st.stop()

ood = None
if check_ood:
    try:
        ood = step_when_ready(run["path"], "ood_stats",
                              "Measuring the features of the run's training images once, for the 'unlike the "
                              "training data' flag; results show without that flag meanwhile.")
    except UserFacingError as e:
        st.sidebar.warning(f"'Unlike the training data' is unavailable: {md_escape(e)}")
    if ood is not None:
        ood_note.caption(md_escape(ood.explanation()))

from ui.calibration import calibration_section  # noqa: E402

with st.expander("How far to trust the confidence: calibration, reliability and risk–coverage",
                 icon=":material/tune:", expanded=False):
    with guard(stop=False):
        calibration_section(run["path"], "classify_cal", start=True)

results: list = []
if files:
    key = (tuple(f.file_id for f in files), mode, run["path"])
    if st.session_state.get("classify_prepared_key") != key:
        with st.spinner("Reading the files…"):
            st.session_state.classify_prepared = svc.prepare(
                iter_uploads((f.name, f.getvalue()) for f in files), clf.image_size, mode, fraction)
        st.session_state.classify_prepared_key = key
    results = svc.classify(clf, st.session_state.classify_prepared, threshold, ood)
elif chosen is not None:
    results = svc.classify(clf, [svc.Prepared(chosen.name, chosen.image, chosen.image)], threshold, ood)

if not results:
    st.caption("Results appear here once there is an image.")
    st.stop()

# -- batch: a table, a CSV and a gallery ------------------------------------------------------------------
good = [r for r in results if r.ok]
for r in results:
    if not r.ok:
        st.error(r.error, icon=":material/broken_image:")
explain_key = f"{EXPLAIN_KEY}_{hash(tuple(r.name for r in good))}"  # a new batch starts at its first image
if len(results) > 1:
    st.subheader(f"{len(results)} files: {len(good)} classified, {len(results) - len(good)} refused", anchor=False)
    def probability(title: str | None = None, width: str = "small"):
        return st.column_config.ProgressColumn(title, format="percent", min_value=0, max_value=1, width=width)

    columns = {"confidence": probability(width="medium"),
               "second": st.column_config.TextColumn("2nd", help="The next most likely class"),
               "second_probability": probability("2nd p"),
               "third": st.column_config.TextColumn("3rd", help="The third most likely class"),
               "third_probability": probability("3rd p"),
               "distance": st.column_config.NumberColumn(
                   "distance", format="%.1f",
                   help=ood.explanation() if ood is not None else OOD_HELP + " Off, or not measured yet.")}
    st.dataframe(svc.table_rows(results, labels), hide_index=True, column_config=columns)
    st.download_button("Download the table (CSV)", svc.results_csv(results, labels, run["run_id"]),
                       f"classifications-{run['run_id']}.csv", "text/csv", icon=":material/download:",
                       help="One row per file: prediction, confidence, the next two classes with their "
                            "probabilities, flags, distance, and the run whose model made the prediction.")
    with st.expander("Gallery", expanded=len(good) <= 16):
        cols = st.columns(GALLERY_COLUMNS)
        for i, r in enumerate(good):
            with cols[i % GALLERY_COLUMNS]:
                st.image(r.display, caption=f"{labels[r.index]} {r.confidence:.0%}" + (" ⚑" if r.flags else ""),
                         width="stretch")
                st.button("Explain", key=f"{explain_key}_{i}", width="stretch",
                          type="primary" if st.session_state.get(explain_key, 0) == i else "secondary",
                          on_click=st.session_state.__setitem__, args=(explain_key, i),
                          help=f"Explain {r.name} below" + (f" (flagged: {', '.join(r.flags)})" if r.flags else ""))
if not good:
    st.stop()

# -- one image: prediction, flags, probabilities ---------------------------------------------------------
if len(good) > 1:
    r = good[st.selectbox("Image to explain", range(len(good)), key=explain_key, format_func=lambda i: good[i].name)]
else:
    r = good[0]
st.subheader(r.name, anchor=False)
if r.note:
    st.caption(f"Converted: {r.note}.")
seen, chart = st.columns([1, 2], gap="large")
with seen:
    st.image(r.display, caption="As uploaded", width="stretch")
with chart:
    runners = svc.runners_up(r.probabilities)
    st.metric("Prediction", labels[r.index], f"{r.confidence:.1%} confident", delta_color="off", delta_arrow="off",
              help="Next most likely: " + ", ".join(f"{labels[i]} {r.probabilities[i]:.1%}" for i in runners))
    st.caption("Next most likely: " + " · ".join(f"{labels[i]} {r.probabilities[i]:.1%}" for i in runners)
               + f" · probabilities {describe(clf.temperature)}")
    if svc.UNIDENTIFIED in r.flags:
        st.warning(f"**Unidentified**: the model's confidence {r.confidence:.0%} is below your threshold "
                   f"{threshold:.0%}; a person should classify this cell.", icon=":material/help:")
    if svc.UNLIKE in r.flags:
        rate = f" (it flags {ood.test_rate:.1%} of this run's own test cells)" if ood.test_rate is not None else ""
        st.warning(f"**Unlike the training data**: its features lie {r.distance:.1f} from the nearest class centre "
                   f"of the training images, beyond {ood.threshold:.1f}, where only {100 - ood.percentile:g}% of "
                   f"the run's validation images lie{rate}. Treat the prediction with suspicion: a different "
                   "stain, scanner or cell type than the model learnt from.", icon=":material/report:")
    elif ood is not None and r.distance is not None:
        st.caption(f"Distance from the nearest class centre: {r.distance:.1f} (flagged beyond {ood.threshold:.1f}).",
                   help=ood.explanation())
    colours = [ACCENT if i == r.index else MUTED for i in range(len(labels))]
    fig = go.Figure(go.Bar(x=r.probabilities, y=labels, orientation="h", marker_color=colours,
                           text=[f"{p:.1%}" for p in r.probabilities], textposition="outside"))
    fig.update_layout(height=280, margin=dict(l=0, r=40, t=10, b=0), xaxis=dict(range=[0, 1.15], tickformat=".0%"),
                      yaxis=dict(autorange="reversed"), showlegend=False)
    st.plotly_chart(fig, config={"displayModeBar": False})

# -- the explanation ---------------------------------------------------------------------------------------
st.subheader("Where the evidence is", anchor=False)
layers = clf.cam_layers()
faithful, default_method, default_layer = default_heatmap(run["path"], layers)  # the run's most faithful
c1, c2, c3, c4, c5 = st.columns([1.2, 1.6, 1.4, 1, 1])
method = c1.selectbox("Method", METHOD_NAMES, index=default_method, format_func=lambda m: METHOD_TITLES[m],
                      help="Grad-CAM (as in the study); Grad-CAM++ (several regions); HiResCAM (exact "
                           "per-position contributions; the same map as Grad-CAM at the last block, which feeds "
                           "global average pooling); Score-CAM (no gradients: masks the image, slower).")
layer = c2.selectbox("Layer", layers, index=default_layer, format_func=lambda c: c.label)
options = [None] + list(range(len(labels)))
target = c3.selectbox("Class to explain", options,
                      format_func=lambda i: f"predicted ({labels[r.index]})" if i is None else labels[i])
alpha = c4.slider("Opacity", 0.0, 1.0, 0.45, 0.05)
colormap = c5.selectbox("Colours", list(COLORMAPS))
from core.models.build import coarse_map_note  # noqa: E402  (Keras: loaded with the model by now)

st.caption(coarse_map_note(clf.image_size, layer))
chosen_because(faithful)

with st.spinner("Explaining…"):
    ex = svc.explain(clf, r.model_input, method, layer.name, target)
model_view, heat_view, overlay_view = panels(r.model_input, ex.heatmap, alpha, colormap)
a, b, c = st.columns(3)
how = RESIZE_TITLES[mode] if source == "Upload" else "from the test split"
a.image(model_view, caption=f"As the model sees it ({clf.image_size}×{clf.image_size} px, {how})", width="stretch")
b.image(heat_view, caption=f"{METHOD_TITLES[method]} · {labels[ex.target]} · {layer.name}", width="stretch")
c.image(overlay_view, caption="Overlay", width="stretch")
if method == "hirescam" and ex.same_as_gradcam:
    st.info(SAME_AS_GRADCAM_NOTE, icon=":material/info:")
explained_p = float(ex.explanation.probabilities[0][ex.target])
png, png_name = svc.labelled_overlay(overlay_view, r.name, labels[ex.target], explained_p, method, layer.name,
                                     run["run_id"])
st.download_button("Download the overlay (PNG)", png, png_name, "image/png", icon=":material/download:",
                   help=f"{png_name}: the overlay over a strip naming the class explained, its probability, the "
                        "method, the layer, the file and the run.")

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

show_upload(run["path"], clf, r.model_input, r.name, r.display)  # the cell on the feature map, and its neighbours
