"""The real app in a real headless Chromium: `streamlit run app.py`, then look at the home page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from browser_support import chromium_page, no_exception, screenshot, streamlit_app

pytestmark = pytest.mark.browser


@pytest.fixture
def app_url(tmp_path, trained_run, tiny_npz):
    """`streamlit run app.py` on a free port, over the trained fixture run and a tiny 28 px data file."""
    data = tmp_path / "medmnist"
    data.mkdir()
    shutil.copy(tiny_npz, data / "bloodmnist.npz")
    with streamlit_app(tmp_path / "streamlit.log", CELLSCOPE_ARTIFACTS=str(Path(trained_run).parent.parent),
                       CELLSCOPE_DATA_DIR=str(data)) as url:
        yield url


def test_home_page_in_chromium(app_url, trained_run):
    with chromium_page() as page:
        page.goto(app_url, timeout=60_000)
        page.get_by_role("heading", name="CellScope").wait_for(timeout=60_000)
        page.get_by_text(f"Run {trained_run.name}").wait_for(timeout=60_000)
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # let the data grid (a canvas) and the icon font finish drawing
        screenshot(page, "home.png", max_height=1800)
        assert page.title() == "CellScope — blood cell classification"
        assert page.get_by_text("Val accuracy").count() >= 1
        assert page.get_by_text("python -m core download --size 64").count() == 1
        # the best run links to its evidence: Results and Confusions open on it
        link = page.get_by_role("link", name="Its confusions")
        assert link.get_attribute("href").rsplit("/", 1)[-1] == f"confusions?run={trained_run.name}"
        assert page.get_by_role("link", name="Its results").get_attribute("href").rsplit("/", 1)[-1] == (
            f"results?run={trained_run.name}")
        no_exception(page)
