"""The Train page in a real headless Chromium: `streamlit run app.py`, pick a file, launch a tiny real training
job, watch its progress bar move and its curves appear, then cancel it."""

from __future__ import annotations

import re
import time

import pytest
from browser_support import chromium_page, no_exception, screenshot, streamlit_app

from core.access.roles import LOCAL_ADMIN
from core.jobs.queue import ACTIVE, JobQueue
from core.store.runs import RunStore

JOB_TIMEOUT = 300  # TensorFlow start-up plus a few tiny epochs on a busy 2-core machine
UI_TIMEOUT = 60_000  # ms

pytestmark = pytest.mark.browser


@pytest.fixture
def server(tmp_path):
    """`streamlit run app.py` on a free port over an empty run store and an empty data folder. On teardown
    every job still queued or running is cancelled (its process group gets SIGTERM) and the server stops."""
    artifacts = tmp_path / "artifacts"
    empty_data = tmp_path / "no-data"
    empty_data.mkdir()
    with streamlit_app(tmp_path / "streamlit.log", CELLSCOPE_ARTIFACTS=str(artifacts),
                       CELLSCOPE_DATA_DIR=str(empty_data)) as url:
        queue = JobQueue(RunStore(artifacts / "runs"))
        try:
            yield url, queue
        finally:
            for job in queue.list(ACTIVE):
                try:
                    queue.cancel(job.id, LOCAL_ADMIN)
                except Exception:
                    pass


def choose(page, key: str, option: str) -> None:
    """Pick an option of the selectbox with widget key `key`."""
    combo = page.locator(f".st-key-{key} input[role='combobox']")
    for _ in range(10):  # the first press after a rerun may only focus the box
        if combo.get_attribute("aria-expanded") == "true":
            break
        page.locator(f".st-key-{key} button[aria-label='Open']").click()
        page.wait_for_timeout(300)
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function(f"() => document.querySelector(\".st-key-{key} input[role='combobox']\").value"
                           f" === {option!r}")


def progress_value(page) -> float | None:
    bar = page.locator('.st-key-job_1 [role="progressbar"]')
    if bar.count() == 0:
        return None
    value = bar.first.get_attribute("aria-valuenow")
    return float(value) if value is not None else None


