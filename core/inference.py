"""A trained run loaded for prediction: its model, its label names and its preprocessing, together."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from .config import RunConfig  # noqa: E402
from .preprocessing import preprocess  # noqa: E402
from .runs import open_run  # noqa: E402


@dataclass
class Prediction:
    label: str
    index: int
    confidence: float
    probabilities: dict[str, float]


class Classifier:
    """Loads `model.keras` once and compiles one prediction function for batches of uint8 images."""

    def __init__(self, run_dir: str | Path):
        run = open_run(run_dir)
        self.run = run
        self.config: RunConfig = run.config
        self.labels: list[str] = list(run.metrics["test"]["labels"])
        self.model: keras.Model = keras.models.load_model(run.model_path, compile=False)
        self.image_size = int(self.model.input_shape[1])
        arch = self.config.arch

        @tf.function(reduce_retracing=True)
        def _predict(images: tf.Tensor) -> tf.Tensor:
            return self.model(preprocess(images, arch), training=False)

        self._predict = _predict

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, n_classes) probabilities."""
        return self._predict(tf.convert_to_tensor(images, tf.uint8)).numpy()

    def predict(self, images: np.ndarray) -> list[Prediction]:
        out = []
        for p in self.probabilities(images):
            i = int(np.argmax(p))
            out.append(Prediction(self.labels[i], i, float(p[i]),
                                  {label: float(v) for label, v in zip(self.labels, p)}))
        return out
