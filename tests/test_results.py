"""The runs table, filters and the results matrix (mean, sample SD and n over seeds; empty cells), the study
beside it, tagging, and the index's per-class F1 column (an older index is rebuilt on open)."""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from contextlib import closing

import numpy as np
import pandas as pd
import pytest
from results_fixtures import publish, synthetic_metrics

from core.access.roles import LOCAL_ADMIN
from core.config import RunConfig
from core.jobs.queue import JobQueue
from core.store import results
from core.store.runs import Run, RunStore, RunStoreError, index_row


def config(**kw) -> RunConfig:
    base = dict(arch="resnet50", weights="none", size=64, epochs=2, batch_size=32, seed=0)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def store(runs_dir) -> RunStore:
    return RunStore(runs_dir)


@pytest.fixture
def grid(store) -> RunStore:
    """resnet50 at 64 px: three seeds with batch 32, one with batch 16; resnet101 at 128 px: two seeds."""
    for seed, acc in ((1, 0.90), (2, 0.94), (3, 0.95)):
        publish(store, config(seed=seed), synthetic_metrics(acc, acc - 0.01, seed))
    publish(store, config(batch_size=16, seed=1), synthetic_metrics(0.80, 0.81, 7))
    for seed, acc in ((1, 0.97), (2, 0.99)):
        publish(store, config(arch="resnet101", size=128, seed=seed, tags=("deep", "study")),
                synthetic_metrics(acc, acc, 10 + seed))
    return store


def test_runs_table_has_config_tags_and_best_epoch_metrics(grid):
    table = results.runs_table(grid)
    assert len(table) == 6 and set(table["status"]) == {"complete"}
    for field in ("arch", "size", "batch_size", "optimizer", "lr", "dropout", "attention", "seed", "aug_shear"):
        assert field in table.columns
    for column in ("val_accuracy", "test_accuracy", "test_auc", "test_macro_f1", "train_seconds", "best_epoch"):
        assert column in table.columns
    # one F1 column per BloodMNIST class, from the index (no metrics.json read)
    f1 = results.f1_columns(table)
    assert len(f1) == 8 and "f1_monocyte" in f1 and "f1_immature_granulocytes" in f1
    row = table[table["seed"] == 2].iloc[0]
    metrics = Run(grid.runs_dir / row["run_id"]).metrics
    assert row["test_accuracy"] == metrics["test"]["accuracy"]
    assert row["f1_monocyte"] == pytest.approx(metrics["test"]["per_class"]["monocyte"]["f1"])
    assert set(table.loc[table["arch"] == "resnet101", "tags"]) == {"deep, study"}
    assert table["created"].is_monotonic_decreasing


def test_display_columns_put_the_run_its_outcome_and_the_settings_that_differ_first(grid):
    table = results.runs_table(grid)
    columns = results.display_columns(table)
    # identity and outcome, then the settings that differ between these runs (main ones first), then tags
    assert columns[:8] == ["run_id", "status", "val_accuracy", "test_accuracy", "arch", "size", "batch_size", "seed"]
    assert columns[8] == "tags"
    assert sorted(columns) == sorted(set(columns)) and set(columns) <= set(table.columns)
    assert set(results.CONFIG_FIELDS) <= set(columns) and "path" not in columns
    scores = [columns.index(c) for c in ("test_auc", "test_macro_f1", "f1_monocyte")]
    assert scores == sorted(scores) and max(scores) < columns.index("train_seconds") < columns.index("aug_shear")
    same_arch = results.display_columns(table[table["arch"] == "resnet50"])
    assert same_arch[4:7] == ["batch_size", "seed", "tags"]  # architecture and size no longer differ
    assert same_arch.index("arch") > same_arch.index("created")


