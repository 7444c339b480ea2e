"""The Results and Confusions pages in a real headless Chromium: `streamlit run app.py` once for the module over
three real tiny runs, one browser; each test opens its page, clicks as a user does, and saves a full-page
screenshot to test-output/screenshots/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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

from core.evaluation import confusion
from core.store.runs import Run, RunStore

PAGE_TIMEOUT = 180_000  # ms; the Confusions page may predict the test split (in the background) on first visit

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_run, tiny_npz) -> Path:
    return seeded_artifacts(tmp_path_factory, trained_run, tiny_npz)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, artifacts):
    """`streamlit run app.py` on a free port over three real tiny runs (seeds 1-3)."""
    need_chromium()
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


def test_results_page(app_url, browser, artifacts):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    open_from_sidebar(page, app_url, "Results")
    page.get_by_role("heading", name="Results").wait_for(timeout=60_000)
    page.get_by_text("Runs (3 of 3)").wait_for(timeout=60_000)
    page.get_by_text("Settings against validation accuracy").wait_for(timeout=60_000)
    settle(page, PAGE_TIMEOUT)
    # parallel coordinates are SVG lines (go.Parcoords drew axes but no lines without WebGL)
    parallel = page.locator('[data-testid="stPlotlyChart"]').last
    parallel.scroll_into_view_if_needed()
    assert parallel.locator(".scatterlayer path.js-line").count() >= 1
    assert page.locator(".parcoords").count() == 0
    screenshot(page, "results.png", max_height=9000)
    no_exception(page)
    page.get_by_role("button", name="Study Table 12").click()
    page.get_by_text("Study: Test accuracy").wait_for(timeout=60_000)
    settle(page, PAGE_TIMEOUT)
    assert page.get_by_text("0.988").count() >= 1  # the study's best model, in the Table 12 heatmap
    assert page.get_by_text("best of 2 settings").count() >= 1  # our cell: 256- and 64-image runs not pooled
    # a job card's link: that run first and selected
    worst = min(RunStore(artifacts / "runs").list_runs(), key=lambda r: r["val_accuracy"])["run_id"]
    page.goto(f"{app_url}/results?run={worst}", timeout=60_000)
    page.get_by_text("Runs (3 of 3)").wait_for(timeout=60_000)
    settle(page, PAGE_TIMEOUT)
    # first among the selected runs: the first series of the per-class bars (legend in selection order)
    assert worst in page.locator('[data-testid="stPlotlyChart"] .legendtext').first.text_content()
    no_exception(page)
    page.close()


def _cell_centre(page, chart, row: int, col: int) -> tuple[float, float]:
    """Where cell (row, col) of a plotly heatmap is on the page, from the figure's own axes."""
    offset = chart.locator(".js-plotly-plot").evaluate(
        """(gd, rc) => {
            const L = gd._fullLayout, box = gd.getBoundingClientRect();
            return [box.left + L._size.l + L.xaxis.l2p(rc[1]), box.top + L._size.t + L.yaxis.l2p(rc[0])];
        }""", [row, col])
    return float(offset[0]), float(offset[1])


def test_clicking_a_confusion_cell_shows_its_images_and_the_cam_beside_the_one_clicked(app_url, browser,
                                                                                      artifacts):
    best = RunStore(artifacts / "runs").best_run()
    counts, labels = confusion.from_metrics(Run(Path(best["path"])).metrics)
    cls = int(np.argmax(np.diag(counts)))  # the best-recognised class: its diagonal cell has the most images
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    open_from_sidebar(page, app_url, "Confusions")
    page.get_by_role("heading", name="Images behind a cell").wait_for(timeout=60_000)
    page.locator('[data-testid="stImage"]').first.wait_for(timeout=PAGE_TIMEOUT)  # after a first-use progress bar
    settle(page, PAGE_TIMEOUT)
    # a row of the ranked confusions (its selection box, left of the row) picks that cell
    ranked = confusion.ranked_confusions(counts, labels)
    if len(ranked) > 1:
        table = page.locator('[data-testid="stDataFrame"]').first
        table.scroll_into_view_if_needed()
        box = table.bounding_box()
        page.mouse.click(box["x"] + 18, box["y"] + 35 + 35 * 1 + 17)  # header 35 px, then 35 px a row
        page.get_by_text(f"predicted as {ranked.iloc[1]['predicted']} (mistaken)").wait_for(timeout=60_000)
        settle(page, PAGE_TIMEOUT)
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    chart.scroll_into_view_if_needed()
    assert chart.locator(".modebar").count() == 0  # no toolbar over the top row of numbers
    x, y = _cell_centre(page, chart, cls, cls)
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    name = labels[cls]
    page.get_by_text(f"predicted as {name} (correct)").wait_for(timeout=60_000)
    settle(page, PAGE_TIMEOUT)
    # (that sentence is drawn from the two dropdowns: they followed the click)
    thumbs = page.locator('[data-testid="stImage"]')
    assert thumbs.count() == min(int(counts[cls, cls]), 24)
    page.get_by_role("button", name="Grad-CAM").first.click()
    caption = page.get_by_text("image · heatmap · overlay").first
    caption.wait_for(timeout=PAGE_TIMEOUT)  # after the model loads in the background
    settle(page, PAGE_TIMEOUT)
    cam = page.locator('[data-testid="stImage"]').filter(has_text="image · heatmap · overlay").first
    first_thumb = page.locator('[data-testid="stImage"]').first.bounding_box()
    cam_box = cam.bounding_box()
    # beside the thumbnails (to their right, level with the first row), not under the grid
    assert cam_box["x"] > first_thumb["x"] + 3 * first_thumb["width"]
    assert cam_box["y"] < first_thumb["y"] + 2 * first_thumb["height"]
    screenshot(page, "confusion.png", max_height=9000)
    no_exception(page)
    page.close()
