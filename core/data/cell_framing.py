"""Cell-centred framing: find the white cell in a full-size image and frame it as the run's training cells are.

Another lab's images show the same cells at another scale (the 100 `external_dev` cells fill their 300 px
frames; PBC's fill about 60% of the 200 px MedMNIST crop), so the fixed MedMNIST crop shows them larger than
any training cell, or cuts them. Cell framing finds the cell, crops a square around it whose side makes the
cell fill the same fraction of the frame as the run's training cells do, and resizes it (bicubic, as the
MedMNIST recipe).

Finding the cell (`find_cell`), all sizes relative to the image's shorter side, so that the same finder reads a
360 px original and a 28 px training image alike:

1. Colour deconvolution. Pixels go to optical density relative to the smear's own background colour
   (`core.validation.stain`: brightest tenth of the pixels). Two stain colours are estimated from the image:
   the nuclear stain, the mean colour of the densest 1% of pixels (nuclei take the Romanowsky stain's azure
   most), and the rest, the mean colour of the lighter half of the stained pixels (red cells, cytoplasm). Each
   pixel's nuclear-stain amount is its least-squares share of the two, the haematoxylin-like channel.
   (Macenko's two extreme angles, which `core.validation.stain` uses for normalisation, miss the nuclear
   colour here: in these smears it lies between the cytoplasm's and the red cells', not at an extreme.)
2. Nucleus: the channel, lightly smoothed, thresholded by Otsu's method over the stained pixels, cleaned
   (opened, then closed to join a neutrophil's lobes), and cut into connected parts. The nucleus is the
   largest part of a plausible size (at least MIN_NUCLEUS_AREA, at most MAX_NUCLEUS_AREA of the image),
   weighted mildly towards the image centre (analysers and datasets centre the cell they show), with the
   pieces near it (lobes, a basophil's granules) joined to it.
3. The cell: from the nucleus centre, RAYS rays run outward past the nucleus to the first background pixel;
   the cell's radius is the median ray (red cells touching the cell lengthen a few rays, not the median),
   at most MAX_CELL_TO_NUCLEUS times the nucleus's own reach, and its centre the mean of the ray ends.
4. Plausibility: the nucleus must stand out from the red cells around the cell, in density and in colour:
   its mean optical density over theirs, times (1 + the angle between their colours / 10 degrees), at least
   MIN_SEPARATION. A field of red cells alone scores 0.1 to 2.7 (its densest parts are red-cell rims, of
   the red cells' own colour); white cells, platelets and erythroblasts score 3.4 or more (measured on the
   160 PBC originals, the 100 external_dev cells, 400 training images at each of 28 and 64 px, and 320
   corners of PBC originals, most of them holding red cells only).

An image with nothing plausible (blank, slide background, red cells only, specks) raises `NoCellError`
naming the image: never a guess. Platelets and erythroblasts, two of BloodMNIST's classes, are found like
white cells (a platelet's granular body and an erythroblast's dense nucleus are the darkest objects of their
images) and framed the same way. Framing every cell to one fraction takes away the absolute size of a cell as
a cue (a platelet is drawn about twice as large as in training, a lymphocyte somewhat larger, a monocyte
smaller), which is the price of not knowing another lab's magnification; a model trained with scale
augmentation (`aug_scale`) relies on it less.

The target fraction is measured once per run on its own training images (at their stored size, by the same
finder: the cell's diameter over the frame's side, median over SAMPLE_IMAGES images spread over the split)
and cached atomically in `<run>/cell_framing.json`, so runs trained before this existed work too.
NumPy and OpenCV only: no TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from core.data.images import CELL, NoCellError
from core.errors import UserFacingError
from core.validation.stain import BETA, background_colour, optical_density, sample_npz_images

FRAMING_FILE = "cell_framing.json"
VERSION = 1
SAMPLE_IMAGES = 400  # training images the target fraction is measured on
MIN_FOUND_SHARE = 0.5  # of those, the share the finder must frame for the target to mean anything

# -- the finder's settings (sizes are fractions of the image's shorter side) ----------------------------
FIND_MAX_SIDE = 512  # larger images are searched scaled down to this (a 40-megapixel upload stays cheap)
MAX_CANVAS = 1024  # the framing square, in pixels, at most (a larger one is cut from a shrunken image)
DARKEST_PERCENT = 1.0  # the densest pixels, whose mean colour is the nuclear stain's
SMOOTH = 1 / 180  # Gaussian sigma of the channels
OPEN_RADIUS = 1 / 180  # removes specks from the nucleus mask
CLOSE_RADIUS = 1 / 60  # joins lobes and granules
CLEAN_MIN_SIDE = 120  # smaller images (the 28 and 64 px training images) are used as they are
MIN_NUCLEUS_AREA = 0.0008  # of the image's area (a platelet in a 360 px original is about 0.002)
MIN_NUCLEUS_PIXELS = 3
MAX_NUCLEUS_AREA = 0.6
LOBE_GAP = 0.6  # pieces this many nucleus radii or closer join the nucleus
CENTRE_WEIGHT = 0.5  # a part at the middle of an edge counts half as much as one at the centre
RAYS = 64
MAX_CELL_TO_NUCLEUS = 2.0
MIN_SEPARATION = 3.0  # nucleus vs red cells: density ratio x (1 + colour angle / ANGLE_SCALE)
ANGLE_SCALE = 10.0  # degrees
MIN_REFERENCE_PIXELS = 10


class CellFramingError(UserFacingError, RuntimeError):
    """A run's target fraction cannot be measured (its training images are missing or hold no cells)."""


