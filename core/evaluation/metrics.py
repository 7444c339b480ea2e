"""The one evaluator: `evaluate(y_true, probabilities, labels, allowed=None) -> SplitMetrics`.

Training (validation every epoch, test once), `python -m core evaluate`, external validation (argmax over every
class, and restricted to the classes a dataset has) and the review summary (model's call against the
reviewer's) all score through here and get one result shape, `SplitMetrics`, stored as its `to_dict()`:

    schema_version, labels, n, accuracy, accuracy_ci95 (95% Wilson), balanced_accuracy, auc (macro
    one-vs-rest over the classes present; None without probabilities or with fewer than two classes),
    macro_f1, macro_precision, macro_recall, loss (None without probabilities),
    per_class {label: precision, recall, f1, support} for each row class,
    confusion (rows = true class, columns = predicted class), rows, columns,
    predicted_outside {label: count of predictions into a class that is not a row}, predicted_outside_total

Macro averages and balanced accuracy are taken over the row classes that have images (support > 0).
`SplitMetrics.from_dict` also reads the layouts written before `schema_version` existed (metrics.json's splits
and external evaluations' tables), so old run folders and records keep loading.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

SCHEMA_VERSION = 2  # 1: the layout before versions (no schema_version key, no rows/columns in metrics.json)
LEGACY_SCHEMA_VERSION = 1


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (better than the normal one near 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def macro_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC over the classes present; None when fewer than two are present."""
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415 - seconds to import; pages reading metrics skip it

    aucs = [roc_auc_score(y_true == c, probabilities[:, c]) for c in present]
    return float(np.mean(aucs))


def predictions(probabilities: np.ndarray, allowed: Sequence[int] | None = None) -> np.ndarray:
    """argmax over all classes, or over the `allowed` class indices only."""
    p = np.asarray(probabilities)
    if allowed is None:
        return p.argmax(axis=1)
    allowed_idx = np.asarray(list(allowed), dtype=int)
    return allowed_idx[p[:, allowed_idx].argmax(axis=1)] if len(p) else np.zeros(0, int)


def count_matrix(y_true: np.ndarray, y_pred: np.ndarray, rows: Sequence[int], columns: Sequence[int]) -> np.ndarray:
    """Counts of (true, predicted) pairs: a row per class in `rows`, a column per class in `columns`; pairs
    outside them (negative indices too) are not counted."""
    y_true = np.asarray(y_true, dtype=int).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=int).reshape(-1)
    rows, columns = [int(c) for c in rows], [int(c) for c in columns]
    size = max([0, *rows, *columns, int(y_true.max(initial=0)), int(y_pred.max(initial=0))]) + 1
    row_pos, col_pos = np.full(size, -1), np.full(size, -1)
    row_pos[rows], col_pos[columns] = np.arange(len(rows)), np.arange(len(columns))
    i = np.where(y_true >= 0, row_pos[np.maximum(y_true, 0)], -1)
    j = np.where(y_pred >= 0, col_pos[np.maximum(y_pred, 0)], -1)
    keep = (i >= 0) & (j >= 0)
    counts = np.zeros((len(rows), len(columns)), dtype=np.int64)
    np.add.at(counts, (i[keep], j[keep]), 1)
    return counts


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float  # also the study's per-class accuracy (its Table 15)
    f1: float
    support: int


