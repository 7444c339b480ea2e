"""Many people on one server: N browser sessions classify and browse results while two jobs train.

What a teacher's class does to a shared server, in a real Chromium (Debian's, as the browser tests use):

1. A private artifacts folder gets one small trained run (`python -m core train`, 28 px, a subset), then two
   training jobs are queued with two slots (`python -m core jobs --max-concurrent 2`, `python -m core
   submit`) and run by `python -m core worker`, so both train for the whole test.
2. `streamlit run app.py` serves that folder on 127.0.0.1 (login off: one machine; the sessions are what is
   measured, not the login).
3. `--sessions` browser contexts (separate Streamlit sessions, as separate people) each repeat, for
   `--rounds` rounds: open Results from the sidebar and wait for its runs table; open Classify, upload a real
   CellaVision image and wait for the prediction. Each step's latency is from the click (or the upload) to
   the page having finished running with its content on screen.

One session alone does the same first, as the baseline measured in the same run (the jobs training too).
It prints p50 / p95 / max latency per step and overall for both, the ratio, the jobs' progress, and the
errors: a Streamlit
exception or error box, a step that timed out, or a session that could not start. It exits 1 when any error
occurred. A benchmark, not a test: the figures depend on the machine.

    python benchmarks/load_test.py                    # 20 sessions, 3 rounds, two jobs training
    python benchmarks/load_test.py --sessions 5 --rounds 2 --no-jobs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "data"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STEP_TIMEOUT_MS = 180_000


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, step: str, seconds: float) -> None:
        self.latencies.setdefault(step, []).append(seconds)


def cli(*args: str, runs_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args, "--runs-dir", str(runs_dir)], cwd=PROJECT,
                          capture_output=True, text=True, check=check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"streamlit exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"streamlit did not answer on {url} within {timeout} s")


async def settled(page) -> None:
    """Streamlit has finished running the page's script (its running indicator is gone)."""
    await page.wait_for_timeout(300)
    await page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=STEP_TIMEOUT_MS)


async def page_errors(page) -> list[str]:
    boxes = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    return [(await boxes.nth(i).inner_text())[:300] for i in range(await boxes.count())]


async def timed(tally: Tally, who: int, step: str, page, action) -> None:
    start = time.perf_counter()
    try:
        await action()
        await settled(page)
    except Exception as e:  # a timeout or a closed page: an error of this step, the session goes on
        tally.errors.append(f"session {who} {step}: {e.__class__.__name__}: {str(e).splitlines()[0][:200]}")
        return
    tally.add(step, time.perf_counter() - start)
    for text in await page_errors(page):
        tally.errors.append(f"session {who} {step}: error box: {text}")


async def session(browser, url: str, who: int, rounds: int, image: Path, tally: Tally) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(STEP_TIMEOUT_MS)  # every action, clicks included (Playwright's default: 30 s)
    page = await context.new_page()
    try:
        async def open_home():
            await page.goto(url, timeout=STEP_TIMEOUT_MS)
            await page.get_by_role("heading", name="CellScope").wait_for(timeout=STEP_TIMEOUT_MS)

        await timed(tally, who, "open the app", page, open_home)
        nav = page.locator('[data-testid="stSidebarNav"]')
        for _ in range(rounds):
            async def results():
                await nav.get_by_role("link", name="Results").click()
                await page.get_by_role("heading", name="Results").wait_for(timeout=STEP_TIMEOUT_MS)
                await page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=STEP_TIMEOUT_MS)

            async def classify():
                await nav.get_by_role("link", name="Classify").click()
                await page.get_by_role("heading", name="Classify").wait_for(timeout=STEP_TIMEOUT_MS)
                await page.locator('input[type="file"]').first.set_input_files(str(image), timeout=STEP_TIMEOUT_MS)
                await page.get_by_text("Prediction").first.wait_for(timeout=STEP_TIMEOUT_MS)

            await timed(tally, who, "browse results", page, results)
            await timed(tally, who, "classify an upload", page, classify)
    except Exception as e:
        tally.errors.append(f"session {who}: {e.__class__.__name__}: {str(e).splitlines()[0][:200]}")
    finally:
        await context.close()


async def drive(url: str, sessions: int, rounds: int, image: Path) -> tuple[Tally, float]:
    from playwright.async_api import async_playwright  # only this benchmark needs it

    tally = Tally()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        start = time.perf_counter()
        try:
            await asyncio.gather(*(session(browser, url, i, rounds, image, tally) for i in range(sessions)))
        finally:
            await browser.close()
    return tally, time.perf_counter() - start


