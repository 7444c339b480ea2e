"""Writing run artifacts safely, and naming runs: the one place for atomic writes and run ids.

Every file a reader may open while it is being written (metrics, configs, caches, indexes of evaluations)
goes through `write_atomic`: a temporary sibling, fsync, then one rename, so a reader sees the old file or
the new one, never half of one. Run ids are generated here (UTC time + random), never built from user text.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

RUN_ID_PATTERN = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}\Z")  # \Z: "$" would accept a trailing newline


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def run_created(run_id: str) -> float:
    """The UTC creation time a run id encodes (stable, unlike the folder's modification time)."""
    return float(calendar.timegm(time.strptime(run_id[:15], "%Y%m%d-%H%M%S")))


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Write to a temporary sibling, fsync, then rename over `path`: readers never see half a file.
    `mode` (e.g. 0o600 for a file of password hashes) is the file's permissions from its creation on, so
    it is never readable by others, not even for a moment."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    open_mode = "wb" if isinstance(data, bytes) else "w"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        if mode is not None:
            os.fchmod(fd, mode)  # the umask may only remove bits; this makes the mode exact
        with os.fdopen(fd, open_mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json_text(obj))


def add_to_finished_run(run_dir: Path, name: str, data: str | bytes) -> Path:
    """Write (atomically) a file into a finished run's folder (a cache, a report, an edited config), keeping
    the folder's modification time: the run index and listings read it as when the run was made."""
    run_dir = Path(run_dir)
    before = run_dir.stat()
    path = run_dir / name
    write_atomic(path, data)
    os.utime(run_dir, ns=(before.st_atime_ns, before.st_mtime_ns))
    return path
