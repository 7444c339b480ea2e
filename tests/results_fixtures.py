"""Runs for the results and confusion tests: synthetic ones written through the real RunStore (fast, for the
matrix math) and a small store of real trained runs with several seeds (for the pages).

Imported by the test modules that need them; the session-wide store is built once per test session even when
several modules ask for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from core.config import RunConfig
from core.data.registry import label_names
from core.evaluation.metrics import evaluate
from core.store.runs import RunStore

_SEEDED: dict[str, Path] = {}


def synthetic_metrics(test_accuracy: float, val_accuracy: float | None = None, seed: int = 0,
                      n: int = 200) -> dict[str, Any]:
    """metrics.json in the real layout (core.evaluation.metrics.evaluate) for predictions that are right
    on about `test_accuracy` of `n` images."""
    labels = label_names()
    rng = np.random.default_rng(seed)

    def split(acc: float) -> dict[str, Any]:
        y = np.arange(n) % len(labels)
        right = rng.random(n) < acc
        pred = np.where(right, y, (y + 1 + rng.integers(0, len(labels) - 1, n)) % len(labels))
        probs = np.full((n, len(labels)), 0.02)
        probs[np.arange(n), pred] = 1 - 0.02 * (len(labels) - 1)
        return evaluate(y, probs, labels).to_dict()

    val = split(val_accuracy if val_accuracy is not None else test_accuracy)
    test = split(test_accuracy)
    # pin the headline numbers so tests can compute the expected means by hand
    test["accuracy"] = test_accuracy
    val["accuracy"] = val_accuracy if val_accuracy is not None else test_accuracy
    return {"val": val, "test": test, "best_epoch": 1, "epochs_run": 2, "train_seconds": 10.0 + seed,
            "train_images_per_second": 100.0}


def publish(store: RunStore, config: RunConfig, metrics: dict[str, Any],
            history: list[dict[str, float]] | None = None):
    writer = store.writer(config)
    writer.write_history(history or [
        {"epoch": 1, "loss": 1.2, "accuracy": 0.6, "auc": 0.8, "val_loss": 1.0, "val_accuracy": 0.65,
         "val_auc": 0.85, "train_seconds": 5.0},
        {"epoch": 2, "loss": 0.8, "accuracy": 0.7, "auc": 0.9, "val_loss": 0.9, "val_accuracy": 0.7,
         "val_auc": 0.9, "train_seconds": 5.0}])
    return writer.publish(metrics, lambda path: Path(path).write_bytes(b"placeholder model"))


def seeded_artifacts(tmp_path_factory, trained_run: Path, tiny_npz: Path) -> Path:
    """An artifacts folder with three real tiny ResNet-18 runs, seeds 1-3, in the same cell of an architecture
    x size x batch matrix: the session's `trained_run` (copied; all 256 training images) and two more trained
    here (64 images, one epoch each). They are two settings, not three seeds of one: the matrix must not pool
    them (the issue's 1,000-image and 500-image runs, in small)."""
    if "path" in _SEEDED:
        return _SEEDED["path"]
    from core.training.trainer import train

    artifacts = tmp_path_factory.mktemp("results-artifacts")
    store = RunStore(artifacts / "runs")
    shutil.copytree(trained_run, store.runs_dir / Path(trained_run).name)
    for seed in (2, 3):
        config = RunConfig(data=str(tiny_npz), size=28, arch="resnet18", weights="none", epochs=1,
                           limit_train=64, batch_size=32, seed=seed)
        train(config, store, echo=None)
    store.reindex()
    _SEEDED["path"] = artifacts
    return artifacts


def copy_store(source_artifacts: Path, target: Path, run_ids: list[str] | None = None) -> Path:
    """A private copy of some runs (for tests that change or delete them)."""
    store = RunStore(target / "runs")
    for run in sorted((source_artifacts / "runs").iterdir()):
        if run.is_dir() and not run.name.startswith(".") and (run_ids is None or run.name in run_ids):
            shutil.copytree(run, store.runs_dir / run.name)
    store.reindex()
    return target
