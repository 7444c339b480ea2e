"""core.evaluation.confusion: row normalisation, ranked confusions of the ambiguous classes, differences and
recall intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.data.registry import label_names, short_label
from core.evaluation import confusion
from core.evaluation.metrics import evaluate, wilson_interval

LABELS = ["basophil", "monocyte", "immature granulocytes", "neutrophil"]
COUNTS = np.array([
    [10, 0, 0, 0],
    [0, 6, 3, 1],   # monocytes: 3 to immature granulocytes, 1 to neutrophil
    [1, 2, 16, 1],  # immature granulocytes: 2 to monocyte
    [0, 0, 4, 0],   # neutrophils: all taken for immature granulocytes
])


def test_row_normalise():
    shares = confusion.row_normalise(COUNTS)
    assert shares[1].tolist() == [0.0, 0.6, 0.3, 0.1]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    empty = confusion.row_normalise(np.array([[0, 0], [1, 1]]))
    assert np.isnan(empty[0]).all() and empty[1].tolist() == [0.5, 0.5]


def test_ranked_confusions_of_the_focus_classes():
    ranked = confusion.ranked_confusions(COUNTS, LABELS)
    assert list(zip(ranked["true"], ranked["predicted"], ranked["count"])) == [
        ("neutrophil", "immature granulocytes", 4), ("monocyte", "immature granulocytes", 3),
        ("immature granulocytes", "monocyte", 2), ("monocyte", "neutrophil", 1),
        ("immature granulocytes", "basophil", 1), ("immature granulocytes", "neutrophil", 1)]
    assert ranked.loc[1, "share"] == pytest.approx(0.3)  # of the 10 monocytes
    assert ranked.loc[0, "share"] == pytest.approx(1.0)
    only_true = confusion.ranked_confusions(COUNTS, LABELS, ["monocyte"], include_predicted=False)
    assert list(only_true["predicted"]) == ["immature granulocytes", "neutrophil"]
    assert confusion.ranked_confusions(np.eye(4, dtype=int), LABELS).empty


def test_difference_is_b_minus_a_row_shares():
    better = COUNTS.copy()
    better[1] = [0, 9, 1, 0]
    diff = confusion.difference(COUNTS, better)
    assert diff[1].tolist() == pytest.approx([0.0, 0.3, -0.2, -0.1])
    assert np.allclose(diff[[0, 2, 3]], 0)
    with pytest.raises(ValueError):
        confusion.difference(COUNTS, np.eye(3))


def test_recall_intervals_are_wilson():
    r = confusion.recall_intervals(COUNTS, LABELS)
    mono = r[r["class"] == "monocyte"].iloc[0]
    assert mono["recall"] == 0.6 and mono["correct"] == 6 and mono["support"] == 10
    assert (mono["low"], mono["high"]) == pytest.approx(wilson_interval(6, 10))
    assert mono["low"] < 0.6 < mono["high"]
    neut = r[r["class"] == "neutrophil"].iloc[0]
    assert neut["recall"] == 0 and neut["low"] == 0.0
    empty = confusion.recall_intervals(np.zeros((2, 2), int), ["a", "b"])
    assert math.isnan(empty["recall"][0]) and (empty["low"][0], empty["high"][0]) == (0.0, 1.0)


def test_cell_members_most_confident_first():
    y_true = np.array([1, 1, 1, 2, 1])
    y_pred = np.array([2, 1, 2, 2, 2])
    probs = np.full((5, 4), 0.1)
    probs[[0, 2, 4], 2] = [0.5, 0.9, 0.7]
    assert confusion.cell_members(y_true, y_pred, probs, 1, 2).tolist() == [2, 4, 0]
    assert confusion.cell_members(y_true, y_pred, probs, 0, 3).tolist() == []


def test_from_metrics_and_from_predictions_agree():
    labels = label_names()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 300)
    probs = rng.random((300, 8))
    metrics = {"test": evaluate(y, probs, labels).to_dict()}
    counts, short = confusion.from_metrics(metrics)
    assert short[3] == "immature granulocytes" and len(short) == 8
    assert (counts == confusion.from_predictions(y, probs.argmax(1), 8)).all()


def test_ambiguous_classes_are_the_registry_names():
    shorts = [short_label(x) for x in label_names()]
    assert confusion.AMBIGUOUS == ("monocyte", "immature granulocytes")
    assert set(confusion.AMBIGUOUS) <= set(shorts)
    assert confusion.ambiguous_labels(["basophil", "Immature granulocytes(IG)", "Monocyte"]) == (
        "Monocyte", "Immature granulocytes")


def test_mismatch_counts_images_in_another_cell():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 2])
    stored = confusion.from_predictions(y_true, y_pred, 3)
    assert confusion.mismatch(stored, y_true, y_pred) == 0
    moved = y_pred.copy()
    moved[[1, 4]] = [0, 1]  # image 1 now right, image 4 now wrong: two images in another cell
    assert confusion.mismatch(stored, y_true, moved) == 2
    assert confusion.mismatch(stored.tolist(), y_true, moved) == 2  # a nested list, as metrics.json holds it