def active_jobs(runs_dir: Path) -> list[dict]:
    listed = cli("jobs", "--json", runs_dir=runs_dir, check=False).stdout or "[]"
    return [j for j in json.loads(listed) if j["status"] in ("queued", "running")]


def stop_jobs(runs_dir: Path, timeout: float = 120) -> None:
    """Cancel the jobs and wait until their processes are gone (the folder is deleted after)."""
    for job in active_jobs(runs_dir):
        cli("jobs", "--cancel", str(job["id"]), runs_dir=runs_dir, check=False)
    deadline = time.monotonic() + timeout
    while active_jobs(runs_dir) and time.monotonic() < deadline:
        time.sleep(2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(tally: Tally, wall: float, jobs: list[dict], sessions: int, rounds: int) -> None:
    print(f"\n{sessions} sessions x {rounds} rounds in {wall:.0f} s")
    print(f"{'step':<22}{'n':>5}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    every = []
    for step, values in tally.latencies.items():
        every += values
        print(f"{step:<22}{len(values):>5}{statistics.median(values):>9.2f}{percentile(values, 0.95):>9.2f}"
              f"{max(values):>9.2f}")
    if every:
        print(f"{'all steps':<22}{len(every):>5}{statistics.median(every):>9.2f}{percentile(every, 0.95):>9.2f}"
              f"{max(every):>9.2f}")
    for job in jobs:
        print(f"job {job['id']}: {job['status']}, {100 * job['fraction']:.0f}% at the end")
    print(f"errors: {len(tally.errors)}")
    for line in tally.errors[:20]:
        print("  " + line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=SHARED / "pbc_bloodmnist_28.npz")
    ap.add_argument("--image", type=Path, default=min((SHARED / "pbc_samples" / "monocyte").glob("*.jpg")))
    ap.add_argument("--no-jobs", action="store_true", help="measure the sessions without jobs training")
    ap.add_argument("--job-epochs", type=int, default=30, help="long enough to train for the whole test")
    args = ap.parse_args(argv)
    if not CHROMIUM.is_file():
        raise SystemExit(f"{CHROMIUM} not found (scripts/install-chromium.sh)")
    with tempfile.TemporaryDirectory(prefix="cellscope-load-") as tmp:
        runs_dir = Path(tmp) / "artifacts" / "runs"
        print("training the run the sessions classify with ...", flush=True)
        cli("train", "--data", str(args.data), "--arch", "compactresnet", "--epochs", "1", "--limit-train", "512",
            "--seed", "0", runs_dir=runs_dir)
        worker = None
        if not args.no_jobs:
            cli("jobs", "--max-concurrent", "2", runs_dir=runs_dir)
            cli("submit", "--data", str(args.data), "--arch", "compactresnet", "--epochs", str(args.job_epochs),
                "--repeats", "2", "--no-start", runs_dir=runs_dir)
            worker = subprocess.Popen([sys.executable, "-m", "core", "worker", "--runs-dir", str(runs_dir)],
                                      cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CELLSCOPE_ARTIFACTS": str(runs_dir.parent)}
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],
            cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(url, server)
            if worker is not None:
                time.sleep(20)  # both jobs past start-up, training
            print(f"baseline: 1 session on {url} ...", flush=True)
            base, base_wall = asyncio.run(drive(url, 1, args.rounds, args.image))
            print(f"{args.sessions} sessions on {url} ...", flush=True)
            tally, wall = asyncio.run(drive(url, args.sessions, args.rounds, args.image))
            jobs = json.loads(cli("jobs", "--json", runs_dir=runs_dir).stdout) if worker else []
        finally:
            server.terminate()
            if worker is not None:
                worker.terminate()
                stop_jobs(runs_dir)
            server.wait(timeout=30)
    report(base, base_wall, [], 1, args.rounds)
    report(tally, wall, jobs, args.sessions, args.rounds)
    every = [v for values in tally.latencies.values() for v in values]
    alone = [v for values in base.latencies.values() for v in values]
    if every and alone:
        p50 = statistics.median(every) / statistics.median(alone)
        p95 = percentile(every, 0.95) / percentile(alone, 0.95)
        print(f"\n{args.sessions} sessions against 1, all steps: p50 x{p50:.1f}, p95 x{p95:.1f}")
    return 1 if tally.errors or base.errors else 0


if __name__ == "__main__":
    sys.exit(main())
