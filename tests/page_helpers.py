"""What the AppTest page tests share: open a page (or the app) over a run store, and read what it shows."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
APP = str(PROJECT_ROOT / "app.py")
# Elements whose value is text the user reads; metrics and progress bars are added with their labels.
TEXT_KINDS = ("title", "subheader", "markdown", "caption", "code", "info", "error", "warning", "success")


def page(name: str) -> str:
    """The script of a page: page("results") -> .../pages/results.py."""
    return str(PROJECT_ROOT / "pages" / f"{name}.py")


def ok(at: AppTest) -> AppTest:
    """The app after a run, which must not have raised."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_page(monkeypatch, script: str, artifacts: Path, timeout: float, **env: str | Path) -> AppTest:
    """Run a page (or app.py) once over the run store in `artifacts` ($CELLSCOPE_ARTIFACTS), with any other
    environment variables given (e.g. CELLSCOPE_DATA_DIR=...)."""
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(artifacts))
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return ok(AppTest.from_file(script, default_timeout=timeout).run())


def texts(at: AppTest) -> str:
    """Every piece of text the page shows, joined: headings, markdown, captions, code, alerts, metrics
    ('label: value') and progress bars."""
    parts = [str(e.value) for kind in TEXT_KINDS for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    parts += [p.text for p in at.progress]
    return "\n".join(parts)


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def selectbox(at: AppTest, label: str):
    return next(s for s in at.selectbox if s.label == label)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def frame_with(at: AppTest, column: str):
    """The first dataframe shown that has this column."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def figures(at: AppTest) -> list[dict]:
    """The plotly figures on the page, as the JSON the browser gets."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def array(value) -> np.ndarray:
    """A plotly figure's array: a list, or since plotly 6 a typed array {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return data.reshape([int(x) for x in str(shape).split(",")]) if shape else data
    return np.asarray(value, float)
