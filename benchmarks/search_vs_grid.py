"""Search against grid on the same budget: an Optuna search of 8 trials with pruning over the learning rate and
dropout (core.jobs.search) against a 2x2 grid of the same two settings (core.jobs.plans), on the real 28 px
BloodMNIST with a limited training set and few epochs. The search starts from 4 points spread over the two
ranges (scrambled Sobol), then TPE (core.jobs.search.default_startup). Its 8 trials are a budget of 8 full trials
(core.jobs.search, `refund`): the epochs pruned trials did not train fund further trials, so both sides spend at
most 32 epochs (`--exact-trials`: exactly 8 trials, the epochs pruning saves left unspent).

Both go through the real job queue, one job at a time, in a fresh artifacts folder (nothing of the project's
is touched). Every job trains the same network for the same epochs; the grid's 4 settings each run with two
seeds (8 jobs, 8 x epochs), so the grid gets at least the epochs the search uses. Selection on validation
only: each side's best is its best run's kept-epoch validation accuracy; test is never read here.

Prints each trial (state, validation accuracy, lr, dropout, pruned epoch), how many were pruned, each grid
run, both bests, the epochs and wall time each side used, and whether the done-when holds (at least one
pruned, search best >= grid best). For context it also prints the grid's best setting by the mean of its two
seeds (how the project reports repeats) and the best of the 2x2 grid run with the base seed only.

    python benchmarks/search_vs_grid.py                     # seed 0, 2,000 training images, 4 epochs
    python benchmarks/search_vs_grid.py --seed 1 --limit-train 1000 --epochs 3
    python benchmarks/search_vs_grid.py --seed 2 --search-only      # the search side alone
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from core.access.roles import LOCAL_ADMIN
from core.config import RunConfig
from core.jobs import search
from core.jobs.plans import PlanRequest, plan
from core.jobs.queue import ACTIVE, JobQueue
from core.store.runs import RunStore, open_run

NPZ_28 = PROJECT.parent / "shared" / "data" / "pbc_bloodmnist_28.npz"
LR_RANGE, DROPOUT_RANGE = (1e-4, 1e-2), (0.0, 0.5)
# the grid's two values per setting: the quartiles of each range (log scale for the learning rate), the usual
# way to lay a 2-point grid inside a range without wasting runs on its edges
GRID_LR = tuple(10 ** (math.log10(LR_RANGE[0]) + q * (math.log10(LR_RANGE[1]) - math.log10(LR_RANGE[0])))
                for q in (0.25, 0.75))
GRID_DROPOUT = tuple(DROPOUT_RANGE[0] + q * (DROPOUT_RANGE[1] - DROPOUT_RANGE[0]) for q in (0.25, 0.75))


def base_config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(data=str(NPZ_28), size=28, arch="compactresnet", weights="none", width=args.width, depth=1,
                     epochs=args.epochs, batch_size=64, limit_train=args.limit_train, seed=args.seed,
                     bn_recalibration_batches=10)


def wait_idle(queue: JobQueue, done) -> float:
    start = time.monotonic()
    while not done():
        queue.tick()
        time.sleep(1.0)
    return time.monotonic() - start


def epochs_of(run_path: str | None) -> int:
    return int(open_run(run_path).metrics["epochs_run"]) if run_path else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the base seed (TPE's, and the grid's first)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--limit-train", type=int, default=2000)
    parser.add_argument("--width", type=int, default=16, help="compact ResNet width")
    parser.add_argument("--out", default=None, help="artifacts folder (default: a new temporary one)")
    parser.add_argument("--exact-trials", action="store_true",
                        help="exactly --trials trials: pruned trials' unused epochs are not spent on further ones")
    parser.add_argument("--search-only", action="store_true", help="run the search side only (no grid, no verdict)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args()
    artifacts = Path(args.out or tempfile.mkdtemp(prefix="search-vs-grid-")) / "artifacts"
    store = RunStore(artifacts / "runs")
    queue = JobQueue(store)
    base = base_config(args)
    print(f"data {NPZ_28.name}, {args.limit_train} training images, {args.epochs} epochs, compact ResNet width "
          f"{args.width}, seed {args.seed}; artifacts {artifacts}", flush=True)

    # -- the search ----------------------------------------------------------------------------------------
    p = search.plan_search(base, [f"lr={LR_RANGE[0]:g}:{LR_RANGE[1]:g}:log",
                                  f"dropout={DROPOUT_RANGE[0]:g}:{DROPOUT_RANGE[1]:g}"],
                           args.trials, store=store, pruner="median", name="bench", prune_after=1,
                           refund=not args.exact_trials)
    if not p.ok:
        raise SystemExit(f"search: {p.errors}")
    search.create_search(p.spec, queue, LOCAL_ADMIN)
    search_seconds = wait_idle(queue, lambda: search.get_search(queue, "bench").status != "running")
    view = search.show(queue, "bench")
    print(search.format_view(view), flush=True)
    search_epochs = sum(t.epochs for t in view.trials)
    pruned = view.count("PRUNED")
    search_best = view.best.value if view.best else float("nan")
    print(f"\nsearch: {len(view.trials)} trials, {pruned} pruned, {search_epochs} epochs, {search_seconds / 60:.1f} "
          f"min; best validation accuracy {search_best:.4f}", flush=True)
    numbers = {"seed": args.seed, "epochs": args.epochs, "limit_train": args.limit_train, "trials": view.table(),
               "pruned": pruned, "search_best": search_best, "search_epochs": search_epochs,
               "search_seconds": search_seconds}
    if args.search_only:
        if args.json:
            Path(args.json).write_text(json.dumps(numbers, indent=2, default=str))
        return 0

    # -- the grid -------------------------------------------------------------------------------------------
    request = PlanRequest(values=base.to_dict(), sweep={"lr": ",".join(f"{v:g}" for v in GRID_LR),
                                                        "dropout": ",".join(f"{v:g}" for v in GRID_DROPOUT)},
                          repeats=2)
    grid_plan = plan(request)
    ids = queue.submit_many(grid_plan.configs, LOCAL_ADMIN, grid_plan.sweep_name)
    grid_seconds = wait_idle(queue, lambda: not any(queue.get(i).status in ACTIVE for i in ids))
    print(f"grid {grid_plan.sweep_name}: {len(ids)} runs")
    print(f"{'job':>4} {'status':<10} {'lr':>10} {'dropout':>8} {'seed':>5} {'val_acc':>8} {'epochs':>6}")
    grid_best, grid_epochs = float("nan"), 0
    by_setting: dict[tuple[float, float], list[float]] = {}
    first_seed: list[float] = []  # the 2x2 grid with the base seed only (16 epochs of 4 runs)
    for i in ids:
        job = queue.get(i)
        value = open_run(job.run_path).metrics["val"]["accuracy"] if job.run_path else float("nan")
        grid_epochs += epochs_of(job.run_path)
        grid_best = value if math.isnan(grid_best) or value > grid_best else grid_best
        by_setting.setdefault((job.config.lr, job.config.dropout), []).append(value)
        if job.config.seed == args.seed:
            first_seed.append(value)
        print(f"{i:>4} {job.status:<10} {job.config.lr:>10.4g} {job.config.dropout:>8.3g} {job.config.seed:>5} "
              f"{value:>8.4f} {epochs_of(job.run_path):>6}")
    best_mean = max(sum(v) / len(v) for v in by_setting.values())
    print(f"grid's best setting by its mean over the 2 seeds: {best_mean:.4f}; the 2x2 grid with seed {args.seed} "
          f"only (4 runs): best {max(first_seed):.4f}")

    ok = pruned >= 1 and search_best >= grid_best
    print(f"\nsearch: {len(view.trials)} trials, {pruned} pruned, {search_epochs} epochs, {search_seconds / 60:.1f} "
          f"min; best validation accuracy {search_best:.4f}")
    print(f"grid:   {len(ids)} runs (2x2 x 2 seeds), {grid_epochs} epochs, {grid_seconds / 60:.1f} min; best "
          f"validation accuracy {grid_best:.4f}")
    print(f"search best - grid best: {search_best - grid_best:+.4f}; done-when (>= 1 pruned and search best >= "
          f"grid best): {'yes' if ok else 'NO'}")
    if args.json:
        numbers.update(grid_best=grid_best, grid_epochs=grid_epochs, grid_seconds=grid_seconds,
                       grid_best_setting_mean=best_mean, grid_best_first_seed=max(first_seed))
        Path(args.json).write_text(json.dumps(numbers, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
