"""Training throughput of the study's input pipeline vs ours, on the same model, in one run.

(a) study: `ImageDataGenerator(rescale=1/255, shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    .flow(x, y_onehot, batch_size=B, shuffle=True, seed=S)` fed to `model.fit(..., steps_per_epoch=...)`,
    as in the study's Methods: per-image NumPy/SciPy augmentation in Python.
(b) ours, the default training path: `core.training.pipeline.training_dataset(images, labels, config,
    n_classes)`, a tf.data pipeline on uint8 arrays with batched augmentation (shear 0.2 rad, zoom [0.8, 1.2],
    horizontal flips) and the backbone's own preprocessing, in the precision a run gets by default
    (`precision="auto"`: mixed bfloat16 where the CPU runs it natively, else float32). The study trained in
    float32, and its path here does too.

Both train the same model: `core.models.build.build_model` from one `RunConfig`, compiled with
`core.training.trainer.compile_model`, rebuilt with the same seed for each pipeline so both start from identical
weights (checked by a hash of the initial weights). Only steady-state steps are timed: a callback records
the time at every batch end and the first --warmup-steps steps (graph tracing, first-call costs, filling
the shuffle buffer) are left out. Each measurement runs in a fresh process: ours sets TensorFlow's CPU thread
pools as a training process does (core.training.threads), the study's keeps TensorFlow's defaults, and the
pools cannot change once TensorFlow has started in a process. Each pipeline is also timed alone, without a
model, to show where the time goes.

    python benchmarks/pipeline_throughput.py                      # ResNet-50, 64 px, batch 32, 60 steps
    python benchmarks/pipeline_throughput.py --arch mobilenetv3small --steps 10 --warmup-steps 2
    python benchmarks/pipeline_throughput.py --repeats 3 --json artifacts/pipeline_throughput.json

Augmentation magnitudes differ slightly by design: the study's `shear_range=0.2` is read by Keras as
+-0.2 DEGREES, ours is +-0.2 radians (what the study's text says). The shear angle does not change the
cost of either pipeline (both apply one affine warp per image whatever the angle).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import keras
import numpy as np
import scipy
import tensorflow as tf
from study_recipe import study_flow

from core.config import ARCHITECTURES, SIZES, RunConfig
from core.data.dataset import Dataset, load_for_config, load_npz
from core.models.build import build_model
from core.training import pipeline, precision, threads
from core.training.trainer import compile_model

SHARED_DATA = PROJECT.parent / "shared" / "data"
STUDY, OURS = "study", "ours"
LABELS = {
    STUDY: "study: ImageDataGenerator.flow",
    OURS: "ours: core.training.pipeline tf.data",
}


# -- data and settings ---------------------------------------------------------------------------------
def load_data(data: str | None, size: int | None) -> Dataset:
    """--data if given; else ../shared/data/pbc_bloodmnist_<size>.npz; else BloodMNIST from the data root."""
    if data:
        dataset = load_npz(data)
        if size is not None and dataset.image_size != size:
            sys.exit(f"--size {size} but {data} holds {dataset.image_size} px images")
        return dataset
    size = size or 64
    shared = SHARED_DATA / f"pbc_bloodmnist_{size}.npz"
    if shared.is_file():
        return load_npz(shared)
    return load_for_config("", size)


def make_config(args: argparse.Namespace, size: int) -> RunConfig:
    # The study's augmentation intent in our units (shear in radians), weights 'none' (no download).
    return RunConfig(arch=args.arch, size=size, weights="none", batch_size=args.batch_size, seed=args.seed,
                     aug_shear=0.2, aug_zoom=0.2, aug_hflip=True, aug_vflip=False, aug_rot90=False)


def ours_dataset(dataset: Dataset, config: RunConfig) -> tf.data.Dataset:
    return pipeline.training_dataset(dataset.train.images, dataset.train.labels, config, dataset.n_classes)


# -- timing ------------------------------------------------------------------------------------------
class BatchClock(keras.callbacks.Callback):
    """Wall-clock and process CPU time (all threads) at the end of every training batch."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.start = 0.0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            float(logs["loss"])  # make sure the step has really finished before reading the clock
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())


def steady_state(times: list[float], cpu_times: list[float], warmup: int, batch_size: int) -> dict[str, float]:
    """images/s over the batches after the warm-up ones, from batch-end times."""
    first = max(warmup, 1) - 1  # from the end of the last warm-up step
    timed = times[first:]
    intervals = np.diff(timed)
    seconds = float(timed[-1] - timed[0])
    n = len(intervals)
    return {
        "steps_timed": n,
        "seconds": seconds,
        # CPU seconds used by this process (all threads) per timed step: less sensitive to other jobs
        "cpu_seconds_per_step": float(cpu_times[-1] - cpu_times[first]) / n if n else float("nan"),
        "images_per_second": n * batch_size / seconds if seconds > 0 else float("nan"),
        "median_step_ms": float(np.median(intervals) * 1000) if n else float("nan"),
        "images_per_second_median_step": batch_size / float(np.median(intervals)) if n else float("nan"),
    }


