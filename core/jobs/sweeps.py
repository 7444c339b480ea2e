"""Sweeps (a grid over any RunConfig fields, with repeats over seeds) and duration estimates from what this
machine measured in earlier runs. Named starting points (recipes, the study's experiments) are in
core.jobs.presets.

The one duration model of a training job, used by the preview before launch and by the job's live time left
(core.progress.Tracker walks the same plan): loading, then per epoch training and validating, then one
testing pass, publishing and precomputing (`phase_plan`). Training speed comes from earlier runs of the same
network at the same cost (the run index); the other phases from core.progress.PhaseTimes under `times_key`,
per image where they scale with the images they see (`phase_units`: what the trainer records and what the
plan multiplies), else defaults scaled from the training speed.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from core.config import SETTINGS, ConfigError, RunConfig
from core.models import architectures
from core.progress import PhaseTimes, format_seconds

# Training speeds measured on this project's 2-core development machine, for a first run before this machine
# measured any: (architecture, image size, its other settings) -> images/s. Other sizes and widths of the same
# network are scaled by cost; networks without a reference are scaled from ResNet-50's.
#   compactresnet: the quick-28 preset's figures (4 epochs of 11,962 images in 123-130 s, idle machine)
#   resnet50: ResNet-50, 64 px, batch 32, from scratch (a busy machine)
REFERENCE_SPEEDS: tuple[tuple[str, int, dict[str, Any], float], ...] = (
    ("compactresnet", 28, {"width": 32, "depth": 2}, 377.0),
    ("resnet50", 64, {}, 55.0),
)
FALLBACK_ARCH = "resnet50"
EVAL_SPEEDUP = 3.0  # a forward pass costs about a third of a training step
JOB_OVERHEAD_SECONDS = 15.0  # process start, TensorFlow import, data load and model build, per job (idle: 10-15 s)
PUBLISH_SECONDS = 5.0  # saving the model and the run folder, before anything was measured
PRECOMPUTE_SECONDS = 3.0  # measuring the training cells' size and colours (the job's model is in memory)
# scoring the run's heatmaps on ROAD (core.explain.best_map): about 3,000 images through the model (28 images x
# 11 maps x 5 fractions x 2 orders), each also imputed, which costs about as much again
FAITHFUL_IMAGES = 6000
TTA_PASSES = 8  # test-time augmentation: each of val and test predicted under 8 flips/turns
OOD_IMAGES = 3000  # core.inference.ood embeds at most 2,000 training and 1,000 validation images
PER_IMAGE = ("training", "validating", "testing")  # recorded as seconds per image; the rest as seconds
# Phases whose planned time derives from another's speed follow its measured pace until measured themselves
# (core.progress.Tracker `follows`): a job whose first epoch runs faster than planned expects the same of the rest.
PACE_FOLLOWS = {"validating": "training", "testing": "validating", "precomputing": "validating"}


def relative_cost(arch: str, size: int, settings: Mapping[str, Any] | None = None) -> float:
    """Training cost per image relative to the others: the registry's GFLOPs at 224 px scaled by the pixel count
    each backbone actually computes on (which its stem setting changes) and, for the compact ResNet, by its width
    and depth; `settings` are the run's other RunConfig fields. Used only when no earlier run of the same
    architecture at the same cost exists to measure from."""
    return architectures.get(arch).relative_cost(size, settings)


def _row_settings(row: Mapping[str, Any]) -> dict[str, Any]:
    """A run-index row's full settings: its config.json where the row has it (older configs read as saved,
    e.g. ResNet-18's stem), else the row's columns over the defaults."""
    if row.get("config_json"):
        return RunConfig.from_dict(json.loads(row["config_json"])).to_dict()
    return {**{s.name: s.default for s in SETTINGS.values()}, **row}


def _cost(settings: Mapping[str, Any]) -> float:
    return relative_cost(settings["arch"], settings["size"], settings)


def grid(base: RunConfig, values: Mapping[str, Sequence[Any]], repeats: int = 1) -> list[RunConfig]:
    """Every combination of `values` applied to `base`, each repeated with seeds base.seed, +1, ..."""
    known = set(RunConfig.field_names())
    for name in values:
        if name not in known:
            raise ConfigError(name, "not a run setting")
        if name == "seed":
            raise ConfigError(name, "use repeats to vary seeds")
        if not values[name]:
            raise ConfigError(name, "give at least one value")
    if not 1 <= repeats <= 50:
        raise ConfigError("repeats", "must be 1..50")
    names = list(values)
    out = []
    for combo in itertools.product(*(values[n] for n in names)):
        changes = dict(zip(names, combo))
        if "arch" in changes and "weights" not in changes and base.weights in ("imagenet", "none"):
            changes["weights"] = base.weights if base.weights == "none" else RunConfig.default_weights(changes["arch"])
        for r in range(repeats):
            out.append(base.replace(**changes, seed=base.seed + r))
    return out


@dataclass(frozen=True)
class Speed:
    images_per_second: float
    source: str  # "measured" (same arch and size), "scaled" (from other runs) or "default"


def training_speed(config: RunConfig, history: Iterable[Mapping[str, Any]]) -> Speed:
    """Images/s for `config`, from earlier runs (rows of the run index) where possible.

    Same architecture at the same cost (size, stem, width, depth): the median measured speed. Same
    architecture at another cost: scaled by the cost. Otherwise the reference speed measured on this
    project's machine (REFERENCE_SPEEDS: the same network's where there is one), scaled by cost; FLOP ratios
    do not carry across architecture families on a CPU (MobileNet is memory-bound), so a MobileNet run says
    nothing about a ResNet's speed.
    """
    cost = _cost(config.to_dict())
    rows = [(r["images_per_second"], _cost(_row_settings(r)))
            for r in history if r.get("images_per_second") and r.get("arch") == config.arch]
    same = [ips for ips, row_cost in rows if math.isclose(row_cost, cost)]
    if same:
        return Speed(statistics.median(same), "measured")
    if rows:
        return Speed(statistics.median(ips * row_cost / cost for ips, row_cost in rows), "scaled")
    references = {arch: (size, settings, ips) for arch, size, settings, ips in REFERENCE_SPEEDS}
    size, settings, ips = references.get(config.arch, references[FALLBACK_ARCH])
    arch = config.arch if config.arch in references else FALLBACK_ARCH
    return Speed(ips * relative_cost(arch, size, settings) / cost, "default")


def times_key(config: RunConfig) -> str:
    """The core.progress.PhaseTimes key a run's phase times are recorded and read under."""
    return f"train/{config.arch}/{config.size}"


