"""Runs as a table and as a matrix: the results page's data, with no streamlit and no TensorFlow.

Runs are indexed by their configuration (architecture x image size x batch size x ... x seed, as MedMNIST+
indexes its runs), so a results matrix is a query over the SQLite index, not a rebuild:

    table = runs_table(RunStore())                       # one row per run, best-epoch metrics only
    table = filter_runs(table, {"optimizer": ["adam"]}, tags=["study"])
    m = matrix(table, rows=["arch", "batch_size"], cols=["size"], metric="test_accuracy")
    m.mean, m.sd, m.n                                    # DataFrames: mean, sample sd (ddof=1), runs per cell

Every number comes from the run's best epoch (chosen on validation), as written to metrics.json and the index;
last-epoch numbers are never shown. A few per-run details (per-class precision/recall, training curves) read
the selected runs' own files.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from core.config import SETTINGS
from core.data.registry import short_label
from core.errors import UserFacingError
from core.jobs.queue import JobQueue
from core.store import reference
from core.store.runs import (
    CONFIG_FILE,
    HISTORY_FILE,
    INCOMPLETE,
    RUN_ID_PATTERN,
    Run,
    RunStore,
    read_history,
)

# -- the runs table ------------------------------------------------------------------------------------

STATUSES = ("complete", "running", "queued", "failed", "cancelled", "incomplete")
CONFIG_FIELDS = tuple(name for name, s in SETTINGS.items() if s.kind is not tuple)  # tags: their own column
# Fields the filters, matrix and parallel-coordinates pickers offer first, in this order.
MAIN_FIELDS = tuple(s.name for s in sorted((s for s in SETTINGS.values() if s.main), key=lambda s: s.main))
INDEX_METRICS = ("best_epoch", "epochs_run", "val_accuracy", "val_auc", "test_accuracy", "test_auc",
                 "test_macro_f1", "train_seconds", "images_per_second")
F1_PREFIX = "f1_"

FIELD_LABELS = {
    "run_id": "Run", "created": "Created", "status": "Status",
    **{name: s.label for name, s in SETTINGS.items()},
    "best_epoch": "Best epoch", "epochs_run": "Epochs run", "val_accuracy": "Val accuracy", "val_auc": "Val AUC",
    "test_accuracy": "Test accuracy", "test_auc": "Test AUC", "test_macro_f1": "Test macro F1",
    "train_seconds": "Train time (s)", "images_per_second": "Images/s",
}


class ResultsError(UserFacingError, ValueError):
    pass


def f1_column(label: str) -> str:
    """Column of a class's test F1: 'immature granulocytes(...)' -> 'f1_immature_granulocytes'."""
    return F1_PREFIX + short_label(label).replace(" ", "_")


def class_of_f1_column(column: str) -> str:
    return column[len(F1_PREFIX):].replace("_", " ")


def field_label(field: str) -> str:
    if field.startswith(F1_PREFIX):
        return f"F1 {class_of_f1_column(field)}"
    return FIELD_LABELS.get(field, field)


def index_signature(store: RunStore) -> tuple:
    """Changes whenever the index changes (the SQLite file and its write-ahead log): a cache key for pages."""
    out: list[Any] = [str(store.index_path)]
    for suffix in ("", "-wal"):
        try:
            st = os.stat(f"{store.index_path}{suffix}")
            out += [st.st_mtime_ns, st.st_size]
        except OSError:
            out += [None, None]
    try:  # runs being trained appear and vanish in .incomplete/
        out.append(os.stat(store.runs_dir / INCOMPLETE).st_mtime_ns)
    except OSError:
        out.append(None)
    return tuple(out)


def _incomplete_rows(store: RunStore) -> list[dict[str, Any]]:
    """Runs still in .incomplete/ (training, failed or cancelled): config only, no metrics."""
    work = store.runs_dir / INCOMPLETE
    if not work.is_dir():
        return []
    jobs = None
    out = []
    for path in sorted(work.iterdir()):
        if not (path.is_dir() and RUN_ID_PATTERN.match(path.name)):
            continue
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
            created = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        if jobs is None:
            jobs = JobQueue.statuses_by_run(store)
        status = jobs.get(path.name, "incomplete")
        out.append({"run_id": path.name, "created": created, "status": "incomplete" if status == "succeeded"
                    else status, "path": str(path), "config": config})
    return out


