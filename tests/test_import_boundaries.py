"""The layers of core/ and which of them may load TensorFlow, checked over the import graph read from source.

A module "loads" a package when importing it runs an import of that package at module level, directly or
through other modules of this project (imports inside functions are how heavy layers stay lazy, and are
not followed; `if TYPE_CHECKING:` blocks never run). The rules (also in core/README.md):
- core/ never imports streamlit, at any level;
- TensorFlow and Keras load only in the model layers: core.models (but not core.models.architectures,
  which the light layers read), core.training, core.inference (but not core.inference.ood), and the CAM
  methods under core.explain.cam;
- pages load neither, except Classify, which loads a model by design.
tests/test_pages_light.py checks the pages again by really importing them in a fresh interpreter.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

HEAVY = ("tensorflow", "keras", "torch")
TF_LAYERS = ("core.models", "core.training", "core.inference", "core.explain.cam")
TF_FREE_INSIDE_TF_LAYERS = ("core.models", "core.models.architectures", "core.training", "core.inference",
                            "core.inference.ood", "core.explain.cam", "core.training.precision",
                            "core.training.threads")
PAGES_THAT_LOAD_A_MODEL = ("pages.classify",)
SCANNED = ("core", "pages", "ui")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for top in SCANNED if (PROJECT_ROOT / top).is_dir()
           for p in sorted((PROJECT_ROOT / top).rglob("*.py"))}


def with_parents(name: str) -> set[str]:
    """Importing a.b.c runs a and a.b first."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def imports(path: Path, module_level_only: bool) -> set[str]:
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.update(with_parents(alias.name))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.update(with_parents(base))
                found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
            elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                continue
            elif module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if not module_level_only or isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef)):
                visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)])

    visit(ast.parse(path.read_text()).body)
    return found


GRAPH = {name: imports(path, module_level_only=True) for name, path in MODULES.items()}


def loads(name: str) -> set[str]:
    """Every module that importing `name` runs, as far as this project's source says."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in GRAPH.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def heavy(name: str) -> list[str]:
    return sorted(set(HEAVY) & loads(name))


def in_tf_layer(name: str) -> bool:
    if name in TF_FREE_INSIDE_TF_LAYERS:
        return False
    return any(name == layer or name.startswith(layer + ".") for layer in TF_LAYERS)


def test_the_graph_sees_the_known_heavy_and_light_modules():
    # guards the reader itself: a graph that saw no imports would pass every rule below
    assert "tensorflow" in loads("core.training.trainer") and "keras" in loads("core.models.build")
    assert "core.store.runs" in loads("core.jobs.queue")
    assert not heavy("core.config")


def test_core_never_imports_streamlit():
    offenders = [name for name, path in MODULES.items()
                 if name.startswith("core") and "streamlit" in imports(path, module_level_only=False)]
    assert not offenders


@pytest.mark.parametrize("name", [n for n in MODULES if n.startswith("core") and not in_tf_layer(n)])
def test_light_layers_do_not_load_tensorflow(name):
    assert not heavy(name), f"{name} loads {heavy(name)} at import time; defer the import to where it is used"


@pytest.mark.parametrize("name", [n for n in MODULES if not n.startswith("core")
                                  and n not in PAGES_THAT_LOAD_A_MODEL])
def test_pages_do_not_load_tensorflow(name):
    assert not heavy(name), f"{name} loads {heavy(name)} at import time"
