"""Calibrated confidence (core.evaluation.calibration): the figures on hand-set cases, temperature scaling on a
real run's validation split, the threshold chosen from a target, the `calibration` block of a fresh run's
metrics.json, the one path probabilities are shown through, old runs calibrated on demand (the precompute step
and `python -m core calibrate`), the Review queue of unidentified cells, and the Results and Classify sections.

The real run is the shared `trained_run` (a 1-epoch ResNet-18 on 256 real 28 px images); anything that writes
into a run works on a mirror of it (small files copied, model linked), never on the shared fixture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from classify_fixtures import settled
from conftest import mirror_run
from page_helpers import figures, open_page, page, texts

from core.evaluation import calibration as cal
from core.evaluation import predictions
from core.inference import precompute
from core.store.runs import CALIBRATION_KEY, METRICS_FILE, open_run
from core.validation import review as rv

TIMEOUT = 300
SPLIT_KEYS = {"n", "ece_before", "ece_after", "nll_before", "nll_after", "brier_before", "brier_after"}


def one_hot_rows(confidence: np.ndarray, predicted: np.ndarray, n_classes: int = 8) -> np.ndarray:
    """Rows whose top class is `predicted` with probability `confidence`, the rest spread evenly."""
    p = np.repeat(((1 - confidence) / (n_classes - 1))[:, None], n_classes, axis=1)
    p[np.arange(len(p)), predicted] = confidence
    return p


# -- the figures on cases worked out by hand --------------------------------------------------------------------
def test_ece_of_a_perfectly_calibrated_case_is_zero():
    # exactly calibrated: in each confidence bin, the share of right calls equals the confidence
    conf = np.r_[np.full(10, 0.9), np.full(20, 0.6), np.full(4, 0.25)]
    pred = np.zeros(len(conf), int)
    right = np.r_[np.arange(10) < 9, np.arange(20) < 12, np.arange(4) < 1]
    y = np.where(right, 0, 1)
    assert cal.ece(one_hot_rows(conf, pred), y) == pytest.approx(0.0, abs=1e-12)
    # and in expectation: calls right with probability equal to their confidence (sampling noise only)
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 20000)
    pred = rng.integers(0, 8, len(conf))
    y = np.where(rng.random(len(conf)) < conf, pred, (pred + 1) % 8)
    p = one_hot_rows(conf, pred)
    assert cal.ece(p, y) < 0.015
    assert cal.fit_temperature(p, y) == pytest.approx(1.0, abs=0.05)  # nothing to correct


def test_ece_nll_and_brier_of_a_miscalibrated_case_are_what_hand_computes():
    # 10 cells at 0.95, all right (gap 0.05); 10 at 0.55, 2 right (gap 0.35): ECE = 0.5*0.05 + 0.5*0.35 = 0.2
    conf = np.r_[np.full(10, 0.95), np.full(10, 0.55)]
    pred = np.zeros(20, int)
    y = np.r_[np.zeros(10, int), np.zeros(2, int), np.ones(8, int)]
    p = one_hot_rows(conf, pred)
    assert cal.ece(p, y) == pytest.approx(0.2)
    bins = [b for b in cal.reliability(p, y) if b.count]
    assert [(b.count, b.confidence, b.accuracy) for b in bins] == [(10, pytest.approx(0.55), pytest.approx(0.2)),
                                                                   (10, pytest.approx(0.95), pytest.approx(1.0))]
    other = (1 - conf) / 7
    right_nll = -np.log(0.95) * 10 - np.log(0.55) * 2 - np.log(other[10]) * 8
    assert cal.nll(p, y) == pytest.approx(right_nll / 20)
    # Brier: a right cell at c: (1-c)^2 + 7 o^2; a wrong one: c^2 + (1-o)^2 + 6 o^2
    o95, o55 = other[0], other[10]
    brier = (10 * ((0.05 ** 2) + 7 * o95 ** 2) + 2 * ((0.45 ** 2) + 7 * o55 ** 2)
             + 8 * (0.55 ** 2 + (1 - o55) ** 2 + 6 * o55 ** 2)) / 20
    assert cal.brier(p, y) == pytest.approx(brier)


def test_temperature_keeps_the_call_and_undoes_a_known_sharpening():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.2, 1.0, 5000)
    pred = rng.integers(0, 8, len(conf))
    y = np.where(rng.random(len(conf)) < conf, pred, (pred + 3) % 8)
    sharp = cal.apply_temperature(one_hot_rows(conf, pred).astype(np.float32), 0.5)  # over-confident by T=2
    assert sharp.dtype == np.float32 and np.allclose(sharp.sum(axis=1), 1, atol=1e-5)
    t = cal.fit_temperature(sharp, y)
    assert t == pytest.approx(2.0, rel=0.1)
    back = cal.apply_temperature(sharp, t)
    assert np.array_equal(back.argmax(axis=1), sharp.argmax(axis=1))  # accuracy cannot change
    assert cal.nll(back, y) < cal.nll(sharp, y) and cal.ece(back, y) < cal.ece(sharp, y) / 5
    assert cal.apply_temperature(sharp, None) is sharp and cal.apply_temperature(sharp, 1.0) is sharp


def test_the_threshold_from_a_target_meets_it_on_its_split_and_keeps_the_most_cells():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.3, 1.0, 3000)
    pred = rng.integers(0, 8, len(conf))
    y = np.where(rng.random(len(conf)) < conf ** 0.5, pred, (pred + 1) % 8)
    p = one_hot_rows(conf, pred)
    top, right = p.max(axis=1), p.argmax(axis=1) == y
    for target in (0.9, 0.95, 0.99):
        threshold, reachable = cal.choose_threshold(p, y, target)
        kept = top >= threshold
        assert reachable and right[kept].mean() >= target  # met on the split it was chosen on
        lower = top[top < threshold].max()  # the next candidate down would miss the target
        assert right[top >= lower].mean() < target
    # a target nothing reaches: every cell to review
    wrong = (pred + 1) % 8
    assert cal.choose_threshold(p, wrong, 0.99) == (1.0, False)
    with pytest.raises(ValueError):
        cal.choose_threshold(p, y, 1.5)


def test_the_stored_block_round_trips_with_the_issues_shape():
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.3, 1.0, 400)
    pred = rng.integers(0, 8, 400)
    y = np.where(rng.random(400) < conf, pred, (pred + 1) % 8)
    p = cal.apply_temperature(one_hot_rows(conf, pred), 0.6)
    result = cal.calibrate(y[:200], p[:200], y[200:], p[200:], target=0.95)
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(d["val"]) == set(d["test"]) == SPLIT_KEYS and d["temperature"] == result.temperature
    assert set(d["unidentified"]) >= {"target", "threshold", "val_review_fraction", "test_review_fraction"}
    assert cal.Calibration.from_dict(d) == result
    u = result.unidentified
    top = cal.apply_temperature(p[:200], result.temperature).max(axis=1)
    assert u.val_review_fraction == pytest.approx(np.mean(top < u.threshold))


# -- a real run ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(trained_run):
    return precompute.classifier(trained_run)


def test_a_fresh_run_stores_its_calibration_and_keeps_its_metrics_raw(trained_run):
    run = open_run(trained_run)
    metrics = run.metrics
    block = metrics[CALIBRATION_KEY]
    assert set(block["val"]) == set(block["test"]) == SPLIT_KEYS and block["temperature"] > 0
    assert block["val"]["n"] == metrics["val"]["n"] and block["test"]["n"] == metrics["test"]["n"]
    assert block["unidentified"]["target"] == cal.DEFAULT_TARGET
    stored = cal.stored(trained_run)
    assert stored is not None and stored.temperature == block["temperature"]
    # the training job cached both splits' raw predictions; the stored loss is the raw one's
    val = predictions.cached(trained_run, "val", calibrated=False)
    assert val is not None and val.temperature is None
    assert cal.nll(val.probabilities, val.y_true) == pytest.approx(metrics["val"]["loss"], rel=1e-3)
    assert block["val"]["nll_before"] == pytest.approx(metrics["val"]["loss"], rel=1e-3)


def test_temperature_scaling_lowers_validation_nll_on_real_data(trained_run, model):
    images, labels = open_run(trained_run).split("val")
    raw = model.raw_probabilities(images)  # the model predicting real validation cells now
    t = cal.fit_temperature(raw, labels)
    assert t != pytest.approx(1.0, abs=1e-3)
    assert cal.nll(cal.apply_temperature(raw, t), labels) < cal.nll(raw, labels)
    assert t == pytest.approx(cal.stored(trained_run).temperature, rel=1e-2)  # what training stored


def test_probabilities_are_shown_through_the_runs_temperature_everywhere(trained_run, model):
    t = cal.stored(trained_run).temperature
    images, _ = open_run(trained_run).split("test")
    raw = model.raw_probabilities(images[:16])
    shown = model.probabilities(images[:16])
    assert model.temperature == t
    assert np.allclose(shown, cal.apply_temperature(raw, t), atol=1e-6)
    assert np.array_equal(shown.argmax(axis=1), raw.argmax(axis=1))
    explained = model.explain(images[:2], "gradcam")
    assert np.allclose(explained.probabilities, shown[:2], atol=1e-4)
    stored = predictions.cached(trained_run)  # Confusions and Review read these
    raw_stored = predictions.cached(trained_run, calibrated=False)
    assert stored.temperature == t and np.array_equal(stored.y_pred, raw_stored.y_pred)
    assert np.allclose(stored.probabilities, cal.apply_temperature(raw_stored.probabilities, t), atol=1e-6)


@pytest.fixture
def old_run(tmp_path, trained_run) -> Path:
    """The shared run as a run trained before calibration: no block in metrics.json, no cached predictions."""
    run = mirror_run(Path(trained_run), tmp_path / "artifacts")
    metrics = json.loads((run / METRICS_FILE).read_text())
    metrics.pop(CALIBRATION_KEY)
    (run / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return run


def test_an_old_run_is_calibrated_by_its_precompute_step_without_touching_the_rest(old_run, model, capsys,
                                                                                   trained_run):
    from core.cli import main

    before = json.loads((old_run / METRICS_FILE).read_text())
    assert cal.stored(old_run) is None and not precompute.ready(old_run, "calibration")
    assert predictions.cached(old_run) is None
    folder_time = os.stat(old_run).st_mtime_ns
    found = precompute.run_step(old_run, "calibration", model=model)
    after = json.loads((old_run / METRICS_FILE).read_text())
    assert {k: v for k, v in after.items() if k != CALIBRATION_KEY} == before  # nothing else stored changed
    assert after[CALIBRATION_KEY] == found.to_dict() and precompute.ready(old_run, "calibration")
    assert predictions.cached(old_run) is not None  # the test split it predicted is kept for Confusions
    assert os.stat(old_run).st_mtime_ns == folder_time
    assert found.temperature == pytest.approx(cal.stored(trained_run).temperature, rel=1e-2)
    # the command line refits from the cached predictions (no model) with another target
    assert main(["calibrate", str(old_run), "--target", "0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["calibration"]["unidentified"]["target"] == 0.5
    assert cal.stored(old_run).unidentified.target == 0.5
    assert main(["calibrate", str(old_run), "--target", "2"]) == 2  # a clear message, not a traceback
    assert "--target" in capsys.readouterr().err
    # `predict --threshold run` flags below the run's own threshold
    from core.cli import UserError, _threshold

    assert _threshold("run", old_run) == cal.stored(old_run).unidentified.threshold
    assert _threshold("0.25", old_run) == 0.25
    for bad in ("1.5", "often"):
        with pytest.raises(UserError):
            _threshold(bad, old_run)


def test_the_review_queue_takes_exactly_the_cells_below_the_runs_threshold(trained_run):
    stored = predictions.cached(trained_run)
    threshold = rv.unidentified_threshold(trained_run)
    labels = open_run(trained_run).metrics["test"]["labels"]
    cells = rv.cells_from_predictions("data.npz", labels, stored.y_true, stored.probabilities, limit=0,
                                      order="unidentified", threshold=threshold)
    below = np.flatnonzero(stored.probabilities.max(axis=1) < threshold)
    assert sorted(int(c.key.split(":")[1]) for c in cells) == sorted(below.tolist())
    assert [c.confidence for c in cells] == sorted(c.confidence for c in cells)
    share = cal.stored(trained_run).unidentified.test_review_fraction
    assert len(cells) / len(stored) == pytest.approx(share, abs=1e-9)
    with pytest.raises(rv.ReviewError):
        rv.order_cells(cells, "unidentified", labels)  # no threshold: said, not guessed


# -- the pages ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_run) -> Path:
    root = tmp_path_factory.mktemp("calibration-artifacts")
    mirror_run(Path(trained_run), root)
    return root


def test_results_and_classify_show_the_calibration_with_its_threshold(monkeypatch, artifacts, trained_run):
    run = next((artifacts / "runs").iterdir())
    stored = cal.stored(run)
    # Results: the stored figures at once; the plots once the step has cached the predictions (a click)
    at = open_page(monkeypatch, page("results"), artifacts, TIMEOUT)
    assert f"T = {stored.temperature:.3f}" in texts(at)
    assert f"{stored.unidentified.val_review_fraction:.1%}** of validation" in texts(at)
    assert not any(f["layout"]["title"]["text"] == "Risk–coverage" for f in figures(at) if "title" in f["layout"])
    next(b for b in at.button if b.label.startswith("Draw its reliability")).click()
    settled(at, TIMEOUT)
    titles = [f["layout"].get("title", {}).get("text") for f in figures(at)]
    assert "Reliability" in titles and "Risk–coverage" in titles
    curve = next(f for f in figures(at) if f["layout"].get("title", {}).get("text") == "Risk–coverage")
    marked = [d for d in curve["data"] if d.get("mode") == "markers"]
    assert len(marked) == sum(1 for d in curve["data"] if d.get("mode") == "lines")  # threshold on each split
    # Classify: the slider starts at the run's threshold and says what it sends to review
    at = settled(open_page(monkeypatch, page("classify"), artifacts, TIMEOUT), TIMEOUT)
    stored = cal.stored(run)  # as the step left it
    slider = next(s for s in at.slider if s.label == "Unidentified below confidence")
    assert slider.value == pytest.approx(stored.unidentified.threshold)
    assert f"{stored.unidentified.target:.0%} accuracy on validation" in texts(at)
    assert "Risk–coverage" in [f["layout"].get("title", {}).get("text") for f in figures(at)]