def runs_table(store: RunStore | None = None, include_incomplete: bool = True) -> pd.DataFrame:
    """One row per run from the SQLite index (no metrics.json is read): run_id, created, status, every
    config field, tags ("a, b"), best-epoch metrics and one test-F1 column per class (`f1_<class>`).

    Runs still in `.incomplete/` (being trained, failed, cancelled) are rows too, with their job status and
    no metrics.
    """
    store = store or RunStore()
    records: list[dict[str, Any]] = []
    for r in store.list_runs("created DESC"):
        config = json.loads(r["config_json"])
        rec: dict[str, Any] = {"run_id": r["run_id"], "created": r["created"], "status": "complete",
                               "path": r["path"]}
        rec.update({k: config.get(k) for k in CONFIG_FIELDS})
        rec["tags"] = ", ".join(config.get("tags") or ())
        rec.update({k: r.get(k) for k in INDEX_METRICS})
        f1 = r.get("per_class_f1")
        if f1:
            rec.update({f1_column(label): value for label, value in json.loads(f1).items()})
        records.append(rec)
    if include_incomplete:
        for row in _incomplete_rows(store):
            config = row.pop("config")
            row.update({k: config.get(k) for k in CONFIG_FIELDS})
            row["tags"] = ", ".join(config.get("tags") or ())
            records.append(row)
    columns = ["run_id", "created", "status", *CONFIG_FIELDS, "tags", *INDEX_METRICS]
    df = pd.DataFrame.from_records(records)
    for c in [*columns, "path"]:
        if c not in df.columns:
            df[c] = pd.Series(dtype=float if c in INDEX_METRICS or c == "created" else object)
    f1_cols = [c for c in df.columns if c.startswith(F1_PREFIX)]
    f1_cols.sort(key=lambda c: c)
    df = df[[*columns, *f1_cols, "path"]]
    for c in INDEX_METRICS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["created"] = pd.to_datetime(df["created"], unit="s", utc=True).dt.tz_convert(None)
    return df.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)


def f1_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(F1_PREFIX)]


COST_METRICS = ("train_seconds", "images_per_second")


def varied_fields(df: pd.DataFrame, fields: Iterable[str] = CONFIG_FIELDS) -> list[str]:
    """The fields (settings by default) that take more than one value among the rows of `df`."""
    return [f for f in fields if f in df.columns and len(sorted_values(df[f])) > 1]


def display_columns(df: pd.DataFrame) -> list[str]:
    """The runs table's columns in reading order: what the run is and how it ended first (run, status,
    validation and test accuracy), then the settings that differ between these runs (main ones first), tags,
    the other best-epoch scores with one test F1 per class, the cost, when it was made, then every other
    setting (the same in every run shown)."""
    headline = ["run_id", "status", "val_accuracy", "test_accuracy"]
    settings = [f for f in (*MAIN_FIELDS, *CONFIG_FIELDS) if f in CONFIG_FIELDS]
    differing = varied_fields(df, dict.fromkeys(settings))
    scores = [m for m in INDEX_METRICS if m not in COST_METRICS and m not in headline]
    order = [*headline, *differing, "tags", *scores, *f1_columns(df), *COST_METRICS, "created"]
    return order + [c for c in dict.fromkeys(settings) if c not in order]


_WORD_BREAKS = re.compile(r"[\s,;·()/\-]+")  # between the words of a run's text and of a query ("ResNet-101")


def search_runs(df: pd.DataFrame, text: str) -> pd.DataFrame:
    """Rows where every word of `text` (case-insensitive) appears in the run's id, status, tags or a setting
    (its value or its description: "resnet50", "ResNet-50", "64 px", "adam"): a search box over the runs. A
    word is found inside a longer word ("resn", the end of a run id), except a number, which must be a whole
    word: "16" finds batch 16, not every run made at 16:xx."""
    words = [w for w in _WORD_BREAKS.split(str(text).lower()) if w]
    if not words or df.empty:
        return df
    fields = [f for f in ("run_id", "status", "tags", *CONFIG_FIELDS) if f in df.columns]

    def run_words(row: pd.Series) -> set[str]:
        parts = [str(row[f]) for f in fields if row[f] is not None]
        parts += [describe_value(f, row[f]) for f in CONFIG_FIELDS if f in row and _present(row[f])]
        return {w for w in _WORD_BREAKS.split(" ".join(parts).lower()) if w}

    def found(word: str, have: set[str]) -> bool:
        return word in have if word.isdigit() else any(word in w for w in have)

    keep = df.apply(run_words, axis=1).map(lambda have: all(found(w, have) for w in words))
    return df[keep.astype(bool)]


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def settings_diff(df: pd.DataFrame, run_ids: Sequence[str]) -> pd.DataFrame:
    """The settings in which these runs differ, one row per setting (its label) and a column per run id, each
    value described as the pickers show it ("64 px", "ImageNet"); no rows when they share every setting."""
    rows = df.set_index("run_id").reindex([r for r in run_ids if r in set(df["run_id"])])
    fields = varied_fields(rows, dict.fromkeys((*MAIN_FIELDS, *CONFIG_FIELDS)))
    out = pd.DataFrame({run_id: [describe_value(f, rows.at[run_id, f]) if _present(rows.at[run_id, f]) else "—"
                                 for f in fields] for run_id in rows.index},
                       index=pd.Index([field_label(f) for f in fields], name="setting"))
    return out.reset_index()


