from __future__ import annotations

import pytest

from core.config import ConfigError, RunConfig
from core.jobs.plans import PlanRequest, plan, sweep_slot
from core.jobs.sweeps import (
    JOB_OVERHEAD_SECONDS,
    estimate_seconds,
    format_duration,
    grid,
    parse_values,
    relative_cost,
    training_speed,
)
from core.store.runs import RunStore


def test_grid_is_the_product_with_seed_repeats():
    base = RunConfig(arch="resnet50", size=64, seed=10)
    configs = grid(base, {"batch_size": [16, 32], "dropout": [0.3, 0.5]}, repeats=3)
    assert len(configs) == 12
    assert {(c.batch_size, c.dropout) for c in configs} == {(16, 0.3), (16, 0.5), (32, 0.3), (32, 0.5)}
    assert sorted({c.seed for c in configs}) == [10, 11, 12]
    assert len(set(configs)) == 12  # all distinct


def test_grid_gives_each_architecture_its_default_weights():
    configs = grid(RunConfig(arch="resnet50", weights="imagenet"), {"arch": ["resnet18", "resnet50"]})
    assert {c.arch: c.weights for c in configs} == {"resnet18": "none", "resnet50": "imagenet"}


@pytest.mark.parametrize("values, field", [({"nope": [1]}, "nope"), ({"seed": [1, 2]}, "seed"),
                                           ({"lr": []}, "lr"), ({"dropout": [1.5]}, "dropout")])
def test_grid_rejects_bad_sweeps(values, field):
    with pytest.raises(ConfigError) as e:
        grid(RunConfig(), values)
    assert e.value.field == field


def test_parse_values_types_each_field():
    assert parse_values("batch_size", "16, 32") == [16, 32]
    assert parse_values("lr", "1e-3,1e-4") == [1e-3, 1e-4]
    assert parse_values("attention", "true, off") == [True, False]
    assert parse_values("arch", "resnet18,resnet50") == ["resnet18", "resnet50"]
    for name, text in (("batch_size", "sixteen"), ("attention", "maybe"), ("lr", " , ")):
        with pytest.raises(ConfigError) as e:
            parse_values(name, text)
        assert e.value.field == name


def test_speed_prefers_measurements_then_same_arch_scaling_then_the_reference():
    config = RunConfig(arch="resnet50", size=64)
    rows = [{"arch": "resnet50", "size": 64, "images_per_second": 50.0},
            {"arch": "resnet50", "size": 64, "images_per_second": 70.0},
            {"arch": "mobilenetv3small", "size": 64, "images_per_second": 900.0}]
    measured = training_speed(config, rows)
    assert measured.source == "measured" and measured.images_per_second == 60.0
    scaled = training_speed(RunConfig(arch="resnet50", size=128), rows)
    assert scaled.source == "scaled" and scaled.images_per_second == pytest.approx(60.0 / 4)
    # a MobileNet measurement says nothing about ResNet-101: the reference speed is used
    other = training_speed(RunConfig(arch="resnet101", size=64), rows)
    assert other.source == "default" and other == training_speed(RunConfig(arch="resnet101", size=64), [])
    default = training_speed(RunConfig(arch="resnet50", size=224), [])
    assert default.source == "default" and default.images_per_second < training_speed(config, []).images_per_second
    assert relative_cost("resnet18", 28) > relative_cost("resnet18", 64) / 4  # small stem keeps 4x the pixels


def test_estimate_grows_with_epochs_and_data():
    rows = [{"arch": "resnet50", "size": 64, "images_per_second": 100.0}]
    one, _ = estimate_seconds(RunConfig(epochs=1), 1000, 100, 100, rows)
    two, _ = estimate_seconds(RunConfig(epochs=2), 1000, 100, 100, rows)
    limited, _ = estimate_seconds(RunConfig(epochs=1, limit_train=500), 1000, 100, 100, rows)
    assert one > JOB_OVERHEAD_SECONDS + 10 and two - one == pytest.approx(1000 / 100 + 100 / 300)
    assert limited == pytest.approx(one - 5.0)


def test_format_duration():
    assert format_duration(12) == "12 s"
    assert format_duration(600) == "10 min"
    assert format_duration(3 * 3600) == "3.0 h"
    assert format_duration(3 * 86400) == "3.0 days"
    assert format_duration(float("inf")) == "unknown"


