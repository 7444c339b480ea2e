"""Pages that need no model open without TensorFlow: importing what each page imports at top level must not
load tensorflow, keras or torch (the Classify page loads a model by design, through core.inference.classify)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

LIGHT_PAGES = ["home.py", "train.py", "results.py", "confusion.py", "external.py", "review.py", "embedding_map.py"]


def page_imports(page: Path) -> list[str]:
    """Modules a page imports at top level (and `from m import x` submodules), read from its source."""
    names = []
    for node in ast.parse(page.read_text()).body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_every_page_is_checked_or_named_heavy():
    pages = {p.name for p in (PROJECT_ROOT / "pages").glob("*.py")}
    assert pages == set(LIGHT_PAGES) | {"classify.py"}


@pytest.mark.parametrize("page", LIGHT_PAGES)
def test_page_imports_do_not_load_tensorflow(page):
    modules = page_imports(PROJECT_ROOT / "pages" / page)
    assert any(m.startswith("core.") for m in modules) and "streamlit" in modules
    code = (f"import importlib, sys\nfor m in {modules!r}:\n"
            "    try: importlib.import_module(m)\n    except ModuleNotFoundError: pass  # a name, not a module\n"
            "heavy = sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
