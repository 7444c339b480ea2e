"""Who is using this browser session: the logged-in user, or the local administrator when login is off.

Pages call `current_user()` and pass it to every core call that writes (jobs, runs, reviews); the core
checks the permission (`core.access.roles.require`). Login itself is set up in `app.py`.
"""

from __future__ import annotations

import streamlit as st

from core.access.roles import LOCAL_ADMIN, User

USER_KEY = "cellscope_user"


def current_user() -> User:
    """The session's user (set at login), else the local administrator (login off: one user on localhost)."""
    user = st.session_state.get(USER_KEY)
    return user if isinstance(user, User) else LOCAL_ADMIN