def split_tags(tags: Any) -> list[str]:
    if not isinstance(tags, str) or not tags:
        return []
    return [t.strip() for t in tags.split(",") if t.strip()]


def all_tags(df: pd.DataFrame) -> list[str]:
    seen: set[str] = set()
    for tags in df["tags"]:
        seen.update(split_tags(tags))
    return sorted(seen)


def sorted_values(values: Iterable[Any]) -> list[Any]:
    """Distinct non-missing values in natural order (numbers by value, False before True, text A-Z)."""
    distinct = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if v not in distinct:
            distinct.append(v)
    try:
        return sorted(distinct)
    except TypeError:
        return sorted(distinct, key=lambda v: (type(v).__name__, str(v)))


def filter_runs(df: pd.DataFrame, filters: Mapping[str, Sequence[Any]] | None = None,
                tags: Iterable[str] = (), all_tags_required: bool = False) -> pd.DataFrame:
    """Rows whose `field` value is one of `filters[field]` for every field given (an empty list or a missing
    field means no constraint), and that carry any (or, with `all_tags_required`, all) of `tags`."""
    keep = pd.Series(True, index=df.index)
    for field, allowed in (filters or {}).items():
        if field not in df.columns:
            raise ResultsError(f"no field {field!r} in the runs table")
        allowed = list(allowed)
        if allowed:
            keep &= df[field].isin(allowed)
    wanted = set(tags)
    if wanted:
        has = df["tags"].map(lambda t: set(split_tags(t)))
        keep &= has.map(lambda s: wanted <= s if all_tags_required else bool(wanted & s))
    return df[keep]


# -- metrics a matrix can show -------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    key: str  # column of the runs table
    label: str
    digits: int = 3
    percent: bool = False
    # where the study reports it: (split, metric, class) for core.store.reference.values, or None
    reference: tuple[str, str, str | None] | None = None

    def format(self, value: float) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.{self.digits}f}"


BASE_METRICS = {
    "test_accuracy": Metric("test_accuracy", "Test accuracy", reference=("test", "accuracy", None)),
    "test_auc": Metric("test_auc", "Test AUC", reference=("test", "auc", None)),
    "test_macro_f1": Metric("test_macro_f1", "Test macro F1"),
    "val_accuracy": Metric("val_accuracy", "Validation accuracy", reference=("val", "accuracy", None)),
    "train_seconds": Metric("train_seconds", "Train time (s)", digits=0),
}


def metric_options(df: pd.DataFrame | None = None, labels: Iterable[str] | None = None) -> dict[str, Metric]:
    """The base metrics plus one test F1 per class (from the table's F1 columns or the given labels)."""
    out = dict(BASE_METRICS)
    cols = f1_columns(df) if df is not None else []
    if labels is not None:
        cols = sorted(set(cols) | {f1_column(label) for label in labels})
    for c in cols:
        cls = class_of_f1_column(c)
        out[c] = Metric(c, f"Test F1: {cls}", reference=("test", "f1", cls))
    return out


def get_metric(key: str, df: pd.DataFrame | None = None) -> Metric:
    options = metric_options(df)
    if key in options:
        return options[key]
    if key.startswith(F1_PREFIX):
        cls = class_of_f1_column(key)
        return Metric(key, f"Test F1: {cls}", reference=("test", "f1", cls))
    raise ResultsError(f"unknown metric {key!r}; one of {', '.join(options)}")


# -- the matrix ------------------------------------------------------------------------------------------

