"""The study's input pipeline and its from-scratch training loop, reproduced for comparison only.

The study trained with `ImageDataGenerator(rescale=1/255, shear_range=0.2, zoom_range=0.2,
horizontal_flip=True).flow(x, y_onehot, batch_size=B, shuffle=True, seed=S)` passed to `model.fit`,
evaluated on images divided by 255, and kept its last epoch (the loop here keeps the best validation epoch,
as this project does, so the comparison is not flattered by that defect). Keras 3 removed the public
`keras.preprocessing.image.ImageDataGenerator` alias; the deprecated class itself still ships (unchanged,
NumPy/SciPy based) under keras.src.legacy and is imported from there. The project never uses it.

Used by benchmarks/pipeline_throughput.py (steps per second) and benchmarks/time_to_accuracy.py (accuracy
reached in a wall-clock budget).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import keras
import numpy as np
from keras.src.legacy.preprocessing.image import ImageDataGenerator

from core.config import RunConfig
from core.data.dataset import Dataset
from core.evaluation.metrics import evaluate
from core.models.build import build_model
from core.training.trainer import compile_model

# ResNet-50 from scratch, batch 32, Adam 1e-4, dropout 0.3 (the study's Table 9/12 settings, no ImageNet).
STUDY_CONFIG = dict(arch="resnet50", weights="none", batch_size=32, optimizer="adam", lr=1e-4, dropout=0.3,
                    attention=False, class_weights=False)


def study_flow(x_float: np.ndarray, y_onehot: np.ndarray, batch_size: int, seed: int):
    """The study's training generator, exactly as its Methods describe it (shear 0.2 is degrees in Keras)."""
    generator = ImageDataGenerator(rescale=1 / 255, shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    return generator.flow(x_float, y_onehot, batch_size=batch_size, shuffle=True, seed=seed)


class _Deadline(keras.callbacks.Callback):
    """Stops training at the first batch end past `deadline` (time.perf_counter)."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline
        self.hit = False

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() >= self.deadline:
            self.hit = True
            self.model.stop_training = True


@dataclass
class StudyRun:
    epochs: list[dict] = field(default_factory=list)  # epoch, val_accuracy, train_seconds, val_seconds, elapsed
    best_epoch: int = 0
    test_accuracy: float = float("nan")
    seconds_used: float = 0.0  # training and validation, partial last epoch included


def train_within(dataset: Dataset, budget_seconds: float, seed: int, max_epochs: int = 1000) -> StudyRun:
    """The study's recipe trained until `budget_seconds` of training and validation have passed: whole
    epochs are validated (images / 255) and the best one is kept and tested once; an epoch the budget cuts
    off counts as time spent, not as an epoch."""
    config = RunConfig(size=dataset.image_size, seed=seed, **STUDY_CONFIG)
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_model(config, dataset.n_classes, dataset.image_size)
    compile_model(model, config, dataset.n_classes)
    x_float = dataset.train.images.astype(np.float32)
    y_onehot = keras.utils.to_categorical(dataset.train.labels, dataset.n_classes).astype(np.float32)
    flow = study_flow(x_float, y_onehot, config.batch_size, seed)
    x_val = dataset.val.images.astype(np.float32) / 255
    out, best, best_weights = StudyRun(), -1.0, None
    start = time.perf_counter()
    deadline = _Deadline(start + budget_seconds)
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        model.fit(flow, epochs=1, steps_per_epoch=len(flow), callbacks=[deadline], verbose=0)
        train_seconds = time.perf_counter() - t0
        if deadline.hit:
            break
        t1 = time.perf_counter()
        val = evaluate(dataset.val.labels, model.predict(x_val, batch_size=256, verbose=0), dataset.labels)
        val_seconds = time.perf_counter() - t1
        out.epochs.append({"epoch": epoch, "val_accuracy": val.accuracy, "train_seconds": train_seconds,
                           "val_seconds": val_seconds, "elapsed": time.perf_counter() - start})
        if val.accuracy > best:
            best, out.best_epoch, best_weights = val.accuracy, epoch, model.get_weights()
        if time.perf_counter() >= deadline.deadline:
            break
    out.seconds_used = time.perf_counter() - start
    if best_weights is not None:
        model.set_weights(best_weights)
        x_test = dataset.test.images.astype(np.float32) / 255
        out.test_accuracy = evaluate(dataset.test.labels, model.predict(x_test, batch_size=256, verbose=0),
                                     dataset.labels).accuracy
    return out
