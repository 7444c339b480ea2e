"""Search: an Optuna study over ranges of RunConfig fields, each trial one job of the existing queue
(core.jobs.queue), poor trials stopped early by a pruner.

    spec = plan_search(base, {"lr": "1e-4:1e-2:log", "dropout": "0:0.5"}, trials=8, store=store).spec
    create_search(spec, queue, user)      # the study, and its first trials queued
    queue.tick()                          # ... every tick drives every running search (see `drive`)
    view = show(queue, spec.name)         # trials, best so far, parameter importances

The space: `field=low:high` (a float or int range), `field=low:high:log` (sampled on a log scale), or
`field=a,b,c` (one of these values; the only form for text and switch fields). Each field and value is checked
against the field's RunConfig metadata and validation: an unknown field, a wrong type or a value the field
does not allow is a ConfigError naming it.

The budget: `trials`, and optionally `hours` (no trial starts after them). By default (`refund`) `trials` counts
full trials: one that stops early (pruned, or early stopping) spends only the share of epochs it trained, and the
rest funds further trials, so the search uses the compute it was given, as Hyperband counts its budget in epochs;
without it, exactly `trials` trials run however short.

The study: its first `startup_trials` trials spread evenly over the space (scrambled Sobol points, queued when
the study is created: with a budget of a few trials, random draws clump and leave regions untried), then a TPE
sampler (seeded from the base config's seed and the number of trials asked so far, so a study is reproducible
however many processes drive it), and a median or successive-halving pruner. It maximises the validation
accuracy of each trial's kept epoch (never test).
Storage is Optuna's own: `artifacts/search.sqlite3` by default, or any database URL Optuna accepts (several
machines sharing one study). The study's settings travel in its user attributes, so whoever loads it (a
driver after a restart, a trial's job process) rebuilds the same sampler and pruner.

Where it runs: nothing stays in memory. The jobs database (core.jobs.jobdb) holds two small tables of this
module: `searches` (name, storage URL, owner, budget, status) and `search_trials` (study trial -> job, the
share of the budget it spent).
`JobQueue.tick()` calls `drive(queue)`, so a search advances wherever the queue does (the Train page's live
view, `python -m core worker` or `jobs`, and every job process as it ends), survives restarts of the app and
needs no page open. `drive` first looks at the two tables only (no Optuna): it opens the study when a trial's
job has ended (to `tell` it) or a slot is free and budget is left (to `ask` for the next); one driver at a
time per search (a lease in `searches`). At most the queue's `max_concurrent` trials are in flight.

A trial's job process (core.jobs.queue.execute) reports each epoch's validation accuracy through
`trial_reporter`: `trial.report(accuracy, epoch)`; when the pruner says so, training stops after that epoch
and the trial is recorded PRUNED with the epoch ("pruned at epoch k" on the job). A pruned trial's run is
published like an early-stopped one (its best validation epoch's weights, tested once): its curves show why
it was stopped, and nothing trained is thrown away. Finished jobs are told their run's validation accuracy;
failed or cancelled ones are FAIL trials. Cancelling a search cancels its queued and running trials' jobs.

No TensorFlow; Optuna is imported only when a study is opened.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from core.access.roles import ACTIVE_JOBS_PER_USER, User, require
from core.config import SETTINGS, ConfigError, RunConfig
from core.errors import StoreError, UserFacingError
from core.jobs import jobdb
from core.jobs.sweeps import estimate_seconds, grid, parse_values
from core.store.sqlite_schema import add_missing_columns

if TYPE_CHECKING:
    from core.jobs.queue import JobQueue
    from core.store.runs import RunStore

PRUNERS = {"median": "median: stop a trial whose best accuracy so far is below the median of earlier trials "
                     "at the same epoch",
           "halving": "successive halving: at epochs k, 3k, 9k, ... (k = prune-after + 1) keep only the best "
                      "third of the trials that reached it"}
STORAGE_FILE = "search.sqlite3"
MAX_TRIALS = 500
LEASE_SECONDS = 60.0  # one driver per search at a time; a driver that died frees it after this
MIN_IMPORTANCE_TRIALS = 4  # completed trials before parameter importances mean anything
HALVING_FACTOR = 3
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
TAG_PREFIX = "search:"  # each trial's run is tagged search:<study>, to find it on Results
SLOTS = ("search_space", "search_trials", "search_hours", "search_name", "search_storage", "search_pruner")
TABLES_SQL = (
    """CREATE TABLE IF NOT EXISTS searches (
       name TEXT PRIMARY KEY, storage TEXT NOT NULL, owner TEXT NOT NULL, roles TEXT NOT NULL,
       created REAL NOT NULL, trials INTEGER NOT NULL, deadline REAL, status TEXT NOT NULL,
       lease REAL, error TEXT, refund INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS search_trials (
       search TEXT NOT NULL, trial INTEGER NOT NULL, job_id INTEGER, settled INTEGER NOT NULL DEFAULT 0,
       used REAL, PRIMARY KEY (search, trial))""",
)
# columns added after the tables first shipped (core.store.sqlite_schema): searches.refund, whether trials that
# stop early give their unused epochs back to the budget; search_trials.used, the share of the budget's unit (one
# full trial) a settled trial spent (NULL: in flight, or from before; counted as a whole trial)
ADDED_COLUMNS = {"searches": (("refund", "INTEGER NOT NULL DEFAULT 0"),), "search_trials": (("used", "REAL"),)}
# a search's row with what its trials have spent: trials asked, and the budget they hold (a whole trial each while
# in flight, failed or from before `used`; with refund, a settled trial its share of the epochs it trained)
SEARCH_SQL = ("SELECT s.*, (SELECT COUNT(*) FROM search_trials t WHERE t.search = s.name) AS asked, "
              "(SELECT TOTAL(CASE WHEN s.refund THEN COALESCE(t.used, 1) ELSE 1 END) FROM search_trials t "
              "WHERE t.search = s.name) AS spent FROM searches s")


class SearchError(UserFacingError):
    pass


# -- the space -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One searched field: a range (`low`..`high`, on a log scale if `log`) or a list of `choices`."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def is_range(self) -> bool:
        return not self.choices

    @property
    def text(self) -> str:
        """The spec it was parsed from, normalised: 'lr=0.0001:0.01:log', 'batch_size=32,64'."""
        if self.is_range:
            return f"{self.name}={fmt_value(self.low)}:{fmt_value(self.high)}{':log' if self.log else ''}"
        return f"{self.name}=" + ",".join(fmt_value(c) for c in self.choices)

    def describe(self) -> str:
        label = SETTINGS[self.name].label
        if self.is_range:
            return f"{label}: {fmt_value(self.low)} to {fmt_value(self.high)}" + (" (log scale)" if self.log else "")
        return f"{label}: one of " + ", ".join(SETTINGS[self.name].value_name(fmt_value(c)) for c in self.choices)

    def distribution(self) -> Any:
        import optuna  # noqa: PLC0415

        if not self.is_range:
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if SETTINGS[self.name].kind is int:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def at(self, u: float) -> Any:
        """The value at `u` in [0, 1) along this dimension: evenly on its scale (log or linear), ints and choices
        as equal shares of it. Spread points in the unit cube become spread values."""
        u = min(max(float(u), 0.0), 1.0 - 1e-12)
        if not self.is_range:
            return self.choices[int(u * len(self.choices))]
        if SETTINGS[self.name].kind is int:
            low, high = int(self.low), int(self.high)
            if self.log:
                return min(high, int(math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low)))))
            return low + int(u * (high - low + 1))
        if self.log:
            return float(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))
        return float(self.low + u * (self.high - self.low))

    def contains(self, value: Any) -> bool:
        if not self.is_range:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high


def count_trials(n: int, kind: str = "") -> str:
    """'1 trial', '8 full trials'."""
    return f"{n} {kind}trial{'s' * (n != 1)}"


def fmt_value(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value).lower() if isinstance(value, bool) \
        else str(value)


def trial_config(base: RunConfig, params: Mapping[str, Any], study: str | None = None) -> RunConfig:
    """The run of a trial: `base` with `params` (as a one-point grid, so a searched network gets its own default
    weights as a grid's would), tagged search:<study>."""
    config = grid(base, {name: [value] for name, value in params.items()})[0]
    if study:
        config = config.replace(tags=tuple(dict.fromkeys((*base.tags, f"{TAG_PREFIX}{study}"))))
    return config


def parse_dimension(name: str, text: str, base: RunConfig | None = None) -> Dimension:
    """`text` ('1e-4:1e-2:log', '0:0.5', '32,64,128', 'adam,sgd') for the RunConfig field `name`, checked against
    the field's type and the values RunConfig allows (with `base`'s other settings)."""
    name = name.strip().replace("-", "_")
    if name not in SETTINGS:
        raise ConfigError(name, "not a run setting (python -m core train --help lists them)")
    s = SETTINGS[name]
    if not s.sweepable:
        raise ConfigError(name, "cannot be searched" + (": repeat a search with another --seed instead"
                                                         if name == "seed" else ""))
    text = (text or "").strip()
    if not text:
        raise ConfigError(name, "give a range low:high[:log] or values a,b,c")
    base = base or RunConfig()
    if ":" in text:
        if s.kind not in (int, float) or s.choices:
            allowed = f" ({', '.join(map(fmt_value, s.choices))})" if s.choices else ""
            raise ConfigError(name, f"takes a list of values a,b{allowed}, not a range")
        parts = [p.strip() for p in text.split(":")]
        log = len(parts) == 3 and parts[2].lower() == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise ConfigError(name, f"{text!r}: a range is low:high or low:high:log")
        try:
            low, high = (s.kind(p) if s.kind is float else _int(p) for p in parts[:2])
        except ValueError:
            raise ConfigError(name, f"{text!r}: the bounds must be {'whole ' if s.kind is int else ''}numbers") \
                from None
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ConfigError(name, f"{text!r}: low must be below high")
        if log and low <= 0:
            raise ConfigError(name, f"{text!r}: a log-scale range needs low > 0")
        dimension = Dimension(name, low, high, log)
        points = [low, high]
    else:
        values = list(dict.fromkeys(parse_values(name, text)))
        if len(values) < 2:
            raise ConfigError(name, f"{text!r}: give at least two values to choose from, or a range low:high")
        dimension = Dimension(name, choices=tuple(values))
        points = values
    for value in points:
        try:
            trial_config(base, {name: value})
        except ConfigError as e:
            raise ConfigError(name, f"{fmt_value(value)} is not allowed: {e.message}") from None
    return dimension


def _int(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def parse_space(items: Iterable[str] | Mapping[str, str], base: RunConfig | None = None) -> tuple[Dimension, ...]:
    """`['lr=1e-4:1e-2:log', 'dropout=0:0.5']` (the command line) or `{field: spec}` (the page) as checked
    dimensions; a field given twice is an error."""
    pairs = list(items.items()) if isinstance(items, Mapping) else []
    if not isinstance(items, Mapping):
        for item in items:
            name, sep, text = item.partition("=")
            if not sep:
                raise ConfigError("search_space", f"--space takes FIELD=LOW:HIGH[:log] or FIELD=A,B,...; got {item!r}")
            pairs.append((name, text))
    out: dict[str, Dimension] = {}
    for name, text in pairs:
        d = parse_dimension(name, text, base)
        if d.name in out:
            raise ConfigError(d.name, "given twice in the space")
        out[d.name] = d
    if not out:
        raise ConfigError("search_space", "give at least one field to search (e.g. lr=1e-4:1e-2:log)")
    return tuple(out.values())


# -- the search's settings --------------------------------------------------------------------------------
def default_storage(artifacts: Path) -> str:
    return f"sqlite:///{Path(artifacts).resolve() / STORAGE_FILE}"


def default_startup(trials: int, dimensions: int = 1) -> int:
    """Trials spread over the space before TPE models the results (SMAC3 likewise starts from a scrambled Sobol
    design): two per searched field, at most half the budget (TPE needs trials of its own), 2..10."""
    return max(2, min(10, 2 * dimensions, trials // 2))


def pruner_startup(startup_trials: int) -> int:
    """Completed trials before the median pruner may stop one: half the spread-out start (at least one), so the
    start's points that land in a poor region can be stopped too, the savings pruning is for."""
    return max(1, startup_trials // 2)


def space_filling_points(space: tuple[Dimension, ...], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` points spread evenly over the space: a scrambled Sobol sequence (scipy.stats.qmc), seeded. Each of the
    first 2^k points lies in its own 1/2^k of every field's range, where random draws clump and leave gaps."""
    from scipy.stats import qmc  # noqa: PLC0415

    if n <= 0 or not space:
        return []
    unit = qmc.Sobol(len(space), scramble=True, seed=seed).random_base2(math.ceil(math.log2(n)))[:n]
    return [{d.name: d.at(u) for d, u in zip(space, row)} for row in unit]


@dataclass(frozen=True)
class SearchSpec:
    name: str
    base: RunConfig
    space: tuple[Dimension, ...]
    trials: int
    storage: str
    hours: float | None = None  # no new trial is started after this many hours (running ones finish)
    pruner: str = "median"
    startup_trials: int = 2
    prune_after: int = 1  # epochs every trial completes before it may be pruned
    first: tuple[Mapping[str, Any], ...] = ()  # points to try first (Optuna's enqueue_trial), e.g. a known recipe
    # `trials` as a budget of that many full trials: a trial that stops early (pruned, or early stopping) spends
    # only its share of epochs, and what it leaves funds further trials (as Hyperband counts its budget in
    # epochs). Off: exactly `trials` trials, however short. Studies from before it existed read False.
    refund: bool = False

    def settings(self) -> dict[str, Any]:
        """What a study keeps in its user attributes (everything but name and storage)."""
        return {"base": self.base.to_dict(), "space": [d.text for d in self.space], "trials": self.trials,
                "hours": self.hours, "pruner": self.pruner, "startup_trials": self.startup_trials,
                "prune_after": self.prune_after, "refund": self.refund}

    @classmethod
    def from_settings(cls, name: str, storage: str, d: Mapping[str, Any]) -> "SearchSpec":
        base = RunConfig.from_dict(dict(d["base"]))
        return cls(name, base, parse_space(d["space"], base), int(d["trials"]), storage, d.get("hours"),
                   d.get("pruner", "median"), int(d.get("startup_trials", 2)), int(d.get("prune_after", 1)),
                   refund=bool(d.get("refund", False)))

    @property
    def budget_words(self) -> str:
        """'up to 8 trials', or 'a budget of 8 full trials'."""
        return (f"a budget of {count_trials(self.trials, 'full ')}" if self.refund else
                f"up to {count_trials(self.trials)}")

    def describe_budget(self) -> str:
        return self.budget_words + (" (trials that stop early give their unused epochs to further trials)"
                                    if self.refund else "")


@dataclass
class SearchPlan:
    spec: SearchSpec | None = None
    errors: dict[str, ConfigError] = field(default_factory=dict)  # slot (a field, search_trials, ...) -> error
    seconds_per_trial: float | None = None  # the base config's full run, as the preview estimates it

    @property
    def ok(self) -> bool:
        return self.spec is not None and not self.errors

    @property
    def max_seconds(self) -> float | None:
        """Every trial run to its last epoch, one at a time (pruning only shortens it, or with `refund` funds
        further trials within the same epochs; `hours` caps it)."""
        if self.spec is None or self.seconds_per_trial is None:
            return None
        total = self.spec.trials * self.seconds_per_trial
        return min(total, self.spec.hours * 3600 + self.seconds_per_trial) if self.spec.hours else total


def plan_search(base: RunConfig, space: Iterable[str] | Mapping[str, str], trials: int, *, store: "RunStore",
                hours: float | None = None, pruner: str = "median", name: str | None = None,
                storage: str | None = None, startup_trials: int | None = None, prune_after: int = 1,
                first: Iterable[str] = (), split_sizes: tuple[int, int, int] | None = None,
                refund: bool = True) -> SearchPlan:
    """The search these inputs describe, or every error at once (each in its slot), and the preview's estimate.
    `first`: points to try first, 'lr=0.001,dropout=0.3' each (within the space). `refund`: `trials` is a budget
    of full trials, and epochs pruned trials did not train fund further trials (SearchSpec.refund)."""
    out = SearchPlan()
    dims: tuple[Dimension, ...] = ()
    try:
        dims = parse_space(space, base)
    except ConfigError as e:
        out.errors[e.field if e.field in SETTINGS else "search_space"] = e
    if not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        out.errors["search_trials"] = ConfigError("trials", f"must be 1..{MAX_TRIALS}")
    if hours is not None and (not isinstance(hours, (int, float)) or not 0 < hours <= 24 * 30):
        out.errors["search_hours"] = ConfigError("hours", "must be more than 0 and at most 720 (30 days)")
    if pruner not in PRUNERS:
        out.errors["search_pruner"] = ConfigError("pruner", f"must be one of {', '.join(PRUNERS)}")
    name = (name or "").strip() or time.strftime("search-%Y%m%d-%H%M%S")
    if not NAME_PATTERN.match(name):
        out.errors["search_name"] = ConfigError("name", "1 to 64 letters, digits, '.', '_' or '-', starting with "
                                                        "a letter or digit")
    startup = (default_startup(trials if isinstance(trials, int) else 1, len(dims)) if startup_trials is None
               else startup_trials)
    if not isinstance(startup, int) or startup < 1:
        out.errors["search_trials"] = ConfigError("startup_trials", "must be at least 1")
    if not isinstance(prune_after, int) or not 0 <= prune_after < base.epochs:
        out.errors["search_pruner"] = ConfigError("prune_after", f"must be 0..{base.epochs - 1} (fewer than the "
                                                                   f"epochs of each trial)")
    points = []
    for text in first:
        try:
            points.append(_point(text, dims, base))
        except ConfigError as e:
            out.errors.setdefault("search_space", e)
    if out.errors:
        return out
    artifacts = store.runs_dir.parent
    out.spec = SearchSpec(name, base, dims, trials, (storage or "").strip() or default_storage(artifacts),
                          float(hours) if hours else None, pruner, startup, prune_after, tuple(points),
                          bool(refund))
    if split_sizes is not None:
        out.seconds_per_trial, _ = estimate_seconds(base, *split_sizes, store.list_runs())
    return out


def _point(text: str, dims: tuple[Dimension, ...], base: RunConfig) -> dict[str, Any]:
    by_name = {d.name: d for d in dims}
    point: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in by_name:
            raise ConfigError("search_space", f"a point to try first is FIELD=VALUE,... over the searched fields "
                                              f"({', '.join(by_name)}); got {part!r}")
        (typed,) = parse_values(name, value)
        d = by_name[name]
        if d.is_range and SETTINGS[name].kind is float:
            typed = float(typed)
        if not d.contains(typed):
            raise ConfigError("search_space", f"{name}={value.strip()} is outside the searched {d.describe()}")
        point[name] = typed
    trial_config(base, point)
    return point


# -- Optuna -------------------------------------------------------------------------------------------------
def _optuna() -> Any:
    import optuna  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_pruner(spec: SearchSpec) -> Any:
    """Epoch k is step k; a trial completes `prune_after` epochs before it may be stopped."""
    optuna = _optuna()
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.prune_after + 1,
                                                      reduction_factor=HALVING_FACTOR)
    return optuna.pruners.MedianPruner(n_startup_trials=pruner_startup(spec.startup_trials),
                                       n_warmup_steps=spec.prune_after + 1)


def make_sampler(spec: SearchSpec, asked: int) -> Any:
    """TPE, seeded from (the base seed, the trials asked so far): reproducible though each ask may come from
    another process, never the same draw twice, and independent between studies of other seeds (seed + asked
    would give seed 1's trial k seed 0's trial k+1)."""
    import numpy as np  # noqa: PLC0415

    seed = int(np.random.SeedSequence([spec.base.seed, asked]).generate_state(1)[0])
    return _optuna().samplers.TPESampler(n_startup_trials=spec.startup_trials, seed=seed)


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Optuna's and the database driver's errors on the search storage as one message naming it."""
    try:
        yield
    except UserFacingError:
        raise
    except Exception as e:  # SQLAlchemy, a missing driver, a bad URL: all mean "this storage cannot be used"
        if type(e).__module__.startswith("optuna") and type(e).__name__ in ("DuplicatedStudyError",):
            raise
        raise StoreError(f"Could not use the search storage {url} ({e.__class__.__name__}: {e}). Check the URL "
                         f"(e.g. sqlite:////path/search.sqlite3 or postgresql://user@host/db) and that its "
                         f"database is reachable.") from e


def load_study(name: str, storage: str) -> tuple[Any, SearchSpec]:
    optuna = _optuna()
    with storage_errors(storage):
        bare = optuna.load_study(study_name=name, storage=storage)
        spec = SearchSpec.from_settings(name, storage, bare.user_attrs["cellscope"])
        study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(spec),
                                  sampler=make_sampler(spec, len(bare.trials)))
    return study, spec


# -- the jobs database's two tables -----------------------------------------------------------------------
@contextmanager
def _db(queue: "JobQueue") -> Iterator[sqlite3.Connection]:
    with jobdb.jobs_errors(queue.db_path), closing(jobdb.connect(queue.db_path)) as db:
        _ensure_tables(db)
        yield db


@dataclass(frozen=True)
class SearchRow:
    name: str
    storage: str
    owner: str
    roles: tuple[str, ...]
    created: float
    trials: int
    deadline: float | None
    status: str  # running, done, cancelled
    error: str | None
    refund: bool = False
    asked: int = 0  # trials asked so far
    spent: float = 0.0  # the budget they hold, in full trials (see SEARCH_SQL)

    @property
    def user(self) -> User:
        return User(self.owner, self.roles)

    def budget_left(self) -> bool:
        """Whether one more trial may be asked: running, before its deadline, below MAX_TRIALS, and a whole trial
        left in its budget (trials counted whole; with refund, settled ones at the share they trained)."""
        if self.status != "running" or self.asked >= MAX_TRIALS:
            return False
        if self.deadline is not None and time.time() >= self.deadline:
            return False
        return self.spent + 1 <= self.trials + 1e-9 if self.refund else self.asked < self.trials

    @property
    def spent_text(self) -> str:
        return f"{round(self.spent, 2):g}"

    def trials_summary(self) -> str:
        """'3 of 8 trials' asked, or with a refunding budget '10 trials, 7.5 of a budget of 8 full trials spent'."""
        if not self.refund:
            return f"{self.asked} of {self.trials} trials"
        return (f"{count_trials(self.asked)}, {self.spent_text} of a budget of {count_trials(self.trials, 'full ')} "
                f"spent")


def _row(r: sqlite3.Row) -> SearchRow:
    return SearchRow(r["name"], r["storage"], r["owner"], tuple(json.loads(r["roles"])), r["created"], r["trials"],
                     r["deadline"], r["status"], r["error"], bool(r["refund"]), int(r["asked"]), float(r["spent"]))


def _ensure_tables(db: sqlite3.Connection) -> None:
    for sql in TABLES_SQL:
        db.execute(sql)
    for table, columns in ADDED_COLUMNS.items():
        add_missing_columns(db, table, columns)


def list_searches(artifacts: Path) -> list[SearchRow]:
    """Every search of the queue in `artifacts`, newest first. Creates nothing where there is no queue or no search
    yet (none); a file from before the budget's columns gains them."""
    path = jobdb.jobs_path(artifacts)
    if not path.is_file():
        return []
    with jobdb.jobs_errors(path), closing(sqlite3.connect(path, timeout=30)) as db:
        db.row_factory = sqlite3.Row
        if db.execute("SELECT 1 FROM sqlite_master WHERE name='searches'").fetchone() is None:
            return []
        _ensure_tables(db)
        return [_row(r) for r in db.execute(f"{SEARCH_SQL} ORDER BY s.created DESC")]


def get_search(queue: "JobQueue", name: str) -> SearchRow:
    with _db(queue) as db:
        r = db.execute(f"{SEARCH_SQL} WHERE s.name=?", (name,)).fetchone()
    if r is None:
        raise SearchError(f"no search {name!r} in this queue (python -m core search --list names them)")
    return _row(r)


def start_points(spec: SearchSpec) -> list[dict[str, Any]]:
    """The trials queued before TPE draws any: the points asked for (`first`), then space-filling points up to
    the start's size, within the budget."""
    n = min(spec.startup_trials, spec.trials) - len(spec.first)
    return [dict(p) for p in spec.first] + space_filling_points(spec.space, n, spec.base.seed)


# -- commands ---------------------------------------------------------------------------------------------------
def create_search(spec: SearchSpec, queue: "JobQueue", user: User) -> SearchRow:
    """Create the study (an error if one of that name is in the storage) and queue its first trials."""
    require(user, "train", what="start a search")
    optuna = _optuna()
    with _db(queue) as db:
        if db.execute("SELECT 1 FROM searches WHERE name=?", (spec.name,)).fetchone():
            raise ConfigError("search_name", f"a search named {spec.name} exists already; choose another name")
    with storage_errors(spec.storage):
        try:
            study = optuna.create_study(study_name=spec.name, storage=spec.storage, direction="maximize",
                                        sampler=make_sampler(spec, 0), pruner=make_pruner(spec))
        except optuna.exceptions.DuplicatedStudyError:
            raise ConfigError("search_name", f"the storage {spec.storage} holds a study named {spec.name} already; "
                                             f"choose another name") from None
        study.set_user_attr("cellscope", spec.settings())
        for point in start_points(spec):
            study.enqueue_trial(dict(point))
    now = time.time()
    with _db(queue) as db:
        db.execute("INSERT INTO searches (name, storage, owner, roles, created, trials, deadline, status, refund) "
                   "VALUES (?,?,?,?,?,?,?, 'running', ?)",
                   (spec.name, spec.storage, user.name, json.dumps(list(user.roles)), now, spec.trials,
                    now + spec.hours * 3600 if spec.hours else None, int(spec.refund)))
    drive(queue, only=spec.name)
    return get_search(queue, spec.name)


def cancel_search(queue: "JobQueue", name: str, user: User) -> None:
    """Ask no more trials, and cancel the jobs of its queued and running ones (told FAIL as they settle)."""
    search = get_search(queue, name)
    require(user, "train", owner=search.owner, what=f"search {name}")
    with _db(queue) as db:
        db.execute("UPDATE searches SET status='cancelled' WHERE name=? AND status='running'", (name,))
        job_ids = [r[0] for r in db.execute("SELECT job_id FROM search_trials WHERE search=? AND settled=0 "
                                            "AND job_id IS NOT NULL", (name,))]
    from core.jobs.queue import ACTIVE, JobError  # noqa: PLC0415

    for job_id in job_ids:
        try:
            if queue.get(job_id).status in ACTIVE:
                queue.cancel(job_id, user)
        except JobError:  # deleted or finished meanwhile: settled as it is
            pass
    drive(queue, only=name)


# -- the driver -----------------------------------------------------------------------------------------------
def drive(queue: "JobQueue", only: str | None = None) -> None:
    """Advance every running search (or `only` that one, whatever its status): tell the trials whose jobs have
    ended, ask and queue new trials while fewer than the queue's max_concurrent are in flight and budget is
    left, and mark a search done when its budget is spent and nothing is in flight. Called by every
    `JobQueue.tick`; a search that cannot be driven now (its storage unreachable) keeps the message in its
    `error` and is tried again on the next tick, and never stops the queue."""
    try:
        with _db(queue) as db:
            names = [r[0] for r in db.execute(
                "SELECT name FROM searches WHERE status='running'" if only is None else
                "SELECT name FROM searches WHERE name=?", () if only is None else (only,))]
    except StoreError:
        return  # the queue's own errors are the queue's to report
    for name in names:
        if not _needs_study(queue, name) or not _take_lease(queue, name):
            continue
        try:
            _drive_one(queue, name)
            error = None
        except UserFacingError as e:
            error = str(e)
        except Exception as e:  # a bug or an unforeseen storage error: kept for the page
            error = f"{e.__class__.__name__}: {e}"
        with _db(queue) as db:
            db.execute("UPDATE searches SET lease=NULL, error=? WHERE name=?", (error, name))


def _take_lease(queue: "JobQueue", name: str) -> bool:
    now = time.time()
    with _db(queue) as db:
        return db.execute("UPDATE searches SET lease=? WHERE name=? AND (lease IS NULL OR lease<?)",
                          (now + LEASE_SECONDS, name, now)).rowcount == 1


def _in_flight(db: sqlite3.Connection, name: str) -> tuple[int, int]:
    """(trials in flight, in-flight trials whose job has ended or is gone)."""
    rows = db.execute("SELECT t.job_id, j.status FROM search_trials t LEFT JOIN jobs j ON j.id = t.job_id "
                      "WHERE t.search=? AND t.settled=0", (name,)).fetchall()
    ended = sum(1 for _, status in rows if status not in ("queued", "running"))
    return len(rows), ended


def _current(db: sqlite3.Connection, name: str) -> SearchRow | None:
    r = db.execute(f"{SEARCH_SQL} WHERE s.name=?", (name,)).fetchone()
    return None if r is None else _row(r)


def _active_jobs(queue: "JobQueue", owner: str) -> int:
    from core.jobs.queue import ACTIVE  # noqa: PLC0415

    return sum(1 for j in queue.list(ACTIVE) if j.owner == owner)


def _needs_study(queue: "JobQueue", name: str) -> bool:
    """Whether `_drive_one` has anything to do, from the two tables and the jobs alone (no Optuna)."""
    with _db(queue) as db:
        r = _current(db, name)
        if r is None:
            return False
        in_flight, ended = _in_flight(db, name)
        if ended:
            return True
        if r.budget_left():
            return in_flight < queue.max_concurrent
        if r.status == "running" and in_flight == 0:
            db.execute("UPDATE searches SET status='done' WHERE name=? AND status='running'", (name,))
    return False


def _drive_one(queue: "JobQueue", name: str) -> None:
    from core.jobs.queue import ACTIVE, JobError  # noqa: PLC0415

    search = get_search(queue, name)
    study, spec = load_study(name, search.storage)
    optuna = _optuna()
    running = optuna.trial.TrialState.RUNNING
    with _db(queue) as db:
        rows = {r[0]: (r[1], r[2]) for r in db.execute("SELECT trial, job_id, settled FROM search_trials "
                                                       "WHERE search=?", (name,))}
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    with storage_errors(search.storage):
        for number, t in trials.items():  # asked, but the driver stopped before its job was queued
            if t.state == running and number not in rows:
                study.tell(number, state=optuna.trial.TrialState.FAIL)
        for number, (job_id, settled) in rows.items():
            if settled:
                continue
            try:
                job = queue.get(job_id)
            except JobError:
                job = None
            if job is not None and job.status in ACTIVE:
                continue
            used = _settle(study, trials.get(number), job)
            with _db(queue) as db:
                db.execute("UPDATE search_trials SET settled=1, used=? WHERE search=? AND trial=?",
                           (used, name, number))
    dimensions = {d.name: d.distribution() for d in spec.space}
    while True:
        with _db(queue) as db:
            current = _current(db, name)
            in_flight, _ = _in_flight(db, name)
        if not current.budget_left() or in_flight >= queue.max_concurrent:
            break
        if not search.user.is_admin and _active_jobs(queue, search.owner) >= ACTIVE_JOBS_PER_USER:
            break  # the owner's other jobs fill their allowance: the next trial waits for one to end
        with storage_errors(search.storage):
            study.sampler = make_sampler(spec, len(study.trials))
            trial = study.ask(dimensions)
        job_id = None
        try:
            config = trial_config(spec.base, trial.params, name)
        except ConfigError as e:  # a combination RunConfig refuses (each value alone was checked)
            with storage_errors(search.storage):
                trial.set_user_attr("error", str(e))
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            try:
                job_id = queue.submit(config, search.user, sweep=f"search {name}")
            except UserFacingError as e:  # the owner lost the train role, or the queue failed: told, then said
                with storage_errors(search.storage):
                    trial.set_user_attr("error", f"could not queue its job: {e}")
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                with _db(queue) as db:
                    db.execute("INSERT INTO search_trials (search, trial, job_id, settled) VALUES (?,?,NULL,1)",
                               (name, trial.number))
                raise
            with storage_errors(search.storage):
                trial.set_user_attr("job_id", job_id)
        with _db(queue) as db:
            db.execute("INSERT INTO search_trials (search, trial, job_id, settled) VALUES (?,?,?,?)",
                       (name, trial.number, job_id, int(job_id is None)))
    with _db(queue) as db:
        in_flight, _ = _in_flight(db, name)
        current = _current(db, name)
        if current.status == "running" and not current.budget_left() and in_flight == 0:
            db.execute("UPDATE searches SET status='done' WHERE name=? AND status='running'", (name,))


def _settle(study: Any, trial: Any, job: Any) -> float | None:
    """Tell the study how a trial's job ended: its run's validation accuracy (the kept epoch's, never test),
    PRUNED when its process stopped it, FAIL when it failed, was cancelled or is gone. Returns the share of a full
    trial it spent (the epochs it trained / its epochs); a failed one, or one told before, counts whole (None)."""
    optuna = _optuna()
    states = optuna.trial.TrialState
    if trial is None or trial.state != states.RUNNING:
        return None  # told already (by a driver that stopped before marking the row settled)
    number, live = trial.number, _optuna().trial.Trial(study, trial._trial_id)
    if job is None or job.status != "succeeded" or not job.run_path:
        live.set_user_attr("error", "its job was deleted" if job is None else job.error or f"its job was {job.status}")
        study.tell(number, state=states.FAIL)
        return None
    from core.store.runs import open_run  # noqa: PLC0415

    live.set_user_attr("run_id", job.run_id)
    if "pruned_epoch" in trial.user_attrs:
        study.tell(number, state=states.PRUNED)  # its value: the last epoch it reported
        return trial_share(int(trial.user_attrs["pruned_epoch"]), job.config.epochs)
    try:
        metrics = open_run(job.run_path).metrics
        value = float(metrics["val"]["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        live.set_user_attr("error", "its run's metrics could not be read")
        study.tell(number, state=states.FAIL)
        return None
    study.tell(number, value)
    return trial_share(metrics.get("epochs_run"), job.config.epochs)


def trial_share(epochs_trained: Any, epochs: int) -> float | None:
    """The share of a full trial a settled trial spent: the epochs it trained of its `epochs` (early stopping and
    pruning leave the rest to the budget); None (a whole trial) when that is unknown."""
    if not isinstance(epochs_trained, int) or isinstance(epochs_trained, bool) or not 0 < epochs_trained <= epochs:
        return None
    return epochs_trained / epochs


# -- the trial's job process ----------------------------------------------------------------------------------
class TrialReporter:
    """The job process's end of a trial: `__call__(row)` after each epoch's validation reports its accuracy
    and returns True when the pruner says stop (the trainer then stops after this epoch)."""

    def __init__(self, study: Any, trial: Any, epochs: int, echo: Callable[[str], None]):
        self.study, self.trial, self.epochs, self.echo = study, trial, epochs, echo
        self.pruned_epoch: int | None = None

    def __call__(self, row: Mapping[str, float]) -> bool:
        epoch, accuracy = int(row["epoch"]), float(row["val_accuracy"])
        try:
            self.trial.report(accuracy, epoch)
            # the last epoch is never pruned: stopping saves nothing there, and a complete trial teaches TPE more
            if epoch >= self.epochs or not self.trial.should_prune():
                return False
            self.trial.set_user_attr("pruned_epoch", epoch)
        except Exception as e:  # the storage is away: the run goes on unpruned, and says so
            self.echo(f"search: could not report epoch {epoch} to the study ({e.__class__.__name__}: {e})")
            return False
        self.pruned_epoch = epoch
        self.echo(f"search: pruned at epoch {epoch} (validation accuracy {accuracy:.4f} is behind the other "
                  f"trials at this epoch); the run keeps its best epoch so far")
        return True

    @property
    def outcome(self) -> str:
        return f"pruned at epoch {self.pruned_epoch}" if self.pruned_epoch else ""


def trial_reporter(queue: "JobQueue", job_id: int, echo: Callable[[str], None] = print) -> TrialReporter | None:
    """For a job that is a search's running trial, its reporter; else None (a plain job)."""
    try:
        with _db(queue) as db:
            r = db.execute("SELECT t.search, t.trial, s.storage FROM search_trials t JOIN searches s ON "
                           "s.name = t.search WHERE t.job_id=? AND t.settled=0", (job_id,)).fetchone()
    except StoreError:
        return None
    if r is None:
        return None
    try:
        study, _ = load_study(r["search"], r["storage"])
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == r["trial"])
        if frozen.state != _optuna().trial.TrialState.RUNNING:
            return None
        trial = _optuna().trial.Trial(study, frozen._trial_id)
    except Exception as e:  # the storage away, the study deleted: the run itself need not fail for it
        echo(f"search: this job trains without reporting to its study ({e.__class__.__name__}: {e})")
        return None
    echo(f"search {r['search']}: trial {r['trial']}")
    return TrialReporter(study, trial, queue.get(job_id).config.epochs, echo)


# -- what the Results page and `--show` read -------------------------------------------------------------------
@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None
    params: dict[str, Any]
    pruned_epoch: int | None
    epochs: int  # epochs reported
    job_id: int | None
    run_id: str | None
    error: str | None


@dataclass(frozen=True)
class SearchView:
    search: SearchRow
    spec: SearchSpec
    trials: list[TrialRow]
    importances: dict[str, float]
    importance_note: str  # why there are none, or how they were computed

    @property
    def best(self) -> TrialRow | None:
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        return max(done, key=lambda t: t.value) if done else None

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)

    def table(self) -> list[dict[str, Any]]:
        """One row per trial for a page's table or a CSV: trial, state, validation accuracy, each parameter,
        pruned epoch, job, run."""
        return [{"trial": t.number, "state": t.state.lower(), "val_accuracy": t.value,
                 **{d.name: t.params.get(d.name) for d in self.spec.space},
                 "pruned_at_epoch": t.pruned_epoch, "job": t.job_id, "run": t.run_id, "error": t.error}
                for t in self.trials]


def show(queue_or_artifacts: "JobQueue | Path", name: str) -> SearchView:
    """A search's trials, best so far and parameter importances (fANOVA over completed trials)."""
    artifacts = (queue_or_artifacts if isinstance(queue_or_artifacts, Path)
                 else queue_or_artifacts.store.runs_dir.parent)
    search = next((s for s in list_searches(artifacts) if s.name == name), None)
    if search is None:
        raise SearchError(f"no search {name!r} here")
    study, spec = load_study(name, search.storage)
    optuna = _optuna()
    rows = []
    with storage_errors(search.storage):
        trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == optuna.trial.TrialState.WAITING and search.status != "running":
            continue  # a start point never asked: the search ended first (cancelled, or out of hours)
        rows.append(TrialRow(t.number, t.state.name, t.value if t.state == optuna.trial.TrialState.COMPLETE else
                             (t.value if t.state == optuna.trial.TrialState.PRUNED else None), dict(t.params),
                             t.user_attrs.get("pruned_epoch"), len(t.intermediate_values), t.user_attrs.get("job_id"),
                             t.user_attrs.get("run_id"), t.user_attrs.get("error")))
    importances, note = param_importances(study, spec)
    return SearchView(search, spec, rows, importances, note)


def param_importances(study: Any, spec: SearchSpec) -> tuple[dict[str, float], str]:
    optuna = _optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(spec.space) < 2:
        return {}, "one searched setting: nothing to compare its importance with"
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return {}, (f"too few completed trials for importances ({len(complete)} of at least "
                    f"{MIN_IMPORTANCE_TRIALS}; pruned and failed trials do not count)")
    try:
        values = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:
        return {}, f"importances could not be computed ({e})"
    return dict(values), (f"fANOVA over {len(complete)} completed trials: the share of the validation accuracy's "
                          f"variance each setting explains")


def format_view(view: SearchView) -> str:
    """The command line's report: the trials table, then the best so far and the importances."""
    names = [d.name for d in view.spec.space]
    lines = [f"search {view.search.name}: {view.search.status}, {view.search.trials_summary()} "
             f"({view.count('COMPLETE')} complete, {view.count('PRUNED')} pruned, {view.count('FAIL')} failed, "
             f"{view.count('RUNNING')} running); pruner {view.spec.pruner}; storage {view.search.storage}"]
    if view.search.error:
        lines.append(f"last error: {view.search.error}")
    lines.append(f"{'trial':>5} {'state':<9} {'val_acc':>8} " + " ".join(f"{n:>12}" for n in names) +
                 f" {'pruned@':>7} {'job':>5}  run")
    for t in view.trials:
        value = f"{t.value:.4f}" if t.value is not None else ""
        params = " ".join(f"{fmt_value(t.params[n]) if n in t.params else '':>12}" for n in names)
        lines.append(f"{t.number:>5} {t.state.lower():<9} {value:>8} {params} {t.pruned_epoch or '':>7} "
                     f"{t.job_id or '':>5}  {t.run_id or t.error or ''}")
    best = view.best
    if best is None:
        lines.append("best: none yet (no trial has completed)")
    else:
        lines.append(f"best: trial {best.number}, validation accuracy {best.value:.4f}, " +
                     ", ".join(f"{k}={fmt_value(v)}" for k, v in best.params.items()) +
                     (f" (run {best.run_id})" if best.run_id else ""))
    if view.importances:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in view.importances.items()) +
                     f" ({view.importance_note})")
    else:
        lines.append(f"importance: {view.importance_note}")
    return "\n".join(lines)
