"""The corruption benchmark of one run: its model on its own test split, clean and under every MedMNIST-C blood
corruption at severities 1-5 (core.evaluation.corruptions), each scored with the one evaluator
(core.evaluation.metrics.evaluate), stored in the run folder as `robustness.json`.

    report = evaluate_robustness(run_dir)          # python -m core robustness --run DIR
    print(format_table(report))
    load_report(run_dir)                           # the stored report, or None; the Results page shows it

With `split="val"` the same benchmark scores the run's validation split instead, for choosing a recipe without
touching test (presets are chosen on validation data); that report is returned and printed, never stored, so
the run's stored report is always its test split's.

The headline figures are the clean accuracy and the mean corrupted accuracy: the mean over every corruption and
severity (55 cells), as MedMNIST-C averages its errors. Each cell also keeps its balanced accuracy (MedMNIST-C's
own metric is the balanced error). The test split is the one the run was evaluated on (`Run.test_split`, the
images `python -m core evaluate` scores); `limit` takes a stratified subset of it (`stratified_subset` with the
report's seed, in split order) for quick checks. An image is corrupted from the seed and its index in the split,
so a subset sees exactly the corruptions the whole split would.

TensorFlow loads only inside `evaluate_robustness`, when it loads the run's classifier
(core.evaluation.predictions.load_classifier, the path the Confusions page uses too).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from core.data.dataset import DatasetError, stratified_subset
from core.errors import StoreError, UserFacingError
from core.evaluation import corruptions
from core.evaluation.metrics import SplitMetrics, evaluate
from core.evaluation.predictions import load_classifier
from core.store.io import add_to_finished_run, json_text
from core.store.runs import open_run

if TYPE_CHECKING:
    from core.inference.classifier import Classifier

ROBUSTNESS_FILE = "robustness.json"
SCHEMA_VERSION = 1
BATCH = 256  # images corrupted and scored at a time: bounded memory even at 224 px
SPLITS = ("test", "val")
COMMAND = "python -m core robustness --run"  # how a report is made; pages and messages say so

Progress = Callable[[int, int, str], None]  # (steps done, steps in all, what was just scored)


class RobustnessError(UserFacingError, ValueError):
    """A benchmark setting that cannot be used (a limit below one image, a negative seed)."""


class RobustnessReportError(StoreError):
    """A stored robustness.json that cannot be read; the message names the file and how to make it again."""


@dataclass(frozen=True)
class SeverityScore:
    accuracy: float
    balanced_accuracy: float


@dataclass(frozen=True)
class CorruptionScores:
    name: str  # a corruptions.NAMES entry
    severities: tuple[SeverityScore, ...]  # severity 1..5

    @property
    def title(self) -> str:
        return corruptions.title(self.name)

    @property
    def accuracies(self) -> list[float]:
        return [s.accuracy for s in self.severities]

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(self.accuracies))


@dataclass(frozen=True)
class RobustnessReport:
    run_id: str
    data: str  # the npz whose split was scored
    image_size: int
    n: int  # images scored (each clean and under every corruption and severity)
    limit: int | None  # None: the whole split
    seed: int  # the corruptions' random choices (and the subset, with a limit)
    clean: SplitMetrics
    corruptions: tuple[CorruptionScores, ...]
    seconds: float
    created: str  # UTC, ISO 8601
    benchmark_version: int = corruptions.BENCHMARK_VERSION
    schema_version: int = SCHEMA_VERSION
    split: str = "test"  # the split scored ("val" only in reports that are not stored)

    @property
    def clean_accuracy(self) -> float:
        return self.clean.accuracy

    @property
    def mean_corrupted_accuracy(self) -> float:
        """The mean over every corruption and severity."""
        return float(np.mean([a for c in self.corruptions for a in c.accuracies]))

    @property
    def mean_corrupted_balanced_accuracy(self) -> float:
        return float(np.mean([s.balanced_accuracy for c in self.corruptions for s in c.severities]))

    def accuracy_table(self) -> dict[str, list[float]]:
        """{corruption name: accuracy at severities 1..5}, in the registry's order."""
        return {c.name: c.accuracies for c in self.corruptions}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version, "benchmark": "MedMNIST-C BloodMNIST corruptions",
            "benchmark_version": self.benchmark_version, "run_id": self.run_id, "data": self.data,
            "split": self.split, "image_size": self.image_size, "n": self.n, "limit": self.limit, "seed": self.seed,
            "seconds": self.seconds, "created": self.created,
            "clean_accuracy": self.clean_accuracy, "mean_corrupted_accuracy": self.mean_corrupted_accuracy,
            "mean_corrupted_balanced_accuracy": self.mean_corrupted_balanced_accuracy,
            "severities": list(corruptions.SEVERITIES),
            "corruptions": [{"name": c.name, "accuracy": c.accuracies,
                             "balanced_accuracy": [s.balanced_accuracy for s in c.severities]}
                            for c in self.corruptions],  # a list: the registry's order survives sort_keys
            "clean": self.clean.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RobustnessReport":
        """The report `to_dict` wrote; KeyError, TypeError or ValueError when it is not one (`load_report`
        turns those into a RobustnessReportError)."""
        version = int(d["schema_version"])
        if version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {version} is newer than this program reads ({SCHEMA_VERSION})")
        table = []
        for cell in d["corruptions"]:
            name, accuracy, balanced = cell["name"], list(cell["accuracy"]), list(cell["balanced_accuracy"])
            if len(accuracy) != len(corruptions.SEVERITIES) or len(balanced) != len(accuracy):
                raise ValueError(f"{name}: {len(accuracy)} severities, expected {len(corruptions.SEVERITIES)}")
            table.append(CorruptionScores(str(name), tuple(SeverityScore(float(a), float(b))
                                                           for a, b in zip(accuracy, balanced))))
        if not table:
            raise ValueError("no corruptions")
        limit = d["limit"]
        return cls(run_id=str(d["run_id"]), data=str(d["data"]), image_size=int(d["image_size"]), n=int(d["n"]),
                   limit=None if limit is None else int(limit), seed=int(d["seed"]),
                   clean=SplitMetrics.from_dict(d["clean"]), corruptions=tuple(table), seconds=float(d["seconds"]),
                   created=str(d["created"]), benchmark_version=int(d["benchmark_version"]), schema_version=version,
                   split=str(d.get("split", "test")))  # reports written before the setting scored test