ALL = "all runs"


def describe_value(field: str, value: Any) -> str:
    """A level as a short human label: ('arch', 'resnet50') -> 'ResNet-50', ('size', 64) -> '64 px'."""
    if field == ALL:
        return ALL
    if field in SETTINGS:
        return SETTINGS[field].describe(value)
    return f"{FIELD_LABELS.get(field, field).lower()} {value}"


@dataclass
class Matrix:
    """Cells of `metric` over runs grouped by row fields x column fields.

    mean, sd (sample, ddof=1; NaN for n < 2), n (runs in the cell; 0 for an empty cell, whose mean is NaN),
    seeds (the cell's seeds, "1, 2, 3"). Row and column indexes hold the field values (a MultiIndex for
    several fields).

    A cell pools only runs that share every setting in `same` (for runs: all but the seed, so a cell is a
    mean over seeds, never over a 1,000-image and a 500-image run). When a cell holds runs of several such
    settings, mean/sd/n/seeds are those of the best of them and `settings` says how many there were (1 for
    a cell of one setting, 0 for an empty cell).
    """

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    metric: str
    mean: pd.DataFrame
    sd: pd.DataFrame
    n: pd.DataFrame
    seeds: pd.DataFrame
    settings: pd.DataFrame | None = None

    @property
    def mixed(self) -> int:
        """How many cells hold runs of more than one setting (each shows its best setting only)."""
        return 0 if self.settings is None else int((self.settings.to_numpy() > 1).sum())

    @property
    def row_keys(self) -> list[tuple]:
        return [k if isinstance(k, tuple) else (k,) for k in self.mean.index]

    @property
    def col_keys(self) -> list[tuple]:
        return [k if isinstance(k, tuple) else (k,) for k in self.mean.columns]

    def row_labels(self) -> list[str]:
        fields = self.rows or (ALL,)
        return [" · ".join(describe_value(f, v) for f, v in zip(fields, key)) for key in self.row_keys]

    def col_labels(self) -> list[str]:
        fields = self.cols or (ALL,)
        return [" · ".join(describe_value(f, v) for f, v in zip(fields, key)) for key in self.col_keys]

    def text(self, metric: Metric | None = None) -> pd.DataFrame:
        """Cell text "mean ± sd (n)"; "mean (1)" for a single run; "" for an empty cell; a cell that holds runs
        of several settings adds " · best of k settings" (its numbers are that best setting's)."""
        if metric is None:
            known = self.metric in BASE_METRICS or self.metric.startswith(F1_PREFIX)
            metric = get_metric(self.metric) if known else Metric(self.metric, self.metric)
        fmt = metric.format

        def cell(mean: float, sd: float, n: int, settings: int) -> str:
            if n == 0:
                return ""
            text = f"{fmt(mean)} ({n})" if n == 1 or math.isnan(sd) else f"{fmt(mean)} ± {fmt(sd)} ({n})"
            return text + (f" · best of {settings} settings" if settings > 1 else "")

        settings = (self.settings if self.settings is not None else self.n.clip(upper=1)).to_numpy(int)
        out = [[cell(m, s, int(k), int(g)) for m, s, k, g in zip(mr, sr, nr, gr)]
               for mr, sr, nr, gr in zip(self.mean.to_numpy(float), self.sd.to_numpy(float),
                                         self.n.to_numpy(int), settings)]
        return pd.DataFrame(out, index=self.mean.index, columns=self.mean.columns)

    def long(self) -> pd.DataFrame:
        """One row per cell: the row fields, the column fields, mean, sd, n, seeds (for CSV export)."""
        records = []
        for i, rk in enumerate(self.row_keys):
            for j, ck in enumerate(self.col_keys):
                rec = dict(zip(self.rows or (ALL,), rk))
                rec.update(zip(self.cols or (ALL,), ck))
                rec.update(metric=self.metric, mean=self.mean.iat[i, j], sd=self.sd.iat[i, j],
                           n=int(self.n.iat[i, j]), seeds=self.seeds.iat[i, j])
                if self.settings is not None:
                    rec["settings"] = int(self.settings.iat[i, j])
                records.append(rec)
        return pd.DataFrame.from_records(records)


def _make_index(keys: list[tuple], fields: Sequence[str]) -> pd.Index:
    if not fields:
        return pd.Index([ALL])
    if len(fields) == 1:
        return pd.Index([k[0] for k in keys], name=fields[0], dtype=object)
    return pd.MultiIndex.from_tuples(keys, names=list(fields))


