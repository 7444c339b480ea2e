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
itself an archive. Reads are bounded, so a member whose header lies about its size is caught too. Members
that are symbolic links refuse the archive too.

Budgets (a dashboard upload, `iter_uploads`): one upload may decode at most `MAX_UPLOAD_PIXELS` pixels in
`MAX_UPLOAD_SECONDS` seconds, one zip in it `MAX_ZIP_PIXELS` in `MAX_ZIP_SECONDS`. Each image's size is read
from its header and reserved before it is decoded (`core.data.images.DecodeBudget`); a zip whose members'
headers already declare more than its pixel budget is refused before any is decoded, and when a budget is
spent the rest of the zip is refused in one message that names the budget and the numbers.

External datasets can be uploaded as a zip with a folder per class: `extract_dataset` unpacks one, with
the same checks and only its image members, into a new folder under `uploads_dir()` (the artifacts
folder, a data root), and `clean_uploads` removes folders older than `UPLOAD_MAX_AGE_S` or beyond the
newest `UPLOAD_FOLDERS_KEPT`.
"""

from __future__ import annotations

import io
import secrets
import shutil
import stat
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np

from core.data.images import BudgetExceeded, DecodeBudget, ImageInputError, decode_with_note, header_pixels
from core.errors import UserFacingError

MAX_FILE_BYTES = 50 * 2**20  # = server.maxUploadSize (50 MB) in .streamlit/config.toml; the CLI checks it too
MAX_ZIP_MEMBERS = 1000
MAX_MEMBER_BYTES = 50 * 2**20
MAX_ZIP_TOTAL_BYTES = 500 * 2**20
MAX_RATIO = 100
RATIO_MIN_BYTES = 2**20  # the ratio test applies to members larger than this (small flat images compress well)
MAX_UPLOAD_PIXELS = 400_000_000  # decoded pixels per upload (~3,000 CellaVision images of 360x363)
MAX_UPLOAD_SECONDS = 60.0  # decoding time per upload
MAX_ZIP_PIXELS = 200_000_000  # decoded pixels per zip (1,000 members of 360x363 take 131 M)
MAX_ZIP_SECONDS = 30.0  # decoding (or unpacking) time per zip
HEADER_BYTES = 64 * 2**10  # read of a member to learn the size its header declares
UPLOADS_DIR = "uploads"  # under the artifacts folder: unpacked dataset zips, one folder each
UPLOAD_FOLDERS_KEPT = 20
UPLOAD_MAX_AGE_S = 24 * 3600.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
UPLOAD_TYPES = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES) + ("zip",)  # for st.file_uploader(type=...)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass
class UploadItem:
    name: str  # the file name, or "archive.zip/member.png" for a zip member
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB as decoded
    error: str | None = None
    note: str | None = None
    budget_spent: bool = False  # refused because the upload's or the zip's decoding budget is spent

    @property
    def ok(self) -> bool:
        return self.image is not None


def is_zip(name: str, data: bytes) -> bool:
    return name.lower().endswith(".zip") or data[:4] in _ZIP_MAGIC


class UploadRefused(UserFacingError, ValueError):
    """A whole upload (an archive) is refused; the message says why."""


def upload_budget() -> DecodeBudget:
    return DecodeBudget("this upload", MAX_UPLOAD_PIXELS, MAX_UPLOAD_SECONDS)


def read_upload(name: str, data: bytes, budget: DecodeBudget | None = None) -> Iterator[UploadItem]:
    """One uploaded file -> its image, or the images of a zip (one item per member), one at a time.

    A generator, so a caller can shrink each image (to what the model sees) before the next is decoded.
    With `budget` (the upload's), decoding is bounded as the module docstring says.
    """
    if len(data) > MAX_FILE_BYTES:
        yield UploadItem(name, error=f"{name}: {len(data) / 2**20:.0f} MB is larger than the "
                                     f"{MAX_FILE_BYTES // 2**20} MB upload limit")
    elif data and is_zip(name, data):
        yield from read_zip(name, data, budget)
    else:
        yield _decode(name, data, budget)


def iter_uploads(files: Iterable[tuple[str, bytes]], budget: DecodeBudget | None = None) -> Iterator[UploadItem]:
    """(name, bytes) pairs, e.g. from `st.file_uploader`, -> one item per image, in order, within one
    upload's budget (`budget`, default a new `upload_budget()`)."""
    budget = budget or upload_budget()
    for name, data in files:
        yield from read_upload(name, data, budget)


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


def _decode(name: str, data: bytes, budget: DecodeBudget | None = None) -> UploadItem:
    try:
        rgb, note = decode_with_note(data, name, budget)
    except BudgetExceeded as e:
        return UploadItem(name, error=str(e), budget_spent=True)
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


def read_zip(name: str, data: bytes, budget: DecodeBudget | None = None) -> Iterator[UploadItem]:
    """The images in a zip, read in memory one member at a time; see the module docstring for the limits.
    With `budget` (the upload's), the zip has its own budget too, charged with the upload's."""
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
        zip_budget = None
        if budget is not None:
            zip_budget = DecodeBudget(name, MAX_ZIP_PIXELS, MAX_ZIP_SECONDS, parent=budget)
            refusal = _declared_refusal(name, archive, members, zip_budget)
            if refusal:
                yield UploadItem(name, error=refusal)
                return
        for k, info in enumerate(members):
            item = _member(archive, info, f"{name}/{info.filename}", zip_budget)
            yield item
            if item.budget_spent:
                rest = len(members) - k - 1
                if rest:
                    yield UploadItem(name, error=f"{name}: the other {rest:,} members were not read: "
                                                 f"the budget above is spent")
                return


def _refusal(name: str, infos: list[zipfile.ZipInfo]) -> str | None:
    """Why the whole archive is refused, or None."""
    if len(infos) > MAX_ZIP_MEMBERS:
        return f"{name}: refused, {len(infos):,} files in the archive (limit {MAX_ZIP_MEMBERS:,})"
    bad = next((i.filename for i in infos if unsafe_member_name(i.filename)), None)
    if bad is not None:
        return (f"{name}: refused, the member name {bad!r} points outside the archive (path traversal); "
                f"nothing was read")
    link = next((i.filename for i in infos if stat.S_ISLNK(i.external_attr >> 16)), None)
    if link is not None:
        return f"{name}: refused, the member {link!r} is a symbolic link; nothing was read"
    declared = sum(i.file_size for i in infos)
    if declared > MAX_ZIP_TOTAL_BYTES:
        return (f"{name}: refused, it unpacks to {declared / 2**20:,.0f} MB "
                f"(limit {MAX_ZIP_TOTAL_BYTES // 2**20} MB)")
    return None


def _member_refusal(info: zipfile.ZipInfo, label: str) -> str | None:
    """Why one member is not read (from its directory entry alone), or None."""
    member = info.filename
    if member.lower().endswith(".zip"):
        return f"{label}: archives inside archives are not read"
    if not member.lower().endswith(IMAGE_SUFFIXES):
        return f"{label}: not an image file ({', '.join(IMAGE_SUFFIXES)})"
    if info.flag_bits & 0x1:
        return f"{label}: encrypted; upload it without a password"
    if info.file_size > MAX_MEMBER_BYTES:
        return f"{label}: refused, {info.file_size / 2**20:,.0f} MB unpacked (limit {MAX_MEMBER_BYTES // 2**20} MB)"
    if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        return f"{label}: refused, compressed {ratio:,.0f} times (a zip bomb?; limit {MAX_RATIO}x)"
    return None


def _declared_refusal(name: str, archive: zipfile.ZipFile, members: list[zipfile.ZipInfo],
                      budget: DecodeBudget) -> str | None:
    """Refuse the zip at once when its members' headers (their first bytes only) declare more pixels than
    the zip's budget allows: nothing is decoded. Members unreadable here are judged when they are read."""
    declared = 0
    for info in members:
        if _member_refusal(info, name) is not None:
            continue
        try:
            with archive.open(info) as f:
                head = f.read(HEADER_BYTES)
            declared += header_pixels(head, info.filename)
        except (ImageInputError, zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError,
                RuntimeError):
            continue
    if declared > budget.max_pixels:
        return (f"{name}: refused, its images declare {declared:,} pixels, over the zip's budget of "
                f"{budget.max_pixels:,} decoded pixels; nothing was decoded")
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> bytes | str:
    """A member's bytes (read bounded: the header's size may lie), or why it cannot be read."""
    refusal = _member_refusal(info, label)
    if refusal:
        return refusal
    try:
        with archive.open(info) as f:
            data = f.read(MAX_MEMBER_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        return f"{label}: cannot be unpacked ({e})"
    if len(data) > MAX_MEMBER_BYTES:
        return f"{label}: refused, unpacks to more than {MAX_MEMBER_BYTES // 2**20} MB"
    return data


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str,
            budget: DecodeBudget | None = None) -> UploadItem:
    started = time.perf_counter()
    data = _read_member(archive, info, label)
    if budget is not None:
        budget.spend(time.perf_counter() - started)
    if isinstance(data, str):
        return UploadItem(label, error=data)
    return _decode(label, data, budget)


# -- a dataset uploaded as a zip (a folder per class), unpacked for the external-validation scan -------------

def uploads_dir() -> Path:
    """Where uploaded dataset zips are unpacked: `<artifacts>/uploads/`, inside a data root."""
    from core.store.runs import default_runs_dir  # noqa: PLC0415 - keeps this module's import light

    return default_runs_dir().parent / UPLOADS_DIR


def clean_uploads(parent: Path | None = None, keep: int = UPLOAD_FOLDERS_KEPT,
                  max_age_s: float = UPLOAD_MAX_AGE_S) -> list[Path]:
    """Remove unpacked upload folders older than `max_age_s` or beyond the newest `keep`; returns them."""
    parent = Path(parent) if parent is not None else uploads_dir()
    if not parent.is_dir():
        return []
    folders = []
    for p in parent.iterdir():
        try:
            if p.is_dir() and not p.is_symlink():
                folders.append((p.stat().st_mtime, p))
        except OSError:
            continue
    folders.sort(reverse=True)
    now = time.time()
    removed = [p for i, (mtime, p) in enumerate(folders) if i >= keep or now - mtime > max_age_s]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def extract_dataset(name: str, data: bytes, parent: Path | None = None) -> tuple[Path, list[str]]:
    """Unpack an uploaded zip of images (a folder per class) into a new folder under `parent` (default
    `uploads_dir()`, cleaned first); returns (the folder, problems with single members).

    The archive is refused whole (UploadRefused, nothing left on disk) when it is not a zip, when a member
    name could escape (`..`, absolute, drive letters) or is a link, when it has too many members or unpacks
    to too many bytes, when its images declare more than `MAX_ZIP_PIXELS` pixels or when unpacking takes
    more than `MAX_ZIP_SECONDS`. Only image members whose header can be read are written; the rest are
    listed as problems."""
    if len(data) > MAX_FILE_BYTES:
        raise UploadRefused(f"{name}: {len(data) / 2**20:.0f} MB is larger than the "
                            f"{MAX_FILE_BYTES // 2**20} MB upload limit")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        raise UploadRefused(f"{name}: not a readable zip archive ({e})") from None
    parent = Path(parent) if parent is not None else uploads_dir()
    clean_uploads(parent)
    folder = parent / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
    budget = DecodeBudget(name, MAX_ZIP_PIXELS, MAX_ZIP_SECONDS)
    problems: list[str] = []
    try:
        with archive:
            infos = archive.infolist()
            refusal = _refusal(name, infos)
            members = [info for info in infos if not _skipped(info.filename)]
            refusal = refusal or _declared_refusal(name, archive, members, budget)
            if refusal:
                raise UploadRefused(refusal)
            folder.mkdir(parents=True)
            written = 0
            for info in members:
                label = f"{name}/{info.filename}"
                if budget.seconds >= budget.max_seconds:
                    raise UploadRefused(f"{name}: refused, unpacking took more than its budget of "
                                        f"{budget.max_seconds:g} s ({written:,} of {len(members):,} members read)")
                started = time.perf_counter()
                content = _read_member(archive, info, label)
                try:
                    if isinstance(content, str):
                        problems.append(content)
                        continue
                    try:
                        budget.reserve(header_pixels(content, label), label)
                    except BudgetExceeded as e:
                        raise UploadRefused(f"{e}; nothing was kept") from None
                    except ImageInputError as e:
                        problems.append(str(e))
                        continue
                    target = folder.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                    if not target.resolve().is_relative_to(folder.resolve()):  # unsafe_member_name ruled it out
                        raise UploadRefused(f"{name}: refused, {info.filename!r} points outside the archive")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
                    written += 1
                finally:
                    budget.spend(time.perf_counter() - started)
            if not written:
                raise UploadRefused(f"{name}: no image in the archive could be read"
                                    + (f" ({problems[0]})" if problems else ""))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, problems
