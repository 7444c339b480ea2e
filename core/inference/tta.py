"""Test-time augmentation: a model's softmax averaged over the 8 symmetries of the square (identity, the
three 90° turns, and each of those mirrored left-right), a blood cell having no up, down, left or right.

Reported beside the plain figures, never instead of them (metrics.json's "tta", `core evaluate --tta`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

N_TRANSFORMS = 8


def dihedral(images: np.ndarray, index: int) -> np.ndarray:
    """Transform `index` (0-7) of a (N, H, W, C) batch: turned `index % 4` quarter turns, then mirrored
    left-right when index >= 4."""
    out = np.rot90(images, index % 4, axes=(1, 2))
    if index >= 4:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def probabilities(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """The mean of `predict` (images -> (N, classes) probabilities) over the 8 transforms of `images`."""
    total = None
    for index in range(N_TRANSFORMS):
        p = np.asarray(predict(dihedral(images, index)), dtype=np.float64)
        total = p if total is None else total + p
    return (total / N_TRANSFORMS).astype(np.float32)
