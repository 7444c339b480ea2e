"""The store guard: what a page does when a store (run index, job queue, review database) cannot be read.

Stores raise `core.errors.StoreError` (a `UserFacingError`) whose message names the file and how to recover
(e.g. `python -m core runs --reindex`), so a page catches that one type and shows the message as it is. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from core.errors import UserFacingError
from ui.text import md_escape


def show_error(error: Exception, icon: str | None = None) -> None:
    """A UserFacingError as one st.error, its message shown literally (paths, $VARS, <...>)."""
    st.error(md_escape(error), icon=icon)


@contextmanager
def guard(stop: bool = True) -> Iterator[None]:
    """`with guard(): store = RunStore(); runs = store.list_runs()`: a UserFacingError inside is shown with
    st.error, then the page stops (`stop=True`) or goes on after the block (`stop=False`, for a section the
    rest of the page does not need)."""
    try:
        yield
    except UserFacingError as e:
        show_error(e)
        if stop:
            st.stop()
