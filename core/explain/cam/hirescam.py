"""HiResCAM (Draelos & Carin 2020): gradient times activation at each position, summed over channels.

Grad-CAM first averages the gradient over space, which can move evidence to places the model never used;
HiResCAM keeps the gradient's spatial pattern, so for a model ending in global pooling and one dense layer
its map is exactly the contribution of each position to the class score. It overrides the map itself,
not channel weights.

At a layer followed directly by global average pooling (our networks' last block), the gradient is the same
at every position, so the spatial mean Grad-CAM takes loses nothing and the two maps are identical; the
explanation says so (`Explanation.flat_gradients`), and pages show a note rather than two "different" methods
that agree to the last digit.
"""

from __future__ import annotations

import tensorflow as tf

from .base import BaseCAM


class HiResCAM(BaseCAM):
    name = "hirescam"
    title = "HiResCAM"

    def cam_map(self, activations, grads, inputs, targets) -> tf.Tensor:
        return tf.reduce_sum(grads * activations, axis=-1)