def weights_digest(model: keras.Model) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def fresh_model(config: RunConfig, dataset: Dataset, policy: str = "float32") -> keras.Model:
    keras.backend.clear_session()  # this also resets Keras' global dtype policy, so it is set after
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, dataset.n_classes, dataset.image_size)
    compile_model(model, config, dataset.n_classes)
    return model


def time_training(which: str, config: RunConfig, dataset: Dataset, x_float: np.ndarray | None, y_onehot: np.ndarray,
                  steps: int, warmup: int) -> dict:
    """Our default path runs in the precision a run gets by default here ("auto"); the study's in float32."""
    with precision.policy(policy_for(which, config)):  # restores the previous policy afterwards
        return _time_training(which, config, dataset, x_float, y_onehot, steps, warmup)


def policy_for(which: str, config: RunConfig) -> str:
    return precision.resolve(config.precision, config.arch) if which == OURS else "float32"


def _time_training(which: str, config: RunConfig, dataset: Dataset, x_float: np.ndarray | None, y_onehot: np.ndarray,
                   steps: int, warmup: int) -> dict:
    model = fresh_model(config, dataset, policy_for(which, config))
    compute_dtype = next(layer.compute_dtype for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    digest = weights_digest(model)
    if which == STUDY:
        data = study_flow(x_float, y_onehot, config.batch_size, config.seed)
    else:
        data = ours_dataset(dataset, config)
    clock = BatchClock()
    t0 = time.perf_counter()
    # fit's default shuffle=True for the study (as its code called fit; Keras then also shuffles the order of
    # the flow's batches, which costs nothing); shuffle=False for ours, as core.training.trainer passes (tf.data
    # shuffles itself and Keras would only warn that it ignores the flag).
    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[clock], verbose=0,
              shuffle=which == STUDY)
    total = time.perf_counter() - t0
    result = steady_state(clock.times, clock.cpu_times, warmup, config.batch_size)
    result.update(initial_weights_sha256=digest, fit_seconds_total=total, conv_compute_dtype=compute_dtype,
                  warmup_seconds=clock.times[max(warmup, 1) - 1] - clock.start)
    del model
    return result


def time_input_alone(which: str, config: RunConfig, dataset: Dataset, x_float: np.ndarray | None,
                     y_onehot: np.ndarray, batches: int, warmup: int) -> dict:
    """Produce `warmup + batches` batches with no model; images/s over the last `batches`."""
    times = []
    if which == STUDY:
        flow = study_flow(x_float, y_onehot, config.batch_size, config.seed)
        for i in range(warmup + batches):
            x, _ = flow[i % len(flow)]  # what Keras' PyDataset adapter calls during fit
            times.append(time.perf_counter())
    else:
        iterator = iter(ours_dataset(dataset, config))
        for _ in range(warmup + batches):
            x, _ = next(iterator)
            times.append(time.perf_counter())
    warmup = max(warmup, 1)  # time from the end of the last warm-up batch
    seconds = times[-1] - times[warmup - 1]
    n = len(times) - warmup
    return {"batches_timed": n, "seconds": seconds,
            "images_per_second": n * config.batch_size / seconds if seconds > 0 else float("nan"),
            "batch_shape": list(x.shape), "batch_dtype": str(x.dtype)}


# -- one measurement, one process ----------------------------------------------------------------------
def measure(which: str, args: argparse.Namespace, input_batches: int) -> dict:
    """Time one pipeline (input alone, then training) in this process, which has not run TensorFlow yet.

    Ours sets TensorFlow's CPU thread pools as a training process does (core.training.threads), before its
    first operation; the study's keeps TensorFlow's defaults, as it ran. The pools are fixed for a process's
    life once TensorFlow starts, so each measurement gets a fresh process."""
    dataset = load_data(args.data, args.size)
    config = make_config(args, dataset.image_size)
    if which == OURS:
        gpu = bool(tf.config.list_physical_devices("GPU"))
        threads.apply(threads.plan(config.arch, config.size, config.batch_size, config.to_dict(), gpu=gpu))
    # What the study's flow() gets: float32 pixels 0..255 (it would make this copy itself from uint8).
    x_float = dataset.train.images.astype(np.float32) if which == STUDY else None
    y_onehot = keras.utils.to_categorical(dataset.train.labels, dataset.n_classes).astype(np.float32)
    result = {"input": time_input_alone(which, config, dataset, x_float, y_onehot, input_batches,
                                        args.warmup_steps),
              "train": time_training(which, config, dataset, x_float, y_onehot, args.steps, args.warmup_steps)}
    result["train"]["cpu_threads"] = threads.current().to_dict()
    return result


