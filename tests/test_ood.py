"""'Unlike the training data': Mahalanobis distance to class centres, a validation-calibrated threshold, and
statistics computed once per run and cached atomically in the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_page_classify import mirror_run

from core.errors import UserFacingError
from core.inference import ood
from core.inference.ood import STATS_FILE, OODStats, fit, load_or_fit


def clusters(rng, n_per_class: int, centres: np.ndarray, scale: np.ndarray):
    labels = np.repeat(np.arange(len(centres)), n_per_class)
    x = centres[labels] + rng.normal(size=(len(labels), centres.shape[1])) * scale
    return x, labels


def test_fit_matches_the_mahalanobis_formula_and_calibrates_on_validation():
    rng = np.random.default_rng(0)
    d = 6
    centres = rng.normal(size=(3, d)) * 10
    scale = np.array([1.0, 3.0, 0.5, 2.0, 1.0, 0.2])  # anisotropic: Euclidean distance would be wrong
    train, labels = clusters(rng, 400, centres, scale)
    val, _ = clusters(rng, 300, centres, scale)
    stats = fit(train, labels, val, 95.0)
    assert stats.percentile == 95.0 and stats.n_train == 1200 and stats.n_val == 900
    flagged = stats.unlike(val).mean()
    assert 0.04 <= flagged <= 0.06  # by construction, about 5% of validation images
    assert stats.test_rate is None and stats.typical == pytest.approx(np.median(stats.distance(val)))
    fresh, _ = clusters(np.random.default_rng(1), 300, centres, scale)
    assert stats.unlike(fresh).mean() < 0.12  # new in-distribution data: few flags
    # the distance is the Mahalanobis distance under the fitted (shrunk) precision
    precision = stats.whitening @ stats.whitening
    means = stats.centres @ np.linalg.inv(stats.whitening)
    z = fresh[:5]
    explicit = np.sqrt(np.min([[(p - m) @ precision @ (p - m) for m in means] for p in z], axis=1))
    np.testing.assert_allclose(stats.distance(z), explicit, rtol=1e-6)
    # a point off a low-variance axis is flagged though it is near a centre in Euclidean terms
    odd = centres[0] + np.array([0, 0, 0, 0, 0, 3.0])  # 15 standard deviations along axis 5
    ordinary = centres[0] + np.array([0, 3.0, 0, 0, 0, 0])  # 1 standard deviation along axis 1
    assert stats.unlike(np.stack([odd, ordinary])).tolist() == [True, False]


def test_the_default_flags_about_one_ordinary_image_in_a_hundred_and_measures_it_on_test_images():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 10
    train, labels = clusters(rng, 500, centres, np.ones(8))
    val, _ = clusters(rng, 250, centres, np.ones(8))  # 1,000 images: 250 per class
    test, _ = clusters(rng, 250, centres, np.ones(8))
    stats = fit(train, labels, val, test_embeddings=test)
    assert stats.percentile == ood.PERCENTILE == 99.0
    assert 0.005 <= stats.unlike(val).mean() <= 0.015
    assert stats.n_test == 1000 and stats.test_rate == stats.unlike(test).mean() and stats.test_rate < 0.03
    text = stats.explanation()
    assert f"beyond {stats.threshold:.1f}" in text and "99th percentile of 1,000 validation" in text
    assert f"flags {stats.test_rate:.1%} of this run's own test images (1,000)" in text


def test_stats_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    stats = fit(rng.normal(size=(50, 4)), np.arange(50) % 2, rng.normal(size=(20, 4)),
                test_embeddings=rng.normal(size=(10, 4)))
    path = tmp_path / STATS_FILE
    path.write_bytes(stats.to_bytes())
    back = OODStats.from_file(path)
    np.testing.assert_array_equal(back.whitening, stats.whitening)
    assert back.threshold == stats.threshold and back.n_val == 20
    assert (back.test_rate, back.n_test, back.typical) == (stats.test_rate, 10, stats.typical)
    old = dict(np.load(path))
    old["version"] = np.array(1)  # statistics thresholded at the old 95th percentile: made again
    np.savez(path, **old)
    with pytest.raises(ValueError, match="old version"):
        OODStats.from_file(path)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, trained_run):
    from core.inference.classifier import Classifier

    run = mirror_run(Path(trained_run), tmp_path_factory.mktemp("ood-artifacts"))
    with Classifier(run) as clf:
        yield clf


def embedder(clf, calls: list):
    def embed(images):
        calls.append(len(images))
        return clf.probabilities_and_embeddings(images)[1]
    return embed


def test_computed_once_per_run_and_cached_atomically(classifier):
    run_dir = classifier.run.path
    calls: list[int] = []
    done: list[float] = []
    stats = load_or_fit(run_dir, embedder(classifier, calls), done.append)
    sizes = classifier.run.metrics["dataset"]
    # the tiny fixture's whole splits (under the limits), in chunks, the test split to measure the flag rate
    assert sum(calls) == sizes["n_train"] + sizes["n_val"] + sizes["n_test"] and max(calls) <= ood.CHUNK
    assert done == sorted(done) and done[-1] == 1.0 and len(done) == len(calls)
    assert stats.n_test == sizes["n_test"] and 0 <= stats.test_rate <= 0.2
    path = run_dir / STATS_FILE
    assert path.is_file() and not list(run_dir.glob(".*.tmp"))
    n_calls = len(calls)
    again = load_or_fit(run_dir, embedder(classifier, calls))
    assert len(calls) == n_calls and again.threshold == stats.threshold  # read from disk, nothing embedded
    # real images: validation-like images pass, noise and blank fields are unlike the training data
    from conftest import NPZ_28

    with np.load(NPZ_28) as npz:
        test_images = npz["test_images"][:200]
    _, emb = classifier.probabilities_and_embeddings(test_images)
    assert stats.unlike(emb).mean() < 0.2
    rng = np.random.default_rng(0)
    odd = np.concatenate([rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8),
                          np.zeros((1, 28, 28, 3), np.uint8), np.full((1, 28, 28, 3), 255, np.uint8)])
    _, emb = classifier.probabilities_and_embeddings(odd)
    assert stats.unlike(emb).all(), stats.distance(emb)


def test_damaged_cache_is_recomputed(classifier):
    run_dir = classifier.run.path
    (run_dir / STATS_FILE).write_bytes(b"half a file")
    calls: list[int] = []
    stats = load_or_fit(run_dir, embedder(classifier, calls))
    assert calls and stats.threshold > 0
    assert OODStats.from_file(run_dir / STATS_FILE).threshold == stats.threshold


def test_missing_dataset_is_a_clear_user_error(tmp_path, trained_run):
    run = mirror_run(Path(trained_run), tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["dataset"]["source"] = str(tmp_path / "gone.npz")
    (run / "metrics.json").write_text(json.dumps(metrics))
    config = json.loads((run / "config.json").read_text())
    config["data"] = str(tmp_path / "gone.npz")
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserFacingError, match="dataset is not on this machine") as info:
        load_or_fit(run, lambda images: pytest.fail("nothing to embed"))
    assert isinstance(info.value, ood.OODError) and not (run / STATS_FILE).exists()
