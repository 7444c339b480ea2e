"""Real training runs on a real 28 px subset: the published run directory and its metrics, best-epoch
selection, determinism, cancel and resume, early stopping, class weights and progress reports.

Kept small: one 2-epoch ResNet-18 run on 256 images; the other runs use `limit_train` for 2-3 steps an epoch.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from core.config import RunConfig
from core.evaluation import confusion, predictions
from core.evaluation.metrics import SCHEMA_VERSION, SplitMetrics
from core.jobs.sweeps import phase_plan, times_key
from core.progress import PhaseTimes, Tracker
from core.store import checkpoints
from core.store.runs import RunStore, open_run, read_history
from core.training import threads
from core.training.trainer import Progress, TrainingCancelled, class_weight_map, resume, train

SPLIT_KEYS = {"accuracy", "balanced_accuracy", "auc", "per_class", "confusion", "labels"}
CLASS_KEYS = {"precision", "recall", "f1", "support"}


def medmnist_labels() -> list[str]:
    """BloodMNIST's label names straight from the installed medmnist package's info.py."""
    spec = importlib.util.find_spec("medmnist")
    info_path = Path(list(spec.submodule_search_locations)[0]) / "info.py"
    info_spec = importlib.util.spec_from_file_location("medmnist_info_for_test", info_path)
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    labels = module.INFO["bloodmnist"]["label"]
    return [labels[str(i)] for i in range(len(labels))]


def small_config(tiny_npz: Path, **changes) -> RunConfig:
    base = dict(data=str(tiny_npz), size=28, arch="resnet18", weights="none", epochs=2, batch_size=32, seed=0)
    base.update(changes)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(tiny_npz, tmp_path_factory):
    """ResNet-18, 28 px, 2 epochs, batch 32 on 256 real images; with the progress reports it made, and the
    phases it walked on a tracker planned as a job's is (core.jobs.sweeps.phase_plan, no precomputing)."""
    store = RunStore(tmp_path_factory.mktemp("train-artifacts") / "runs")
    reports: list[Progress] = []
    epochs: list[dict] = []
    config = small_config(tiny_npz)
    plan, _ = phase_plan(config, 256, 128, 128, [], PhaseTimes.in_artifacts(store.runs_dir.parent))
    phases = []
    tracker = Tracker([p for p in plan if p[0] != "precomputing"], phases.append)
    tracker.start("loading")
    run = train(config, store, progress=reports.append, on_epoch=epochs.append, echo=None, tracker=tracker)
    return run, store, reports, epochs, phases


@pytest.mark.slow
def test_a_run_publishes_a_complete_directory(tiny_run):
    run, store, _, _, _ = tiny_run
    assert run.path.parent == store.runs_dir
    names = {p.name for p in run.path.iterdir()}
    assert {"config.json", "history.csv", "metrics.json", "model.keras", "train.log"} <= names
    assert not [n for n in names if n.startswith(("checkpoint", "ckpt-", ".tmp"))]  # no checkpoint left
    assert not (store.runs_dir / ".incomplete" / run.run_id).exists()
    assert open_run(run.path).run_id == run.run_id
    assert [r["run_id"] for r in store.list_runs()] == [run.run_id]
    assert run.config.arch == "resnet18" and run.config.epochs == 2
    assert "run complete" in (run.path / "train.log").read_text()


@pytest.mark.slow
def test_metrics_layout_and_label_names(tiny_run):
    run, _, _, _, _ = tiny_run
    m = json.loads((run.path / "metrics.json").read_text())
    assert {"test", "val", "best_epoch", "epochs_run", "train_seconds", "train_images_per_second"} <= set(m)
    assert m["schema_version"] == SCHEMA_VERSION
    labels = medmnist_labels()
    assert len(labels) == 8 and labels[0] == "basophil" and labels[7] == "platelet"
    assert 120 <= m["dataset"]["n_val"] <= 128 and 120 <= m["dataset"]["n_test"] <= 128  # stratified ~128
    for split in ("val", "test"):
        s, n = m[split], m["dataset"][f"n_{split}"]
        assert s["n"] == n
        assert SPLIT_KEYS <= set(s), split
        assert s["labels"] == labels
        assert list(s["per_class"]) == labels
        for values in s["per_class"].values():
            assert set(values) == CLASS_KEYS
            assert 0.0 <= values["precision"] <= 1.0 and 0.0 <= values["recall"] <= 1.0
        assert sum(v["support"] for v in s["per_class"].values()) == n
        confusion = np.array(s["confusion"])
        assert confusion.shape == (8, 8) and confusion.sum() == n
        assert s["accuracy"] == pytest.approx(np.trace(confusion) / n)
        assert [v["support"] for v in s["per_class"].values()] == confusion.sum(axis=1).tolist()
        assert 0.0 <= s["balanced_accuracy"] <= 1.0 and 0.0 <= s["auc"] <= 1.0
        assert SplitMetrics.from_dict(s).to_dict() == s  # the one evaluator's shape, read back whole
    assert m["epochs_run"] == 2 and m["best_epoch"] in (1, 2)
    assert m["train_seconds"] > 0 and m["train_images_per_second"] > 0
    # the CPU thread pools this process trained with
    assert m["cpu_threads"] == threads.current().to_dict()
    # 2 epochs x 8 steps x 32 images in train_seconds
    assert m["train_images_per_second"] == pytest.approx(2 * 8 * 32 / m["train_seconds"])


