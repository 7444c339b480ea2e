"""Fail the setup if the environment drifted into something we never want (torch, or both TensorFlow builds) or
lacks medmnist's registry.

`--build cpu|gpu` (the Makefile passes it) also checks that the TensorFlow distribution installed is that build:
`tensorflow-cpu` (or plain `tensorflow` off x86-64) for cpu, `tensorflow` with its CUDA wheels for gpu.
"""

import argparse
import importlib.metadata as md
import importlib.util
import platform
import sys


def installed(name: str) -> bool:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True


def tensorflow_problems(build: str) -> list[str]:
    cpu_dist, plain_dist = installed("tensorflow-cpu"), installed("tensorflow")
    cuda = installed("nvidia-cudnn-cu12")
    if cpu_dist and plain_dist:
        return ["both tensorflow-cpu and tensorflow are installed (they write the same package): "
                "remove the venv and run make setup again"]
    if not (cpu_dist or plain_dist):
        return ["TensorFlow is missing: pip install -r requirements.txt -r requirements-cpu.txt (or -gpu.txt)"]
    if build == "gpu" and (cpu_dist or not cuda):
        return ["GPU=1 asked for TensorFlow with CUDA but this venv has the CPU build "
                "(pip install -r requirements-gpu.txt into a fresh venv)"]
    if build == "cpu" and cuda and platform.machine() == "x86_64":
        return ["this venv has TensorFlow's CUDA wheels but the CPU build was asked for (GPU=0): remove the venv"]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", choices=("cpu", "gpu"), help="the TensorFlow build this venv must have")
    args = parser.parse_args()
    problems = []
    if importlib.util.find_spec("torch") is not None:
        problems.append("torch is installed in this environment; this project must not pull it in "
                        "(install medmnist with --no-deps: see requirements-nodeps.txt)")
    if importlib.util.find_spec("medmnist") is None:
        problems.append("medmnist is missing: pip install --no-deps -r requirements-nodeps.txt")
    if args.build:
        problems += tensorflow_problems(args.build)
    if problems:
        sys.exit("environment check failed:\n  - " + "\n  - ".join(problems))
    print("environment ok: no torch, medmnist registry present"
          + (f", TensorFlow {args.build} build" if args.build else ""))


if __name__ == "__main__":
    main()
