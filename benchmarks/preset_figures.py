"""Measure a recipe preset the way a user runs it, for several seeds, and record what it reached.

For each seed this runs, in a fresh process and timed from start to finish,

    python -m core train --preset NAME --data FILE --seed S --runs-dir DIR

then reads the run's metrics.json: validation and test accuracy of the kept (best validation) epoch,
monocyte and immature granulocyte F1 on test, training seconds, and the whole command's seconds. It prints
one row per seed and the mean ± sd, and with --write stores them in core/jobs/preset_figures.json, which
the Train page's preset cards and `python -m core presets` show. Run it on an otherwise idle machine.

With --external FOLDER each run is also applied unchanged to another lab's cells with cell-centred framing
(`python -m core external --run R --folder FOLDER --resize cell`: 8-way accuracy and accuracy on the classes
shared with BloodMNIST), and with --robustness the corruption benchmark runs on its whole test split
(`python -m core robustness --run R`); these run after the timed command and do not count in its seconds.

    python benchmarks/preset_figures.py quick-28 --data ../shared/data/pbc_bloodmnist_28.npz --seeds 0 1 2
    python benchmarks/preset_figures.py scratch-64 --data ../shared/data/pbc_bloodmnist_64.npz --write
    python benchmarks/preset_figures.py robust --data ../shared/data/pbc_bloodmnist_64.npz --seeds 0 1 2 \
        --external ../shared/data/external_dev --robustness --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from core.data.registry import short_label
from core.evaluation.confusion import AMBIGUOUS
from core.jobs import preset_figures
from core.jobs.preset_figures import PresetFigures, SeedFigures
from core.jobs.presets import RECIPE, get


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{os.cpu_count()}-core {model}, no GPU" if not Path("/proc/driver/nvidia/gpus").is_dir() \
        else f"{os.cpu_count()}-core {model} with a GPU"


def core_command(*args: str) -> str:
    """`python -m core ARGS` in a fresh process, as a user runs it; its standard output (it must succeed)."""
    proc = subprocess.run([sys.executable, "-m", "core", *args], cwd=PROJECT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"python -m core {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def external_figures(run: Path, folder: str) -> dict[str, float]:
    result = json.loads(core_command("external", "--run", str(run), "--folder", folder, "--resize", "cell"))
    return {"external_accuracy": result["accuracy"], "external_shared_accuracy": result["shared_only"]["accuracy"]}


def robustness_figures(run: Path) -> dict[str, float]:
    core_command("robustness", "--run", str(run))
    stored = json.loads((run / "robustness.json").read_text())
    return {"clean_accuracy": stored["clean_accuracy"], "corrupted_accuracy": stored["mean_corrupted_accuracy"]}


def run_seed(key: str, data: str, seed: int, runs_dir: Path, extra: list[str], external: str | None = None,
             robustness: bool = False) -> SeedFigures:
    start = time.perf_counter()
    stdout = core_command("train", "--preset", key, "--data", data, "--seed", str(seed), "--runs-dir", str(runs_dir),
                          *extra)
    seconds = time.perf_counter() - start
    run = Path(stdout.strip().splitlines()[-1])  # train prints the run's folder last
    metrics = json.loads((run / "metrics.json").read_text())
    other = {**(external_figures(run, external) if external else {}),
             **(robustness_figures(run) if robustness else {})}
    test = {short_label(name): values for name, values in metrics["test"]["per_class"].items()}
    monocyte, ig = AMBIGUOUS  # short names ('immature granulocytes'), as short_label gives them
    tta = metrics.get("tta", {}).get("test", {}).get("accuracy")
    return SeedFigures(seed=seed, val_accuracy=metrics["val"]["accuracy"], test_accuracy=metrics["test"]["accuracy"],
                       monocyte_f1=test[monocyte]["f1"], ig_f1=test[ig]["f1"],
                       train_seconds=round(metrics["train_seconds"], 1), command_seconds=round(seconds, 1),
                       best_epoch=metrics["best_epoch"], tta_test_accuracy=tta, **other)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset")
    ap.add_argument("--data", required=True, help="the npz the preset trains on (its size must match)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--write", action="store_true", help="record the figures in core/jobs/preset_figures.json")
    ap.add_argument("--external", default=None, metavar="FOLDER",
                    help="also apply each run to this external set (one folder per class) with cell framing")
    ap.add_argument("--robustness", action="store_true", help="also run the corruption benchmark on each run")
    ap.add_argument("extra", nargs="*", help="after --: more train flags (not allowed with --write)")
    args = ap.parse_args()
    preset = get(args.preset)
    if preset.kind != RECIPE:
        raise SystemExit(f"{preset.key} is one of the study's experiments; this measures recipes")
    if args.write and args.extra:
        raise SystemExit("--write records the preset as it is; drop the extra flags")
    data = os.path.relpath(os.path.abspath(args.data), PROJECT)  # as typed, symlinks kept
    external = os.path.relpath(os.path.abspath(args.external), PROJECT) if args.external else None
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tmp) / "runs"
        rows = []
        for seed in args.seeds:
            row = run_seed(preset.key, data, seed, runs_dir, args.extra, external, args.robustness)
            rows.append(row)
            print(f"seed {seed}: val {row.val_accuracy:.4f} test {row.test_accuracy:.4f} monocyte F1 "
                  f"{row.monocyte_f1:.3f} IG F1 {row.ig_f1:.3f} best epoch {row.best_epoch} train "
                  f"{row.train_seconds:.0f} s, whole command {row.command_seconds:.0f} s"
                  + (f"; external {row.external_accuracy:.3f} (shared classes {row.external_shared_accuracy:.3f})"
                     if external else "")
                  + (f"; clean {row.clean_accuracy:.4f}, corrupted {row.corrupted_accuracy:.4f}"
                     if args.robustness else ""), flush=True)
    figures = PresetFigures(preset=preset.key,
                            command=f"python -m core train --preset {preset.key} --data {data} --seed {{seed}}",
                            machine=machine(), measured=datetime.date.today().isoformat(), seeds=tuple(rows),
                            settings=dict(preset.base), external=Path(external).name if external else "")
    print(f"{preset.key}: {figures.summary()}")
    for name in ("val_accuracy", "test_accuracy", "monocyte_f1", "ig_f1", "train_seconds", "command_seconds",
                 "external_accuracy", "external_shared_accuracy", "clean_accuracy", "corrupted_accuracy"):
        if figures.has(name):
            print(f"  {name:<25} {figures.stat(name).format(4)}")
    if args.write:
        preset_figures.save([figures])
        print(f"recorded in {preset_figures.FIGURES_PATH.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
