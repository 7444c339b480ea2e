"""The study's reported figures (its Tables 1-15) as a reference layer beside our own runs.

The numbers live in `study_tables.json`, one record per reported number, with the configuration in this
project's field names (arch, size, batch_size, optimizer, lr, momentum, dropout, attention, class_weights,
weights), the split (train/val/test on BloodMNIST, 'external' for the Raabin-WBC Tables 14-15), the metric,
the class for per-class tables (BloodMNIST short label), and a `reliable` flag. Table 13's batch-32 columns
are marked unreliable: the study's notebooks attached class names to them in the wrong order.

No streamlit, no TensorFlow: the results page reads this on every render.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from core.config import SETTINGS

DATA_FILE = Path(__file__).with_name("study_tables.json")

# Fields a study record shares with RunConfig (so our runs and the study's can be grouped alike).
CONFIG_FIELDS = tuple(name for name, s in SETTINGS.items() if s.study)
SPLITS = ("train", "val", "test", "external")
METRICS = ("accuracy", "auc", "loss", "precision", "recall", "f1", "support")
UNRELIABLE_MARK = "†"


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def tables() -> dict[int, dict[str, str]]:
    """Table number -> {caption, rows, columns} as the study describes them."""
    return {int(k): dict(v) for k, v in _document()["tables"].items()}


@lru_cache(maxsize=1)
def _records() -> pd.DataFrame:
    df = pd.DataFrame.from_records(_document()["records"])
    df["table"] = df["table"].astype(int)
    df["value"] = df["value"].astype(float)
    df["reliable"] = df["reliable"].astype(bool)
    return df


def records() -> pd.DataFrame:
    """Every reported number, one row each (a copy: callers may change it)."""
    return _records().copy()


def table(number: int) -> pd.DataFrame:
    df = records()
    return df[df["table"] == number].reset_index(drop=True)


def values(split: str, metric: str, cls: str | None = None, dataset: str = "BloodMNIST") -> pd.DataFrame:
    """The study's values of one metric as 'runs': config fields plus value, reliable, tables, note.

    The same experiment is often reported in several tables (Table 1's batch-32 column is Table 2's original
    model, Table 8's and Table 9's dropout 0.3); such repeats collapse into one row, listing every table.
    """
    df = records()
    pick = (df["split"] == split) & (df["metric"] == metric) & (df["dataset"] == dataset)
    pick &= df["class"].isna() if cls is None else (df["class"] == cls)
    df = df[pick]
    if df.empty:
        return pd.DataFrame(columns=[*CONFIG_FIELDS, "value", "reliable", "tables", "note"])
    keys = [f for f in CONFIG_FIELDS]
    grouped = df.groupby(keys, dropna=False, sort=False)
    out = grouped.agg(value=("value", "first"), reliable=("reliable", "all"),
                      n_values=("value", "nunique"),
                      tables=("table", lambda t: ", ".join(str(x) for x in sorted(set(t)))),
                      note=("note", lambda n: next((x for x in n if isinstance(x, str)), None)))
    out = out.reset_index()
    # an experiment reported twice with different numbers would be a transcription or study error
    if (out["n_values"] > 1).any():
        bad = out[out["n_values"] > 1].iloc[0]
        raise ValueError(f"the study reports different {split} {metric} values for one configuration "
                         f"(tables {bad['tables']})")
    return out.drop(columns="n_values")