def test_search_runs_by_id_tag_or_setting_words(grid):
    table = results.runs_table(grid)
    assert len(results.search_runs(table, "")) == 6
    assert set(results.search_runs(table, "ResNet-101")["arch"]) == {"resnet101"}  # the name as shown
    assert set(results.search_runs(table, "resnet101")["arch"]) == {"resnet101"}  # the stored value
    assert len(results.search_runs(table, "deep")) == 2  # a tag
    assert len(results.search_runs(table, "resnet50 batch 16")) == 1  # every word must match
    one = table["run_id"].iloc[0]
    assert list(results.search_runs(table, one[-6:].upper())["run_id"]) == [one]
    assert results.search_runs(table, "no such thing").empty
    made_at_16h = table.assign(run_id=[f"20261130-160916-{i:06x}" for i in range(len(table))])
    assert len(results.search_runs(made_at_16h, "resnet50 batch 16")) == 1  # a number is a whole word


def test_settings_diff_lists_only_what_differs(grid):
    table = results.runs_table(grid)
    r50 = table[(table["arch"] == "resnet50") & (table["batch_size"] == 32)].sort_values("seed")
    b16 = table[table["batch_size"] == 16]["run_id"].iloc[0]
    diff = results.settings_diff(table, [r50["run_id"].iloc[0], b16])
    assert list(diff["setting"]) == ["Batch size"]  # both seed 1: batch size only
    assert list(diff.columns) == ["setting", r50["run_id"].iloc[0], b16]
    assert list(diff.iloc[0, 1:]) == ["batch 32", "batch 16"]
    wide = results.settings_diff(table, list(table["run_id"]))
    assert set(wide["setting"]) == {"Architecture", "Image size", "Batch size", "Seed"}
    assert results.settings_diff(table, [b16]).empty or len(results.settings_diff(table, [b16])) == 0


def test_runs_table_reads_no_metrics_files(grid, monkeypatch):
    def refuse(self):
        raise AssertionError("metrics.json read while listing")

    monkeypatch.setattr(Run, "metrics", property(refuse))
    assert len(results.runs_table(grid)) == 6


def test_incomplete_runs_are_listed_with_a_status(grid):
    writer = grid.writer(config(seed=9))  # being trained: only config and log so far
    table = results.runs_table(grid)
    row = table[table["run_id"] == writer.run_id].iloc[0]
    assert row["status"] == "incomplete" and math.isnan(row["test_accuracy"])
    assert len(results.runs_table(grid, include_incomplete=False)) == 6
    writer.close()


def test_an_incomplete_run_shows_its_jobs_status_read_through_the_queue(grid):
    assert JobQueue.statuses_by_run(grid) == {}  # no queue yet: no jobs table, nothing created
    writer = grid.writer(config(seed=9))
    queue = JobQueue(grid)
    job = queue.submit(writer.config, LOCAL_ADMIN)
    queue._update(job, run_id=writer.run_id)
    assert queue._transition(job, "queued", "failed")
    assert JobQueue.statuses_by_run(grid) == {writer.run_id: "failed"}
    table = results.runs_table(grid)
    assert table.loc[table["run_id"] == writer.run_id, "status"].item() == "failed"
    writer.close()


def test_filters_by_field_and_tag(grid):
    table = results.runs_table(grid)
    assert len(results.filter_runs(table, {"arch": ["resnet101"]})) == 2
    assert len(results.filter_runs(table, {"batch_size": [16], "arch": []})) == 1
    assert len(results.filter_runs(table, {"seed": [1, 2]})) == 5
    assert len(results.filter_runs(table, {}, tags=["deep"])) == 2
    assert len(results.filter_runs(table, {}, tags=["deep", "nope"])) == 2
    assert len(results.filter_runs(table, {}, tags=["deep", "nope"], all_tags_required=True)) == 0
    assert len(results.filter_runs(table, {"status": ["complete"]})) == 6
    with pytest.raises(results.ResultsError):
        results.filter_runs(table, {"no_such_field": [1]})


