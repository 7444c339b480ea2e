"""Logging in, as `cellscope.toml`'s `[access] login` says (app.py calls `sign_in()` before the navigation).

- "none" (default): one user on this machine acts as the local administrator. Served on any other address
  (or reached from another machine), the app shows one message saying how to configure login, and nothing else.
- "password": a login form checked against the hashed user file (`core.access.users.UserFile`); repeated
  failures for a name are throttled for every session of the server. Each rerun re-reads the user's roles
  from the file, so removing a user or changing their roles takes effect at once.
- "oidc": Streamlit's own `st.login()` / `st.user` / `st.logout()` with the institution's OpenID Connect
  provider (`[auth]` in .streamlit/secrets.toml); roles by e-mail from `[access.oidc_roles]`, else
  `default_roles`.

The sidebar shows who is logged in, with their roles, and a Log out button.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, NoReturn

import streamlit as st
from streamlit.errors import StreamlitAuthError

from core.access.roles import LOCAL_ADMIN, AccessDenied, User
from core.access.serving import local_only_refusal
from core.access.settings import ServerSettings, load_settings
from core.access.users import LOGIN_THROTTLE, UserFile
from core.errors import UserFacingError
from ui.guard import guard, show_error
from ui.session import USER_KEY, client_address
from ui.text import md_escape

WRONG = "Wrong user name or password."


def oidc_user(settings: ServerSettings, email: str) -> User:
    """The user an OpenID Connect login is: named by their e-mail, with the roles `[access.oidc_roles]` gives
    that address, else `default_roles`."""
    email = (email or "").strip().lower()
    return User(email, settings.oidc_roles.get(email, settings.default_roles))


def _log_out() -> None:
    st.session_state.pop(USER_KEY, None)
    st.session_state["_logged_out"] = True  # OIDC: st.logout() runs in the script, not in this callback


def logout_button(user: User) -> None:
    with st.sidebar:
        st.caption(f":material/person: **{md_escape(user.name)}** · {', '.join(user.roles)}")
        st.button("Log out", icon=":material/logout:", key="logout", on_click=_log_out)


def _alone(draw: Callable[[], None]) -> NoReturn:
    """Before login, `draw` (the form, or a message) is the app's only page, unlisted; then the run ends.
    Declaring that navigation keeps Streamlit from listing the files of pages/ in the sidebar, and drawing
    inside the page (not before the navigation) keeps the form's values from one run to the next."""
    def login() -> None:
        draw()

    st.navigation([st.Page(login, title="Log in", url_path="login")], position="hidden").run()
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


def _refuse(message: str) -> NoReturn:
    _alone(partial(st.error, message, icon=":material/lock:"))


def _password_form(users: UserFile) -> None:
    st.title("CellScope", anchor=False)
    with st.form("login_form", clear_on_submit=True, enter_to_submit=True, width=420):  # no password kept
        name = st.text_input("User name", key="login_name", autocomplete="username")
        password = st.text_input("Password", type="password", key="login_password", autocomplete="current-password")
        submitted = st.form_submit_button("Log in", type="primary", icon=":material/login:")
    if not submitted:
        return
    wait = LOGIN_THROTTLE.wait(name)
    if wait > 0:
        st.error(f"Too many wrong passwords for this user name: try again in {math.ceil(wait)} s.")
        return
    try:
        user = users.verify(name, password)
    except UserFacingError as e:
        show_error(e)
        return
    if user is None:
        LOGIN_THROTTLE.failed(name)
        st.error(WRONG)
        return
    LOGIN_THROTTLE.succeeded(name)
    st.session_state[USER_KEY] = user
    st.rerun()


def password_login(settings: ServerSettings) -> User:
    users = UserFile(settings.users_file)  # load_settings() requires users_file with login = "password"
    known = st.session_state.get(USER_KEY)
    st.session_state.pop("_logged_out", None)
    if isinstance(known, User):
        with guard():
            user = users.current(known)  # the file's current roles
        if user is not None:
            st.session_state[USER_KEY] = user
            logout_button(user)
            return user
        st.session_state.pop(USER_KEY, None)  # removed from the file meanwhile
    _alone(partial(_password_form, users))


def _oidc_button() -> None:
    st.title("CellScope", anchor=False)
    st.markdown("Log in with your institution's account.")
    if st.button("Log in", type="primary", icon=":material/login:", key="oidc_login"):
        try:
            st.login()
        except StreamlitAuthError as e:  # [auth] missing or incomplete
            st.error(f"Login is set to \"oidc\" but Streamlit cannot start it ({type(e).__name__}): configure "
                     "[auth] in .streamlit/secrets.toml as the README shows.", icon=":material/lock:")


def oidc_login(settings: ServerSettings) -> User:
    if st.session_state.pop("_logged_out", False) and st.user.get("is_logged_in", False):
        st.logout()  # removes Streamlit's identity cookie and starts a new session
    if not st.user.get("is_logged_in", False):
        _alone(_oidc_button)
    email = str(st.user.get("email") or "")
    try:
        user = oidc_user(settings, email)
    except AccessDenied as e:
        _refuse(f"This account cannot be used here ({e}).")
    st.session_state[USER_KEY] = user
    logout_button(user)
    return user


def sign_in() -> User:
    """The session's user, once logged in as the settings require; otherwise the login form (or one
    message), and the script stops."""
    try:
        settings = load_settings()
    except UserFacingError as e:
        _alone(partial(show_error, e))
    if settings.login == "none":
        refusal = local_only_refusal(st.get_option("server.address"), client_address())
        if refusal:
            _refuse(refusal)
        st.session_state.pop(USER_KEY, None)  # a user left from a login mode since turned off
        return LOCAL_ADMIN
    if settings.login == "password":
        return password_login(settings)
    return oidc_login(settings)