# -- storing ---------------------------------------------------------------------------------------------------

def report_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / ROBUSTNESS_FILE


def save_report(run_dir: str | Path, report: RobustnessReport) -> Path:
    """Write robustness.json atomically into the run folder, keeping the folder's modification time (as the
    other files added to a finished run do)."""
    return add_to_finished_run(Path(run_dir), ROBUSTNESS_FILE, json_text(report.to_dict()))


def load_report(run_dir: str | Path) -> RobustnessReport | None:
    """The run's stored report; None when it has none; RobustnessReportError when the file cannot be read."""
    path = report_path(run_dir)
    if not path.is_file():
        return None
    redo = f"Measure it again with `{COMMAND} {Path(run_dir)}`, which replaces the file."
    try:
        return RobustnessReport.from_dict(json.loads(path.read_text()))
    except OSError as e:
        raise RobustnessReportError(f"Could not read {path} ({e.strerror or e}).") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        reason = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise RobustnessReportError(f"{path} is damaged or not a robustness report ({reason}). {redo}") from None


# -- measuring -------------------------------------------------------------------------------------------------

def _probabilities(classifier: "Classifier", images: np.ndarray, indices: np.ndarray, corruption: str | None = None,
                   severity: int = 0, seed: int = 0) -> np.ndarray:
    """The classifier's probabilities for `images` (at `indices` in their split), in batches of BATCH, each batch
    corrupted first when a corruption is named."""
    parts = []
    for start in range(0, len(images), BATCH):
        batch = images[start:start + BATCH]
        if corruption is not None:
            batch = corruptions.corrupt_batch(batch, corruption, severity, seed, indices[start:start + BATCH])
        parts.append(classifier.probabilities(batch))
    return np.concatenate(parts) if parts else np.zeros((0, len(classifier.labels)), np.float32)


