"""How honest a training job's time estimates are: the Train page's preview before launch, and the job card's
"about N left" while it runs, against the time the job really took.

Queues real jobs through core.jobs.queue (each trains in its own worker process, exactly as from the page) in a
fresh run store, records the preview estimate (core.jobs.plans.plan, the number the page shows) and polls the
job's row for its phase, fraction and time left every half second. When the job is done it compares:
- the preview with the whole job (submit to succeeded);
- the card's time left at 10, 25, 50 and 75% of the job's wall time with the time that really remained.
Ratios are estimate / actual (1.0 is exact; the issue's target is |ratio - 1| <= 0.5).

Two jobs run one after another: the first on an empty store (defaults scaled by network and size: nothing
measured yet), the second with the phase times the first recorded (core.progress.PhaseTimes), which is what a
user meets from their second run on. Run it on an otherwise idle machine.

    python benchmarks/eta_accuracy.py                                  # quick-28, 2 epochs, 2,000 images
    python benchmarks/eta_accuracy.py --arch resnet18 --limit-train 1000 --epochs 2
"""

from __future__ import annotations

import argparse
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
from core.data.dataset import SPLITS, class_counts
from core.jobs.plans import PlanRequest, plan, preset_request
from core.jobs.queue import ACTIVE, JobQueue
from core.store.runs import RunStore, open_run

DATA = PROJECT.parent / "shared" / "data" / "pbc_bloodmnist_28.npz"
CHECKPOINTS = (0.10, 0.25, 0.50, 0.75)
POLL_SECONDS = 0.5


def one_job(store: RunStore, config: RunConfig, sizes: tuple[int, int, int]) -> dict:
    preview = plan(PlanRequest(values=config.to_dict()), split_sizes=sizes, store=store)
    if not preview.ok:
        raise SystemExit(f"invalid settings: {preview.first_error()}")
    queue = JobQueue(store)
    submitted = time.monotonic()
    job_id = queue.submit(preview.configs[0], LOCAL_ADMIN)
    queue.tick()
    samples = []  # (seconds since submit, phase, fraction, eta)
    while True:
        job = queue.get(job_id)
        now = time.monotonic() - submitted
        if job.status not in ACTIVE:
            break
        if job.status == "running" and job.eta_seconds is not None:
            samples.append((now, job.phase, job.fraction, job.eta_seconds))
        queue.tick()
        time.sleep(POLL_SECONDS)
    if job.status != "succeeded":
        raise SystemExit(f"job {job_id} {job.status}: {job.error}\n{job.log_tail}")
    measured = open_run(job.run_path).metrics.get("phase_seconds", {})
    return {"preview": preview.seconds[0], "total": now, "samples": samples, "source": preview.speed_sources,
            "measured": measured}


def report(name: str, result: dict) -> list[float]:
    total = result["total"]
    ratios = [result["preview"] / total]
    print(f"\n{name}: took {total:.0f} s (submit to succeeded); speed source {dict(result['source'])}")
    print(f"  preview estimate     {result['preview']:7.0f} s   ratio {ratios[0]:.2f}")
    print("  its phases, measured by the trainer: " + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds
                                                             in result["measured"].items()))
    print("  at   phase        fraction   card's time left   really left   ratio")
    for share in CHECKPOINTS:
        at = share * total
        usable = [s for s in result["samples"] if s[0] <= at]
        if not usable:
            print(f"  {share:>4.0%} (no report yet)")
            continue
        t, phase, fraction, eta = usable[-1]
        left = total - t
        ratio = eta / left if left > 0 else float("nan")
        ratios.append(ratio)
        print(f"  {share:>4.0%} {phase or '-':<12} {fraction:8.2f}   {eta:13.0f} s   {left:9.0f} s   {ratio:5.2f}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--arch", default=None, help="default: the quick-28 preset's network")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=2, help="jobs one after another (the first measures, the rest use it)")
    args = p.parse_args(argv)
    counts = class_counts(args.data)
    sizes = tuple(sum(counts[s]) for s in SPLITS)
    values = dict(preset_request("quick-28").values, data=str(args.data.resolve()), size=28, epochs=args.epochs,
                  limit_train=args.limit_train)
    if args.arch:
        values.update(arch=args.arch, weights="none")
    config = RunConfig(**values)
    print(f"{config.arch} {config.size} px, {config.epochs} epochs, {args.limit_train or sizes[0]:,} training "
          f"images, {sizes[1]:,} val, {sizes[2]:,} test; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="eta-") as tmp:
        store = RunStore(Path(tmp) / "artifacts" / "runs")
        os.environ["CELLSCOPE_ARTIFACTS"] = str(store.runs_dir.parent)
        worst = []
        for i in range(args.jobs):
            name = "job 1 (nothing measured yet)" if i == 0 else f"job {i + 1} (phase times of the jobs before)"
            ratios = report(name, one_job(store, config.replace(seed=i), sizes))
            worst.append(max(abs(r - 1) for r in ratios))
    print("\nworst |ratio - 1| per job: " + ", ".join(f"{w:.2f}" for w in worst) + " (target <= 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