def phase_units(config: RunConfig, n_train: int, n_val: int, n_test: int) -> dict[str, int]:
    """Images each pass of a phase handles: one training epoch, one validation (with its BatchNorm re-estimate)
    and the test pass (with test-time augmentation's passes over val and test). `n_train` after limit_train."""
    validation = n_val + (min(n_train, config.bn_recalibration_batches * config.batch_size)
                          if config.recalibrate_bn else 0)
    test = n_test + (TTA_PASSES * (n_val + n_test) if config.tta else 0)
    return {"training": n_train, "validating": validation, "testing": test}


def phase_plan(config: RunConfig, n_train: int, n_val: int, n_test: int, history: Iterable[Mapping[str, Any]],
               times: PhaseTimes | None = None, epochs_done: int = 0) -> tuple[list[tuple[str, float]], Speed]:
    """The job's phases in order with the seconds each is expected to take, and the training speed used:
    loading, (training, validating) for each epoch still to run, testing, publishing, precomputing."""
    speed = training_speed(config, list(history))
    # precomputing embeds up to OOD_IMAGES training and validation images with the model in memory (the test
    # predictions are the test pass's own)
    precomputed = min(n_train + n_val, OOD_IMAGES)
    n_train = min(n_train, config.limit_train) if config.limit_train else n_train
    units = phase_units(config, n_train, n_val, n_test)
    key = times_key(config)

    def measured(phase: str, default: float) -> float:
        value = times.expected(key, phase) if times is not None else None
        return default if value is None else value

    train_per_image = 1.0 / speed.images_per_second
    val_per_image = measured("validating", train_per_image / EVAL_SPEEDUP)
    test_per_image = measured("testing", val_per_image)
    plan = [("loading", measured("loading", JOB_OVERHEAD_SECONDS))]
    for _ in range(max(config.epochs - epochs_done, 0)):
        plan += [("training", units["training"] * train_per_image),
                 ("validating", units["validating"] * val_per_image)]
    plan += [("testing", units["testing"] * test_per_image),
             ("publishing", measured("publishing", PUBLISH_SECONDS)),
             ("precomputing", measured("precomputing", PRECOMPUTE_SECONDS
                                       + (precomputed + FAITHFUL_IMAGES) * val_per_image))]
    return plan, speed


def estimate_seconds(config: RunConfig, n_train: int, n_val: int, n_test: int,
                     history: Iterable[Mapping[str, Any]], times: PhaseTimes | None = None) -> tuple[float, Speed]:
    """Wall time for one run: the sum of its `phase_plan`."""
    plan, speed = phase_plan(config, n_train, n_val, n_test, history, times)
    return sum(seconds for _, seconds in plan), speed


def format_duration(seconds: float) -> str:
    """A plan's duration: whole seconds under a minute ("12 s"), else as core.progress.format_seconds says it."""
    if math.isfinite(seconds) and seconds < 60:
        return f"{seconds:.0f} s"
    return format_seconds(seconds)


def field_type(name: str) -> type:
    if name not in SETTINGS:
        raise ConfigError(name, "not a run setting")
    kind = SETTINGS[name].kind
    return str if kind is tuple else kind


def parse_values(name: str, text: str) -> list[Any]:
    """'16, 32' -> [16, 32] typed for the field; for sweep forms and the command line."""
    kind = field_type(name)
    out: list[Any] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if kind is bool:
                if part.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(part)
                out.append(part.lower() in ("true", "1", "yes", "on"))
            else:
                out.append(kind(part) if kind is not int else int(float(part)) if float(part).is_integer()
                           else int(part))
        except ValueError:
            raise ConfigError(name, f"{part!r} is not a valid {kind.__name__}") from None
    if not out:
        raise ConfigError(name, "give at least one value")
    return out