@dataclass(frozen=True)
class Cell:
    """Where a cell is in one image (pixel coordinates: row, column)."""

    centre: tuple[float, float]
    radius: float  # half the cell's diameter
    nucleus_centre: tuple[float, float]
    nucleus_pixels: int
    separation: float  # how far the nucleus stands out from the red cells (MIN_SEPARATION or more)
    background: tuple[float, float, float]  # the smear's background colour (RGB)
    frame_side: int  # the image's shorter side

    @property
    def fraction(self) -> float:
        """The share of the image's shorter side the cell's diameter takes."""
        return 2.0 * self.radius / self.frame_side


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of real values (the between-class variance maximised over a histogram)."""
    hist, edges = np.histogram(values, bins=bins)
    mids = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * mids)
    between = w0 * w1 * (s0 / np.maximum(w0, 1.0) - (s0[-1] - s0) / np.maximum(w1, 1.0)) ** 2
    return float(mids[int(np.argmax(between[:-1]))])


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma) if sigma >= 0.5 else x


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(_unit(a) @ _unit(b), -1.0, 1.0))))


@dataclass(frozen=True)
class Stains:
    """Per-pixel stain readings of one image (see the module's step 1)."""

    nuclear: np.ndarray  # (H, W) float32: the nuclear stain's amount
    density: np.ndarray  # (H, W) float32: optical density magnitude
    stained: np.ndarray  # (H, W) bool: density above the background's
    colour: np.ndarray  # (H, W, 3): unit optical-density vectors
    background: np.ndarray  # (3,) RGB of the smear's background


def stains(rgb: np.ndarray) -> Stains:
    """Colour deconvolution of an (H, W, 3) uint8 image into the nuclear stain and the rest."""
    h, w = rgb.shape[:2]
    background = background_colour(rgb)
    od = optical_density(rgb, background)
    density = np.linalg.norm(od, axis=1)
    stained = density > BETA
    colour = od / np.maximum(density, 1e-9)[:, None]
    amount = np.zeros(len(od))
    if stained.any():
        nuclear = _unit(colour[density >= np.percentile(density, 100 - DARKEST_PERCENT)].mean(axis=0))
        light = stained & (density <= np.median(density[stained]))
        rest = _unit(colour[light].mean(axis=0)) if light.any() else nuclear
        if _angle(nuclear, rest) < 1.0:  # one colour only: its amount is the density itself
            amount = od @ nuclear
        else:  # least-squares shares of the two stains: the pseudo-inverse of the (3, 2) stain matrix
            amount = od @ np.linalg.pinv(np.stack([nuclear, rest], axis=1))[0]
    return Stains(amount.reshape(h, w).astype(np.float32), density.reshape(h, w).astype(np.float32),
                  stained.reshape(h, w), colour.reshape(h, w, 3), background)


def find_cell(rgb: np.ndarray, name: str = "image") -> Cell:
    """The white cell (or platelet, or erythroblast) of an (H, W, 3) uint8 image, or NoCellError naming it.

    An image larger than FIND_MAX_SIDE is searched at that size (every setting is relative to the image's
    size) and the cell's position scaled back to the full image."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    scale = min(1.0, FIND_MAX_SIDE / max(h, w))
    if scale == 1.0:
        return _find(rgb, name)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    cell = _find(small, name)
    sy, sx = h / small.shape[0], w / small.shape[1]
    return replace(cell, centre=(cell.centre[0] * sy, cell.centre[1] * sx), radius=cell.radius * (sy + sx) / 2,
                   nucleus_centre=(cell.nucleus_centre[0] * sy, cell.nucleus_centre[1] * sx),
                   nucleus_pixels=round(cell.nucleus_pixels * sy * sx), frame_side=min(h, w))


def _find(rgb: np.ndarray, name: str) -> Cell:
    h, w = rgb.shape[:2]
    side = min(h, w)
    min_area = max(MIN_NUCLEUS_PIXELS, MIN_NUCLEUS_AREA * h * w)

    def refuse(reason: str) -> NoCellError:
        return NoCellError(f"no white cell found in {name}: {reason}")

    s = stains(rgb)
    stained, unit = s.stained, s.colour
    if not stained.any():
        raise refuse("the image is blank (no stained pixels, only background)")
    if stained.sum() < min_area:
        raise refuse(f"no dark object large enough for a nucleus (only {int(stained.sum())} stained px, at least "
                     f"{int(np.ceil(min_area))} px needed)")
    amount = _smooth(s.nuclear, side * SMOOTH)
    density = _smooth(s.density, side * SMOOTH)
    mask = (amount > _otsu(amount[stained])).astype(np.uint8)
    if side >= CLEAN_MIN_SIDE:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(side * OPEN_RADIUS))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(side * CLOSE_RADIUS))
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    middle = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    best, best_score, largest = 0, 0.0, int(areas[1:].max()) if n > 1 else 0
    for i in range(1, n):
        if not min_area <= areas[i] <= MAX_NUCLEUS_AREA * h * w:
            continue
        off_centre = np.linalg.norm(centroids[i] - middle) / (side / 2.0)
        score = areas[i] * max(0.05, 1.0 - CENTRE_WEIGHT * off_centre ** 2)
        if score > best_score:
            best, best_score = i, score
    if not best:
        if largest > MAX_NUCLEUS_AREA * h * w:
            raise refuse("the dense part covers most of the image (no single cell)")
        raise refuse(f"no dark object large enough for a nucleus (largest {largest} px, at least "
                     f"{int(np.ceil(min_area))} px needed)")
    nucleus = labels == best
    reach = LOBE_GAP * np.sqrt(areas[best] / np.pi)
    gap = cv2.distanceTransform((~nucleus).astype(np.uint8), cv2.DIST_L2, 3)
    nearest = np.full(n, np.inf)
    np.minimum.at(nearest, labels.ravel(), gap.ravel())  # each part's distance to the nucleus
    nearest[0] = np.inf  # the background is no part
    nucleus = np.isin(labels, np.flatnonzero(nearest <= reach)) | nucleus

    ys, xs = np.nonzero(nucleus)
    y0, x0 = float(ys.mean()), float(xs.mean())
    ends, radius = _cell_extent(nucleus, density, (y0, x0), side)
    centre = (float(ends[:, 0].mean()), float(ends[:, 1].mean()))

    yy, xx = np.mgrid[0:h, 0:w]
    around = stained & (np.hypot(yy - centre[0], xx - centre[1]) > 1.1 * radius)
    if around.sum() < MIN_REFERENCE_PIXELS:  # no red cells in view: compare with the cytoplasm
        around = stained & ~nucleus
    if around.sum() >= MIN_REFERENCE_PIXELS:
        ratio = float(density[nucleus].mean() / max(float(np.median(density[around])), BETA))
        angle = _angle(unit[nucleus].mean(axis=0), unit[around].mean(axis=0))
    else:  # a dark object alone on the background
        ratio, angle = float(density[nucleus].mean() / BETA), 0.0
    separation = ratio * (1.0 + angle / ANGLE_SCALE)
    if separation < MIN_SEPARATION:
        raise refuse(f"nothing stands out from the red cells as a nucleus (separation {separation:.2f}, "
                     f"at least {MIN_SEPARATION:g})")
    return Cell(centre, radius, (y0, x0), int(nucleus.sum()), separation,
                tuple(float(v) for v in s.background), side)


def _cell_extent(nucleus: np.ndarray, density: np.ndarray, origin: tuple[float, float],
                 side: int) -> tuple[np.ndarray, float]:
    """Ray ends (RAYS, 2) and the cell's radius: each ray runs from `origin` past the nucleus to the first
    background pixel (or the image's edge); see the module's step 3."""
    h, w = nucleus.shape
    rest = density[~nucleus]
    rest = rest[rest < np.percentile(rest, 99)] if rest.size > 100 else rest
    threshold = max(_otsu(rest), BETA) if rest.size else BETA
    foreground = density > threshold
    step = 0.5 if side > 100 else 0.25
    radii = np.arange(0.0, float(side), step)
    angles = np.linspace(0.0, 2 * np.pi, RAYS, endpoint=False)
    ry = origin[0] + np.outer(np.sin(angles), radii)
    rx = origin[1] + np.outer(np.cos(angles), radii)
    inside = (ry >= 0) & (ry <= h - 1) & (rx >= 0) & (rx <= w - 1)
    iy = np.clip(np.rint(ry), 0, h - 1).astype(int)
    ix = np.clip(np.rint(rx), 0, w - 1).astype(int)
    on_nucleus = nucleus[iy, ix] & inside
    on_cell = foreground[iy, ix] & inside
    lengths, reach = np.empty(RAYS), np.empty(RAYS)
    for r in range(RAYS):
        last = np.flatnonzero(on_nucleus[r])
        start = int(last[-1]) if len(last) else 0
        reach[r] = radii[start]
        out = np.flatnonzero(~on_cell[r, start:])
        end = start + int(out[0]) if len(out) else int(np.flatnonzero(inside[r])[-1])
        lengths[r] = radii[end]
    radius = float(np.median(lengths))
    radius = min(radius, MAX_CELL_TO_NUCLEUS * max(float(reach.max()), step))
    radius = max(radius, float(np.median(reach)), 1.0)
    clipped = np.minimum(lengths, 1.25 * radius)
    ends = np.stack([origin[0] + np.sin(angles) * clipped, origin[1] + np.cos(angles) * clipped], axis=1)
    return ends, radius


def frame(rgb: np.ndarray, size: int, fraction: float, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: a square centred on the cell in which the cell's diameter
    takes `fraction` of the side, bicubic-resized. Where the square reaches past the image, it is filled with
    the smear's background colour (as scale augmentation fills a shrunken frame). NoCellError if no cell."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the cell's fraction of the frame must be in (0, 1], got {fraction}")
    cell = find_cell(rgb, name)
    centre, crop = cell.centre, 2.0 * cell.radius / fraction
    if crop > MAX_CANVAS:  # a huge image: shrink it first (area-averaged), so the square stays small
        shrink = MAX_CANVAS / crop
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (max(1, round(w * shrink)), max(1, round(h * shrink))), interpolation=cv2.INTER_AREA)
        centre, crop = (centre[0] * rgb.shape[0] / h, centre[1] * rgb.shape[1] / w), MAX_CANVAS
    h, w = rgb.shape[:2]
    crop = max(1, int(round(crop)))
    top = int(round(centre[0] - crop / 2.0))
    left = int(round(centre[1] - crop / 2.0))
    canvas = np.empty((crop, crop, 3), np.uint8)
    canvas[:] = np.clip(np.rint(cell.background), 0, 255).astype(np.uint8)
    y0, y1, x0, x1 = max(top, 0), min(top + crop, h), max(left, 0), min(left + crop, w)
    canvas[y0 - top:y1 - top, x0 - left:x1 - left] = rgb[y0:y1, x0:x1]
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BICUBIC))


# -- a run's target fraction, measured on its training images and cached --------------------------------

@dataclass(frozen=True)
class FramingTarget:
    """How much of the frame the run's training cells fill (cell diameter over frame side)."""

    fraction: float  # the median
    quartiles: tuple[float, float]
    n_images: int  # training images looked at
    found: int  # of which the finder framed a cell
    source: str  # the npz they came from

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "fraction": self.fraction, "quartiles": list(self.quartiles),
                "n_images": self.n_images, "found": self.found, "source": self.source,
                "measure": "cell diameter / frame side, median over training images"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FramingTarget":
        if d.get("version") != VERSION:
            raise ValueError("cell framing target from another version")
        fraction = float(d["fraction"])
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction {fraction} out of range")
        q = d["quartiles"]
        return cls(fraction, (float(q[0]), float(q[1])), int(d["n_images"]), int(d["found"]), str(d["source"]))


def measure(images: np.ndarray, source: str = "") -> FramingTarget:
    """The target from a set of training images: the median fraction over those the finder frames."""
    fractions = []
    for image in images:
        try:
            fractions.append(find_cell(image).fraction)
        except NoCellError:
            continue
    n = len(images)
    if not fractions or len(fractions) < MIN_FOUND_SHARE * n:
        raise CellFramingError(f"the cell finder framed a cell in only {len(fractions)} of {n} training images"
                               f"{f' of {Path(source).name}' if source else ''}: cell framing cannot be "
                               "calibrated for this run")
    q25, q50, q75 = np.percentile(fractions, [25, 50, 75])
    return FramingTarget(float(q50), (float(q25), float(q75)), n, len(fractions), source)


def run_target(run_dir: str | Path, refresh: bool = False) -> FramingTarget:
    """The run's target, from `<run>/cell_framing.json`, or measured on its training images and cached."""
    from core.store.io import json_text  # noqa: PLC0415  (the run store sits above core.data)
    from core.store.runs import open_run  # noqa: PLC0415  (as above)

    run = open_run(run_dir)

    def compute() -> FramingTarget:
        try:
            npz = run.training_data()
            images = sample_npz_images(npz, "train_images", SAMPLE_IMAGES)
        except UserFacingError as e:
            raise CellFramingError(f"cell framing needs the run's training images to measure its cells' size: "
                                   f"{e}") from None
        return measure(images, str(npz))

    return run.derived(FRAMING_FILE, lambda path: FramingTarget.from_dict(json.loads(path.read_text())), compute,
                       lambda target: json_text(target.to_dict()), refresh)


def run_fraction(run_dir: str | Path, mode: str) -> float | None:
    """The fraction `core.data.images.to_model_input` needs for `mode`: the run's target in cell mode, else
    None (the other modes need nothing from the run)."""
    return run_target(run_dir).fraction if mode == CELL else None
