"""What the Classify tests share: run an AppTest page until the background tasks it started have ended.

A page that needs a model or a prepared step draws a progress bar and starts a core.tasks background task in
this very process (AppTest runs the script in-process); in a browser the bar's fragment reruns the page when
the task ends, and here `settled` does the same: it waits for the running tasks, then runs the page again,
until the page starts no more."""

from __future__ import annotations

import time

from page_helpers import ok
from streamlit.testing.v1 import AppTest

from core import tasks


def settled(at: AppTest, timeout: float = 300) -> AppTest:
    """Run the page, then again after each batch of background tasks ends, until none is running."""
    deadline = time.monotonic() + timeout
    ok(at.run())
    while tasks.running():
        for task in tasks.running():
            tasks.wait(task, max(1.0, deadline - time.monotonic()))
        ok(at.run())
    return at
