"""Who is using this browser session: the logged-in user, or the local administrator when login is off.

Pages call `page_user(PAGE)` first: it returns the session's user when they may open the page, else shows one
message and stops the page (a page opened by its URL without the role, or before logging in). Pages pass the
user to every core call that writes (jobs, runs, reviews); the core checks the permission itself
(`core.access.roles.require`). Logging in is `ui.login` (called by `app.py`), which puts the user in
`st.session_state[USER_KEY]`.

`PAGE_PERMISSIONS` is the one table of which permission opens which page: the navigation (app.py) lists only
the pages the user may open, and each page checks it again.
"""

from __future__ import annotations

import streamlit as st

from core.access.roles import LOCAL_ADMIN, PERMISSIONS, User
from core.access.serving import local_only_refusal
from core.access.settings import load_settings
from core.access.users import UserFile
from ui.guard import guard

USER_KEY = "cellscope_user"
PAGE_PERMISSIONS = {
    "home": "browse",
    "train": "train",
    "results": "browse",
    "confusion": "browse",
    "feature_map": "browse",
    "classify": "classify",
    "external": "classify",
    "review": "review",
}


def client_address() -> str | None:
    """The browser's address, when Streamlit knows it (not in AppTest)."""
    address = st.context.ip_address
    return address if isinstance(address, str) else None


def current_user() -> User:
    """The session's user (set at login; with login = "password" re-read from the user file, so a removed user
    is out and changed roles apply at once); with login off, the local administrator (app.py has refused any
    address but this machine's). With login on and nobody logged in, one message and the page stops."""
    user = st.session_state.get(USER_KEY)
    with guard():
        settings = load_settings()
        if isinstance(user, User) and settings.login == "password":
            user = UserFile(settings.users_file).current(user)  # removed meanwhile: None; else today's roles
            if user is None:
                st.session_state.pop(USER_KEY, None)
    if isinstance(user, User):
        st.session_state[USER_KEY] = user
        return user
    if settings.login == "none":
        # app.py refuses this already; a page a fresh server runs on its own (first request by its URL) must too
        refusal = local_only_refusal(st.get_option("server.address"), client_address())
        if refusal:
            st.error(refusal, icon=":material/lock:")
            st.stop()
        return LOCAL_ADMIN
    st.warning("Log in first: open the app's home page.", icon=":material/login:")
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises; this keeps type checkers sure


def page_user(page: str) -> User:
    """The session's user, when they may open `page` (a key of PAGE_PERMISSIONS); else one message, and the
    page stops."""
    user = current_user()
    permission = PAGE_PERMISSIONS[page]
    if not user.can(permission):
        st.error(f"{user.name} ({', '.join(user.roles)}) may not open this page: it needs the permission to "
                 f"{PERMISSIONS[permission]}. Ask an admin for the role.", icon=":material/lock:")
        st.stop()
    return user
