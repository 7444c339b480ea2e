"""The Feature map page in a real headless Chromium (what AppTest cannot see: Vega-Lite's hover tooltip showing
the cell's thumbnail, and a click on a point picking it): `streamlit run app.py` over a mirror of the real tiny
run, its map made here first (the server then needs no model: the Grad-CAM of a click is checked by AppTest in
test_embedding_map.py). Saves screenshots to test-output/screenshots/feature_map*.png."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_support import (
    SCREENSHOTS,
    app_over_run,
    chromium_page,
    need_chromium,
    no_exception,
    open_from_sidebar,
    screenshot,
    settle,
)

from core.inference import precompute
from core.store.runs import open_run

PAGE_TIMEOUT = 120_000  # ms

pytestmark = pytest.mark.browser


def test_hover_shows_the_cell_and_a_click_picks_it(tmp_path, trained_run):
    need_chromium()
    n = open_run(trained_run).metrics["test"]["n"]
    with app_over_run(Path(trained_run), tmp_path) as (url, artifacts), chromium_page(height=1100) as page:
        precompute.run_step(artifacts / "runs" / Path(trained_run).name, "embedding_map")
        open_from_sidebar(page, url, "Feature map")
        points = page.locator('[data-testid="stVegaLiteChart"] path[aria-roledescription="point"]')
        points.nth(n - 1).wait_for(state="attached", timeout=PAGE_TIMEOUT)
        settle(page, PAGE_TIMEOUT)
        assert points.count() == n  # every test image
        point = points.nth(n // 2)
        point.hover(force=True)
        tooltip = page.locator("#vg-tooltip-element")
        tooltip.locator('img[src^="data:image/jpeg;base64,"]').wait_for(state="visible", timeout=10_000)
        index = int(re.search(r"test image #\s*(\d+)", tooltip.inner_text()).group(1))
        point.click(force=True)
        number = page.locator('[data-testid="stNumberInput"] input')
        page.wait_for_function("([el, v]) => el.value === v", arg=[number.element_handle(), str(index)],
                               timeout=60_000)
        page.get_by_text(f"Test image #{index}:").first.wait_for(timeout=60_000)  # the cell picked, below
        no_exception(page)
        point.hover(force=True)  # the tooltip again, for the screenshot's reader
        page.wait_for_timeout(500)
        page.screenshot(path=str(SCREENSHOTS / "feature_map_hover.png"))
        screenshot(page, "feature_map.png")