def test_matrix_mean_sd_and_n_over_seeds(grid):
    table = results.runs_table(grid)
    m = results.matrix(table, ["arch", "batch_size"], ["size"], "test_accuracy")
    assert list(m.mean.index) == [("resnet101", 16), ("resnet101", 32), ("resnet50", 16), ("resnet50", 32)]
    assert list(m.mean.columns) == [64, 128]
    cell = ("resnet50", 32), 64
    assert m.n.loc[cell] == 3
    assert m.mean.loc[cell] == pytest.approx(statistics.mean([0.90, 0.94, 0.95]))
    assert m.sd.loc[cell] == pytest.approx(statistics.stdev([0.90, 0.94, 0.95]))  # sample SD, ddof=1
    assert m.seeds.loc[cell] == "1, 2, 3"
    deep = ("resnet101", 32), 128
    assert m.n.loc[deep] == 2 and m.mean.loc[deep] == pytest.approx(0.98)
    assert m.sd.loc[deep] == pytest.approx(np.std([0.97, 0.99], ddof=1))


def test_matrix_single_runs_and_empty_cells(grid):
    table = results.runs_table(grid)
    m = results.matrix(table, ["arch", "batch_size"], ["size"], "test_accuracy")
    single = ("resnet50", 16), 64
    assert m.n.loc[single] == 1 and m.mean.loc[single] == pytest.approx(0.80) and math.isnan(m.sd.loc[single])
    for empty in ((("resnet101", 16), 64), (("resnet101", 16), 128), (("resnet50", 32), 128)):
        assert m.n.loc[empty] == 0 and math.isnan(m.mean.loc[empty]) and math.isnan(m.sd.loc[empty])
    text = m.text()
    assert text.loc[single] == "0.800 (1)"
    assert text.loc[(("resnet50", 32), 64)] == f"{statistics.mean([0.90, 0.94, 0.95]):.3f} ± " \
                                              f"{statistics.stdev([0.90, 0.94, 0.95]):.3f} (3)"
    assert text.loc[(("resnet101", 16), 64)] == ""
    long = m.long()
    assert len(long) == 8 and long["n"].sum() == 6
    assert set(long.columns) >= {"arch", "batch_size", "size", "mean", "sd", "n", "seeds"}


def test_matrix_of_an_empty_table_and_without_fields(grid):
    table = results.runs_table(grid)
    none = results.matrix(table.iloc[:0], ["arch"], ["size"], "test_accuracy")
    assert none.mean.shape == (0, 0) and none.n.to_numpy().sum() == 0
    whole = results.matrix(table, [], [], "test_accuracy")
    # six runs of three settings: never pooled; the best setting (resnet101, two seeds) shows
    assert whole.mean.shape == (1, 1) and whole.n.iat[0, 0] == 2 and whole.settings.iat[0, 0] == 3
    assert whole.mean.iat[0, 0] == pytest.approx(np.mean([0.97, 0.99]))
    assert whole.text().iat[0, 0].endswith("(2) · best of 3 settings") and whole.mixed == 1
    assert whole.row_labels() == ["all runs"]
    pooled = results.matrix(table, [], [], "test_accuracy", same=())  # pooling everything is a choice
    assert pooled.n.iat[0, 0] == 6
    assert pooled.mean.iat[0, 0] == pytest.approx(np.mean([0.90, 0.94, 0.95, 0.80, 0.97, 0.99]))


def test_matrix_levels_first_and_exact(grid):
    table = results.runs_table(grid)
    levels = {"arch": ["resnet101", "resnet50"], "batch_size": [16, 32], "size": [224, 128, 64]}
    m = results.matrix(table, ["arch", "batch_size"], ["size"], "test_accuracy", levels=levels)
    assert list(m.mean.columns) == [224, 128, 64]
    assert m.n[224].sum() == 0  # no 224 px run: an empty column
    more = results.matrix(table, ["arch"], ["size"], "test_accuracy", levels={"size": [32]})
    assert list(more.mean.columns) == [32, 64, 128]  # given levels first, then the ones present
    exact = results.matrix(table, ["arch"], ["size"], "test_accuracy", levels={"size": [64]}, extend=False)
    assert list(exact.mean.columns) == [64]


