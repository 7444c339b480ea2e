"""One progress model for every long wait: a training job, and each first-use computation a page needs.

A task is a sequence of named phases (loading, training, validating, testing, publishing; a first-use
computation: loading, predicting, measuring). Each phase has an expected duration, taken from phase times
measured earlier on this machine (`PhaseTimes`, one small JSON file in the artifacts folder) or from a rough
default. A `Tracker` walks the phases and reports a `Progress`: the phase now running, the fraction of the
whole task and the seconds left. While a phase runs, its own pace replaces the expectation as soon as it can
be measured (after a few percent), and a phase that overruns its expectation is never shown as "0 s left":
its remaining time is re-estimated from how long it has taken so far. A planned phase that nobody has measured
yet follows the pace of the phase it is derived from (`follows`): when a job's first epoch trains twice as fast
as its plan guessed, its validations, test pass and later epochs are expected to as well, until they are
measured themselves.

Nothing here imports TensorFlow or Streamlit; the Train page, the job processes and the background tasks of
core.tasks all use it.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from core.store.io import write_atomic

PHASE_TITLES = {
    "queued": "Queued",
    "loading": "Loading",
    "training": "Training",
    "validating": "Validating",
    "testing": "Testing",
    "publishing": "Saving the run",
    "precomputing": "Preparing the run's pages",
    "predicting": "Predicting",
    "measuring": "Measuring",
    "done": "Done",
}
MEASURED_AFTER = 0.03  # a phase's own pace replaces its expectation once this much of it is done
STEADY_AFTER = 0.02  # ... and its steady pace from there on (past its warm-up), once this much more is done
TIMES_FILE = "phase_times.json"
TIMES_KEPT = 8  # measurements kept per phase and key; the median is the expectation
A_FEW_SECONDS = "a few seconds"  # under 5 s, where a number would claim more precision than an estimate has


def phase_title(phase: str) -> str:
    return PHASE_TITLES.get(phase, phase.replace("_", " ").capitalize())


@dataclass(frozen=True)
class Progress:
    """Where a task stands: its phase, what is done of the whole (0..1), seconds left (None: unknown) and a
    detail line for the phase ("epoch 2/5 · batch 4/16 · 820 images/s")."""

    phase: str
    fraction: float
    eta_seconds: float | None = None
    detail: str = ""

    def text(self) -> str:
        parts = [phase_title(self.phase)]
        if self.detail:
            parts.append(self.detail)
        if self.eta_seconds is not None and self.phase != "done":
            left = format_seconds(self.eta_seconds)
            parts.append(f"{left} left" if left == A_FEW_SECONDS else f"about {left} left")
        return " · ".join(parts)


def format_seconds(seconds: float) -> str:
    """'40 s', '3 min', '1.5 h': how long, at the precision an estimate deserves."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{max(5, round(seconds / 5) * 5):.0f} s" if seconds >= 5 else A_FEW_SECONDS
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


