"""A run's model and its prepared files, as pages meet them: a thin view over core.inference.precompute, which
holds the one model cache of the process (shared by every page, session and background task).

- `classifier(run_dir)`: the model now, loading it in this script run (with a spinner) when it is not in
  memory: for pages whose next step needs it at once.
- `model_when_ready(run_dir)` and `step_when_ready(run_dir, step)`: the model or a prepared step's value when
  it is there, else None with a progress bar (phase, time left) drawn where it is called while a background
  task prepares it; the page draws what does not need it meanwhile, and reruns when the task ends.

TensorFlow loads inside precompute's loader, so importing this module is light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from core import tasks
from core.errors import UserFacingError
from core.inference import precompute
from ui.progress import await_task

if TYPE_CHECKING:
    from core.inference.classifier import Classifier

MODELS_KEPT = precompute.MODELS_KEPT


def classifier(run_dir: str | Path) -> Classifier:
    """The run's model with prediction and the default Grad-CAM traced, one per run folder's real path (so
    `runs/<id>` reached two ways is one model). Raises UserFacingError for a missing or broken run."""
    if precompute.loaded(run_dir) is None:
        with st.spinner("Loading the model…"):
            return precompute.classifier(run_dir)
    return precompute.classifier(run_dir)


def _failed(task: tasks.Task, retry_key: str) -> None:
    """A failed task's message, with a button that tries again; raises UserFacingError to stop the caller."""
    if st.button("Try again", key=retry_key, icon=":material/refresh:"):
        tasks.forget(task.key)
        st.rerun()
    raise UserFacingError(task.error or f"{task.title} failed")


def model_when_ready(run_dir: str | Path, what: str = "Loading the run's model (once per server)…"
                     ) -> Classifier | None:
    """The run's model if it is in memory; else None, a background task loading it, and its bar here.
    A load that failed raises its message (UserFacingError) under a "Try again" button."""
    clf = precompute.loaded(run_dir)
    if clf is not None:
        return clf
    task = precompute.model_task(run_dir, retry=False)
    if task.failed:
        _failed(task, f"retry-{task.key}")
    if task.running:
        await_task(task, what)
        return None
    return precompute.loaded(run_dir) or model_when_ready(run_dir, what)  # dropped from the cache meanwhile


def step_when_ready(run_dir: str | Path, step: str, what: str | None = None) -> Any | None:
    """A precompute step's value (core.inference.precompute.STEPS) when its file is there or its task is done;
    else None, its background task, and its bar here. A failed step raises its message (UserFacingError)
    under a "Try again" button."""
    existing = tasks.get(precompute.task_key(step, run_dir))
    if precompute.ready(run_dir, step) and (existing is None or not existing.running):
        return precompute.run_step(run_dir, step)  # reads the file: milliseconds
    task = precompute.step_task(run_dir, step, retry=False)
    if task.failed:
        _failed(task, f"retry-{task.key}")
    if task.running:
        await_task(task, what or f"{precompute.STEPS[step].title} (once per run)…")
        return None
    return task.result
