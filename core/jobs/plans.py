"""Plans: what a launch would queue, built from form or command-line values. The Train page and
`python -m core submit` both call `plan(...)`, so configs, weights, presets, grids, repeats, estimates and the
sweep's name are decided here, once.

    request = PlanRequest(values={"arch": "resnet50", "weights": "auto", ...}, sweep={"lr": "1e-3, 1e-4"})
    p = plan(request, store=RunStore(), split_sizes=(11959, 1712, 3421))
    p.ok, p.configs, p.errors, p.seconds, p.sweep_name

No TensorFlow, no streamlit.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from core.config import SETTINGS, ConfigError, RunConfig
from core.jobs import presets
from core.jobs.sweeps import estimate_seconds, grid, parse_values
from core.progress import PhaseTimes
from core.store.runs import RunStore

AUTO = "auto"  # weights: each network's own default (ImageNet where Keras has it, else from scratch)
DATA_SLOT = "data"  # where errors about the data file and its image size go
REPEATS_SLOT = "sweep_repeats"


def sweep_slot(name: str) -> str:
    """The error slot of a swept field's values."""
    return f"sweep_{name}"


@dataclass(frozen=True)
class PlanRequest:
    """What a user asked for. `values` are RunConfig fields as entered: weights may be "auto", tags a tuple or
    "a, b" text; missing fields take their defaults. `sweep` maps a field to its values as typed ("16, 32")."""

    values: Mapping[str, Any]
    sweep: Mapping[str, str] = field(default_factory=dict)
    repeats: int = 1
    preset: str | None = None  # a preset loaded unchanged: its key names the sweep
    variants: str | None = None  # a preset whose variants apply on top of the values (e.g. table2)


@dataclass
class Plan:
    configs: list[RunConfig] = field(default_factory=list)
    errors: dict[str, ConfigError] = field(default_factory=dict)  # slot (a field, sweep_<field>, ...) -> error
    blockers: list[str] = field(default_factory=list)  # why it cannot launch yet (missing data)
    seconds: list[float] = field(default_factory=list)
    speed_sources: Counter = field(default_factory=Counter)
    images_per_second: list[float] = field(default_factory=list)
    history_runs: int = 0
    sweep_name: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.configs) and not self.errors

    def first_error(self) -> ConfigError | None:
        return next(iter(self.errors.values()), None)


def sweep_name(n_configs: int, preset: str | None, sweep: Mapping[str, str], repeats: int) -> str | None:
    """The one naming rule: a preset's key; else, for several jobs, the swept values and the repeats
    ("lr=1e-3,1e-4 x3 seeds"); a single job has no sweep."""
    seeds = [f"x{repeats} seeds"] if repeats > 1 else []
    if preset:
        return " ".join([preset, *seeds])
    if n_configs <= 1:
        return None
    return " ".join([f"{name}={text.replace(' ', '')}" for name, text in sweep.items()] + seeds)