def test_matrix_of_other_metrics_and_missing_values(grid):
    table = results.runs_table(grid)
    m = results.matrix(table, ["arch"], [], "train_seconds")
    # batch 32 (11, 12, 13 s) and batch 16 (17 s) are two settings: the cheaper one shows
    assert m.mean.loc["resnet50", "all runs"] == pytest.approx(np.mean([11, 12, 13]))
    assert m.settings.loc["resnet50", "all runs"] == 2 and m.settings.loc["resnet101", "all runs"] == 1
    f1 = results.matrix(table, ["arch"], ["batch_size"], "f1_monocyte")
    assert f1.n.loc["resnet50", 32] == 3
    table.loc[table["seed"] == 3, "test_accuracy"] = np.nan  # e.g. a run without a test score
    m = results.matrix(table, ["arch", "batch_size"], ["size"], "test_accuracy")
    assert m.n.loc[("resnet50", 32), 64] == 2


def test_a_cell_pools_only_runs_that_differ_in_seed(store):
    """The issue's case: a 1,000-image run and a 500-image run are not two seeds of one setting."""
    publish(store, config(seed=1, limit_train=1000), synthetic_metrics(0.85, 0.85, 1))
    publish(store, config(seed=2, limit_train=1000), synthetic_metrics(0.87, 0.86, 2))
    publish(store, config(seed=1, limit_train=500), synthetic_metrics(0.74, 0.75, 3))
    table = results.runs_table(store)
    m = results.matrix(table, ["arch"], ["size"], "test_accuracy")
    cell = "resnet50", 64
    assert m.n.loc[cell] == 2 and m.mean.loc[cell] == pytest.approx(0.86) and m.settings.loc[cell] == 2
    assert m.seeds.loc[cell] == "1, 2"
    assert m.text().loc[cell] == f"0.860 ± {np.std([0.85, 0.87], ddof=1):.3f} (2) · best of 2 settings"
    assert m.mixed == 1
    long = m.long()
    assert long.loc[0, "settings"] == 2 and long.loc[0, "n"] == 2
    split = results.matrix(table, ["arch"], ["limit_train"], "test_accuracy")  # the field that differs, as columns
    assert split.mixed == 0 and split.n.loc["resnet50", 1000] == 2 and split.n.loc["resnet50", 500] == 1
    assert split.text().loc["resnet50", 500] == "0.740 (1)"


def test_matrix_rejects_bad_fields(grid):
    table = results.runs_table(grid)
    with pytest.raises(results.ResultsError, match="both a row and a column"):
        results.matrix(table, ["arch"], ["arch"], "test_accuracy")
    with pytest.raises(results.ResultsError, match="no field"):
        results.matrix(table, ["nope"], [], "test_accuracy")


def test_metric_options_and_labels(grid):
    table = results.runs_table(grid)
    options = results.metric_options(table)
    assert {"test_accuracy", "test_auc", "test_macro_f1", "val_accuracy", "train_seconds"} <= set(options)
    assert options["f1_monocyte"].reference == ("test", "f1", "monocyte")
    assert options["f1_immature_granulocytes"].label == "Test F1: immature granulocytes"
    assert results.describe_value("arch", "resnet101") == "ResNet-101"
    assert results.describe_value("attention", False) == "no attention"
    assert results.describe_value("lr", 1e-4) == "lr 0.0001"