class Tracker:
    """Walks a task's phases in order and reports a Progress to `report` after each change.

    `plan`: (phase, expected seconds) in order; a phase may appear more than once (a training job: training,
    validating, training, validating, ..., testing). `start(phase)` enters the phase's next entry in the plan
    (the ones before it count as done), `advance(done_fraction, detail)` moves within it, `expect(phase,
    seconds)` revises the expectation of the phase's entries not yet finished from a measurement (e.g. the test
    pass from the validation pass),
    `finish()` ends the task. `seconds_in` says how long each finished phase took (for PhaseTimes).

    Pace: an entry still at its planned expectation (not revised by `expect`) is scaled by its phase's pace, the
    ratio of measured to planned time of that phase's entries so far (the running one once MEASURED_AFTER of it
    is done), or else by the pace of the phase it `follows` ({"validating": "training"}: a phase whose plan
    was derived from another's speed)."""

    def __init__(self, plan: Sequence[tuple[str, float]], report: Callable[[Progress], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, follows: Mapping[str, str] | None = None):
        if not plan:
            raise ValueError("a task has at least one phase")
        self._order = [p for p, _ in plan]
        self._expected = [max(0.0, float(s)) for _, s in plan]
        self._revised = [False] * len(self._order)  # expectation replaced by a measurement (`expect`)
        self._pace: dict[str, float] = {}  # phase -> measured / planned seconds
        self._follows = dict(follows or {})
        self._report = report
        self._clock = clock
        self._index = -1
        self._phase_start = clock()
        self._done = 0.0
        self._anchor: tuple[float, float] | None = None  # (time, done) when its pace was first measurable
        self._detail = ""
        self.seconds_in: dict[str, float] = {}
        self.progress = Progress(self._order[0], 0.0, sum(self._expected))

    @property
    def phase(self) -> str:
        return self._order[max(self._index, 0)]

    def expect(self, phase: str, seconds: float) -> None:
        for i, p in enumerate(self._order):
            if p == phase and i >= self._index:
                self._expected[i] = max(0.0, float(seconds))
                self._revised[i] = True

    def start(self, phase: str, detail: str = "") -> Progress:
        here = min(max(self._index, 0), len(self._order) - 1)
        after = here + 1 if self._index >= 0 and self._order[here] == phase else here
        entries = [i for i, p in enumerate(self._order) if p == phase]
        if not entries:
            raise ValueError(f"{phase!r} is not in the plan")
        # its next entry; a phase met more often than planned stays on its last one
        index = next((i for i in entries if i >= after), entries[-1])
        now = self._clock()
        if 0 <= self._index < len(self._order) and self._index != index:
            current = self._order[self._index]
            self.seconds_in[current] = self.seconds_in.get(current, 0.0) + now - self._phase_start
            self._learn_pace(self._index, now - self._phase_start)
        self._index, self._phase_start, self._done, self._detail = index, now, 0.0, detail
        self._anchor = None
        return self._emit()

    def advance(self, done_fraction: float, detail: str | None = None) -> Progress:
        self._done = min(max(float(done_fraction), 0.0), 1.0)
        if self._anchor is None and self._done >= MEASURED_AFTER:
            self._anchor = (self._clock(), self._done)
        if detail is not None:
            self._detail = detail
        return self._emit()

    def finish(self) -> Progress:
        if 0 <= self._index < len(self._order):
            current = self._order[self._index]
            self.seconds_in[current] = self.seconds_in.get(current, 0.0) + self._clock() - self._phase_start
        self._index = len(self._order)
        self.progress = Progress("done", 1.0, 0.0)
        if self._report:
            self._report(self.progress)
        return self.progress

    def _learn_pace(self, index: int, seconds: float) -> None:
        """An entry still at its planned expectation took (or is on course to take) `seconds`."""
        planned = self._expected[index]
        if not self._revised[index] and planned > 0 and seconds > 0:
            self._pace[self._order[index]] = seconds / planned

    def _pace_of(self, phase: str) -> float:
        seen = set()
        while phase not in self._pace and phase in self._follows and phase not in seen:
            seen.add(phase)
            phase = self._follows[phase]
        return self._pace.get(phase, 1.0)

    def _expected_of(self, index: int) -> float:
        """Seconds an entry not yet running is expected to take: a measurement, or its plan at its phase's pace."""
        planned = self._expected[index]
        return planned if self._revised[index] else planned * self._pace_of(self._order[index])

    def steady_seconds(self) -> float | None:
        """What the whole running phase takes at the pace measured since its first few percent (its warm-up,
        such as TensorFlow tracing the first batches, left out); None until that pace is measurable."""
        if self._anchor is None or self._done - self._anchor[1] < STEADY_AFTER:
            return None
        return (self._clock() - self._anchor[0]) / (self._done - self._anchor[1])

    def _current_left(self) -> tuple[float, float]:
        """(expected seconds of the current phase, seconds left in it)."""
        elapsed = self._clock() - self._phase_start
        expected = self._expected_of(self._index)
        steady = self.steady_seconds()
        if steady is not None:  # its own pace since its warm-up
            total = elapsed + (1.0 - self._done) * steady
            self._learn_pace(self._index, steady)
        elif self._done >= MEASURED_AFTER:  # its own pace, warm-up included
            total = elapsed / self._done
            self._learn_pace(self._index, total)
        elif elapsed > expected:  # overran its expectation without saying how far it is
            total = elapsed * 1.5
        else:
            total = expected
        return max(total, elapsed), max(total - elapsed, 0.0)

    def now(self) -> Progress:
        """Where the task stands at this moment, without reporting: a phase that says nothing while it runs
        (loading a model) still moves its bar and counts its time left down as the clock runs."""
        if 0 <= self._index < len(self._order):
            return self._emit(report=False)
        return self.progress

    def _emit(self, report: bool = True) -> Progress:
        phase = self._order[self._index]
        total_now, left_now = self._current_left()
        before = sum(self._expected_of(i) for i in range(self._index))
        after = sum(self._expected_of(i) for i in range(self._index + 1, len(self._order)))
        whole = before + total_now + after
        fraction = (before + total_now - left_now) / whole if whole > 0 else 0.0
        progress = Progress(phase, min(max(fraction, 0.0), 0.999), left_now + after, self._detail)
        if not report:
            return progress
        self.progress = progress
        if self._report:
            self._report(progress)
        return progress


@dataclass(frozen=True)
class PhaseTimes:
    """Phase durations measured on this machine, per kind of task (a `key` such as "train/resnet18/64" or
    "predict/compactresnet/64"), in one JSON file: {key: {phase: [seconds, ...]}}. Expectations are the median
    of the last TIMES_KEPT measurements, optionally per unit of work (seconds per image, per epoch).

    Reads never fail (a missing or damaged file is no measurements); writes are atomic and serialised within
    the process, and two processes writing at once lose at most one measurement."""

    path: Path

    @classmethod
    def in_artifacts(cls, artifacts: Path) -> "PhaseTimes":
        return cls(Path(artifacts) / TIMES_FILE)

    def _read(self) -> dict[str, dict[str, list[float]]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def expected(self, key: str, phase: str, default: float | None = None) -> float | None:
        values = self._read().get(key, {}).get(phase)
        if not isinstance(values, list) or not values:
            return default
        clean = sorted(float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)
        return clean[len(clean) // 2] if clean else default

    def has(self, key: str) -> bool:
        return bool(self._read().get(key))

    def record(self, key: str, seconds: dict[str, float]) -> None:
        """Add one measurement per phase (seconds, or seconds per unit: the caller decides, consistently)."""
        with _WRITE_LOCK:
            data = self._read()
            entry = data.setdefault(key, {})
            for phase, value in seconds.items():
                if value is None or not math.isfinite(value) or value < 0:
                    continue
                entry[phase] = [*entry.get(phase, []), round(float(value), 6)][-TIMES_KEPT:]
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True))
            except OSError:
                pass  # a measurement is a nicety: a read-only or full disk must not fail the task


_WRITE_LOCK = threading.Lock()
