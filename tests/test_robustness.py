"""The corruption benchmark of a run (core.evaluation.robustness) on the shared tiny trained run, over a small
stratified subset of its test split: stored atomically and read back equal, its clean accuracy is what
`python -m core evaluate` gives on the same images, each cell is the evaluator on the corrupted images, the
mean is the mean of the table; a damaged report is a clear error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import mirror_run

from core.cli import main
from core.data.dataset import stratified_subset
from core.evaluation import corruptions
from core.evaluation.metrics import evaluate
from core.evaluation.predictions import load_classifier
from core.evaluation.robustness import (
    COMMAND,
    RobustnessError,
    RobustnessReport,
    RobustnessReportError,
    evaluate_robustness,
    format_table,
    load_report,
    report_path,
    save_report,
)
from core.store.runs import open_run

LIMIT, SEED = 16, 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_run) -> Path:
    """A private copy of the shared run (the benchmark writes into its folder)."""
    return mirror_run(trained_run, tmp_path_factory.mktemp("robustness") / "artifacts")


@pytest.fixture(scope="module")
def classifier(run_dir):
    return load_classifier(run_dir)


@pytest.fixture(scope="module")
def measured(run_dir, classifier):
    steps = []
    before = run_dir.stat().st_mtime_ns
    report = evaluate_robustness(run_dir, limit=LIMIT, seed=SEED, classifier=classifier,
                                 progress=lambda done, total, label: steps.append((done, total, label)))
    return report, steps, before


def subset(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test images the benchmark scores with LIMIT and SEED, found here from the run's own split."""
    images, labels = open_run(run_dir).test_split()
    index = stratified_subset(labels, LIMIT, SEED)
    return images[index], labels[index], index


def test_the_report_is_stored_atomically_and_reads_back_equal(run_dir, measured):
    report, _, mtime_before = measured
    path = report_path(run_dir)
    assert path.is_file() and not list(run_dir.glob(".robustness.json.*"))  # no temporary file left behind
    assert run_dir.stat().st_mtime_ns == mtime_before  # the run folder's time is kept
    assert load_report(run_dir) == report
    stored = json.loads(path.read_text())
    assert stored["n"] == report.n == len(subset(run_dir)[1]) <= LIMIT  # stratified: about LIMIT images
    assert stored["limit"] == LIMIT and stored["seed"] == SEED
    assert [c["name"] for c in stored["corruptions"]] == list(corruptions.NAMES)
    assert stored["schema_version"] == 1 and stored["benchmark_version"] == corruptions.BENCHMARK_VERSION
    # replaced by a rename, never rewritten in place: a reader that opened the old file reads it whole
    with open(path) as old:
        save_report(run_dir, replace(report, seed=SEED + 1))
        assert json.load(old)["seed"] == SEED
    assert load_report(run_dir).seed == SEED + 1
    save_report(run_dir, report)


def test_clean_accuracy_is_what_core_evaluate_gives_on_the_same_images(run_dir, measured, tmp_path, capsys):
    report, _, _ = measured
    images, labels, _ = subset(run_dir)
    data = tmp_path / "same-images.npz"
    arrays = {f"{split}_{kind}": value for split in ("train", "val", "test")
              for kind, value in (("images", images), ("labels", labels[:, None]))}
    np.savez(data, **arrays)
    assert main(["evaluate", "--run", str(run_dir), "--data", str(data)]) == 0
    evaluated = json.loads(capsys.readouterr().out)["test"]
    assert evaluated["n"] == report.clean.n == len(labels)
    assert report.clean_accuracy == evaluated["accuracy"]
    assert report.clean.confusion == evaluated["confusion"]


def test_each_cell_is_the_evaluator_on_the_corrupted_images(run_dir, measured, classifier):
    report, _, _ = measured
    images, labels, index = subset(run_dir)
    table = report.accuracy_table()
    for name, severity in (("pixelate", 5), ("bubble", 2), ("brightness_down", 5)):
        corrupted = corruptions.corrupt_batch(images, name, severity, SEED, index)
        expected = evaluate(labels, classifier.probabilities(corrupted), classifier.labels).accuracy
        assert table[name][severity - 1] == expected


