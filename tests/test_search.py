"""Search (core.jobs.search): the space checked against RunConfig, a real tiny study through the real queue
(real job processes, Optuna's own SQLite storage) with a planted trial the median pruner must stop, restarts of
the driver, cancel, the command line, and the Train page's Search mode and the Results page's section."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from page_helpers import APP, ok, texts
from streamlit.testing.v1 import AppTest

from core import cli
from core.access.roles import LOCAL_ADMIN
from core.config import ConfigError, RunConfig
from core.errors import StoreError
from core.jobs import search
from core.jobs.queue import JobQueue
from core.store.runs import RunStore, open_run

SPACE = ["lr=1e-6:1e-1:log", "dropout=0:0.5"]
# tried first: the bad ones must be pruned at epoch 1
GOOD, BAD, BAD2 = "lr=0.01,dropout=0.1", "lr=1e-6,dropout=0.1", "lr=2e-6,dropout=0.3"


def tiny_base(npz: Path, **changes) -> RunConfig:
    values = dict(data=str(npz), size=28, arch="compactresnet", weights="none", width=16, depth=1, epochs=2,
                  batch_size=16, limit_train=128, seed=0, bn_recalibration_batches=2)
    return RunConfig(**{**values, **changes})


# -- the space ----------------------------------------------------------------------------------------------
def test_space_specs_parse_into_typed_dimensions():
    lr, dropout, batch, optimizer, attention, epochs = search.parse_space(
        ["lr=1e-4:1e-2:log", "dropout=0:0.5", "batch_size=32,64,128", "optimizer=adam,sgd", "attention=true,false",
         "epochs=2:6"])
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True) and lr.text == "lr=0.0001:0.01:log"
    assert (dropout.low, dropout.high, dropout.log) == (0.0, 0.5, False)
    assert batch.choices == (32, 64, 128) and all(isinstance(v, int) for v in batch.choices)
    assert optimizer.choices == ("adam", "sgd") and attention.choices == (True, False)
    assert (epochs.low, epochs.high) == (2, 6) and isinstance(epochs.low, int)
    assert type(epochs.distribution()).__name__ == "IntDistribution"
    assert lr.distribution().log and type(batch.distribution()).__name__ == "CategoricalDistribution"
    assert search.parse_space({"dropout": "0.1:0.2"})[0].describe() == "Dropout: 0.1 to 0.2"


@pytest.mark.parametrize("spec, field, message", [
    ("colour=1:2", "colour", "not a run setting"),
    ("seed=0:5", "seed", "cannot be searched"),
    ("lr=a:b", "lr", "must be numbers"),
    ("lr=0.1", "lr", "at least two values"),
    ("lr=0.01:0.001", "lr", "low must be below high"),
    ("lr=0:0.1:log", "lr", "log-scale range needs low > 0"),
    ("lr=1e-3:1e-2:cubic", "lr", "low:high or low:high:log"),
    ("lr=1e-3:2", "lr", "2 is not allowed: must be in (0, 1]"),
    ("dropout=0:1", "dropout", "1 is not allowed: must be in [0, 1)"),
    ("batch_size=16.5:64", "batch_size", "whole numbers"),
    ("batch_size=0,32", "batch_size", "0 is not allowed"),
    ("optimizer=adam,lion", "optimizer", "lion is not allowed: must be one of"),
    ("optimizer=a:b", "optimizer", "takes a list of values"),
    ("width=8:64", "width", "takes a list of values"),
    ("attention=maybe,true", "attention", "not a valid bool"),
])
def test_a_bad_space_says_which_field_and_why(spec, field, message):
    with pytest.raises(ConfigError) as e:
        search.parse_space([spec])
    assert e.value.field == field and message in str(e.value), str(e.value)


def test_the_space_is_checked_with_the_base_config_and_every_error_is_collected(tmp_path, tiny_npz):
    store = RunStore(tmp_path / "artifacts" / "runs")
    base = tiny_base(tiny_npz, lr_schedule="cosine", warmup_epochs=1, epochs=3)
    # the base's other settings decide too: a cosine warm-up needs more epochs than it lasts
    p = search.plan_search(base, ["epochs=1:4"], trials=0, store=store, pruner="greedy", name="no spaces",
                           hours=-1)
    assert not p.ok and p.spec is None
    assert set(p.errors) == {"epochs", "search_trials", "search_pruner", "search_name", "search_hours"}
    assert "must be fewer than the epochs" in p.errors["epochs"].message
    with pytest.raises(ConfigError, match="given twice"):
        search.parse_space(["lr=1e-4:1e-2", "lr=1e-3:1e-1"])
    p = search.plan_search(base, SPACE, trials=5, store=store, first=["lr=0.5,dropout=0.1"])
    assert "lr=0.5 is outside the searched" in p.errors["search_space"].message
    p = search.plan_search(base, SPACE, trials=5, store=store, split_sizes=(256, 128, 128), hours=2)
    assert p.ok and p.spec.storage == search.default_storage(store.runs_dir.parent)
    assert p.spec.startup_trials == 2 and p.seconds_per_trial > 0 and p.max_seconds == 5 * p.seconds_per_trial


def test_the_budget_counts_trials_or_the_share_of_epochs_each_trained():
    row = search.SearchRow("s", "sqlite://", "local", ("admin",), 0.0, trials=3, deadline=None, status="running",
                           error=None)
    exact = lambda asked: dataclasses.replace(row, asked=asked, spent=float(asked))  # noqa: E731
    assert exact(2).budget_left() and not exact(3).budget_left()
    # refund: two trials pruned at half their epochs leave a whole trial's epochs, for a fourth trial
    refund = dataclasses.replace(row, refund=True, asked=3, spent=2.0)
    assert refund.budget_left() and refund.trials_summary() == "3 trials, 2 of a budget of 3 full trials spent"
    assert not dataclasses.replace(refund, asked=4, spent=2.5).budget_left()  # half a trial left: not enough
    assert not dataclasses.replace(refund, status="done").budget_left()
    assert not dataclasses.replace(refund, deadline=time.time() - 1).budget_left()
    assert not dataclasses.replace(refund, asked=search.MAX_TRIALS, trials=search.MAX_TRIALS + 1).budget_left()
    assert exact(1).trials_summary() == "1 of 3 trials"
    # a settled trial's share: the epochs it trained of its own; unknown counts whole (None)
    assert search.trial_share(1, 4) == 0.25 and search.trial_share(4, 4) == 1.0
    assert search.trial_share(None, 4) is search.trial_share(0, 4) is search.trial_share(5, 4) is None
    assert search.trial_share(True, 4) is None


def test_a_queue_from_before_the_budget_columns_is_read_and_grown(tmp_path):
    """A jobs database written before `refund` and `used` existed: its searches list as exact budgets, and the
    columns are added on first use."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    with closing(sqlite3.connect(artifacts / "jobs.sqlite")) as db, db:
        db.execute("CREATE TABLE searches (name TEXT PRIMARY KEY, storage TEXT NOT NULL, owner TEXT NOT NULL, "
                   "roles TEXT NOT NULL, created REAL NOT NULL, trials INTEGER NOT NULL, deadline REAL, "
                   "status TEXT NOT NULL, lease REAL, error TEXT)")
        db.execute("CREATE TABLE search_trials (search TEXT NOT NULL, trial INTEGER NOT NULL, job_id INTEGER, "
                   "settled INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (search, trial))")
        db.execute("INSERT INTO searches VALUES ('old', 'sqlite://', 'local', '[\"admin\"]', 1.0, 5, NULL, 'done', "
                   "NULL, NULL)")
        db.executemany("INSERT INTO search_trials VALUES ('old', ?, ?, 1)", [(0, 1), (1, 2)])
    (old,) = search.list_searches(artifacts)
    assert (old.refund, old.asked, old.spent, old.trials_summary()) == (False, 2, 2.0, "2 of 5 trials")
    with closing(sqlite3.connect(artifacts / "jobs.sqlite")) as db:
        assert "used" in {r[1] for r in db.execute("PRAGMA table_info(search_trials)")}
        assert "refund" in {r[1] for r in db.execute("PRAGMA table_info(searches)")}