def field_levels(df: pd.DataFrame, field: str, first: Sequence[Any] | None = None, extend: bool = True) -> list:
    """The values a matrix axis shows for `field`: `first` (in that order), then, with `extend` or when no
    `first` is given, every other value present in the table."""
    out = list(first or [])
    if extend or first is None:
        out += [v for v in sorted_values(df[field]) if v not in out]
    return out


SEED_ONLY = tuple(f for f in CONFIG_FIELDS if f != "seed")  # what runs pooled in one cell must share
LOWER_IS_BETTER = {"train_seconds"}  # metrics whose best setting in a mixed cell is the lowest


def matrix(df: pd.DataFrame, rows: Sequence[str], cols: Sequence[str], metric: str,
           levels: Mapping[str, Sequence[Any]] | None = None, extend: bool = True,
           same: Sequence[str] | None = None) -> Matrix:
    """Group runs by `rows` x `cols` fields and summarise `metric` per cell over the runs there (seeds).

    Axes are the full product of each field's values (those present in `df`, or `levels[field]` first), so
    a combination without runs is an empty cell (mean NaN, n 0). Runs whose metric is missing (a run still
    training) are not counted. A field may not be both a row and a column.

    `same`: the fields runs must share to be pooled in a cell (default: every setting but the seed, those in
    `df`); a cell whose runs differ in one of them shows its best setting (highest mean; lowest for a cost)
    and counts the settings in `Matrix.settings`. `same=()` pools every run of a cell (the study's values).
    """
    rows, cols = tuple(rows), tuple(cols)
    if set(rows) & set(cols):
        raise ResultsError(f"{', '.join(sorted(set(rows) & set(cols)))} cannot be both a row and a column")
    for f in (*rows, *cols, metric):
        if f not in df.columns:
            raise ResultsError(f"no field {f!r} in the runs table")
    levels = levels or {}
    row_keys = list(product(*[field_levels(df, f, levels.get(f), extend) for f in rows])) if rows else [(ALL,)]
    col_keys = list(product(*[field_levels(df, f, levels.get(f), extend) for f in cols])) if cols else [(ALL,)]

    values = pd.to_numeric(df[metric], errors="coerce")
    sub = df.assign(_value=values)[values.notna()]
    keys = [*rows, *cols]
    same = [f for f in (SEED_ONLY if same is None else same) if f in df.columns and f not in keys]
    same = [f for f in same if sub[f].astype(str).nunique() > 1]  # only the settings that differ can split a cell
    # one number per distinct setting of the `same` fields (a missing value is a value of its own)
    sub = sub.assign(_setting=sub.groupby(same, sort=False, dropna=False).ngroup() if same and len(sub) else 0)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    cells: dict[tuple, tuple[float, float, int, str, int]] = {}
    groups = sub.groupby(keys, sort=False, dropna=True) if keys else [((), sub)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        settings = list(group.groupby("_setting", sort=False))
        # best setting: highest mean (lowest for a cost); ties go to the one with more runs
        _, best = max(settings, key=lambda kv: (sign * kv[1]["_value"].mean(), len(kv[1])))
        v = best["_value"].to_numpy(float)
        sd = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
        seeds = ", ".join(str(s) for s in sorted_values(best["seed"])) if "seed" in best else ""
        cells[key] = (float(v.mean()), sd, len(v), seeds, len(settings))

    shape = (len(row_keys), len(col_keys))
    mean, sd, n = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, int)
    seeds, n_settings = np.full(shape, "", dtype=object), np.zeros(shape, int)
    for i, rk in enumerate(row_keys):
        for j, ck in enumerate(col_keys):
            key = (rk if rows else ()) + (ck if cols else ())
            if key in cells:
                mean[i, j], sd[i, j], n[i, j], seeds[i, j], n_settings[i, j] = cells[key]
    index, columns = _make_index(row_keys, rows), _make_index(col_keys, cols)
    frame = lambda a: pd.DataFrame(a, index=index, columns=columns)  # noqa: E731
    return Matrix(rows, cols, metric, frame(mean), frame(sd), frame(n), frame(seeds), frame(n_settings))


# -- the study beside our matrix -------------------------------------------------------------------------

