"""The accelerators a job can train on, and which TensorFlow build is installed: TensorFlow-free (the app's
process never imports TensorFlow to answer), except `tensorflow_gpus`, which the training process calls.

GPUs are listed, in this order of preference:
- `CELLSCOPE_FAKE_GPUS=N`: N simulated GPUs ("simulated GPU 0".."N-1"), for tests and demos of the queue's
  placement on a machine without one (jobs still train on the CPU: TensorFlow sees no GPU);
- `nvidia-smi` (index, name, UUID, memory, compute capability);
- `/proc/driver/nvidia/gpus` (an NVIDIA driver without nvidia-smi).
`CUDA_VISIBLE_DEVICES` in this process's environment narrows the list, as CUDA would ("" or "-1": none; a
comma list of indices, in nvidia-smi's PCI bus order, or of GPU UUIDs), so a server started with
`CUDA_VISIBLE_DEVICES=2,3` places its jobs on those two only.

The queue pins each job to one GPU through `job_environment(gpu)`: `CUDA_VISIBLE_DEVICES` set to that GPU
(its UUID when known, else its index with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so CUDA numbers them as nvidia-smi
does) and `TF_FORCE_GPU_ALLOW_GROWTH=true`; the trainer also turns memory growth on (`tensorflow_gpus`). It
also passes on the list the queue places from (`CELLSCOPE_JOB_GPUS`), so that a job process that starts the
next job when it ends places it among all the GPUs, not only the one it was given.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserFacingError

FAKE_GPUS_ENV = "CELLSCOPE_FAKE_GPUS"
PLACEMENT_ENV = "CELLSCOPE_JOB_GPUS"  # the CUDA_VISIBLE_DEVICES the queue places from ("*": all), for job processes
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
NVIDIA_SMI_TIMEOUT = 10.0
MAX_FAKE_GPUS = 64
QUERY = ("index", "name", "uuid", "memory.total", "compute_cap")


class DeviceError(UserFacingError):
    pass


@dataclass(frozen=True)
class Gpu:
    index: int  # nvidia-smi's number (PCI bus order); what the jobs table records and the job card shows
    name: str
    uuid: str | None = None
    memory_mib: int | None = None
    capability: tuple[int, int] | None = None  # CUDA compute capability, e.g. (8, 0) for an A100
    simulated: bool = False

    @property
    def visible_id(self) -> str:
        """What CUDA_VISIBLE_DEVICES takes to show a process this GPU alone."""
        return self.uuid or str(self.index)

    def describe(self) -> str:
        extra = []
        if self.memory_mib:
            extra.append(f"{self.memory_mib / 1024:.0f} GiB")
        if self.capability:
            extra.append(f"compute {self.capability[0]}.{self.capability[1]}")
        return f"GPU {self.index} · {self.name}" + (f" ({', '.join(extra)})" if extra else "")


# -- listing ------------------------------------------------------------------------------------------------
def _capability(text: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def parse_nvidia_smi(text: str, fields: tuple[str, ...] = QUERY) -> list[Gpu]:
    """GPUs from `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits` output."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        row = dict(zip(fields, (part.strip() for part in line.split(","))))
        index = _int(row.get("index", ""))
        if index is None:
            continue
        uuid = row.get("uuid") or None
        out.append(Gpu(index, row.get("name") or f"GPU {index}", uuid if uuid and uuid.startswith(("GPU-", "MIG-"))
                       else None, _int(row.get("memory.total", "")), _capability(row.get("compute_cap", ""))))
    return out


def _from_nvidia_smi() -> list[Gpu] | None:
    """None when nvidia-smi is missing or fails (then /proc is tried)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    for fields in (QUERY, QUERY[:-1]):  # drivers before 510 do not know compute_cap
        try:
            done = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode == 0:
            return parse_nvidia_smi(done.stdout, fields)
    return None


def _from_proc(root: Path = NVIDIA_PROC) -> list[Gpu]:
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    except OSError:
        return []
    out = []
    for index, folder in enumerate(folders):  # one folder per GPU, named by PCI bus id (so in bus order)
        name, uuid = "NVIDIA GPU", None
        try:
            for line in (folder / "information").read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Model":
                    name = value.strip()
                elif key.strip() == "GPU UUID":
                    uuid = value.strip() or None
        except OSError:
            pass
        out.append(Gpu(index, name, uuid))
    return out


def fake_gpus(value: str) -> list[Gpu]:
    """The simulated list `CELLSCOPE_FAKE_GPUS=value` asks for."""
    n = _int(value.strip()) if re.fullmatch(r"\s*\d+\s*", value) else None
    if n is None or n > MAX_FAKE_GPUS:
        raise DeviceError(f"{FAKE_GPUS_ENV}={value!r}: give a number of simulated GPUs from 0 to {MAX_FAKE_GPUS} "
                          f"(or unset it to list the real ones)")
    return [Gpu(i, f"simulated GPU {i}", memory_mib=16 * 1024, simulated=True) for i in range(n)]


def narrow(gpus: list[Gpu], visible: str | None) -> list[Gpu]:
    """`gpus` as a process with CUDA_VISIBLE_DEVICES=`visible` sees them (None: all), in the order it names.
    Like CUDA, the list stops at the first entry that names no GPU."""
    if visible is None:
        return list(gpus)
    out: list[Gpu] = []
    for item in (part.strip() for part in visible.split(",")):
        match = [g for g in gpus if item and (str(g.index) == item or (g.uuid and g.uuid.startswith(item)
                                                                     and item.startswith(("GPU-", "MIG-"))))]
        if not match or match[0] in out:
            break
        out.append(match[0])
    return out


@functools.lru_cache(maxsize=8)
def _listed(fake: str | None, visible: str | None) -> tuple[Gpu, ...]:
    if fake is not None:
        found = fake_gpus(fake)
    else:
        smi = _from_nvidia_smi()
        found = smi if smi is not None else _from_proc()
    return tuple(narrow(found, visible))


def gpus(for_placement: bool = False) -> list[Gpu]:
    """The GPUs this process sees (read once per environment: nvidia-smi takes a moment); `for_placement`:
    those the queue places jobs on, which in a job process are all of the queue's, not only its own."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if for_placement and PLACEMENT_ENV in os.environ:
        visible = None if os.environ[PLACEMENT_ENV] == "*" else os.environ[PLACEMENT_ENV]
    return list(_listed(os.environ.get(FAKE_GPUS_ENV), visible))


