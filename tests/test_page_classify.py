"""The Classify page, run headless by Streamlit's AppTest over the real tiny trained run.

Uploads are real CellaVision JPEGs from ../shared/data/pbc_samples, fed through `st.file_uploader` (AppTest
supports it in Streamlit 1.67: `at.file_uploader[0].set_value([(name, bytes, mime), ...])`), mixed with
bad files. The run is mirrored into a temporary store (small files copied, the model linked), so the
page's cached 'unlike the training data' statistics never land in the shared fixture's folder.
"""

from __future__ import annotations

import ast
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import PBC_SAMPLES, mirror_run
from page_helpers import metrics, ok, open_page, page, selectbox, texts
from PIL import Image

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
    ok(at.run())
    errors = [e.value for e in at.error]
    assert len(errors) == 3, errors
    assert any(e.startswith("notes.png: not an image") for e in errors)
    assert any(e.startswith("dot.png:") and "too small" in e for e in errors)
    assert any(e.startswith("cells.zip: refused") and "path traversal" in e for e in errors)
    table = at.dataframe[0].value
    assert list(table["file"]) == [p.name for p in ONE_PER_CLASS] + ["notes.png", "dot.png", "cells.zip"]
    good = table[table["error"] == ""]
    assert len(good) == 8 and good["confidence"].between(0, 1).all()
    assert set(good["prediction"]) <= {"basophil", "eosinophil", "erythroblast", "immature granulocytes",
                                       "lymphocyte", "monocyte", "neutrophil", "platelet"}
    labels = [d.label for d in at.get("download_button")]
    assert "Download the table (CSV)" in labels and "Download the overlay (PNG)" in labels
    assert "8 classified, 3 refused" in texts(at)
    # the first good image is explained: prediction, three views, faithfulness
    m = metrics(at)
    assert m["Prediction"] == good["prediction"].iloc[0]
    assert {"Top 20% masked", "Random 20% masked", "Difference"} <= set(m)
    assert len(at.image) >= 8 + 1 + 3  # gallery, as uploaded, model view | heatmap | overlay
    assert "conv5_block2_out gives a 4×4 map" in texts(at).replace("`", "")


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
    ok(at.run())
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("bomb.zip: refused") and f"{MAX_ZIP_PIXELS:,}" in errors[0]
    assert "1 classified, 1 refused" in texts(at)


def test_explanation_controls(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.file_uploader[0].set_value([jpeg(ONE_PER_CLASS[1])])
    ok(at.run())
    assert not at.dataframe  # one image: no batch table
    captions = lambda: [c for i in at.image for c in i.captions if c]  # noqa: E731
    for i, title in enumerate(("Grad-CAM", "Grad-CAM++", "HiResCAM", "Score-CAM")):
        selectbox(at, "Method").select_index(i)
        ok(at.run())
        assert any(c.startswith(title + " ·") for c in captions()), captions()
    selectbox(at, "Method").select_index(0)
    selectbox(at, "Layer").select_index(1)  # conv3_block2_out, 14x14
    selectbox(at, "Class to explain").select_index(8)  # platelet
    ok(at.run())
    assert any(c == "Grad-CAM · platelet · conv3_block2_out" for c in captions()), captions()
    assert "14×14 map" in texts(at)


def test_flags(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    at.file_uploader[0].set_value([png("noise.png", noise)])
    next(s for s in at.slider if s.label.startswith("Unidentified")).set_value(1.0)
    ok(at.run())
    warnings = " ".join(w.value for w in at.warning)
    assert "Unidentified" in warnings and "below your threshold 100%" in warnings
    assert "Unlike the training data" in warnings  # random noise is far from every class centre
    assert list(at.dataframe) == [] and metrics(at)["Prediction"]


def test_gallery_of_the_test_split(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.segmented_control[0].set_value("Test-set gallery")
    ok(at.run())
    assert len(at.image) >= 16 + 4  # 2 per class, then the chosen image's views
    pick = selectbox(at, "Image to classify")
    assert "true class: basophil" in pick.options[0] and "true class: platelet" in pick.options[-1]
    first = [s.value for s in at.subheader if s.value.startswith("test #")]
    pick.select_index(len(pick.options) - 1)
    ok(at.run())
    last = [s.value for s in at.subheader if s.value.startswith("test #")]
    assert len(first) == len(last) == 1 and first != last
    assert last[0] in pick.options[-1] and metrics(at)["Prediction"]
