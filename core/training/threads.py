"""How a training process on a CPU shares its cores among TensorFlow's operations.

TensorFlow runs a graph's operations on two thread pools: the intra-op pool splits one operation (a
convolution, a matrix product) over the cores, the inter-op pool runs independent operations side by side.
Its default splits every operation over all cores. That suits networks whose operations are large; a small
network at a small size is a long chain of tiny operations (MobileNetV3's depthwise convolutions, hard-swish,
squeeze-and-excite), where splitting each costs more than it saves, and running independent ones side by
side, each on one core, is faster.

So a run on a CPU whose step is small (forward GFLOPs per batch, from the architecture registry's cost, below
OPS_SIDE_BY_SIDE_BELOW_GFLOPS) runs each operation on one core and as many operations at once as there are
cores; any other run keeps TensorFlow's defaults. Measured on 2 cores (AMD EPYC, AVX512_BF16), training steps
on one constant batch, images/s with TensorFlow's default against one core per operation
(side test, median step over 25-150 steps; one to four processes each, alternating where more than one):

| network, size, batch (forward GFLOPs per batch) | default | one core per operation |
|---|---|---|
| MobileNetV3-Small, 28 px, 32 (0.04) | 616 | 1084 |
| MobileNetV3-Small, 64 px, 32 (0.16) | 460-520 | 570-710 |
| Compact ResNet width 16 depth 1, 28 px, 32 (0.33) | 820-1210 | 1290-1310 |
| MobileNetV3-Small, 128 px, 32 (0.63) | 226-236 | 234-247 |
| MobileNetV3-Small, 224 px, 32 (1.9) | 89-92 | 62-77 |
| Compact ResNet width 32 depth 2, 28 px, 128 (10) | 442 | 343 |
| ResNet-50, 64 px, 32, mixed bfloat16 (11) | 80 | 70 |

The pools are fixed for the life of a process once TensorFlow has run its first operation. A training process
(`python -m core train`, or the job runner's `job-exec`, one run per process) sets them before that; a
process that has already run TensorFlow (a test session, a benchmark that trains several models) keeps what it
has, and the run records the pools it actually ran with. On a GPU nothing is changed.

TensorFlow-free at module level, like core.training.precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from core.models import architectures

# Between the largest step measured faster with one core per operation (0.33) and the smallest measured no
# faster (0.63).
OPS_SIDE_BY_SIDE_BELOW_GFLOPS = 0.5
DEFAULT = 0  # TensorFlow's value for "choose for me" (all cores)


@dataclass(frozen=True)
class CpuThreads:
    """TensorFlow's CPU thread pools: threads per operation (intra-op) and operations at once (inter-op);
    0 is TensorFlow's default (as many as the cores)."""

    intra_op: int = DEFAULT
    inter_op: int = DEFAULT

    @property
    def is_default(self) -> bool:
        return self.intra_op == DEFAULT and self.inter_op == DEFAULT

    def describe(self) -> str:
        if self.is_default:
            return "TensorFlow's default threads (each operation split over all cores)"
        return f"{self.intra_op} thread per operation, up to {self.inter_op} operations at once"

    def to_dict(self) -> dict[str, int]:
        return {"intra_op": self.intra_op, "inter_op": self.inter_op}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def step_gflops(arch: str, size: int, batch_size: int, settings: Mapping[str, Any] | None = None) -> float:
    """Forward GFLOPs of one training batch, from the architecture registry's cost."""
    return architectures.get(arch).relative_cost(size, settings) * batch_size


def plan(arch: str, size: int, batch_size: int, settings: Mapping[str, Any] | None = None,
         gpu: bool = False, cores: int | None = None) -> CpuThreads:
    """The pools a run of this network should train with on this machine (see the module's text)."""
    cores = usable_cores() if cores is None else cores
    if gpu or cores < 2 or step_gflops(arch, size, batch_size, settings) >= OPS_SIDE_BY_SIDE_BELOW_GFLOPS:
        return CpuThreads()
    return CpuThreads(intra_op=1, inter_op=cores)


def current() -> CpuThreads:
    import tensorflow as tf  # noqa: PLC0415

    return CpuThreads(tf.config.threading.get_intra_op_parallelism_threads(),
                      tf.config.threading.get_inter_op_parallelism_threads())


def apply(wanted: CpuThreads) -> CpuThreads:
    """Set TensorFlow's pools to `wanted` if this process has not run TensorFlow yet; the pools in effect
    afterwards (the ones it already had, otherwise)."""
    import tensorflow as tf  # noqa: PLC0415

    if wanted != current():
        try:
            tf.config.threading.set_intra_op_parallelism_threads(wanted.intra_op)
            tf.config.threading.set_inter_op_parallelism_threads(wanted.inter_op)
        except RuntimeError:  # TensorFlow has started: its pools cannot change any more
            pass
    return current()
