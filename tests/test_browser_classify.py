"""The Classify page in a real headless Chromium: upload a real CellaVision JPEG and see the overlay."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import SCREENSHOTS, launch_chromium, streamlit_app
from conftest import PBC_SAMPLES, mirror_run

pytestmark = pytest.mark.browser
SAMPLE = sorted((PBC_SAMPLES / "eosinophil").glob("*.jpg"))[0]


@pytest.fixture
def classify_url(tmp_path, trained_run):
    """`streamlit run app.py` on a free port over a store holding the trained fixture run."""
    artifacts = tmp_path / "artifacts"
    mirror_run(Path(trained_run), artifacts)
    log = tmp_path / "streamlit.log"
    with streamlit_app(log, CELLSCOPE_ARTIFACTS=str(artifacts)) as url:
        yield url, log


def settle(page) -> None:
    """Wait until Streamlit has finished running the script and the images and chart have drawn."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=180_000)
    page.wait_for_timeout(1500)


def screenshot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main section, so grow the window to its height first."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1440, "height": min(max(900, int(height) + 40), 6000)})
    page.mouse.move(5, 5)
    page.wait_for_timeout(1500)  # plotly redraws at the new size
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_upload_a_jpeg_and_see_the_overlay(classify_url):
    from playwright.sync_api import sync_playwright

    url, log = classify_url
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url, timeout=60_000)  # the app's root, then the sidebar link, as a user does
            page.get_by_role("heading", name="CellScope").wait_for(timeout=120_000)
            page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Classify").click()
            page.get_by_role("heading", name="Classify").wait_for(timeout=120_000)
            page.locator('input[type="file"]').first.set_input_files(str(SAMPLE), timeout=120_000)
            page.get_by_role("heading", name=SAMPLE.name).wait_for(timeout=120_000)
            overlay = page.locator('[data-testid="stImage"]').filter(has_text="Overlay")
            overlay.first.wait_for(timeout=180_000)
            page.get_by_text("Difference").first.wait_for(timeout=60_000)
            settle(page)
            screenshot(page, "classify.png")
            img = overlay.first.locator("img")
            assert img.evaluate("el => el.complete && el.naturalWidth") >= 28 * 8
            assert page.get_by_text("Prediction").count() >= 1
            assert page.get_by_text("As the model sees it").count() >= 1
            assert page.locator('[data-testid="stException"]').count() == 0, log.read_text()[-3000:]
            assert page.get_by_role("button", name="Download the overlay (PNG)").count() == 1
        finally:
            browser.close()
