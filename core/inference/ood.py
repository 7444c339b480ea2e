"""Flag images unlike the training data: Mahalanobis distance of the pooled embedding to the class centres.

The method (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples", in
its cheap one-layer form): take the network's pooled features (`avg_pool`, the input of the classifier
head) for a stratified sample of training images; estimate each class's mean and one covariance shared by
all classes (Ledoit-Wolf shrinkage, since a 512- or 2048-dimensional covariance from a few thousand images
needs it). An image's score is the Mahalanobis distance to the nearest class mean. The threshold is the
95th percentile of the scores of the run's validation images, which the network never trained on: about
1 in 20 ordinary images is flagged, and anything farther than that is called "unlike the training data".

This complements the confidence threshold: a network can be confidently wrong on an image unlike anything
it saw (a different stain, a photo, a blank field), and such images land far from every class centre.

The statistics are computed once per run, lazily (when first needed) and saved as `ood_stats.npz` in the
run directory, written atomically, so later sessions and the command line load them in milliseconds.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.data.dataset import stratified_subset
from core.errors import UserFacingError
from core.store.runs import open_run

STATS_FILE = "ood_stats.npz"
VERSION = 1
PERCENTILE = 95.0  # of validation scores: the share of ordinary images flagged is 100 - PERCENTILE %
TRAIN_LIMIT = 2000  # training images (stratified) for class means and covariance
VAL_LIMIT = 1000  # validation images (stratified) for the threshold
SEED = 0

EmbedFn = Callable[[np.ndarray], np.ndarray]  # uint8 (N, S, S, 3) -> embeddings (N, d)


class OODError(UserFacingError, RuntimeError):
    pass


@dataclass(frozen=True)
class OODStats:
    centres: np.ndarray  # (K, d) class means, whitened
    whitening: np.ndarray  # (d, d) inverse square root of the shared covariance
    threshold: float
    percentile: float
    n_train: int
    n_val: int

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, d) -> (N,) Mahalanobis distance to the nearest class mean."""
        z = np.asarray(embeddings, np.float64) @ self.whitening
        d2 = (z * z).sum(1)[:, None] - 2.0 * z @ self.centres.T + (self.centres ** 2).sum(1)[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    def unlike(self, embeddings: np.ndarray) -> np.ndarray:
        return self.distance(embeddings) > self.threshold

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, version=VERSION, centres=self.centres, whitening=self.whitening, threshold=self.threshold,
                 percentile=self.percentile, n_train=self.n_train, n_val=self.n_val)
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> "OODStats":
        with np.load(path, allow_pickle=False) as f:
            if int(f["version"]) != VERSION:
                raise ValueError("old version")
            return cls(f["centres"], f["whitening"], float(f["threshold"]), float(f["percentile"]),
                       int(f["n_train"]), int(f["n_val"]))


def fit(train_embeddings: np.ndarray, train_labels: np.ndarray, val_embeddings: np.ndarray,
        percentile: float = PERCENTILE) -> OODStats:
    """Class means and shared (shrunk) covariance from training embeddings; threshold from validation."""
    from sklearn.covariance import LedoitWolf  # noqa: PLC0415

    x = np.asarray(train_embeddings, np.float64)
    labels = np.asarray(train_labels).reshape(-1)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    values, vectors = np.linalg.eigh((precision + precision.T) / 2.0)
    whitening = (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T
    stats = OODStats(means @ whitening, whitening, 0.0, percentile, len(x), len(val_embeddings))
    threshold = float(np.percentile(stats.distance(val_embeddings), percentile))
    return OODStats(stats.centres, whitening, threshold, percentile, len(x), len(val_embeddings))


def _split(npz, split: str, limit: int) -> np.ndarray:
    labels = np.asarray(npz[f"{split}_labels"]).reshape(-1)
    index = stratified_subset(labels, limit, SEED)
    return npz[f"{split}_images"][index], labels[index]


def load_or_fit(run_dir: str | Path, embed: EmbedFn) -> OODStats:
    """The run's statistics from `ood_stats.npz`, computing and saving them the first time."""
    run = open_run(run_dir)

    def compute() -> OODStats:
        try:
            data = run.training_data()
        except UserFacingError as e:
            raise OODError(f"The run's dataset is not on this machine ({e})") from None
        try:
            with np.load(data, allow_pickle=False) as npz:
                train_images, train_labels = _split(npz, "train", TRAIN_LIMIT)
                val_images, _ = _split(npz, "val", VAL_LIMIT)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise OODError(f"{data.name}: cannot read the training and validation images ({e})") from None
        return fit(embed(train_images), train_labels, embed(val_images))

    return run.derived(STATS_FILE, OODStats.from_file, compute, OODStats.to_bytes)
