"""core.store.overview: the data files and run summary the home page shows, without TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from core.config import SIZES, RunConfig
from core.errors import StoreError, UserFacingError
from core.store.io import write_json
from core.store.overview import (
    class_names,
    dataset_files,
    human_bytes,
    recent_table,
    runs_overview,
    weights_label,
)
from core.store.runs import RunStore


def fake_run(runs_dir: Path, run_id: str, val_acc: float, test_acc: float, mtime: float) -> Path:
    """A run directory with config and metrics (enough for the index), no model."""
    path = runs_dir / run_id
    path.mkdir(parents=True)
    write_json(path / "config.json", RunConfig(arch="resnet18", weights="none", size=28).to_dict())
    write_json(path / "metrics.json", {
        "val": {"accuracy": val_acc, "auc": 0.9}, "test": {"accuracy": test_acc, "auc": None},
        "best_epoch": 2, "epochs_run": 3})
    os.utime(path, (mtime, mtime))
    return path


def test_dataset_files_lists_every_size_with_present_ones_and_their_bytes(tmp_path):
    (tmp_path / "bloodmnist.npz").write_bytes(b"x" * 1234)
    (tmp_path / "bloodmnist_128.npz").write_bytes(b"y" * 10)
    (tmp_path / "bloodmnist_64.npz.part").write_bytes(b"partial")  # an interrupted download is not a file
    files = dataset_files(tmp_path)
    assert [f.size for f in files] == list(SIZES)
    by_size = {f.size: f for f in files}
    assert by_size[28].present and by_size[28].n_bytes == 1234 and by_size[28].file_name == "bloodmnist.npz"
    assert by_size[128].present and by_size[128].n_bytes == 10
    assert not by_size[64].present and by_size[64].path == tmp_path / "bloodmnist_64.npz"
    assert not by_size[224].present and by_size[224].n_bytes == 0
    assert by_size[224].download_command == "python -m core download --size 224"


def test_dataset_files_reads_the_data_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSCOPE_DATA_DIR", str(tmp_path))
    (tmp_path / "bloodmnist_224.npz").write_bytes(b"z")
    assert [f.size for f in dataset_files() if f.present] == [224]


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1000, "1.0 KB"), (3_600_000, "3.6 MB"),
                                     (2_500_000_000, "2.5 GB"), (4_000_000_000_000, "4000.0 GB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_class_names_come_from_the_registry():
    from core.data.registry import label_names

    names = class_names()
    assert names is not None and len(names) == len(label_names()) == 8
    assert "immature granulocytes" in names and all("(" not in n for n in names)


def test_weights_label():
    assert weights_label("imagenet") == "ImageNet"
    assert weights_label("none") == "from scratch"
    assert weights_label("/some/where/backbone.weights.h5") == "file backbone.weights.h5"


def test_empty_store(tmp_path):
    overview = runs_overview(tmp_path / "runs")
    assert overview.count == 0 and overview.best is None and overview.recent == []
    assert overview.runs_dir == tmp_path / "runs"


def test_best_is_chosen_on_validation_never_on_test_and_recent_is_newest_first(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "20250101-000000-aaaaaa", val_acc=0.90, test_acc=0.70, mtime=1_000_000)
    fake_run(runs, "20250102-000000-bbbbbb", val_acc=0.80, test_acc=0.95, mtime=2_000_000)
    fake_run(runs, "20250103-000000-cccccc", val_acc=0.85, test_acc=0.85, mtime=3_000_000)
    RunStore(runs).reindex()
    overview = runs_overview(runs, recent=2)
    assert overview.count == 3
    assert overview.best["run_id"] == "20250101-000000-aaaaaa"
    assert [r["run_id"] for r in overview.recent] == ["20250103-000000-cccccc", "20250102-000000-bbbbbb"]


def test_an_empty_index_is_rebuilt_from_run_folders(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "20250101-000000-aaaaaa", val_acc=0.9, test_acc=0.7, mtime=1_000_000)
    assert not (tmp_path / "index.sqlite").exists()
    overview = runs_overview(runs)
    assert overview.count == 1 and overview.best["run_id"] == "20250101-000000-aaaaaa"


def test_a_damaged_index_is_a_user_facing_error(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="--reindex") as info:
        runs_overview(tmp_path / "runs")
    assert isinstance(info.value, UserFacingError)
    assert str(tmp_path / "index.sqlite") in str(info.value)  # the message names the file


def test_recent_table_rows(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "20250101-000000-aaaaaa", val_acc=0.9, test_acc=0.7, mtime=1_000_000)
    RunStore(runs).reindex()
    (row,) = recent_table(runs_overview(runs).recent)
    assert row["Run"] == "20250101-000000-aaaaaa"
    assert row["Architecture"] == "ResNet-18" and row["Weights"] == "from scratch" and row["Size (px)"] == 28
    assert row["Best epoch"] == "2/3" and row["Val accuracy"] == 0.9 and row["Test AUC"] is None
    assert len(row["Created"]) == len("2025-01-01 00:00")


def test_the_trained_fixture_run(trained_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run, runs / trained_run.name)  # a copy: no index yet, rebuilt on first read
    overview = runs_overview(runs)
    assert overview.count == 1
    best = overview.best
    assert best["run_id"] == trained_run.name
    assert best["arch"] == "resnet18" and best["size"] == 28 and best["weights"] == "none"
    assert best["val_accuracy"] == json.loads((trained_run / "metrics.json").read_text())["val"]["accuracy"]
