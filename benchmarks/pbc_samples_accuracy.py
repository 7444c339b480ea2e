"""Accuracy of a trained run on the 160 CellaVision originals in ../shared/data/pbc_samples, via the upload path.

The JPEG files are read as bytes and go through exactly what the Classify page does with an upload:
`core.data.uploads.iter_uploads` (decoding), `core.inference.classify.prepare` (the MedMNIST recipe: centre crop 200 px,
bicubic resize; or a plain resize) and `core.inference.classify.classify` (one batched prediction). The true class
is the sample's folder. All 160 images are from the test split of the PBC-derived npz files, so the
figure is a (small) test-set figure, on full-size originals rather than the pre-resized npz images.

    python benchmarks/pbc_samples_accuracy.py                  # the best run by validation accuracy
    python benchmarks/pbc_samples_accuracy.py --run artifacts/runs/<id> --resize plain
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import numpy as np

from core.data.images import RESIZE_MODES
from core.data.registry import short_label
from core.data.uploads import iter_uploads
from core.inference import classify
from core.store.runs import RunStore

SAMPLES = PROJECT.parent / "shared" / "data" / "pbc_samples"
FOLDER_ALIASES = {"ig": "immature granulocytes"}


def folder_index(folder: str, labels: list[str]) -> int:
    name = FOLDER_ALIASES.get(folder, folder)
    matches = [i for i, label in enumerate(labels) if short_label(label).startswith(name)]
    if len(matches) != 1:
        raise SystemExit(f"cannot match folder {folder!r} to one of {labels}")
    return matches[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, metavar="DIR", help="default: the best run by validation accuracy")
    parser.add_argument("--samples", default=str(SAMPLES), metavar="DIR")
    parser.add_argument("--resize", choices=RESIZE_MODES, default="medmnist")
    parser.add_argument("--threshold", type=float, default=classify.DEFAULT_THRESHOLD)
    args = parser.parse_args()

    run_dir = args.run
    if run_dir is None:
        best = RunStore().best_run()
        if best is None:
            raise SystemExit("no runs yet: python -m core train ...")
        run_dir = best["path"]
    clf = classify.Classifier(run_dir)
    labels = clf.short_labels
    files = sorted(Path(args.samples).glob("*/*.jpg"))
    truth = np.array([folder_index(f.parent.name, labels) for f in files])

    prepared = classify.prepare(iter_uploads((f.name, f.read_bytes()) for f in files), clf.image_size, args.resize,
                                classify.cell_fraction(clf, args.resize))
    results = classify.classify(clf, prepared, args.threshold)
    errors = [r for r in results if not r.ok]
    predicted = np.array([r.index if r.ok else -1 for r in results])
    confusion = np.zeros((len(labels), len(labels)), int)
    for t, p in zip(truth, predicted):
        if p >= 0:
            confusion[t, p] += 1

    c, m = clf.config, clf.run.metrics
    print(f"run {Path(run_dir).name}: {c.arch} {clf.image_size} px, weights {c.weights}; "
          f"val acc {m['val']['accuracy']:.4f}, test acc (npz) {m['test']['accuracy']:.4f}")
    print(f"{len(files)} images from {args.samples}, resize: {args.resize}; unreadable: {len(errors)}")
    accuracy = float((predicted == truth).mean())
    print(f"accuracy: {accuracy:.4f} ({int((predicted == truth).sum())}/{len(files)})")
    unidentified = sum(classify.UNIDENTIFIED in r.flags for r in results if r.ok)
    print(f"flagged unidentified (confidence < {args.threshold:.2f}): {unidentified}")
    print("\nper-class recall:")
    for i, label in enumerate(labels):
        n = int((truth == i).sum())
        print(f"  {label:<24} {confusion[i, i] / n if n else float('nan'):.3f}  ({confusion[i, i]}/{n})")
    print("\nconfusion matrix (rows: true, columns: predicted):")
    short = [label[:6] for label in labels]
    print(" " * 24 + " ".join(f"{s:>6}" for s in short))
    for i, label in enumerate(labels):
        print(f"  {label:<22}" + " ".join(f"{v:>6}" for v in confusion[i]))
    for r in errors:
        print(f"error: {r.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
