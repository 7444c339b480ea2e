"""Grad-CAM++ (Chattopadhay et al. 2018): positive gradients, each pixel weighted by alpha.

With the exponential-score closed form (as in pytorch-grad-cam):
alpha = g^2 / (2 g^2 + sum_ij(A) g^3), weight_c = sum_ij alpha * relu(g). Several separate regions of
evidence then each get their share, where Grad-CAM's plain mean favours the largest one.
"""

from __future__ import annotations

import tensorflow as tf

from .base import BaseCAM

EPS = 1e-7


class GradCAMPlusPlus(BaseCAM):
    name = "gradcampp"
    title = "Grad-CAM++"

    def channel_weights(self, activations, grads, inputs=None, targets=None) -> tf.Tensor:
        g2 = tf.square(grads)
        g3 = g2 * grads
        sum_a = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
        alpha = g2 / (2.0 * g2 + sum_a * g3 + EPS)
        alpha = tf.where(tf.not_equal(grads, 0.0), alpha, tf.zeros_like(alpha))
        return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))