# -- the TensorFlow build -----------------------------------------------------------------------------------
def _installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def tensorflow_build() -> tuple[str, str | None]:
    """("CUDA" | "CPU" | "missing", version), from the installed distributions (TensorFlow not imported):
    `tensorflow-cpu` is the CPU build; `tensorflow` with NVIDIA's CUDA wheels (requirements-gpu.txt) the CUDA
    one; plain `tensorflow` without them finds no CUDA libraries unless the system has them, so it says CPU."""
    cpu = _installed("tensorflow-cpu")
    if cpu:
        return "CPU", cpu
    plain = _installed("tensorflow")
    if plain is None:
        return "missing", None
    return ("CUDA" if _installed("nvidia-cudnn-cu12") else "CPU"), plain


def placement_gpus() -> list[Gpu]:
    """The GPUs the local queue pins jobs to: the listed ones when TensorFlow can use them (its CUDA build) or
    when they are simulated; none with the CPU build (jobs would train on the CPU whatever their GPU)."""
    found = gpus(for_placement=True)
    if found and not found[0].simulated and tensorflow_build()[0] != "CUDA":
        return []
    return found


def job_environment(gpu: Gpu | None) -> dict[str, str]:
    """What a job's process adds to its environment to train on `gpu` alone (None: a CPU job, nothing)."""
    if gpu is None:
        return {}
    placing_from = os.environ.get(PLACEMENT_ENV, os.environ.get("CUDA_VISIBLE_DEVICES", "*"))
    env = {"CUDA_VISIBLE_DEVICES": gpu.visible_id, "TF_FORCE_GPU_ALLOW_GROWTH": "true", PLACEMENT_ENV: placing_from}
    if gpu.uuid is None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the index is nvidia-smi's, in PCI bus order
    return env


def describe_gpus(found: list[Gpu] | None = None) -> str:
    """One line for the Train page and `python -m core info`: where jobs train."""
    found = gpus() if found is None else found
    build, _ = tensorflow_build()
    cores = os.cpu_count() or 1
    if not found:
        return f"Jobs train on the CPU ({cores} cores): no GPU found."
    names = "; ".join(g.describe() for g in found)
    if found[0].simulated:
        return (f"{len(found)} simulated GPUs ({FAKE_GPUS_ENV}): jobs are placed one per GPU but train on the "
                f"CPU ({cores} cores).")
    if build != "CUDA":
        return (f"This machine has {len(found)} GPU(s) ({names}) but TensorFlow is the CPU build, so jobs train on "
                f"the CPU: set up with `make setup GPU=1` to use them.")
    return f"Jobs train on {'the GPU' if len(found) == 1 else f'{len(found)} GPUs, one job per GPU'}: {names}."


def min_capability(found: list[Gpu]) -> tuple[int, int] | None:
    """The lowest compute capability of `found` (None: unknown for any of them)."""
    caps = [g.capability for g in found]
    return None if not caps or any(c is None for c in caps) else min(caps)  # type: ignore[type-var]


# -- in the training process ---------------------------------------------------------------------------------
def tensorflow_gpus() -> list[Gpu]:
    """The GPUs TensorFlow sees in this process (CUDA_VISIBLE_DEVICES: the job's one), each with memory growth
    on (TensorFlow then takes GPU memory as it needs it, not all of it at start). Call it before TensorFlow
    runs its first operation; later, growth can no longer change and stays as it was."""
    import tensorflow as tf  # noqa: PLC0415  (training process only)

    out = []
    for i, device in enumerate(tf.config.list_physical_devices("GPU")):
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError:  # already initialised in this process
            pass
        details: dict[str, Any] = {}
        try:
            details = tf.config.experimental.get_device_details(device)
        except (RuntimeError, ValueError):
            pass
        cap = details.get("compute_capability")
        out.append(Gpu(i, str(details.get("device_name") or device.name), capability=tuple(cap) if cap else None))
    return out


def job_device_line() -> str:
    """The line a job's log starts with: the device its environment gives it (before TensorFlow loads)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return "device: no CUDA_VISIBLE_DEVICES (all GPUs TensorFlow finds, or the CPU)"
    return f"device: CUDA_VISIBLE_DEVICES={visible}" + (" (the CPU)" if visible in ("", "-1") else "")
