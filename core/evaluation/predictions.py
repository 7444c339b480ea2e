"""A run's predictions on its test split, computed once with its model and cached in the run directory.

The confusion page needs to know which test images sit behind each confusion-matrix cell. metrics.json has
only the counts, so the first time a run is explored its model predicts the test split (the same images the
run was evaluated on: its config's data file at its size) and `test_predictions.npz` is written atomically
into the run directory. Later visits read that file and never load TensorFlow. Grad-CAM of one test image
goes through core.explain.cam.

TensorFlow is imported inside the functions that need a model, never at import time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from core.store.io import add_to_finished_run
from core.store.runs import open_run

if TYPE_CHECKING:
    from core.inference.classifier import Classifier

PREDICTIONS_FILE = "test_predictions.npz"
BATCH = 256  # images per model call: bounded memory even at 224 px


@dataclass(frozen=True)
class TestPredictions:
    y_true: np.ndarray  # (N,) int
    y_pred: np.ndarray  # (N,) int
    probabilities: np.ndarray  # (N, n_classes) float32

    def __len__(self) -> int:
        return int(self.y_true.shape[0])


def cached(run_dir: str | Path) -> TestPredictions | None:
    """The cached predictions, or None when absent or not matching the run's test split."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            y_true, probabilities = npz["y_true"].astype(np.int64), npz["probabilities"].astype(np.float32)
        n = open_run(run_dir).metrics["test"]["n"]
    except (KeyError, ValueError, OSError, EOFError):
        return None
    if len(y_true) != n or probabilities.shape[0] != n:
        return None
    return TestPredictions(y_true, probabilities.argmax(axis=1), probabilities)


def load_classifier(run_dir: str | Path) -> "Classifier":
    from core.inference.classifier import Classifier  # noqa: PLC0415 - TensorFlow only when a model is needed

    return Classifier(run_dir)


def compute(run_dir: str | Path, classifier: "Classifier | None" = None,
            progress: Callable[[float], None] | None = None) -> TestPredictions:
    """Predict the run's test split with its model and cache the result in the run directory."""
    run_dir = Path(run_dir)
    images, labels = open_run(run_dir).test_split()
    classifier = classifier or load_classifier(run_dir)
    parts = []
    for start in range(0, len(images), BATCH):
        parts.append(classifier.probabilities(images[start:start + BATCH]).astype(np.float32))
        if progress:
            progress(min(1.0, (start + BATCH) / len(images)))
    probabilities = np.concatenate(parts) if parts else np.zeros((0, len(classifier.labels)), np.float32)
    return save(run_dir, labels, probabilities)


def save(run_dir: str | Path, labels: np.ndarray, probabilities: np.ndarray) -> TestPredictions:
    """Cache predictions of the run's test split in its folder (`compute`'s, or the training job's own test
    pass, so that no page predicts it again)."""
    labels, probabilities = np.asarray(labels, np.int64), np.asarray(probabilities, np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, y_true=labels, probabilities=probabilities)
    add_to_finished_run(run_dir, PREDICTIONS_FILE, buf.getvalue())
    return TestPredictions(labels, probabilities.argmax(axis=1), probabilities)


def load_or_compute(run_dir: str | Path, classifier: "Classifier | None" = None,
                    progress: Callable[[float], None] | None = None) -> TestPredictions:
    found = cached(run_dir)
    return found if found is not None else compute(run_dir, classifier, progress)


def gradcam(classifier: "Classifier", image: np.ndarray, class_indices: Sequence[int]) -> np.ndarray:
    """Grad-CAM heatmaps (len(class_indices), S, S) in [0, 1] of one uint8 image, one per class to explain
    (say the predicted and the true class), from a single Grad-CAM pass over copies of the image."""
    from core.explain.cam import method  # noqa: PLC0415
    from core.models.preprocessing import preprocess  # noqa: PLC0415

    x = preprocess(np.repeat(np.asarray(image)[None], len(class_indices), axis=0), classifier.config.arch).numpy()
    with method("gradcam")(classifier.model) as cam:
        return cam(x, list(class_indices))
