"""The Classify page in a real headless Chromium: upload a real CellaVision JPEG and see the overlay."""

from __future__ import annotations

import pytest
from browser_support import app_over_run, chromium_page, no_exception, open_from_sidebar, screenshot, settle
from conftest import PBC_SAMPLES

pytestmark = pytest.mark.browser
SAMPLE = sorted((PBC_SAMPLES / "eosinophil").glob("*.jpg"))[0]


@pytest.fixture
def classify_url(tmp_path, trained_run):
    """`streamlit run app.py` on a free port over a store holding the trained fixture run."""
    with app_over_run(trained_run, tmp_path) as (url, _):
        yield url


def test_upload_a_jpeg_and_see_the_overlay(classify_url):
    url = classify_url
    with chromium_page() as page:
        open_from_sidebar(page, url, "Classify")
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
        no_exception(page)
        assert page.get_by_role("button", name="Download the overlay (PNG)").count() == 1
