"""Reading a batch of uploads: every bad file gets its own clear message while the good ones are read.

The bad-input list of issue 5: an empty file, a truncated JPEG, text renamed .png, a 1x1 image, a
decompression bomb, 16-bit, greyscale, RGBA, CMYK, palette, an animated GIF, a zip with '../' names, a zip
with too many members, and zips whose members are too large or compressed too well (zip bombs).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
from conftest import PBC_SAMPLES, PROJECT_ROOT
from external_fixtures import make_zip
from PIL import Image
from test_images import png_header_only

from core.data import uploads
from core.data.uploads import MAX_FILE_BYTES, UploadItem, iter_paths, read_uploads, unsafe_member_name

JPEGS = sorted(PBC_SAMPLES.glob("*/*.jpg"))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def cell(i: int = 0) -> bytes:
    return JPEGS[i * 20].read_bytes()  # one per class folder


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def bad_list() -> dict[str, bytes]:
    """Name -> bytes for every file that cannot be classified."""
    real = cell()
    return {
        "empty.jpg": b"",
        "truncated.jpg": real[: len(real) // 2],
        "notes.png": b"these are my notes, not an image\n" * 10,
        "dot.png": encode(Image.new("RGB", (1, 1), (200, 50, 80)), "PNG"),
        "bomb.png": png_header_only(20_000, 20_000),
        "slip.zip": make_zip({"../evil.png": cell(1), "ok.png": cell(2)}),
        "many.zip": make_zip({f"f{i}.png": b"x" for i in range(uploads.MAX_ZIP_MEMBERS + 1)},
                             zipfile.ZIP_STORED),
        "zipbomb.zip": make_zip({"bomb.bmp": bytes(10 * 2**20)}),  # 10 MB of zeros in ~10 KB
    }


def converted_list() -> dict[str, bytes]:
    """Name -> bytes for odd but valid images: read, converted to RGB, with a note saying how."""
    rgb = np.asarray(Image.open(io.BytesIO(cell())).convert("RGB"))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    return {
        "sixteen.png": encode(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)), "PNG"),
        "grey.png": encode(Image.fromarray(rgb).convert("L"), "PNG"),
        "rgba.png": encode(Image.fromarray(rgb).convert("RGBA"), "PNG"),
        "cmyk.jpg": encode(cmyk, "JPEG"),
        "palette.gif": encode(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "animated.gif": animated_gif(),
    }


NOTES = {"sixteen.png": "16-bit", "grey.png": "greyscale", "rgba.png": "transparency", "cmyk.jpg": "CMYK",
         "palette.gif": "palette", "animated.gif": "first of 3 frames"}
ERRORS = {"empty.jpg": "empty", "truncated.jpg": "truncated", "notes.png": "not an image", "dot.png": "too small",
          "bomb.png": "too large", "slip.zip": "path traversal", "many.zip": "files in the archive",
          "zipbomb.zip/bomb.bmp": "zip bomb"}


def by_name(items: list[UploadItem]) -> dict[str, UploadItem]:
    return {i.name: i for i in items}


def test_whole_bad_list_in_one_batch_with_good_files_between():
    files = [("first.jpg", cell(0))] + list(bad_list().items()) + list(converted_list().items()) \
        + [("last.jpg", cell(7))]
    items = by_name(read_uploads(files))
    for name in ("first.jpg", "last.jpg"):
        assert items[name].ok and items[name].image.shape == (363, 360, 3) and items[name].note is None
    for name, words in ERRORS.items():
        item = items[name]
        assert not item.ok and item.image is None, name
        assert item.error.startswith(name.split("/")[0]), item.error  # the message names the file
        assert words in item.error, (name, item.error)
    for name, words in NOTES.items():
        item = items[name]
        assert item.ok and item.error is None, (name, item.error)
        assert item.image.dtype == np.uint8 and item.image.ndim == 3 and item.image.shape[2] == 3
        assert words in item.note, (name, item.note)


def test_animated_gif_gives_its_first_frame():
    item = read_uploads([("animated.gif", animated_gif())])[0]
    assert item.ok and tuple(item.image[8, 8]) == (255, 0, 0)


def test_converted_images_keep_their_content():
    items = by_name(read_uploads(converted_list().items()))
    original = np.asarray(Image.open(io.BytesIO(cell())).convert("RGB")).astype(int)
    assert np.abs(items["rgba.png"].image.astype(int) - original).max() == 0  # opaque: unchanged
    grey = items["grey.png"].image
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert np.abs(items["cmyk.jpg"].image.astype(int) - original).mean() < 12  # JPEG loss only


def test_zip_of_good_images_with_junk():
    data = make_zip({"cells/a.jpg": cell(0), "cells/b.jpg": cell(3), "__MACOSX/cells/._a.jpg": b"\x00\x05",
                     "cells/.DS_Store": b"junk", "cells/": b"", "readme.txt": b"hello", "inner.zip": make_zip({}),
                     "cells/bad.png": b"not a png"})
    items = read_uploads([("batch.zip", data)])
    assert [i.name for i in items] == ["batch.zip/cells/a.jpg", "batch.zip/cells/b.jpg", "batch.zip/readme.txt",
                                       "batch.zip/inner.zip", "batch.zip/cells/bad.png"]
    assert [i.ok for i in items] == [True, True, False, False, False]
    assert "not an image file" in items[2].error and "inside archives" in items[3].error
    assert items[4].error.startswith("batch.zip/cells/bad.png: ")


def test_zip_slip_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_extract(*args, **kwargs):
        raise AssertionError("a zip was extracted")

    monkeypatch.setattr(zipfile.ZipFile, "extract", no_extract)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_extract)
    for evil in ("../evil.png", "a/../../evil.png", "/tmp/evil.png", "..\\evil.png", "C:\\evil.png"):
        items = read_uploads([("slip.zip", make_zip({"fine.jpg": cell(), evil: cell(1)}))])
        assert len(items) == 1 and not items[0].ok, evil
        assert "path traversal" in items[0].error and "nothing was read" in items[0].error
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "evil.png").exists()


@pytest.mark.parametrize("name,unsafe", [("../a.png", True), ("x/../../a.png", True), ("/etc/passwd", True),
                                         ("\\\\server\\a.png", True), ("..\\a.png", True), ("C:\\a.png", True),
                                         ("c:a.png", True), ("a\x00.png", True), ("", True),
                                         ("cells/a.png", False), ("a..b.png", False), ("x/..y/a.png", False)])
def test_unsafe_member_names(name, unsafe):
    assert unsafe_member_name(name) is unsafe


def test_zip_limits_member_size_total_and_ratio(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_MEMBER_BYTES", 4096)
    items = read_uploads([("big.zip", make_zip({"big.bmp": bytes(5000), "ok.jpg": b"\xff" * 100}))])
    assert "big.zip/big.bmp: refused" in items[0].error and "unpacked" in items[0].error
    assert "ok.jpg" in items[1].name and "not an image" in items[1].error  # still looked at on its own
    monkeypatch.setattr(uploads, "MAX_ZIP_TOTAL_BYTES", 3000)
    items = read_uploads([("total.zip", make_zip({"a.bmp": bytes(2000), "b.bmp": bytes(2000)}))])
    assert len(items) == 1 and "total.zip: refused, it unpacks to" in items[0].error


def test_zip_bomb_ratio_is_checked_before_reading(monkeypatch):
    bomb = make_zip({"bomb.bmp": bytes(10 * 2**20)})
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k))
    items = read_uploads([("zipbomb.zip", bomb)])
    assert len(items) == 1 and "compressed" in items[0].error and "limit 100x" in items[0].error
    assert opened == []


def test_encrypted_member_and_damaged_zip():
    data = bytearray(make_zip({"secret.jpg": cell()}))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the "encrypted" flag bit
        at = data.find(signature) + offset
        data[at] |= 0x1
    assert "encrypted" in read_uploads([("locked.zip", bytes(data))])[0].error
    damaged = make_zip({"a.jpg": cell()})[:200]
    assert "not a readable zip" in read_uploads([("damaged.zip", damaged)])[0].error
    assert "holds no files" in read_uploads([("empty.zip", make_zip({}))])[0].error


def test_oversized_upload_is_refused_without_decoding(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_FILE_BYTES", 1000)
    item = read_uploads([("huge.jpg", cell())])[0]
    assert not item.ok and "upload limit" in item.error


def test_upload_cap_matches_streamlit_config():
    config = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 2**20 == MAX_FILE_BYTES


def test_paths_from_disk_including_a_zip_and_a_missing_file(tmp_path):
    archive = tmp_path / "two.zip"
    archive.write_bytes(make_zip({"x.jpg": cell(0), "y.jpg": cell(1)}))
    items = list(iter_paths([JPEGS[0], archive, tmp_path / "missing.png"]))
    assert [i.name for i in items] == [str(JPEGS[0]), f"{archive}/x.jpg", f"{archive}/y.jpg",
                                       str(tmp_path / "missing.png")]
    assert [i.ok for i in items] == [True, True, True, False]
    assert "cannot read" in items[-1].error


def test_all_160_samples_read(tmp_path):
    items = read_uploads((p.name, p.read_bytes()) for p in JPEGS)
    assert len(items) == 160 and all(i.ok and i.image.shape in ((363, 360, 3), (369, 366, 3)) for i in items)
    assert Path(PBC_SAMPLES).is_dir()