@pytest.mark.slow
def test_best_epoch_is_the_best_validation_epoch(tiny_run):
    run, _, _, on_epoch_rows, _ = tiny_run
    history = read_history(run.path)
    m = run.metrics
    assert [int(r["epoch"]) for r in history] == [1, 2]
    best_val = max(r["val_accuracy"] for r in history)
    assert m["val"]["accuracy"] == pytest.approx(best_val, abs=1e-9)  # re-evaluated with the kept weights
    assert history[m["best_epoch"] - 1]["val_accuracy"] == pytest.approx(best_val, abs=1e-9)
    assert m["val"]["loss"] == pytest.approx(history[m["best_epoch"] - 1]["val_loss"], rel=1e-4)
    assert [row["epoch"] for row in on_epoch_rows] == [1, 2]
    assert [row["val_accuracy"] for row in on_epoch_rows] == pytest.approx([r["val_accuracy"] for r in history])
    assert all(r["train_seconds"] > 0 and r["val_seconds"] > 0 for r in history)  # an epoch's wall time, split


@pytest.mark.slow
def test_progress_fractions_increase_to_one(tiny_run):
    _, _, reports, _, _ = tiny_run
    assert len(reports) == 2 * 8  # one report per batch
    fractions = [p.fraction for p in reports]
    assert all(b > a for a, b in zip(fractions, fractions[1:]))
    assert fractions[0] == pytest.approx(1 / 16) and fractions[-1] == pytest.approx(1.0)
    assert [(p.epoch, p.batch) for p in reports[7:9]] == [(1, 8), (2, 1)]
    assert all(p.epochs == 2 and p.batches == 8 and p.images_per_second > 0 for p in reports)
    assert reports[-1].eta_seconds == pytest.approx(0.0)


@pytest.mark.slow
def test_a_run_walks_its_phases_and_records_their_times(tiny_run):
    run, store, _, _, reports = tiny_run
    walked = [p.phase for i, p in enumerate(reports) if i == 0 or p.phase != reports[i - 1].phase]
    assert walked == ["loading", "training", "validating", "training", "validating", "testing", "publishing"]
    assert all(p.eta_seconds is not None and p.eta_seconds >= 0 for p in reports)
    n = run.metrics["dataset"]
    details = {p.phase: p.detail for p in reports}  # the last detail of each phase
    assert details["testing"] == f"{n['n_test']} of {n['n_test']} images"
    assert details["validating"] == f"epoch 2/2 · {n['n_val']}/{n['n_val']} images"
    # each validation says how far it is through the BatchNorm re-estimate, then through the images, the first
    # one too
    for epoch in (1, 2):
        said = [p.detail for p in reports if p.phase == "validating" and p.detail.startswith(f"epoch {epoch}/2 · ")]
        recal = [d for d in said if "BatchNorm statistics, batch" in d]
        assert recal and said.index(recal[-1]) < said.index(f"epoch {epoch}/2 · {n['n_val']}/{n['n_val']} images")
    assert re.fullmatch(r"epoch 2/2 · batch 8/8 · [\d,]+ images/s", details["training"])
    # the test pass is expected from the validation pass's pace, by image count, before it starts
    first_test = next(p for p in reports if p.phase == "testing")
    assert first_test.eta_seconds > 0
    seconds = run.metrics["phase_seconds"]
    assert set(seconds) == {"loading", "training", "validating", "testing"} and all(v > 0 for v in seconds.values())
    times = PhaseTimes.in_artifacts(store.runs_dir.parent)
    key = times_key(run.config)
    # per image for the passes that scale with images (2 epochs of 256, 2 validations of 128 with the
    # BatchNorm re-estimate, the test pass of 128), seconds for the rest
    assert times.expected(key, "testing") == pytest.approx(seconds["testing"] / n["n_test"], rel=1e-3)
    assert times.expected(key, "training") == pytest.approx(seconds["training"] / (2 * n["n_train"]), rel=1e-3)
    assert times.expected(key, "loading") == pytest.approx(seconds["loading"], rel=1e-3)
    assert times.expected(key, "publishing") > 0
    # the test pass is kept for Confusions (no page predicts it again), and it is the one the metrics report
    kept = predictions.cached(run.path)
    assert kept is not None and len(kept) == n["n_test"]
    assert (confusion.from_predictions(kept.y_true, kept.y_pred, 8) == confusion.from_metrics(run.metrics)[0]).all()
    # and the next estimate of a run like it uses them
    plan, _ = phase_plan(run.config, n["n_train"], n["n_val"], n["n_test"], [], times)
    assert dict(plan)["testing"] == pytest.approx(n["n_test"] * times.expected(key, "testing"))


