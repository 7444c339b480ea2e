"""Shared machinery for CAM methods, in the shape of pytorch-grad-cam's `BaseCAM`.

The base class builds (once) a graph returning a chosen layer's activations and the class scores (the
pre-softmax `logits` layer), takes gradients of the explained class's score, asks the subclass for
per-channel weights, forms the weighted sum, applies ReLU, upsamples to the input size and normalises each
map to [0, 1]. All of it is one `tf.function` with a fixed input signature, traced once per object, that
also returns the class probabilities: a prediction and its explanation cost one forward pass.

A method overrides `channel_weights` (Grad-CAM, Grad-CAM++, Score-CAM); a method whose map is not a
weighted sum of channels (HiResCAM) overrides `cam_map` instead.

Each explanation also says whether the class score's gradient was spatially constant per channel at the
explained layer (`flat_gradients`): then Grad-CAM's spatial mean of the gradient loses nothing, and Grad-CAM
and HiResCAM give the same map. That is the case at a layer followed directly by global average pooling and
the dense head (our networks' last block), so the page can say why two methods agree rather than leave users
to suspect a bug. Both hooks receive TensorFlow tensors and
run inside the traced function. Use an object in a `with` block to release its graph and function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from core.models.build import last_conv_block

PREDICTED = -1  # class_index meaning "the predicted class"
FLAT_TOLERANCE = 1e-3  # gradient spread over positions, relative to its largest value, still called constant


@dataclass
class Explanation:
    probabilities: np.ndarray  # (N, n_classes)
    heatmaps: np.ndarray  # (N, S, S) float32 in [0, 1]
    targets: np.ndarray  # (N,) the class each heatmap explains
    extras: dict[str, np.ndarray]  # outputs of `extra_layers`, e.g. the pooled embedding
    flat_gradients: np.ndarray | None = None  # (N,) bool: gradient constant over positions (None: no gradient)


class BaseCAM:
    name = "base"
    uses_gradients = True  # Score-CAM needs none, which saves the backward pass

    def __init__(self, model: keras.Model, layer_name: str | None = None,
                 preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None,
                 extra_layers: Sequence[str] = ()):
        """`preprocess` maps float pixels (0-255) to the model's input; None when inputs are preprocessed.

        `extra_layers` are returned by `explain` too (the classifier asks for the pooled embedding).
        """
        self.layer_name = layer_name or last_conv_block(model)
        try:
            layer = model.get_layer(self.layer_name)
        except ValueError:
            raise ValueError(f"the model has no layer named {self.layer_name!r}") from None
        if len(layer.output.shape) != 4:
            raise ValueError(f"layer {self.layer_name!r} has no spatial (4-D) output")
        self.extra_layers = tuple(extra_layers)
        outputs = [layer.output, model.get_layer("logits").output]
        outputs += [model.get_layer(n).output for n in self.extra_layers]
        self._graph: keras.Model | None = keras.Model(model.inputs, outputs)
        self.input_size = tuple(int(s) for s in model.input_shape[1:3])
        self._preprocess = preprocess or (lambda x: x)
        spec = [tf.TensorSpec((None, *self.input_size, 3), tf.float32), tf.TensorSpec((None,), tf.int32)]
        self._explain = tf.function(self._explain_graph, input_signature=spec)

    # -- resources ------------------------------------------------------------------------------------
    def __enter__(self) -> "BaseCAM":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        self._graph = None
        self._explain = None

    @property
    def released(self) -> bool:
        return self._graph is None

    # -- the method (override one) --------------------------------------------------------------------
    def channel_weights(self, activations: tf.Tensor, grads: tf.Tensor | None, inputs: tf.Tensor | None = None,
                        targets: tf.Tensor | None = None) -> tf.Tensor:
        """(N, h, w, C) activations and d score / d activations -> (N, C) weights.

        `inputs` (the preprocessed batch) and `targets` (N,) are there for methods that re-run the model.
        """
        raise NotImplementedError

    def cam_map(self, activations: tf.Tensor, grads: tf.Tensor | None, inputs: tf.Tensor,
                targets: tf.Tensor) -> tf.Tensor:
        """(N, h, w) map before ReLU: by default the channel-weighted sum of the activations."""
        weights = self.channel_weights(activations, grads, inputs, targets)
        return tf.einsum("nhwc,nc->nhw", activations, weights)

    # -- shared work -----------------------------------------------------------------------------------
    def scores(self, inputs: tf.Tensor) -> tf.Tensor:
        """Class scores (logits) of a preprocessed batch, for methods that re-run the model."""
        return tf.cast(self._graph(inputs, training=False)[1], tf.float32)

    def _explain_graph(self, images: tf.Tensor, class_index: tf.Tensor):
        x = self._preprocess(images)
        with tf.GradientTape() as tape:
            activations, logits, *extras = self._graph(x, training=False)
            tape.watch(activations)
            logits = tf.cast(logits, tf.float32)
            predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
            targets = tf.where(class_index < 0, predicted, class_index)
            chosen = tf.gather(logits, targets, axis=1, batch_dims=1)
        grads = tape.gradient(chosen, activations) if self.uses_gradients else None
        # a mixed-precision model's inner layers are bfloat16/float16: the map is computed in float32
        activations = tf.cast(activations, tf.float32)
        grads = None if grads is None else tf.cast(grads, tf.float32)
        extras = [tf.cast(e, tf.float32) for e in extras]
        cam = tf.nn.relu(self.cam_map(activations, grads, x, targets))
        heat = normalise_tf(upsample(cam, self.input_size))
        flat = flat_gradients(grads) if grads is not None else tf.zeros((0,), tf.bool)
        return tf.nn.softmax(logits), heat, targets, extras, flat

    def explain(self, images: np.ndarray | tf.Tensor,
                class_index: int | Sequence[int] | None = None) -> Explanation:
        """Batch (N, S, S, 3) of pixels (through `preprocess`) -> probabilities and heatmaps together.

        `class_index` None (or -1) explains each image's predicted class.
        """
        if self.released:
            raise RuntimeError(f"{self.__class__.__name__} was released; create a new one")
        x = tf.cast(tf.convert_to_tensor(images), tf.float32)
        n = int(x.shape[0])
        idx = np.broadcast_to(np.asarray(PREDICTED if class_index is None else class_index, np.int32), (n,))
        probabilities, heat, targets, extras, flat = self._explain(x, tf.constant(idx))
        return Explanation(probabilities.numpy(), heat.numpy(), targets.numpy(),
                           {name: e.numpy() for name, e in zip(self.extra_layers, extras)},
                           flat.numpy() if self.uses_gradients else None)

    def __call__(self, x: np.ndarray | tf.Tensor, class_index: int | Sequence[int] | None = None) -> np.ndarray:
        """Batch (N, S, S, 3) -> heatmaps (N, S, S) in [0, 1]; `class_index` None explains the prediction."""
        return self.explain(x, class_index).heatmaps


def flat_gradients(grads: tf.Tensor) -> tf.Tensor:
    """(N, h, w, C) gradients -> (N,) whether each image's gradient is the same at every position, channel by
    channel (within FLAT_TOLERANCE of its largest magnitude)."""
    spread = tf.reduce_max(tf.abs(grads - tf.reduce_mean(grads, axis=(1, 2), keepdims=True)), axis=(1, 2, 3))
    scale = tf.reduce_max(tf.abs(grads), axis=(1, 2, 3))
    return spread <= FLAT_TOLERANCE * tf.maximum(scale, 1e-30)


def upsample(cam: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    return tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]


def normalise_tf(cam: tf.Tensor) -> tf.Tensor:
    """Each map to [0, 1] by its own min and max; a flat map becomes all zeros."""
    low = tf.reduce_min(cam, axis=(1, 2), keepdims=True)
    span = tf.reduce_max(cam, axis=(1, 2), keepdims=True) - low
    return tf.where(span > 1e-12, (cam - low) / tf.maximum(span, 1e-12), tf.zeros_like(cam))


def normalise(cam: tf.Tensor | np.ndarray) -> np.ndarray:
    return normalise_tf(tf.convert_to_tensor(cam, tf.float32)).numpy()


def gradient_maps(model: keras.Model, methods: Sequence[str], layers: Sequence[str], images: np.ndarray,
                  targets: Sequence[int], preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None,
                  batch: int = 32) -> dict[tuple[str, str], np.ndarray]:
    """{(method, layer): (N, S, S) maps} of several gradient methods at several layers, each equal to that
    method's `explain(images, targets).heatmaps`, from ONE traced forward and backward pass per batch instead
    of one traced function per method and layer (tracing dominates when a run's every map is scored once).
    Each method contributes only its `cam_map`; ReLU, upsampling and normalisation are `explain`'s."""
    from . import method as cam_method  # noqa: PLC0415 - the package imports this module

    classes = {name: cam_method(name) for name in methods}
    if any(not cls.uses_gradients for cls in classes.values()):
        raise ValueError("gradient_maps takes gradient methods only")
    graph = keras.Model(model.inputs, [model.get_layer(n).output for n in layers] + [model.get_layer("logits").output])
    size = tuple(int(s) for s in model.input_shape[1:3])
    prep = preprocess or (lambda x: x)

    @tf.function(input_signature=[tf.TensorSpec((None, *size, 3), tf.float32), tf.TensorSpec((None,), tf.int32)])
    def forward_backward(x_batch, target_batch):
        x = prep(x_batch)
        with tf.GradientTape() as tape:
            *activations, logits = graph(x, training=False)
            chosen = tf.gather(tf.cast(logits, tf.float32), target_batch, axis=1, batch_dims=1)
        grads = tape.gradient(chosen, activations)
        return x, [tf.cast(a, tf.float32) for a in activations], [tf.cast(g, tf.float32) for g in grads]

    parts: dict[tuple[str, str], list[np.ndarray]] = {(m, la): [] for m in methods for la in layers}
    targets = np.asarray(targets, np.int32)
    for start in range(0, len(images), batch):
        t = tf.constant(targets[start:start + batch])
        x, activations, grads = forward_backward(tf.cast(images[start:start + batch], tf.float32), t)
        for name, cls in classes.items():
            maker = cls.__new__(cls)  # its map only: the methods' hooks keep no state
            for layer, a, g in zip(layers, activations, grads):
                cam = tf.nn.relu(maker.cam_map(a, g, x, t))
                parts[(name, layer)].append(normalise_tf(upsample(cam, size)).numpy())
    return {key: np.concatenate(maps) for key, maps in parts.items()}
