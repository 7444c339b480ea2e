"""ROAD: RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML), a faithfulness score for heatmaps that does not leak the removed region's shape.

Removing pixels by painting them one colour (core.explain.faithfulness) tells a model *where* pixels were
removed: the mask's outline is itself evidence, so a score partly measures the mask's shape. ROAD removes
pixels by **noisy linear imputation**: each removed pixel becomes the weighted mean of its 8 neighbours
(1/6 for the 4 side neighbours, 1/12 for the 4 diagonal ones, as in the paper's code), all removed pixels
solved together as one sparse linear system per channel (a removed pixel's neighbours may be removed too),
plus small Gaussian noise (`NOISE` of the pixel range). The image stays smooth where pixels were removed, so
only the removed information is missing, not a visible hole.

Two orders at each removal fraction f in `FRACTIONS` (10%, 20%, ..., 90%, the percentiles pytorch-grad-cam's
`metrics/road.py` uses): MoRF removes the f most relevant pixels (a faithful map: confidence falls fast), LeRF
the f least relevant (a faithful map: confidence stays). The confidence is the explained class's softmax
probability. The combined score is pytorch-grad-cam's `ROADCombined`: the mean over fractions of
(LeRF confidence - MoRF confidence) / 2, for each image (the unremoved confidence cancels), in [-0.5, 0.5];
> 0 means the pixels the map calls relevant matter more to the model than those it calls irrelevant. The
paper itself reports the MoRF and LeRF curves (and their areas); the combined difference is one number to rank
maps by, which is what choosing a default needs.

Pixels are ranked by the map with a stable sort, so a constant map removes the same pixels in both orders and
scores exactly 0. Noise is seeded by fraction alone, so two maps (and both orders) are compared on the same noise.

Batch-friendly: each fraction is one call of `predict` for every image in both orders (the imputation is one
small sparse system per image and order). Numpy and scipy only (no TensorFlow): `predict` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import splu

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NOISE = 0.01  # standard deviation of the imputation noise, as a share of the pixel range (255)
SEED = 0
# (row offset, column offset, weight): side neighbours 1/6, diagonal ones 1/12 (they sum to 1)
NEIGHBOURS = tuple((dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))

PredictFn = Callable[[np.ndarray], np.ndarray]  # uint8 (N, S, S, 3) -> probabilities (N, n_classes)


def impute(images: np.ndarray, removed: np.ndarray, noise: float = NOISE, seed: int | None = SEED) -> np.ndarray:
    """Fill the `removed` pixels (N, H, W) bool of `images` (N, H, W, C) by noisy linear imputation.

    Every removed pixel takes the weighted mean of its in-image neighbours (removed neighbours are unknowns of
    the same system), then N(0, noise * 255) noise; kept pixels are unchanged. Returns float32 in the images'
    range (clipped to 0..255). ValueError when an image has every pixel removed (nothing to impute from)."""
    images = np.asarray(images)
    removed = np.asarray(removed, bool)
    if images.ndim != 4 or removed.shape != images.shape[:3]:
        raise ValueError(f"removed {removed.shape} does not match images {images.shape}")
    if removed.reshape(len(removed), -1).all(axis=1).any():
        raise ValueError("an image has every pixel removed: nothing to impute from")
    out = images.astype(np.float64)
    rng = np.random.default_rng(seed)
    for image, mask in zip(out, removed):  # one small system per image: SuperLU is faster on these than on one
        if mask.any():                      # block-diagonal system of them all
            filled = _solve(image, mask)
            if noise:
                filled += rng.normal(0.0, noise * 255.0, filled.shape)
            image[mask] = filled
    return np.clip(out, 0.0, 255.0).astype(np.float32)


def _solve(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """(M, C) values of the M removed pixels (row-major order) of one (H, W, C) image: for each, its diagonal
    weight (the weights of its in-image neighbours) times its value minus its removed neighbours' weighted
    values equals its kept neighbours' weighted values. The matrix is symmetric and diagonally dominant."""
    h, w, c = image.shape
    values = image.reshape(-1, c)
    flat = removed.reshape(-1)
    unknown = np.flatnonzero(flat)
    variable = np.full(flat.size, -1, np.int64)
    variable[unknown] = np.arange(unknown.size)
    y, x = np.divmod(unknown, w)
    eq = np.arange(unknown.size)
    rows, cols, vals = [eq], [eq], []
    diagonal = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, c))
    for dy, dx, weight in NEIGHBOURS:
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diagonal[inside] += weight
        neighbour = ny[inside] * w + nx[inside]
        also_removed = flat[neighbour]
        rows.append(eq[inside][also_removed])
        cols.append(variable[neighbour[also_removed]])
        vals.append(np.full(int(also_removed.sum()), -weight))
        rhs[eq[inside][~also_removed]] += weight * values[neighbour[~also_removed]]  # one entry per pixel here
    system = sparse.csc_matrix((np.concatenate([diagonal, *vals]), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(unknown.size, unknown.size))
    return splu(system, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                options={"SymmetricMode": True}).solve(rhs)


def removal_masks(heatmaps: np.ndarray, fraction: float, most_relevant: bool) -> np.ndarray:
    """(N, H, W) bool: exactly round(fraction * H * W) pixels of each map, its highest (MoRF) or lowest (LeRF)
    values; ties in raster order in both orders, so a constant map removes the same pixels either way."""
    heatmaps = np.asarray(heatmaps, np.float64)
    n = heatmaps.shape[0]
    flat = heatmaps.reshape(n, -1)
    k = int(round(fraction * flat.shape[1]))
    order = np.argsort(-flat if most_relevant else flat, axis=1, kind="stable")[:, :k]
    mask = np.zeros(flat.shape, bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(heatmaps.shape)


@dataclass(frozen=True)
class Road:
    """ROAD of N maps: the explained class's probability before removal and after each fraction's removal."""

    fractions: tuple[float, ...]
    probability: np.ndarray  # (N,) before removal
    morf: np.ndarray  # (F, N) after removing the most relevant fraction
    lerf: np.ndarray  # (F, N) after removing the least relevant fraction

    @property
    def combined(self) -> np.ndarray:
        """(N,) mean over fractions of (LeRF - MoRF) / 2, pytorch-grad-cam's ROADCombined: > 0 is faithful."""
        return np.mean(self.lerf - self.morf, axis=0) / 2.0

    @property
    def score(self) -> float:
        """The combined score averaged over the images."""
        return float(np.mean(self.combined)) if self.probability.size else 0.0


def road(predict: PredictFn, images: np.ndarray, heatmaps: np.ndarray, targets: np.ndarray,
         fractions: tuple[float, ...] = FRACTIONS, noise: float = NOISE, seed: int = SEED,
         probability: np.ndarray | None = None) -> Road:
    """ROAD of `heatmaps` (N, H, W) for uint8 `images` (N, H, W, 3) and the classes `targets` (N,) they explain.

    One `predict` call for the originals (unless their `probability` (N,) for the targets is given, as when
    several maps of the same images are scored), then one per fraction with the MoRF and LeRF images of every
    map."""
    images = np.asarray(images)
    heatmaps = np.asarray(heatmaps)
    targets = np.asarray(targets, np.int64).reshape(-1)
    n = len(images)
    if heatmaps.shape != images.shape[:3]:
        raise ValueError(f"heatmaps {heatmaps.shape} do not match images {images.shape[:3]}")
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} images")
    if not fractions or not all(0.0 < f < 1.0 for f in fractions):
        raise ValueError("removal fractions must be in (0, 1)")
    rows = np.arange(n)
    if probability is None:
        probability = np.asarray(predict(images))[rows, targets] if n else np.zeros(0)
    morf, lerf = [], []
    for i, fraction in enumerate(fractions):
        both = np.concatenate([
            impute(images, removal_masks(heatmaps, fraction, True), noise, seed=_seed(seed, i)),
            impute(images, removal_masks(heatmaps, fraction, False), noise, seed=_seed(seed, i))])
        p = np.asarray(predict(np.round(both).astype(np.uint8))) if n else np.zeros((0, 1))
        morf.append(p[:n][rows, targets])
        lerf.append(p[n:][rows, targets])
    return Road(tuple(fractions), np.asarray(probability, np.float64),
                np.asarray(morf, np.float64).reshape(len(fractions), n),
                np.asarray(lerf, np.float64).reshape(len(fractions), n))


def _seed(seed: int, fraction_index: int) -> int:
    """The noise of one fraction: the same for both orders and every map, so equal removals give equal images."""
    return int(np.random.SeedSequence([seed, fraction_index]).generate_state(1)[0])


# -- baselines (as pytorch-grad-cam's CAM-metrics tutorial compares against) --------------------------------
def sobel_maps(images: np.ndarray) -> np.ndarray:
    """(N, H, W) edge strength of each image's grey levels (Sobel gradient magnitude), scaled to [0, 1]: a map
    that knows the image but nothing of the model."""
    grey = np.asarray(images, np.float64) @ np.array([0.299, 0.587, 0.114])
    gy = ndimage.sobel(grey, axis=1, mode="nearest")
    gx = ndimage.sobel(grey, axis=2, mode="nearest")
    magnitude = np.hypot(gx, gy)
    top = magnitude.reshape(len(magnitude), -1).max(axis=1) if len(magnitude) else np.zeros(0)
    return (magnitude / np.maximum(top, 1e-12)[:, None, None]).astype(np.float32)


def random_maps(shape: tuple[int, int], n: int, seed: int = SEED) -> np.ndarray:
    """(n, H, W) smooth random blobs, seeded: the same fields core.explain.faithfulness draws its random masks
    from, so both scores compare a map with the same kind of chance."""
    from core.explain.faithfulness import random_fields  # noqa: PLC0415

    return random_fields(shape, n, seed)
