"""How faithful is a heatmap? Mask what it highlights and see whether the model's confidence drops.

Deletion test at one fraction (after the "remove and see" metrics of pytorch-grad-cam's `metrics/`): the
`fraction` (default 20%) of pixels with the highest heatmap values are replaced, and the explained class's
probability is compared with the unmasked image's. The same number of pixels in randomly placed blobs
gives the reference drop (mean over `n_random` seeded masks; blobs rather than scattered pixels, so both
masks change the image in the same way and differ only in where). A faithful map's drop is clearly larger
than the random one: `difference = top_drop - random_drop` > 0.

Masked pixels take the image's own mean colour (per channel), not black or a blur: black is far outside
the training images' colours (a bright smear background), so it would change the prediction wherever it
is put; a blur keeps the coarse colour a small model can still use. The mean colour removes the detail
and keeps the overall colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

FRACTION = 0.2
N_RANDOM = 5
SEED = 0
RANDOM_GRID = 4  # random masks are blobs from a 4x4 random field (see random_masks)

PredictFn = Callable[[np.ndarray], np.ndarray]  # uint8 (N, S, S, 3) -> probabilities (N, n_classes)


@dataclass(frozen=True)
class Faithfulness:
    probability: float  # the explained class's probability on the unmasked image
    top_drop: float  # probability lost when the most-highlighted pixels are masked
    random_drop: float  # mean loss over random masks of the same size
    difference: float  # top_drop - random_drop: > 0 means the map points at what the model uses
    fraction: float


def top_mask(heatmap: np.ndarray, fraction: float = FRACTION) -> np.ndarray:
    """Boolean (H, W) mask of exactly round(fraction * H * W) pixels with the highest heat."""
    flat = heatmap.ravel()
    k = int(round(fraction * flat.size))
    mask = np.zeros(flat.size, bool)
    if k:
        mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(heatmap.shape)


def random_fields(shape: tuple[int, int], n: int, seed: int, grid: int = RANDOM_GRID) -> np.ndarray:
    """(n, H, W) float32 smooth random fields, reproducible for a seed: uniform noise on a `grid` x `grid`
    lattice, bilinearly upsampled (plus a tiny jitter that breaks ties). Random blobs, shaped like what a CAM
    highlights: the random reference of both this score and ROAD (core.explain.road)."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    fields = []
    for _ in range(n):
        field = rng.random((grid, grid)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(field, "F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
        fields.append(smooth + rng.random(shape) * 1e-6)
    return np.stack(fields).astype(np.float32) if fields else np.zeros((0, *shape), np.float32)


def random_masks(shape: tuple[int, int], fraction: float, n: int, seed: int, grid: int = RANDOM_GRID) -> np.ndarray:
    """(n, H, W) boolean masks, each of round(fraction * H * W) pixels, reproducible for a seed.

    Each mask is the top `fraction` of a smooth random field (`random_fields`): random blobs, shaped like what
    a CAM highlights. Scattered single pixels would be an unfair reference: salt-and-pepper noise over the
    whole cell is a far stronger change to a network than one masked region of the same area, so every map
    would look unfaithful against it.
    """
    masks = [top_mask(field, fraction) for field in random_fields(shape, n, seed, grid)]
    return np.stack(masks) if masks else np.zeros((0, *shape), bool)


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace the masked pixels of a uint8 (H, W, 3) image by its mean colour."""
    out = image.copy()
    out[mask] = np.round(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    return out


def faithfulness(predict: PredictFn, image: np.ndarray, heatmap: np.ndarray, class_index: int,
                 fraction: float = FRACTION, n_random: int = N_RANDOM, seed: int = SEED) -> Faithfulness:
    """Score one heatmap (H, W) of one uint8 image (H, W, 3), as the model sees it, for `class_index`.

    All masked versions go through `predict` as one batch.
    """
    return faithfulness_many(predict, image[None], heatmap[None], [class_index], fraction, n_random, seed)[0]


def faithfulness_many(predict: PredictFn, images: np.ndarray, heatmaps: np.ndarray, class_indices,
                      fraction: float = FRACTION, n_random: int = N_RANDOM, seed: int = SEED,
                      reference: "Reference | None" = None) -> list[Faithfulness]:
    """`faithfulness` of N maps (N, H, W) of N uint8 images (N, H, W, 3), each for its class, with one call of
    `predict` for every masked version of every image (the same seeded random masks for each image).

    `reference`: the unmasked and random-masked probabilities of these images (`reference`), when several maps
    of the same images are scored: then only the top-masked images are predicted."""
    images, heatmaps = np.asarray(images), np.asarray(heatmaps)
    if heatmaps.shape != images.shape[:3]:
        raise ValueError(f"heatmap {heatmaps.shape[1:]} does not match image {images.shape[1:3]}")
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be in (0, 1)")
    if not len(images):
        return []
    targets = np.asarray(class_indices, np.int64).reshape(-1)
    top = [apply_mask(image, top_mask(heatmap, fraction)) for image, heatmap in zip(images, heatmaps)]
    if reference is None:
        randoms = random_masks(heatmaps.shape[1:], fraction, n_random, seed)
        batch = np.stack([version for image, masked in zip(images, top)
                          for version in (image, masked, *(apply_mask(image, m) for m in randoms))])
        p = np.asarray(predict(batch)).reshape(len(images), 2 + n_random, -1)[np.arange(len(images)), :, targets]
        probability, top_p, random_drop = p[:, 0], p[:, 1], np.mean(p[:, :1] - p[:, 2:], axis=1)
    else:
        probability, random_drop = reference.probability, reference.random_drop
        top_p = np.asarray(predict(np.stack(top)))[np.arange(len(images)), targets]
    return [Faithfulness(float(p0), float(p0 - pt), float(rd), float(p0 - pt - rd), fraction)
            for p0, pt, rd in zip(probability, top_p, random_drop)]


@dataclass(frozen=True)
class Reference:
    """What every map of the same images shares: each image's probability unmasked and its mean drop under
    the seeded random masks."""

    probability: np.ndarray  # (N,)
    random_drop: np.ndarray  # (N,)


def reference(predict: PredictFn, images: np.ndarray, class_indices, fraction: float = FRACTION,
              n_random: int = N_RANDOM, seed: int = SEED) -> Reference:
    """The unmasked and random-masked probabilities of N images for their classes, in one `predict` call."""
    images = np.asarray(images)
    targets = np.asarray(class_indices, np.int64).reshape(-1)
    randoms = random_masks(images.shape[1:3], fraction, n_random, seed)
    batch = np.stack([version for image in images for version in (image, *(apply_mask(image, m) for m in randoms))])
    p = np.asarray(predict(batch)).reshape(len(images), 1 + n_random, -1)[np.arange(len(images)), :, targets]
    return Reference(p[:, 0], np.mean(p[:, :1] - p[:, 1:], axis=1))
