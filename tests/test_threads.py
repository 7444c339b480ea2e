"""CPU thread pools (core.training.threads): which runs get one core per operation, that a fresh training
process really gets those pools, and that a process where TensorFlow has started keeps its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from core.training import threads
from core.training.threads import CpuThreads

PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch, size, batch, settings", [
    ("mobilenetv3small", 64, 32, {}),  # 0.16 GFLOPs a batch: measured 1.1-1.4x faster with one core per op
    ("mobilenetv3small", 28, 32, {}),  # upsampled to 32 px: 0.04
    ("compactresnet", 28, 32, {"width": 16, "depth": 1}),  # 0.33
])
def test_a_small_step_runs_one_core_per_operation_and_as_many_at_once_as_cores(arch, size, batch, settings):
    assert threads.step_gflops(arch, size, batch, settings) < threads.OPS_SIDE_BY_SIDE_BELOW_GFLOPS
    assert threads.plan(arch, size, batch, settings, cores=2) == CpuThreads(intra_op=1, inter_op=2)
    assert threads.plan(arch, size, batch, settings, cores=16) == CpuThreads(intra_op=1, inter_op=16)


@pytest.mark.parametrize("arch, size, batch, settings", [
    ("mobilenetv3small", 128, 32, {}),  # 0.63: no faster
    ("mobilenetv3small", 224, 32, {}),  # slower
    ("mobilenetv3small", 64, 128, {}),  # the same network, four times the work per operation
    ("compactresnet", 28, 128, {"width": 32, "depth": 2}),  # the presets' network: slower
    ("resnet50", 64, 32, {}),
])
def test_a_large_step_keeps_tensorflows_defaults(arch, size, batch, settings):
    assert threads.plan(arch, size, batch, settings, cores=2) == CpuThreads()
    assert CpuThreads().is_default and "default" in CpuThreads().describe()


def test_a_gpu_or_a_single_core_keeps_the_defaults():
    assert threads.plan("mobilenetv3small", 64, 32, gpu=True, cores=2) == CpuThreads()
    assert threads.plan("mobilenetv3small", 64, 32, cores=1) == CpuThreads()


def test_a_fresh_process_trains_with_the_planned_pools():
    """What a training process does first (core.training.trainer), then one operation: the pools stick."""
    code = ("import json; import tensorflow as tf; from core.training import threads; "
            "got = threads.apply(threads.plan('mobilenetv3small', 64, 32, cores=2)); "
            "tf.constant(1.0) + 1.0; print(json.dumps([got.to_dict(), threads.current().to_dict()]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=300,
                          check=True)
    applied, after_an_operation = json.loads(done.stdout.strip().splitlines()[-1])
    assert applied == after_an_operation == {"intra_op": 1, "inter_op": 2}


def test_a_process_where_tensorflow_has_started_keeps_its_pools():
    tf.constant(1.0) + 1.0  # TensorFlow has run here: its pools are fixed
    before = threads.current()
    wanted = CpuThreads(intra_op=1, inter_op=3) if before != CpuThreads(1, 3) else CpuThreads(1, 4)
    assert threads.apply(wanted) == before == threads.current()
