"""The numeric precision policy of a run: float32, or mixed precision (bfloat16 / float16 compute, float32
weights), and which of them this machine runs well.

TensorFlow-free at module level (the Train page reads `supported()` to say what this machine offers):
- mixed_float16 needs a GPU (CPUs emulate float16 slowly);
- mixed_bfloat16 runs natively where the CPU has bfloat16 instructions (AVX512_BF16 or AMX, read from
  /proc/cpuinfo) or on a GPU.
"auto" (the default) is the faster of float32 and mixed bfloat16 for the run's network on this machine:
mixed bfloat16 on a GPU, or on a CPU with bfloat16 instructions for the networks the registry marks as
faster in it (core.models.architectures `cpu_bfloat16_faster`), else float32. `resolve()` picks it when a
run starts, and the run records the precision it used.
`policy(name)` sets Keras' global policy for the run (Keras keeps it per thread) and puts the previous one
back afterwards, also when the run fails or is cancelled.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from core.config import PRECISIONS
from core.errors import UserFacingError
from core.models import architectures

AUTO = "auto"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


class PrecisionUnsupported(UserFacingError, RuntimeError):
    pass


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def gpu_present() -> bool:
    """An NVIDIA GPU with its driver loaded (TensorFlow-free; the trainer asks TensorFlow instead)."""
    try:
        return NVIDIA_GPUS.is_dir() and any(NVIDIA_GPUS.iterdir())
    except OSError:
        return False


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


def resolve(name: str, arch: str | None = None, gpu: bool | None = None, flags: set[str] | None = None) -> str:
    """The policy a run of `arch` uses: `name` itself, or for "auto" mixed bfloat16 on a GPU, or on a CPU with
    bfloat16 instructions when the registry marks `arch` as faster in it (any network, when `arch` is None),
    else float32."""
    if name != AUTO:
        return name
    gpu = gpu_present() if gpu is None else gpu
    if "mixed_bfloat16" not in supported(gpu, flags):
        return "float32"
    return "mixed_bfloat16" if gpu or arch is None or architectures.get(arch).cpu_bfloat16_faster else "float32"


def describe_support(gpu: bool | None = None, flags: set[str] | None = None) -> str:
    """One sentence for the Train page: what this machine offers, and what auto picks."""
    gpu = gpu_present() if gpu is None else gpu
    ok = supported(gpu, flags)
    where = "a GPU" if gpu else ("a CPU with bfloat16 instructions" if "mixed_bfloat16" in ok
                                 else "a CPU without bfloat16 instructions")
    if "mixed_bfloat16" not in ok:
        auto = "float32"
    elif gpu:
        auto = "mixed_bfloat16"
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
