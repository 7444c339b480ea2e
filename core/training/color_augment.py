"""Colour, stain, blur and noise augmentation of training batches, as batched TensorFlow ops.

Every function takes a float RGB batch (B, H, W, 3) in [0, 255], a strength (the RunConfig setting of the same
name, `aug_<name>`) and a stateless seed; each image draws its own random amount, so the same seed gives the
same batch. Results are clipped to [0, 255]. `augment` runs the steps whose strength is not 0; a step at 0
adds nothing to the graph, not even an op.

- stain: colour deconvolution into haematoxylin, eosin and a residual by the Ruifrok & Johnston stain
  vectors (optical density as in core.validation.stain: OD = -ln((I + 1) / (IO + 1)), IO = 255); each image's
  haematoxylin and eosin concentrations are scaled by U[1-s, 1+s] and shifted by U[-s, s] x STAIN_BIAS, and
  the residual is kept (Tellez et al. 2018, 2019; the scale-and-shift of TIAToolbox's and StainTools'
  StainAugmentor). Another lab stains more or less heavily and with a different mix: that is what this draws.
- brightness, contrast, saturation, hue: torchvision's ColorJitter, image by image: factors U[max(0, 1-x),
  1+x] (brightness multiplies; contrast blends with the image's mean grey; saturation blends each pixel with
  its own grey, grey = 0.2989 R + 0.587 G + 0.114 B), hue shifted by U[-h, h] turns in HSV; each result
  clipped, as torchvision does. SADA (Li et al. 2024) used ColorJitter(0.2, 0.25, 0.25, 0.15) on blood cells:
  aug_brightness 0.2, aug_contrast 0.25, aug_saturation 0.25, aug_hue 0.15 here mean exactly that.
- blur: Gaussian blur with sigma U[0, b] pixels (edges mirrored), as a slightly defocused microscope gives.
- noise: additive Gaussian noise with standard deviation U[0, n] x 255.

Order (fixed): stain -> blur -> brightness -> contrast -> saturation -> hue -> noise: the slide's stain, the
optics' defocus, the camera's colour response, then pixel noise on the image as stored (last, so its strength
is what the setting says, not rescaled by a contrast factor drawn after it). torchvision draws the order of its
four jitters at random; here it is fixed because, before clipping, brightness, contrast and saturation commute
exactly (each is linear, and the grey of a blend is the blend of the greys), and so does blur; only hue, a turn
in HSV, does not, and it comes last of the four as in torchvision's own listing. A random order per image would
only move the clips and the hue turn, for computing every jitter at every position of a batched graph.

References: Ruifrok & Johnston 2001, Anal Quant Cytol Histol 23:291-299 (colour deconvolution). Tellez et al.
2018, IEEE TMI 37:2126-2136, and 2019, Med Image Anal 58:101544 (H&E stain augmentation, scale and shift of
each stain's concentration). Li et al. 2024, "Stain-aware domain alignment for imbalance blood cell
classification" (SADA, arXiv:2412.02976: stain-space augmentation plus ColorJitter over PBC, Raabin, Zheng,
LDWBC).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import tensorflow as tf

from core.validation.stain import IO

# Ruifrok & Johnston (2001), Table 1: the optical-density colour of haematoxylin and of eosin (unit vectors).
# In a May-Grünwald-Giemsa smear they stand for the purple (nuclei) and the pink (cytoplasm, red cells); the
# third row, their cross product (as scikit-image's rgb_from_hex), carries what neither stain explains and is
# never changed.
HAEMATOXYLIN_OD = (0.65, 0.70, 0.29)
EOSIN_OD = (0.07, 0.99, 0.11)
# The shift's scale, in optical density: strength s shifts each concentration by up to s/2. With s = 0.4 this is
# TIAToolbox's StainAugmentor default (scale U[0.6, 1.4], shift U[-0.2, 0.2]), its implementation of Tellez et
# al. 2018; on PBC images a nucleus holds about 1-2 OD of haematoxylin and a red cell about 0.5 of eosin, so
# the shift stays small beside the scale for the strengths worth training with (0.1-0.4).
STAIN_BIAS = 0.5
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601 luma)
BLUR_TRUNCATE = 3.0  # the Gaussian kernel reaches this many sigmas of the largest blur



def _stain_matrices() -> tuple[np.ndarray, np.ndarray]:
    h, e = (np.asarray(v, np.float64) / np.linalg.norm(v) for v in (HAEMATOXYLIN_OD, EOSIN_OD))
    residual = np.cross(h, e)
    rgb_from_stains = np.stack([h, e, residual / np.linalg.norm(residual)])  # rows: OD of one unit of each
    return rgb_from_stains.astype(np.float32), np.linalg.inv(rgb_from_stains).astype(np.float32)


RGB_FROM_STAINS, STAINS_FROM_RGB = _stain_matrices()


def _uniform(seed: tf.Tensor, batch: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform([batch], seed, low, high)


def _per_image(values: tf.Tensor) -> tf.Tensor:
    return tf.reshape(values, [-1, 1, 1, 1])


def _clip(images: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(images, 0.0, 255.0)


def _jitter_factors(seed: tf.Tensor, batch: tf.Tensor, strength: float) -> tf.Tensor:
    """ColorJitter's factor: U[max(0, 1-x), 1+x] per image."""
    return _uniform(seed, batch, max(0.0, 1.0 - strength), 1.0 + strength)


