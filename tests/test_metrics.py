"""The one evaluator (core.evaluation.metrics.evaluate) against hand-computed values and scikit-learn, its
restricted forms (external validation) and the stored layouts it reads back."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from core.evaluation.metrics import (
    LEGACY_SCHEMA_VERSION,
    SCHEMA_VERSION,
    SplitMetrics,
    evaluate,
    evaluate_calls,
    macro_auc,
    predictions,
    wilson_interval,
)

LABELS = ("a", "b", "c")


# -- Wilson interval -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n,low,high", [
    (50, 100, 0.403832, 0.596168),  # symmetric about 0.5
    (81, 263, 0.255289, 0.366210),
    (0, 10, 0.0, 0.277533),
    (10, 10, 0.722467, 1.0),
    (1, 1, 0.206549, 1.0),  # lower = 1 / (1 + z^2)
    (95, 100, 0.888250, 0.978456),
])
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-5)
    assert hi == pytest.approx(high, abs=1e-5)


def wilson_reference(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    centre = (2 * k + z * z) / (2 * (n + z * z))
    half = z * math.sqrt(n * p * (1 - p) + z * z / 4) / (n + z * z)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(3, 7), (500, 1000), (999, 1000), (1, 3422), (3400, 3422)])
def test_wilson_matches_closed_form(k, n):
    lo, hi = wilson_interval(k, n)
    rlo, rhi = wilson_reference(k, n)
    assert lo == pytest.approx(rlo, abs=1e-12)
    assert hi == pytest.approx(rhi, abs=1e-12)
    assert lo < k / n < hi


@pytest.mark.parametrize("k,n", [(0, 1), (7, 9), (123, 456), (3000, 3422), (3422, 3422)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-6)
    assert hi == pytest.approx(ci.high, abs=1e-6)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 5)
    assert lo == 0.0 and 0 < hi < 1
    lo, hi = wilson_interval(5, 5)
    assert hi == 1.0 and 0 < lo < 1
    for k, n in [(0, 1), (1, 1), (0, 1000), (1000, 1000)]:
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo <= hi <= 1.0


def test_wilson_narrows_with_n():
    widths = [np.subtract(*wilson_interval(n // 2, n)[::-1]) for n in (10, 100, 1000, 10000)]
    assert widths == sorted(widths, reverse=True)


def test_wilson_wider_z_is_wider():
    lo95, hi95 = wilson_interval(30, 100)
    lo99, hi99 = wilson_interval(30, 100, z=2.575829)
    assert lo99 < lo95 and hi99 > hi95


# -- classification metrics ---------------------------------------------------------------------------------

@pytest.fixture
def example():
    """10 items, 3 classes; predictions by argmax of hand-written probabilities."""
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    probs = np.array([
        [0.8, 0.1, 0.1],  # 0 -> 0
        [0.6, 0.3, 0.1],  # 0 -> 0
        [0.2, 0.7, 0.1],  # 0 -> 1
        [0.3, 0.3, 0.4],  # 0 -> 2
        [0.1, 0.8, 0.1],  # 1 -> 1
        [0.2, 0.5, 0.3],  # 1 -> 1
        [0.5, 0.4, 0.1],  # 1 -> 0
        [0.1, 0.1, 0.8],  # 2 -> 2
        [0.2, 0.2, 0.6],  # 2 -> 2
        [0.1, 0.6, 0.3],  # 2 -> 1
    ])
    return y_true, probs


def test_hand_computed_values(example):
    y, p = example
    m = evaluate(y, p, LABELS).to_dict()
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(6 / 10)
    assert m["confusion"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]  # rows = true class
    assert m["balanced_accuracy"] == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 3)
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 4,
                                                "f1": 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2), "support": 4})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 4)
    assert m["per_class"]["c"]["precision"] == pytest.approx(2 / 3)
    assert m["labels"] == list(LABELS)


def test_against_sklearn(example):
    y, p = example
    m = evaluate(y, p, LABELS).to_dict()
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=[0, 1, 2])
    for i, label in enumerate(LABELS):
        pc = m["per_class"][label]
        assert pc["precision"] == pytest.approx(precision[i])
        assert pc["recall"] == pytest.approx(recall[i])
        assert pc["f1"] == pytest.approx(f1[i])
        assert pc["support"] == support[i]
        assert isinstance(pc["support"], int)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["confusion"] == confusion_matrix(y, pred).tolist()
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_confusion_rows_are_true_class():
    y = np.array([0, 0, 0, 1])
    p = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=float)
    m = evaluate(y, p, LABELS).to_dict()
    assert m["confusion"] == [[0, 3, 0], [0, 1, 0], [0, 0, 0]]
    assert m["per_class"]["a"]["recall"] == 0.0
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.25)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_macro_auc_equals_sklearn_on_random_eight_classes():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 25)
    logits = rng.normal(size=(200, 8)) + 1.5 * np.eye(8)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = [f"c{i}" for i in range(8)]
    m = evaluate(y, p, labels).to_dict()
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    assert macro_auc(y, p) == pytest.approx(m["auc"])
    assert m["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(200), y])), rel=1e-6)


def test_perfect_predictions():
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.eye(3)[y]
    m = evaluate(y, p, LABELS).to_dict()
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["auc"] == 1.0
    assert m["accuracy_ci95"][1] == 1.0 and m["accuracy_ci95"][0] < 1.0
    assert m["loss"] < 1e-5  # probabilities are clipped, so a perfect one-hot gives a tiny finite loss


def test_accuracy_ci_is_wilson(example):
    y, p = example
    m = evaluate(y, p, LABELS).to_dict()
    assert m["accuracy_ci95"] == pytest.approx(list(wilson_interval(6, 10)))
    assert m["accuracy_ci95"][0] < m["accuracy"] < m["accuracy_ci95"][1]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_one_class_absent():
    """Class 'c' never occurs in y_true (and is sometimes predicted): handled, no warnings-as-errors."""
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1], [0.4, 0.5, 0.1], [0.6, 0.3, 0.1],
                  [0.5, 0.4, 0.1]])
    m = evaluate(y, p, LABELS).to_dict()
    assert m["per_class"]["c"]["support"] == 0
    assert m["per_class"]["c"]["recall"] == 0.0
    assert m["per_class"]["c"]["precision"] == 0.0
    # macro AUC over the classes present
    expected_auc = np.mean([roc_auc_score(y == 0, p[:, 0]), roc_auc_score(y == 1, p[:, 1])])
    assert m["auc"] == pytest.approx(expected_auc)
    # macro F1 over the classes present only
    _, _, f1, _ = precision_recall_fscore_support(y, p.argmax(1), labels=[0, 1, 2], zero_division=0)
    assert m["macro_f1"] == pytest.approx(f1[:2].mean())
    assert m["confusion"][2] == [0, 0, 0]
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    assert math.isfinite(m["loss"])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_single_class_present_has_no_auc():
    y = np.array([1, 1, 1])
    p = np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    m = evaluate(y, p, LABELS).to_dict()
    assert m["auc"] is None
    assert macro_auc(y, p) is None
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_metrics_are_json_serialisable(example):
    y, p = example
    m = evaluate(y, p, LABELS).to_dict()
    again = json.loads(json.dumps(m, allow_nan=False))
    assert again["confusion"] == m["confusion"]
    assert set(again) == {"n", "accuracy", "accuracy_ci95", "balanced_accuracy", "auc", "macro_f1", "loss",
                          "per_class", "confusion", "labels", "schema_version", "rows", "columns", "macro_precision",
                          "macro_recall", "predicted_outside", "predicted_outside_total"}
    assert again["schema_version"] == SCHEMA_VERSION


def test_labels_as_column_vector_and_float32_probabilities(example):
    y, p = example
    m1 = evaluate(y, p, LABELS).to_dict()
    m2 = evaluate(y.astype(np.int64), p.astype(np.float32), list(LABELS)).to_dict()
    assert m2["accuracy"] == m1["accuracy"]
    assert m2["auc"] == pytest.approx(m1["auc"])


# -- restricted forms (external validation) -------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_rows_and_allowed_restrict_the_table_against_sklearn():
    """Rows = the classes a dataset has; allowed = the classes an argmax may choose (the shared-only figure)."""
    rng = np.random.default_rng(3)
    y = rng.choice([1, 3, 4], size=120)
    p = rng.dirichlet(np.ones(6), size=120)
    labels = [f"c{i}" for i in range(6)]
    shared = [1, 3, 4]
    everything = evaluate(y, p, labels, rows=shared)
    pred = p.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=shared, zero_division=0)
    assert everything.rows == ["c1", "c3", "c4"] and everything.columns == labels
    assert np.asarray(everything.confusion).shape == (3, 6) and np.sum(everything.confusion) == 120
    assert list(everything.per_class) == everything.rows
    for k, c in enumerate(shared):
        v = everything.per_class[labels[c]]
        assert (v.precision, v.recall, v.f1, v.support) == pytest.approx((precision[k], recall[k], f1[k], support[k]))
    assert everything.macro_precision == pytest.approx(precision.mean())
    assert everything.macro_recall == everything.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred))
    assert everything.macro_f1 == pytest.approx(f1.mean())
    assert everything.predicted_outside_total == int(np.isin(pred, shared, invert=True).sum())
    assert sum(everything.predicted_outside.values()) == everything.predicted_outside_total

    restricted = evaluate(y, p, labels, allowed=shared, rows=shared)
    called = predictions(p, shared)
    assert set(called) <= set(shared)
    assert called.tolist() == np.asarray(shared)[p[:, shared].argmax(1)].tolist()
    assert restricted.columns == restricted.rows and restricted.predicted_outside_total == 0
    assert restricted.accuracy == pytest.approx(accuracy_score(y, called))
    assert restricted.accuracy >= everything.accuracy
    assert restricted.accuracy_ci95 == pytest.approx(list(wilson_interval(int((y == called).sum()), 120)))
    assert restricted.auc == everything.auc == pytest.approx(macro_auc(y, p))  # from the probabilities as given


def test_hard_calls_have_no_auc_or_loss():
    m = evaluate_calls(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), LABELS)
    assert m.auc is None and m.loss is None
    assert m.accuracy == 0.75 and m.confusion == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    wide = evaluate_calls(np.array([0, 1]), np.array([3, 1]), ["a", "b", "unsure", "not a cell"], rows=[0, 1])
    assert wide.confusion == [[0, 0, 0, 1], [0, 1, 0, 0]] and wide.predicted_outside == {"not a cell": 1}


# -- stored layouts -------------------------------------------------------------------------------------------

def test_split_metrics_round_trip_through_json(example):
    y, p = example
    m = evaluate(y, p, LABELS, rows=[0, 1], allowed=[0, 1])
    assert SplitMetrics.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_legacy_metrics_json_split_reads_back(example):
    """A split of a metrics.json written before schema_version (today's keys only) loads with the same figures."""
    y, p = example
    m = evaluate(y, p, LABELS)
    legacy = {k: v for k, v in m.to_dict().items()
              if k in ("n", "accuracy", "accuracy_ci95", "balanced_accuracy", "auc", "macro_f1", "loss",
                       "per_class", "confusion", "labels")}
    back = SplitMetrics.from_dict(legacy)
    assert back.schema_version == LEGACY_SCHEMA_VERSION
    assert back.rows == back.columns == list(LABELS) and back.predicted_outside_total == 0
    assert back.macro_precision == pytest.approx(m.macro_precision) and back.macro_recall == m.macro_recall
    assert back.per_class == m.per_class and back.confusion == m.confusion and back.auc == m.auc


def test_legacy_external_table_reads_back():
    """An external evaluation's table as stored before (rows/columns, per-class 'accuracy', no labels)."""
    old = {"n": 4, "accuracy": 0.5, "accuracy_ci95": [0.15, 0.85], "balanced_accuracy": 0.5, "macro_f1": 0.5,
           "macro_precision": 0.5, "macro_recall": 0.5,
           "per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2, "accuracy": 0.5},
                         "c": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "accuracy": 0.5}},
           "confusion": [[1, 1, 0], [0, 1, 1]], "rows": ["a", "c"], "columns": ["a", "b", "c"],
           "predicted_outside": {"b": 1}, "predicted_outside_total": 1}
    back = SplitMetrics.from_dict(old)
    assert back.rows == ["a", "c"] and back.columns == back.labels == ["a", "b", "c"]
    assert back.per_class["a"].recall == 0.5 and back.predicted_outside_total == 1 and back.auc is None