@pytest.fixture(scope="module")
def repeated_runs(tiny_npz, tmp_path_factory):
    """The same deterministic config twice: 64 images (2 steps an epoch), up to 3 epochs, patience 1."""
    store = RunStore(tmp_path_factory.mktemp("repeat-artifacts") / "runs")
    config = small_config(tiny_npz, limit_train=64, epochs=3, patience=1, deterministic=True, seed=3)
    return config, train(config, store, echo=None), train(config, store, echo=None)


@pytest.mark.slow
def test_deterministic_runs_repeat_exactly(repeated_runs):
    _, a, b = repeated_runs
    assert a.run_id != b.run_id
    ma, mb = a.metrics, b.metrics
    for key in ("accuracy", "auc", "confusion"):
        assert ma["test"][key] == mb["test"][key], key
    assert ma["val"]["confusion"] == mb["val"]["confusion"]
    assert (ma["best_epoch"], ma["epochs_run"]) == (mb["best_epoch"], mb["epochs_run"])

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("train_seconds", "val_seconds")} for r in rows]

    assert strip(a.history()) == strip(b.history()) and len(a.history()) >= 1


@pytest.mark.slow
def test_cancel_before_an_epoch_completes(tiny_npz, runs_dir):
    store = RunStore(runs_dir)
    calls = []

    def should_cancel():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(TrainingCancelled) as info:
        train(small_config(tiny_npz, epochs=2), store, should_cancel=should_cancel, echo=None)
    assert len(calls) == 3  # stopped right after the third batch, not at the end of the epoch
    assert info.value.epochs_done == 0
    assert list(store.complete_runs()) == [] and store.list_runs() == []
    assert not (runs_dir / info.value.work_dir.name).exists()


@pytest.mark.slow
def test_cancel_in_epoch_two_then_resume(tiny_npz, runs_dir):
    store = RunStore(runs_dir)
    config = small_config(tiny_npz, limit_train=64, epochs=2)  # 2 steps an epoch
    calls = []

    def should_cancel():
        calls.append(1)
        return len(calls) >= 3  # the first batch of epoch 2

    with pytest.raises(TrainingCancelled) as info:
        train(config, store, should_cancel=should_cancel, echo=None)
    assert info.value.epochs_done == 1
    run_id = info.value.work_dir.name
    assert (info.value.work_dir / "checkpoint.json").is_file()
    unit = checkpoints.load(info.value.work_dir)  # one complete unit, the pointer's, and nothing else
    assert unit.state["epochs_done"] == 1 and not unit.legacy
    assert sorted(p.name for p in info.value.work_dir.glob("ckpt-*")) == [unit.unit.name]
    assert {p.name for p in unit.unit.iterdir()} == {"model.keras", "best-weights.npz", "state.json"}
    assert list(store.complete_runs()) == [] and store.list_runs() == []

    run = resume(run_id, store, echo=None)
    assert run.run_id == run_id and run.path == runs_dir / run_id
    assert run.metrics["epochs_run"] == config.epochs == 2
    assert [int(r["epoch"]) for r in run.history()] == [1, 2]
    assert [r["run_id"] for r in store.list_runs()] == [run_id]
    assert not (runs_dir / ".incomplete" / run_id).exists()
    assert "resuming after epoch 1" in (run.path / "train.log").read_text()


@pytest.mark.slow
def test_early_stopping_with_patience_one(repeated_runs):
    config, run, _ = repeated_runs
    m, history = run.metrics, run.history()
    print(f"\nearly stopping run: epochs_run {m['epochs_run']} of {config.epochs}, best epoch {m['best_epoch']}, "
          f"val accuracy by epoch {[round(r['val_accuracy'], 3) for r in history]}")
    assert 1 <= m["epochs_run"] <= config.epochs and len(history) == m["epochs_run"]
    assert m["best_epoch"] >= m["epochs_run"] - 1
    # with patience 1 every epoch before the last one was a new best
    accuracies = [r["val_accuracy"] for r in history]
    assert all(b >= a for a, b in zip(accuracies[:-1], accuracies[1:-1]))
    logged = "early stopping" in (run.path / "train.log").read_text()
    assert logged == (m["best_epoch"] < m["epochs_run"])  # logged at the first epoch that was no new best
    if m["epochs_run"] < config.epochs:
        assert logged


def test_class_weight_map_is_balanced():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    weights = class_weight_map(labels, 4)
    assert weights == pytest.approx({0: 12 / (3 * 6), 1: 12 / (3 * 2), 2: 12 / (3 * 4), 3: 0.0})
    counts = np.bincount(labels, minlength=4)
    totals = [counts[c] * weights[c] for c in range(3)]
    assert totals == pytest.approx([len(labels) / 3] * 3)  # each present class weighs the same in the loss
