"""Logging in, in a real headless Chromium: `streamlit run app.py` with `login = "password"` over a real user
file. A wrong password is refused; a viewer logs in, sees their name and roles in the sidebar and only the pages
a viewer may open; a trainer's navigation has Train; logging out brings the form back. Screenshots go to
test-output/screenshots/."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from browser_support import chromium_page, no_exception, screenshot, settle, streamlit_app

pytestmark = pytest.mark.browser

WAIT_MS = 120_000


@pytest.fixture
def app_url(tmp_path):
    from core.access.users import UserFile

    settings = tmp_path / "cellscope.toml"
    settings.write_text('[access]\nlogin = "password"\nusers_file = "users.toml"\n')
    users = UserFile(tmp_path / "users.toml", PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    users.add("vera", ["viewer"], "viewer password")
    users.add("tom", ["trainer", "reviewer"], "trainer password")
    with streamlit_app(tmp_path / "streamlit.log", CELLSCOPE_SETTINGS=str(settings),
                       CELLSCOPE_ARTIFACTS=str(tmp_path / "artifacts")) as url:
        yield url


def log_in(page, name: str, password: str) -> None:
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def nav_links(page) -> list[str]:
    """The sidebar links' labels (each link's text is its icon's name, then its label)."""
    return [t.split("\n")[-1].strip() for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]


def test_password_login_in_chromium(app_url):
    with chromium_page() as page:
        page.goto(app_url, timeout=60_000)
        page.get_by_label("User name").wait_for(timeout=WAIT_MS)
        settle(page)  # the form takes input once the script has finished
        assert page.locator('[data-testid="stSidebarNav"]').count() == 0  # nothing before logging in
        log_in(page, "vera", "wrong password")
        page.get_by_text("Wrong user name or password.").wait_for(timeout=WAIT_MS)
        settle(page)
        screenshot(page, "login_refused.png")

        log_in(page, "vera", "viewer password")
        page.get_by_role("heading", name="CellScope").wait_for(timeout=WAIT_MS)
        page.get_by_text("vera").first.wait_for(timeout=WAIT_MS)
        settle(page)
        screenshot(page, "login_viewer_home.png")
        links = nav_links(page)
        assert "Results" in links and "Classify" in links
        assert "Train" not in links and "Review" not in links
        no_exception(page)

        page.get_by_role("button", name="Log out").click()
        page.get_by_label("User name").wait_for(timeout=WAIT_MS)
        settle(page)
        assert page.locator('[data-testid="stSidebarNav"]').count() == 0
        log_in(page, "tom", "trainer password")
        page.get_by_role("heading", name="CellScope").wait_for(timeout=WAIT_MS)
        settle(page)
        links = nav_links(page)
        assert "Train" in links and "Review" in links
        no_exception(page)