def test_the_start_spreads_evenly_over_the_space():
    """A budget of 8 trials over 2 fields starts with 4 scrambled Sobol points: one in each quarter of every
    range (on its log scale for the learning rate), where 4 random draws clump. Seeded: the same seed, the same
    points."""
    lr, dropout = search.parse_space(["lr=1e-4:1e-2:log", "dropout=0:0.5"])
    assert search.default_startup(8, 2) == 4 and search.pruner_startup(4) == 2
    for seed in range(5):
        points = search.space_filling_points((lr, dropout), 4, seed)
        assert sorted(int((math.log10(p["lr"]) + 4) / 2 * 4) for p in points) == [0, 1, 2, 3]
        assert sorted(int(p["dropout"] / 0.5 * 4) for p in points) == [0, 1, 2, 3]
        assert points == search.space_filling_points((lr, dropout), 4, seed)
    assert search.space_filling_points((lr, dropout), 4, 0) != search.space_filling_points((lr, dropout), 4, 1)
    # whole numbers and lists: every value one the field allows, each list value as often
    batch, epochs = search.parse_space(["batch_size=16,32,64,128", "epochs=2:5"])
    points = search.space_filling_points((batch, epochs), 8, 0)
    assert sorted(p["batch_size"] for p in points) == [16, 16, 32, 32, 64, 64, 128, 128]
    assert all(isinstance(p["epochs"], int) and 2 <= p["epochs"] <= 5 for p in points)
    assert [lr.at(0.0), lr.at(1.0)] == pytest.approx([1e-4, 1e-2]) and epochs.at(0.999) == 5


