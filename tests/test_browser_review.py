"""The Review and External validation pages in a real headless Chromium: `streamlit run app.py` over a private
mirror of the trained fixture run; start a review session, agree once (by click) and once more by keyboard
shortcut, then evaluate the real external_dev set. Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_support import SCREENSHOTS, launch_chromium, streamlit_app
from conftest import EXTERNAL_DEV
from external_fixtures import mirror_run

WAIT_MS = 180_000  # a step that loads TensorFlow and a model on a busy machine

pytestmark = pytest.mark.browser


@pytest.fixture
def app_url(tmp_path, trained_run):
    artifacts = tmp_path / "artifacts"
    mirror_run(Path(trained_run), artifacts)
    with streamlit_app(tmp_path / "streamlit.log", CELLSCOPE_ARTIFACTS=str(artifacts)) as url:
        yield url, artifacts


def shoot(page, name: str, max_height: int = 4000) -> None:
    """Streamlit scrolls inside its own container: make the window tall, then clip the screenshot to the
    content (with focus taken off any element, so no focus ring shows)."""
    page.set_viewport_size({"width": 1440, "height": max_height})
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.wait_for_timeout(1500)
    content = page.locator('[data-testid="stMainBlockContainer"] > [data-testid="stVerticalBlock"]')
    box = content.first.bounding_box()
    bottom = box["y"] + box["height"] if box else 1800
    height = min(max_height, max(600, int(bottom) + 48))
    page.screenshot(path=str(SCREENSHOTS / name), clip={"x": 0, "y": 0, "width": 1440, "height": height})


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, \
        page.locator('[data-testid="stException"]').first.inner_text()


def test_review_and_external_pages_in_chromium(app_url):
    from playwright.sync_api import sync_playwright

    from core.validation.review import REVIEWS_DB, ReviewStore

    app_url, artifacts = app_url
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1500})
            # the first request of a fresh server goes to the app's root: a deep link before app.py has run once
            # gets Streamlit's automatic pages/ navigation instead of the app's own
            page.goto(app_url, timeout=60_000)
            page.get_by_role("link", name="Review").click(timeout=60_000)
            page.get_by_role("heading", name="Review").wait_for(timeout=60_000)
            name = page.get_by_label("Reviewer", exact=True).and_(page.get_by_role("textbox"))
            name.fill("Dr Browser")
            name.press("Enter")
            page.get_by_role("button", name=re.compile("^Start session")).click(timeout=60_000)
            page.get_by_text("cell 1 of 50").wait_for(timeout=WAIT_MS)
            page.get_by_text(re.compile(r"^0 of 50 reviewed")).wait_for(timeout=30_000)
            page.get_by_role("button", name=re.compile("^Agree")).click()
            page.get_by_text("cell 2 of 50").wait_for(timeout=WAIT_MS)
            page.get_by_text(re.compile(r"^1 of 50 reviewed")).wait_for(timeout=30_000)
            # a keyboard shortcut: U = unsure (once the rerun is over; focus on the page, not in a text field)
            page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=WAIT_MS)
            page.wait_for_timeout(1000)
            page.locator("h1").first.click()
            page.keyboard.press("u")
            page.get_by_text("cell 3 of 50").wait_for(timeout=WAIT_MS)
            page.get_by_text(re.compile(r"^2 of 50 reviewed")).wait_for(timeout=30_000)
            # Enter in the note field submits the form's first button: agree, with the note
            page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=WAIT_MS)
            note = page.get_by_label("Note (optional; Enter = agree)", exact=True)
            note.click()
            note.press_sequentially("typical", delay=30)
            page.wait_for_timeout(500)
            note.press("Enter")
            page.get_by_text("cell 4 of 50").wait_for(timeout=WAIT_MS)
            page.get_by_text(re.compile(r"^3 of 50 reviewed")).wait_for(timeout=30_000)
            store = ReviewStore(artifacts / REVIEWS_DB)
            cells = store.cells(store.sessions("Dr Browser")[0]["id"])
            assert [c["decision"] for c in cells[:4]] == ["agree", "unsure", "agree", None]  # one press, one decision
            assert cells[2]["note"] == "typical"
            page.locator('[data-testid="stImage"]').first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # images, plotly and the icon font finish drawing
            no_exception(page)
            shoot(page, "review.png", max_height=2600)
            page.set_viewport_size({"width": 1440, "height": 1500})

            page.get_by_role("link", name="External validation").click()
            page.get_by_role("heading", name="External validation").wait_for(timeout=60_000)
            folder = page.get_by_label("Dataset folder", exact=True).and_(page.get_by_role("textbox"))
            folder.fill(str(EXTERNAL_DEV))
            folder.press("Enter")
            page.get_by_text("100 image files").wait_for(timeout=60_000)
            page.get_by_role("button", name=re.compile("^Evaluate")).click()
            page.get_by_role("heading", name=re.compile("Zero-shot result")).wait_for(timeout=WAIT_MS)
            page.get_by_role("heading", name=re.compile("Grad-CAM of correct")).wait_for(timeout=WAIT_MS)
            page.get_by_text("Stored evaluations of this run").wait_for(timeout=WAIT_MS)
            page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
            page.wait_for_timeout(2500)
            no_exception(page)
            shoot(page, "external.png", max_height=6000)
        finally:
            browser.close()