def test_the_mean_is_the_mean_of_the_table(measured):
    report, steps, _ = measured
    table = report.accuracy_table()
    assert list(table) == list(corruptions.NAMES)
    cells = [a for row in table.values() for a in row]
    assert len(cells) == 55 and all(0.0 <= a <= 1.0 for a in cells)
    assert report.mean_corrupted_accuracy == pytest.approx(float(np.mean(cells)), abs=1e-12)
    assert report.to_dict()["mean_corrupted_accuracy"] == report.mean_corrupted_accuracy
    assert steps[0] == (1, 56, "clean") and steps[-1] == (56, 56, "bubble 5") and len(steps) == 56


def test_the_printed_table(measured):
    report, _, _ = measured
    text = format_table(report)
    assert f"clean accuracy            {report.clean_accuracy:.4f}" in text
    assert f"mean corrupted accuracy   {report.mean_corrupted_accuracy:.4f}" in text
    assert f"{report.n} test images at 28 px (a stratified subset, limit {LIMIT}), seed {SEED}" in text
    rows = {line.split("  ")[0].strip(): line.split()[-6:] for line in text.splitlines()[-11:]}
    assert list(rows) == [c.title for c in corruptions.CORRUPTIONS]
    for c in report.corruptions:
        assert rows[c.title] == [f"{a:.3f}" for a in (*c.accuracies, c.mean_accuracy)]


def test_no_report_and_damaged_reports(tmp_path, measured):
    report, _, _ = measured
    assert load_report(tmp_path) is None
    path = report_path(tmp_path)
    good = report.to_dict()
    for damaged, reason in (("{ not json", "Expecting property name"),
                            (json.dumps({k: v for k, v in good.items() if k != "clean"}), "missing 'clean'"),
                            (json.dumps({**good, "schema_version": 99}), "newer than this program reads"),
                            (json.dumps({**good, "corruptions": [{"name": "pixelate", "accuracy": [1.0],
                                                                  "balanced_accuracy": [1.0]}]}),
                             "pixelate: 1 severities, expected 5"),
                            ("[]", "not a robustness report")):
        path.write_text(damaged)
        with pytest.raises(RobustnessReportError) as caught:
            load_report(tmp_path)
        message = str(caught.value)
        assert str(path) in message and reason in message and f"{COMMAND} {tmp_path}" in message


def test_bad_settings_are_refused_before_any_work(run_dir):
    for kwargs, phrase in (({"limit": 0}, "positive number of test images"), ({"seed": -1}, "non-negative")):
        with pytest.raises(RobustnessError, match=phrase):
            evaluate_robustness(run_dir, **kwargs)


def test_the_command_prints_the_table_and_stores_the_same_report(tmp_path, trained_run, capsys):
    run_dir = mirror_run(trained_run, tmp_path / "artifacts")
    assert main(["robustness", "--run", str(run_dir), "--limit", str(LIMIT), "--seed", str(SEED)]) == 0
    out = capsys.readouterr().out
    stored = load_report(run_dir)
    assert stored is not None and stored.n <= LIMIT and stored.seed == SEED
    assert format_table(stored) in out and f"stored in {report_path(run_dir)}" in out
    assert main(["robustness", "--run", str(run_dir), "--limit", "0"]) == 2
    assert "the limit must be a positive number" in capsys.readouterr().err


def test_the_validation_split_is_scored_for_choosing_and_never_stored(tmp_path, trained_run, capsys):
    """Recipes are chosen on validation data: `--split val` scores the validation split with the same corruptions,
    prints it, and leaves the run's stored (test) report as it was."""
    run_dir = mirror_run(trained_run, tmp_path / "artifacts")
    assert main(["robustness", "--run", str(run_dir), "--limit", str(LIMIT), "--seed", str(SEED)]) == 0
    stored = report_path(run_dir).read_bytes()
    capsys.readouterr()
    assert main(["robustness", "--run", str(run_dir), "--limit", str(LIMIT), "--seed", str(SEED),
                 "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "validation images" in out and "not stored" in out and "stored in" not in out
    assert report_path(run_dir).read_bytes() == stored and load_report(run_dir).split == "test"
    val_images, val_labels = open_run(run_dir).split("val")
    report = evaluate_robustness(run_dir, split="val", store=False)  # the whole validation split
    assert report.split == "val" and report.n == len(val_labels) == len(val_images)
    assert RobustnessReport.from_dict(report.to_dict()) == report
    with pytest.raises(RobustnessError, match="split must be one of"):
        evaluate_robustness(run_dir, split="train")
