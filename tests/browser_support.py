"""Shared pieces of the real-browser tests: Debian's Chromium, and `streamlit run app.py` on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from conftest import mirror_run

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = PROJECT_ROOT / "test-output" / "screenshots"
START_TIMEOUT = 120  # seconds; the machine may be busy training


def need_chromium() -> None:
    """Skip without Chromium on a developer's machine; under CI its absence is a failure."""
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"streamlit did not answer on {url} within {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def streamlit_app(log: Path, **env: str) -> Iterator[str]:
    """Serve app.py with extra environment variables (e.g. CELLSCOPE_ARTIFACTS); yields its URL and always
    stops the server."""
    need_chromium()
    port = free_port()
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],
            cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def app_over_run(run: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`streamlit run app.py` over a private store holding a mirror of `run` (so what the pages write stays
    in `tmp_path`); yields (its URL, the store's artifacts folder). Its log is tmp_path/streamlit.log."""
    artifacts = tmp_path / "artifacts"
    mirror_run(Path(run), artifacts)
    with streamlit_app(tmp_path / "streamlit.log", CELLSCOPE_ARTIFACTS=str(artifacts)) as url:
        yield url, artifacts


def launch_chromium(playwright):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def settle(page, timeout_ms: int = 180_000) -> None:
    """Wait until Streamlit has finished running the script and images and charts have drawn."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout_ms)
    page.wait_for_timeout(1500)


def open_from_sidebar(page, app_url: str, title: str) -> None:
    """Start at the app's root (the first request of a fresh server must be: see the README's known
    limitations) and follow the sidebar link, as a user does."""
    page.goto(app_url, timeout=60_000)
    page.get_by_role("heading", name="CellScope").wait_for(timeout=120_000)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()


def no_exception(page) -> None:
    """No Streamlit exception box on the page (its text is the failure message)."""
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, boxes.first.inner_text()


def screenshot(page, name: str, max_height: int = 6000) -> None:
    """The whole page to SCREENSHOTS/name: Streamlit scrolls inside its main section, so the window grows to
    the content's height first (and is put back after); no focus ring or tooltip is left from the last click."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = page.viewport_size
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.mouse.move(5, 5)
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stAppViewContainer"]')].map(e => e.scrollHeight), 0)""")
    page.set_viewport_size({"width": 1440, "height": min(max(900, int(height) + 40), max_height)})
    page.wait_for_timeout(1500)  # plotly redraws at the new size
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
    if before:
        page.set_viewport_size(before)


@contextmanager
def chromium_page(height: int = 900):
    """A fresh page, 1440 px wide, in a headless Chromium that is closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            yield browser.new_page(viewport={"width": 1440, "height": height})
        finally:
            browser.close()
