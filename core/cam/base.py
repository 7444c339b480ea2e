"""Shared machinery for CAM methods, in the shape of pytorch-grad-cam's `BaseCAM`.

The base class builds (once) a function returning a chosen layer's activations and the class scores
(the pre-softmax `logits` layer), takes gradients, asks the subclass for per-channel weights, forms the
weighted sum, applies ReLU, upsamples to the input size and normalises each map to [0, 1]. A method only
overrides `channel_weights`. Use it in a `with` block to release the extra graph when done.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..models import last_conv_block


class BaseCAM:
    name = "base"

    def __init__(self, model: keras.Model, layer_name: str | None = None):
        self.layer_name = layer_name or last_conv_block(model)
        try:
            layer = model.get_layer(self.layer_name)
        except ValueError:
            raise ValueError(f"the model has no layer named {self.layer_name!r}") from None
        score = model.get_layer("logits").output
        self._graph: keras.Model | None = keras.Model(model.inputs, [layer.output, score])
        self.input_size = tuple(model.input_shape[1:3])
        self._step = tf.function(self._activations_and_grads, reduce_retracing=True)

    # -- resources ------------------------------------------------------------------------------------
    def __enter__(self) -> "BaseCAM":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        self._graph = None
        self._step = None

    @property
    def released(self) -> bool:
        return self._graph is None

    # -- the method ----------------------------------------------------------------------------------
    def channel_weights(self, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """(N, h, w, C) activations and d score / d activations -> (N, C) weights."""
        raise NotImplementedError

    def _activations_and_grads(self, x: tf.Tensor, class_index: tf.Tensor):
        with tf.GradientTape() as tape:
            activations, scores = self._graph(x, training=False)
            tape.watch(activations)
            chosen = tf.gather(scores, class_index, axis=1, batch_dims=1)
        grads = tape.gradient(chosen, activations)
        return activations, grads, scores

    def __call__(self, x: np.ndarray | tf.Tensor, class_index: int | list[int] | None = None) -> np.ndarray:
        """Preprocessed batch (N, S, S, 3) -> heatmaps (N, S, S) in [0, 1].

        `class_index` None explains each image's predicted class.
        """
        if self.released:
            raise RuntimeError(f"{self.__class__.__name__} was released; create a new one")
        x = tf.convert_to_tensor(x, tf.float32)
        n = int(x.shape[0])
        if class_index is None:
            _, scores = self._graph(x, training=False)
            idx = tf.argmax(scores, axis=1, output_type=tf.int32)
        else:
            idx = tf.constant(np.broadcast_to(np.asarray(class_index, np.int32), (n,)))
        activations, grads, _ = self._step(x, idx)
        weights = self.channel_weights(activations, grads)
        cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", activations, weights))
        return normalise(upsample(cam, self.input_size))


def upsample(cam: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    return tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]


def normalise(cam: tf.Tensor) -> np.ndarray:
    cam = cam.numpy() if hasattr(cam, "numpy") else np.asarray(cam)
    low = cam.min(axis=(1, 2), keepdims=True)
    high = cam.max(axis=(1, 2), keepdims=True)
    return np.where(high - low > 1e-12, (cam - low) / np.maximum(high - low, 1e-12), 0.0).astype(np.float32)
