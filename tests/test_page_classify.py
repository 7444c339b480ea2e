"""The Classify page, run headless by Streamlit's AppTest over the real tiny trained run.

Uploads are real CellaVision JPEGs from ../shared/data/pbc_samples, fed through `st.file_uploader` (AppTest
supports it in Streamlit 1.67: `at.file_uploader[0].set_value([(name, bytes, mime), ...])`), mixed with
bad files. The run is mirrored into a temporary store (small files copied, the model linked), so the
page's cached 'unlike the training data' statistics never land in the shared fixture's folder.

The page loads the model and measures the run in background tasks of this process (AppTest runs the script
in-process); `settled` runs it again once they end, as the progress bar's fragment does in a browser. The
first test meets the mirror fresh: no model in memory, no statistics on disk.
"""

from __future__ import annotations

import ast
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from classify_fixtures import settled
from conftest import PBC_SAMPLES, mirror_run
from page_helpers import metrics, ok, open_page, page, selectbox, texts
from PIL import Image

from core import tasks
from core.inference import precompute
from core.inference.ood import STATS_FILE

PAGE = page("classify")
TIMEOUT = 300  # seconds per script run; the machine may be busy training
ONE_PER_CLASS = [sorted((PBC_SAMPLES / c).glob("*.jpg"))[0] for c in sorted(p.name for p in PBC_SAMPLES.iterdir())]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_run) -> Path:
    root = tmp_path_factory.mktemp("classify-artifacts")
    mirror_run(Path(trained_run), root)
    return root


def jpeg(path: Path) -> tuple[str, bytes, str]:
    return path.name, path.read_bytes(), "image/jpeg"


def png(name: str, array: np.ndarray) -> tuple[str, bytes, str]:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return name, buf.getvalue(), "image/png"


def run_dir(artifacts: Path) -> Path:
    return next((artifacts / "runs").iterdir())


def test_first_use_draws_the_uploader_at_once_and_classifies_what_was_uploaded_meanwhile(monkeypatch, artifacts):
    run = run_dir(artifacts)
    precompute.forget_model(run)
    (run / STATS_FILE).unlink(missing_ok=True)
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    assert len(at.file_uploader) == 1 and not at.metric  # the box is there, no result yet
    bars = [b.text for b in at.progress]
    assert bars and bars[0].startswith("Loading"), bars  # the wait, with its phase (and time left)
    assert "Loading the run's model (once per server)" in texts(at)
    at.file_uploader[0].set_value([jpeg(ONE_PER_CLASS[6])])  # uploaded while the model loads
    ok(at.run())
    if precompute.loaded(run) is None:  # still loading (a busy machine): the file waits in the box
        assert "1 file waiting" in texts(at) and at.progress and not at.metric
    tasks.wait(precompute.model_task(run), TIMEOUT)
    ok(at.run())  # what the bar's fragment does when the task ends
    assert metrics(at)["Prediction"]  # classified, while the statistics are measured
    if not (run / STATS_FILE).is_file():
        assert any(b.text.startswith("Measuring") for b in at.progress), [b.text for b in at.progress]
        assert "results show without that flag meanwhile" in texts(at)
    settled(at)
    assert (run / STATS_FILE).is_file() and not at.progress
    help_text = texts(at)  # the sidebar says what the flag costs on this run
    assert "99th percentile" in help_text and "of this run's own test images" in help_text


def test_page_imports_no_tensorflow_itself():
    tree = ast.parse(Path(PAGE).read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in modules if m.split(".")[0] in ("tensorflow", "keras")}


def test_empty_store_points_to_training(monkeypatch, tmp_path):
    at = open_page(monkeypatch, PAGE, tmp_path / "empty", TIMEOUT)
    text = texts(at)
    assert "No trained runs yet" in text and "python -m core train" in text and "Train" in text
    assert not at.file_uploader


