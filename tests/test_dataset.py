"""Loading and checking MedMNIST-layout npz files: real subsets load, every malformed file is a DatasetError."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NPZ_28

from core.data import registry
from core.data.dataset import SPLITS, Dataset, DatasetError, load_for_config, load_npz, resolve, stratified_subset
from core.errors import UserFacingError


def arrays(n: int = 16, size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """A small valid layout: uint8 (n, size, size, 3) images and (n, 1) labels covering 0..7."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in SPLITS:
        out[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(n) % 8).reshape(n, 1).astype(np.uint8)
    return out


def write(tmp_path, name="bad.npz", **changes) -> str:
    a = arrays()
    for key, value in changes.items():
        if value is None:
            del a[key]
        else:
            a[key] = value
    path = tmp_path / name
    with open(path, "wb") as f:  # np.savez(path) would append .npz to other names
        np.savez(f, **a)
    return str(path)


def load_error(path) -> str:
    with pytest.raises(DatasetError) as info:
        load_npz(path)
    assert isinstance(info.value, UserFacingError)
    assert info.value.__cause__ is None
    return str(info.value)


# -- the real tiny subset ----------------------------------------------------------------------------------

def test_tiny_subset_loads(tiny_npz):
    ds = load_npz(tiny_npz)
    assert isinstance(ds, Dataset)
    assert ds.source == str(tiny_npz)
    assert ds.image_size == 28
    assert ds.n_classes == 8
    assert ds.labels == registry.label_names()
    # conftest asks for 256/128/128; stratified_subset gives "about n" (floor per class, so up to 8 fewer)
    with np.load(tiny_npz) as raw:
        assert (len(ds.train), len(ds.val), len(ds.test)) == tuple(len(raw[f"{s}_labels"]) for s in SPLITS)
    assert 248 <= len(ds.train) <= 256 and 120 <= len(ds.val) <= 128 and 120 <= len(ds.test) <= 128
    for split in SPLITS:
        s = ds.split(split)
        assert s.images.dtype == np.uint8  # kept as uint8, never float in memory
        assert s.images.shape[1:] == (28, 28, 3)
        assert s.labels.shape == (len(s),)
        assert s.labels.dtype == np.int64
        assert set(np.unique(s.labels)) == set(range(8))  # stratified: all 8 classes present
        assert s.class_counts(8).sum() == len(s)


def test_tiny_subset_matches_source_rows(tiny_npz):
    ds = load_npz(tiny_npz)
    with np.load(tiny_npz) as raw:
        np.testing.assert_array_equal(ds.test.images, raw["test_images"])
        np.testing.assert_array_equal(ds.test.labels, raw["test_labels"][:, 0])


def test_unknown_split_name(tiny_npz):
    with pytest.raises(DatasetError, match="unknown split"):
        load_npz(tiny_npz).split("holdout")


def test_subset_and_class_counts():
    a = arrays(16)
    from core.data.dataset import Split

    s = Split(a["train_images"], a["train_labels"][:, 0].astype(np.int64))
    sub = s.subset(np.array([0, 1, 9]))
    assert len(sub) == 3
    assert sub.class_counts(8).tolist() == [1, 2, 0, 0, 0, 0, 0, 0]


def test_labels_as_flat_vector_accepted(tmp_path):
    path = write(tmp_path, train_labels=(np.arange(16) % 8).astype(np.int32))
    ds = load_npz(path)
    assert ds.train.labels.shape == (16,) and ds.train.labels.dtype == np.int64


def test_compressed_npz_accepted(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **arrays())
    assert len(load_npz(path).train) == 16


# -- malformed files -----------------------------------------------------------------------------------------

def test_missing_key(tmp_path):
    msg = load_error(write(tmp_path, test_labels=None))
    assert "lacks test_labels" in msg
    assert "bad.npz" in msg


def test_several_missing_keys_listed(tmp_path):
    msg = load_error(write(tmp_path, val_images=None, val_labels=None))
    assert "lacks val_images, val_labels" in msg


def test_float_images(tmp_path):
    msg = load_error(write(tmp_path, train_images=arrays()["train_images"].astype(np.float32) / 255))
    assert "train_images has dtype float32" in msg and "expected uint8" in msg


def test_greyscale_images(tmp_path):
    msg = load_error(write(tmp_path, val_images=np.zeros((16, 8, 8), np.uint8)))
    assert "val_images has shape (16, 8, 8)" in msg and "(N, H, W, 3) RGB" in msg


