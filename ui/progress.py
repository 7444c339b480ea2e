"""Drawing core.progress: one progress bar for a job or a background task, its phase and time left in words."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core import tasks
from core.progress import Progress
from ui.text import md_escape

POLL_SECONDS = 1.0


def progress_bar(progress: Progress, key: str | None = None) -> None:
    """The phase, its detail and the time left, over a bar of the whole task."""
    st.progress(min(max(progress.fraction, 0.0), 1.0), text=md_escape(progress.text()))


def task_result(task: tasks.Task | None) -> Any:
    """The task's result once done; None while it runs. A failed task raises its message as UserFacingError."""
    from core.errors import UserFacingError  # noqa: PLC0415

    if task is None or task.running:
        return None
    if task.failed:
        raise UserFacingError(task.error or f"{task.title} failed")
    return task.result


def await_task(task: tasks.Task, what: str) -> None:
    """While `task` runs: a bar with its phase and time left, redrawn every second on its own (the rest of the
    page stays usable), and one rerun of the whole page when the task ends, so the page draws its result.

    `what`: one line saying what is being prepared and why the page waits for it."""

    @st.fragment(run_every=POLL_SECONDS)
    def _poll() -> None:
        if not task.running:
            st.rerun(scope="app")
        st.caption(md_escape(what))
        progress_bar(task.current())

    _poll()