def test_a_new_study_queues_its_spread_start(tmp_path, tiny_npz):
    """No training: the start's points are queued in the study when it is created, and the first is asked."""
    store = RunStore(tmp_path / "artifacts" / "runs")
    queue = JobQueue(store)
    p = search.plan_search(tiny_base(tiny_npz, epochs=3), ["lr=1e-4:1e-2:log", "dropout=0:0.5"], trials=8,
                           store=store, name="spread", first=["lr=0.001,dropout=0.2"])
    assert p.spec.startup_trials == 4
    start = search.start_points(p.spec)
    assert start[0] == {"lr": 0.001, "dropout": 0.2} and len(start) == 4  # the asked-for point, then 3 spread
    assert start[1:] == search.space_filling_points(p.spec.space, 3, 0)
    search.create_search(p.spec, queue, LOCAL_ADMIN)
    (job,) = queue.list()
    assert (job.config.lr, job.config.dropout) == (0.001, 0.2)
    study, _ = search.load_study("spread", p.spec.storage)
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert [t.system_attrs["fixed_params"] for t in waiting] == start[1:]


def test_an_unusable_storage_is_one_clear_message(tmp_path, tiny_npz):
    store = RunStore(tmp_path / "artifacts" / "runs")
    p = search.plan_search(tiny_base(tiny_npz), SPACE, trials=2, store=store, name="s",
                           storage=f"sqlite:///{tmp_path}/missing/folder/x.sqlite3")
    with pytest.raises(StoreError, match="Could not use the search storage sqlite:///"):
        search.create_search(p.spec, JobQueue(store), LOCAL_ADMIN)
    assert search.list_searches(store.runs_dir.parent) == []


