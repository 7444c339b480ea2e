"""The Train page in a real headless Chromium: `streamlit run app.py`, pick a file, see every form error at once,
launch a small real training job, cancel a second one after confirming, watch the first one's card name each
phase (training, validating, testing) with the time left, and follow its link to its run on Results."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser_support import chromium_page, no_exception, screenshot, streamlit_app
from conftest import NPZ_28, write_subset

from core.access.roles import LOCAL_ADMIN
from core.jobs.queue import ACTIVE, JobQueue
from core.store.runs import RunStore

JOB_TIMEOUT = 600  # TensorFlow start-up, 2 tiny epochs, validation and test passes and precomputing, busy 2 cores
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


def open_train(page, url: str) -> None:
    """In through the front door: on a fresh server a first visit straight to /train would run the page without
    app.py (Streamlit's legacy pages/ folder mode until app.py has run once)."""
    page.goto(url, timeout=UI_TIMEOUT)
    page.get_by_role("heading", name="CellScope").wait_for(timeout=UI_TIMEOUT)
    page.locator('[data-testid="stSidebarNavLink"][href$="/train"]').click()
    page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=UI_TIMEOUT)
    assert "/train" in page.url


def use_file(page, npz: Path) -> None:
    """Data: your own .npz file, checked, with its class counts."""
    page.get_by_text("Your own .npz file").click()
    path_input = page.locator(".st-key-data_path input")
    path_input.wait_for(timeout=UI_TIMEOUT)
    path_input.fill(str(npz))
    path_input.press("Enter")
    page.get_by_text(re.compile(r"28 px · \d+ train")).wait_for(timeout=UI_TIMEOUT)


def add(page, key: str, option: str) -> None:
    """Add an option to the multiselect with widget key `key`, typed to filter it: the list is drawn a screenful
    at a time, and the first press after a rerun may only focus the box."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    box, chip = page.locator(f".st-key-{key} input"), page.locator(f".st-key-{key}").get_by_text(option, exact=True)
    for _ in range(10):
        if chip.count():
            break
        try:
            box.click(timeout=2000)
            box.fill(option, timeout=2000)
            page.get_by_role("option", name=option, exact=True).click(timeout=2000)
        except PlaywrightTimeoutError:  # the list redrawn under the pointer: open it again
            page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    chip.wait_for(timeout=UI_TIMEOUT)


def card_text(page, job_id: int) -> str:
    bar = page.locator(f".st-key-job_{job_id} [data-testid='stProgress']")
    try:
        return bar.first.inner_text(timeout=1000) if bar.count() else ""
    except Exception:  # redrawn between count and read
        return ""


@pytest.fixture
def phases_npz(tmp_path) -> Path:
    """Real 28 px images with validation and test splits large enough for their passes to be seen on the card
    (the shared tiny file's 128 go by in a blink), yet small enough to keep precomputing short."""
    return write_subset(NPZ_28, tmp_path / "phases28.npz", 512, 600, 1200)


def test_launch_watch_the_phases_open_the_run_and_cancel_with_confirmation(server, phases_npz):
    """One real job (64 training images, 600 validation and 1,200 test images at 28 px, through the
    full-resolution ResNet-18 stem), from the form to its run on Results."""
    from core.access.roles import LOCAL_ADMIN as ADMIN

    url, queue = server
    with chromium_page() as page:
        open_train(page, url)

        # 0. a study preset previews its jobs and their duration before anything is launched
        choose(page, "preset_choice", "Study Table 12: architecture x resolution x batch size")
        page.get_by_role("button", name="Load preset").click()
        page.get_by_role("button", name="Launch 12 jobs").wait_for(timeout=UI_TIMEOUT)
        page.get_by_text(re.compile(r"12 jobs · about [\d.]+ (h|days) of training in total")).wait_for(
            timeout=UI_TIMEOUT)
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=UI_TIMEOUT)
        screenshot(page, "train-preset.png")
        page.get_by_role("button", name="Clear sweep").click()
        page.get_by_role("button", name="Launch 1 job").wait_for(timeout=UI_TIMEOUT)
        assert queue.list() == []

        # 1. data: the real 28 px file, checked, with its class counts
        use_file(page, phases_npz)

        # 2. a small configuration
        choose(page, "f_arch", "ResNet-18")
        choose(page, "f_weights", "none (from scratch)")
        choose(page, "f_resnet18_stem", "full-resolution 3x3/1")  # slower passes: phases long enough to see
        for key, value in (("f_epochs", "2"), ("f_limit_train", "64"), ("f_batch_size", "32")):
            field = page.locator(f".st-key-{key} input")
            field.fill(value)
            field.press("Tab")
        # two invalid values: both refused next to their fields at once, no button pressed
        for key, value in (("f_dropout", "1"), ("f_lr", "0")):
            field = page.locator(f".st-key-{key} input")
            field.fill(value)
            field.press("Tab")
        page.get_by_text("must be in [0, 1)").wait_for(timeout=UI_TIMEOUT)
        page.get_by_text("must be in (0, 1]").wait_for(timeout=UI_TIMEOUT)
        page.get_by_text("Fix the 2 settings marked in red").wait_for(timeout=UI_TIMEOUT)
        screenshot(page, "train-invalid.png")
        # correcting one removes its message at once; the other stays until corrected
        page.locator(".st-key-f_dropout input").fill("0.3")
        page.locator(".st-key-f_dropout input").press("Tab")
        page.get_by_text("must be in [0, 1)").wait_for(state="detached", timeout=UI_TIMEOUT)
        assert page.get_by_text("must be in (0, 1]").count() == 1
        page.locator(".st-key-f_lr input").fill("0.001")
        page.locator(".st-key-f_lr input").press("Tab")
        page.get_by_text(re.compile(r"1 job · about")).wait_for(timeout=UI_TIMEOUT)
        assert page.get_by_text("must be in (0, 1]").count() == 0
        screenshot(page, "train-settings.png")
        no_exception(page)

        # 3. launch: the page switches to the Jobs tab and the job starts
        page.get_by_role("button", name=re.compile(r"Launch 1 job")).click()
        page.get_by_text(re.compile(r"Queued 1 job")).wait_for(timeout=UI_TIMEOUT)
        page.locator(".st-key-job_1").wait_for(timeout=UI_TIMEOUT)
        assert len(queue.list()) == 1

        # 4. a second job waits for the slot; cancelling it asks first
        waiting = queue.submit(queue.get(1).config.replace(seed=9), ADMIN)
        page.locator(f".st-key-ask_cancel_{waiting} button").first.click(timeout=UI_TIMEOUT)
        page.get_by_text(f"Cancel job {waiting}?").wait_for(timeout=UI_TIMEOUT)
        screenshot(page, "train-cancel-confirm.png")
        page.locator(f".st-key-cancel_{waiting} button").first.click(timeout=UI_TIMEOUT)
        page.locator(f".st-key-job_{waiting}").get_by_text("cancelled").first.wait_for(timeout=UI_TIMEOUT)
        assert queue.get(waiting).status == "cancelled"

        # 5. the card names each phase as it happens, with the time left
        seen: dict[str, str] = {}
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline and queue.get(1).status in ACTIVE:
            text = card_text(page, 1)
            phase = text.split(" · ", 1)[0]
            if phase and phase not in seen:
                seen[phase] = text
                screenshot(page, f"train-phase-{phase.lower().split()[0]}.png")
            page.wait_for_timeout(200)
        job = queue.get(1)
        assert job.status == "succeeded", job.error or job.log_tail
        left = r"(about .+|a few seconds) left"
        assert re.fullmatch(rf"Validating · epoch \d/2 · (.+ · )?{left}", seen.get("Validating", "")), seen
        assert re.fullmatch(rf"Testing · ([\d,]+ of )?[\d,]+ images · {left}", seen.get("Testing", "")), seen
        assert re.fullmatch(rf"Training · epoch \d/2 · (batch \d/2 · .+ · )?{left}", seen.get("Training", "")), seen

        # 6. the finished card: its score, and one click to its run on Results
        card = page.locator(".st-key-job_1")
        card.get_by_text("Validation accuracy").wait_for(timeout=UI_TIMEOUT)
        screenshot(page, "train-finished.png")
        no_exception(page)
        card.get_by_role("link", name="Open on Results").click()
        page.get_by_role("heading", name="Results", exact=True).wait_for(timeout=UI_TIMEOUT)
        assert f"run={job.run_id}" in page.url and "/results" in page.url
        # the run is shown (its id on screen: not only in the table's hidden accessibility cells)
        page.locator(f"text={job.run_id} >> visible=true").first.wait_for(timeout=UI_TIMEOUT)
        page.wait_for_timeout(1000)
        screenshot(page, "train-to-results.png")
        no_exception(page)


