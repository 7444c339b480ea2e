"""tf.data input pipelines: uint8 arrays -> shuffled, augmented, preprocessed batches.

Augmentation runs on whole batches of training images only (validation, test, inference and the BatchNorm
re-estimate see the images as they are). Every geometric change (shear, zoom, scale, flips, 90-degree turns) is
folded into one affine matrix per image and applied with a single projective-transform op; the colour, stain,
blur and noise changes (core.training.color_augment) follow it, before the backbone's preprocessing. Random
numbers come from stateless ops seeded by (run seed, step): the same seed gives the same batches. A setting at
0 (or False) adds nothing to the graph, so runs without the newer settings get exactly the batches they got
before those settings existed.

Shear is in radians (the study's text says +-0.2 rad; its `ImageDataGenerator(shear_range=0.2)` was
+-0.2 degrees, since Keras reads that argument in degrees).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import tensorflow as tf

from core.config import RunConfig
from core.models.preprocessing import preprocess
from core.training import color_augment
from core.validation.stain import BACKGROUND_PERCENT

AUTOTUNE = tf.data.AUTOTUNE
SCALE_STREAM = 6  # the scale factor's random stream, folded into the batch seed (the other draws split it in 6)


@dataclass(frozen=True)
class Augmentation:
    """The training-batch augmentation settings: each field is RunConfig's `aug_<field>` (its meaning there)."""

    shear: float = 0.2  # radians
    zoom: float = 0.2  # per axis, factor in [1-z, 1+z]
    hflip: bool = True
    vflip: bool = False
    rot90: bool = False
    scale: float = 0.0  # isotropic: the cell's size times a log-uniform factor in [1/(1+s), 1+s]
    # colour, stain, blur and noise strengths (core.training.color_augment.STEP_NAMES)
    stain: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    blur: float = 0.0
    noise: float = 0.0

    @classmethod
    def from_config(cls, c: RunConfig) -> "Augmentation":
        return cls(**{f.name: getattr(c, f"aug_{f.name}") for f in fields(cls)})

    @property
    def geometric(self) -> bool:
        return bool(self.shear or self.zoom or self.hflip or self.vflip or self.rot90 or self.scale)

    @property
    def colour(self) -> dict[str, float]:
        """The colour, stain, blur and noise steps that are on, by name, with their strengths."""
        return {name: getattr(self, name) for name in color_augment.STEP_NAMES if getattr(self, name)}

    @property
    def active(self) -> bool:
        return self.geometric or bool(self.colour)


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
    if aug.scale:
        # The cell drawn f times its size samples the input 1/f as far from the centre. Its own random stream
        # (folded in, not a seventh split) leaves the other draws, and so every run without scale, unchanged.
        log_max = math.log1p(aug.scale)
        size_factor = tf.exp(tf.random.stateless_uniform(
            [batch], tf.random.experimental.stateless_fold_in(seed, SCALE_STREAM), -log_max, log_max))
        m = m / size_factor[:, None, None]
    centre = tf.fill([batch, 2, 1], (size - 1) / 2.0)
    offset = centre - m @ centre
    return tf.concat([tf.reshape(m[:, 0, :], [batch, 2]), offset[:, 0],
                      tf.reshape(m[:, 1, :], [batch, 2]), offset[:, 1], tf.zeros([batch, 2])], axis=1)


