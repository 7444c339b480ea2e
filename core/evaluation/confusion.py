"""Where a run's errors go: confusion matrices, ranked confusions of chosen classes, two-run differences and
per-class recall with 95% Wilson intervals. NumPy and pandas only (no streamlit, no TensorFlow).

Confusion matrices have rows = true class, columns = predicted class, as metrics.json stores them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from core.data.registry import label_names, short_label
from core.evaluation.metrics import SplitMetrics, count_matrix, wilson_interval

# First words of the classes the study could not separate well (its Tables 10 and 13), matched against the
# registry's label names: the confusion page's default focus and the review's "ambiguous first" order.
AMBIGUOUS_WORDS = ("monocyte", "immature")


def ambiguous_labels(labels: Sequence[str] | None = None) -> tuple[str, ...]:
    """The study's hard classes, as short names of `labels` (default: the registry's), in label order."""
    names = [short_label(x) for x in (labels if labels is not None else label_names())]
    return tuple(n for word in AMBIGUOUS_WORDS for n in names if n.split()[0].lower() == word)


AMBIGUOUS = ambiguous_labels()  # ('monocyte', 'immature granulocytes') with medmnist's names


def from_metrics(metrics: dict[str, Any], split: str = "test") -> tuple[np.ndarray, list[str]]:
    """(counts, short class names) of a run's best epoch on `split` (any metrics.json layout)."""
    part = SplitMetrics.from_dict(metrics[split])
    counts = np.asarray(part.confusion, dtype=np.int64)
    labels = [short_label(label) for label in part.rows]
    if counts.shape != (len(labels), len(part.columns)) or part.rows != part.columns:
        raise ValueError(f"confusion matrix {counts.shape} does not match {len(labels)} labels")
    return counts, labels


def from_predictions(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    return count_matrix(y_true, y_pred, range(n_classes), range(n_classes))


def mismatch(counts: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> int:
    """How many images recomputed predictions place in another cell than the stored matrix `counts` does.

    Each such image takes one count from its stored cell and adds one to another, so it is half the summed
    absolute difference of the two matrices.
    """
    counts = np.asarray(counts)
    return int(np.abs(from_predictions(y_true, y_pred, counts.shape[0]) - counts).sum()) // 2


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total: the share of a true class predicted as each class (NaN for an empty row)."""
    counts = np.asarray(counts, float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)


def ranked_confusions(counts: np.ndarray, labels: Sequence[str], focus: Sequence[str] = AMBIGUOUS,
                      include_predicted: bool = True) -> pd.DataFrame:
    """Off-diagonal cells involving the focus classes, most frequent first.

    A row per (true -> predicted) with count > 0 where the true class is in `focus` (images of the class that
    went elsewhere) or, with `include_predicted`, the predicted class is (images of other classes taken for
    it). `share` is the count over all test images of the true class.
    """
    counts = np.asarray(counts)
    totals = counts.sum(axis=1)
    focus = set(focus)
    records = []
    for i, true in enumerate(labels):
        for j, pred in enumerate(labels):
            if i == j or counts[i, j] == 0:
                continue
            if true in focus or (include_predicted and pred in focus):
                records.append({"true": true, "predicted": pred, "count": int(counts[i, j]),
                                "share": counts[i, j] / totals[i]})
    df = pd.DataFrame.from_records(records, columns=["true", "predicted", "count", "share"])
    return df.sort_values(["count", "share"], ascending=False, kind="stable").reset_index(drop=True)


def difference(counts_a: np.ndarray, counts_b: np.ndarray) -> np.ndarray:
    """Row-normalised B minus row-normalised A: positive where run B sends more of a true class there."""
    a, b = np.asarray(counts_a), np.asarray(counts_b)
    if a.shape != b.shape:
        raise ValueError(f"the runs have different classes ({a.shape[0]} vs {b.shape[0]})")
    return row_normalise(b) - row_normalise(a)


def recall_intervals(counts: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Per-class recall (correct / images of the class) with its 95% Wilson interval."""
    counts = np.asarray(counts)
    records = []
    for i, label in enumerate(labels):
        correct, support = int(counts[i, i]), int(counts[i].sum())
        low, high = wilson_interval(correct, support)
        records.append({"class": label, "recall": correct / support if support else np.nan, "low": low,
                        "high": high, "correct": correct, "support": support})
    return pd.DataFrame.from_records(records)


def cell_members(y_true: np.ndarray, y_pred: np.ndarray, probabilities: np.ndarray, true_index: int,
                 pred_index: int) -> np.ndarray:
    """Indices of test images of class `true_index` predicted as `pred_index`, most confident first."""
    idx = np.flatnonzero((np.asarray(y_true) == true_index) & (np.asarray(y_pred) == pred_index))
    confidence = np.asarray(probabilities)[idx, pred_index]
    return idx[np.argsort(-confidence, kind="stable")]