# -- a real study through the real queue -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_npz) -> Path:
    """A budget of three trials of 2 epochs on 256 real images, one job at a time: a good and two planted bad
    points tried first, the median pruner (from the first completed trial, from epoch 1) must stop the bad ones
    after 1 epoch each; their unused epochs add up to a whole trial, so a fourth trial (TPE's draw) runs.
    Driven by a fresh JobQueue object at every tick, as after restarts of the app. Returns the artifacts
    folder."""
    artifacts = tmp_path_factory.mktemp("search") / "artifacts"
    store = RunStore(artifacts / "runs")
    p = search.plan_search(tiny_base(tiny_npz), SPACE, trials=3, store=store, name="tiny", startup_trials=1,
                           prune_after=0, first=[GOOD, BAD, BAD2])
    assert p.ok, p.errors
    row = search.create_search(p.spec, JobQueue(store), LOCAL_ADMIN)
    assert row.status == "running" and len(JobQueue(store).list()) == 1  # only one in flight: max_concurrent 1
    deadline = time.time() + 900
    while search.list_searches(artifacts)[0].status == "running":
        assert time.time() < deadline, "the study did not finish in 15 minutes"
        JobQueue(RunStore(artifacts / "runs")).tick()  # nothing of the driver survives between ticks
        time.sleep(0.5)
    return artifacts


@pytest.mark.slow
def test_a_study_runs_its_trials_as_jobs_and_prunes_the_planted_bad_ones(finished_study):
    queue = JobQueue(RunStore(finished_study / "runs"))
    view = search.show(queue, "tiny")
    assert view.search.status == "done" and view.search.error is None
    assert [t.number for t in view.trials] == [0, 1, 2, 3]
    good, bad, bad2, drawn = view.trials
    assert good.params == {"lr": 0.01, "dropout": 0.1} and good.state == "COMPLETE"
    for t, lr in ((bad, 1e-6), (bad2, 2e-6)):
        assert t.params["lr"] == lr and t.state == "PRUNED" and t.pruned_epoch == 1 and t.epochs == 1
    assert 1e-6 <= drawn.params["lr"] <= 1e-1 and 0 <= drawn.params["dropout"] <= 0.5  # TPE's draw, in range
    assert drawn.state in ("COMPLETE", "PRUNED")
    # the budget: 1 + 1/2 + 1/2 left a whole trial for the fourth; after it, less than one is left
    assert view.search.refund and view.search.asked == 4
    assert view.search.spent == (3.0 if drawn.state == "COMPLETE" else 2.5)
    jobs = {j.id: j for j in queue.list()}
    assert len(jobs) == 4 and all(j.status == "succeeded" and j.sweep == "search tiny" for j in jobs.values())
    assert jobs[bad.job_id].detail == "pruned at epoch 1" and jobs[good.job_id].detail == ""
    for t in view.trials:  # each trial told its run's kept-epoch validation accuracy, never test
        run = open_run(jobs[t.job_id].run_path)
        assert t.run_id == run.run_id and "search:tiny" in run.config.tags
        assert (run.config.lr, run.config.dropout) == pytest.approx((t.params["lr"], t.params["dropout"]))
        if t.state == "COMPLETE":
            assert t.value == run.metrics["val"]["accuracy"] != run.metrics["test"]["accuracy"]
    pruned_run = open_run(jobs[bad.job_id].run_path)  # published with its one epoch, like an early stop
    assert pruned_run.metrics["epochs_run"] == 1 and "pruned" in (pruned_run.path / "train.log").read_text()
    assert view.best.number == good.number or (drawn.state == "COMPLETE" and view.best.value >= good.value)
    assert not view.importances and "too few completed trials" in view.importance_note
    report = search.format_view(view)
    assert "pruned" in report and f"best: trial {view.best.number}" in report
    search.drive(queue)  # a finished search is left alone: nothing more is queued
    assert len(queue.list()) == 4