def test_study_table_12_beside_ours(grid):
    table = results.runs_table(grid)
    layout = results.TABLE12
    ours = results.matrix(table, layout["rows"], layout["cols"], layout["metric"], levels=layout["levels"])
    study = results.reference_matrix(ours, layout["recipe"])
    assert study is not None and not study.empty
    assert study.matrix.mean.loc[("resnet101", 16), 224] == pytest.approx(0.9880)
    assert study.matrix.mean.loc[("resnet50", 32), 128] == pytest.approx(0.9860)
    assert study.matrix.mean.loc[("resnet50", 32), 64] == pytest.approx(0.9775)
    assert not study.unreliable.to_numpy().any()
    assert study.tables.loc[("resnet101", 16), 224] == "11, 12"
    text = study.text(results.get_metric("test_accuracy"))
    assert text.loc[("resnet101", 16), 224] == "0.988"
    comparison = results.comparison_table(ours, study)
    row = comparison[(comparison["arch"] == "resnet50") & (comparison["batch_size"] == 32)
                     & (comparison["size"] == 64)].iloc[0]
    assert row["n"] == 3 and row["study"] == pytest.approx(0.9775)
    assert row["difference"] == pytest.approx(row["mean"] - 0.9775)


def test_study_per_class_f1_marks_table_13_batch_32_unreliable(grid):
    table = results.runs_table(grid)
    layout = results.TABLE12
    ours = results.matrix(table, layout["rows"], layout["cols"], "f1_monocyte", levels=layout["levels"])
    study = results.reference_matrix(ours)
    assert study.matrix.mean.loc[("resnet50", 16), 64] == pytest.approx(0.89)
    assert not study.unreliable.loc[("resnet50", 16), 64]
    assert study.unreliable.loc[("resnet50", 32), 64]
    assert study.text(results.get_metric("f1_monocyte")).loc[("resnet50", 32), 64].endswith("†")


def test_no_study_values_for_fields_or_metrics_it_does_not_have(grid):
    table = results.runs_table(grid)
    assert results.reference_matrix(results.matrix(table, ["seed"], [], "test_accuracy")) is None
    assert results.reference_matrix(results.matrix(table, ["arch"], [], "test_macro_f1")) is None
    m = results.matrix(table, ["optimizer"], ["lr"], "val_accuracy")
    study = results.reference_matrix(m)  # rows/cols from our runs: only Adam at 1e-4 here
    assert study.matrix.n.loc["adam", 1e-4] > 1  # several study configurations in one cell: a mean


def test_tag_runs_rewrites_config_and_reindexes(grid):
    table = results.runs_table(grid)
    ids = list(table.loc[table["arch"] == "resnet50", "run_id"][:2])
    path = grid.runs_dir / ids[0]
    created = path.stat().st_mtime_ns
    before = results.index_signature(grid)
    assert grid.tag_runs(ids, LOCAL_ADMIN, add=["baseline"]) == 2
    assert grid.tag_runs(ids, LOCAL_ADMIN, add=["baseline"]) == 0  # already there
    assert json.loads((path / "config.json").read_text())["tags"] == ["baseline"]
    assert path.stat().st_mtime_ns == created  # `created` in the index stays the run's own time
    assert results.index_signature(grid) != before
    table = results.runs_table(grid)
    assert set(results.filter_runs(table, {}, tags=["baseline"])["run_id"]) == set(ids)
    deep = list(table.loc[table["arch"] == "resnet101", "run_id"])
    assert grid.tag_runs(deep, LOCAL_ADMIN, remove=["study"]) == 2
    assert set(results.runs_table(grid).loc[lambda t: t["arch"] == "resnet101", "tags"]) == {"deep"}
    with pytest.raises(RunStoreError, match="without commas"):
        grid.tag_runs(ids, LOCAL_ADMIN, add=["a,b"])
    with pytest.raises(RunStoreError, match="invalid run id"):
        grid.tag_runs(["../../etc"], LOCAL_ADMIN, add=["x"])