def test_four_channel_images(tmp_path):
    msg = load_error(write(tmp_path, train_images=np.zeros((16, 8, 8, 4), np.uint8)))
    assert "(N, H, W, 3) RGB" in msg


def test_channels_first_images(tmp_path):
    msg = load_error(write(tmp_path, train_images=np.zeros((16, 3, 8, 8), np.uint8)))
    assert "(N, H, W, 3) RGB" in msg


def test_non_square_images(tmp_path):
    msg = load_error(write(tmp_path, train_images=np.zeros((16, 8, 12, 3), np.uint8)))
    assert "8x12" in msg and "expected square images" in msg


def test_too_small_images(tmp_path):
    tiny = {f"{s}_images": np.zeros((16, 4, 4, 3), np.uint8) for s in SPLITS}
    msg = load_error(write(tmp_path, **tiny))
    assert "at least 8 px" in msg


def test_label_out_of_range(tmp_path):
    labels = (np.arange(16) % 9).reshape(16, 1)
    msg = load_error(write(tmp_path, test_labels=labels))
    assert "test_labels has values 0..8" in msg and "expected 0..7" in msg


def test_negative_label(tmp_path):
    labels = (np.arange(16) % 8).reshape(16, 1).astype(np.int64)
    labels[3] = -1
    msg = load_error(write(tmp_path, train_labels=labels))
    assert "values -1..7" in msg and "expected 0..7" in msg


def test_float_labels(tmp_path):
    msg = load_error(write(tmp_path, val_labels=(np.arange(16) % 8).reshape(16, 1).astype(np.float64)))
    assert "val_labels has dtype float64" in msg and "expected integers" in msg


def test_one_hot_labels(tmp_path):
    msg = load_error(write(tmp_path, train_labels=np.eye(8, dtype=np.uint8)[np.arange(16) % 8]))
    assert "train_labels has shape (16, 8)" in msg and "expected (N, 1) or (N,)" in msg


def test_count_mismatch(tmp_path):
    msg = load_error(write(tmp_path, train_labels=(np.arange(15) % 8).reshape(15, 1)))
    assert "16 train images but 15 labels" in msg


def test_different_shapes_across_splits(tmp_path):
    msg = load_error(write(tmp_path, test_images=np.zeros((16, 16, 16, 3), np.uint8)))
    assert "splits have different image shapes" in msg


def test_empty_split(tmp_path):
    msg = load_error(write(tmp_path, val_images=np.zeros((0, 8, 8, 3), np.uint8),
                           val_labels=np.zeros((0, 1), np.uint8)))
    assert "val_images is empty" in msg


def test_object_array_needs_pickle_refused(tmp_path):
    objects = np.empty(16, dtype=object)
    for i in range(16):
        objects[i] = np.zeros((8, 8, 3), np.uint8)
    path = tmp_path / "objects.npz"
    a = arrays()
    a["train_images"] = objects
    np.savez(path, **a)  # numpy pickles object arrays; we never unpickle
    msg = load_error(path)
    assert "train_images/train_labels cannot be read safely" in msg