def test_cancel_stops_the_queued_trials_and_fails_them(tmp_path, tiny_npz):
    """No training: the trial is only queued (no tick starts it) when the search is cancelled."""
    store = RunStore(tmp_path / "artifacts" / "runs")
    queue = JobQueue(store)
    p = search.plan_search(tiny_base(tiny_npz), SPACE, trials=4, store=store, name="stopped")
    search.create_search(p.spec, queue, LOCAL_ADMIN)
    (job,) = queue.list()
    assert job.status == "queued" and job.sweep == "search stopped"
    search.drive(queue)  # one in flight already: nothing more
    assert len(queue.list()) == 1
    search.cancel_search(queue, "stopped", LOCAL_ADMIN)
    assert queue.get(job.id).status == "cancelled"
    view = search.show(queue, "stopped")
    assert view.search.status == "cancelled" and [t.state for t in view.trials] == ["FAIL"]
    assert "cancelled" in view.trials[0].error
    search.drive(queue)
    assert len(queue.list()) == 1, "a cancelled search asks for no more trials"
    with pytest.raises(ConfigError, match="exists already"):
        search.create_search(p.spec, queue, LOCAL_ADMIN)


def test_no_trial_starts_after_the_hours(tmp_path, tiny_npz):
    store = RunStore(tmp_path / "artifacts" / "runs")
    queue = JobQueue(store)
    p = search.plan_search(tiny_base(tiny_npz), SPACE, trials=4, store=store, name="late", hours=1e-7)
    row = search.create_search(p.spec, queue, LOCAL_ADMIN)  # its deadline passed before the first ask
    assert row.status == "done" and queue.list() == [] and search.show(queue, "late").trials == []


# -- the command line -----------------------------------------------------------------------------------------------
def test_cli_parses_a_search_and_reports_errors(tmp_path, tiny_npz, capsys):
    args = cli.build_parser().parse_args(
        ["search", "--space", "lr=1e-4:1e-2:log", "--space", "dropout=0:0.5", "--trials", "8", "--hours", "1.5",
         "--pruner", "halving", "--study", "s1", "--storage", "sqlite:///x.db", "--arch", "compactresnet",
         "--epochs", "3", "--prune-after", "2", "--try", "lr=0.001,dropout=0.3", "--wait", "--exact-trials"])
    assert args.space == ["lr=1e-4:1e-2:log", "dropout=0:0.5"] and args.trials == 8 and args.hours == 1.5
    assert (args.pruner, args.study, args.storage, args.prune_after, args.wait) == ("halving", "s1",
                                                                                    "sqlite:///x.db", 2, True)
    assert args.try_ == ["lr=0.001,dropout=0.3"] and cli.config_from_args(args).epochs == 3 and args.exact_trials
    runs = str(tmp_path / "artifacts" / "runs")
    assert cli.main(["search", "--space", "dropout=0:1", "--runs-dir", runs]) == cli.EXIT_USAGE
    assert "dropout: 1 is not allowed" in capsys.readouterr().err
    assert cli.main(["search", "--runs-dir", runs]) == cli.EXIT_USAGE
    assert cli.main(["search", "--show", "nope", "--runs-dir", runs]) == cli.EXIT_USAGE
    assert "no search 'nope'" in capsys.readouterr().err
    assert cli.main(["search", "--list", "--runs-dir", runs]) == 0
    assert "no searches yet" in capsys.readouterr().out
    assert cli.main(["search", "--space", "lr=1e-3:1e-2:log", "--trials", "2", "--study", "queued", "--no-start",
                     "--data", str(tiny_npz), "--arch", "compactresnet", "--runs-dir", runs]) == 0
    assert ("search queued: a budget of 2 full trials (trials that stop early give their unused epochs to further "
            "trials) over Learning rate") in capsys.readouterr().out
    assert [j.status for j in JobQueue(RunStore(runs)).list()] == ["queued"]
    assert cli.main(["search", "--cancel", "queued", "--runs-dir", runs]) == 0
    assert cli.main(["search", "--show", "queued", "--runs-dir", runs]) == 0
    assert "search queued: cancelled, 1 trial, 1 of a budget of 2 full trials spent" in capsys.readouterr().out
    assert cli.main(["search", "--space", "lr=1e-3:1e-2:log", "--trials", "2", "--study", "exact", "--no-start",
                     "--exact-trials", "--data", str(tiny_npz), "--arch", "compactresnet", "--runs-dir", runs]) == 0
    assert "search exact: up to 2 trials over Learning rate" in capsys.readouterr().out
    assert cli.main(["search", "--list", "--runs-dir", runs]) == 0
    listed = capsys.readouterr().out  # each search's trials in the words --show and Results use
    assert "exact\trunning\t1 of 2 trials\t" in listed
    assert "queued\tcancelled\t1 trial, 1 of a budget of 2 full trials spent\t" in listed


