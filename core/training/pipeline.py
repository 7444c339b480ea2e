"""tf.data input pipelines: uint8 arrays -> shuffled, augmented, preprocessed batches.

Augmentation runs on whole batches. Every geometric change (shear, zoom, flips, 90-degree turns) is folded
into one affine matrix per image and applied with a single projective-transform op, with random numbers
from stateless ops seeded by (run seed, step): the same seed gives the same batches.

Shear is in radians (the study's text says +-0.2 rad; its `ImageDataGenerator(shear_range=0.2)` was
+-0.2 degrees, since Keras reads that argument in degrees).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from core.config import RunConfig
from core.models.preprocessing import preprocess

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Augmentation:
    shear: float = 0.2  # radians
    zoom: float = 0.2
    hflip: bool = True
    vflip: bool = False
    rot90: bool = False

    @classmethod
    def from_config(cls, c: RunConfig) -> "Augmentation":
        return cls(c.aug_shear, c.aug_zoom, c.aug_hflip, c.aug_vflip, c.aug_rot90)

    @property
    def active(self) -> bool:
        return bool(self.shear or self.zoom or self.hflip or self.vflip or self.rot90)


def augmentation_matrices(batch: int, size: int, aug: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """(batch, 8) projective transforms mapping output pixel -> input pixel, about the image centre."""
    seeds = tf.random.experimental.stateless_split(seed, 6)

    def uniform(i: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform([batch], seeds[i], low, high)

    ones, zeros = tf.ones([batch]), tf.zeros([batch])
    shear = uniform(0, -aug.shear, aug.shear) if aug.shear else zeros
    zx = uniform(1, 1 - aug.zoom, 1 + aug.zoom) if aug.zoom else ones
    zy = uniform(2, 1 - aug.zoom, 1 + aug.zoom) if aug.zoom else ones
    fx = tf.where(uniform(3, 0, 1) < 0.5, -ones, ones) if aug.hflip else ones
    fy = tf.where(uniform(4, 0, 1) < 0.5, -ones, ones) if aug.vflip else ones
    if aug.rot90:
        k = tf.floor(uniform(5, 0, 4))
        cos, sin = tf.round(tf.cos(k * math.pi / 2)), tf.round(tf.sin(k * math.pi / 2))
    else:
        cos, sin = ones, zeros

    def mat(a, b, c, d):  # rows [[a, b], [c, d]] for each image
        return tf.reshape(tf.stack([a, b, c, d], axis=-1), [batch, 2, 2])

    m = (mat(zx, zeros, zeros, zy)
         @ mat(ones, -tf.sin(shear), zeros, tf.cos(shear))
         @ mat(cos, -sin, sin, cos)
         @ mat(fx, zeros, zeros, fy))
    centre = tf.fill([batch, 2, 1], (size - 1) / 2.0)
    offset = centre - m @ centre
    return tf.concat([tf.reshape(m[:, 0, :], [batch, 2]), offset[:, 0],
                      tf.reshape(m[:, 1, :], [batch, 2]), offset[:, 1], tf.zeros([batch, 2])], axis=1)


def augment_batch(images: tf.Tensor, aug: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Float [0,255] batch (B,H,W,3) -> augmented batch, edges filled by the nearest pixel (as Keras did)."""
    batch, size = tf.shape(images)[0], images.shape[1]
    transforms = augmentation_matrices(batch, size, aug, seed)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def training_dataset(images: np.ndarray, labels: np.ndarray, config: RunConfig, n_classes: int,
                     start_step: int = 0) -> tf.data.Dataset:
    """An endless stream of (preprocessed batch, one-hot labels); fit() takes steps_per_epoch of it."""
    aug = Augmentation.from_config(config)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.shuffle(len(labels), seed=config.seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(config.batch_size, drop_remainder=len(labels) >= config.batch_size)
    ds = ds.enumerate(start=start_step)

    def prepare(step, batch):
        x, y = batch
        x = tf.cast(x, tf.float32)
        if aug.active:
            x = augment_batch(x, aug, tf.stack([tf.cast(config.seed, tf.int64), step]))
        return preprocess(x, config.arch), tf.one_hot(y, n_classes)

    return ds.map(prepare, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def inference_dataset(images: np.ndarray, arch: str, batch_size: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    return ds.map(lambda x: preprocess(x, arch), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def bn_statistics_dataset(images: np.ndarray, arch: str, batch_size: int, seed: int) -> tf.data.Dataset:
    """Un-augmented, shuffled training batches for re-estimating BatchNorm statistics."""
    ds = tf.data.Dataset.from_tensor_slices(images).shuffle(len(images), seed=seed).batch(batch_size)
    return ds.map(lambda x: preprocess(x, arch), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
