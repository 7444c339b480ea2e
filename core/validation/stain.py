"""Stain (colour) normalisation of cell images to a run's training set: Reinhard and Macenko.

Labs stain and photograph smears differently, so a model trained on one lab's colours may see another
lab's cells as something else. Both methods bring an image's colours to those of the training images:

- Reinhard (Reinhard et al. 2001): in CIE L*a*b*, each channel of an image is shifted and scaled so that its
  mean and standard deviation equal the training set's (the mean of the training images' per-image means
  and standard deviations).
- Macenko (Macenko et al. 2009): pixels are taken to optical density, the two stain colour vectors of a
  set of images are estimated from the plane of its two main directions, and each pixel's stain
  concentrations are re-rendered with the training set's stain vectors and concentration scale. Written for
  H&E on a white background, it is adapted here to blood smears: optical density is taken relative to the
  smear's own (beige) background colour, estimated from the brightest pixels, and the part of each pixel
  the two stains do not explain is kept. It treats a Romanowsky stain's purple (nuclei) and pink
  (cytoplasm, red cells) as its two stains.

The training-set statistics are computed once per run from a sample of its training images and cached in
`<run>/stain_stats.json`. Everything here is NumPy and OpenCV: no TensorFlow.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import UserFacingError

METHODS = ("none", "reinhard", "macenko")
METHOD_TITLES = {"none": "None", "reinhard": "Reinhard", "macenko": "Macenko"}
STATS_FILE = "stain_stats.json"
STATS_VERSION = 2
SAMPLE_IMAGES = 1000  # training images the statistics are computed from
MACENKO_FIT_IMAGES = 300
IO = 255.0  # transmitted light intensity of a white background
BETA = 0.15  # optical density below which a pixel counts as background
ALPHA = 1.0  # percentile of the stain angles taken as the extreme stain vectors
MIN_STAINED_PIXELS = 20
BACKGROUND_PERCENT = 10  # the brightest pixels taken as background


class StainError(UserFacingError, ValueError):
    pass


# -- Reinhard -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabStats:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabStats":
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


def _batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB images, got {images.shape}")
    return images


def to_lab(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> float32 L*a*b* (L 0..100, a and b about -127..127)."""
    images = _batch(images)
    n, h, w, _ = images.shape
    flat = images.reshape(n * h, w, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(n, h, w, 3)


def from_lab(lab: np.ndarray) -> np.ndarray:
    n, h, w, _ = lab.shape
    rgb = cv2.cvtColor(lab.reshape(n * h, w, 3).astype(np.float32), cv2.COLOR_LAB2RGB).reshape(n, h, w, 3)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def lab_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image L*a*b* channel means and standard deviations, each (N, 3)."""
    lab = to_lab(images)
    return lab.mean(axis=(1, 2)), lab.std(axis=(1, 2))


def fit_reinhard(images: np.ndarray) -> LabStats:
    """The target: the mean over images of their per-image L*a*b* means and standard deviations."""
    mean, std = lab_moments(images)
    return LabStats(tuple(float(v) for v in mean.mean(0)), tuple(float(v) for v in std.mean(0)))


def reinhard(images: np.ndarray, target: LabStats) -> np.ndarray:
    """Each image's L*a*b* channels moved to the target mean and standard deviation; uint8 out."""
    images = _batch(images)
    lab = to_lab(images)
    mean = lab.mean(axis=(1, 2), keepdims=True)
    std = lab.std(axis=(1, 2), keepdims=True)
    scale = np.asarray(target.std, np.float32) / np.maximum(std, 1e-6)
    out = (lab - mean) * scale + np.asarray(target.mean, np.float32)
    return from_lab(out)


# -- Macenko --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StainVectors:
    matrix: tuple[tuple[float, float], ...]  # (3, 2): the two stains' unit optical-density vectors (columns)
    max_concentration: tuple[float, float]  # 99th percentile of each stain's concentration
    background: tuple[float, float, float]  # RGB of the unstained background (the brightest pixels)

    def to_dict(self) -> dict[str, Any]:
        return {"matrix": [list(r) for r in self.matrix], "max_concentration": list(self.max_concentration),
                "background": list(self.background)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StainVectors":
        return cls(tuple(tuple(float(v) for v in row) for row in d["matrix"]),
                   tuple(float(v) for v in d["max_concentration"]), tuple(float(v) for v in d["background"]))


def background_colour(images: np.ndarray) -> np.ndarray:
    """The mean colour of the brightest 10% of pixels: the smear's background, which is rarely white."""
    px = images.reshape(-1, 3).astype(np.float64)
    lum = px.mean(axis=1)
    return px[lum >= np.percentile(lum, 100 - BACKGROUND_PERCENT)].mean(axis=0)


def optical_density(rgb: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB (..., 3) -> optical density (M, 3) relative to the background colour, one row per pixel."""
    io = np.full(3, IO) if background is None else np.asarray(background, np.float64)
    return -np.log(np.clip((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / (io + 1.0), 1e-6, None))


def _stain_matrix(od: np.ndarray) -> np.ndarray:
    stained = od[~np.any(od < BETA, axis=1)]
    if len(stained) < MIN_STAINED_PIXELS:
        raise StainError(f"only {len(stained)} stained pixels: too few to estimate stain colours")
    _, vectors = np.linalg.eigh(np.cov(stained.T))
    plane = vectors[:, 1:3]  # the two largest directions
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # eigenvectors have no fixed sign
    projected = stained @ plane
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(phi, ALPHA), np.percentile(phi, 100 - ALPHA)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    matrix = np.stack([v1, v2], axis=1) if v1[0] > v2[0] else np.stack([v2, v1], axis=1)  # purple first
    matrix = matrix * np.where(matrix.sum(axis=0) < 0, -1.0, 1.0)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=0, keepdims=True), 1e-12)


def _concentrations(od: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(matrix, od.T, rcond=None)[0]  # (2, M)


def fit_macenko(images: np.ndarray) -> StainVectors:
    """Background colour, stain vectors and concentration scale of a set of images taken together."""
    images = _batch(images)
    background = background_colour(images)
    od = optical_density(images, background)
    matrix = _stain_matrix(od)
    max_c = np.maximum(np.percentile(_concentrations(od, matrix), 99, axis=1), 1e-6)
    return StainVectors(tuple(tuple(float(v) for v in row) for row in matrix), (float(max_c[0]), float(max_c[1])),
                        tuple(float(v) for v in background))


def macenko(images: np.ndarray, target: StainVectors, source: StainVectors | None = None) -> np.ndarray:
    """Images re-rendered with the target's stains and background.

    The source stains are estimated from all the given images together (`source=None`): a lab's staining
    is a property of the lab, and one cell that fills its frame with one stain gives no estimate of the
    other. Each pixel's two stain concentrations are rescaled to the target's range and rendered with the
    target's vectors; what the two stains do not explain (the residual) is kept, so red cells and the
    background keep their texture. StainError if the images hold too little stain to estimate anything.
    """
    images = _batch(images)
    source = source or fit_macenko(images)
    n, h, w, _ = images.shape
    od = optical_density(images, np.asarray(source.background))
    matrix = np.asarray(source.matrix)
    conc = _concentrations(od, matrix)
    residual = od.T - matrix @ conc
    conc = conc * (np.asarray(target.max_concentration) / np.asarray(source.max_concentration))[:, None]
    new_od = np.asarray(target.matrix) @ conc + residual
    out = (np.asarray(target.background)[:, None] + 1.0) * np.exp(-new_od) - 1.0
    return np.clip(np.rint(out.T.reshape(n, h, w, 3)), 0, 255).astype(np.uint8)


# -- a run's training-set target, cached --------------------------------------------------------------

@dataclass(frozen=True)
class StainTarget:
    reinhard: LabStats
    macenko: StainVectors | None
    n_images: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATS_VERSION, "reinhard": self.reinhard.to_dict(),
                "macenko": self.macenko.to_dict() if self.macenko else None,
                "n_images": self.n_images, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StainTarget":
        if d.get("version") != STATS_VERSION:
            raise ValueError("stain statistics from another version")
        return cls(LabStats.from_dict(d["reinhard"]),
                   StainVectors.from_dict(d["macenko"]) if d.get("macenko") else None,
                   int(d["n_images"]), str(d["source"]))


def sample_npz_images(path: str | Path, key: str = "train_images", n: int = SAMPLE_IMAGES) -> np.ndarray:
    """About `n` images spread evenly over one array of an npz, streamed: a 224 px training split is never
    held in memory whole."""
    path = Path(path)
    member = key if key.endswith(".npy") else f"{key}.npy"
    try:
        with zipfile.ZipFile(path) as zf, zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(f)
            if fortran or dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or shape[0] == 0:
                raise StainError(f"{path.name}: {key} is not an (N, H, W, 3) uint8 image array")
            row = int(np.prod(shape[1:]))
            step = max(1, shape[0] // max(1, n))
            keep = []
            for i in range(shape[0]):
                buf = f.read(row)
                if len(buf) < row:
                    raise StainError(f"{path.name}: {key} is truncated")
                if i % step == 0 and len(keep) < n:
                    keep.append(np.frombuffer(buf, np.uint8).reshape(shape[1:]))
                if len(keep) >= n:
                    break
    except (OSError, KeyError, zipfile.BadZipFile, ValueError, EOFError) as e:
        raise StainError(f"{path.name}: cannot read {key} ({e})") from None
    return np.stack(keep)


def fit_target(images: np.ndarray, source: str = "") -> StainTarget:
    lab = fit_reinhard(images)
    try:
        mac = fit_macenko(images[:MACENKO_FIT_IMAGES])
    except (StainError, np.linalg.LinAlgError):
        mac = None
    return StainTarget(lab, mac, int(len(images)), source)


def run_target(run_dir: str | Path, refresh: bool = False) -> StainTarget:
    """The run's training-set colour statistics, from `<run>/stain_stats.json` or computed and cached."""
    from core.store.io import json_text  # noqa: PLC0415  (the run store sits above this module's users)
    from core.store.runs import open_run  # noqa: PLC0415  (as above)

    run = open_run(run_dir)

    def compute() -> StainTarget:
        npz = run.training_data()
        return fit_target(sample_npz_images(npz), str(npz))

    return run.derived(STATS_FILE, lambda path: StainTarget.from_dict(json.loads(path.read_text())), compute,
                       lambda target: json_text(target.to_dict()), refresh)


def normalize(images: np.ndarray, method: str, target: StainTarget | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply one method ("none", "reinhard", "macenko") to uint8 images; returns images and a note."""
    if method not in METHODS:
        raise StainError(f"unknown normalisation {method!r}; one of {', '.join(METHODS)}")
    images = _batch(images)
    if method == "none" or len(images) == 0:
        return images, {"method": method}
    if target is None:
        raise StainError(f"{method} normalisation needs the training set's colour statistics")
    if method == "reinhard":
        return reinhard(images, target.reinhard), {"method": method, "target": target.reinhard.to_dict()}
    if target.macenko is None:
        raise StainError("Macenko stain vectors could not be estimated from the training images")
    try:
        source = fit_macenko(images)
    except (StainError, np.linalg.LinAlgError) as e:
        raise StainError(f"Macenko: the images' stain colours cannot be estimated ({e})") from None
    return macenko(images, target.macenko, source), {"method": method, "target": target.macenko.to_dict(),
                                                     "source": source.to_dict()}