# -- the pages ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_results_page_shows_the_study(monkeypatch, finished_study):
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(finished_study))
    at = ok(AppTest.from_file(APP, default_timeout=120).run())
    ok(at.switch_page("pages/results.py").run())  # through the app: the best run's link needs its navigation
    shown = texts(at)
    assert "Searches" in shown and "tiny: 4 trials, " in shown and "of a budget of 3 full trials spent" in shown
    assert "Pruned: 2" in shown or "Pruned: 3" in shown
    assert "Too few completed trials for importances" in shown
    trials = next(d.value for d in at.dataframe if "pruned_at_epoch" in d.value.columns)
    assert list(trials["trial"]) == [0, 1, 2, 3] and trials.loc[1, "pruned_at_epoch"] == 1
    assert "Best so far: trial" in shown


def test_train_page_search_mode_checks_previews_and_launches(monkeypatch, tmp_path, tiny_npz):
    artifacts, no_data = tmp_path / "artifacts", tmp_path / "no-data"
    no_data.mkdir()
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("CELLSCOPE_DATA_DIR", str(no_data))
    at = ok(AppTest.from_file(APP, default_timeout=120).run())
    ok(at.switch_page("pages/train.py").run())
    ok(at.radio(key="data_source").set_value("custom").run())
    ok(at.text_input(key="data_path").input(str(tiny_npz)).run())
    ok(at.selectbox(key="f_arch").set_value("compactresnet").run())
    ok(at.multiselect(key="srch_fields").select("lr").select("dropout").run())
    ok(at.text_input(key="srch_lr").input("1e-4:2").run())
    assert any("2 is not allowed: must be in (0, 1]" in e.value.replace("\\", "") for e in at.error)
    assert at.button(key="launch_search").disabled
    at.text_input(key="srch_lr").input("1e-4:1e-2:log")
    at.text_input(key="srch_dropout").input("0:0.5")
    at.number_input(key="srch_trials").set_value(3)
    ok(at.text_input(key="srch_name").input("from-page").run())
    preview = next(d.value for d in at.dataframe if "searched over" in d.value.columns)
    assert list(preview["searched over"]) == ["0.0001 to 0.01 (log scale)", "0 to 0.5"]
    assert "A budget of 3 full trials of about" in texts(at) and at.checkbox(key="srch_refund").value
    ok(at.checkbox(key="srch_refund").uncheck().run())
    assert "Up to 3 trials of about" in texts(at)
    ok(at.button(key="launch_search").click().run())
    queue = JobQueue(RunStore(artifacts / "runs"))
    try:
        assert [(r.name, r.trials, r.status, r.refund) for r in search.list_searches(artifacts)] == [
            ("from-page", 3, "running", False)]
        (job,) = queue.list()
        assert job.sweep == "search from-page" and job.config.arch == "compactresnet"
        assert 1e-4 <= job.config.lr <= 1e-2 and "Started search" in texts(at)
        # the launch opened the Jobs tab; back on the form, the search's inputs are as they were
        at.session_state["tab"] = "New training"
        at.query_params.pop("tab", None)
        ok(at.run())
        assert at.multiselect(key="srch_fields").value == ["lr", "dropout"]
        assert (at.text_input(key="srch_lr").value, at.text_input(key="srch_dropout").value) == ("1e-4:1e-2:log",
                                                                                               "0:0.5")
        assert (at.number_input(key="srch_trials").value, at.text_input(key="srch_name").value) == (3, "from-page")
        assert at.checkbox(key="srch_refund").value is False
    finally:
        search.cancel_search(queue, "from-page", LOCAL_ADMIN)  # stops the trial's process the launch started
