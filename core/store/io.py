"""Writing run artifacts safely, and naming runs: the one place for atomic writes and run ids.

Every file a reader may open while it is being written (metrics, configs, caches, indexes of evaluations)
goes through `write_atomic`: a temporary sibling, fsync, then one rename, so a reader sees the old file or
the new one, never half of one (`sync_dir=True` also makes the rename itself survive a power cut). Run ids
are generated here (UTC time + random), never built from user text.

Writes that must not be cut in half by a cancel (a checkpoint unit, publishing a run) run inside
`uninterrupted()`: a job process's SIGTERM handler (`interrupt_or_defer`) raises KeyboardInterrupt at once
outside such a block, and only when the outermost block ends inside one (the write is finished, then the job
stops).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

RUN_ID_PATTERN = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}\Z")  # \Z: "$" would accept a trailing newline


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def run_created(run_id: str) -> float:
    """The UTC creation time a run id encodes (stable, unlike the folder's modification time)."""
    return float(calendar.timegm(time.strptime(run_id[:15], "%Y%m%d-%H%M%S")))


def fsync_file(path: Path) -> None:
    """Flush a file someone else wrote (e.g. Keras's model.save), or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the entries of a folder (files created or renamed in it) durable. A no-op where folders cannot be
    opened (Windows)."""
    try:
        fsync_file(path)
    except (PermissionError, IsADirectoryError):
        return


def write_atomic(path: Path, data: str | bytes, mode: int | None = None, sync_dir: bool = False) -> None:
    """Write to a temporary sibling, fsync, then rename over `path`: readers never see half a file.
    `mode` (e.g. 0o600 for a file of password hashes) is the file's permissions from its creation on, so
    it is never readable by others, not even for a moment. With `sync_dir`, the folder is fsynced after the
    rename, so the new file is the one found after a crash."""
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
    if sync_dir:
        fsync_dir(path.parent)


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any, sync_dir: bool = False) -> None:
    write_atomic(path, json_text(obj), sync_dir=sync_dir)


def add_to_finished_run(run_dir: Path, name: str, data: str | bytes) -> Path:
    """Write (atomically) a file into a finished run's folder (a cache, a report, an edited config), keeping
    the folder's modification time: the run index and listings read it as when the run was made."""
    run_dir = Path(run_dir)
    before = run_dir.stat()
    path = run_dir / name
    write_atomic(path, data)
    os.utime(run_dir, ns=(before.st_atime_ns, before.st_mtime_ns))
    return path


# -- writes a cancel must not cut ---------------------------------------------------------------------------
_depth = 0  # how many uninterrupted() blocks the main thread is in
_deferred: list[int] = []  # signals that arrived inside one


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A block a cancel (SIGTERM through `interrupt_or_defer`) does not cut: a cancel that arrives inside it
    raises KeyboardInterrupt when the outermost block has finished. Outside a job process (no handler
    installed) it changes nothing."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _deferred:
        _deferred.clear()
        raise KeyboardInterrupt("cancelled")


def interrupt_or_defer(signum: int, frame: Any) -> None:
    """A job process's SIGTERM handler: stop now (KeyboardInterrupt), or after the write in progress."""
    if _depth:
        _deferred.append(signum)
        return
    raise KeyboardInterrupt("cancelled")
