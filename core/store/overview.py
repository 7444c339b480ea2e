"""What the home page shows: which BloodMNIST files are present locally, and a summary of the run store.

Light on purpose (no TensorFlow, no streamlit): it reads file sizes and the SQLite run index only, so the
dashboard's home page opens instantly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import SETTINGS, SIZES
from core.data import registry
from core.errors import UserFacingError
from core.models.architectures import display_name
from core.store.runs import RunStore, default_runs_dir

RECENT_RUNS = 10


@dataclass(frozen=True)
class DatasetFile:
    """One BloodMNIST size in the data root: present (with its size on disk) or how to get it."""

    size: int
    path: Path
    present: bool
    n_bytes: int = 0

    @property
    def download_command(self) -> str:
        return f"python -m core download --size {self.size}"

    @property
    def file_name(self) -> str:
        return self.path.name


def dataset_files(root: Path | None = None) -> list[DatasetFile]:
    """Every BloodMNIST size (28, 64, 128, 224 px), in order, with whether its npz is in the data root."""
    root = root or registry.data_root()
    present = registry.available_sizes(root)
    out = []
    for size in SIZES:
        path = present.get(size) or registry.local_path(size, root)
        n_bytes = 0
        if size in present:
            try:
                n_bytes = path.stat().st_size
            except OSError:
                present.pop(size)
        out.append(DatasetFile(size=size, path=path, present=size in present, n_bytes=n_bytes))
    return out


def download_url(size: int) -> str | None:
    """The file's URL from medmnist's registry, or None when medmnist is not installed."""
    try:
        return registry.url_and_md5(size)[0]
    except UserFacingError:
        return None


def class_names() -> list[str] | None:
    """The eight classes' short names from medmnist's registry (never typed here), or None without medmnist."""
    try:
        return [registry.short_label(label) for label in registry.label_names()]
    except UserFacingError:
        return None


def human_bytes(n: int) -> str:
    """Decimal units, as file managers and download pages show them: 1234567 -> '1.2 MB'."""
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    return f"{value:.1f} {unit}"


def weights_label(weights: str) -> str:
    """'ImageNet', 'from scratch' (the weights setting's value names) or 'file <name>'."""
    return SETTINGS["weights"].value_names.get(weights) or f"file {Path(weights).name}"


@dataclass(frozen=True)
class RunsOverview:
    runs_dir: Path
    count: int
    best: dict[str, Any] | None  # index row of the run with the highest VALIDATION accuracy
    recent: list[dict[str, Any]]  # index rows, newest first


def runs_overview(runs_dir: str | Path | None = None, recent: int = RECENT_RUNS) -> RunsOverview:
    """Count, best run (by validation accuracy, never test) and the newest runs, from the SQLite index.

    If the index is empty while complete run directories exist (e.g. copied in by hand), it is rebuilt once.
    """
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    store = RunStore(runs_dir)  # a damaged index is a RunStoreError naming the file, with the repair hint
    rows = store.list_runs("created DESC")
    if not rows and any(store.complete_runs()):
        store.reindex()
        rows = store.list_runs("created DESC")
    best = store.best_run() if rows else None
    return RunsOverview(runs_dir=store.runs_dir, count=len(rows), best=best, recent=rows[:recent])


def format_created(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def recent_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Index rows as display rows (column name -> value) for a small table."""
    return [{
        "Run": r["run_id"],
        "Created": format_created(r.get("created")),
        "Architecture": display_name(r["arch"]),
        "Size (px)": r["size"],
        "Weights": weights_label(r["weights"]),
        "Batch": r["batch_size"],
        "Best epoch": f"{r['best_epoch']}/{r['epochs_run']}",
        "Val accuracy": r["val_accuracy"],
        "Test accuracy": r["test_accuracy"],
        "Test AUC": r["test_auc"],
        "Tags": (r.get("tags") or "").replace(",", ", "),
    } for r in rows]
