"""The real app in a real headless Chromium: `streamlit run app.py`, then look at the home page."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = PROJECT_ROOT / "test-output" / "screenshots"
START_TIMEOUT = 90  # seconds; the machine may be busy training

pytestmark = pytest.mark.browser


def need_chromium() -> None:
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
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
    pytest.fail(f"streamlit did not answer on {url} within {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def app_url(tmp_path, trained_run, tiny_npz):
    """`streamlit run app.py` on a free port, over the trained fixture run and a tiny 28 px data file."""
    need_chromium()
    data = tmp_path / "medmnist"
    data.mkdir()
    shutil.copy(tiny_npz, data / "bloodmnist.npz")
    env = dict(os.environ, CELLSCOPE_ARTIFACTS=str(Path(trained_run).parent.parent), CELLSCOPE_DATA_DIR=str(data))
    port = free_port()
    log = tmp_path / "streamlit.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1"],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
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


def test_home_page_in_chromium(app_url, trained_run):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # Streamlit scrolls inside its own container, so a "full page" screenshot is only the viewport:
            # open tall, then clip the screenshot to the content.
            page = browser.new_page(viewport={"width": 1440, "height": 1800})
            page.goto(app_url, timeout=60_000)
            page.get_by_role("heading", name="CellScope").wait_for(timeout=60_000)
            page.get_by_text(f"Run {trained_run.name}").wait_for(timeout=60_000)
            page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # let the data grid (a canvas) and the icon font finish drawing
            content = page.locator('[data-testid="stMainBlockContainer"] > [data-testid="stVerticalBlock"]')
            box = content.first.bounding_box()
            bottom = box["y"] + box["height"] if box else 1800
            height = min(1800, max(600, int(bottom) + 48))
            page.screenshot(path=str(SCREENSHOTS / "home.png"),
                            clip={"x": 0, "y": 0, "width": 1440, "height": height})
            assert page.title() == "CellScope — blood cell classification"
            assert page.get_by_text("Val accuracy").count() >= 1
            assert page.get_by_text("python -m core download --size 64").count() == 1
            assert page.locator('[data-testid="stException"]').count() == 0
        finally:
            browser.close()