# -- plans: what the Train page and `python -m core submit` queue ---------------------------------------------

def test_plan_builds_a_grid_with_repeats_estimates_and_one_name(tmp_path):
    request = PlanRequest(values={"arch": "resnet50", "weights": "auto", "tags": "demo, week 3"},
                          sweep={"batch_size": "16, 32"}, repeats=2)
    p = plan(request, split_sizes=(1000, 100, 100), store=RunStore(tmp_path / "runs"))
    assert p.ok and len(p.configs) == 4 and p.errors == {} and p.blockers == []
    assert {c.tags for c in p.configs} == {("demo", "week 3")} and {c.weights for c in p.configs} == {"imagenet"}
    assert len(p.seconds) == 4 and set(p.speed_sources) == {"default"} and p.history_runs == 0
    assert p.sweep_name == "batch_size=16,32 x2 seeds"
    assert plan(PlanRequest(values={})).sweep_name is None  # one job: no sweep
    assert plan(PlanRequest(values={})).seconds == []  # no sizes or store: no estimate


def test_plan_auto_weights_follow_each_swept_network():
    p = plan(PlanRequest(values={"arch": "resnet18", "weights": "auto"}, sweep={"arch": "resnet18, resnet50"}))
    assert {c.arch: c.weights for c in p.configs} == {"resnet18": "none", "resnet50": "imagenet"}
    fixed = plan(PlanRequest(values={"arch": "resnet18", "weights": "none"}, sweep={"arch": "resnet18, resnet50"}))
    assert {c.weights for c in fixed.configs} == {"none"}


def test_plan_puts_each_error_in_its_slot():
    p = plan(PlanRequest(values={"epochs": 0}))
    assert not p.ok and p.errors["epochs"].message == "must be 1..1000"
    # every invalid field at once, each in its slot (RunConfig itself stops at the first)
    p = plan(PlanRequest(values={"epochs": 0, "lr": 0.0, "dropout": 1.0, "size": 99}))
    assert {slot: e.message for slot, e in p.errors.items()} == {
        "epochs": "must be 1..1000", "lr": "must be in (0, 1]", "dropout": "must be in [0, 1)",
        "data": "must be one of (28, 64, 128, 224)"}
    p = plan(PlanRequest(values={}, sweep={"lr": "fast", "dropout": "0.1"}))
    assert list(p.errors) == [sweep_slot("lr")] and p.errors[sweep_slot("lr")].field == "lr"
    assert list(plan(PlanRequest(values={}, sweep={"seed": "1, 2"})).errors) == [sweep_slot("seed")]
    assert list(plan(PlanRequest(values={}, repeats=99)).errors) == ["sweep_repeats"]
    p = plan(PlanRequest(values={}), data_error="no such file")
    assert p.errors["data"].message == "no such file" and not p.ok
    p = plan(PlanRequest(values={"data": "/x.npz", "size": 28}, sweep={"size": "28, 64"}))
    assert "your file holds 28 px" in p.errors[sweep_slot("size")].message


def test_plan_blocks_on_bloodmnist_sizes_not_downloaded():
    p = plan(PlanRequest(values={}, sweep={"size": "28, 64"}), available=[28])
    assert p.ok and p.blockers == ["BloodMNIST 64 px is not downloaded yet: download it (Train page, section 1, "
                                   "or python -m core download --size N), or train on your own file."]
    assert plan(PlanRequest(values={}, sweep={"size": "28, 64"}), available=[28, 64]).blockers == []


def test_submit_command_queues_the_same_run_again(tiny_npz):
    import shlex

    from core.cli import build_parser, config_from_args
    from core.config import SETTINGS
    from core.jobs.plans import submit_command

    switches = [s for s in SETTINGS.values() if s.kind is bool]
    flipped = {s.name: not s.default for s in switches[:2]}  # one or two switches turned over
    config = RunConfig(data=str(tiny_npz), size=28, arch="resnet18", weights="none", epochs=3, lr=1.5e-4,
                       tags=("week 3", "demo"), **flipped)
    command = submit_command(config)
    assert command.startswith("python -m core submit ") and "'week 3'" in command
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert config_from_args(args) == config
    assert submit_command(RunConfig()) == f"python -m core submit --weights {RunConfig().weights}"
