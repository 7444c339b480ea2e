"""How faithful is each heatmap of a run, on ROAD, and which one becomes its default (core.explain.best_map).

For the run's fixed, stratified validation sample, every (CAM method, layer) the model offers and the two
baselines (random blobs, Sobel edges) are scored exactly as the precompute step `faithful_maps` scores them:
ROAD combined (core.explain.road: noisy linear imputation, MoRF and LeRF, mean of (LeRF - MoRF) / 2 over
the removal fractions) and the masked-mean difference (core.explain.faithfulness). It prints the table, the
chosen default and whether it beats random, with the time the measurement took (the step's cost at this
image size on this machine; the load average is printed so a reader can judge). Nothing is written into the
run folder.

    python benchmarks/road.py artifacts/runs/<id>
    python benchmarks/road.py artifacts/runs/<id> --sample 64 --fractions 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9
    python benchmarks/road.py artifacts/runs/<id> --methods gradcam hirescam --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from core.explain import best_map
from core.explain.cam import METHOD_NAMES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder")
    p.add_argument("--sample", type=int, default=best_map.SAMPLE, help="validation images (stratified, seeded)")
    p.add_argument("--fractions", type=float, nargs="+", default=list(best_map.FRACTIONS))
    p.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    p.add_argument("--json", default=None, help="also write the table here")
    args = p.parse_args(argv)

    from core.inference.classifier import Classifier
    from core.store.runs import open_run

    load = os.getloadavg()[0]
    t0 = time.monotonic()
    clf = Classifier(args.run)
    loaded = time.monotonic() - t0
    images, labels = open_run(args.run).split("val")
    sample = images[best_map.sample_indices(labels, args.sample)]
    cpu = time.process_time()
    found = best_map.measure(clf, sample, args.fractions, methods=args.methods)
    cpu = time.process_time() - cpu
    cfg = clf.config
    print(f"run {Path(args.run).name}: {cfg.arch} at {cfg.size} px; {found.sample} validation images "
          f"(stratified, seed {best_map.SEED}); removal fractions {', '.join(f'{f:g}' for f in found.fractions)}")
    print(f"{'method':<14}{'layer':<26}{'ROAD':>8}{'MoRF p':>9}{'LeRF p':>9}{'masked-mean':>13}")
    for row in found.rows():
        mark = "  <- default" if row["chosen"] else ""
        print(f"{row['method']:<14}{row['layer']:<26}{row['ROAD']:>+8.1f}{row['MoRF p']:>9.3f}{row['LeRF p']:>9.3f}"
              f"{row['masked-mean']:>+13.1f}{mark}")
    rnd = found.baseline("random")
    print(f"chosen default: {found.chosen.title} at {found.layer} (ROAD {100 * found.chosen.road:+.1f} points); "
          f"random baseline {100 * rnd.road:+.1f}; beats random: {'yes' if found.beats_random else 'NO'}")
    print(f"measurement: {found.seconds:.1f} s wall, {cpu:.1f} s CPU ({len(found.scores)} maps), model load "
          f"{loaded:.1f} s; "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(args.run), "rows": found.rows(), "seconds": found.seconds,
                                               "beats_random": found.beats_random}, indent=2))
    return 0 if found.beats_random else 1


if __name__ == "__main__":
    sys.exit(main())
