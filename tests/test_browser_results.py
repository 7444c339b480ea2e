"""The Results and Confusions pages in a real headless Chromium: `streamlit run app.py`, open each page,
wait for its charts, and save a full-page screenshot to test-output/screenshots/."""

from __future__ import annotations

import pytest
from browser_support import (
    launch_chromium,
    need_chromium,
    no_exception,
    open_from_sidebar,
    screenshot,
    settle,
    streamlit_app,
)
from results_fixtures import seeded_artifacts

PAGE_TIMEOUT = 180_000  # ms; the Confusions page predicts the test split on first visit

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, trained_run, tiny_npz):
    """`streamlit run app.py` on a free port over three real tiny runs (seeds 1-3)."""
    need_chromium()
    artifacts = seeded_artifacts(tmp_path_factory, trained_run, tiny_npz)
    log = tmp_path_factory.mktemp("streamlit-results") / "streamlit.log"
    with streamlit_app(log, CELLSCOPE_ARTIFACTS=str(artifacts)) as url:
        yield url


@pytest.fixture(scope="module")
def browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_chromium(p)
        try:
            yield chromium
        finally:
            chromium.close()


def test_results_page(app_url, browser):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    open_from_sidebar(page, app_url, "Results")
    page.get_by_role("heading", name="Results").wait_for(timeout=60_000)
    page.get_by_text("Runs (3 of 3)").wait_for(timeout=60_000)
    page.get_by_role("button", name="Study Table 12").click()
    page.get_by_text("Study: Test accuracy").wait_for(timeout=60_000)
    page.locator(".js-plotly-plot").nth(4).wait_for(timeout=60_000)
    settle(page, PAGE_TIMEOUT)
    screenshot(page, "results.png", max_height=8000)
    no_exception(page)
    assert page.locator('[data-testid="stDataFrame"]').count() >= 2
    assert page.get_by_text("0.988").count() >= 1  # the study's best model, in the Table 12 heatmap
    page.close()


def test_confusion_page(app_url, browser):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    open_from_sidebar(page, app_url, "Confusions")
    page.get_by_role("heading", name="Confusions").wait_for(timeout=60_000)
    page.get_by_role("heading", name="Images behind a cell").wait_for(timeout=60_000)
    page.locator('[data-testid="stImage"]').first.wait_for(timeout=PAGE_TIMEOUT)
    settle(page, PAGE_TIMEOUT)
    page.get_by_role("button", name="Grad-CAM").first.click()
    page.locator("strong", has_text="Test image #").wait_for(timeout=PAGE_TIMEOUT)
    page.get_by_text("image · heatmap · overlay").first.wait_for(timeout=PAGE_TIMEOUT)
    settle(page, PAGE_TIMEOUT)
    screenshot(page, "confusion.png", max_height=8000)
    no_exception(page)
    assert page.get_by_role("heading", name="Two runs side by side").count() == 1
    page.close()
