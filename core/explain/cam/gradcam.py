"""Grad-CAM (Selvaraju et al. 2017): channel weight = spatial mean of the class score's gradient."""

from __future__ import annotations

import tensorflow as tf

from .base import BaseCAM


class GradCAM(BaseCAM):
    name = "gradcam"
    title = "Grad-CAM"

    def channel_weights(self, activations, grads, inputs=None, targets=None) -> tf.Tensor:
        return tf.reduce_mean(grads, axis=(1, 2))
