"""core.progress (phases, fractions, time left, measured phase times) and core.tasks (background tasks)."""

from __future__ import annotations

import json
import threading

import pytest

from core import tasks
from core.errors import UserFacingError
from core.progress import PhaseTimes, Progress, Tracker, format_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_phases_walk_in_order_with_fraction_and_time_left() -> None:
    clock, seen = Clock(), []
    t = Tracker([("loading", 10), ("training", 80), ("testing", 10)], seen.append, clock=clock)
    p = t.start("loading")
    assert (p.phase, p.fraction, p.eta_seconds) == ("loading", 0.0, 100.0)
    clock.now = 10
    p = t.start("training")
    assert p.phase == "training" and p.fraction == pytest.approx(0.1) and p.eta_seconds == pytest.approx(90)
    clock.now = 30
    p = t.advance(0.5, "epoch 1/2")  # half the training in 20 s: its own pace says 20 s more
    assert p.eta_seconds == pytest.approx(20 + 10) and p.fraction == pytest.approx(30 / 60)
    assert "Training · epoch 1/2 · about 30 s left" == p.text()
    clock.now = 50
    p = t.start("testing")
    assert p.phase == "testing" and p.eta_seconds == pytest.approx(10)
    clock.now = 75  # the test pass overran its 10 s without saying how far it is: never "0 s left"
    p = t.advance(0.0)
    assert p.eta_seconds > 0 and p.fraction < 1
    done = t.finish()
    assert done == Progress("done", 1.0, 0.0) and seen[-1] == done
    assert t.seconds_in == {"loading": 10, "training": 40, "testing": 25}


def test_a_measured_later_phase_revises_the_estimate() -> None:
    clock = Clock()
    t = Tracker([("validating", 5), ("testing", 5)], clock=clock)
    t.start("validating")
    t.expect("testing", 50)  # e.g. the test split is ten times the validation split
    assert t.advance(0.0).eta_seconds == pytest.approx(55)


def test_unmeasured_phases_follow_the_measured_pace_of_the_phase_they_derive_from() -> None:
    """A first job planned from default speeds: its first epoch trains 2.5x faster than planned, so its later
    epoch, its validations and its test pass (planned from the same guessed speed) are expected to as well,
    until a validation is measured (`expect`), which then stands as measured."""
    clock = Clock()
    plan = [("training", 10), ("validating", 5), ("training", 10), ("validating", 5), ("testing", 5)]
    follows = {"validating": "training", "testing": "validating"}
    t = Tracker(plan, clock=clock, follows=follows)
    t.start("training")
    clock.now = 2
    p = t.advance(0.5)  # on course for 4 s instead of 10: pace 0.4
    assert p.eta_seconds == pytest.approx(2 + 0.4 * (5 + 10 + 5 + 5))
    alone = Tracker(plan, clock=clock)  # without `follows` only the later epoch takes the pace
    alone.start("training")
    clock.now = 4
    p = alone.advance(0.5)
    assert p.eta_seconds == pytest.approx(2 + 5 + 0.4 * 10 + 5 + 5)
    t.start("validating")  # training took 4 s of 10 planned
    t.expect("validating", 3)  # measured: the next validation takes 3 s, whatever training's pace
    clock.now = 5
    t.start("training")
    assert t.advance(0.0).eta_seconds == pytest.approx(4 + 3 + 0.4 * 5)


def test_a_phase_warm_up_does_not_inflate_its_pace() -> None:
    """The first batches of a training job are slow (TensorFlow traces the graph): the time left follows the
    pace measured after the first few percent, and so does what the next epochs are expected to take."""
    clock = Clock()
    t = Tracker([("training", 100), ("training", 100)], clock=clock)
    t.start("training")
    clock.now = 10
    t.advance(0.03)  # 10 s of warm-up for 3%: on its own it says 333 s per epoch
    assert t.steady_seconds() is None
    clock.now = 12
    p = t.advance(0.05)  # then 2% in 2 s: 100 s per epoch
    assert t.steady_seconds() == pytest.approx(100)
    assert p.eta_seconds == pytest.approx(0.95 * 100 + 100)


def test_format_seconds() -> None:
    assert format_seconds(2) == "a few seconds"
    assert Progress("testing", 0.99, 2.0).text() == "Testing · a few seconds left"  # no 'about' before them
    assert format_seconds(42) == "40 s"
    assert format_seconds(185) == "3 min"
    assert format_seconds(3 * 3600) == "3.0 h"
    assert format_seconds(float("nan")) == "unknown"