def evaluate_robustness(run_dir: str | Path, *, limit: int | None = None, seed: int = 0,
                        classifier: "Classifier | None" = None, progress: Progress | None = None,
                        store: bool = True, split: str = "test") -> RobustnessReport:
    """Score the run's model on its test split (or, with `split="val"`, its validation split), clean and under
    every corruption at severities 1-5; store a test report in the run folder (`store`) and return it.

    `limit`: score a stratified subset of about this many images (None: all of them). `classifier`: the
    run's model already loaded (else it is loaded here). `progress(done, total, label)` is called after each
    of the 1 + 55 passes.
    """
    if split not in SPLITS:
        raise RobustnessError(f"the split must be one of {', '.join(SPLITS)}, not {split!r}")
    if limit is not None and int(limit) < 1:
        raise RobustnessError(f"the limit must be a positive number of {split} images, not {limit!r}")
    if int(seed) < 0:
        raise RobustnessError(f"the seed must be a non-negative integer, not {seed!r}")
    run_dir = Path(run_dir)
    run = open_run(run_dir)
    started = time.perf_counter()
    images, labels = run.split(split)
    indices = stratified_subset(labels, int(limit), int(seed)) if limit else np.arange(len(labels))
    images, labels = images[indices], labels[indices]
    if classifier is None:
        classifier = load_classifier(run_dir)  # TensorFlow loads here
    if images.shape[1] != classifier.image_size:
        raise DatasetError(f"the run's model takes {classifier.image_size} px images; its {split} split holds "
                           f"{images.shape[1]} px")
    total = 1 + len(corruptions.CORRUPTIONS) * len(corruptions.SEVERITIES)
    clean = evaluate(labels, _probabilities(classifier, images, indices), classifier.labels)
    done = 1
    if progress:
        progress(done, total, "clean")
    table = []
    for c in corruptions.CORRUPTIONS:
        scores = []
        for severity in corruptions.SEVERITIES:
            probabilities = _probabilities(classifier, images, indices, c.name, severity, int(seed))
            scored = evaluate(labels, probabilities, classifier.labels)
            scores.append(SeverityScore(scored.accuracy, scored.balanced_accuracy))
            done += 1
            if progress:
                progress(done, total, f"{c.name} {severity}")
        table.append(CorruptionScores(c.name, tuple(scores)))
    report = RobustnessReport(
        run_id=run.run_id, data=str(run.training_data()), image_size=int(images.shape[1]), n=int(len(labels)),
        limit=None if limit is None else int(limit), seed=int(seed), clean=clean, corruptions=tuple(table),
        seconds=round(time.perf_counter() - started, 3), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        split=split)
    if store and split == "test":  # the run's stored report is its test split's
        save_report(run_dir, report)
    return report


# -- printing --------------------------------------------------------------------------------------------------

def format_table(report: RobustnessReport) -> str:
    """The report as the command line prints it: the settings, the two headline figures, then one row per
    corruption (accuracy at each severity and its mean)."""
    name = "validation" if report.split == "val" else "test"
    subset = f"the whole {name} split" if report.limit is None else f"a stratified subset, limit {report.limit}"
    width = max(len(c.title) for c in report.corruptions)
    header = f"{'corruption':<{width}}  " + "  ".join(f"{f'sev {s}':>6}" for s in corruptions.SEVERITIES) + "    mean"
    lines = [
        f"Corruption benchmark (MedMNIST-C BloodMNIST corruptions, v{report.benchmark_version}) of run "
        f"{report.run_id}",
        f"{report.n} {name} images at {report.image_size} px ({subset}), seed {report.seed}, "
        f"{report.seconds:.0f} s",
        "",
        f"clean accuracy            {report.clean_accuracy:.4f}",
        f"mean corrupted accuracy   {report.mean_corrupted_accuracy:.4f}  (mean over "
        f"{len(report.corruptions)} corruptions x {len(corruptions.SEVERITIES)} severities)",
        "",
        header,
        "-" * len(header),
    ]
    for c in report.corruptions:
        cells = "  ".join(f"{a:>6.3f}" for a in c.accuracies)
        lines.append(f"{c.title:<{width}}  {cells}  {c.mean_accuracy:>6.3f}")
    return "\n".join(lines)