def test_sidebar_names_the_run_once(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    run_id = next((artifacts / "runs").iterdir()).name
    picker = at.sidebar.selectbox[0]
    assert picker.label == "Trained run" and run_id in picker.format_func(picker.value)
    sidebar_text = [str(e.value) for kind in ("caption", "markdown", "text") for e in getattr(at.sidebar, kind)]
    assert not [t for t in sidebar_text if run_id in t], sidebar_text


def test_batch_upload_with_bad_files(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    assert "Classify" in texts(at) and len(at.file_uploader) == 1
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for p in ONE_PER_CLASS[:2]:
            z.writestr(f"cells/{p.name}", p.read_bytes())
        z.writestr("../escape.png", b"x")
    files = [jpeg(p) for p in ONE_PER_CLASS] + [
        ("notes.png", b"not an image at all", "image/png"),
        png("dot.png", np.zeros((1, 1, 3), np.uint8)),
        ("cells.zip", archive.getvalue(), "application/zip"),
    ]
    at.file_uploader[0].set_value(files)
    settled(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 3, errors
    assert any(e.startswith("notes.png: not an image") for e in errors)
    assert any(e.startswith("dot.png:") and "too small" in e for e in errors)
    assert any(e.startswith("cells.zip: refused") and "path traversal" in e for e in errors)
    table = at.dataframe[0].value
    assert list(table["file"]) == [p.name for p in ONE_PER_CLASS] + ["notes.png", "dot.png", "cells.zip"]
    good = table[table["error"] == ""]
    assert len(good) == 8 and good["confidence"].between(0, 1).all()
    # the next two classes, as a reviewer reads them: different from the prediction, less likely, in order
    assert (good["second"] != good["prediction"]).all() and (good["third"] != good["second"]).all()
    assert (good["confidence"] >= good["second_probability"]).all()
    assert (good["second_probability"] >= good["third_probability"]).all()
    assert set(good["prediction"]) <= {"basophil", "eosinophil", "erythroblast", "immature granulocytes",
                                       "lymphocyte", "monocyte", "neutrophil", "platelet"}
    downloads = {d.proto.label: d.proto for d in at.get("download_button")}
    assert {"Download the table (CSV)", "Download the overlay (PNG)"} <= set(downloads)
    assert "the run whose model made the prediction" in downloads["Download the table (CSV)"].help
    assert "8 classified, 3 refused" in texts(at)
    # the first good image is explained: prediction, three views, faithfulness
    m = metrics(at)
    assert m["Prediction"] == good["prediction"].iloc[0]
    assert {"Top 20% masked", "Random 20% masked", "Difference"} <= set(m)
    assert len(at.image) >= 8 + 1 + 3  # gallery, as uploaded, model view | heatmap | overlay
    layer = selectbox(at, "Layer").value  # the run's most faithful layer, preselected (core.explain.best_map)
    assert f"{layer.name} gives a {layer.height}×{layer.width} map" in texts(at).replace("`", "")
    # no keyboard needed: clicking under an image in the gallery explains that image
    third = good["file"].iloc[2]
    gallery_buttons = [b for b in at.button if b.key and b.key.startswith("classify_explain_")]
    assert len(gallery_buttons) == 8 and third not in [s.value for s in at.subheader]
    gallery_buttons[2].click()
    settled(at)
    assert third in [s.value for s in at.subheader] and metrics(at)["Prediction"] == good["prediction"].iloc[2]


def test_an_upload_over_its_pixel_budget_is_refused_with_one_message(monkeypatch, artifacts):
    """The issue's zip of 1,000 large PNGs (39.7 megapixels each): refused before decoding, in one message."""
    from core.data.uploads import MAX_ZIP_PIXELS

    big = png("big.png", np.zeros((6300, 6300), np.uint8))[1]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for i in range(1000):
            z.writestr(f"cells/{i}.png", big)
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.file_uploader[0].set_value([jpeg(ONE_PER_CLASS[0]), ("bomb.zip", archive.getvalue(), "application/zip")])
    settled(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("bomb.zip: refused") and f"{MAX_ZIP_PIXELS:,}" in errors[0]
    assert "1 classified, 1 refused" in texts(at)


def test_explanation_controls(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.file_uploader[0].set_value([jpeg(ONE_PER_CLASS[1])])
    settled(at)
    assert not at.dataframe  # one image: no batch table
    last = selectbox(at, "Layer")
    last.select_index(len(last.options) - 1)  # the last block (the run's measured default may be another)
    captions = lambda: [c for i in at.image for c in i.captions if c]  # noqa: E731
    same = lambda: [i.value for i in at.info if "HiResCAM gives exactly Grad-CAM's map" in i.value]  # noqa: E731
    overlay_file = lambda: next(d.proto.help for d in at.get("download_button")  # noqa: E731
                                if d.proto.label == "Download the overlay (PNG)")
    for i, (name, title) in enumerate((("gradcam", "Grad-CAM"), ("gradcampp", "Grad-CAM++"),
                                       ("hirescam", "HiResCAM"), ("scorecam", "Score-CAM"))):
        selectbox(at, "Method").select_index(i)
        settled(at)
        assert any(c.startswith(title + " ·") for c in captions()), captions()
        # HiResCAM at the last block, which feeds global average pooling: the same map, and the page says why
        assert bool(same()) == (name == "hirescam"), same()
        assert f"-{name}-conv5_block2_out.png" in overlay_file()  # the file names the method and layer
    selectbox(at, "Method").select_index(0)
    selectbox(at, "Layer").select_index(1)  # conv3_block2_out, 14x14
    selectbox(at, "Class to explain").select_index(8)  # platelet
    settled(at)
    assert any(c == "Grad-CAM · platelet · conv3_block2_out" for c in captions()), captions()
    assert "14×14 map" in texts(at)
    assert "-platelet-" in overlay_file() and "-gradcam-conv3_block2_out.png" in overlay_file()
    selectbox(at, "Method").select_index(2)
    settled(at)
    assert not same()  # an earlier layer: HiResCAM's own map, no note


def test_flags(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    at.file_uploader[0].set_value([png("noise.png", noise)])
    next(s for s in at.slider if s.label.startswith("Unidentified")).set_value(1.0)
    settled(at)
    warnings = " ".join(w.value for w in at.warning)
    assert "Unidentified" in warnings and "below your threshold 100%" in warnings
    assert "Unlike the training data" in warnings  # random noise is far from every class centre
    assert list(at.dataframe) == [] and metrics(at)["Prediction"]


def test_gallery_of_the_test_split(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.segmented_control[0].set_value("Test-set gallery")
    settled(at)
    assert len(at.image) >= 16 + 4  # 2 per class, then the chosen image's views
    pick = selectbox(at, "Image to classify")
    assert "true class: basophil" in pick.options[0] and "true class: platelet" in pick.options[-1]
    first = [s.value for s in at.subheader if s.value.startswith("test #")]
    pick.select_index(len(pick.options) - 1)
    settled(at)
    last = [s.value for s in at.subheader if s.value.startswith("test #")]
    assert len(first) == len(last) == 1 and first != last
    assert last[0] in pick.options[-1] and metrics(at)["Prediction"]
    next(b for b in at.button if b.key == "classify_gallery_2").click()  # or click under the image: no keyboard
    settled(at)
    third = [s.value for s in at.subheader if s.value.startswith("test #")]
    assert third[0] in selectbox(at, "Image to classify").options[2] and "true class: eosinophil" in \
        selectbox(at, "Image to classify").options[2]


def test_the_csv_and_the_overlay_file_say_what_they_hold():
    from core.inference import classify as svc

    probs = np.array([0.05, 0.7, 0.0, 0.0, 0.05, 0.2, 0.0, 0.0])
    results = [svc.ImageResult("a.jpg", probabilities=probs, index=1, label="eosinophil", confidence=0.7),
               svc.ImageResult("b.png", error="b.png: not an image")]
    text = svc.results_csv(results, ["baso", "eos", "ery", "ig", "lym", "mono", "neu", "plt"], "run-1")
    header, first, second = text.splitlines()
    assert header == ("file,prediction,confidence,second,second_probability,third,third_probability,flag,"
                      "distance,note,error,run")
    assert first.startswith("a.jpg,eos,0.7,mono,0.2,baso,0.05,") and first.endswith(",run-1")
    assert second.startswith("b.png,,,,,,,") and "not an image" in second
    rgb = np.full((252, 252, 3), 128, np.uint8)
    data, name = svc.labelled_overlay(rgb, "cells/my cell.jpg", "immature granulocytes", 0.973, "gradcampp",
                                      "conv5_block2_out", "run-1")
    assert name == "my-cell-immature-granulocytes-97pct-gradcampp-conv5_block2_out.png"
    from PIL import Image as PILImage

    image = np.asarray(PILImage.open(io.BytesIO(data)))
    assert image.shape[0] > 252 and image.shape[1] >= 252 and (image[252:] < 100).any()  # a caption strip