def test_details_of_selected_runs(grid):
    table = results.runs_table(grid)
    ids = list(table["run_id"][:2])
    per_class = results.per_class_table(grid, ids)
    assert len(per_class) == 16 and set(per_class["run_id"]) == set(ids)
    assert "immature granulocytes" in set(per_class["class"])
    curves = results.curves(grid, ids)
    assert set(curves["metric"]) == {"loss", "accuracy", "auc"} and set(curves["split"]) == {"train", "val"}
    assert len(curves) == 2 * 3 * 2 * 2


def test_per_class_wide_has_a_column_per_run_and_metric_then_support(grid):
    ids = list(results.runs_table(grid)["run_id"][:2])
    per_class = results.per_class_table(grid, ids)
    wide, columns = results.per_class_wide(per_class)
    assert columns == [f"{r[-6:]} {m}" for r in ids for m in ("precision", "recall", "F1")]
    assert list(wide.columns) == ["class", *columns, "support"] and len(wide) == 8
    row = wide.iloc[3]
    expected = per_class[(per_class["run_id"] == ids[1]) & (per_class["class"] == row["class"])].iloc[0]
    assert row[f"{ids[1][-6:]} F1"] == pytest.approx(expected["f1"]) and row["support"] == expected["support"]


def test_parallel_dimensions(grid):
    table = results.runs_table(grid)
    dims = results.parallel_dimensions(table, ["arch", "size", "batch_size", "lr", "dropout"], "val_accuracy")
    labels = [d["label"] for d in dims]
    assert labels == ["Architecture", "Image size", "Batch size", "Val accuracy"]  # lr and dropout do not vary
    arch = dims[0]
    assert arch["ticktext"] == ["ResNet-101", "ResNet-50"] and set(arch["values"]) == {0, 1}
    assert all(len(d["values"]) == 6 for d in dims)


def test_index_gains_the_per_class_column_on_an_old_database(tmp_path):
    """An index written by an older version (no per_class_f1) is rebuilt from the run folders when opened."""
    runs_dir = tmp_path / "artifacts" / "runs"
    store = RunStore(runs_dir)
    run = publish(store, config(seed=5), synthetic_metrics(0.9, 0.9, 5))
    with closing(sqlite3.connect(store.index_path)) as db, db:  # make it look like the old schema
        db.execute("ALTER TABLE runs DROP COLUMN per_class_f1")
    with closing(sqlite3.connect(store.index_path)) as db:
        assert "per_class_f1" not in {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    reopened = RunStore(runs_dir)
    row = reopened.list_runs()[0]
    expected = run.metrics["test"]["per_class"]["monocyte"]["f1"]
    assert json.loads(row["per_class_f1"])["monocyte"] == pytest.approx(expected)
    RunStore(runs_dir)  # opening again is a no-op
    assert "f1_monocyte" in results.runs_table(reopened).columns


def test_listing_a_thousand_runs_is_fast(tmp_path):
    """1,000 index rows become a table in well under a second (no run files are read)."""
    import time

    store = RunStore(tmp_path / "artifacts" / "runs")
    metrics = synthetic_metrics(0.9, 0.9, 0)
    rows = []
    for i in range(1000):
        path = store.runs_dir / f"20250101-000000-{i:06x}"
        path.mkdir()
        c = config(seed=i % 5, batch_size=(16, 32)[i % 2])
        rows.append(index_row(path.name, path, 1.7e9 + i, c, {**metrics, "test": {**metrics["test"],
                                                                          "accuracy": 0.9 + i / 1e5}}))
    with closing(sqlite3.connect(store.index_path)) as db, db:
        cols = ", ".join(rows[0])
        db.executemany(f"INSERT INTO runs ({cols}) VALUES ({', '.join(':' + k for k in rows[0])})", rows)
    start = time.perf_counter()
    table = results.runs_table(store)
    m = results.matrix(table, ["batch_size"], ["seed"], "test_accuracy")
    elapsed = time.perf_counter() - start
    assert len(table) == 1000 and int(m.n.to_numpy().sum()) == 1000
    assert elapsed < 1.5, elapsed
    assert isinstance(table["created"].iloc[0], pd.Timestamp)
