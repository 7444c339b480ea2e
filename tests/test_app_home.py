"""The app shell and home page, run headless with Streamlit's AppTest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from page_helpers import APP, open_page, texts
from streamlit.testing.v1 import AppTest

from core.store.overview import human_bytes

TIMEOUT = 60  # seconds per script run; the machine may be busy training


@pytest.fixture
def data_dir(tmp_path, tiny_npz) -> Path:
    """A data root holding a real (small) BloodMNIST 28 px file under its medmnist name."""
    root = tmp_path / "medmnist"
    root.mkdir()
    shutil.copy(tiny_npz, root / "bloodmnist.npz")
    return root


def run_app(monkeypatch, artifacts: Path, data: Path) -> AppTest:
    return open_page(monkeypatch, APP, artifacts, TIMEOUT, CELLSCOPE_DATA_DIR=data)


def page_links(at: AppTest) -> dict[str, str]:
    """{label: address} of the st.page_link links the page shows."""
    return {e.proto.label: e.proto.page + (f"?{e.proto.query_string}" if e.proto.query_string else "")
            for e in at.get("page_link")}


def test_empty_state(monkeypatch, tmp_path):
    empty_data = tmp_path / "no-data"
    at = run_app(monkeypatch, tmp_path / "artifacts", empty_data)
    shown = texts(at)
    assert at.title[0].value == "CellScope"
    assert "classes (basophil, eosinophil, erythroblast, immature granulocytes, lymphocyte" in shown
    assert "No runs yet. First step: train a small model" in shown
    assert page_links(at)["Train a first model"].endswith("train")  # a link to the Train page, not a path
    assert (f"python -m core download --size 28\npython -m core train --data {empty_data / 'bloodmnist.npz'} "
            "--arch resnet18 --epochs 1 --limit-train 512") in shown
    for size in (28, 64, 128, 224):
        assert f"python -m core download --size {size}" in shown
        assert str(empty_data / ("bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz")) in shown
    assert not at.dataframe and not at.error


def test_with_a_run_and_data(monkeypatch, trained_run, data_dir):
    artifacts = Path(trained_run).parent.parent
    at = run_app(monkeypatch, artifacts, data_dir)
    shown = texts(at)
    assert "**1** run in" in shown
    assert f"Run `{trained_run.name}`" in shown
    assert "ResNet-18 · 28 px · from scratch · batch 32" in shown
    assert {m.label for m in at.metric} == {"Val accuracy", "Test accuracy", "Test AUC", "Best epoch"}
    # 28 px is present with its size on disk; the other sizes say how to get them
    n_bytes = (data_dir / "bloodmnist.npz").stat().st_size
    assert f"**28 px** · `bloodmnist.npz` · {human_bytes(n_bytes)}" in shown
    assert "python -m core download --size 28" not in shown
    assert "python -m core download --size 64" in shown
    assert "No runs yet" not in shown
    links = page_links(at)
    assert links["Its results"].endswith(f"results?run={trained_run.name}")
    assert links["Its confusions"].endswith(f"confusions?run={trained_run.name}")
    assert "Train a first model" not in links
    table = at.dataframe[0].value
    assert list(table["Run"]) == [trained_run.name]
    assert not at.error


def test_store_errors_are_shown_not_raised(monkeypatch, tmp_path):
    artifacts = tmp_path / "artifacts"
    (artifacts / "runs").mkdir(parents=True)
    (artifacts / "index.sqlite").write_bytes(b"not a database" * 100)
    at = run_app(monkeypatch, artifacts, tmp_path / "no-data")
    assert len(at.error) == 1 and "--reindex" in at.error[0].value
    assert "Data" in texts(at)  # the rest of the page still renders


def test_empty_state_suggests_a_present_data_file(monkeypatch, tmp_path, data_dir):
    at = run_app(monkeypatch, tmp_path / "artifacts", data_dir)
    (code,) = [c.value for c in at.code if "core train" in c.value]
    assert code == (f"python -m core train --data {data_dir / 'bloodmnist.npz'} "
                    "--arch resnet18 --epochs 1 --limit-train 512")