@dataclass
class ReferenceMatrix:
    """The study's values laid out like one of our matrices; `unreliable` marks cells built from values the
    study's notebooks mislabelled; `tables` names the study tables behind each cell."""

    matrix: Matrix
    unreliable: pd.DataFrame
    tables: pd.DataFrame

    @property
    def empty(self) -> bool:
        return int(self.matrix.n.to_numpy().sum()) == 0

    def text(self, metric: Metric) -> pd.DataFrame:
        out = self.matrix.text(metric)
        # a single study value is shown bare (no "(1)"): it is one reported number, not a mean over seeds
        single = self.matrix.n.to_numpy() == 1
        means = self.matrix.mean.to_numpy(float)
        values = out.to_numpy(object)
        values[single] = [metric.format(v) for v in means[single]]
        values = np.where(self.unreliable.to_numpy(bool), values + f" {reference.UNRELIABLE_MARK}", values)
        return pd.DataFrame(values, index=out.index, columns=out.columns)


def reference_matrix(ours: Matrix, filters: Mapping[str, Sequence[Any]] | None = None) -> ReferenceMatrix | None:
    """The study's numbers for `ours.metric` on the same rows and columns, or None when the study does not
    report that metric or groups by a field it does not vary. Filters on fields the study records share apply
    to its values too (a study value with no such field, e.g. momentum under Adam, passes)."""
    metric = get_metric(ours.metric)
    if metric.reference is None:
        return None
    if any(f not in reference.CONFIG_FIELDS for f in (*ours.rows, *ours.cols)):
        return None
    ref = reference.values(*metric.reference)
    if ref.empty:
        return None
    for field, allowed in (filters or {}).items():
        allowed = list(allowed)
        if allowed and field in reference.CONFIG_FIELDS:
            ref = ref[ref[field].isna() | ref[field].isin(allowed)]
    levels = {}
    for f, keys in ((ours.rows, ours.row_keys), (ours.cols, ours.col_keys)):
        for pos, field in enumerate(f):
            levels[field] = list(dict.fromkeys(k[pos] for k in keys))
    # the study's cells pool its configurations on purpose (mean ± SD over them): same=()
    m = matrix(ref, ours.rows, ours.cols, "value", levels=levels, extend=False, same=())
    m.settings = None
    unreliable = matrix(ref.assign(_bad=(~ref["reliable"]).astype(float)), ours.rows, ours.cols, "_bad",
                        levels=levels, extend=False, same=()).mean.fillna(0.0) > 0
    tables = pd.DataFrame("", index=m.mean.index, columns=m.mean.columns, dtype=object)
    keys = [*ours.rows, *ours.cols]
    if keys:
        for key, group in ref.groupby(keys, dropna=True, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            r, c = key[:len(ours.rows)], key[len(ours.rows):]
            try:
                i = m.row_keys.index(r if ours.rows else (ALL,))
                j = m.col_keys.index(c if ours.cols else (ALL,))
            except ValueError:
                continue
            tables.iat[i, j] = ", ".join(sorted(set(", ".join(group["tables"]).split(", ")), key=int))
    return ReferenceMatrix(m, unreliable, tables)


def comparison_table(ours: Matrix, study: ReferenceMatrix | None) -> pd.DataFrame:
    """Ours next to the study, one row per cell: fields, ours mean/sd/n/seeds, study value, difference."""
    out = ours.long()
    if study is None:
        return out
    ref = study.matrix.long()
    out["study"] = ref["mean"].to_numpy()
    out["study_n"] = ref["n"].to_numpy()
    out["difference"] = out["mean"] - out["study"]
    has = ref["n"].to_numpy() > 0
    tables = study.tables.to_numpy().reshape(-1)
    reliable = ~study.unreliable.to_numpy().reshape(-1)
    out["study_tables"] = pd.Series([t if h else None for t, h in zip(tables, has)], dtype=object)
    out["study_reliable"] = pd.Series([bool(r) if h else None for r, h in zip(reliable, has)], dtype=object)
    return out


# The study's Table 12: rows architecture x batch size, columns image size, test accuracy.
TABLE12 = {
    "rows": ["arch", "batch_size"], "cols": ["size"], "metric": "test_accuracy",
    "levels": {"arch": ["resnet101", "resnet50"], "batch_size": [16, 32], "size": [224, 128, 64]},
    # the settings Table 12 holds fixed (its caption); weights are ImageNet in the study
    "recipe": {"dropout": [0.3], "optimizer": ["adam"], "lr": [1e-4], "attention": [False],
               "class_weights": [False]},
}


# -- details of selected runs ------------------------------------------------------------------------------

def run_path(store: RunStore, run_id: str) -> Path:
    """A complete run's directory, else its .incomplete/ one (ids are checked, never used raw in paths)."""
    if not RUN_ID_PATTERN.match(run_id):
        raise ResultsError(f"invalid run id {run_id!r}")
    path = store.runs_dir / run_id
    return path if path.is_dir() else store.runs_dir / INCOMPLETE / run_id


def per_class_table(store: RunStore, run_ids: Sequence[str], split: str = "test") -> pd.DataFrame:
    """Precision, recall, F1 and support per class for each run (its best epoch), long format."""
    records = []
    for run_id in run_ids:
        path = run_path(store, run_id)
        try:
            metrics = Run(path).metrics
        except (OSError, ValueError):
            continue
        for label, v in metrics[split]["per_class"].items():
            records.append({"run_id": run_id, "class": short_label(label), "precision": v["precision"],
                            "recall": v["recall"], "f1": v["f1"], "support": v["support"]})
    return pd.DataFrame.from_records(records, columns=["run_id", "class", "precision", "recall", "f1", "support"])


PER_CLASS_SHORT = {"precision": "precision", "recall": "recall", "f1": "F1"}


def per_class_wide(per_class: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """`per_class_table` pivoted to one row per class: a column per run and metric, with short headers (the
    run id's random part and the metric, e.g. "18cbbc F1"), then the class's support. Returns the table and
    its metric columns."""
    wide = per_class.pivot_table(index="class", columns="run_id", values=list(PER_CLASS_SHORT), sort=False)
    wide.columns = [f"{run[-6:]} {PER_CLASS_SHORT[m]}" for m, run in wide.columns]
    wide = wide[[f"{r[-6:]} {PER_CLASS_SHORT[m]}" for r in per_class["run_id"].unique() for m in PER_CLASS_SHORT]]
    support = per_class.groupby("class", sort=False)["support"].first()
    return wide.assign(support=support).reset_index(), list(wide.columns)


def curves(store: RunStore, run_ids: Sequence[str]) -> pd.DataFrame:
    """Per-epoch training and validation loss/accuracy/AUC of each run, long format:
    run_id, epoch, metric (loss/accuracy/auc), split (train/val), value."""
    frames = []
    for run_id in run_ids:
        path = run_path(store, run_id)
        if not (path / HISTORY_FILE).is_file():
            continue
        history = pd.DataFrame(read_history(path))
        if history.empty:
            continue
        for metric in ("loss", "accuracy", "auc"):
            for split, column in (("train", metric), ("val", f"val_{metric}")):
                if column in history:
                    frames.append(pd.DataFrame({"run_id": run_id, "epoch": history["epoch"].astype(int),
                                                "metric": metric, "split": split, "value": history[column]}))
    if not frames:
        return pd.DataFrame(columns=["run_id", "epoch", "metric", "split", "value"])
    return pd.concat(frames, ignore_index=True)


def parallel_dimensions(df: pd.DataFrame, fields: Sequence[str], metric: str = "val_accuracy") -> list[dict]:
    """Axes for a parallel-coordinates plot (plotly `Parcoords` dimensions): one per field that varies,
    then the metric. Text and yes/no fields become numbered categories with their names as ticks; the
    learning rate is shown on a log10 axis."""
    df = df[pd.to_numeric(df[metric], errors="coerce").notna()]
    dims = []
    for field in fields:
        column = df[field]
        distinct = sorted_values(column)
        if len(distinct) < 2:
            continue
        if field == "lr":
            values = np.log10(column.astype(float))
            ticks = sorted(set(values.round(6)))
            dims.append({"label": "log10 learning rate", "values": values.tolist(), "tickvals": ticks,
                         "ticktext": [f"{10 ** t:g}" for t in ticks]})
        elif column.map(lambda v: isinstance(v, (str, bool, np.bool_))).all():
            codes = {v: i for i, v in enumerate(distinct)}
            dims.append({"label": field_label(field), "values": [codes[v] for v in column],
                         "tickvals": list(codes.values()), "ticktext": [describe_value(field, v) for v in codes]})
        else:
            dims.append({"label": field_label(field), "values": column.astype(float).tolist()})
    dims.append({"label": field_label(metric), "values": df[metric].astype(float).tolist()})
    return dims
