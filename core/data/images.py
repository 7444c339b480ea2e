"""Read a user's image file safely and bring it to what a model was trained on.

Decoding is by Pillow with its decompression-bomb guard made an error; every problem becomes an
`ImageInputError` whose message names the file and what is wrong, so one bad file never stops a batch.
Pillow's limits are set once, when this module is imported (`Image.MAX_IMAGE_PIXELS` and the
DecompressionBombWarning filter), never per call: Streamlit decodes in several threads at once. Only the
formats of `FORMATS` are opened (no PostScript through Ghostscript, no exotic decoders). The size an image
declares in its header is checked before anything is decoded, against `MAX_PIXELS` and against a
`DecodeBudget` (decoded pixels and decoding time allowed to one upload or one zip). 16-bit, 32-bit and
float greyscale images are brought to 8 bits in bands of rows with integer (or float32) arithmetic, so a
large one costs no float64 copy of itself.
Full-size microscope images (like the 360x363 CellaVision originals) get the MedMNIST recipe by default:
centre crop 200x200, then bicubic resize, which is how BloodMNIST itself was made. Cell-centred framing
(core.data.cell_framing) finds the cell instead and frames it as the run's training cells are framed, for
images at another scale; an image where it finds no cell raises `NoCellError`, also an `ImageInputError`.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import UserFacingError

MAX_PIXELS = 40_000_000  # larger images are refused (decompression bombs)
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")  # what Image.open may try (JPEG reads MPO too)
BAND_PIXELS = 2**20  # greyscale scaling works on bands of rows of about this many pixels
MIN_SIDE = 8
MEDMNIST_CROP = 200
CELL = "cell"
RESIZE_MODES = ("medmnist", "plain", CELL)
RESIZE_DESCRIPTIONS = {  # what each mode does, for the command line's help and the pages' (ui.text)
    "medmnist": f"centre crop {MEDMNIST_CROP}×{MEDMNIST_CROP} px, then resize (how BloodMNIST was made from the "
                "360×363 CellaVision originals)",
    "plain": "resize the whole image (for images already cropped to one cell)",
    CELL: "find the white cell and crop a square around it in which the cell fills as much of the frame as the "
          "run's training cells do, then resize (for another lab's images at another scale); images in which "
          "no cell is found are reported, not classified",
}


class ImageInputError(UserFacingError, ValueError):
    pass


class NoCellError(ImageInputError):
    """Cell framing found no plausible cell in an image: it is left out, never framed by a guess."""


class BudgetExceeded(ImageInputError):
    """An upload (or a zip) has used its decoded-pixel or decoding-time budget; the image was not decoded."""


# Once, at import: Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; the warning is an error
# too. `decode_with_note` checks the header's size itself, so it does not depend on this filter.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
Image.init()
FORMATS = tuple(f for f in FORMATS if f in Image.OPEN)  # WEBP only when this Pillow was built with it
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


@dataclass
class DecodeBudget:
    """Decoded pixels and seconds of decoding allowed to one upload or one zip (`what` names it in messages).

    `reserve` is called with an image's header size before it is decoded and refuses it (BudgetExceeded)
    when the pixels would pass `max_pixels` or the time already spent has reached `max_seconds`; `spend`
    adds the seconds a decode took. A zip's budget has the upload's as `parent`: both are charged.
    Not shared between threads (one upload is read by one script run)."""

    what: str
    max_pixels: int
    max_seconds: float
    parent: "DecodeBudget | None" = None
    pixels: int = 0
    seconds: float = 0.0

    def _chain(self) -> list["DecodeBudget"]:
        return [self] + (self.parent._chain() if self.parent else [])

    def reserve(self, pixels: int, name: str) -> None:
        for b in self._chain():
            if b.seconds >= b.max_seconds:
                raise BudgetExceeded(f"{name}: refused, {b.what} used its decoding-time budget "
                                     f"({b.seconds:.1f} s of {b.max_seconds:g} s); upload fewer or smaller images")
            if b.pixels + pixels > b.max_pixels:
                raise BudgetExceeded(f"{name}: refused, {b.what} would decode {b.pixels + pixels:,} pixels, over "
                                     f"its budget of {b.max_pixels:,} decoded pixels ({pixels:,} for this image)")
        for b in self._chain():
            b.pixels += pixels

    def spend(self, seconds: float) -> None:
        for b in self._chain():
            b.seconds += seconds


def decode(data: bytes, name: str = "image") -> np.ndarray:
    """Bytes of a PNG/JPEG/TIFF/BMP/GIF -> (H, W, 3) uint8 RGB, or ImageInputError."""
    return decode_with_note(data, name)[0]


def decode_with_note(data: bytes, name: str = "image",
                     budget: DecodeBudget | None = None) -> tuple[np.ndarray, str | None]:
    """As `decode`, with a note on any conversion made (greyscale, 16-bit, transparency, first frame...).

    With `budget`, the image's header size is reserved from it before decoding and the time taken is
    charged to it; an image past the budget is refused (BudgetExceeded) undecoded."""
    if not data:
        raise ImageInputError(f"{name}: the file is empty")
    notes = []
    started = time.perf_counter()
    reserved = False
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageInputError(f"{name}: {img.width}x{img.height} pixels is too large "
                                      f"(limit {MAX_PIXELS:,} pixels)")
            if budget is not None:
                budget.reserve(img.width * img.height, name)
                reserved = True
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                img.seek(0)  # animated or multi-page: the first frame
                notes.append(f"first of {frames} frames used")
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb, note = _to_rgb(img, name)
            notes += [note] if note else []
    except ImageInputError:
        raise
    except PILLOW_ERRORS as e:
        raise pillow_error(name, e) from None
    finally:
        if budget is not None and reserved:
            budget.spend(time.perf_counter() - started)
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ImageInputError(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} pixels is too small "
                              f"(at least {MIN_SIDE} px a side)")
    return rgb, "; ".join(notes) or None


PILLOW_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning, UnidentifiedImageError, OSError,
                 SyntaxError, ValueError, EOFError)


def pillow_error(name: str, error: BaseException) -> ImageInputError:
    """The one message for each way Pillow fails to open or decode an image."""
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageInputError(f"{name}: the image is too large (limit {MAX_PIXELS:,} pixels)")
    if isinstance(error, UnidentifiedImageError):
        return ImageInputError(f"{name}: not an image Pillow can read (PNG, JPEG, TIFF, BMP, GIF)")
    return ImageInputError(f"{name}: the image is damaged or truncated ({error})")


@contextmanager
def pillow_errors(name: str) -> Iterator[None]:
    try:
        yield
    except ImageInputError:
        raise
    except PILLOW_ERRORS as e:
        raise pillow_error(name, e) from None


def header_pixels(data: bytes, name: str = "image") -> int:
    """The pixels an image declares in its header (nothing decoded), or ImageInputError."""
    with pillow_errors(name), Image.open(io.BytesIO(data), formats=FORMATS) as img:
        return int(img.width * img.height)


_MODE_NOTES = {"L": "greyscale, copied to the three colour channels", "1": "black-and-white, made RGB",
               "CMYK": "CMYK converted to RGB", "P": "palette colours converted to RGB",
               "YCbCr": "YCbCr converted to RGB", "RGBA": "transparency flattened onto white",
               "LA": "greyscale with transparency, flattened onto white",
               "PA": "palette with transparency, flattened onto white"}


def _to_rgb(img: Image.Image, name: str = "image") -> tuple[np.ndarray, str | None]:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = scale_to_8bit(np.asarray(img))
        bits = "32-bit" if img.mode in ("I", "F") else "16-bit"
        return np.repeat(grey[..., None], 3, axis=2), f"{bits} greyscale, scaled to 8 bits"
    note = _MODE_NOTES.get(img.mode)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB")), note
    if img.mode == "RGB":
        return np.asarray(img), None
    try:
        return np.asarray(img.convert("RGB")), note or f"{img.mode} converted to RGB"
    except ValueError:
        raise ImageInputError(f"{name}: colour mode {img.mode} is not supported") from None


def scale_to_8bit(arr: np.ndarray) -> np.ndarray:
    """A 16-bit, 32-bit or float greyscale array -> uint8, scaled by the image's own range (0..max, or
    min..max when it has negative values); NaN and infinite pixels count as 0. Works on bands of rows:
    integers exactly in int64, floats in float32, so the only full-size array made is the uint8 result."""
    out = np.empty(arr.shape, np.uint8)
    if arr.size == 0:
        return out
    rows = max(1, BAND_PIXELS // max(1, arr.shape[1] if arr.ndim > 1 else 1))
    if arr.dtype.kind == "f":
        def band(i: int) -> np.ndarray:
            b = arr[i:i + rows].astype(np.float32)
            b[~np.isfinite(b)] = 0.0
            return b
        low, high = np.float32(0.0), np.float32(-np.inf)
        for i in range(0, arr.shape[0], rows):
            b = band(i)
            low, high = min(low, b.min()), max(high, b.max())
        span = np.float32(high - low) or np.float32(1.0)
        for i in range(0, arr.shape[0], rows):
            b = (band(i) - low) / span * np.float32(255.0)
            out[i:i + rows] = np.clip(b, 0, 255).astype(np.uint8)
        return out
    low, high = min(int(arr.min()), 0), int(arr.max())
    span = (high - low) or 1
    for i in range(0, arr.shape[0], rows):
        b = (arr[i:i + rows].astype(np.int64) - low) * 255 // span
        out[i:i + rows] = np.clip(b, 0, 255).astype(np.uint8)
    return out


def read_file(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageInputError(f"{path.name}: cannot read the file ({e.strerror or e})") from None
    return decode(data, path.name)


def to_model_input(rgb: np.ndarray, size: int, mode: str = "medmnist", cell_fraction: float | None = None,
                   name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 as the model sees it.

    medmnist: centre-crop a 200x200 square (or the largest centred square if smaller), then bicubic resize.
    plain: resize the whole image (a non-square one is squashed).
    cell: find the cell and crop a square centred on it in which its diameter takes `cell_fraction` of the
    side (the run's target, `core.data.cell_framing.run_fraction`), then bicubic resize; NoCellError naming
    the image (`name`) when there is no cell. Unlike the other modes, it frames an image already at `size`
    too.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}")
    if mode == CELL:
        if cell_fraction is None:
            raise ValueError("cell framing needs the run's target fraction (core.data.cell_framing.run_fraction)")
        from core.data import cell_framing  # noqa: PLC0415  (it imports this module; OpenCV only when framing)

        return cell_framing.frame(rgb, size, cell_fraction, name)
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    img = Image.fromarray(rgb)
    if mode == "medmnist":
        side = min(MEDMNIST_CROP, h, w)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))
