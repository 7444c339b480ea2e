"""The run store: build in .incomplete/, publish with one rename, index in SQLite, rebuild from disk."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest

from core.access.roles import LOCAL_ADMIN
from core.config import RunConfig
from core.errors import StoreError, UserFacingError
from core.store import checkpoints
from core.store import runs as R

FILES = {"config.json", "history.csv", "metrics.json", "model.keras", "train.log"}


def config(**kw) -> RunConfig:
    base = dict(arch="resnet18", weights="none", size=28, epochs=2, seed=3, tags=("t1", "t2"))
    base.update(kw)
    return RunConfig(**base)


def metrics(val_acc: float, test_acc: float) -> dict:
    split = lambda acc: {"accuracy": acc, "auc": 0.9, "macro_f1": 0.5}  # noqa: E731
    return {"val": split(val_acc), "test": split(test_acc), "best_epoch": 2, "epochs_run": 2,
            "train_seconds": 12.5, "train_images_per_second": 100.0}


def save_bytes(path):
    path.write_bytes(b"model-bytes")


def publish(store: R.RunStore, val_acc=0.5, test_acc=0.5, **kw) -> R.Run:
    w = store.writer(config(**kw))
    w.log("hello")
    w.write_history([{"epoch": 1, "val_accuracy": 0.4}, {"epoch": 2, "val_accuracy": val_acc}])
    return w.publish(metrics(val_acc, test_acc), save_bytes)


@pytest.fixture
def store(runs_dir) -> R.RunStore:
    return R.RunStore(runs_dir)


def test_store_layout(store, runs_dir):
    assert runs_dir.is_dir()
    assert store.index_path == runs_dir.parent / "index.sqlite"
    assert store.index_path.is_file()
    assert store.list_runs() == [] and store.count() == 0 and store.best_run() is None


def test_default_runs_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv(R.ARTIFACTS_ENV, str(tmp_path / "art"))
    assert R.default_runs_dir() == tmp_path / "art" / "runs"
    assert R.RunStore().runs_dir == tmp_path / "art" / "runs"
    monkeypatch.delenv(R.ARTIFACTS_ENV)
    assert R.default_runs_dir() == R.PROJECT_ROOT / "artifacts" / "runs"


def test_new_run_id_format():
    ids = {R.new_run_id() for _ in range(20)}
    assert all(R.RUN_ID_PATTERN.match(i) for i in ids)
    assert len(ids) == 20


def test_writer_builds_in_incomplete_then_publishes(store, runs_dir):
    c = config()
    w = store.writer(c)
    assert w.work_dir == runs_dir / R.INCOMPLETE / w.run_id
    assert json.loads((w.work_dir / "config.json").read_text()) == c.to_dict()
    w.log("epoch 1 done")
    w.write_history([{"epoch": 1, "loss": 1.5, "val_accuracy": 0.25}])
    checkpoints.save(w.work_dir, 1, save_bytes, [np.zeros(3)], {"epochs_done": 1})  # training leaves one behind
    assert not (runs_dir / w.run_id).exists()
    # unpublished: neither listed nor a complete run
    assert list(store.complete_runs()) == []
    assert store.list_runs() == [] and store.count() == 0

    run = w.publish(metrics(0.6, 0.55), save_bytes)
    assert run.path == runs_dir / w.run_id
    assert not w.work_dir.exists()
    assert {p.name for p in run.path.iterdir()} == FILES  # checkpoints and temp files gone
    assert run.config == c
    assert run.metrics["val"]["accuracy"] == 0.6
    assert run.model_path.read_bytes() == b"model-bytes"
    assert run.history() == [{"epoch": 1.0, "loss": 1.5, "val_accuracy": 0.25}]
    log = (run.path / "train.log").read_text()
    assert "epoch 1 done" in log and log.rstrip().endswith("run complete")
    assert [r.run_id for r in store.complete_runs()] == [w.run_id]
    assert R.open_run(run.path).run_id == w.run_id


def test_writer_explicit_run_id(store):
    w = R.RunWriter(store, config(), run_id="20240101-120000-abcdef")
    assert w.work_dir.name == "20240101-120000-abcdef"
    w.close()
    w.close()  # idempotent


BAD_IDS = ["../escape", "20240101-120000-ABCDEF", "x", "20240101-120000-abcdef/..", "20240101-120000-abcdefg",
           "/tmp/20240101-120000-abcdef", "20240101-120000-abcdef\n", "\u0662" * 8 + "-120000-abcdef"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_run_ids_refused_by_writer(store, runs_dir, bad):
    with pytest.raises(R.RunStoreError, match="invalid run id"):
        R.RunWriter(store, config(), run_id=bad)
    assert not (runs_dir / R.INCOMPLETE).exists()  # nothing created


@pytest.mark.parametrize("bad", BAD_IDS + [""])
def test_invalid_run_ids_refused_by_delete(store, bad):
    run = publish(store)
    with pytest.raises(R.RunStoreError, match="invalid run id"):
        store.delete(bad, LOCAL_ADMIN)
    assert run.path.is_dir() and store.count() == 1


def test_delete_refuses_path_tricks(store, runs_dir, tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    with pytest.raises(R.RunStoreError):
        store.delete("../../precious", LOCAL_ADMIN)
    assert victim.is_dir()


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.json"
    R.write_atomic(target, "first")
    assert target.read_text() == "first"
    R.write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_write_atomic_failure_keeps_old_content(tmp_path):
    target = tmp_path / "f.txt"
    R.write_atomic(target, "old")
    with pytest.raises(TypeError):
        R.write_atomic(target, 12345)  # type: ignore[arg-type]  # not str/bytes: the write fails
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_write_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        R.write_json(tmp_path / "m.json", {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []
    R.write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2], "b": 1}


def test_history_csv_round_trip(tmp_path):
    assert R.history_csv([]) == ""
    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    (tmp_path / "history.csv").write_text(R.history_csv(rows))
    assert R.read_history(tmp_path) == [{"epoch": 1.0, "loss": 0.5}, {"epoch": 2.0, "loss": 0.25}]
    assert R.read_history(tmp_path / "nowhere") == []


def test_index_lists_runs(store):
    a = publish(store, 0.5, 0.5, seed=1)
    b = publish(store, 0.7, 0.6, seed=2, optimizer="sgd", lr=0.01)
    rows = store.list_runs()
    assert {r["run_id"] for r in rows} == {a.run_id, b.run_id}
    assert store.count() == 2
    row = next(r for r in rows if r["run_id"] == b.run_id)
    assert row["path"] == str(b.path)
    assert row["arch"] == "resnet18" and row["size"] == 28 and row["weights"] == "none"
    assert row["optimizer"] == "sgd" and row["lr"] == 0.01 and row["seed"] == 2
    assert row["tags"] == "t1,t2"
    assert row["val_accuracy"] == 0.7 and row["test_accuracy"] == 0.6 and row["test_macro_f1"] == 0.5
    assert row["best_epoch"] == 2 and row["epochs_run"] == 2
    assert row["train_seconds"] == 12.5 and row["images_per_second"] == 100.0
    assert RunConfig.from_dict(json.loads(row["config_json"])) == b.config


def test_list_order_and_bad_order(store):
    publish(store, 0.3, 0.9)
    publish(store, 0.8, 0.1)
    publish(store, 0.5, 0.5)
    assert [r["val_accuracy"] for r in store.list_runs("val_accuracy DESC")] == [0.8, 0.5, 0.3]
    assert [r["test_accuracy"] for r in store.list_runs("test_accuracy DESC")] == [0.9, 0.5, 0.1]
    with pytest.raises(R.RunStoreError, match="order_by"):
        store.list_runs("val_accuracy; DROP TABLE runs")


def test_best_run_is_chosen_on_validation_not_test(store):
    publish(store, val_acc=0.60, test_acc=0.99)
    best = publish(store, val_acc=0.80, test_acc=0.70)
    publish(store, val_acc=0.75, test_acc=0.95)
    chosen = store.best_run()
    assert chosen is not None and chosen["run_id"] == best.run_id


def test_reindex_rebuilds_after_index_deleted(store, runs_dir):
    a = publish(store, 0.5, 0.5)
    b = publish(store, 0.6, 0.6)
    unfinished = store.writer(config())  # stays in .incomplete/
    unfinished.close()
    os.remove(store.index_path)
    for extra in ("-wal", "-shm"):
        store.index_path.with_name(store.index_path.name + extra).unlink(missing_ok=True)
    fresh = R.RunStore(runs_dir)
    assert fresh.list_runs() == []
    assert fresh.reindex() == 2
    assert {r["run_id"] for r in fresh.list_runs()} == {a.run_id, b.run_id}
    assert fresh.best_run()["run_id"] == b.run_id


def test_reindex_skips_damaged_runs(store):
    good = publish(store, 0.5, 0.5)
    damaged = publish(store, 0.9, 0.9)
    (damaged.path / "metrics.json").write_text(json.dumps({"val": {}}))  # no accuracy: unusable
    assert store.reindex() == 1
    assert [r["run_id"] for r in store.list_runs()] == [good.run_id]


def test_list_hides_rows_whose_directory_vanished(store):
    a = publish(store, 0.5, 0.5)
    b = publish(store, 0.6, 0.6)
    import shutil

    shutil.rmtree(b.path)
    assert [r["run_id"] for r in store.list_runs()] == [a.run_id]


def test_delete_removes_dir_and_row(store):
    a = publish(store, 0.5, 0.5)
    b = publish(store, 0.6, 0.6)
    store.delete(b.run_id, LOCAL_ADMIN)
    assert not b.path.exists()
    assert store.count() == 1
    with sqlite3.connect(store.index_path) as db:
        assert db.execute("SELECT COUNT(*) FROM runs WHERE run_id = ?", (b.run_id,)).fetchone()[0] == 0
    assert [r.run_id for r in store.complete_runs()] == [a.run_id]
    store.delete(b.run_id, LOCAL_ADMIN)  # deleting again is harmless
    assert a.path.is_dir()


def test_complete_runs_ignores_strays(store, runs_dir):
    a = publish(store, 0.5, 0.5)
    (runs_dir / "notes").mkdir()
    (runs_dir / "readme.txt").write_text("x")
    (runs_dir / "20240101-120000-abcdef").mkdir()  # looks like a run, has no metrics
    assert [r.run_id for r in store.complete_runs()] == [a.run_id]


def test_open_run_on_incomplete_dir_names_missing_files(store):
    w = store.writer(config())
    w.close()
    with pytest.raises(R.RunStoreError) as info:
        R.open_run(w.work_dir)
    msg = str(info.value)
    assert "not a complete run" in msg
    assert "metrics.json" in msg and "model.keras" in msg
    assert "config.json" not in msg  # that one exists
    assert isinstance(info.value, UserFacingError)


def test_open_run_missing_dir(tmp_path):
    with pytest.raises(R.RunStoreError, match="No run directory"):
        R.open_run(tmp_path / "nope")


def test_failed_save_model_does_not_publish(store, runs_dir):
    w = store.writer(config())

    def failing_save(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        w.publish(metrics(0.5, 0.5), failing_save)
    assert list(store.complete_runs()) == []
    assert store.list_runs() == []
    assert w.work_dir.is_dir()  # still in .incomplete/, resumable
    assert not (w.work_dir / "model.keras").exists()
    w.close()


def test_a_damaged_index_is_one_store_error_naming_the_file_and_the_repair(store, runs_dir):
    store.index_path.write_bytes(b"this is not a database" * 100)
    for use in (lambda: R.RunStore(runs_dir), store.list_runs, store.count):
        with pytest.raises(StoreError) as info:
            use()
        message = str(info.value)
        assert str(store.index_path) in message and "python -m core runs --reindex" in message
        assert isinstance(info.value, UserFacingError)
        assert isinstance(info.value.__cause__, sqlite3.Error)


def test_the_advised_repair_works_on_an_index_sqlite_cannot_read(store, runs_dir):
    kept = publish(store, 0.8, 0.7)
    store.index_path.write_bytes(b"this is not a database" * 100)
    rebuilt, aside = R.RunStore.rebuilt(runs_dir)
    assert aside is not None and aside.read_bytes().startswith(b"this is not a database")
    assert aside.parent == store.index_path.parent and aside.name.startswith("index.sqlite.damaged-")
    assert [r["run_id"] for r in rebuilt.list_runs()] == [kept.run_id]  # the run folders are the data
    again, aside = R.RunStore.rebuilt(runs_dir)  # a readable index is rebuilt in place
    assert aside is None and again.count() == 1


def test_rebuilding_does_not_hide_other_store_errors(tmp_path):
    blocker = tmp_path / "artifacts"
    blocker.write_text("a file where the artifacts folder should be")
    with pytest.raises(StoreError):
        R.RunStore.rebuilt(blocker / "runs")
    assert blocker.read_text().startswith("a file")


def test_index_columns_are_the_indexed_settings(store):
    publish(store)
    row = store.list_runs()[0]
    for s in R.INDEXED_SETTINGS:
        assert s.name in row, s.name
    assert row["attention"] == 0 and row["tags"] == "t1,t2" and row["arch"] == "resnet18"
    assert set(row) == R.runs_columns()
