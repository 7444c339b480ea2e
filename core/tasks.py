"""Background tasks of the app's own process: the long first-use computations a page needs (load a run's
model, predict its test split, measure its training data), run in a thread so that no page blocks on them.

`start(key, title, plan, work)` runs `work(tracker)` once per key in a daemon thread; a second start of the
same key (another tab, another user, a rerun) returns the task already there, so the work is shared and done
once. A page draws the uploader and everything else that does not need the result at once, and shows the
task's `Progress` (core.progress) until it is done. The result stays with the task; a failed task keeps its
message (a UserFacingError's text; anything else as its class and text, the traceback printed to the server
log) and is started again by the next `start`, unless that asks for `retry=False` (a page redrawn every
second shows the message rather than restarting a failing task each time).

Phase expectations come from core.progress.PhaseTimes when the caller passes them in `plan`; each finished
task records how long its phases took through `record`, so the next estimate is measured.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from core.errors import UserFacingError
from core.progress import Progress, Tracker

TASKS_KEPT = 64  # finished tasks remembered (their results may be large: the caller keeps what it needs)
RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass
class Task:
    key: str
    title: str
    state: str = RUNNING
    progress: Progress = field(default_factory=lambda: Progress("loading", 0.0))
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    tracker: Tracker | None = field(default=None, repr=False)

    def current(self) -> Progress:
        """The progress at this moment: while a phase runs without reporting, its bar still moves and its
        time left counts down (core.progress.Tracker.now); the last report otherwise."""
        tracker = self.tracker
        return tracker.now() if tracker is not None and self.running else self.progress

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def failed(self) -> bool:
        return self.state == FAILED

    @property
    def running(self) -> bool:
        return self.state == RUNNING


_LOCK = threading.Lock()
_TASKS: dict[str, Task] = {}


def get(key: str) -> Task | None:
    with _LOCK:
        return _TASKS.get(key)


def start(key: str, title: str, plan: Sequence[tuple[str, float]], work: Callable[[Tracker], Any],
          record: Callable[[dict[str, float]], None] | None = None, retry: bool = True) -> Task:
    """The task for `key`: the one running or done, else a new one started now. A failed one starts again,
    or with `retry=False` is returned as it is, its message for the caller to show."""
    with _LOCK:
        task = _TASKS.get(key)
        if task is not None and (not task.failed or not retry):
            return task
        task = Task(key, title, progress=Progress(plan[0][0], 0.0, sum(s for _, s in plan)))
        _TASKS[key] = task
        _forget_old()

    def report(progress: Progress) -> None:
        task.progress = progress

    def body() -> None:
        tracker = Tracker(plan, report)
        task.tracker = tracker
        try:
            result = work(tracker)
        except UserFacingError as e:
            task.error, task.state = str(e), FAILED
        except Exception as e:  # a bug: its message for the page, its traceback for the server log
            traceback.print_exc()
            task.error, task.state = f"{e.__class__.__name__}: {e}", FAILED
        else:
            tracker.finish()
            task.result, task.state = result, DONE
            if record:
                try:
                    record(tracker.seconds_in)
                except Exception:  # a measurement is a nicety
                    traceback.print_exc()
        finally:
            task.finished = time.time()

    threading.Thread(target=body, name=f"cellscope-task-{key}", daemon=True).start()
    return task


def run_now(key: str, title: str, plan: Sequence[tuple[str, float]], work: Callable[[Tracker], Any],
            record: Callable[[dict[str, float]], None] | None = None, timeout: float | None = None) -> Any:
    """Start (or join) the task and wait for it: for the CLI and tests. Raises UserFacingError on failure."""
    task = wait(start(key, title, plan, work, record), timeout)
    if task.failed:
        raise UserFacingError(task.error or f"{title} failed")
    return task.result


def wait(task: Task, timeout: float | None = None) -> Task:
    """The task once it has ended (done or failed); TimeoutError if it runs longer than `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while task.running:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{task.title} did not finish within {timeout:g} s")
        time.sleep(0.05)
    return task


def running() -> list[Task]:
    """The tasks running now (tests wait for them; a server's status could list them)."""
    with _LOCK:
        return [t for t in _TASKS.values() if t.running]


def forget(key: str) -> None:
    """Drop a finished task (its result is stale, e.g. the run was deleted); a running one is kept."""
    with _LOCK:
        task = _TASKS.get(key)
        if task is not None and not task.running:
            del _TASKS[key]


def _forget_old() -> None:
    finished = sorted((t for t in _TASKS.values() if not t.running), key=lambda t: t.finished or 0.0)
    for task in finished[:max(0, len(_TASKS) - TASKS_KEPT)]:
        del _TASKS[task.key]