@dataclass(frozen=True)
class SplitMetrics:
    labels: list[str]  # every class the model knows, in its order
    n: int
    accuracy: float
    accuracy_ci95: list[float]
    balanced_accuracy: float
    macro_f1: float
    macro_precision: float
    macro_recall: float
    auc: float | None
    loss: float | None
    per_class: dict[str, ClassMetrics]  # one entry per row class
    confusion: list[list[int]]  # rows x columns
    rows: list[str]  # true classes reported (every label, or the classes a dataset has)
    columns: list[str]  # classes a prediction could take (every label, or the allowed ones)
    predicted_outside: dict[str, int] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def predicted_outside_total(self) -> int:
        return int(sum(self.predicted_outside.values()))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["predicted_outside_total"] = self.predicted_outside_total
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], labels: Sequence[str] | None = None) -> "SplitMetrics":
        """Read a stored split, this version's or one written before `schema_version` (metrics.json splits have
        no rows/columns: both are their labels; external tables have no labels: give `labels`, else their
        columns are taken)."""
        columns = list(d.get("columns") or d.get("labels") or labels or [])
        rows = list(d.get("rows") or columns)
        all_labels = list(d.get("labels") or labels or columns)
        per_class = {k: ClassMetrics(float(v["precision"]), float(v["recall"]), float(v["f1"]), int(v["support"]))
                     for k, v in d["per_class"].items()}
        present = [v for v in per_class.values() if v.support > 0]

        def mean(key: str) -> float:
            return float(np.mean([getattr(v, key) for v in present])) if present else 0.0

        return cls(
            labels=all_labels, n=int(d["n"]), accuracy=float(d["accuracy"]),
            accuracy_ci95=[float(x) for x in d["accuracy_ci95"]],
            balanced_accuracy=float(d["balanced_accuracy"]), macro_f1=float(d["macro_f1"]),
            macro_precision=float(d.get("macro_precision", mean("precision"))),
            macro_recall=float(d.get("macro_recall", mean("recall"))),
            auc=d.get("auc"), loss=d.get("loss"), per_class=per_class,
            confusion=[[int(x) for x in row] for row in d["confusion"]], rows=rows, columns=columns,
            predicted_outside={k: int(v) for k, v in (d.get("predicted_outside") or {}).items()},
            schema_version=int(d.get("schema_version", LEGACY_SCHEMA_VERSION)))


def evaluate(y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
             allowed: Sequence[int] | None = None, rows: Sequence[int] | None = None) -> SplitMetrics:
    """Score predicted probabilities (N, len(labels)) against true class indices (N,).

    `allowed`: class indices the argmax may choose (the confusion's columns); default every class.
    `rows`: the true classes reported (per-class figures, confusion rows, macro averages); default every class.
    External validation passes the classes the dataset has as `rows`, and as `allowed` for the figure
    restricted to them. AUC and loss are computed from the probabilities as given, over every class.
    """
    from sklearn.metrics import log_loss  # noqa: PLC0415 - see macro_auc

    y_true = np.asarray(y_true).reshape(-1).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    scored = evaluate_calls(y_true, predictions(probabilities, allowed), labels, allowed, rows)
    n, classes = scored.n, list(range(len(scored.labels)))
    clipped = np.clip(probabilities, 1e-7, 1.0)
    loss = float(log_loss(y_true, clipped / clipped.sum(1, keepdims=True), labels=classes)) if n else None
    return replace(scored, auc=macro_auc(y_true, probabilities) if n else None, loss=loss)


def evaluate_calls(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str],
                   allowed: Sequence[int] | None = None, rows: Sequence[int] | None = None) -> SplitMetrics:
    """The same figures from hard calls (class indices), where there are no probabilities: no AUC, no loss.

    The review summary uses it for the model's call (true) against the reviewer's (predicted).
    """
    y_true = np.asarray(y_true).reshape(-1).astype(int)
    y_pred = np.asarray(y_pred).reshape(-1).astype(int)
    labels = list(labels)
    everything = list(range(len(labels)))
    row_idx = everything if rows is None else [int(c) for c in rows]
    col_idx = everything if allowed is None else [int(c) for c in allowed]
    n = int(len(y_true))
    correct = int((y_true == y_pred).sum())
    full = count_matrix(y_true, y_pred, everything, everything)
    support = full.sum(axis=1)
    called = full.sum(axis=0)
    per_class = {}
    for c in row_idx:
        tp = int(full[c, c])
        precision = tp / called[c] if called[c] else 0.0
        recall = tp / support[c] if support[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[labels[c]] = ClassMetrics(float(precision), float(recall), float(f1), int(support[c]))
    present = [per_class[labels[c]] for c in row_idx if support[c] > 0]

    def mean(key: str) -> float:
        return float(np.mean([getattr(v, key) for v in present])) if present else 0.0

    row_set = set(row_idx)
    outside = Counter(labels[int(p)] for p in y_pred if int(p) not in row_set)
    low, high = wilson_interval(correct, n)
    return SplitMetrics(
        labels=labels, n=n, accuracy=correct / n if n else 0.0, accuracy_ci95=[low, high],
        balanced_accuracy=mean("recall"), macro_f1=mean("f1"), macro_precision=mean("precision"),
        macro_recall=mean("recall"), auc=None, loss=None, per_class=per_class,
        confusion=full[np.ix_(row_idx, col_idx)].tolist(), rows=[labels[c] for c in row_idx],
        columns=[labels[c] for c in col_idx], predicted_outside=dict(sorted(outside.items())))
