"""Load and check a BloodMNIST-layout npz: `{train,val,test}_images` (N,H,W,3) uint8 and `*_labels` (N,1).

Images stay uint8 in memory (a 224 px training split is 1.8 GB as uint8, four times that as float32).
Anything that is not in the layout raises `DatasetError` with a message a user can act on.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data import registry
from core.errors import UserFacingError

SPLITS = ("train", "val", "test")


class DatasetError(UserFacingError, ValueError):
    pass


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, n_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=n_classes)

    def subset(self, index: np.ndarray) -> "Split":
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Dataset:
    source: str
    train: Split
    val: Split
    test: Split
    labels: tuple[str, ...]

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; one of {SPLITS}")
        return getattr(self, name)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of about `n` items with the class proportions of `labels`, reproducible for a seed."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked: list[np.ndarray] = []
    classes, counts = np.unique(labels, return_counts=True)
    quotas = np.maximum(1, np.floor(counts * n / len(labels)).astype(int))
    # at least one per class can overshoot n: take the excess from the largest classes, never a whole class
    for _ in range(int(quotas.sum()) - n):
        if quotas.max() <= 1:
            break
        quotas[np.argmax(quotas)] -= 1
    for cls, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == cls)
        picked.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    index = np.sort(np.concatenate(picked))
    return index[:n] if len(index) > n else index


def _check_split(npz: "np.lib.npyio.NpzFile", split: str, n_classes: int, path: Path) -> Split:
    images_key, labels_key = f"{split}_images", f"{split}_labels"
    try:
        images = npz[images_key]
        labels = npz[labels_key]
    except ValueError as e:  # object arrays need pickle, which we never allow
        raise DatasetError(f"{path.name}: {images_key}/{labels_key} cannot be read safely ({e})") from None
    if images.dtype != np.uint8:
        raise DatasetError(f"{path.name}: {images_key} has dtype {images.dtype}; expected uint8 pixels 0-255")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"{path.name}: {images_key} has shape {images.shape}; expected (N, H, W, 3) RGB")
    if images.shape[1] != images.shape[2] or images.shape[1] < 8:
        raise DatasetError(f"{path.name}: {images_key} images are {images.shape[1]}x{images.shape[2]}; "
                           f"expected square images of at least 8 px")
    if images.shape[0] == 0:
        raise DatasetError(f"{path.name}: {images_key} is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path.name}: {labels_key} has dtype {labels.dtype}; expected integers")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DatasetError(f"{path.name}: {labels_key} has shape {labels.shape}; expected (N, 1) or (N,)")
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{path.name}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise DatasetError(f"{path.name}: {labels_key} has values {low}..{high}; expected 0..{n_classes - 1} "
                           f"(BloodMNIST's {n_classes} classes)")
    return Split(images, labels.astype(np.int64))


def load_npz(path: str | Path) -> Dataset:
    """Load and validate a MedMNIST-layout npz with BloodMNIST's classes."""
    path = Path(path)
    labels = registry.label_names()
    if not path.is_file():
        raise DatasetError(f"No dataset file at {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DatasetError(f"{path.name}: cannot read the file ({e.strerror or e})") from None
    # np.load treats anything that is neither a zip nor a .npy as a pickle and says so; name the real problem
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        raise DatasetError(f"{path.name} is not an .npz file ({'empty' if not head else 'not a zip archive'}); "
                           f"expected a MedMNIST-layout npz with train/val/test images and labels")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DatasetError(f"{path.name} is not a readable .npz file ({e.__class__.__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a .npy: one array, and no context manager
        raise DatasetError(f"{path.name} holds a single array; expected an .npz with "
                           f"train/val/test images and labels")
    with npz:
        expected = {f"{s}_{k}" for s in SPLITS for k in ("images", "labels")}
        missing = sorted(expected - set(npz.files))
        if missing:
            raise DatasetError(f"{path.name} lacks {', '.join(missing)}; a MedMNIST npz has "
                               f"{', '.join(sorted(expected))}")
        try:
            splits = {s: _check_split(npz, s, len(labels), path) for s in SPLITS}
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # zlib: a damaged compressed npz
            raise DatasetError(f"{path.name} is damaged ({e.__class__.__name__}: {e})") from None
    sizes = {s: splits[s].images.shape[1:] for s in SPLITS}
    if len(set(sizes.values())) != 1:
        raise DatasetError(f"{path.name}: splits have different image shapes {sizes}")
    return Dataset(source=str(path), labels=labels, **splits)


def class_counts(path: str | Path) -> dict[str, list[int]]:
    """Images per class in each split, reading only the label arrays (fast even for 224 px files)."""
    path = Path(path)
    n_classes = len(registry.label_names())
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {}
            for split in SPLITS:
                labels = np.asarray(npz[f"{split}_labels"]).reshape(-1)
                if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
                    raise DatasetError(f"{path.name}: {split}_labels outside 0..{n_classes - 1}")
                out[split] = np.bincount(labels.astype(np.int64), minlength=n_classes).tolist()
            return out
    except DatasetError:
        raise
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{path.name} is not a readable MedMNIST npz ({e.__class__.__name__}: {e})") from None


def read_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N,H,W,3) uint8, labels (N,) int64) of one split, reading only those two arrays."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz[f"{split}_images"], np.asarray(npz[f"{split}_labels"]).reshape(-1)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path.name}: cannot read its {split} split ({e.__class__.__name__}: {e})") from None
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] != len(labels) or images.dtype != np.uint8:
        raise DatasetError(f"{path.name}: its {split} split is not (N,H,W,3) uint8 images with N labels")
    return images, labels.astype(np.int64)


def resolve(data: str, size: int) -> Path:
    """The npz a config points at: its `data` path, else BloodMNIST at `size` in the data root."""
    if data:
        return Path(data).expanduser()
    path = registry.local_path(size)
    if not path.is_file():
        from core.data.download import offline_message  # noqa: PLC0415 - only for the message

        raise DatasetError(
            f"BloodMNIST {size} px is not downloaded yet. Run `python -m core download --size {size}`.\n"
            + offline_message(size, path, "not present locally").split("\n", 1)[1]
        )
    return path


def load_for_config(data: str, size: int, limit_train: int = 0, seed: int = 0) -> Dataset:
    dataset = load_npz(resolve(data, size))
    if dataset.image_size != size:
        raise DatasetError(f"{Path(dataset.source).name} holds {dataset.image_size} px images but the run asks "
                           f"for {size} px")
    if limit_train:
        index = stratified_subset(dataset.train.labels, limit_train, seed)
        dataset = Dataset(dataset.source, dataset.train.subset(index), dataset.val, dataset.test, dataset.labels)
    return dataset
