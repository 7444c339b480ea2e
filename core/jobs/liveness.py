"""Is a job's process still there? By pid and the process's creation time, through psutil (Linux, macOS,
Windows alike), so a recycled pid is never taken for the job, and a zombie (exited, not yet reaped by its
parent) counts as gone."""

from __future__ import annotations

import time

import psutil

START_TOLERANCE = 0.05  # seconds: psutil derives creation times from clock ticks
GONE = -1.0  # the start time recorded for a process that was gone before it could be read: never alive


def start_time(pid: int | None) -> float | None:
    """The process's creation time (seconds since the epoch), or None when it is gone or a zombie."""
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


def alive(pid: int | None, started: float | None) -> bool:
    """Whether the process `pid` that was created at `started` is still running (`started` None: any process
    with that pid, for jobs recorded before creation times were)."""
    now = start_time(pid)
    if now is None:
        return False
    return started is None or abs(now - started) <= START_TOLERANCE


def wait_gone(pid: int | None, started: float | None, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the process to end; True when it has."""
    deadline = time.monotonic() + timeout
    while alive(pid, started):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
