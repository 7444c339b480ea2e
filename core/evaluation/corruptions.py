"""The BloodMNIST corruptions of MedMNIST-C (Di Salvo et al. 2024), five severities each, in NumPy, PIL and OpenCV.

MedMNIST-C (arXiv 2406.17536; github.com/francescodisalvo05/medmnistc-api) defines for BloodMNIST eleven
corruptions at severities 1-5 and applies them to the 224 px test images. Its package needs torch and
ImageMagick, so they are written here from its definitions; `CORRUPTIONS` below is the one registry (name,
title, function, the five severity parameters of its BloodMNIST table) that every caller reads.

    pixelate          box-downsample by a factor, box-upsample back (PIL BOX both ways)
    jpeg_compression  JPEG at a quality (PIL, default 4:2:0 subsampling)
    defocus_blur      a disk kernel of a radius, softened by a 3x3 Gaussian of sigma `alias` (OpenCV filter2D)
    motion_blur       ImageMagick's motion blur: a one-sided Gaussian of `sigma` over 2*radius+1 steps along a
                      random angle in [-45, 45] degrees
    brightness_*      PIL ImageEnhance.Brightness by a factor
    contrast_*        PIL ImageEnhance.Contrast by a factor (towards or away from the mean grey)
    saturate          HSV saturation + an amount, clipped to [0, 1]
    stain_deposit     1..max dark ink marks multiplied into the image
    bubble            7..max translucent white discs (alpha 100/255, a 2 px rim at 130/255) of radius 3..max

Sizes. The table's lengths (blur radii and sigmas, bubble radii and rim, ink marks and their margin) are pixels
of a 224 px image. Any other image is corrupted at its own size with those lengths scaled by side / 224, so a
corruption covers the same share of the cell at 28, 64, 128 or 224 px; factors, qualities and amounts are used
as they are. Kernels and shapes are drawn anti-aliased, so lengths below a pixel still act in proportion (at
28 px the mildest defocus, 0.25 px, barely changes an image: that is what it is at that size).

Where this differs from the reference, and why:
- stain_deposit: the reference stamps ink masks from an asset file (`inks.npz`: size classes 3 for severities
  1-4 and 4 for severity 5) that is not available here. The marks are generated procedurally instead, from the
  image's seed: irregular blots (a disk with a few random harmonics on its outline, darker in the middle,
  opacity 0.7-1.0) of diameter `INK_DIAMETER[size class]`. Those diameters are our choice, not the asset's.
- Randomness is drawn per image, never per severity (`stream`), and the random choices are coupled across
  severities: an image's motion angle, its number of marks or bubbles (the same uniform draw mapped onto each
  severity's range) and their positions and shapes are the same at every severity, so a higher severity
  changes the same image more. The counts and radii keep the reference's distributions (uniform integers 1..max
  marks, 7..max bubbles, radius 3..max); centres are uniform over the area that keeps the largest mark or
  bubble of the table inside the image (the reference uses each one's own size).
- MedMNIST-C's BloodMNIST table repeats a level: stain_deposit severities 3 and 4 are both "up to 3 marks of
  size class 3". Kept as published, so with the coupled draws those two levels give the same image.
- Results are rounded to uint8 (the reference truncates, which darkens every image by half a grey level on
  average even where nothing else changes); the defocus disk is area-weighted rather than a disk of whole
  pixels; motion-blur steps are placed bilinearly rather than rounded to whole pixels.

Every function takes and returns uint8 (H, W, 3) and is deterministic for a seed and image index.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image, ImageEnhance

REFERENCE_SIZE = 224  # MedMNIST-C corrupts the 224 px images: the table's lengths are pixels at this size
SEVERITIES = (1, 2, 3, 4, 5)
# Bump when a corruption or a parameter changes: stored reports say which benchmark they measured.
BENCHMARK_VERSION = 1

# The two tables the random corruptions need whole (their largest mark or bubble sets the margins)
STAIN_SEVERITIES = ((1, 3), (2, 3), (3, 3), (3, 3), (3, 4))  # (most marks, ink size class)
INK_DIAMETER = {3: 32.0, 4: 40.0}  # px at 224: our choice for the reference's ink size classes
INK_MARGIN = 10.0  # px at 224 kept free at the image border (as the reference)
BUBBLE_SEVERITIES = ((5, 10), (7, 10), (10, 10), (12, 12), (15, 12))  # (largest radius, most bubbles)
BUBBLE_MIN_RADIUS, BUBBLE_MIN_COUNT, BUBBLE_RIM = 3, 7, 2.0  # px at 224, bubbles, px at 224
BUBBLE_ALPHA, BUBBLE_RIM_ALPHA = 100 / 255, 130 / 255

Parameter = Any
CorruptionFunction = Callable[[np.ndarray, Parameter, float, np.random.Generator], np.ndarray]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# -- digital ---------------------------------------------------------------------------------------------------

def pixelate(image: np.ndarray, factor: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX))


def jpeg_compression(image: np.ndarray, quality: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


# -- blur ------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def disk_kernel(radius: float, alias: float) -> np.ndarray:
    """A disk of `radius` px, each cell weighted by the share of it inside the disk (8x8 samples), softened by a
    3x3 Gaussian of sigma `alias` px, summing to 1."""
    half = int(math.ceil(radius)) + 1
    offsets = (np.arange(8) + 0.5) / 8 - 0.5
    axis = (np.arange(-half, half + 1)[:, None] + offsets[None, :]).reshape(-1)
    inside = (axis[:, None] ** 2 + axis[None, :] ** 2) <= radius ** 2
    n = 2 * half + 1
    coverage = inside.reshape(n, 8, n, 8).mean(axis=(1, 3)).astype(np.float32)
    if coverage.sum() == 0:  # a radius far below a pixel: the centre alone
        coverage[half, half] = 1.0
    soft = cv2.GaussianBlur(coverage, (3, 3), sigmaX=max(alias, 1e-6), borderType=cv2.BORDER_CONSTANT)
    soft /= soft.sum()
    soft.flags.writeable = False
    return soft


def defocus_blur(image: np.ndarray, radius_alias: tuple[float, float], scale: float,
                 rng: np.random.Generator) -> np.ndarray:
    radius, alias = radius_alias
    kernel = disk_kernel(round(radius * scale, 6), round(alias * scale, 6))
    return _to_uint8(cv2.filter2D(image.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT_101))


@lru_cache(maxsize=16)
def motion_weights(radius: int, sigma: float) -> np.ndarray:
    """ImageMagick's motion-blur weights: 2*radius+1 steps, a one-sided Gaussian of `sigma` (each step the
    mean of 3 sub-steps, as its KernelRank), summing to 1."""
    width = 2 * int(radius) + 1
    rank = 3
    sub = np.arange(rank * width)
    weights = np.exp(-(sub.astype(np.float64) ** 2) / (2.0 * rank * rank * sigma * sigma)).reshape(width, rank).sum(1)
    weights /= weights.sum()
    weights.flags.writeable = False
    return weights


def motion_kernel(radius: int, sigma: float, angle_degrees: float, scale: float) -> np.ndarray:
    """Step i of the blur (weight from `motion_weights`) sits i * scale px from the centre along the angle,
    spread bilinearly over the four nearest cells."""
    weights = motion_weights(radius, sigma)
    reach = (len(weights) - 1) * scale
    half = int(math.ceil(reach)) + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1), np.float64)
    angle = math.radians(angle_degrees)
    steps = np.arange(len(weights)) * scale
    xs, ys = half + steps * math.cos(angle), half + steps * math.sin(angle)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, share in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), weights * share)
    return (kernel / kernel.sum()).astype(np.float32)


def motion_blur(image: np.ndarray, radius_sigma: tuple[int, float], scale: float,
                rng: np.random.Generator) -> np.ndarray:
    radius, sigma = radius_sigma
    kernel = motion_kernel(radius, sigma, float(rng.uniform(-45.0, 45.0)), scale)
    return _to_uint8(cv2.filter2D(image.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REPLICATE))


# -- colour ----------------------------------------------------------------------------------------------------

def brightness(image: np.ndarray, factor: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor))


def contrast(image: np.ndarray, factor: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(image)).enhance(factor))


def saturate(image: np.ndarray, amount: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees, S and V in [0, 1]
    hsv[..., 1] = np.clip(hsv[..., 1] + amount, 0.0, 1.0)
    return _to_uint8(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0)


# -- microscopy ------------------------------------------------------------------------------------------------

def _count(u: float, low: int, high: int) -> int:
    """A uniform integer in [low, high] from one uniform draw u in [0, 1): the same u gives a count that never
    falls as `high` grows, which couples the severities."""
    return min(high, low + int(u * (high - low + 1)))


def _centres(u: np.ndarray, size: tuple[int, int], keep_clear: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y) from uniform draws (n, 2), kept `keep_clear` px from every border."""
    h, w = size
    xs = keep_clear + u[:, 0] * max(0.0, w - 1 - 2 * keep_clear)
    ys = keep_clear + u[:, 1] * max(0.0, h - 1 - 2 * keep_clear)
    return xs, ys


