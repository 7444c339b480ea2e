"""Fail the setup if the environment drifted into something we never want (torch) or lacks medmnist's registry."""

import importlib.util
import sys

problems = []
if importlib.util.find_spec("torch") is not None:
    problems.append("torch is installed in this environment; this project must not pull it in "
                    "(install medmnist with --no-deps: see requirements-nodeps.txt)")
if importlib.util.find_spec("medmnist") is None:
    problems.append("medmnist is missing: pip install --no-deps -r requirements-nodeps.txt")
if problems:
    sys.exit("environment check failed:\n  - " + "\n  - ".join(problems))
print("environment ok: no torch, medmnist registry present")
