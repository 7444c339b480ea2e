"""External validation, step 4: score a run, unchanged, on loaded external images.

Optionally after colour normalisation to its training set (core.validation.stain), through the one evaluator
(core.evaluation.metrics.evaluate) twice: argmax over all classes, and argmax over the classes the dataset
shares with BloodMNIST only; the rows are always the dataset's classes. The record keeps both as
`SplitMetrics.to_dict()` and is stored with the run (core.validation.external.storage). `table14` and `summary`
read records of any version, as the study's Tables 14/15 and as the command line's JSON.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from core.data.registry import short_label
from core.evaluation import metrics
from core.evaluation.metrics import SCHEMA_VERSION, SplitMetrics
from core.validation.external.errors import ExternalError
from core.validation.external.loading import ExternalImages
from core.validation.external.storage import new_eval_id, write_evaluation


def both_modes(y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
               shared: Sequence[int]) -> dict[str, dict[str, Any]]:
    """{"all": argmax over every class, "shared": argmax over the shared classes}, rows = the shared classes."""
    return {"all": metrics.evaluate(y_true, probabilities, labels, rows=shared).to_dict(),
            "shared": metrics.evaluate(y_true, probabilities, labels, allowed=shared, rows=shared).to_dict()}


def evaluate(clf, data: ExternalImages, normalize: str = "none", *, run_dir: str | Path | None = None,
             store: bool = True, target=None, keep_predictions: bool = True) -> dict[str, Any]:
    """Score the classifier's run, unchanged, on `data` (after colour normalisation if asked)."""
    from core.validation import stain  # noqa: PLC0415  (OpenCV only when images are scored)

    if len(data) == 0:
        raise ExternalError("No images to evaluate: no class is mapped to a BloodMNIST class, or no file "
                            "could be read")
    run_dir = Path(run_dir or clf.run.path)
    if (data.labels < 0).any():
        raise ExternalError("images of unmapped classes cannot be scored; map their class or leave it out")
    if data.images.shape[1] != clf.image_size:
        raise ExternalError(f"images are {data.images.shape[1]} px but the model takes {clf.image_size} px")
    if normalize != "none" and target is None:
        target = stain.run_target(run_dir)
    started = time.perf_counter()
    images, note = stain.normalize(data.images, normalize, target)
    probabilities = clf.probabilities(images)
    labels = [short_label(x) for x in clf.labels]
    shared = data.shared
    scores = both_modes(data.labels, probabilities, labels, shared)
    pred_all, pred_shared = metrics.predictions(probabilities), metrics.predictions(probabilities, shared)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": new_eval_id(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": clf.run.run_id, "run_path": str(run_dir), "arch": clf.config.arch, "image_size": clf.image_size,
        "dataset": {"path": data.location, "kind": data.kind, "counts": data.counts},
        "mapping": data.mapping, "excluded": data.excluded,
        "normalize": normalize, "normalization": {k: v for k, v in note.items() if k != "method"},
        "resize": data.resize, "n_images": len(data),
        "labels": labels, "shared_labels": [labels[c] for c in shared],
        "metrics": scores,
        "seconds": round(time.perf_counter() - started, 3),
        "fine_tune": None,
    }
    if keep_predictions:
        record["predictions"] = [
            {"path": p, "source_class": s, "true": labels[int(t)], "pred": labels[int(a)],
             "pred_shared": labels[int(b)], "confidence": round(float(pr[int(a)]), 6)}
            for p, s, t, a, b, pr in zip(data.paths, data.source_classes, data.labels, pred_all, pred_shared,
                                         probabilities)]
    if store:
        record["stored_at"] = str(write_evaluation(run_dir, record))
    return record


def table14(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the study's Table 14 (precision, recall, F1, support) with Table 15's per-class accuracy (= recall);
    the Overall row holds the macro averages of precision, recall and F1, and the accuracy over all images."""
    m = SplitMetrics.from_dict(table)
    rows = [{"class": label, "precision": v.precision, "recall": v.recall, "f1": v.f1, "support": v.support,
             "accuracy": v.recall} for label, v in m.per_class.items()]
    rows.append({"class": "Overall", "precision": m.macro_precision, "recall": m.macro_recall, "f1": m.macro_f1,
                 "support": m.n, "accuracy": m.accuracy})
    return rows


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON the command line prints: the all-classes result at the top, the shared-only one inside."""

    def part(table: Mapping[str, Any]) -> dict[str, Any]:
        m = SplitMetrics.from_dict(table, record.get("labels"))
        return {"accuracy": m.accuracy, "accuracy_ci95": m.accuracy_ci95, "balanced_accuracy": m.balanced_accuracy,
                "macro_f1": m.macro_f1,
                "per_class": {k: {"precision": v.precision, "recall": v.recall, "f1": v.f1, "support": v.support,
                                  "accuracy": v.recall} for k, v in m.per_class.items()},
                "confusion": m.confusion, "confusion_rows": m.rows, "labels": m.columns,
                "predicted_outside": m.predicted_outside}

    out = {"eval_id": record["id"], "run": record["run_path"], "dataset": record["dataset"]["path"],
           "normalize": record["normalize"], "resize": record["resize"], "n_images": record["n_images"],
           "mapping": record["mapping"], "excluded": {k: v for k, v in record["excluded"].items() if k != "messages"},
           **part(record["metrics"]["all"]), "shared_only": part(record["metrics"]["shared"])}
    if record.get("stored_at"):
        out["stored_at"] = record["stored_at"]
    if record.get("fine_tune"):
        out["fine_tune"] = {k: v for k, v in record["fine_tune"].items() if k != "history"}
    return out
