"""How fast the Results page renders over 1,000 runs (target: under 1 s).

Builds a temporary artifacts folder with N synthetic runs written through the real run store
(`RunStore.writer(config)` ... `publish(metrics, save_model)`, so each has config.json, history.csv,
metrics.json in the real layout and an index row; the model file is a tiny placeholder, as the page never
loads a model), then renders pages/results.py headless with Streamlit's AppTest: one warm-up render, then
`--repeats` timed renders, each a fresh page open. It also times one render right after the index changed
(a run tagged), when the page must re-read the index.

    python benchmarks/results_page.py                  # 1,000 runs, 5 timed renders
    python benchmarks/results_page.py --runs 200 --repeats 3
    python benchmarks/results_page.py --keep /tmp/bench-artifacts   # keep the folder to open it in the app
    python benchmarks/results_page.py --empty          # first render of Results and Confusions with no runs

`--empty` times what a new user meets: a fresh Python process opening Results and Confusions over an empty
store (imports included), against the Home page opened the same way in the same run (the baseline), 3 times
each, and prints the medians and their ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import numpy as np

from core.access.roles import LOCAL_ADMIN
from core.config import RunConfig
from core.data.registry import label_names
from core.evaluation.metrics import evaluate
from core.store.runs import RunStore

TARGET_SECONDS = 1.0


def fake_metrics(rng: np.random.Generator, accuracy: float, n: int = 400) -> dict:
    """metrics.json content in the real layout, from synthetic predictions right on about `accuracy`."""
    labels = label_names()
    k = len(labels)

    def split(acc: float) -> dict:
        y = rng.integers(0, k, n)
        right = rng.random(n) < acc
        pred = np.where(right, y, (y + rng.integers(1, k, n)) % k)
        probs = rng.dirichlet(np.ones(k), n) * 0.3
        probs[np.arange(n), pred] += 0.7
        return evaluate(y, probs, labels).to_dict()

    return {"val": split(accuracy), "test": split(accuracy - 0.01), "best_epoch": int(rng.integers(3, 11)),
            "epochs_run": 10, "train_seconds": float(rng.uniform(60, 3600)),
            "train_images_per_second": float(rng.uniform(50, 800))}


def history(rng: np.random.Generator, epochs: int = 10) -> list[dict]:
    rows, loss = [], 2.0
    for epoch in range(1, epochs + 1):
        loss *= rng.uniform(0.6, 0.95)
        acc = 1 - loss / 2.2
        rows.append({"epoch": epoch, "loss": loss, "accuracy": acc, "auc": 0.9 + acc / 11,
                     "val_loss": loss * 1.1, "val_accuracy": acc - 0.01, "val_auc": 0.9 + acc / 12,
                     "train_seconds": 30.0})
    return rows


def build(artifacts: Path, n_runs: int, seed: int = 0) -> float:
    """Write `n_runs` synthetic runs through the real RunStore; returns seconds taken."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    store = RunStore(artifacts / "runs")
    archs, sizes, batches = ("resnet18", "resnet50", "resnet101"), (28, 64, 128, 224), (16, 32)
    optimizers = (("adam", 1e-4), ("adam", 1e-3), ("rmsprop", 1e-4), ("sgd", 1e-3))
    for i in range(n_runs):
        arch = archs[i % 3]
        optimizer, lr = optimizers[(i // 3) % 4]
        config = RunConfig(arch=arch, weights="none" if arch == "resnet18" else "imagenet",
                           size=sizes[(i // 12) % 4], batch_size=batches[(i // 48) % 2], optimizer=optimizer,
                           lr=lr, dropout=(0.3, 0.5)[(i // 96) % 2], seed=(i // 192) % 5, epochs=10,
                           tags=("bench",) + (("study",) if i % 7 == 0 else ()))
        writer = store.writer(config)
        writer.write_history(history(rng))
        writer.publish(fake_metrics(rng, float(rng.uniform(0.80, 0.98))),
                       lambda path: Path(path).write_bytes(b"placeholder: the results page never loads models"))
    return time.perf_counter() - start


def render_seconds(page: str) -> float:
    from streamlit.testing.v1 import AppTest

    start = time.perf_counter()
    at = AppTest.from_file(page, default_timeout=120).run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"the page raised: {[e.value for e in at.exception]}")
    return elapsed


FIRST_RENDER = """
import sys, time
start = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
assert not at.exception, [e.value for e in at.exception]
print(time.perf_counter() - start)
"""


def first_render_seconds(page: str, artifacts: Path) -> float:
    """A page's first render in a fresh process over `artifacts` (imports included), as a new user meets it."""
    out = subprocess.run([sys.executable, "-c", FIRST_RENDER, page], capture_output=True, text=True, check=True,
                         cwd=PROJECT, env={**os.environ, "CELLSCOPE_ARTIFACTS": str(artifacts)})
    return float(out.stdout.strip().splitlines()[-1])


def empty_states(repeats: int = 3) -> None:
    with tempfile.TemporaryDirectory(prefix="cellscope-empty-") as folder:
        pages = {name: str(PROJECT / "pages" / f"{name}.py") for name in ("home", "results", "confusion")}
        medians = {name: statistics.median(first_render_seconds(path, Path(folder)) for _ in range(repeats))
                   for name, path in pages.items()}
    print(f"First render over an empty store, fresh process (median of {repeats}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}):")
    for name, seconds in medians.items():
        print(f"  {name:<10} {seconds:6.2f} s   {seconds / medians['home']:5.2f} x Home (baseline)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the runs here and keep them (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--empty", action="store_true", help="time the first render of empty pages instead")
    args = parser.parse_args()
    if args.empty:
        empty_states()
        return

    artifacts = args.keep or Path(tempfile.mkdtemp(prefix="cellscope-bench-"))
    os.environ["CELLSCOPE_ARTIFACTS"] = str(artifacts)
    page = str(PROJECT / "pages" / "results.py")
    try:
        store = RunStore(artifacts / "runs")
        have = store.count()
        build_s = build(artifacts, args.runs - have) if have < args.runs else 0.0
        print(f"{store.count()} runs in {artifacts} (built in {build_s:.1f}s)", file=sys.stderr)
        load = os.getloadavg()[0]
        warmup = render_seconds(page)
        times = [render_seconds(page) for _ in range(args.repeats)]
        # an index change (a run tagged) makes the next render re-read the index
        store.tag_runs([store.list_runs()[0]["run_id"]], LOCAL_ADMIN, add=["touched"])
        after_change = render_seconds(page)
        median = statistics.median(times)
        verdict = "meets" if median < TARGET_SECONDS else "MISSES"
        print(f"Results page over {store.count()} runs (AppTest, {os.cpu_count()} CPUs, load {load:.1f}):")
        print(f"  warm-up render (imports, first index read): {warmup:.3f} s")
        print(f"  median of {args.repeats} renders:                  {median:.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}) -> {verdict} the {TARGET_SECONDS:.0f} s target")
        print(f"  render after the index changed:             {after_change:.3f} s")
        if args.json:
            args.json.write_text(json.dumps({"runs": store.count(), "warmup_s": warmup, "renders_s": times,
                                             "median_s": median, "after_index_change_s": after_change,
                                             "target_s": TARGET_SECONDS, "load_average": load}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(artifacts, ignore_errors=True)


if __name__ == "__main__":
    main()