# -- a run folder written before schema_version ----------------------------------------------------------------

LEGACY_SPLIT_KEYS = ("n", "accuracy", "accuracy_ci95", "balanced_accuracy", "auc", "macro_f1", "loss", "per_class",
                     "confusion", "labels")


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory, trained_run):
    """The shared trained run as the code before this version wrote it: metrics.json without schema_version and
    with only the keys its splits had then."""
    from conftest import mirror_run

    run = mirror_run(trained_run, tmp_path_factory.mktemp("legacy-artifacts"))
    metrics = json.loads((run / "metrics.json").read_text())
    legacy = {k: v for k, v in metrics.items() if k != "schema_version"}
    for split in ("val", "test"):
        legacy[split] = {k: metrics[split][k] for k in LEGACY_SPLIT_KEYS}
    (run / "metrics.json").write_text(json.dumps(legacy))
    return run, metrics


def test_a_run_written_before_schema_version_loads_and_evaluates(legacy_run, capsys):
    from conftest import EXTERNAL_DEV

    from core.cli import main
    from core.evaluation import confusion, predictions
    from core.inference.classifier import Classifier
    from core.store.runs import RunStore, open_run

    run, current = legacy_run
    assert current["schema_version"] == SCHEMA_VERSION  # what training writes now
    stored = open_run(run).metrics
    assert "schema_version" not in stored
    for split in ("val", "test"):
        back = SplitMetrics.from_dict(stored[split])
        assert back.schema_version == LEGACY_SCHEMA_VERSION
        assert back == replace(SplitMetrics.from_dict(current[split]), schema_version=LEGACY_SCHEMA_VERSION)
    counts, labels = confusion.from_metrics(stored)
    assert counts.sum() == stored["test"]["n"] and len(labels) == 8
    assert [r["run_id"] for r in RunStore(run.parent).list_runs()] == [run.name]
    clf = Classifier(run)
    assert clf.labels == stored["test"]["labels"]
    assert main(["evaluate", "--run", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    for split in ("val", "test"):  # the same model on the same images: the stored figures again
        assert out[split]["n"] == stored[split]["n"]
        assert out[split]["accuracy"] == pytest.approx(stored[split]["accuracy"], abs=2 / stored[split]["n"])
    assert main(["external", "--run", str(run), "--folder", str(EXTERNAL_DEV), "--no-store"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 100
    cached = predictions.compute(run, clf)  # the Confusions page's test predictions
    assert len(cached) == stored["test"]["n"] and predictions.cached(run) is not None