def grey(images: tf.Tensor) -> tf.Tensor:
    """(B, H, W, 1) luma with torchvision's weights (three slices: half the time of a reduce over channels)."""
    r, g, b = GREY_WEIGHTS
    return images[..., 0:1] * r + images[..., 1:2] * g + images[..., 2:3] * b


def stain_jitter(images: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    """Each image's haematoxylin and eosin concentrations scaled by U[1-s, 1+s], shifted by U[-s, s] x
    STAIN_BIAS (optical density); the residual is kept. Done as one 3x3 map of optical density per image."""
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    ones, zeros = tf.ones([batch]), tf.zeros([batch])
    scale = tf.stack([_uniform(seeds[0], batch, 1 - strength, 1 + strength),
                      _uniform(seeds[1], batch, 1 - strength, 1 + strength), ones], axis=1)  # (B, 3)
    shift = tf.stack([_uniform(seeds[2], batch, -strength, strength),
                      _uniform(seeds[3], batch, -strength, strength), zeros], axis=1) * STAIN_BIAS
    # od' = ((od @ S^-1) * scale + shift) @ S  ==  od @ (S^-1 diag(scale) S) + shift @ S
    linear = tf.einsum("ij,bj,jk->bik", tf.constant(STAINS_FROM_RGB), scale, tf.constant(RGB_FROM_STAINS))
    offset = tf.einsum("bj,jk->bk", shift, tf.constant(RGB_FROM_STAINS))
    od = -tf.math.log((images + 1.0) / (IO + 1.0))
    od = tf.einsum("bhwi,bik->bhwk", od, linear) + offset[:, None, None, :]
    return _clip((IO + 1.0) * tf.exp(-od) - 1.0)


def brightness_jitter(images: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    return _clip(images * _per_image(_jitter_factors(seed, tf.shape(images)[0], strength)))


def contrast_jitter(images: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    factor = _per_image(_jitter_factors(seed, tf.shape(images)[0], strength))
    mean = tf.reduce_mean(grey(images), axis=[1, 2, 3], keepdims=True)
    return _clip(factor * images + (1.0 - factor) * mean)


def saturation_jitter(images: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    factor = _per_image(_jitter_factors(seed, tf.shape(images)[0], strength))
    return _clip(factor * images + (1.0 - factor) * grey(images))


def hue_jitter(images: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    """Hue turned by U[-h, h] of the colour circle in HSV (saturation and value kept)."""
    shift = _per_image(_uniform(seed, tf.shape(images)[0], -strength, strength))
    hsv = tf.image.rgb_to_hsv(images / 255.0)
    turned = tf.concat([tf.math.floormod(hsv[..., :1] + shift, 1.0), hsv[..., 1:]], axis=-1)
    return _clip(tf.image.hsv_to_rgb(turned) * 255.0)


def gaussian_blur(images: tf.Tensor, max_sigma: float, seed: tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur, sigma U[0, b] pixels per image; the kernel spans BLUR_TRUNCATE x b, edges
    mirrored. A sigma near 0 gives a one-tap kernel, the image itself. Each image has its own kernel, so the
    batch is folded into the channels of one image and blurred by two depthwise convolutions."""
    height, width = images.shape[1], images.shape[2]
    radius = max(1, min(math.ceil(BLUR_TRUNCATE * max_sigma), height - 1, width - 1))
    batch = tf.shape(images)[0]
    sigma = tf.maximum(_uniform(seed, batch, 0.0, max_sigma), 1e-3)
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-tf.square(taps)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    weights = tf.transpose(tf.repeat(weights / tf.reduce_sum(weights, axis=1, keepdims=True), 3, axis=0))
    folded = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, height, width, -1])  # channel = image * 3 + c
    folded = tf.pad(folded, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    folded = tf.nn.depthwise_conv2d(folded, weights[None, :, :, None], [1, 1, 1, 1], "VALID")  # along x
    folded = tf.nn.depthwise_conv2d(folded, weights[:, None, :, None], [1, 1, 1, 1], "VALID")  # along y
    return _clip(tf.transpose(tf.reshape(folded, [height, width, batch, 3]), [2, 0, 1, 3]))


def gaussian_noise(images: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    """Additive Gaussian noise, standard deviation U[0, n] x 255 per image."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    std = _uniform(seeds[0], tf.shape(images)[0], 0.0, strength * 255.0)
    return _clip(images + _per_image(std) * tf.random.stateless_normal(tf.shape(images), seeds[1]))


# The steps in their order, by setting name (RunConfig.aug_<name>), each with its own random stream folded into
# the batch's seed: turning one step on or off leaves the others' random numbers (and the geometric
# transform's) unchanged.
STEPS = (("stain", 101, stain_jitter), ("blur", 102, gaussian_blur), ("brightness", 103, brightness_jitter),
         ("contrast", 104, contrast_jitter), ("saturation", 105, saturation_jitter), ("hue", 106, hue_jitter),
         ("noise", 107, gaussian_noise))
STEP_NAMES = tuple(name for name, _, _ in STEPS)


def augment(images: tf.Tensor, seed: tf.Tensor, strengths: Mapping[str, float]) -> tf.Tensor:
    """The steps whose strength is not 0, in the fixed order above; with none the images come back as given."""
    unknown = set(strengths) - set(STEP_NAMES)
    if unknown:
        raise ValueError(f"unknown colour augmentation {sorted(unknown)}; one of {', '.join(STEP_NAMES)}")
    for name, stream_id, step in STEPS:
        strength = float(strengths.get(name, 0.0))
        if strength:
            images = step(images, strength, tf.random.experimental.stateless_fold_in(seed, stream_id))
    return images