def test_text_file_renamed_npz(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("train_images,train_labels\n1,2,3\n")
    msg = load_error(path)
    assert "notes.npz is not an .npz file" in msg
    assert "pickle" not in msg  # numpy's own message would suggest loading it unsafely


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    assert "empty" in load_error(path)


def test_truncated_real_npz(tmp_path):
    data = NPZ_28.read_bytes()
    path = tmp_path / "half.npz"
    path.write_bytes(data[: len(data) // 2])
    msg = load_error(path)
    assert "half.npz is not a readable .npz file" in msg


def test_damaged_compressed_real_npz(tmp_path):
    """The real files are zip-deflated: flipped bytes inside a member are a zlib error, not a crash."""
    data = bytearray(NPZ_28.read_bytes())
    for i in range(4096, 8192):
        data[i] ^= 0xFF
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(data))
    msg = load_error(path)
    assert "damaged.npz is damaged" in msg


def test_damaged_stored_npz(tmp_path):
    path = write(tmp_path, "stored.npz")
    data = bytearray(open(path, "rb").read())
    for i in range(300, 600):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
    msg = load_error(path)
    assert "stored.npz" in msg and ("damaged" in msg or "cannot be read" in msg)


def test_single_npy_array(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.zeros((4, 8, 8, 3), np.uint8))
    msg = load_error(path)
    assert "images.npy holds a single array" in msg


def test_zip_that_is_not_an_npz(tmp_path):
    import zipfile

    path = tmp_path / "archive.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    msg = load_error(path)
    assert "lacks" in msg and "train_images" in msg


def test_missing_file(tmp_path):
    msg = load_error(tmp_path / "nowhere.npz")
    assert "No dataset file at" in msg and "nowhere.npz" in msg


def test_directory_is_not_a_file(tmp_path):
    assert "No dataset file at" in load_error(tmp_path)


# -- stratified subsets ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_train_labels():
    with np.load(NPZ_28) as npz:
        return npz["train_labels"][:, 0]


@pytest.mark.parametrize("n", [8, 64, 500])
def test_stratified_subset_keeps_all_classes(real_train_labels, n):
    index = stratified_subset(real_train_labels, n, seed=0)
    assert len(index) <= n
    assert len(index) >= n - 8  # floor per class loses at most one per class
    assert len(np.unique(index)) == len(index)
    assert np.all(np.diff(index) > 0)  # sorted
    assert set(real_train_labels[index]) == set(range(8))


def test_stratified_subset_keeps_proportions(real_train_labels):
    index = stratified_subset(real_train_labels, 1000, seed=3)
    full = np.bincount(real_train_labels, minlength=8) / len(real_train_labels)
    part = np.bincount(real_train_labels[index], minlength=8) / len(index)
    np.testing.assert_allclose(part, full, atol=0.01)


def test_stratified_subset_is_reproducible(real_train_labels):
    a = stratified_subset(real_train_labels, 100, seed=7)
    b = stratified_subset(real_train_labels, 100, seed=7)
    c = stratified_subset(real_train_labels, 100, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_stratified_subset_all_when_n_out_of_range():
    labels = np.array([0, 1, 1, 2])
    np.testing.assert_array_equal(stratified_subset(labels, 0, 0), np.arange(4))
    np.testing.assert_array_equal(stratified_subset(labels, 4, 0), np.arange(4))
    np.testing.assert_array_equal(stratified_subset(labels, 99, 0), np.arange(4))


def test_stratified_subset_never_drops_a_rare_class():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 3 + [3] * 3)
    index = stratified_subset(labels, 6, seed=0)
    assert len(index) == 6
    assert set(labels[index]) == {0, 1, 2, 3}
    labels = np.array([0] * 1000 + [1, 2])
    assert set(labels[stratified_subset(labels, 3, seed=0)]) == {0, 1, 2}


# -- resolve and load_for_config ---------------------------------------------------------------------------

def test_load_for_config_size_mismatch(tiny_npz):
    with pytest.raises(DatasetError) as info:
        load_for_config(str(tiny_npz), 64)
    assert "holds 28 px images but the run asks for 64 px" in str(info.value)


def test_load_for_config_limit_train(tiny_npz):
    ds = load_for_config(str(tiny_npz), 28, limit_train=64, seed=0)
    assert 56 <= len(ds.train) <= 64
    assert set(ds.train.labels) == set(range(8))
    full = load_npz(tiny_npz)
    assert len(ds.val) == len(full.val) and len(ds.test) == len(full.test)  # only training is limited
    assert len(full.train) > 64
    again = load_for_config(str(tiny_npz), 28, limit_train=64, seed=0)
    np.testing.assert_array_equal(ds.train.images, again.train.images)


def test_resolve_explicit_path(tmp_path):
    assert resolve(str(tmp_path / "x.npz"), 28) == tmp_path / "x.npz"


def test_resolve_without_data_when_absent(monkeypatch, tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(empty))
    with pytest.raises(DatasetError) as info:
        resolve("", 64)
    msg = str(info.value)
    assert "python -m core download" in msg
    assert "--size 64" in msg
    assert str(empty / "bloodmnist_64.npz") in msg
    assert registry.url_and_md5(64)[0] in msg
    with pytest.raises(DatasetError, match="python -m core download"):
        load_for_config("", 28)


def test_resolve_without_data_when_present(monkeypatch, tmp_path, tiny_npz):
    (tmp_path / "bloodmnist.npz").symlink_to(tiny_npz)
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path))
    assert resolve("", 28) == tmp_path / "bloodmnist.npz"
    assert len(load_for_config("", 28).train) == len(load_npz(tiny_npz).train)