def background_colours(images: tf.Tensor) -> tf.Tensor:
    """(B, 3): each image's background colour, the mean of its brightest BACKGROUND_PERCENT of pixels (the
    rule core.validation.stain.background_colour applies to a set of images), read on every other row and
    column: the same colour within about a grey level, for half the time."""
    images = images[:, ::2, ::2]
    pixels = tf.reshape(images, [tf.shape(images)[0], -1, 3])
    k = max(1, images.shape[1] * images.shape[2] * BACKGROUND_PERCENT // 100)
    _, brightest = tf.math.top_k(tf.reduce_mean(pixels, axis=-1), k)
    return tf.reduce_mean(tf.gather(pixels, brightest, batch_dims=1), axis=1)


def geometric_transform(images: tf.Tensor, aug: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Float [0,255] batch (B,H,W,3) -> the batch warped by one affine matrix per image.

    Without scale augmentation, edges are filled by the nearest pixel, as Keras did (and as every run before
    the setting was made). With it, a cell drawn smaller leaves a wide border to fill, and the three ways to
    fill it are not equal: the nearest pixel smears the frame's edge outward in streaks, and where the white
    cell touches the frame (common in the 200 px MedMNIST crop) it paints its nucleus or cytoplasm as bands to
    the border; reflection mirrors the image, so a cell cut by the frame becomes a doubled, symmetric shape and
    a shrunken frame shows mirrored copies of the whole cell, morphology that no smear has; a constant colour
    invents nothing. So the border takes each image's own background colour (background_colours: the smear's
    beige between the cells, whatever the lab's lighting), the view of a sparse part of the same smear. The
    warp is linear, so warping (image - background) with a zero fill and adding the background back is the
    same warp inside the frame and that colour outside.
    """
    batch, size = tf.shape(images)[0], images.shape[1]
    transforms = augmentation_matrices(batch, size, aug, seed)

    def warp(x: tf.Tensor, fill_mode: str) -> tf.Tensor:
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=tf.shape(images)[1:3],
            fill_value=0.0, interpolation="BILINEAR", fill_mode=fill_mode)
        out.set_shape(images.shape)  # in a graph with no fixed batch size the op's own shape loses H and W
        return out

    if not aug.scale:
        return warp(images, "NEAREST")
    background = background_colours(images)[:, None, None, :]
    return warp(images - background, "CONSTANT") + background


def augment_batch(images: tf.Tensor, aug: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Float [0,255] batch (B,H,W,3) -> augmented batch: the geometric transform, then the colour, stain, blur
    and noise steps that are on; a batch with nothing on comes back as given."""
    if aug.geometric:
        images = geometric_transform(images, aug, seed)
    if aug.colour:
        images = color_augment.augment(images, seed, aug.colour)
    return images


def _map_batches(ds: tf.data.Dataset, prepare) -> tf.data.Dataset:
    """`ds.map(prepare)`, run where it costs the model least.

    On a GPU the processor's cores are free while the accelerator trains, so batches are prepared in parallel
    and ahead, as many at once and as far ahead as tf.data's autotuner likes. On a CPU the model's own steps
    use the same cores: a plain map, one batch prepared ahead (`prefetch(1)`), and tf.data's autotuner off.
    Measured on 2 cores at 64 px, batch 32, median step, one fit per process: ResNet-50 in mixed bfloat16 trained
    at 62 images/s with the explicit autotuned map and prefetch, 82 with the plain map, 84 on one constant
    batch with no input at all; forcing the map fully in line (synchronous, no prefetch) was no faster for
    ResNet-50 (78-81) and slower for MobileNetV3-Small (520-650 against 640-720, one core per operation,
    core.training.threads).
    Why the autotuner is off on a CPU: its optimisation thread sleeps in periods that double up to 60 s, and
    deleting an iterator waits for the period under way to end. fit() deletes its iterator when it ends: the
    quick-28 preset's fit returned 57.9 s after its last epoch (3 epochs), MobileNetV3-Small's at 64 px 33.8 s
    after, and each BatchNorm re-estimate (an iterator left part-read) waited up to 5.3 s: random, by when
    the iterator happened to be deleted, so a job's time left could not foresee it. Without it, no wait in 8 of 8
    fits; speed the same within noise (3 epochs, images/s over the run: MobileNetV3-Small 64 px 578 with the
    autotuner, 576 like this, 555 without the prefetch; quick-28's second and third epochs 419/440 with, 410/397
    like this). The batches are identical either way (every random draw is seeded by the step), so this changes
    speed only.
    """
    if tf.config.list_physical_devices("GPU"):
        return ds.map(prepare, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.map(prepare).prefetch(1).with_options(options)


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

    return _map_batches(ds, prepare)


def inference_dataset(images: np.ndarray, arch: str, batch_size: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    return _map_batches(ds, lambda x: preprocess(x, arch))


def bn_statistics_dataset(images: np.ndarray, arch: str, batch_size: int, seed: int) -> tf.data.Dataset:
    """Un-augmented, shuffled training batches for re-estimating BatchNorm statistics."""
    ds = tf.data.Dataset.from_tensor_slices(images).shuffle(len(images), seed=seed).batch(batch_size)
    return _map_batches(ds, lambda x: preprocess(x, arch))
