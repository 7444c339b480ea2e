"""Score-CAM (Wang et al. 2020): weight each channel by how much showing only its region raises the score.

Each channel's map is upsampled to the input size and scaled to [0, 1]; the (preprocessed) input is
multiplied by it, and the channel's weight is the explained class's softmax probability for that masked
input minus its probability for a fully masked input (all zeros after preprocessing). No gradients.

For speed only the `max_channels` channels with the highest mean activation on the image are scored (the
rest get weight 0): a 512-channel block would otherwise cost 512 forward passes. The masked inputs are run
through the model in batches of `batch_size`.
"""

from __future__ import annotations

import tensorflow as tf

from .base import BaseCAM, normalise_tf, upsample


class ScoreCAM(BaseCAM):
    name = "scorecam"
    title = "Score-CAM"
    uses_gradients = False
    max_channels = 64
    batch_size = 32

    def channel_weights(self, activations, grads, inputs, targets) -> tf.Tensor:
        n, channels = tf.shape(activations)[0], activations.shape[-1]
        k = min(channels, self.max_channels)
        top = tf.math.top_k(tf.reduce_mean(activations, axis=(1, 2)), k).indices  # (N, k)
        maps = tf.transpose(tf.gather(activations, top, axis=3, batch_dims=1), (0, 3, 1, 2))  # (N, k, h, w)
        masks = normalise_tf(upsample(tf.reshape(maps, (-1, *maps.shape[2:])), self.input_size))
        masked = tf.repeat(inputs, k, axis=0) * masks[..., None]  # (N*k, S, S, 3)
        scores = self._probabilities(masked, tf.repeat(targets, k))
        baseline = self._probabilities(tf.zeros_like(inputs), targets)
        gain = tf.reshape(scores, (n, k)) - baseline[:, None]
        return tf.reduce_sum(tf.one_hot(top, channels) * gain[..., None], axis=1)  # scatter back to (N, C)

    def _probabilities(self, x: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        """The target class's probability for each image of x, `batch_size` images at a time."""
        m = tf.shape(x)[0]
        pad = (-m) % self.batch_size
        batches = tf.reshape(tf.pad(x, [[0, pad], [0, 0], [0, 0], [0, 0]]), (-1, self.batch_size, *x.shape[1:]))
        probs = tf.map_fn(lambda b: tf.nn.softmax(self.scores(b)), batches, fn_output_signature=tf.float32)
        probs = tf.reshape(probs, (-1, probs.shape[-1]))[:m]
        return tf.gather(probs, targets, axis=1, batch_dims=1)