def test_phase_times_median_of_the_last_measurements(tmp_path) -> None:
    times = PhaseTimes.in_artifacts(tmp_path)
    assert times.expected("train/resnet18/28", "testing", 7.0) == 7.0  # nothing measured yet
    for seconds in (10, 30, 20, 1000):
        times.record("train/resnet18/28", {"testing": seconds, "bad": float("nan")})
    assert times.expected("train/resnet18/28", "testing") == 30  # median of 10, 20, 30, 1000 (upper)
    assert times.expected("train/resnet18/28", "bad", 1.0) == 1.0
    (tmp_path / "phase_times.json").write_text("{damaged")
    assert times.expected("train/resnet18/28", "testing", 3.0) == 3.0  # a damaged file is no measurements
    times.record("k", {"p": 1})
    assert json.loads((tmp_path / "phase_times.json").read_text()) == {"k": {"p": [1.0]}}


def test_a_task_runs_once_per_key_and_reports_its_phases() -> None:
    gate, calls = threading.Event(), []

    def work(tracker: Tracker) -> int:
        calls.append(1)
        tracker.start("loading")
        gate.wait(5)
        tracker.start("predicting")
        return 42

    measured: list[dict] = []
    first = tasks.start("test-once", "Predicting", [("loading", 1), ("predicting", 1)], work, measured.append)
    second = tasks.start("test-once", "Predicting", [("loading", 1), ("predicting", 1)], work)
    assert first is second and first.running
    gate.set()
    assert tasks.run_now("test-once", "Predicting", [("loading", 1)], work, timeout=5) == 42
    assert calls == [1] and first.done and first.progress.phase == "done"
    assert set(measured[0]) == {"loading", "predicting"}
    tasks.forget("test-once")
    assert tasks.get("test-once") is None


def test_a_failed_task_keeps_its_message_and_starts_again() -> None:
    def fail(tracker: Tracker) -> None:
        raise UserFacingError("the run's data file is not on this machine")

    with pytest.raises(UserFacingError, match="not on this machine"):
        tasks.run_now("test-fail", "Measuring", [("measuring", 1)], fail, timeout=5)
    assert tasks.get("test-fail").failed
    assert tasks.run_now("test-fail", "Measuring", [("measuring", 1)], lambda t: "ok", timeout=5) == "ok"
    tasks.forget("test-fail")


def test_a_failed_task_is_kept_for_a_page_that_asks_not_to_retry() -> None:
    attempts: list[int] = []

    def fail(tracker: Tracker) -> None:
        attempts.append(1)
        raise UserFacingError("the run's data file is not on this machine")

    task = tasks.wait(tasks.start("test-keep", "Measuring", [("measuring", 1)], fail, retry=False), timeout=5)
    assert task.failed and task not in tasks.running()
    for _ in range(3):  # a page redrawn every second: the message, not a new attempt each time
        assert tasks.start("test-keep", "Measuring", [("measuring", 1)], fail, retry=False) is task
    assert attempts == [1]
    again = tasks.wait(tasks.start("test-keep", "Measuring", [("measuring", 1)], fail), timeout=5)  # "Try again"
    assert again is not task and attempts == [1, 1]
    tasks.forget("test-keep")


def test_a_silent_phase_still_moves_and_counts_down() -> None:
    clock = Clock()
    t = Tracker([("loading", 20), ("measuring", 20)], clock=clock)
    t.start("loading")  # loading a model reports nothing until it is done
    clock.now = 10
    p = t.now()
    assert p.fraction == pytest.approx(0.25) and p.eta_seconds == pytest.approx(30)
    assert t.progress.fraction == 0.0  # now() reports nothing: the last report is unchanged
    clock.now = 30  # overran its 20 s: still time left, never "0 s"
    assert t.now().eta_seconds > 20 and t.now().fraction < 0.75


def test_a_running_task_tells_its_progress_now() -> None:
    gate = threading.Event()
    task = tasks.start("test-now", "Loading", [("loading", 1000)], lambda t: (t.start("loading"), gate.wait(5)))
    try:
        first = task.current()
        threading.Event().wait(0.05)
        assert task.current().eta_seconds < first.eta_seconds <= 1000  # counting down with nothing reported
        assert task.progress.eta_seconds == pytest.approx(1000, abs=1)
    finally:
        gate.set()
    tasks.wait(task, 5)
    assert task.current() == task.progress and task.progress.phase == "done"
    tasks.forget("test-now")