def measure_in_fresh_process(which: str, args: argparse.Namespace, input_batches: int) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--measure", which, "--arch", args.arch,
            "--batch-size", str(args.batch_size), "--steps", str(args.steps),
            "--warmup-steps", str(args.warmup_steps), "--input-batches", str(input_batches),
            "--seed", str(args.seed)]
    argv += ["--data", args.data] if args.data else []
    argv += ["--size", str(args.size)] if args.size else []
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # TensorFlow's start-up chatter is shown only then
        sys.stderr.write(done.stderr)
        sys.exit(f"the {which} measurement failed (exit {done.returncode}); its messages are above")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- report ------------------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(), "cpus_usable": usable, "cpu_model": cpu_model,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "python": platform.python_version(), "platform": platform.platform(),
        "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def print_report(settings: dict, machine: dict, summary: dict) -> None:
    print()
    print("Input pipeline throughput: the study's ImageDataGenerator vs core.training.pipeline, same model")
    print(f"machine : {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable) {machine['cpu_model']}; "
          f"GPUs: {', '.join(machine['gpus']) or 'none'}")
    print(f"software: TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, NumPy {machine['numpy']}, "
          f"SciPy {machine['scipy']}, Python {machine['python']}")
    load = machine["load_average_at_start"]
    if load:
        note = "  (busy machine: numbers are not final)" if load[0] > 0.5 * machine["cpus_usable"] else ""
        print(f"load    : {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min) at start{note}")
    print(f"precision: study {settings['precision'][STUDY]}, ours {settings['precision'][OURS]} (the default, "
          f"precision=auto)")
    pools = {w: threads.CpuThreads(**summary["cpu_threads"][w]).describe() for w in (STUDY, OURS)}
    print(f"threads : study {pools[STUDY]}; ours {pools[OURS]} (core.training.threads; each measurement "
          f"in a fresh process)")
    print(f"settings: {settings['arch']} weights=none, {settings['image_size']} px from {settings['data']}, "
          f"{settings['n_train']} training images, batch {settings['batch_size']}, "
          f"{settings['steps']} timed steps after {settings['warmup_steps']} warm-up, "
          f"{settings['input_batches']} batches for input alone, repeats {settings['repeats']}, "
          f"seed {settings['seed']}")
    same = summary["identical_initial_weights"]
    print(f"model   : rebuilt per pipeline with seed {settings['seed']}; identical initial weights: "
          f"{'yes' if same else 'NO'}")
    print()
    header = (f"{'pipeline':<32} {'train img/s':>12} {'median step':>12} {'CPU-s/step':>11} "
              f"{'input alone img/s':>18} {'input share':>12}")
    print(header)
    print("-" * len(header))
    for which in (STUDY, OURS):
        s = summary[which]
        share = s["input_share_of_step"]
        print(f"{LABELS[which]:<32} {s['train_images_per_second']:>12.1f} {s['median_step_ms']:>10.1f}ms "
              f"{s['cpu_seconds_per_step']:>11.2f} {s['input_images_per_second']:>18.1f} {share:>11.0%}")
    print("-" * len(header))
    r = summary["ratio_ours_over_study"]
    print(f"{'ratio ours / study':<32} {r['train_images_per_second']:>11.2f}x {'':>12} {'':>11} "
          f"{r['input_images_per_second']:>17.2f}x")
    print()
    print("train img/s: steady-state training steps including input (median over repeats); CPU-s/step: CPU")
    print("time of the measuring process (all threads) per timed step, less sensitive than wall time to other jobs;")
    print("input alone: batches produced with no model; input share: time to make one batch alone as a")
    print("fraction of one training step (what the input would add to a step if it did not overlap compute).")
    print("study input: a float32 copy of the uint8 images (0..255; flow() converts to float32 anyway),")
    print("rescaled by 1/255 in the generator; ours: the uint8 arrays, cast and preprocessed inside tf.data.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHITECTURES, default="resnet50")
    p.add_argument("--size", type=int, choices=SIZES, default=None,
                   help="image size (default 64; with --data, taken from the file)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="a MedMNIST-layout npz (default ../shared/data/pbc_bloodmnist_<size>.npz)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60, help="timed training steps per pipeline")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps run first and left out of the timing")
    p.add_argument("--input-batches", type=int, default=None,
                   help="batches timed for each pipeline alone (default: max(--steps, 100))")
    p.add_argument("--repeats", type=int, default=1, help="measure each pipeline this many times (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers to this file")
    p.add_argument("--measure", choices=(STUDY, OURS), default=None, help=argparse.SUPPRESS)  # one process's part
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 1 or args.repeats < 1 or args.batch_size < 1:
        p.error("need --steps >= 1, --warmup-steps >= 1, --repeats >= 1, --batch-size >= 1")
    input_batches = args.input_batches or max(args.steps, 100)
    if args.measure:
        print(json.dumps(measure(args.measure, args, input_batches)))
        return 0

    machine = machine_info()
    dataset = load_data(args.data, args.size)
    config = make_config(args, dataset.image_size)
    settings = {
        "arch": config.arch, "weights": config.weights, "image_size": dataset.image_size,
        "data": dataset.source, "n_train": len(dataset.train), "n_classes": dataset.n_classes,
        "batch_size": config.batch_size, "steps": args.steps, "warmup_steps": args.warmup_steps,
        "input_batches": input_batches, "repeats": args.repeats, "seed": config.seed,
        "optimizer": config.optimizer, "lr": config.lr, "dropout": config.dropout,
        "study_generator": "ImageDataGenerator(rescale=1/255, shear_range=0.2 (degrees), zoom_range=0.2, "
                           "horizontal_flip=True).flow(float32 0..255, one-hot, shuffle=True)",
        "ours": f"core.training.pipeline.training_dataset (aug_shear={config.aug_shear} rad, "
                f"aug_zoom={config.aug_zoom}, "
                f"hflip={config.aug_hflip}; uint8 in memory, {config.arch} preprocessing)",
        "precision": {STUDY: policy_for(STUDY, config), OURS: policy_for(OURS, config)},
    }

    runs: dict[str, dict[str, list]] = {STUDY: {"train": [], "input": []}, OURS: {"train": [], "input": []}}
    started = time.perf_counter()
    for r in range(args.repeats):
        order = (STUDY, OURS) if r % 2 == 0 else (OURS, STUDY)  # alternate to spread drift evenly
        for which in order:
            print(f"[repeat {r + 1}/{args.repeats}] {which}: input alone, then training {args.warmup_steps}+"
                  f"{args.steps} steps, in a fresh process ...", file=sys.stderr, flush=True)
            res = measure_in_fresh_process(which, args, input_batches)
            runs[which]["input"].append(res["input"])
            runs[which]["train"].append(res["train"])
            t = res["train"]
            print(f"    {t['images_per_second']:.1f} img/s, {t['cpu_seconds_per_step']:.2f} CPU-s/step "
                  f"(warm-up {t['warmup_seconds']:.1f}s, convolutions in {t['conv_compute_dtype']}; "
                  f"{threads.CpuThreads(**t['cpu_threads']).describe()})", file=sys.stderr, flush=True)

    summary: dict = {}
    for which in (STUDY, OURS):
        train_ips = median([t["images_per_second"] for t in runs[which]["train"]])
        input_ips = median([t["images_per_second"] for t in runs[which]["input"]])
        step_ms = median([t["median_step_ms"] for t in runs[which]["train"]])
        cpu_step = median([t["cpu_seconds_per_step"] for t in runs[which]["train"]])
        summary[which] = {
            "train_images_per_second": train_ips,
            "median_step_ms": step_ms,
            "cpu_seconds_per_step": cpu_step,
            "input_images_per_second": input_ips,
            "input_share_of_step": (config.batch_size / input_ips) / (config.batch_size / train_ips)
            if input_ips > 0 and train_ips > 0 else float("nan"),
        }
    summary["ratio_ours_over_study"] = {
        k: summary[OURS][k] / summary[STUDY][k] for k in ("train_images_per_second", "input_images_per_second")
    }
    digests = {t["initial_weights_sha256"] for w in (STUDY, OURS) for t in runs[w]["train"]}
    summary["identical_initial_weights"] = len(digests) == 1
    summary["benchmark_seconds"] = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary["process_cpu_seconds"] = time.process_time() + children.ru_utime + children.ru_stime
    summary["cpu_threads"] = {w: runs[w]["train"][0]["cpu_threads"] for w in (STUDY, OURS)}

    print_report(settings, machine, summary)
    print(f"(benchmark took {summary['benchmark_seconds']:.0f} s wall; its processes used "
          f"{summary['process_cpu_seconds']:.0f} CPU-s in all, so at least "
          f"{summary['process_cpu_seconds'] / machine['cpus_usable']:.0f} s on an idle machine like this)")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"settings": settings, "machine": machine, "summary": summary,
                                   "runs": runs}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
