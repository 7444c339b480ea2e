"""Time to accuracy: the study's from-scratch recipe against each recipe preset, for the same wall-clock budget.

Entries (one seed each, run one after another on an otherwise idle machine):
- study: ResNet-50 from scratch at 64 px with the study's pipeline (ImageDataGenerator, images / 255),
  Adam 1e-4, batch 32, dropout 0.3 (benchmarks/study_recipe.py), trained until the budget runs out; whole
  epochs are validated and the best one is kept and tested once;
- each recipe preset, exactly as a user runs it: `python -m core train --preset NAME --data FILE --seed S`
  in its own process; its history gives each epoch's training and validation seconds.

The budget counts training and validation time from the first step (not the start-up and data loading a
process needs before it, the same for all). A preset that needs more than the budget is reported as such;
one that needs less simply finishes. Prints, per entry: epochs done, the best validation accuracy, the time
at which validation accuracy first reached 0.95 (if it did), the test accuracy of the kept epoch and the time
used.

    python benchmarks/time_to_accuracy.py                         # 20 min budget, seed 0, all recipes
    python benchmarks/time_to_accuracy.py --budget-minutes 5 --entries study quick-28
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from core.jobs.presets import PRESETS, RECIPE, get

SHARED_DATA = PROJECT.parent / "shared" / "data"
TARGET = 0.95
STUDY = "study"
RECIPES = [p.key for p in PRESETS if p.kind == RECIPE]


def data_file(size: int) -> str:
    return os.path.relpath(SHARED_DATA / f"pbc_bloodmnist_{size}.npz", PROJECT)


def time_to(rows: list[dict], target: float) -> float | None:
    """Seconds of training and validation until the first epoch whose validation accuracy reached `target`."""
    elapsed = 0.0
    for r in rows:
        elapsed += float(r["train_seconds"]) + float(r["val_seconds"])
        if float(r["val_accuracy"]) >= target:
            return elapsed
    return None


def run_study(budget: float, seed: int) -> dict:
    from study_recipe import STUDY_CONFIG, train_within

    from core.data.dataset import load_npz

    dataset = load_npz(PROJECT / data_file(64))
    start = time.perf_counter()
    run = train_within(dataset, budget, seed)
    epochs = run.epochs
    reached = next((e["elapsed"] for e in epochs if e["val_accuracy"] >= TARGET), None)
    return {"entry": STUDY, "settings": {**STUDY_CONFIG, "size": 64, "pipeline": "ImageDataGenerator, /255"},
            "epochs": len(epochs), "best_val_accuracy": max((e["val_accuracy"] for e in epochs), default=None),
            "seconds_to_target": reached, "test_accuracy": run.test_accuracy, "best_epoch": run.best_epoch,
            "seconds_used": run.seconds_used, "within_budget": True,
            "command_seconds": time.perf_counter() - start}


def run_preset(key: str, budget: float, seed: int) -> dict:
    preset = get(key)
    size = preset.base["size"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "core", "train", "--preset", key, "--data", data_file(size), "--seed", str(seed),
               "--runs-dir", str(Path(tmp) / "runs")]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True)
        command_seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{key} failed:\n{proc.stderr[-3000:]}")
        run_dir = Path(proc.stdout.strip().splitlines()[-1])
        with open(run_dir / "history.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        metrics = json.loads((run_dir / "metrics.json").read_text())
    used = sum(float(r["train_seconds"]) + float(r["val_seconds"]) for r in rows)
    return {"entry": key, "settings": dict(preset.base), "epochs": len(rows),
            "best_val_accuracy": max(float(r["val_accuracy"]) for r in rows),
            "seconds_to_target": time_to(rows, TARGET), "test_accuracy": metrics["test"]["accuracy"],
            "best_epoch": metrics["best_epoch"], "seconds_used": used, "within_budget": used <= budget,
            "command_seconds": command_seconds}


def fmt_seconds(s: float | None) -> str:
    return "not reached" if s is None else f"{s / 60:.1f} min"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-minutes", type=float, default=20.0)
    ap.add_argument("--entries", nargs="+", default=[STUDY, *RECIPES], choices=[STUDY, *RECIPES])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows to this file")
    args = ap.parse_args()
    budget = args.budget_minutes * 60
    print(f"budget {args.budget_minutes:g} min of training and validation per entry, seed {args.seed}; "
          f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    rows = []
    for entry in args.entries:
        print(f"running {entry} ...", file=sys.stderr, flush=True)
        rows.append(run_study(budget, args.seed) if entry == STUDY else run_preset(entry, budget, args.seed))
    print()
    header = (f"{'entry':<11} {'epochs':>6} {'best val acc':>12} {f'time to {TARGET} val':>16} "
              f"{'test acc (kept epoch)':>21} {'time used':>10} {'whole command':>14}")
    print(header)
    print("-" * len(header))
    for r in rows:
        over = "" if r["within_budget"] else " (over budget)"
        best = "n/a" if r["best_val_accuracy"] is None else f"{r['best_val_accuracy']:.4f}"
        print(f"{r['entry']:<11} {r['epochs']:>6} {best:>12} {fmt_seconds(r['seconds_to_target']):>16} "
              f"{r['test_accuracy']:>21.4f} {fmt_seconds(r['seconds_used']):>10} "
              f"{fmt_seconds(r['command_seconds']):>14}{over}")
    print()
    print("time: training and validation from the first step; whole command: also start-up, data loading, the "
          "test pass and writes. Each entry keeps its best validation epoch and touches test once.")
    if args.json:
        Path(args.json).write_text(json.dumps({"budget_seconds": budget, "seed": args.seed, "rows": rows},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
