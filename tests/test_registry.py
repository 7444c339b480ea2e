"""BloodMNIST metadata comes from medmnist's registry, never typed into the project."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import SIZES
from core.data import registry

EXPECTED_ORDER = ("basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte",
                  "neutrophil", "platelet")


def test_labels_are_medmnist_registry_labels_in_order():
    names = registry.label_names()
    assert isinstance(names, tuple)
    assert len(names) == 8
    assert names[0] == "basophil"
    assert names[1] == "eosinophil"
    assert names[2] == "erythroblast"
    assert names[3].startswith("immature granulocytes")
    assert names[4:] == ("lymphocyte", "monocyte", "neutrophil", "platelet")
    assert tuple(registry.short_label(n) for n in names) == EXPECTED_ORDER


def test_labels_match_the_installed_medmnist_info_file():
    entry = registry._info_module().INFO["bloodmnist"]
    assert registry.label_names() == tuple(entry["label"][str(i)] for i in range(8))
    assert registry.info().n_classes == 8


def test_info_fields():
    i = registry.info()
    assert set(i.n_samples) == {"train", "val", "test"}
    assert sum(i.n_samples.values()) == 17092
    assert i.license == "CC BY 4.0"
    assert re.match(r"^\d+\.\d+", i.version)
    assert "BloodMNIST" in i.description


def test_short_label():
    assert registry.short_label("immature granulocytes(myelocytes, metamyelocytes and promyelocytes)") == \
        "immature granulocytes"
    assert registry.short_label("platelet") == "platelet"


@pytest.mark.parametrize("size,name", [(28, "bloodmnist.npz"), (64, "bloodmnist_64.npz"),
                                       (128, "bloodmnist_128.npz"), (224, "bloodmnist_224.npz")])
def test_file_name_per_size(size, name):
    assert registry.file_name(size) == name


@pytest.mark.parametrize("size", [28, 64, 128, 224])
def test_url_and_md5(size):
    url, md5 = registry.url_and_md5(size)
    assert url.startswith("https://")
    assert registry.file_name(size) in url
    assert re.fullmatch(r"[0-9a-f]{32}", md5)


def test_url_and_md5_distinct_per_size():
    pairs = [registry.url_and_md5(s) for s in SIZES]
    assert len({u for u, _ in pairs}) == len(SIZES)
    assert len({m for _, m in pairs}) == len(SIZES)
    assert pairs[0][1] == "7053d0359d879ad8a5505303e11de1dc"  # the 28 px file, as medmnist 3.x publishes it


def test_url_and_md5_unknown_size():
    with pytest.raises(registry.RegistryError, match="no BloodMNIST file at 100 px"):
        registry.url_and_md5(100)


def test_data_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path / "medmnist-data"))
    assert registry.data_root() == tmp_path / "medmnist-data"
    assert registry.local_path(64) == tmp_path / "medmnist-data" / "bloodmnist_64.npz"


def test_data_root_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(registry.DATA_DIR_ENV, "~/data")
    assert registry.data_root() == tmp_path / "data"


def test_data_root_default_is_medmnist_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert registry.data_root() == tmp_path / ".medmnist"
    monkeypatch.setenv(registry.DATA_DIR_ENV, "")  # empty means unset
    assert registry.data_root() == tmp_path / ".medmnist"


def test_local_path_with_explicit_root(tmp_path):
    assert registry.local_path(28, tmp_path) == tmp_path / "bloodmnist.npz"


def test_available_sizes(tmp_path, monkeypatch):
    assert registry.available_sizes(tmp_path) == {}
    (tmp_path / "bloodmnist.npz").write_bytes(b"x")
    (tmp_path / "bloodmnist_128.npz").write_bytes(b"x")
    (tmp_path / "bloodmnist_64.npz.part").write_bytes(b"x")  # an unfinished download is not a dataset
    (tmp_path / "bloodmnist_224.npz").mkdir()  # nor is a folder
    assert registry.available_sizes(tmp_path) == {28: tmp_path / "bloodmnist.npz",
                                                  128: tmp_path / "bloodmnist_128.npz"}
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path))
    assert set(registry.available_sizes()) == {28, 128}
    assert all(isinstance(p, Path) for p in registry.available_sizes().values())
