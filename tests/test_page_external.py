"""The External validation page, run headless by Streamlit's AppTest over the real tiny trained run and the
real external_dev set (the store is a private mirror of the fixture's, so stored evaluations stay here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXTERNAL_DEV
from external_fixtures import EXTERNAL_COUNTS, messy_dataset, private_store, until
from page_helpers import PROJECT_ROOT, metrics, ok, open_page, page, texts

from core.validation.external import flow, loading, storage

PAGE = page("external")
TIMEOUT = 300  # seconds per script run; the machine may be busy training


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_run) -> Path:
    return private_store(tmp_path_factory, trained_run, "external-page-artifacts")


def run_dir(artifacts: Path) -> Path:
    return next(p for p in (artifacts / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))


def test_evaluate_external_dev_end_to_end(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    assert "Enter the path of a dataset" in texts(at)
    at.text_input(key="ext_folder").input(str(EXTERNAL_DEV)).run()
    ok(at)
    assert "**100 image files** in **5 classes**" in texts(at)
    boxes = {s.label: s.value for s in at.selectbox if s.label.endswith("images)")}
    assert boxes == {f"{k} ({v} images)": k for k, v in EXTERNAL_COUNTS.items()}
    at.radio(key="ext_normalize").set_value("reinhard").run()
    help_text = at.radio(key="ext_normalize").help
    assert "Reinhard**: each image's" in help_text and "Reinhard: Reinhard" not in help_text
    before = {r["id"] for r in storage.list_evaluations(run_dir(artifacts))}
    at.button(key="ext_go").click().run()
    until(at, "Stored evaluations of this run")
    until(at, "Zero-shot result")
    body = texts(at)
    for heading in ("Zero-shot result", "Colour normalisation", "Grad-CAM of correct and wrong cells",
                    "Fine-tune on part of the data", "Stored evaluations of this run"):
        assert heading in body
    shown = metrics(at)
    assert shown["Images scored"] == "100" and shown["Files left out"] == "0"
    stored = storage.list_evaluations(run_dir(artifacts))
    added = [r for r in stored if r["id"] not in before]
    assert [r["normalize"] for r in added] == ["reinhard"]  # one click, one evaluation (the comparison inside)
    settings_shown = "5 classes mapped · Reinhard normalisation (compared with none) · MedMNIST recipe resize"
    assert settings_shown in body.replace("\\", "")  # the settings the result was computed with
    assert "Accuracy over all 8 classes **0." in body and "(95% CI 0." in body  # the interval in the text
    assert "different staining, microscope, camera and framing" in body
    tables = [d.value for d in at.dataframe]
    t14 = next(t for t in tables if "Support" in getattr(t, "columns", []))
    assert list(t14["Class"]) == [k.capitalize() for k in EXTERNAL_COUNTS] + ["Overall"]
    assert list(t14["Support"]) == list(EXTERNAL_COUNTS.values()) + [100]
    charts = at.get("plotly_chart")
    assert len(charts) >= 2
    spec = json.loads(charts[0].proto.spec)
    assert spec["data"][0]["type"] == "heatmap" and len(spec["data"][0]["y"]) == 5
    assert len(at.get("image")) >= 3  # the normalisation rows and the Grad-CAM panels
    assert "Metrics with and without normalisation" in body

    # a setting changes: the result on screen is no longer presented as the current one
    at.radio(key="ext_normalize").set_value("none").run()
    ok(at)
    body = texts(at)
    assert "Not the current settings' result" in body and "Reinhard normalisation" in body
    assert "Grad-CAM of correct and wrong cells" not in body
    assert [b for b in at.button if b.label == "Evaluate again with the current settings"]
    assert {r["id"] for r in storage.list_evaluations(run_dir(artifacts))} - before == {added[0]["id"]}


def test_fine_tune_from_the_page(monkeypatch, artifacts):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.text_input(key="ext_folder").input(str(EXTERNAL_DEV)).run()
    at.button(key="ext_go").click().run()
    until(at, "Zero-shot result")
    form_button = next(b for b in at.button if b.label.startswith("Fine-tune and score"))
    at.number_input[0].set_value(1)
    form_button.click().run()
    ok(at)
    assert "Fine-tuned on" in texts(at)
    newest = storage.list_evaluations(run_dir(artifacts))[0]
    assert newest["fine_tuned_accuracy"] is not None


def test_unknown_classes_and_problems_are_reported(monkeypatch, artifacts, tmp_path):
    root = messy_dataset(tmp_path / "messy")
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.text_input(key="ext_folder").input(str(root)).run()
    ok(at)
    warning = "\n".join(str(w.value) for w in at.warning)
    assert "Smudge cells (1 images)" in warning and "Empty class folders: monocytes" in warning
    assert "images outside any class folder" in warning and "nested subfolders" in warning
    smudge = next(s for s in at.selectbox if s.label.startswith("Smudge cells"))
    assert smudge.value == "(leave out)"
    smudge.set_value("monocyte").run()
    at.button(key="ext_go").click().run()
    until(at, "Zero-shot result")
    shown = metrics(at)
    assert shown["Images scored"] == "6"  # 8 mapped files (the smudge cell now too), 2 unreadable
    assert shown["Files left out"] == "4"  # 2 unreadable, 1 loose, 1 not an image


def test_bad_paths_are_clear_errors(monkeypatch, artifacts, tmp_path):
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.text_input(key="ext_folder").input(str(tmp_path / "nowhere")).run()
    assert not at.exception
    assert any("No folder at" in str(e.value) for e in at.error)


def test_stored_evaluations_show_on_the_results_page(monkeypatch, artifacts):
    stored = storage.list_evaluations(run_dir(artifacts))
    if not stored:  # this test may run alone
        from core.inference.classifier import Classifier

        clf = Classifier(run_dir(artifacts))
        flow.run_external(clf, loading.load_for_run(clf, EXTERNAL_DEV), run_dir=run_dir(artifacts))
        stored = storage.list_evaluations(run_dir(artifacts))
    at = open_page(monkeypatch, page("results"), artifacts, TIMEOUT)
    assert "**External validation**" in texts(at)
    table = next(d.value for d in at.dataframe if "accuracy_shared" in getattr(d.value, "columns", []))
    assert set(table["id"]) == {r["id"] for r in stored}


def test_pages_open_without_tensorflow_when_there_is_no_run(tmp_path):
    """With no trained run, neither page needs a model, so neither imports TensorFlow."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        "for page in ('pages/external.py', 'pages/review.py'):\n"
        "    at = AppTest.from_file(page, default_timeout=120).run()\n"
        "    assert not at.exception, [e.value for e in at.exception]\n"
        "    assert any('No trained runs yet' in str(i.value) for i in at.info), page\n"
        "print('tensorflow' in sys.modules)\n")
    env = {**__import__("os").environ, "CELLSCOPE_ARTIFACTS": str(tmp_path / "artifacts")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_paths_outside_the_data_roots_are_refused_on_the_page(monkeypatch, artifacts, tmp_path):
    """The issue's findings: folder /etc listed 76 "classes", CSV /etc/passwd showed its lines."""
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.text_input(key="ext_folder").input("/etc").run()
    ok(at)
    assert any("dataset folder /etc is outside the folders this server may read" in str(e.value) for e in at.error)
    assert not [s for s in at.selectbox if s.label.endswith("images)")]  # no "classes" listed
    at.segmented_control(key="ext_kind").set_value("csv").run()
    at.text_input(key="ext_csv").input("/etc/passwd").run()
    ok(at)
    shown = texts(at)
    assert "CSV file /etc/passwd is outside" in shown and "root:" not in shown
    inside = tmp_path / "passwd.csv"  # the same lines inside a root: not a manifest, and not shown
    inside.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    at.text_input(key="ext_csv").input(str(inside)).run()
    ok(at)
    shown = texts(at)
    assert "not a manifest" in shown and "root:" not in shown and "daemon" not in shown


def test_a_dataset_zip_is_uploaded_unpacked_and_scanned(monkeypatch, artifacts):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for cls in EXTERNAL_COUNTS:
            for image in sorted((EXTERNAL_DEV / cls).glob("*"))[:2]:
                z.write(image, f"dev/{cls}/{image.name}")
    at = open_page(monkeypatch, PAGE, artifacts, TIMEOUT)
    at.segmented_control(key="ext_kind").set_value("zip").run()
    ok(at)
    assert "Upload a zip" in texts(at)
    at.file_uploader(key="ext_zip").set_value([("dev.zip", buf.getvalue(), "application/zip")]).run()
    ok(at)
    assert "**10 image files** in **5 classes**" in texts(at)
    unpacked = list((artifacts / "uploads").iterdir())
    assert len(unpacked) == 1 and sorted(p.name for p in (unpacked[0] / "dev").iterdir()) == sorted(EXTERNAL_COUNTS)
    slip = io.BytesIO()
    with zipfile.ZipFile(slip, "w") as z:
        z.writestr("../evil.png", b"x")
    at.file_uploader(key="ext_zip").set_value([("slip.zip", slip.getvalue(), "application/zip")]).run()
    ok(at)
    assert any("path traversal" in str(e.value) for e in at.error)
    assert len(list((artifacts / "uploads").iterdir())) == 1
