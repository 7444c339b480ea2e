"""The Review and External validation pages in a real headless Chromium: `streamlit run app.py` over a private
mirror of the trained fixture run; start a review session (prepared in the background), look at the review
station (the cell's image with zoom and the Enlarge dialog, the model's top 3, the tally per class), agree once
(by click) and once more by keyboard shortcut, undo, then evaluate the real external_dev set and change a setting.
Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import re

import pytest
from browser_support import app_over_run, chromium_page, no_exception, open_from_sidebar, screenshot
from conftest import EXTERNAL_DEV

WAIT_MS = 180_000  # a step that loads TensorFlow and a model on a busy machine

pytestmark = pytest.mark.browser


@pytest.fixture
def app_url(tmp_path, trained_run):
    with app_over_run(trained_run, tmp_path) as served:
        yield served


def test_review_and_external_pages_in_chromium(app_url):
    from core.access.roles import LOCAL_ADMIN
    from core.validation.review import REVIEWS_DB, ReviewStore

    app_url, artifacts = app_url
    with chromium_page(1500) as page:
        # the first request of a fresh server goes to the app's root: a deep link before app.py has run once
        # gets Streamlit's automatic pages/ navigation instead of the app's own
        open_from_sidebar(page, app_url, "Review")
        page.get_by_role("heading", name="Review").wait_for(timeout=60_000)
        page.get_by_text("Reviewing as").wait_for(timeout=60_000)  # login off: the local administrator
        page.get_by_role("button", name=re.compile("^Start session")).click(timeout=60_000)
        page.get_by_text("cell 1 of 50").wait_for(timeout=WAIT_MS)
        page.get_by_text(re.compile(r"^0 of 50 reviewed")).wait_for(timeout=30_000)
        # the review station: the cell with a zoom, the model's three most likely classes, an empty tally
        page.get_by_text(re.compile(r"^Most likely classes: 1\. .+%.* · 2\. .+ · 3\. ")).wait_for(timeout=30_000)
        page.get_by_text("No decisions yet").wait_for(timeout=30_000)
        page.get_by_text(re.compile("^The cell: 28 px")).wait_for(timeout=30_000)
        page.get_by_text(re.compile("^Grad-CAM: evidence for")).wait_for(timeout=WAIT_MS)  # model loaded meanwhile
        page.locator('[data-testid="stSlider"]').filter(has_text="Zoom").first.wait_for(timeout=30_000)
        page.get_by_role("button", name=re.compile("Enlarge")).click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("The cell, enlarged").wait_for(timeout=30_000)
        dialog.locator('[data-testid="stImage"]').wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        screenshot(page, "review-enlarged.png", max_height=1200)
        page.keyboard.press("Escape")
        dialog.wait_for(state="detached", timeout=30_000)
        page.get_by_role("button", name=re.compile("^Agree")).click()
        page.get_by_text("cell 2 of 50").wait_for(timeout=WAIT_MS)
        page.get_by_text(re.compile(r"^1 of 50 reviewed")).wait_for(timeout=30_000)
        # the tally follows the decision: one reviewed, one agreed, and the agreement's denominator said
        page.get_by_text("Agreement 1 of 1 cells given a class (100.0%).").wait_for(timeout=30_000)
        tally = page.locator('[data-testid="stTable"]').first
        tally.wait_for(timeout=30_000)
        assert "Agreed" in tally.inner_text() and "Reclassified" in tally.inner_text()
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
        cells = store.cells(store.sessions(LOCAL_ADMIN)[0]["id"])
        assert [c["decision"] for c in cells[:4]] == ["agree", "unsure", "agree", None]  # one press, one decision
        assert cells[2]["note"] == "typical"
        # unsure is left out of agreement's denominator
        page.get_by_text("Agreement 2 of 2 cells given a class (100.0%); 1 unsure or not a cell left out of it.") \
            .wait_for(timeout=30_000)
        page.locator('[data-testid="stImage"]').first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # images, plotly and the icon font finish drawing
        no_exception(page)
        screenshot(page, "review.png", max_height=2600)

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
        page.get_by_text(re.compile(r"Accuracy over all 8 classes 0\.\d+ \(95% CI")).wait_for(timeout=30_000)
        page.get_by_text(re.compile("different staining, microscope, camera and framing")).wait_for(timeout=30_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
        page.wait_for_timeout(2500)
        no_exception(page)
        screenshot(page, "external.png", max_height=6000)
        # another normalisation: the result on screen is marked as not the current settings' one
        page.locator('[data-testid="stSidebar"]').get_by_text("Reinhard", exact=True).click()
        page.get_by_text("Not the current settings' result.").wait_for(timeout=WAIT_MS)
        page.get_by_role("button", name=re.compile("Evaluate again with the current settings")).wait_for()
        page.wait_for_timeout(1000)
        screenshot(page, "external-stale.png", max_height=2000)
