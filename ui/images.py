"""Cell images made big enough to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image


def enlarge(image: np.ndarray, px: int) -> np.ndarray:
    """An (H, W[, C]) uint8 image scaled so its longer side is about `px`: small images (at least 2x) by a
    whole factor with nearest neighbours, so each pixel stays a crisp square; others, also larger ones, to
    exactly `px` with bicubic resampling."""
    h, w = image.shape[:2]
    factor = px / max(h, w)
    if factor >= 2:
        k = int(factor)
        return np.repeat(np.repeat(image, k, axis=0), k, axis=1)
    if round(max(h, w) * factor) == max(h, w):
        return image
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