def format_value(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def submit_command(config: RunConfig) -> str:
    """The command line that queues this run again (`python -m core submit` with a flag for each setting that
    is not its default; the weights always, since their default depends on the network)."""
    parts = ["python -m core submit"]
    d, defaults = config.to_dict(), RunConfig().to_dict()
    for name, s in SETTINGS.items():
        value = d[name]
        if value == defaults[name] and name != "weights":
            continue
        if s.kind is bool:
            parts.append(s.cli_flag)  # a switch's flag turns its default over
        elif s.kind is tuple:
            parts += [f"{s.cli_flag} {shlex.quote(str(v))}" for v in value]
        else:
            parts.append(f"{s.cli_flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def preset_request(key: str, repeats: int = 1, overrides: Mapping[str, Any] | None = None) -> PlanRequest:
    """A preset as a request, as the Train page loads it: its base values with `overrides` on top (the
    command line's flags), its grid as typed values. A swept field cannot also be overridden."""
    preset = presets.get(key)
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & set(preset.values))
    if clash:
        raise ConfigError(clash[0], f"preset {key} sweeps {clash[0]} itself; leave it out or sweep it with --grid")
    sweep = {name: ", ".join(format_value(v) for v in values) for name, values in preset.values.items()}
    return PlanRequest(values={**preset.base, **overrides}, sweep=sweep, repeats=repeats, preset=key,
                       variants=key if preset.variants else None)


def resolve_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values as RunConfig fields: "auto" weights become the network's default, tags text a tuple."""
    out = {name: values[name] for name in SETTINGS if name in values}
    if out.get("weights") == AUTO:
        out["weights"] = RunConfig.default_weights(out.get("arch", RunConfig().arch), out.get("norm", "batch"))
    tags = out.get("tags", ())
    if isinstance(tags, str):
        tags = tags.split(",")
    out["tags"] = tuple(t.strip() for t in tags if t.strip())
    return out


def all_errors(values: Mapping[str, Any]) -> list[ConfigError]:
    """Every invalid field of `values` at once (RunConfig names the first it meets): each one found is set
    aside at its default and the rest checked again, so a form shows all its errors together."""
    values, found = dict(values), []
    defaults = {s.name: s.default for s in SETTINGS.values()}
    while True:
        try:
            RunConfig(**values)
            return found
        except ConfigError as e:
            if any(f.field == e.field for f in found) or e.field not in defaults:
                return [*found, e] if all(f.field != e.field for f in found) else found
            found.append(e)
            values[e.field] = defaults[e.field]


def plan(request: PlanRequest, *, data_error: str | None = None, available: Sequence[int] | None = None,
         split_sizes: tuple[int, int, int] | None = None, store: RunStore | None = None) -> Plan:
    """The jobs `request` would queue, or the errors that stop it, each in its slot.

    data_error: a problem with the chosen data file (shown in the data slot). available: the BloodMNIST sizes
    on this machine (a missing one becomes a blocker); None skips the check. split_sizes: images in
    train/val/test, and store: the run store whose earlier runs give the speed; with both, each job gets an
    estimate.
    """
    out = Plan()
    if data_error:
        out.errors[DATA_SLOT] = ConfigError(DATA_SLOT, data_error)
    values = resolve_values(request.values)
    config_errors = all_errors(values)
    if config_errors:
        for e in config_errors:
            out.errors.setdefault(e.field if e.field not in ("data", "size") else DATA_SLOT, e)
        return out
    base = RunConfig(**values)
    sweep: dict[str, list[Any]] = {}
    for name, text in request.sweep.items():
        try:
            sweep[name] = parse_values(name, text)
        except ConfigError as e:
            out.errors[sweep_slot(name)] = e
    if "size" in sweep and base.data:
        out.errors[sweep_slot("size")] = ConfigError("size", f"your file holds {base.size} px images only; sweep "
                                                             f"the size with BloodMNIST")
    if out.errors:
        return out
    if request.values.get("weights") == AUTO and "arch" in sweep:
        # "auto" means each network's own default; grid() gives that when the base starts from ImageNet
        # (the base's network is replaced by the swept ones anyway)
        pretrained = [a for a in sweep["arch"] if RunConfig.default_weights(a) == "imagenet"]
        if pretrained:
            base = base.replace(arch=pretrained[0], weights="imagenet")
    variants = presets.get(request.variants).variants if request.variants else ({},)
    try:
        out.configs = [c for v in variants for c in grid(base.replace(**v), sweep, int(request.repeats))]
    except ConfigError as e:
        slot = sweep_slot(e.field) if e.field in sweep else REPEATS_SLOT if e.field == "repeats" else e.field
        out.errors[slot] = e
        return out
    if not base.data and available is not None:
        missing = sorted({c.size for c in out.configs} - set(available))
        if missing:
            one = len(missing) == 1
            out.blockers.append(f"BloodMNIST {', '.join(map(str, missing))} px {'is' if one else 'are'} not "
                                f"downloaded yet: download {'it' if one else 'them'} (Train page, section 1, or "
                                f"python -m core download --size N), or train on your own file.")
    if split_sizes is not None and store is not None:
        history = store.list_runs()
        times = PhaseTimes.in_artifacts(store.runs_dir.parent)
        out.history_runs = len(history)
        for c in out.configs:
            seconds, speed = estimate_seconds(c, *split_sizes, history, times)
            out.seconds.append(seconds)
            out.speed_sources[speed.source] += 1
            out.images_per_second.append(speed.images_per_second)
    out.sweep_name = sweep_name(len(out.configs), request.preset, request.sweep, int(request.repeats))
    return out
