"""The Classify page in a real headless Chromium, on a fresh server over a run that has never been used (no model
in memory, no 'unlike the training data' statistics on disk): the upload box is usable while the model loads
in the background, a file uploaded meanwhile is classified once it is ready, and the explanation follows while
the run's statistics are still being measured.

One server and one browser page for the module; the steps run in the order a first user meets them."""

from __future__ import annotations

import pytest
from browser_support import app_over_run, chromium_page, no_exception, open_from_sidebar, screenshot
from conftest import PBC_SAMPLES

pytestmark = pytest.mark.browser
SAMPLE = sorted((PBC_SAMPLES / "eosinophil").glob("*.jpg"))[0]
WAIT_MS = 180_000  # a busy machine: loading TensorFlow and the model, measuring the training images


@pytest.fixture(scope="module")
def classify_page(tmp_path_factory, trained_run):
    """Chromium on the Classify page of a fresh `streamlit run app.py` over a mirror of the fixture run."""
    with app_over_run(trained_run, tmp_path_factory.mktemp("classify-browser")) as (url, artifacts):
        run = next((artifacts / "runs").iterdir())
        assert not (run / "ood_stats.npz").exists()
        with chromium_page() as page:
            open_from_sidebar(page, url, "Classify")
            yield page, run


def test_first_use_upload_while_the_model_loads_then_the_prediction_and_its_overlay(classify_page):
    page, run = classify_page
    page.get_by_role("heading", name="Classify").wait_for(timeout=120_000)
    uploader = page.locator('[data-testid="stFileUploader"]')
    bar = page.locator('[data-testid="stProgress"]')
    bar.first.wait_for(timeout=60_000)  # the wait is shown, with its phase...
    uploader.wait_for(timeout=5_000)  # ...and the box is there at the same time
    assert bar.first.inner_text().startswith("Loading")
    page.locator('input[type="file"]').first.set_input_files(str(SAMPLE), timeout=60_000)
    waiting = page.get_by_text("1 file waiting: classified as soon as the model is ready")
    waiting.wait_for(timeout=60_000)  # the file stays in the box while the bar runs
    assert uploader.get_by_text(SAMPLE.name).count() == 1 and bar.count() >= 1
    screenshot(page, "classify-first-use.png")

    # the bar's fragment reruns the page when the model is ready: the prediction, without asking again
    page.get_by_role("heading", name=SAMPLE.name).wait_for(timeout=WAIT_MS)
    page.get_by_text("Prediction").first.wait_for(timeout=WAIT_MS)
    overlay = page.locator('[data-testid="stImage"]').filter(has_text="Overlay")
    overlay.first.wait_for(timeout=WAIT_MS)
    page.get_by_text("Difference").first.wait_for(timeout=60_000)
    # the 'unlike the training data' statistics are measured meanwhile, under their own bar (the AppTest
    # test follows them to the end): the results do not wait for them
    measuring = page.get_by_text("results show without that flag meanwhile")
    explained = page.get_by_text("of this run's own test images")
    assert measuring.count() + explained.count() >= 1
    # the probabilities: the one chart in view that names the classes (once the run's calibration is measured,
    # its two plots sit earlier in the page, in the collapsed expander, hidden)
    probabilities = page.locator('[data-testid="stPlotlyChart"]').filter(visible=True, has_text=SAMPLE.parent.name)
    probabilities.first.wait_for(timeout=60_000)
    screenshot(page, "classify.png")
    img = overlay.first.locator("img")
    assert img.evaluate("el => el.complete && el.naturalWidth") >= 28 * 8
    assert page.get_by_text("As the model sees it").count() >= 1
    assert page.get_by_text("Next most likely:").count() >= 1
    no_exception(page)
    # the page reruns when the statistics measured meanwhile arrive: wait for the button, don't count at once
    download = page.get_by_role("button", name="Download the overlay (PNG)")
    download.wait_for(timeout=60_000)
    assert download.count() == 1
