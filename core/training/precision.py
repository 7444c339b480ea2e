"""The numeric precision policy of a run: float32, or mixed precision (bfloat16 / float16 compute, float32
weights), and which of them this machine runs well.

TensorFlow-free at module level (the Train page reads `supported()` / `choices()` to offer what this machine
runs; the GPUs are core.devices'):
- mixed_float16 needs a GPU (CPUs emulate float16 slowly);
- mixed_bfloat16 runs natively where the CPU has bfloat16 instructions (AVX512_BF16 or AMX, read from
  /proc/cpuinfo) or on a GPU (natively from compute capability 8.0, Ampere).
"auto" (the default) is the fastest this machine runs: on a GPU mixed bfloat16 (no loss scaling needed),
except mixed float16 on GPUs known to be older than compute capability 8.0 (float16 tensor cores since 7.0,
bfloat16 emulated); on a CPU with bfloat16 instructions mixed bfloat16 for the networks the registry marks as
faster in it (core.models.architectures `cpu_bfloat16_faster`), else float32. `resolve()` picks it when a run
starts, and the run records the precision it used.
`policy(name)` sets Keras' global policy for the run (Keras keeps it per thread) and puts the previous one
back afterwards, also when the run fails or is cancelled.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from core import devices
from core.config import PRECISIONS
from core.errors import UserFacingError
from core.models import architectures

AUTO = "auto"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_GPU_CAPABILITY = (8, 0)  # Ampere: bfloat16 tensor cores


class PrecisionUnsupported(UserFacingError, RuntimeError):
    pass


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def gpu_present() -> bool:
    """A GPU jobs can train on (core.devices.placement_gpus: TensorFlow-free; the trainer asks TensorFlow)."""
    return bool(devices.placement_gpus())


def gpu_capability() -> tuple[int, int] | None:
    """The lowest compute capability of this machine's GPUs (None: no GPU, or not known)."""
    return devices.min_capability(devices.placement_gpus())


def supported(gpu: bool | None = None, flags: set[str] | None = None) -> tuple[str, ...]:
    """The precisions this machine runs natively; `gpu`/`flags` default to what this machine reports."""
    gpu = gpu_present() if gpu is None else gpu
    flags = cpu_flags() if flags is None else flags
    out = ["float32"]
    if gpu or any(f in flags for f in BF16_CPU_FLAGS):
        out.append("mixed_bfloat16")
    if gpu:
        out.append("mixed_float16")
    return tuple(out)


def choices(gpu: bool | None = None, flags: set[str] | None = None) -> tuple[str, ...]:
    """The precisions the Train page offers here: auto and what this machine runs natively."""
    return (AUTO, *supported(gpu, flags))


def gpu_auto(capability: tuple[int, int] | None) -> str:
    """What "auto" runs on a GPU of this compute capability (None: not known, as for any recent GPU)."""
    return "mixed_float16" if capability is not None and capability < BF16_GPU_CAPABILITY else "mixed_bfloat16"


def resolve(name: str, arch: str | None = None, gpu: bool | None = None, flags: set[str] | None = None,
            capability: tuple[int, int] | None = None) -> str:
    """The policy a run of `arch` uses: `name` itself, or for "auto" on a GPU mixed bfloat16, or mixed float16
    when `capability` is known to be below 8.0; on a CPU with bfloat16
    instructions mixed bfloat16 when the registry marks `arch` as faster in it (any network, when `arch` is
    None), else float32."""
    if name != AUTO:
        return name
    if gpu is None:
        gpu, capability = gpu_present(), gpu_capability()
    if gpu:
        return gpu_auto(capability)
    if "mixed_bfloat16" not in supported(gpu, flags):
        return "float32"
    return "mixed_bfloat16" if arch is None or architectures.get(arch).cpu_bfloat16_faster else "float32"


def describe_support(gpu: bool | None = None, flags: set[str] | None = None,
                     capability: tuple[int, int] | None = None) -> str:
    """One sentence for the Train page: what this machine offers, and what auto picks."""
    if gpu is None:
        gpu, capability = gpu_present(), gpu_capability()
    ok = supported(gpu, flags)
    where = "a GPU" if gpu else ("a CPU with bfloat16 instructions" if "mixed_bfloat16" in ok
                                 else "a CPU without bfloat16 instructions")
    if gpu:
        auto = gpu_auto(capability) + ("" if capability else " (mixed_float16 on GPUs older than compute "
                                                             "capability 8.0)")
    elif "mixed_bfloat16" not in ok:
        auto = "float32"
    else:
        faster = [a.name for a in architectures.ARCHITECTURES if a.cpu_bfloat16_faster]
        auto = f"mixed_bfloat16 for {', '.join(faster)} (faster in it here), float32 for the others"
    return f"This machine ({where}) supports: {', '.join(ok)}; auto runs {auto}."


def check(name: str, gpu: bool | None = None, flags: set[str] | None = None) -> None:
    """Refuse a precision this machine does not run natively, saying what it does run."""
    if name not in PRECISIONS:
        raise PrecisionUnsupported(f"unknown precision {name!r}; one of {', '.join(PRECISIONS)}")
    if name == AUTO:
        return
    ok = supported(gpu, flags)
    if name not in ok:
        need = "a GPU" if name == "mixed_float16" else "a CPU with AVX512_BF16 or AMX, or a GPU"
        raise PrecisionUnsupported(f"precision {name} needs {need}; this machine supports {', '.join(ok)}.")


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy set to `name` inside the block, the previous one restored after it."""
    import keras  # noqa: PLC0415  (the module stays TensorFlow-free for the Train page)

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