def _window(cx: float, cy: float, reach: float, size: tuple[int, int]) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """The rows and columns within `reach` px of (cx, cy), and their offsets from it."""
    h, w = size
    y0, y1 = max(0, int(math.floor(cy - reach))), min(h, int(math.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(math.floor(cx - reach))), min(w, int(math.ceil(cx + reach)) + 1)
    return (slice(y0, y1), slice(x0, x1), np.arange(x0, x1)[None, :] - cx, np.arange(y0, y1)[:, None] - cy)


def stain_deposit(image: np.ndarray, marks_class: tuple[int, int], scale: float,
                  rng: np.random.Generator) -> np.ndarray:
    most, size_class = marks_class
    most_ever = max(m for m, _ in STAIN_SEVERITIES)
    largest = max(INK_DIAMETER.values()) * scale
    # every draw is made whatever the severity, in one order: the same marks at every level
    u_count = rng.random()
    u_centres = rng.random((most_ever, 2))
    amplitudes = rng.uniform(0.0, 0.12, (most_ever, 3))
    phases = rng.uniform(0.0, 2 * math.pi, (most_ever, 3))
    opacity = rng.uniform(0.7, 1.0, most_ever)
    n = _count(u_count, 1, most)
    size = image.shape[:2]
    xs, ys = _centres(u_centres, size, INK_MARGIN * scale + largest / 2)
    radius = INK_DIAMETER[size_class] * scale / 2
    edge = max(1.0, 0.1 * radius)  # the soft rim of a blot, px
    clear = np.ones(size, np.float32)  # the share of light each pixel keeps
    harmonics = np.arange(2, 5)
    for k in range(n):
        reach = radius * (1 + amplitudes[k].sum()) + edge
        rows, cols, dx, dy = _window(xs[k], ys[k], reach, size)
        distance, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
        outline = radius * (1 + (amplitudes[k][:, None, None]
                                 * np.cos(harmonics[:, None, None] * theta + phases[k][:, None, None])).sum(0))
        inside = np.clip((outline - distance) / edge + 0.5, 0.0, 1.0)
        core = 1.0 - 0.3 * np.clip(distance / np.maximum(outline, 1e-6), 0.0, 1.0) ** 2  # darker in the middle
        clear[rows, cols] *= 1.0 - opacity[k] * inside * core
    return _to_uint8(image.astype(np.float32) * clear[..., None])


def bubble(image: np.ndarray, radius_count: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    largest_radius, most = radius_count
    most_ever = max(c for _, c in BUBBLE_SEVERITIES)
    radius_ever = max(r for r, _ in BUBBLE_SEVERITIES)
    u_count = rng.random()
    u_radius = rng.random(most_ever)
    u_centres = rng.random((most_ever, 2))
    n = _count(u_count, BUBBLE_MIN_COUNT, most)
    size = image.shape[:2]
    xs, ys = _centres(u_centres, size, radius_ever * scale)
    rim = BUBBLE_RIM * scale
    alpha = np.zeros(size, np.float32)  # the white layer's opacity: a later bubble paints over an earlier one
    for k in range(n):
        r = _count(u_radius[k], BUBBLE_MIN_RADIUS, largest_radius) * scale
        rows, cols, dx, dy = _window(xs[k], ys[k], r + rim + 1, size)
        distance = np.hypot(dx, dy)
        outer = np.clip(r + rim - distance + 0.5, 0.0, 1.0)  # share of each pixel in the bubble with its rim
        inner = np.clip(r - distance + 0.5, 0.0, 1.0)
        layer = alpha[rows, cols]
        alpha[rows, cols] = layer * (1 - outer) + BUBBLE_RIM_ALPHA * (outer - inner) + BUBBLE_ALPHA * inner
    a = alpha[..., None]
    return _to_uint8(image.astype(np.float32) * (1 - a) + 255.0 * a)


# -- the registry ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Corruption:
    name: str  # the key stored in reports, e.g. "defocus_blur"
    title: str  # what a table shows, e.g. "Defocus blur"
    function: CorruptionFunction  # (image, parameter, scale = side / 224, rng) -> image
    severities: tuple[Parameter, Parameter, Parameter, Parameter, Parameter]  # MedMNIST-C's BloodMNIST table

    def parameter(self, severity: int) -> Parameter:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}, not {severity!r}")
        return self.severities[severity - 1]


CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption("pixelate", "Pixelate", pixelate, (0.6, 0.5, 0.4, 0.3, 0.25)),
    Corruption("jpeg_compression", "JPEG compression", jpeg_compression, (50, 30, 15, 10, 7)),
    Corruption("defocus_blur", "Defocus blur", defocus_blur, ((2, 0.01), (3, 0.1), (4, 0.1), (5, 0.1), (6, 0.1))),
    Corruption("motion_blur", "Motion blur", motion_blur, ((3, 3), (5, 5), (10, 5), (10, 7), (10, 9))),
    Corruption("brightness_up", "Brightness up", brightness, (1.1, 1.2, 1.3, 1.35, 1.4)),
    Corruption("brightness_down", "Brightness down", brightness, (0.9, 0.8, 0.7, 0.6, 0.5)),
    Corruption("contrast_up", "Contrast up", contrast, (1.1, 1.15, 1.2, 1.25, 1.3)),
    Corruption("contrast_down", "Contrast down", contrast, (0.9, 0.8, 0.7, 0.6, 0.5)),
    Corruption("saturate", "Saturation", saturate, (0.05, 0.10, 0.15, 0.17, 0.20)),
    Corruption("stain_deposit", "Stain deposit", stain_deposit, STAIN_SEVERITIES),
    Corruption("bubble", "Bubbles", bubble, BUBBLE_SEVERITIES),
)
NAMES = tuple(c.name for c in CORRUPTIONS)
_BY_NAME = {c.name: c for c in CORRUPTIONS}