def test_search_mode_previews_its_budget(server, tiny_npz):
    """The Search mode in a real browser, nothing launched: two fields with their ranges, the preview of what
    the search will run, and its budget in words, which the refund box switches between a budget of full trials
    and an exact count."""
    url, queue = server
    with chromium_page() as page:
        open_train(page, url)
        use_file(page, tiny_npz)
        choose(page, "f_arch", "Compact ResNet")

        page.get_by_text("Search: let Optuna choose values within ranges").click()
        for option in ("Learning rate (lr)", "Dropout (dropout)"):
            add(page, "srch_fields", option)
        for key, value in (("srch_lr", "1e-4:1e-2:log"), ("srch_dropout", "0:0.5")):
            field = page.locator(f".st-key-{key} input")
            field.wait_for(timeout=UI_TIMEOUT)
            for _ in range(10):  # a rerun from the field before may redraw this one under the typing: again
                field.fill(value)
                field.press("Enter")
                page.wait_for_timeout(1000)
                if field.input_value() == value:
                    break
        # the preview appears once both ranges are in (the default budget), then follows the trials
        page.get_by_text(re.compile(r"A budget of 20 full trials of about")).wait_for(timeout=UI_TIMEOUT)
        trials = page.locator(".st-key-srch_trials input")
        trials.fill("8")
        trials.press("Tab")
        page.get_by_text(re.compile(r"A budget of 8 full trials of about")).wait_for(timeout=UI_TIMEOUT)
        page.get_by_text("pruned trials' unused epochs run further trials in that time").wait_for(timeout=UI_TIMEOUT)
        page.get_by_text("The first 4 trials spread evenly over the ranges", exact=False).wait_for(timeout=UI_TIMEOUT)
        assert page.get_by_role("button", name="Launch search").is_enabled()
        page.locator(".st-key-srch_refund").scroll_into_view_if_needed()
        screenshot(page, "train-search.png")
        page.locator(".st-key-srch_refund label").click()
        page.get_by_text(re.compile(r"Up to 8 trials of about")).wait_for(timeout=UI_TIMEOUT)
        no_exception(page)
    assert queue.list() == []
