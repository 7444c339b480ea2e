"""A run's predictions on its test (and validation) split, computed once with its model and cached in the run
directory.

The confusion page needs to know which test images sit behind each confusion-matrix cell. metrics.json has
only the counts, so the first time a run is explored its model predicts the test split (the same images the
run was evaluated on: its config's data file at its size) and `test_predictions.npz` is written atomically
into the run directory. Later visits read that file and never load TensorFlow. Calibration (core.evaluation.
calibration) also keeps the validation split's, `val_predictions.npz`. Grad-CAM of one test image goes through
core.explain.cam.

The files hold the model's RAW probabilities; `cached` returns them as shown, through the run's temperature
(core.evaluation.calibration.apply_temperature; unchanged while the run has none), and `calibrated=False`
returns them raw. The argmax is the same either way.

TensorFlow is imported inside the functions that need a model, never at import time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from core.evaluation.calibration import apply_temperature, temperature_of
from core.store.io import add_to_finished_run
from core.store.runs import open_run

if TYPE_CHECKING:
    from core.inference.classifier import Classifier

PREDICTIONS_FILE = "test_predictions.npz"
VAL_PREDICTIONS_FILE = "val_predictions.npz"
FILES = {"test": PREDICTIONS_FILE, "val": VAL_PREDICTIONS_FILE}
BATCH = 256  # images per model call: bounded memory even at 224 px


@dataclass(frozen=True)
class SplitPredictions:
    y_true: np.ndarray  # (N,) int
    y_pred: np.ndarray  # (N,) int
    probabilities: np.ndarray  # (N, n_classes) float32, as shown (calibrated when the run has a temperature)
    temperature: float | None = None  # the temperature applied (None: raw, uncalibrated)

    def __len__(self) -> int:
        return int(self.y_true.shape[0])


TestPredictions = SplitPredictions  # the name pages and tests knew


def _file(split: str) -> str:
    if split not in FILES:
        raise ValueError(f"split must be one of {', '.join(FILES)}, not {split!r}")
    return FILES[split]


def cached(run_dir: str | Path, split: str = "test", calibrated: bool = True) -> SplitPredictions | None:
    """The cached predictions, or None when absent or not matching the run's split. `calibrated`: through the
    run's temperature when it has one (as every page shows them); False: the model's raw probabilities."""
    path = Path(run_dir) / _file(split)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            y_true, probabilities = npz["y_true"].astype(np.int64), npz["probabilities"].astype(np.float32)
        n = open_run(run_dir).metrics[split]["n"]
    except (KeyError, ValueError, OSError, EOFError):
        return None
    if len(y_true) != n or probabilities.shape[0] != n:
        return None
    temperature = temperature_of(run_dir) if calibrated else None
    return SplitPredictions(y_true, probabilities.argmax(axis=1), apply_temperature(probabilities, temperature),
                            temperature)


def load_classifier(run_dir: str | Path) -> "Classifier":
    from core.inference.classifier import Classifier  # noqa: PLC0415 - TensorFlow only when a model is needed

    return Classifier(run_dir)


def predict(run_dir: str | Path, classifier: "Classifier | None" = None,
            progress: Callable[[float], None] | None = None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(labels, raw probabilities) of the run's split, predicted with its model; nothing is written."""
    _file(split)
    images, labels = open_run(run_dir).split(split)
    classifier = classifier or load_classifier(run_dir)
    parts = []
    for start in range(0, len(images), BATCH):
        parts.append(classifier.raw_probabilities(images[start:start + BATCH]).astype(np.float32))
        if progress:
            progress(min(1.0, (start + BATCH) / len(images)))
    probabilities = np.concatenate(parts) if parts else np.zeros((0, len(classifier.labels)), np.float32)
    return labels, probabilities


def compute(run_dir: str | Path, classifier: "Classifier | None" = None,
            progress: Callable[[float], None] | None = None, split: str = "test") -> SplitPredictions:
    """Predict the run's split with its model and cache the result in the run directory."""
    labels, probabilities = predict(run_dir, classifier, progress, split)
    save(run_dir, labels, probabilities, split)
    return cached(run_dir, split) or SplitPredictions(labels, probabilities.argmax(axis=1), probabilities)


def save(run_dir: str | Path, labels: np.ndarray, probabilities: np.ndarray, split: str = "test") -> SplitPredictions:
    """Cache raw predictions of the run's split in its folder (`compute`'s, or the training job's own passes,
    so that no page predicts them again). Returns them raw."""
    labels, probabilities = np.asarray(labels, np.int64).reshape(-1), np.asarray(probabilities, np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, y_true=labels, probabilities=probabilities)
    add_to_finished_run(run_dir, _file(split), buf.getvalue())
    return SplitPredictions(labels, probabilities.argmax(axis=1), probabilities)


def load_or_compute(run_dir: str | Path, classifier: "Classifier | None" = None,
                    progress: Callable[[float], None] | None = None) -> SplitPredictions:
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
