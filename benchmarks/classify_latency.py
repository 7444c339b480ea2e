"""Latency of one live classification with its Grad-CAM, as the Classify page computes it.

Each timed call is `Classifier.explain(image)`: a uint8 image (as the upload path produces it) goes through
one traced `tf.function` (fixed input signature, traced once at warm-up) that preprocesses, runs the
model once, takes the gradient of the class score at the last convolutional block and returns the class
probabilities and the upsampled, normalised heatmap together. The clock covers the whole call, from the
NumPy image to NumPy probabilities and heatmap. Nothing is trained: models are built from a `RunConfig`
with random weights (latency does not depend on the weights), or loaded with --run.

    python benchmarks/classify_latency.py                         # ResNet-18/50 at 64 px, ResNet-50 at 224 px
    python benchmarks/classify_latency.py --run artifacts/runs/<id>
    python benchmarks/classify_latency.py --cases mobilenetv3small:64 resnet50:224 --repeats 50

Targets (issue 5): <= 50 ms at 64 px and <= 200 ms at 224 px, here (a 2-core CPU). Other processes on the
machine inflate the numbers; the load average at the start and end is printed so a reader can judge.

With --first-use and --run, it also times what a run's first visit to Classify waits for, through the same
background tasks the page uses (core.inference.precompute): loading the model, then measuring the 'unlike the
training data' statistics, on fresh copies of the run (small files copied, the model linked) in one
temporary store, round after round. Each row shows what the progress bar expected when the task started
(core.progress.PhaseTimes: the default before anything was measured, then the median of earlier rounds) and
what it took, and their ratio: the measured estimate should land within 50% of the actual time.

    python benchmarks/classify_latency.py --run artifacts/runs/<id> --first-use --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import numpy as np
import tensorflow as tf

from core import tasks
from core.config import RunConfig
from core.data.registry import label_names
from core.inference import precompute
from core.inference.classifier import Classifier
from core.models.build import build_model

DEFAULT_CASES = ("resnet18:64", "resnet50:64", "resnet50:224")
TARGET_MS = {64: 50.0, 224: 200.0}  # image size -> target for prediction + Grad-CAM


def target_for(size: int) -> float:
    return TARGET_MS[min(TARGET_MS, key=lambda s: abs(s - size))]


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def classifier_for(case: str) -> tuple[str, Classifier]:
    if os.path.isdir(case):
        clf = Classifier(case)
        return f"{clf.config.arch}@{clf.image_size} (run {Path(case).name})", clf
    arch, size = case.split(":")
    config = RunConfig(arch=arch, size=int(size), weights="none")
    model = build_model(config, len(label_names()), int(size))
    return f"{arch}@{size} (random weights)", Classifier.from_model(model, config, list(label_names()))


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(ms), "p90_ms": float(np.percentile(ms, 90)), "min_ms": min(ms)}


def bench(case: str, repeats: int, warmup: int, method: str) -> dict:
    name, clf = classifier_for(case)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, clf.image_size, clf.image_size, 3), dtype=np.uint8)
    start = time.perf_counter()
    clf.explain(image, method)  # traces the fused function once
    trace_s = time.perf_counter() - start
    clf.probabilities(image)
    for _ in range(warmup):
        clf.explain(image, method)
        clf.probabilities(image)
    explain = summary(timed(lambda: clf.explain(image, method), repeats))
    predict = summary(timed(lambda: clf.probabilities(image), repeats))
    cam = clf.explainer(method)
    traces = cam._explain.experimental_get_tracing_count()
    clf.close()
    target = target_for(clf.image_size)
    return {"case": name, "size": clf.image_size, "method": method, "layer": cam.layer_name,
            "predict_and_cam": explain, "predict_only": predict, "first_call_s": trace_s, "traces": traces,
            "target_ms": target, "meets_target": explain["median_ms"] <= target}


def first_use(run: str, rounds: int) -> list[dict]:
    """Expected and actual seconds of the first-use tasks on `rounds` fresh copies of `run` (see the docstring).
    TensorFlow is already imported here, so a load measures the model alone (a server's very first load also
    imports TensorFlow, and records that time)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            copy = Path(tmp) / "artifacts" / "runs" / f"{Path(run).name}-{i}"
            copy.mkdir(parents=True)
            for f in Path(run).iterdir():
                if f.name == "model.keras":
                    (copy / f.name).symlink_to(f.resolve())
                elif f.is_file() and f.suffix in (".json", ".csv", ".log"):
                    shutil.copy(f, copy / f.name)
            for what, start_task, key in (("load the model", precompute.model_task, "loading"),
                                          ("measure OOD stats", lambda r: precompute.step_task(r, "ood_stats"),
                                           "ood_stats")):
                expected = precompute.expected_seconds(copy, key)
                began = time.perf_counter()
                task = tasks.wait(start_task(copy))
                actual = time.perf_counter() - began
                if task.failed:
                    raise SystemExit(f"{what} failed: {task.error}")
                rows.append({"round": i + 1, "task": what, "expected_s": expected, "actual_s": actual,
                             "ratio": expected / actual if actual > 0 else float("nan")})
                print(f"round {i + 1}  {what:<18} expected {expected:6.1f} s  took {actual:6.1f} s  "
                      f"estimate/actual {rows[-1]['ratio']:.2f}", flush=True)
            precompute.forget_model(copy)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), metavar="ARCH:SIZE",
                        help="architecture:size pairs, or run directories")
    parser.add_argument("--run", action="append", default=[], metavar="DIR", help="a trained run (repeatable)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--json", default="", metavar="PATH", help="also write the results here")
    parser.add_argument("--first-use", action="store_true",
                        help="with --run: time the first visit's background tasks and their estimates instead")
    parser.add_argument("--rounds", type=int, default=3, help="fresh copies of the run for --first-use")
    args = parser.parse_args()
    cases = args.run or args.cases
    if args.first_use:
        if not args.run:
            parser.error("--first-use needs --run DIR")
        print(f"# first use of {', '.join(args.run)}; load average at start: {load_average()}")
        rows = [r for run in args.run for r in first_use(run, args.rounds)]
        print(f"# load average at end: {load_average()}")
        if args.json:
            Path(args.json).write_text(json.dumps({"load_average_end": load_average(), "first_use": rows}, indent=2))
        return 0

    print(f"# TensorFlow {tf.__version__} on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}; "
          f"load average at start: {load_average()}")
    header = f"{'model':<34} {'px':>4} {'pred+CAM median':>15} {'p90':>8} {'target':>7} {'ok':>3}  " \
             f"{'predict median':>14} {'trace s':>7}"
    print(header)
    results = []
    for case in cases:
        r = bench(case, args.repeats, args.warmup, args.method)
        results.append(r)
        e, p = r["predict_and_cam"], r["predict_only"]
        print(f"{r['case']:<34} {r['size']:>4} {e['median_ms']:>12.1f} ms {e['p90_ms']:>5.1f} ms "
              f"{r['target_ms']:>4.0f} ms {'yes' if r['meets_target'] else 'NO':>3}  "
              f"{p['median_ms']:>11.1f} ms {r['first_call_s']:>7.1f}", flush=True)
        assert r["traces"] == 1, f"the explain function was traced {r['traces']} times"
    print(f"# load average at end: {load_average()} (on 2 cores, anything well above 2 means other work "
          f"shared the CPU during timing)")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average_end": load_average(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