def corruption(name: str) -> Corruption:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown corruption {name!r}; one of {', '.join(NAMES)}") from None


def title(name: str) -> str:
    """A corruption's title; a name this version does not know (an older or newer report's) as it is."""
    found = _BY_NAME.get(name)
    return found.title if found else name


def stream(seed: int, index: int, name: str) -> np.random.Generator:
    """The random numbers of one image under one corruption: from the seed, the image's index in its split and
    the corruption's name, never the severity (so the severities share their random choices)."""
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, not {seed!r} and {index!r}")
    return np.random.default_rng([int(seed), int(index), zlib.crc32(name.encode())])


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 2:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return image


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0, index: int = 0) -> np.ndarray:
    """One uint8 (H, W, 3) image under one corruption at severity 1-5; `index`: the image's place in its split
    (with the seed, it fixes the corruption's random choices)."""
    image = _check(image)
    found = corruption(name)
    scale = (image.shape[0] + image.shape[1]) / 2 / REFERENCE_SIZE
    out = found.function(np.ascontiguousarray(image), found.parameter(severity), scale, stream(seed, index, name))
    return np.array(out, dtype=np.uint8)  # a writable copy (PIL's arrays are read-only)


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int = 0,
                  indices: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 images, each corrupted as `corrupt` does; `indices`: their places in their split
    (default 0..N-1), so an image is corrupted the same way in any batch or subset."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected (N, H, W, 3) images, got {images.shape}")
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    if len(indices) != len(images):
        raise ValueError(f"{len(indices)} indices for {len(images)} images")
    out = np.empty_like(images)
    for i, (image, index) in enumerate(zip(images, indices)):
        out[i] = corrupt(image, name, severity, seed, int(index))
    return out
