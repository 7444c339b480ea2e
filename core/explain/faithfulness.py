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


def random_masks(shape: tuple[int, int], fraction: float, n: int, seed: int, grid: int = RANDOM_GRID) -> np.ndarray:
    """(n, H, W) boolean masks, each of round(fraction * H * W) pixels, reproducible for a seed.

    Each mask is the top `fraction` of a smooth random field (uniform noise on a `grid` x `grid` lattice,
    bilinearly upsampled): random blobs, shaped like what a CAM highlights. Scattered single pixels would
    be an unfair reference: salt-and-pepper noise over the whole cell is a far stronger change to a
    network than one masked region of the same area, so every map would look unfaithful against it.
    """
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        field = rng.random((grid, grid)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(field, "F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
        masks.append(top_mask(smooth + rng.random(shape) * 1e-6, fraction))  # tiny jitter breaks ties
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
    if heatmap.shape != image.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} does not match image {image.shape[:2]}")
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be in (0, 1)")
    masks = [top_mask(heatmap, fraction), *random_masks(heatmap.shape, fraction, n_random, seed)]
    batch = np.stack([image] + [apply_mask(image, m) for m in masks])
    p = np.asarray(predict(batch))[:, class_index]
    top_drop = float(p[0] - p[1])
    random_drop = float(np.mean(p[0] - p[2:]))
    return Faithfulness(float(p[0]), top_drop, random_drop, top_drop - random_drop, fraction)
