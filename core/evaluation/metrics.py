"""Classification metrics from predicted probabilities, in the layout `metrics.json` stores.

Keys per split: accuracy (with a 95% Wilson interval), balanced_accuracy, auc (macro one-vs-rest,
scikit-learn), macro_f1, per_class {label: precision, recall, f1, support}, confusion (rows = true class),
labels, n.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)


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
    aucs = [roc_auc_score(y_true == c, probabilities[:, c]) for c in present]
    return float(np.mean(aucs))


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray,
                           labels: Sequence[str]) -> dict[str, Any]:
    y_true = np.asarray(y_true).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_classes = len(labels)
    y_pred = probabilities.argmax(axis=1)
    classes = list(range(n_classes))
    n = int(len(y_true))
    correct = int((y_pred == y_true).sum())
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0)
    present = support > 0
    low, high = wilson_interval(correct, n)
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": [low, high],
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if n else 0.0,
        "auc": macro_auc(y_true, probabilities),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "loss": float(log_loss(y_true, clipped / clipped.sum(1, keepdims=True), labels=classes)) if n else None,
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "labels": list(labels),
    }
