"""Decoding user images: real microscope JPEGs, every odd format converted to RGB, bad files refused clearly."""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import NPZ_28, NPZ_64, PBC_SAMPLES, SHARED_DATA
from PIL import Image

from core.data.images import MAX_PIXELS, ImageInputError, decode, read_file, to_model_input
from core.errors import UserFacingError

SAMPLES = sorted(PBC_SAMPLES.glob("*/*.jpg"))
ONE_PER_CLASS = [sorted((PBC_SAMPLES / c).glob("*.jpg"))[0] for c in sorted(p.name for p in PBC_SAMPLES.iterdir())]


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def image_error(data: bytes, name: str = "upload.png") -> str:
    with pytest.raises(ImageInputError) as info:
        decode(data, name)
    assert isinstance(info.value, UserFacingError)
    assert info.value.__cause__ is None
    msg = str(info.value)
    assert msg.startswith(f"{name}: ")  # names the file, so one bad file in a batch is identifiable
    return msg


def png_header_only(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A valid PNG that declares width x height but holds one tiny IDAT: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture
def gradient() -> np.ndarray:
    """A 40x48 RGB test card with distinct colours per pixel."""
    y, x = np.mgrid[0:40, 0:48]
    return np.stack([x * 5, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)


# -- real microscope images -------------------------------------------------------------------------------

def test_samples_present():
    assert len(SAMPLES) == 160
    assert len(ONE_PER_CLASS) == 8


@pytest.mark.parametrize("path", ONE_PER_CLASS, ids=lambda p: p.parent.name)
def test_decode_real_jpeg(path):
    rgb = read_file(path)
    assert rgb.dtype == np.uint8
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert abs(rgb.shape[0] - 363) <= 3 and abs(rgb.shape[1] - 360) <= 3
    assert 50 < rgb.mean() < 250  # a real, non-blank smear image
    np.testing.assert_array_equal(rgb, decode(path.read_bytes(), path.name))


def _test_split_rows() -> dict[str, int]:
    """File name -> row in the npz test split (the manifest lists rows in npz order)."""
    with open(SHARED_DATA / "split_manifest.csv", newline="") as f:
        names = [Path(r["path"]).name for r in csv.DictReader(f) if r["split"] == "test"]
    return {n: i for i, n in enumerate(names)}


@pytest.fixture(scope="module")
def test_rows() -> dict[str, int]:
    return _test_split_rows()


def test_medmnist_recipe_reproduces_the_28px_dataset(test_rows):
    """Crop 200 + bicubic resize of the original JPEG gives the very pixels stored in the npz."""
    with np.load(NPZ_28) as npz:
        images, labels = npz["test_images"], npz["test_labels"][:, 0]
    for path in ONE_PER_CLASS:
        row = test_rows[path.name]
        x = to_model_input(read_file(path), 28)
        assert x.shape == (28, 28, 3) and x.dtype == np.uint8
        diff = np.abs(x.astype(int) - images[row].astype(int))
        assert diff.max() <= 2, path.name
        assert labels[row] == ONE_PER_CLASS.index(path)  # class folders sort in label order


def test_medmnist_recipe_reproduces_the_64px_dataset(test_rows):
    path = ONE_PER_CLASS[0]
    with np.load(NPZ_64) as npz:
        stored = npz["test_images"][test_rows[path.name]]  # only this member is decompressed
    x = to_model_input(read_file(path), 64)
    assert x.shape == (64, 64, 3)
    assert np.abs(x.astype(int) - stored.astype(int)).max() <= 2


def test_plain_resize_differs_from_medmnist_crop():
    rgb = read_file(ONE_PER_CLASS[0])
    plain = to_model_input(rgb, 28, "plain")
    expected = np.asarray(Image.fromarray(rgb).resize((28, 28), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(plain, expected)
    assert not np.array_equal(plain, to_model_input(rgb, 28, "medmnist"))


# -- to_model_input ----------------------------------------------------------------------------------------

def test_medmnist_crop_is_centred(gradient):
    big = np.zeros((300, 260, 3), np.uint8)
    big[50:250, 30:230] = 255  # exactly the centred 200x200 square is white
    out = to_model_input(big, 28, "medmnist")
    assert out.min() == 255  # nothing outside the square survives the crop


def test_medmnist_crop_of_small_image_uses_largest_centred_square(gradient):
    out = to_model_input(gradient, 16, "medmnist")  # 40x48: crop 40x40 from columns 4..44
    expected = np.asarray(Image.fromarray(gradient[:, 4:44]).resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, expected)


def test_plain_squashes_whole_image(gradient):
    out = to_model_input(gradient, 16, "plain")
    expected = np.asarray(Image.fromarray(gradient).resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_already_right_size_is_untouched():
    x = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    assert to_model_input(x, 28) is x
    assert to_model_input(x, 28, "plain") is x


def test_unknown_resize_mode(gradient):
    with pytest.raises(ValueError, match="resize mode"):
        to_model_input(gradient, 28, "stretch")


# -- bad inputs --------------------------------------------------------------------------------------------

def test_empty_bytes():
    assert "the file is empty" in image_error(b"", "empty.jpg")


def test_truncated_real_jpeg():
    data = ONE_PER_CLASS[0].read_bytes()
    msg = image_error(data[: len(data) // 2], "half.jpg")
    assert "damaged or truncated" in msg


def test_truncated_png(gradient):
    data = encode(Image.fromarray(gradient), "PNG")
    assert "damaged or truncated" in image_error(data[: len(data) // 2], "half.png")


def test_text_renamed_png():
    msg = image_error(b"this is a text file, not a picture\n" * 10, "notes.png")
    assert "not an image Pillow can read" in msg


def test_one_pixel_image():
    msg = image_error(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), "dot.png")
    assert "1x1 pixels is too small" in msg


def test_thin_image():
    msg = image_error(encode(Image.new("RGB", (200, 4)), "PNG"), "strip.png")
    assert "200x4 pixels is too small" in msg


def test_smallest_accepted_side():
    assert decode(encode(Image.new("RGB", (8, 8)), "PNG")).shape == (8, 8, 3)


def test_decompression_bomb_is_refused_before_decoding():
    data = png_header_only(20000, 20000)
    assert len(data) < 200  # tiny on disk, 400 megapixels declared
    msg = image_error(data, "bomb.png")
    assert "too large" in msg and f"{MAX_PIXELS:,}" in msg


def test_decompression_bomb_pillow_made():
    """A real 1-bit PNG of 8000x8000 (64 MP, over the limit but under Pillow's hard error)."""
    data = encode(Image.new("1", (8000, 8000)), "PNG")
    assert len(data) < 100_000
    assert "too large" in image_error(data, "bomb2.png")


def test_pillow_limit_is_set_once_at_import_and_never_per_call():
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
    with pytest.raises(ImageInputError):
        decode(png_header_only(20000, 20000), "bomb.png")
    decode(encode(Image.new("RGB", (10, 10)), "PNG"))
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS


def test_only_the_image_formats_are_opened():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # would run Ghostscript
    assert "not an image Pillow can read" in image_error(eps, "cell.eps")


def test_read_file_missing(tmp_path):
    with pytest.raises(ImageInputError) as info:
        read_file(tmp_path / "gone.jpg")
    assert str(info.value).startswith("gone.jpg: cannot read the file")


def test_read_file_directory(tmp_path):
    with pytest.raises(ImageInputError, match="cannot read the file"):
        read_file(tmp_path)


# -- formats accepted and converted to RGB -------------------------------------------------------------------

def test_rgb_png_lossless(gradient):
    np.testing.assert_array_equal(decode(encode(Image.fromarray(gradient), "PNG")), gradient)


def test_16bit_greyscale_png():
    ramp = (np.arange(40 * 40, dtype=np.uint32).reshape(40, 40) * 20).astype(np.uint16)  # up to 31980
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    rgb = decode(data, "sixteen.png")
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb.max() == 255 and rgb.min() == 0  # scaled to the image's range, not clipped at 255
    np.testing.assert_array_equal(rgb[..., 0], (ramp / ramp.max() * 255).astype(np.uint8))


def test_float_tiff_scaled_like_16bit():
    ramp = np.linspace(0.0, 1.0, 400, dtype=np.float32).reshape(20, 20)
    data = encode(Image.fromarray(ramp), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    rgb = decode(data, "float.tif")
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    assert rgb.max() == 255 and rgb.min() == 0  # not a near-black image of 0s and 1s
    np.testing.assert_array_equal(rgb[..., 0], (ramp / ramp.max() * 255).astype(np.uint8))


def test_float_tiff_with_nan():
    a = np.full((12, 12), 0.5, np.float32)
    a[0, 0] = np.nan
    rgb = decode(encode(Image.fromarray(a), "TIFF"))
    assert rgb[0, 0, 0] == 0 and rgb[5, 5, 0] == 255


def test_32bit_integer_tiff():
    a = (np.arange(400).reshape(20, 20) * 1000).astype(np.int32)
    rgb = decode(encode(Image.fromarray(a), "TIFF"))
    assert rgb.max() == 255 and rgb.min() == 0


def test_all_black_16bit_png():
    rgb = decode(encode(Image.fromarray(np.zeros((10, 10), np.uint16)), "PNG"))
    assert (rgb == 0).all()


def test_8bit_greyscale_png(gradient):
    grey = gradient[..., 0]
    rgb = decode(encode(Image.fromarray(grey, "L"), "PNG"))
    assert rgb.shape == (40, 48, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], grey)


def test_rgba_png_composited_on_white(gradient):
    rgba = np.dstack([gradient, np.full(gradient.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # fully transparent corner
    rgb = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert rgb.shape == (40, 48, 3)
    assert (rgb[:10, :10] == 255).all()
    np.testing.assert_array_equal(rgb[20:, 20:], gradient[20:, 20:])


def test_greyscale_alpha_png():
    la = Image.new("LA", (20, 20), (100, 0))
    rgb = decode(encode(la, "PNG"))
    assert (rgb == 255).all()


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red ink mix
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    rgb = decode(data, "cmyk.jpg")
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    r, g, b = rgb.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_palette_png(gradient):
    p = Image.fromarray(gradient).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    data = encode(p, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    rgb = decode(data)
    np.testing.assert_array_equal(rgb, np.asarray(p.convert("RGB")))


def test_palette_png_with_transparency():
    p = Image.new("P", (16, 16), 1)
    p.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    data = encode(p, "PNG", transparency=1)
    rgb = decode(data)
    assert (rgb == 255).all()  # transparent index shown on white


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    rgb = decode(data, "anim.gif")
    assert rgb.shape == (20, 20, 3)
    assert (rgb[..., 0] > 200).all() and (rgb[..., 2] < 50).all()  # red: the first frame


def test_multipage_tiff_first_page(gradient):
    pages = [Image.fromarray(gradient), Image.fromarray(255 - gradient)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    np.testing.assert_array_equal(decode(data, "stack.tif"), gradient)


def test_tiff(gradient):
    np.testing.assert_array_equal(decode(encode(Image.fromarray(gradient), "TIFF"), "x.tif"), gradient)


def test_bmp(gradient):
    np.testing.assert_array_equal(decode(encode(Image.fromarray(gradient), "BMP"), "x.bmp"), gradient)


def test_webp_lossless(gradient):
    if "WEBP" not in Image.registered_extensions().values():
        pytest.skip("Pillow built without WebP")
    np.testing.assert_array_equal(decode(encode(Image.fromarray(gradient), "WEBP", lossless=True)), gradient)


def test_exif_orientation_applied(gradient):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(Image.fromarray(gradient), "JPEG", exif=exif.tobytes(), quality=95)
    rgb = decode(data)
    assert rgb.shape == (48, 40, 3)  # width and height swapped, as a viewer shows it


def test_real_jpeg_reencoded_as_png_and_tiff_agree():
    rgb = read_file(ONE_PER_CLASS[3])
    for fmt in ("PNG", "TIFF", "BMP"):
        np.testing.assert_array_equal(decode(encode(Image.fromarray(rgb), fmt)), rgb)
