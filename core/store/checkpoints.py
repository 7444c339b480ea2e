"""A run's checkpoint as one atomic unit: the model (with its optimizer state), the best epoch's weights and
the training state, switched together.

Each epoch's checkpoint is written into a fresh folder `<work>/ckpt-<epoch>-<random>/` (model.keras,
best-weights.npz, state.json), every file and the folder fsynced; then the pointer `<work>/checkpoint.json`
({"unit": folder name}) is replaced atomically (and its folder fsynced): that rename is the one step that
switches to the new checkpoint. Only then are older units removed. A crash or a full disk at any point
leaves the pointer on a complete unit (the previous or the new one), and `load` reads only the unit the
pointer names. The whole write runs inside `uninterrupted()`, so a cancel finishes it first.

Checkpoints written before units existed (checkpoint.keras, checkpoint-best.weights.h5 and a
checkpoint.json holding the state itself) are still read, for resuming runs interrupted before the upgrade.
Keras is never imported here: the model is saved through a callable (`model.save`) and loaded by the caller.
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.errors import StoreError
from core.store.io import fsync_dir, fsync_file, uninterrupted, write_json

POINTER = "checkpoint.json"
UNIT_PREFIX = "ckpt-"
UNIT_MODEL, UNIT_BEST, UNIT_STATE = "model.keras", "best-weights.npz", "state.json"
LEGACY_MODEL, LEGACY_BEST = "checkpoint.keras", "checkpoint-best.weights.h5"


class CheckpointError(StoreError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint found in a work folder."""

    unit: Path  # the unit's folder (the work folder itself for a legacy checkpoint)
    state: dict[str, Any]
    legacy: bool = False

    @property
    def model_path(self) -> Path:
        return self.unit / (LEGACY_MODEL if self.legacy else UNIT_MODEL)

    @property
    def best_path(self) -> Path:
        """The best weights: an .npz of arrays, or (legacy) a Keras .weights.h5 file."""
        return self.unit / (LEGACY_BEST if self.legacy else UNIT_BEST)

    def best_weights(self) -> list[np.ndarray]:
        """The best epoch's weights as `model.get_weights()` gives them (not for legacy checkpoints)."""
        if self.legacy:
            raise CheckpointError("a legacy checkpoint keeps its best weights as a Keras file: load best_path")
        with np.load(self.best_path) as npz:
            return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def exists(work_dir: Path) -> bool:
    return (Path(work_dir) / POINTER).is_file()


def save(work_dir: Path, epoch: int, save_model: Callable[[Path], None], best_weights: Sequence[np.ndarray],
         state: dict[str, Any]) -> Path:
    """Write one checkpoint unit and switch the pointer to it; returns the unit's folder."""
    work_dir = Path(work_dir)
    unit = work_dir / f"{UNIT_PREFIX}{epoch:04d}-{secrets.token_hex(3)}"
    with uninterrupted():
        unit.mkdir()
        save_model(unit / UNIT_MODEL)
        fsync_file(unit / UNIT_MODEL)
        with open(unit / UNIT_BEST, "wb") as f:
            np.savez(f, *best_weights)
            f.flush()
            fsync_file(unit / UNIT_BEST)
        write_json(unit / UNIT_STATE, state)
        fsync_dir(unit)
        fsync_dir(work_dir)
        write_json(work_dir / POINTER, {"unit": unit.name}, sync_dir=True)  # the switch
        remove_stale(work_dir, keep=unit.name)
    return unit


def load(work_dir: Path) -> Checkpoint | None:
    """The checkpoint the pointer names, or None when there is none; CheckpointError when it is damaged."""
    work_dir = Path(work_dir)
    pointer = work_dir / POINTER
    if not pointer.is_file():
        return None
    try:
        data = json.loads(pointer.read_text())
        if "unit" not in data:  # written before checkpoint units: the state itself
            if not (work_dir / LEGACY_MODEL).is_file() or not (work_dir / LEGACY_BEST).is_file():
                raise FileNotFoundError("checkpoint.keras or checkpoint-best.weights.h5")
            return Checkpoint(work_dir, data, legacy=True)
        name = str(data["unit"])
        if not name.startswith(UNIT_PREFIX) or "/" in name or "\\" in name:
            raise ValueError(f"not a checkpoint unit: {name!r}")
        unit = work_dir / name
        state = json.loads((unit / UNIT_STATE).read_text())
        for part in (UNIT_MODEL, UNIT_BEST):
            if not (unit / part).is_file():
                raise FileNotFoundError(unit / part)
        return Checkpoint(unit, state)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"The checkpoint in {work_dir} is damaged ({e.__class__.__name__}: {e}); the run "
                              f"cannot be resumed from it. Delete the job (its work folder goes with it) and "
                              f"train it again.") from e


def remove_stale(work_dir: Path, keep: str) -> None:
    """Remove every checkpoint unit but `keep`, leftovers of a cut write, and legacy checkpoint files."""
    for path in Path(work_dir).iterdir():
        if path.name.startswith(UNIT_PREFIX) and path.name != keep:
            shutil.rmtree(path, ignore_errors=True)
        elif path.name in (LEGACY_MODEL, LEGACY_BEST) or path.name.startswith(".tmp-checkpoint"):
            path.unlink(missing_ok=True)


def remove_all(run_dir: Path) -> None:
    """Remove a run's checkpoints (once it is published): the pointer first, so no pointer ever names a
    half-removed unit."""
    run_dir = Path(run_dir)
    (run_dir / POINTER).unlink(missing_ok=True)
    remove_stale(run_dir, keep="")
