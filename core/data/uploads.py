"""Read a batch of uploaded files (images, or zips of images) into one result per image, never failing whole.

Every file (and every zip member) becomes an `UploadItem` holding either the decoded RGB image (with a note
when it was converted: greyscale, 16-bit, transparency, CMYK, palette, first frame of an animation) or the
message saying what is wrong with it. One bad file never stops the others; decoding itself is
`core.data.images.decode_with_note` (Pillow with the decompression-bomb guard).

Zips are read in memory and never extracted to disk. An archive is refused as a whole when a member name
could escape a folder (`../`, absolute paths, drive letters: a "zip slip"), when it has more than
`MAX_ZIP_MEMBERS` members, or when its members declare more than `MAX_ZIP_TOTAL_BYTES` in all. A member
is refused alone when it declares more than `MAX_MEMBER_BYTES`, when it is compressed more than
`MAX_RATIO` times (zip bombs compress ~1000x; real images rarely beat 20x) or when it is encrypted or
itself an archive. Reads are bounded, so a member whose header lies about its size is caught too.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np

from core.data.images import ImageInputError, decode_with_note

MAX_FILE_BYTES = 50 * 2**20  # = server.maxUploadSize (50 MB) in .streamlit/config.toml; the CLI checks it too
MAX_ZIP_MEMBERS = 1000
MAX_MEMBER_BYTES = 50 * 2**20
MAX_ZIP_TOTAL_BYTES = 500 * 2**20
MAX_RATIO = 100
RATIO_MIN_BYTES = 2**20  # the ratio test applies to members larger than this (small flat images compress well)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
UPLOAD_TYPES = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES) + ("zip",)  # for st.file_uploader(type=...)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass
class UploadItem:
    name: str  # the file name, or "archive.zip/member.png" for a zip member
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB as decoded
    error: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None


def is_zip(name: str, data: bytes) -> bool:
    return name.lower().endswith(".zip") or data[:4] in _ZIP_MAGIC


def read_upload(name: str, data: bytes) -> Iterator[UploadItem]:
    """One uploaded file -> its image, or the images of a zip (one item per member), one at a time.

    A generator, so a caller can shrink each image (to what the model sees) before the next is decoded.
    """
    if len(data) > MAX_FILE_BYTES:
        yield UploadItem(name, error=f"{name}: {len(data) / 2**20:.0f} MB is larger than the "
                                     f"{MAX_FILE_BYTES // 2**20} MB upload limit")
    elif data and is_zip(name, data):
        yield from read_zip(name, data)
    else:
        yield _decode(name, data)


def iter_uploads(files: Iterable[tuple[str, bytes]]) -> Iterator[UploadItem]:
    """(name, bytes) pairs, e.g. from `st.file_uploader`, -> one item per image, in order."""
    for name, data in files:
        yield from read_upload(name, data)


def read_uploads(files: Iterable[tuple[str, bytes]]) -> list[UploadItem]:
    return list(iter_uploads(files))


def iter_paths(paths: Iterable[str | Path]) -> Iterator[UploadItem]:
    """Files on disk (images or zips), as the command line gets them; unreadable paths become errors."""
    for path in paths:
        path = Path(path)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                yield UploadItem(str(path), error=f"{path}: larger than the {MAX_FILE_BYTES // 2**20} MB limit")
                continue
            data = path.read_bytes()
        except OSError as e:
            yield UploadItem(str(path), error=f"{path}: cannot read the file ({e.strerror or e})")
            continue
        yield from read_upload(str(path), data)


def _decode(name: str, data: bytes) -> UploadItem:
    try:
        rgb, note = decode_with_note(data, name)
    except ImageInputError as e:
        return UploadItem(name, error=str(e))
    return UploadItem(name, image=rgb, note=note)


def unsafe_member_name(member: str) -> bool:
    """True for names that would leave the folder they were extracted into."""
    if not member or "\x00" in member or member.startswith(("/", "\\")):
        return True
    if len(member) > 1 and member[1] == ":":  # C:\... or C:...
        return True
    return ".." in PurePosixPath(member.replace("\\", "/")).parts


def _skipped(member: str) -> bool:
    """Folders and the operating systems' bookkeeping files (__MACOSX/, .DS_Store, Thumbs.db)."""
    parts = PurePosixPath(member).parts
    return (member.endswith("/") or parts[0] == "__MACOSX" or parts[-1].startswith(".")
            or parts[-1].lower() == "thumbs.db")


def read_zip(name: str, data: bytes) -> Iterator[UploadItem]:
    """The images in a zip, read in memory one member at a time; see the module docstring for the limits."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        yield UploadItem(name, error=f"{name}: not a readable zip archive ({e})")
        return
    with archive:
        infos = archive.infolist()
        refusal = _refusal(name, infos)
        if refusal:
            yield UploadItem(name, error=refusal)
            return
        members = [info for info in infos if not _skipped(info.filename)]
        if not members:
            yield UploadItem(name, error=f"{name}: the archive holds no files")
        for info in members:
            yield _member(archive, info, f"{name}/{info.filename}")


def _refusal(name: str, infos: list[zipfile.ZipInfo]) -> str | None:
    """Why the whole archive is refused, or None."""
    if len(infos) > MAX_ZIP_MEMBERS:
        return f"{name}: refused, {len(infos):,} files in the archive (limit {MAX_ZIP_MEMBERS:,})"
    bad = next((i.filename for i in infos if unsafe_member_name(i.filename)), None)
    if bad is not None:
        return (f"{name}: refused, the member name {bad!r} points outside the archive (path traversal); "
                f"nothing was read")
    declared = sum(i.file_size for i in infos)
    if declared > MAX_ZIP_TOTAL_BYTES:
        return (f"{name}: refused, it unpacks to {declared / 2**20:,.0f} MB "
                f"(limit {MAX_ZIP_TOTAL_BYTES // 2**20} MB)")
    return None


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> UploadItem:
    member = info.filename
    if member.lower().endswith(".zip"):
        return UploadItem(label, error=f"{label}: archives inside archives are not read")
    if not member.lower().endswith(IMAGE_SUFFIXES):
        return UploadItem(label, error=f"{label}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
    if info.flag_bits & 0x1:
        return UploadItem(label, error=f"{label}: encrypted; upload it without a password")
    if info.file_size > MAX_MEMBER_BYTES:
        return UploadItem(label, error=f"{label}: refused, {info.file_size / 2**20:,.0f} MB unpacked "
                                       f"(limit {MAX_MEMBER_BYTES // 2**20} MB)")
    if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        return UploadItem(label, error=f"{label}: refused, compressed {ratio:,.0f}"
                                       f" times (a zip bomb?; limit {MAX_RATIO}x)")
    try:
        with archive.open(info) as f:
            data = f.read(MAX_MEMBER_BYTES + 1)  # bounded: the header's size may lie
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        return UploadItem(label, error=f"{label}: cannot be unpacked ({e})")
    if len(data) > MAX_MEMBER_BYTES:
        return UploadItem(label, error=f"{label}: refused, unpacks to more than {MAX_MEMBER_BYTES // 2**20} MB")
    return _decode(label, data)
