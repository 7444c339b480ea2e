"""External validation, shown: stored evaluation records shaped into the tables and cell samples the External
validation page draws (the page only lays them out). NumPy and pandas only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

MODE_TITLES = {"all": "all 8", "shared": "shared"}  # the two argmax modes, as column names say them


def comparison_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Evaluations of the same images with different colour normalisations, side by side: a column per
    record, named by its normalisation method; rows: accuracy and balanced accuracy in both argmax modes,
    then each class's recall with the argmax over all classes."""
    columns = {}
    for r in records:
        column = {}
        for mode, title in MODE_TITLES.items():
            m = r["metrics"][mode]
            column[f"Accuracy ({title})"] = m["accuracy"]
            column[f"Balanced accuracy ({title})"] = m["balanced_accuracy"]
        for label, v in r["metrics"]["all"]["per_class"].items():
            column[f"Recall {label} (all 8)"] = v["recall"]
        columns[r["normalize"]] = column
    return pd.DataFrame(columns)


def compared_records(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A stored evaluation and the normalisations it was compared with (its `compared`), as records
    `comparison_table` lays side by side: the comparisons first, the evaluation itself last."""
    others = [{"normalize": m, "metrics": metrics} for m, metrics in (record.get("compared") or {}).items()]
    return [*others, dict(record)]


def fine_tune_table(fine_tune: Mapping[str, Any]) -> pd.DataFrame:
    """A record's fine-tuning result: the zero-shot and the fine-tuned model on the same held-out images, a
    row each (indexed by `model`), with accuracy in both modes, balanced accuracy and each class's recall."""
    rows = []
    for name, part in (("Zero-shot (same held-out images)", fine_tune["zero_shot"]),
                       ("Fine-tuned", fine_tune["fine_tuned"])):
        rows.append({"model": name, "accuracy (all 8)": part["all"]["accuracy"],
                     "accuracy (shared)": part["shared"]["accuracy"],
                     "balanced accuracy (all 8)": part["all"]["balanced_accuracy"],
                     **{f"recall {k}": v["recall"] for k, v in part["all"]["per_class"].items()}})
    return pd.DataFrame(rows).set_index("model")


def sample_indices(n: int, k: int, seed: int = 0) -> np.ndarray:
    """`min(k, n)` distinct indices below `n`, drawn with `seed` and sorted: the same cells on every visit."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


@dataclass(frozen=True)
class CellSample:
    """Some cells of one group (called right, or called wrong) of a scored dataset."""

    indices: np.ndarray  # sorted indices into the dataset's images and the record's predictions
    count: int  # cells in the group
    total: int  # cells scored


def correct_and_wrong(record: Mapping[str, Any], n_images: int, per_group: int,
                      seed: int = 1) -> dict[str, CellSample] | None:
    """Up to `per_group` cells the model called right ("correct") and as many it called wrong ("wrong"), drawn
    with `seed` from the record's stored predictions (the argmax over all classes); None when those are not
    for `n_images` images (the images changed since the evaluation)."""
    preds = record.get("predictions") or []
    if len(preds) != n_images:
        return None
    labels = record["labels"]
    truth = np.array([labels.index(p["true"]) for p in preds])
    called = np.array([labels.index(p["pred"]) for p in preds])
    rng = np.random.default_rng(seed)  # one generator for both groups, drawn in this order
    groups = {}
    for name, mask in (("correct", truth == called), ("wrong", truth != called)):
        idx = np.flatnonzero(mask)
        if len(idx):
            idx = np.sort(rng.choice(idx, size=min(per_group, len(idx)), replace=False))
        groups[name] = CellSample(idx, int(mask.sum()), len(mask))
    return groups


def accuracy_text(metrics: Mapping[str, Any]) -> str:
    """'0.620 (95% CI 0.522–0.709)': an accuracy with its interval, in the text, not only in a tooltip."""
    low, high = metrics["accuracy_ci95"]
    return f"{metrics['accuracy']:.3f} (95% CI {low:.3f}–{high:.3f})"


def cross_lab_sentence(record: Mapping[str, Any], own_accuracy: float | None) -> str:
    """One sentence on why accuracy on another lab's cells is lower than on the run's own test split, with the
    numbers (`own_accuracy`: the run's test accuracy; None: unknown)."""
    m_all, m_shared = record["metrics"]["all"], record["metrics"]["shared"]
    here = (f"it scores {m_all['accuracy']:.3f} over all 8 classes and {m_shared['accuracy']:.3f} over the "
            f"{len(record.get('shared_labels') or m_shared.get('rows') or [])} shared classes on "
            f"{record['n_images']} cells")
    why = ("these cells come from another lab, with different staining, microscope, camera and framing, and the "
           "model is applied unchanged, trained only on its own lab's cells")
    if own_accuracy is None:
        return f"On this set {here}: {why}."
    if m_all["accuracy"] >= own_accuracy:
        return (f"The run scored {own_accuracy:.3f} on its own test split and here {here}: no drop on this set, "
                f"although {why}.")
    return (f"Why lower: the run scored {own_accuracy:.3f} on its own test split, but here {here}, because {why}; "
            "colour normalisation and fine-tuning (below) recover part of the gap.")