def test_launch_watch_and_cancel_a_job(server, tiny_npz):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    url, queue = server
    with chromium_page() as page:
        # In through the front door: on a fresh server a first visit straight to /train would run the
        # page without app.py (Streamlit's legacy pages/ folder mode until app.py has run once).
        page.goto(url, timeout=UI_TIMEOUT)
        page.get_by_role("heading", name="CellScope").wait_for(timeout=UI_TIMEOUT)
        page.locator('[data-testid="stSidebarNavLink"][href$="/train"]').click()
        page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=UI_TIMEOUT)
        assert "/train" in page.url

        # 0. a study preset previews its jobs and their duration before anything is launched
        choose(page, "preset_choice", "Study Table 12: architecture x resolution x batch size")
        page.get_by_role("button", name="Load preset").click()
        page.get_by_role("button", name="Launch 12 jobs").wait_for(timeout=UI_TIMEOUT)
        page.get_by_text(re.compile(r"12 jobs · about [\d.]+ (h|days) of training in total")).wait_for(
            timeout=UI_TIMEOUT)
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=UI_TIMEOUT)
        page.wait_for_timeout(1000)
        screenshot(page, "train-preset.png")
        page.get_by_role("button", name="Clear sweep").click()
        page.get_by_role("button", name="Launch 1 job").wait_for(timeout=UI_TIMEOUT)
        assert queue.list() == []

        # 1. data: a custom npz, checked, with its class counts
        page.get_by_text("Your own .npz file").click()
        path_input = page.locator(".st-key-data_path input")
        path_input.wait_for(timeout=UI_TIMEOUT)
        path_input.fill(str(tiny_npz))
        path_input.press("Enter")
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=UI_TIMEOUT)
        page.get_by_text(re.compile(r"28 px · \d+ train")).wait_for(timeout=UI_TIMEOUT)

        # 2. a tiny configuration
        choose(page, "f_arch", "ResNet-18")
        choose(page, "f_weights", "none (from scratch)")
        for key, value in (("f_epochs", "3"), ("f_limit_train", "128"), ("f_batch_size", "16"),
                           ("f_lr", "0.001")):
            field = page.locator(f".st-key-{key} input")
            field.fill(value)
            field.press("Tab")
        # an invalid value is refused next to its field
        field = page.locator(".st-key-f_dropout input")
        field.fill("1")
        field.press("Tab")
        page.get_by_role("button", name="Update preview").click()
        page.get_by_text("must be in [0, 1)").wait_for(timeout=UI_TIMEOUT)
        page.wait_for_timeout(500)
        screenshot(page, "train-invalid.png")
        field.fill("0.3")
        field.press("Tab")
        page.get_by_role("button", name="Update preview").click()
        page.get_by_text(re.compile(r"1 job · about")).wait_for(timeout=UI_TIMEOUT)
        assert page.get_by_text("must be in [0, 1)").count() == 0
        page.wait_for_timeout(1000)
        screenshot(page, "train-settings.png")
        no_exception(page)

        # 3. launch: the page switches to the Jobs tab and the job starts
        page.get_by_role("button", name=re.compile(r"Launch 1 job")).click()
        page.get_by_text(re.compile(r"Queued 1 job")).wait_for(timeout=UI_TIMEOUT)
        page.locator(".st-key-job_1").wait_for(timeout=UI_TIMEOUT)
        assert len(queue.list()) == 1
        screenshot(page, "train-launched.png")

        # 4. the progress bar moves (the live view redraws itself every 2 s)
        readings: list[float] = []
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            value = progress_value(page)
            job = queue.get(1)
            if value is not None and value > 0 and (not readings or value != readings[-1]):
                readings.append(value)
                if len(readings) == 1:
                    screenshot(page, "train-progress-1.png")
            if len(readings) >= 2 or job.status not in ACTIVE:
                break
            page.wait_for_timeout(500)
        assert len(readings) >= 2, f"progress did not move: {readings}; job: {queue.get(1)}"
        assert readings[1] > readings[0], readings
        text = page.locator(".st-key-job_1 [data-testid='stProgress']").inner_text()
        assert re.search(r"Epoch \d/3 · batch \d+/\d+", text), text
        screenshot(page, "train-progress-2.png")

        # 5. the learning curves appear after the first epoch
        curves = page.locator(".st-key-job_1 [data-testid='stPlotlyChart']")
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline and curves.count() == 0 and queue.get(1).status in ACTIVE:
            page.wait_for_timeout(1000)
        assert queue.get(1).status in ("running", "succeeded"), queue.get(1)
        if queue.get(1).status == "running":
            curves.first.wait_for(timeout=UI_TIMEOUT)
            # let a second epoch land so the curves are lines, not dots
            deadline = time.monotonic() + JOB_TIMEOUT
            while (time.monotonic() < deadline and queue.get(1).status == "running"
                   and len(queue.history(queue.get(1))) < 2):
                page.wait_for_timeout(1000)
            page.wait_for_timeout(2500)  # the next redraw of the live view
            screenshot(page, "train-curves.png")

        if queue.get(1).status == "running":
            # 6. cancel it: the job stops, keeps its epochs and offers to resume
            try:
                page.locator(".st-key-cancel_1 button").click(timeout=15_000)
            except PlaywrightTimeout:  # it finished in the meantime
                assert queue.get(1).status == "succeeded", queue.get(1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and queue.get(1).status in ACTIVE:
                time.sleep(0.5)
            job = queue.get(1)
            if job.status == "cancelled":
                page.locator(".st-key-resume_1").wait_for(timeout=UI_TIMEOUT)
                assert "cancelled" in page.locator(".st-key-job_1").inner_text()
            assert job.status in ("cancelled", "succeeded"), job
        page.wait_for_timeout(2500)
        screenshot(page, "train-end.png")
        no_exception(page)
