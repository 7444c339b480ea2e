"""Download a BloodMNIST npz from the URL in medmnist's registry, checking its MD5.

The file is written to `<name>.part` and renamed only once complete and verified, so an interrupted download
never looks like a dataset.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from core.data import registry
from core.errors import UserFacingError

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total or 0 when unknown)
CHUNK = 1 << 20


class DownloadError(UserFacingError, RuntimeError):
    pass


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def offline_message(size: int, target: Path, reason: str) -> str:
    url, md5 = registry.url_and_md5(size)
    return (
        f"Could not download BloodMNIST {size} px ({reason}).\n"
        f"Get the file on a machine with internet access:\n  {url}\n"
        f"and put it at:\n  {target}\n"
        f"(expected MD5 {md5}). Or point {registry.DATA_DIR_ENV} at a folder that holds "
        f"{registry.file_name(size)}, or train on any MedMNIST-layout npz with --data PATH."
    )


def download(size: int, root: Path | None = None, progress: ProgressFn | None = None,
             timeout: float = 30.0, force: bool = False) -> Path:
    """Fetch BloodMNIST at `size` px into `root` (default: medmnist's folder) and return its path."""
    url, expected_md5 = registry.url_and_md5(size)
    target = registry.local_path(size, root)
    if target.is_file() and not force:
        if md5sum(target) == expected_md5:
            return target
        raise DownloadError(f"{target} exists but its MD5 differs from {expected_md5}; "
                            f"delete it or download again with force")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            h = hashlib.md5()
            while block := response.read(CHUNK):
                out.write(block)
                h.update(block)
                done += len(block)
                if progress:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as e:
        # HTTPException: e.g. IncompleteRead when the connection drops inside a chunked response
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DownloadError(offline_message(size, target, str(reason))) from None
    if h.hexdigest() != expected_md5:
        part.unlink(missing_ok=True)
        raise DownloadError(f"Downloaded {url} but its MD5 {h.hexdigest()} is not {expected_md5}; "
                            f"nothing was kept. Try again.")
    os.replace(part, target)
    return target
