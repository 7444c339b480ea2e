"""Fault injection for the crash-consistency tests, without hooks in production code.

`install(k, mode, only)` wraps the operations that write to disk (opening a file for writing, os.fsync,
os.replace, os.rename) and counts them; at the k-th one it either SIGKILLs this process (`kill`: before the
operation; `kill-after`: right after it) or raises OSError(ENOSPC) instead of doing it (`enospc`). `only`
restricts the count to some kinds ("open", "fsync", "replace", "rename"; a rename counts only when it moves a
folder out of `.incomplete`, i.e. publishes a run).

As a script it is the wrapper a test starts in place of a job process:

    python tests/fault_injection.py MODE K ONLY(comma list or "all") checkpoint WORK_DIR
    python tests/fault_injection.py MODE K ONLY publish RUNS_DIR RUN_ID
    python tests/fault_injection.py MODE K ONLY cli ARGS...   (core.cli.main(ARGS), e.g. job-exec)

`checkpoint` writes epoch 2's checkpoint unit over an existing epoch 1 (model bytes b"model-2"); `publish`
publishes the run (model bytes b"final-model").
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import signal
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KINDS = ("open", "fsync", "replace", "rename")


class Counter:
    """How many write operations were seen (and which); `restore()` puts the real ones back."""

    def __init__(self) -> None:
        self.n = 0
        self.seen: list[str] = []
        self.real = {"open": builtins.open, "fsync": os.fsync, "replace": os.replace, "rename": os.rename}

    def restore(self) -> None:
        builtins.open, os.fsync = self.real["open"], self.real["fsync"]
        os.replace, os.rename = self.real["replace"], self.real["rename"]


def _is_write(mode: str) -> bool:
    return any(c in mode for c in "wax+")


def install(k: int, mode: str, only: set[str] | None = None) -> Counter:
    """Patch the write operations; returns the counter (k=0: count only, never fault)."""
    only = set(only or KINDS)
    counter = Counter()
    real = counter.real

    def event(kind: str, what: str, do):
        counter.n += 1
        counter.seen.append(f"{kind} {what}")
        if counter.n == k and mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if counter.n == k and mode == "enospc":
            raise OSError(errno.ENOSPC, f"No space left on device (injected at {kind} {what})")
        result = do()
        if counter.n == k and mode == "kill-after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def open_(file, mode="r", *args, **kwargs):
        if "open" in only and isinstance(mode, str) and _is_write(mode):
            return event("open", str(file), lambda: real["open"](file, mode, *args, **kwargs))
        return real["open"](file, mode, *args, **kwargs)

    def fsync(fd):
        return event("fsync", str(fd), lambda: real["fsync"](fd)) if "fsync" in only else real["fsync"](fd)

    def replace(src, dst, **kwargs):
        if "replace" in only:
            return event("replace", str(dst), lambda: real["replace"](src, dst, **kwargs))
        return real["replace"](src, dst, **kwargs)

    def rename(src, dst, **kwargs):
        if "rename" in only and Path(src).parent.name == ".incomplete":
            return event("rename", str(dst), lambda: real["rename"](src, dst, **kwargs))
        return real["rename"](src, dst, **kwargs)

    builtins.open, os.fsync, os.replace, os.rename = open_, fsync, replace, rename
    return counter


# -- the two writes under test, as the trainer does them (a byte string stands for the Keras model) ----------
def write_checkpoint(work_dir: Path, epoch: int) -> None:
    import numpy as np

    from core.store import checkpoints

    def save_model(path: Path) -> None:
        with open(path, "wb") as f:
            f.write(f"model-{epoch}".encode())

    checkpoints.save(work_dir, epoch, save_model, [np.full(4, float(epoch))],
                     {"epochs_done": epoch, "history": [{"epoch": e} for e in range(1, epoch + 1)]})


def fake_metrics() -> dict:
    split = {"accuracy": 0.5, "auc": 0.5, "loss": 1.0, "n": 10}
    return {"val": split, "test": split, "best_epoch": 1, "epochs_run": 1}


def save_final(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(b"final-model")


def main(argv: list[str]) -> int:
    mode, k, only, what, *rest = argv
    sys.path.insert(0, str(PROJECT_ROOT))
    kinds = None if only == "all" else set(only.split(","))
    if what == "checkpoint":
        import numpy  # noqa: F401 - imported before counting starts

        from core.store import checkpoints  # noqa: F401

        install(int(k), mode, kinds)
        write_checkpoint(Path(rest[0]), 2)
        return 0
    if what == "publish":
        from core.config import RunConfig
        from core.store.runs import RunStore, RunWriter

        store = RunStore(rest[0])
        work = store.runs_dir / ".incomplete" / rest[1]
        writer = RunWriter(store, RunConfig.from_dict(json.loads((work / "config.json").read_text())), rest[1])
        install(int(k), mode, kinds)
        writer.publish(fake_metrics(), save_final)
        return 0
    if what == "cli":
        from core.cli import main as cli_main

        install(int(k), mode, kinds)
        return cli_main(rest)
    raise SystemExit(f"unknown target {what!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
