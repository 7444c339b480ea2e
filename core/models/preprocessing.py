"""Each backbone's own input preprocessing, as TensorFlow ops on float pixels in [0, 255].

Training, evaluation, prediction and Grad-CAM all call `preprocess`, so an image is seen the same way
everywhere (the study scaled everything by 1/255 instead of using the ImageNet preprocessing its weights
were trained with).
"""

from __future__ import annotations

import tensorflow as tf

from core.models.architectures import get

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # keras.applications.resnet (ResNet-50/101)
_TORCH_MEAN = (0.485, 0.456, 0.406)  # keras.applications.densenet, and our ResNet-18
_TORCH_STD = (0.229, 0.224, 0.225)

# The mode of each backbone is its registry entry's `preprocessing`; MobileNetV3 and EfficientNet ("builtin")
# carry their own Rescaling/Normalization layers and expect 0..255.
MODES = ("caffe", "torch", "builtin")


def preprocess(images: tf.Tensor, arch: str) -> tf.Tensor:
    """uint8 or float [0,255] RGB batch -> what the backbone expects."""
    x = tf.cast(images, tf.float32)
    mode = get(arch).preprocessing
    if mode == "caffe":
        return x[..., ::-1] - tf.constant(_CAFFE_BGR_MEAN)
    if mode == "torch":
        return (x / 255.0 - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)
    if mode == "builtin":
        return x
    raise ValueError(f"{arch}: unknown preprocessing mode {mode!r}; one of {MODES}")
