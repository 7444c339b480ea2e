"""A trained run loaded for prediction: its model, its label names and its preprocessing, together.

The model is loaded once; prediction and each (CAM method, layer) explanation are `tf.function`s with a
fixed input signature, traced once and reused for every later image (the page keeps one `Classifier`
per run in `st.cache_resource`). An explanation returns the probabilities too, from the same forward pass,
so showing a prediction with its heatmap costs one call.

Probabilities leave through the run's temperature (core.evaluation.calibration.apply_temperature, T fitted on
validation and stored in metrics.json; read again whenever that file changes, so a run calibrated meanwhile
is shown calibrated at once): `probabilities*`, `predict` and `explain` give them as shown; `raw_probabilities*`
give the model's own (what is cached and what calibration is fitted on). The argmax is the same either way.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from core.config import RunConfig
from core.data.registry import short_label
from core.evaluation import calibration
from core.explain.cam import method as cam_method
from core.explain.cam.base import BaseCAM, Explanation
from core.models.build import CamLayer, cam_layers, last_conv_block
from core.models.preprocessing import preprocess
from core.store.runs import Run, open_run

EMBEDDING_LAYER = "avg_pool"  # the pooled features before the classifier head (see models.build_model)
BATCH = 64


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
        model = keras.models.load_model(run.model_path, compile=False)
        self._setup(model, run.config, list(run.metrics["test"]["labels"]), run)

    @classmethod
    def from_model(cls, model: keras.Model, config: RunConfig, labels: list[str],
                   temperature: float | None = None) -> "Classifier":
        """A classifier over an in-memory model (benchmarks, tests); it has no run folder, so its temperature is
        the one given (None: uncalibrated)."""
        self = cls.__new__(cls)
        self._setup(model, config, list(labels), None)
        self._temperature = temperature
        return self

    def _setup(self, model: keras.Model, config: RunConfig, labels: list[str], run: Run | None) -> None:
        self.run = run
        self._temperature: float | None = None
        self.config = config
        self.labels = labels
        self.short_labels: list[str] = [short_label(label) for label in self.labels]
        self.model = model
        self.image_size = int(self.model.input_shape[1])
        names = {layer.name for layer in self.model.layers}
        self.embedding_layer = EMBEDDING_LAYER if EMBEDDING_LAYER in names else None
        outputs = [self.model.output]
        if self.embedding_layer:
            outputs.append(self.model.get_layer(self.embedding_layer).output)
        self._forward = keras.Model(self.model.inputs, outputs)
        spec = tf.TensorSpec((None, self.image_size, self.image_size, 3), tf.uint8)
        self._predict = tf.function(self._predict_graph, input_signature=[spec])
        self._cams: dict[tuple[str, str], BaseCAM] = {}
        self._lock = threading.Lock()

    # -- prediction -----------------------------------------------------------------------------------
    def _predict_graph(self, images: tf.Tensor):
        outputs = self._forward(self.preprocess(images), training=False)
        probabilities = outputs[0]
        embedding = outputs[1] if self.embedding_layer else tf.zeros((tf.shape(images)[0], 0))
        return probabilities, embedding

    def preprocess(self, images: tf.Tensor) -> tf.Tensor:
        return preprocess(images, self.config.arch)

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        s = self.image_size
        if images.shape[1:] != (s, s, 3):
            raise ValueError(f"expected (N, {s}, {s}, 3) images, got {images.shape}")
        return images.astype(np.uint8, copy=False)

    @property
    def temperature(self) -> float | None:
        """The run's temperature (None: not calibrated yet; probabilities are shown as the model gives them)."""
        return self._temperature if self.run is None else calibration.temperature_of(self.run.path)

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """Raw probabilities -> as shown (through the run's temperature)."""
        return calibration.apply_temperature(probabilities, self.temperature)

    def probabilities_and_embeddings(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 -> calibrated probabilities (N, n_classes) and pooled embeddings (N, d)."""
        probabilities, embeddings = self.raw_probabilities_and_embeddings(images)
        return self.calibrate(probabilities), embeddings

    def raw_probabilities_and_embeddings(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 -> the model's own probabilities (N, n_classes) and pooled embeddings (N, d), in
        batches."""
        images = self._check(images)
        probs, embs = [], []
        for start in range(0, len(images), BATCH):
            p, e = self._predict(tf.constant(images[start:start + BATCH]))
            probs.append(p.numpy())
            embs.append(e.numpy())
        if not probs:
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(probs), np.concatenate(embs)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, n_classes) probabilities, calibrated."""
        return self.probabilities_and_embeddings(images)[0]

    def raw_probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, n_classes) probabilities as the model gives them."""
        return self.raw_probabilities_and_embeddings(images)[0]

    def predict(self, images: np.ndarray) -> list[Prediction]:
        return [self.prediction(p) for p in self.probabilities(images)]

    def prediction(self, p: np.ndarray) -> Prediction:
        i = int(np.argmax(p))
        return Prediction(self.labels[i], i, float(p[i]), {label: float(v) for label, v in zip(self.labels, p)})

    # -- explanations ---------------------------------------------------------------------------------
    def cam_layers(self) -> list[CamLayer]:
        return cam_layers(self.model)

    def explainer(self, method: str = "gradcam", layer: str | None = None) -> BaseCAM:
        """The (cached) CAM object for a method and layer; its function is traced on first use only."""
        layer = layer or last_conv_block(self.model)
        key = (method, layer)
        with self._lock:
            if key not in self._cams:
                extra = (self.embedding_layer,) if self.embedding_layer else ()
                self._cams[key] = cam_method(method)(self.model, layer, preprocess=self.preprocess,
                                                     extra_layers=extra)
            return self._cams[key]

    def explain(self, images: np.ndarray, method: str = "gradcam", layer: str | None = None,
                class_index: int | None = None) -> Explanation:
        """uint8 (N, S, S, 3) -> probabilities (calibrated), heatmaps (N, S, S) and the explained classes, in one
        call."""
        result = self.explainer(method, layer).explain(self._check(images), class_index)
        return replace(result, probabilities=self.calibrate(result.probabilities))

    def warm_up(self, method: str = "gradcam", layer: str | None = None) -> None:
        """Trace prediction and the default explanation now, so the first user request is fast."""
        blank = np.zeros((1, self.image_size, self.image_size, 3), np.uint8)
        self.probabilities_and_embeddings(blank)
        self.explain(blank, method, layer)

    def close(self) -> None:
        with self._lock:
            for cam in self._cams.values():
                cam.release()
            self._cams.clear()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
