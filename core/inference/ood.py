"""Flag images unlike the training data: Mahalanobis distance of the pooled embedding to the class centres.

The method (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples", in
its cheap one-layer form): take the network's pooled features (`avg_pool`, the input of the classifier
head) for a stratified sample of training images; estimate each class's mean and one covariance shared by
all classes (Ledoit-Wolf shrinkage, since a 512- or 2048-dimensional covariance from a few thousand images
needs it). An image's score is the Mahalanobis distance to the nearest class mean. The threshold is the
PERCENTILE-th percentile of the scores of the run's validation images, which the network never trained on,
so about 1 in 100 ordinary images of the run's own lab is farther than that and called "unlike the training
data". The share of the run's own test images it flags is measured when the statistics are made and kept with
them (`test_rate`), so the page can say what the flag costs on ordinary cells.

The percentile was 95 until issue 13, which met a confident, correct PBC test neutrophil flagged "unlike the
training data". Measured on a real run (CompactResNet, 28 px, 4 epochs on the full PBC training split, test
accuracy 0.928; the 3,422 test images of its own lab; the 100 external_dev cells of another lab at the
MedMNIST recipe; 50 noise images), the share flagged at each validation percentile:

    percentile  threshold  own test  own test, confident (>=0.9) and correct  other lab  noise
    95          14.7       4.7%      4.2%                                     56%        100%
    99          17.5       1.1%      1.0%                                     29%        100%
    99.5        19.2       0.6%      0.6%                                     12%        100%

At 95 one ordinary cell in twenty is called unlike the training data, which teaches users to ignore the
flag; at 99 about one in ninety is, while noise images (all at distances above 140) stay far beyond it.
Cells of another lab are not reliably caught at any percentile (their median distance is that of the run's
own cells): colour normalisation and external validation deal with them, not this flag.

This complements the confidence threshold: a network can be confidently wrong on an image unlike anything
it saw (a different stain, a photo, a blank field), and such images land far from every class centre.

The statistics are computed once per run (at the end of its training job, or in the background the first
time a page needs them: core.inference.precompute) and saved as `ood_stats.npz` in the run directory,
written atomically, so later sessions and the command line load them in milliseconds.
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
VERSION = 2  # 2: threshold at the 99th percentile, and the measured share of test images flagged
PERCENTILE = 99.0  # of validation scores: the share of ordinary images flagged is about 100 - PERCENTILE %
TRAIN_LIMIT = 2000  # training images (stratified) for class means and covariance
VAL_LIMIT = 1000  # validation images (stratified) for the threshold
TEST_LIMIT = 1000  # test images (stratified) on which the flag rate is measured
CHUNK = 256  # images embedded per call, so progress can be reported
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
    test_rate: float | None = None  # share of the run's own test images beyond the threshold
    n_test: int = 0
    typical: float | None = None  # median distance of the validation images

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
                 percentile=self.percentile, n_train=self.n_train, n_val=self.n_val,
                 test_rate=np.nan if self.test_rate is None else self.test_rate, n_test=self.n_test,
                 typical=np.nan if self.typical is None else self.typical)
        return buf.getvalue()

    def explanation(self) -> str:
        """What the distance is and what the threshold flags, in one paragraph for a column's or a toggle's
        help."""
        rate = (f" It flags {self.test_rate:.1%} of this run's own test images ({self.n_test:,})."
                if self.test_rate is not None else "")
        typical = f" Half the validation images lie within {self.typical:.1f}." if self.typical is not None else ""
        return (f"Distance: how far the image's features lie from the nearest class centre of the training "
                f"images, in units of the training features' spread (Mahalanobis distance).{typical} An image "
                f"beyond {self.threshold:.1f} (the {self.percentile:g}th percentile of {self.n_val:,} validation "
                f"images) is flagged 'unlike the training data'.{rate}")

    @classmethod
    def from_file(cls, path: Path) -> "OODStats":
        with np.load(path, allow_pickle=False) as f:
            if int(f["version"]) != VERSION:
                raise ValueError("old version")
            rate, typical = float(f["test_rate"]), float(f["typical"])
            return cls(f["centres"], f["whitening"], float(f["threshold"]), float(f["percentile"]),
                       int(f["n_train"]), int(f["n_val"]), None if np.isnan(rate) else rate, int(f["n_test"]),
                       None if np.isnan(typical) else typical)


def fit(train_embeddings: np.ndarray, train_labels: np.ndarray, val_embeddings: np.ndarray,
        percentile: float = PERCENTILE, test_embeddings: np.ndarray | None = None) -> OODStats:
    """Class means and shared (shrunk) covariance from training embeddings; threshold from validation; the
    share of `test_embeddings` (the run's own test images) flagged, when given."""
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
    val_distances = stats.distance(val_embeddings)
    threshold = float(np.percentile(val_distances, percentile))
    rate, n_test = None, 0
    if test_embeddings is not None and len(test_embeddings):
        rate, n_test = float(np.mean(stats.distance(test_embeddings) > threshold)), len(test_embeddings)
    return OODStats(stats.centres, whitening, threshold, percentile, len(x), len(val_embeddings), rate, n_test,
                    float(np.median(val_distances)))


def _split(npz, split: str, limit: int) -> np.ndarray:
    labels = np.asarray(npz[f"{split}_labels"]).reshape(-1)
    index = stratified_subset(labels, limit, SEED)
    return npz[f"{split}_images"][index], labels[index]


def load_or_fit(run_dir: str | Path, embed: EmbedFn, progress: Callable[[float], None] | None = None) -> OODStats:
    """The run's statistics from `ood_stats.npz`, computing and saving them the first time (`progress(done)`,
    0..1, as the images are embedded)."""
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
                test_images = _split(npz, "test", TEST_LIMIT)[0] if "test_images" in npz.files else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise OODError(f"{data.name}: cannot read the training and validation images ({e})") from None
        parts = [train_images, val_images] + ([test_images] if test_images is not None else [])
        total, done = sum(len(p) for p in parts), 0

        def embedded(images: np.ndarray) -> np.ndarray:
            nonlocal done
            out = []
            for start in range(0, len(images), CHUNK):
                out.append(embed(images[start:start + CHUNK]))
                done += len(images[start:start + CHUNK])
                if progress:
                    progress(done / max(total, 1))
            return np.concatenate(out) if out else np.zeros((0, 0))

        train, val = embedded(train_images), embedded(val_images)
        test = embedded(test_images) if test_images is not None else None
        return fit(train, train_labels, val, PERCENTILE, test)

    return run.derived(STATS_FILE, OODStats.from_file, compute, OODStats.to_bytes)
