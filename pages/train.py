"""Train: pick the data, set up one run, a sweep or a study preset, launch it as background jobs, and watch
the jobs train.

A thin view over core: core.config (settings, their labels, help and widgets), core.jobs.plans (what a launch
queues: configs, presets, grids, estimates and the sweep's name), core.jobs.queue (the queue; each job trains
in its own process, so it keeps going when the browser tab closes), core.data (data) and core.store.runs (the
run store). It never loads TensorFlow.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core import devices
from core.access.paths import confine
from core.config import DATA, SETTINGS, SIZES, ConfigError, RunConfig, groups
from core.data import registry
from core.data.dataset import SPLITS, class_counts, load_npz
from core.data.download import download
from core.errors import UserFacingError
from core.jobs import plans, search
from core.jobs.plans import AUTO, Plan, PlanRequest, format_value, preset_request, submit_command, sweep_slot
from core.jobs.presets import PRESETS, PRESETS_BY_KEY, RECIPE, Preset
from core.jobs.queue import ACTIVE, Job, JobQueue
from core.jobs.sweeps import field_type, format_duration
from core.progress import format_seconds
from core.store.overview import human_bytes, weights_label
from core.store.runs import RunStore, open_run
from core.training.precision import AUTO as AUTO_PRECISION
from core.training.precision import choices as precision_choices
from core.training.precision import describe_support
from ui.guard import show_error
from ui.palette import ACCENT, LIGHT_ACCENT, SECONDARY
from ui.session import current_user, page_user
from ui.text import md_escape, plural

REFRESH_SECONDS = 1.0  # the jobs view redraws itself this often (phase, time left, a cancel settling)
JOBS_SHOWN = 25
CUSTOM = "custom"
TABS = ("New training", "Jobs")

# Labels, help, widgets and groups come from the settings' metadata (core.config.SETTINGS).
LABELS = {name: s.form_text for name, s in SETTINGS.items()}
# The weights input offers "auto" and "a weights file" besides the two stored values; "weights_file" is the
# path input that goes with "a weights file".
WEIGHT_CHOICES = (AUTO, "imagenet", "none", "file")
WEIGHT_NAMES = {AUTO: "auto: ImageNet if available", "imagenet": "ImageNet",
                "none": "none (from scratch)", "file": "a weights file"}
# The form, group by group: inputs flow through rows of FORM_COLUMNS columns, then the group's switches
# follow in one row. Data and size are section 1.
FORM_COLUMNS = 4
FORM_GROUPS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = tuple(
    (group,
     tuple(n for s in SETTINGS.values() if s.group == group and s.kind is not bool
           for n in ((s.name, "weights_file") if s.widget == "weights" else (s.name,))),
     tuple(s.name for s in SETTINGS.values() if s.group == group and s.kind is bool))
    for group in groups() if group != DATA)
FORM_FIELDS = [name for name, s in SETTINGS.items() if s.group != DATA]
BOOL_FIELDS = {name for name in FORM_FIELDS if SETTINGS[name].kind is bool}
SWEEPABLE = [name for name, s in SETTINGS.items() if s.sweepable]  # seeds: use repeats
STATUS_COLORS = {"queued": "gray", "running": "blue", "succeeded": "green", "failed": "red", "cancelled": "orange"}
STATUS_ICONS = {"queued": ":material/schedule:", "running": ":material/progress_activity:",
                "succeeded": ":material/check_circle:", "failed": ":material/error:",
                "cancelled": ":material/cancel:"}
FILTERS = {"All": None, "Active": ACTIVE, "Succeeded": ("succeeded",), "Failed": ("failed",),
           "Cancelled": ("cancelled",)}
TRAIN_COLOR, VAL_COLOR = ACCENT, SECONDARY
SPLIT_COLORS = {"train": ACCENT, "val": LIGHT_ACCENT, "test": SECONDARY}

ss = st.session_state


# -- small helpers ------------------------------------------------------------------------------------
def form_key(name: str) -> str:
    return f"f_{name}"


def sweep_key(name: str) -> str:
    return sweep_slot(name)  # the session key of a sweep's values is also the plan's error slot for them


def open_queue() -> JobQueue:
    return JobQueue(RunStore())  # RunStore() follows $CELLSCOPE_ARTIFACTS


# -- persistent settings ------------------------------------------------------------------------------
# Widgets lose their state when they are not drawn (the Jobs tab or another page is open). A plain copy in
# `_saved` survives and puts the settings back when the user returns. A widget's value is only ever set here
# in a run that also draws it; otherwise Streamlit could later resurface that stale value.
def form_values(config: RunConfig, weights_auto: bool = True) -> dict[str, Any]:
    d = config.to_dict()
    out = {form_key(f): d[f] for f in FORM_FIELDS}
    out[form_key("tags")] = ", ".join(config.tags)
    out[form_key("weights_file")] = ""
    if weights_auto and config.weights == RunConfig.default_weights(config.arch):
        out[form_key("weights")] = "auto"
    elif config.weights not in ("imagenet", "none"):
        out[form_key("weights")], out[form_key("weights_file")] = "file", config.weights
    return out


# the Search inputs past its field list, drawn only once a field is picked
SEARCH_DEFAULTS = {"srch_trials": 20, "srch_hours": 0.0, "srch_pruner": "median", "srch_name": "",
                   "srch_refund": True}


def defaults() -> dict[str, Any]:
    return {**form_values(RunConfig()), "data_source": 64, "data_path": "", "sweep_fields": [],
            "sweep_repeats": 1, "preset_choice": PRESETS[0].key, "srch_fields": [], **SEARCH_DEFAULTS}


def drawn_keys() -> list[str]:
    """The persisted widgets this run draws (the path input only for a custom file, the Search inputs only with
    a searched field)."""
    searching = bool(ss.get("srch_fields"))
    keys = [k for k in defaults() if (k != "data_path" or ss.get("data_source") == CUSTOM)
            and (k not in SEARCH_DEFAULTS or searching)]
    return (keys + [sweep_key(f) for f in ss.get("sweep_fields", [])]
            + [search_key(f) for f in ss.get("srch_fields", [])])


def restore_settings() -> None:
    saved = ss.setdefault("_saved", {})
    pending = ss.pop("_select_source", None)  # a size just downloaded
    if pending is not None:
        ss["data_source"] = pending
    everything = defaults()
    for keys in (("data_source", "sweep_fields", "srch_fields"), drawn_keys):  # these decide what else is drawn
        for key in keys() if callable(keys) else keys:
            if key not in ss:
                ss[key] = saved.get(key, everything.get(key, ""))


def save_settings() -> None:
    ss["_saved"] = {**ss.get("_saved", {}), **{k: ss[k] for k in drawn_keys() if k in ss}}


# -- data ------------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def cached_counts(path: str, mtime: float) -> dict[str, list[int]]:
    return class_counts(path)


@st.cache_data(show_spinner="Checking the file…", max_entries=16)
def cached_check(path: str, mtime: float) -> int:
    """The image size of a valid MedMNIST-layout npz (DatasetError otherwise)."""
    return load_npz(path).image_size


@dataclass(frozen=True)
class DataChoice:
    data: str  # "" = BloodMNIST at `size` from the data root
    size: int | None
    path: Path | None  # the file, when it exists and is usable
    error: str | None = None  # shown next to the data input
    label: str = ""


def custom_path() -> Path:
    """The typed data file, resolved; PathNotAllowed when it is outside the server's data roots."""
    return confine(ss["data_path"], what="data file")


def data_choice(available: dict[int, Path]) -> DataChoice:
    source = ss["data_source"]
    if source != CUSTOM:
        path = available.get(source)
        return DataChoice("", source, path, None, f"BloodMNIST {source} px")
    text = ss["data_path"].strip()
    if not text:
        return DataChoice("", None, None, "Enter the path of a MedMNIST-layout .npz file.", "your file")
    try:
        path = custom_path()
    except UserFacingError as e:
        return DataChoice(text, None, None, str(e), Path(text).name)
    try:
        size = cached_check(str(path), path.stat().st_mtime if path.is_file() else 0.0)
    except UserFacingError as e:
        return DataChoice(str(path), None, None, str(e), path.name)
    if size not in SIZES:
        return DataChoice(str(path), size, path, f"{path.name} holds {size} px images; training takes "
                                                 f"{', '.join(map(str, SIZES))} px.", path.name)
    return DataChoice(str(path), size, path, None, path.name)


def counts_of(path: Path) -> dict[str, list[int]]:
    return cached_counts(str(path), path.stat().st_mtime)


def split_sizes(choice: DataChoice) -> tuple[int, int, int]:
    """Images in train/val/test for the estimate: from the file when it is here, else medmnist's registry."""
    if choice.path is not None:
        counts = counts_of(choice.path)
        return tuple(sum(counts[s]) for s in SPLITS)  # type: ignore[return-value]
    n = registry.info().n_samples
    return n["train"], n["val"], n["test"]


def counts_chart(counts: dict[str, list[int]]) -> go.Figure:
    names = [registry.short_label(n) for n in registry.label_names()]
    fig = go.Figure()
    for split in SPLITS:
        fig.add_trace(go.Bar(name=split, x=names, y=counts[split], marker_color=SPLIT_COLORS[split],
                             hovertemplate="%{x}: %{y:,} images<extra>" + split + "</extra>"))
    fig.update_layout(barmode="group", height=300, margin=dict(l=0, r=0, t=10, b=0),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
                      yaxis_title="images")
    return fig


def start_download(size: int) -> None:
    ss["_download"] = size
    ss.pop("_download_error", None)


def run_download(size: int, slot) -> None:
    """Download in this script run, drawing its progress; then rerun so the panel shows the new file."""
    bar = slot.progress(0.0, text=f"Downloading BloodMNIST {size} px…")
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.25 and done != total:
            return
        last[0] = now
        if total:
            bar.progress(min(done / total, 1.0),
                         text=f"BloodMNIST {size} px: {human_bytes(done)} of {human_bytes(total)}")
        else:
            bar.progress(0.0, text=f"BloodMNIST {size} px: {human_bytes(done)}")

    try:
        download(size, progress=progress)
    except UserFacingError as e:
        ss["_download_error"] = (size, str(e))
    else:
        ss["_select_source"] = size
    st.rerun()  # redraw the panel: the new file, or the message with the buttons enabled again


def data_section(available: dict[int, Path]) -> DataChoice:
    st.subheader("1 · Data", anchor=False)
    left, right = st.columns([2, 3], gap="large")
    with left:
        captions = [f"downloaded · {human_bytes(available[s].stat().st_size)}" if s in available
                    else "not downloaded" for s in SIZES] + ["any MedMNIST-layout npz"]
        st.radio(LABELS["size"], [*SIZES, CUSTOM], key="data_source", help=SETTINGS["size"].help, captions=captions,
                 format_func=lambda s: "Your own .npz file" if s == CUSTOM else f"BloodMNIST {s} px")
        if ss["data_source"] == CUSTOM:
            st.text_input(LABELS["data"], key="data_path", help=SETTINGS["data"].help,
                          placeholder="/path/to/dataset.npz")
        choice = data_choice(available)
        if choice.error and (ss["data_source"] != CUSTOM or ss["data_path"].strip()):
            st.error(md_escape(choice.error), icon=":material/error:")
        elif choice.path is not None and ss["data_source"] == CUSTOM:
            n = counts_of(choice.path)
            st.caption(f"{choice.size} px · " + " · ".join(f"{sum(n[s]):,} {s}" for s in SPLITS) + " images")
        missing = [s for s in SIZES if s not in available]
        if missing:
            st.caption(f"BloodMNIST files live in `{registry.data_root()}`.")
            with st.container(horizontal=True, gap="small"):
                for s in missing:
                    st.button(f"Download {s} px", key=f"download_{s}", icon=":material/download:",
                              on_click=start_download, args=(s,), disabled="_download" in ss)
        progress_slot = st.empty()
        if "_download" in ss:
            run_download(ss.pop("_download"), progress_slot)
        if "_download_error" in ss:
            size, message = ss["_download_error"]
            st.error(md_escape(message), icon=":material/cloud_off:")
    with right:
        if choice.path is not None:
            st.markdown(f"**Images per class in {md_escape(choice.label)}**")
            st.plotly_chart(counts_chart(counts_of(choice.path)), key="class_counts",
                            config={"displayModeBar": False})
        elif ss["data_source"] != CUSTOM:
            st.info(f"BloodMNIST {ss['data_source']} px is not downloaded yet. Download it on the left to see "
                    f"its class counts, or train on your own file.", icon=":material/database:")
        else:
            st.info("Enter a file to see how many images of each class it holds.", icon=":material/database:")
    return choice


# -- the plan: core.jobs.plans builds it from what the widgets hold ---------------------------------------
def plan_request(choice: DataChoice) -> PlanRequest:
    values = {f: ss[form_key(f)] for f in FORM_FIELDS}
    if values["weights"] == "file":
        values["weights"] = ss[form_key("weights_file")].strip()
    values.update(data=choice.data, size=choice.size or RunConfig().size)
    return PlanRequest(values=values, sweep={f: ss.get(sweep_key(f), "") for f in ss["sweep_fields"]},
                       repeats=int(ss["sweep_repeats"]), preset=ss.get("preset") or None,
                       variants=ss.get("variants_preset") or None)


def make_plan(choice: DataChoice, available: dict[int, Path]) -> Plan:
    request = plan_request(choice)
    p = plans.plan(request, data_error=choice.error, available=list(available), split_sizes=split_sizes(choice),
             store=RunStore())
    if "weights" in p.errors and ss[form_key("weights")] == "file":
        p.errors["weights_file"] = p.errors.pop("weights")  # e.g. "no such weights file": shown under the path
    weights_file = ss[form_key("weights_file")].strip()
    if ss[form_key("weights")] == "file" and weights_file:
        try:
            confine(weights_file, what="weights file")
        except UserFacingError as e:  # outside the data roots: never launched, shown under the path
            p.errors["weights_file"] = ConfigError("weights", str(e))
    return p


def speed_note(plan: Plan) -> str:
    sources = plan.speed_sources
    if set(sources) == {"measured"}:
        return "speed measured on this machine, from earlier runs of the same network and image size"
    if set(sources) == {"default"}:
        return ("no finished runs on this machine yet, so a rough default speed (a 2-core CPU) scaled by network "
                "and image size")
    parts = []
    if sources["measured"]:
        parts.append(f"measured on this machine for {sources['measured']}")
    if sources["scaled"]:
        parts.append(f"scaled from {plural(plan.history_runs, 'earlier run')} on this machine (other networks "
                     f"or sizes) for {sources['scaled']}")
    return "speed " + "; ".join(parts) + f" of {plural(len(plan.configs), 'job')}"


def preview_rows(plan: Plan) -> list[dict[str, Any]]:
    dicts = [c.to_dict() for c in plan.configs]
    varying = [f for f in RunConfig.field_names() if f != "tags" and len({str(d[f]) for d in dicts}) > 1]
    shown = varying + [f for f, s in SETTINGS.items() if s.preview and f not in varying]
    rows = []
    for i, (d, seconds) in enumerate(zip(dicts, plan.seconds), start=1):
        row: dict[str, Any] = {"job": i}
        for f in shown:
            value = d[f]
            if f == "weights" and value not in ("imagenet", "none"):
                value = Path(value).name
            row[f] = format_value(value) if isinstance(value, float) else value
        row["estimate"] = format_duration(seconds)
        rows.append(row)
    return rows


def show_plan(plan: Plan) -> None:
    if plan.errors:
        st.warning(f"Fix the {plural(len(plan.errors), 'setting')} marked in red: nothing is launched until every "
                   f"setting is valid.", icon=":material/edit:")
        return
    total = sum(plan.seconds)
    n = len(plan.configs)
    st.markdown(f"**{plural(n, 'job')}** · about **{format_duration(total)}** of training"
                + (" in total" if n > 1 else ""))
    ips = sorted(plan.images_per_second)[len(plan.images_per_second) // 2]
    st.caption(f"Estimate: {speed_note(plan)} (about {ips:,.0f} training images/s).")
    for blocker in plan.blockers:
        st.warning(md_escape(blocker), icon=":material/database:")
    if n > 1 or plan.sweep_name:
        st.dataframe(preview_rows(plan), hide_index=True, height=min(38 + 35 * n, 330))


# -- presets and sweeps ---------------------------------------------------------------------------------
def load_preset() -> None:
    request = preset_request(ss["preset_choice"])
    base = RunConfig(**request.values)
    ss.update(form_values(base))
    ss["sweep_fields"] = list(request.sweep)
    for f, text in request.sweep.items():
        ss[sweep_key(f)] = text
    ss["sweep_repeats"] = 1
    ss["preset"] = request.preset
    ss["variants_preset"] = request.variants
    if "size" in request.sweep or ss["data_source"] != CUSTOM:
        ss["data_source"] = base.size


def sweep_changed() -> None:
    ss["preset"] = ss.get("variants_preset")  # a grid preset that was edited is no longer that preset


def clear_sweep() -> None:
    ss["sweep_fields"] = []
    ss["sweep_repeats"] = 1
    ss["preset"] = ss["variants_preset"] = None


def preset_section(choice: DataChoice) -> None:
    st.markdown("**Start from a preset**: a recipe measured on this tool, or any experiment of the study.")
    left, right = st.columns([2, 3], gap="large", vertical_alignment="bottom")
    with left:
        st.selectbox("Preset", [p.key for p in PRESETS], key="preset_choice",
                     format_func=lambda k: PRESETS_BY_KEY[k].title,
                     help="Fills the settings and the sweep below; you can change anything before launching.")
    with right:
        st.button("Load preset", key="load_preset", icon=":material/playlist_add:", on_click=load_preset)
    preset = PRESETS_BY_KEY[ss["preset_choice"]]
    with st.container(border=True, key="preset_card"):
        st.markdown(f"**{md_escape(preset.title)}** · `{preset.key}`")
        try:
            # as loading it would: on the chosen file, unless the preset sweeps the size (then BloodMNIST)
            on_file = choice.data and choice.size in SIZES and "size" not in preset.values
            overrides = {"data": choice.data, "size": choice.size} if on_file else None
            sizes = split_sizes(choice) if overrides else _registry_sizes()
            estimate = plans.plan(preset_request(preset.key, overrides=overrides), split_sizes=sizes,
                                  store=RunStore())
            st.caption(f"{md_escape(preset.description)} **{plural(len(estimate.configs), 'job')}**, about "
                       f"**{format_duration(sum(estimate.seconds))}** on this machine.")
        except UserFacingError as e:
            st.caption(md_escape(preset.description))
            show_error(e)
        if preset.kind == RECIPE:
            measured_figures(preset)


def measured_figures(preset: Preset) -> None:
    """A recipe's card: what it reached when measured, mean ± sd over its seeds (core.jobs.preset_figures)."""
    figures = preset.figures
    if figures is None:
        st.caption("Not measured yet: benchmarks/preset_figures.py runs it and records what it reaches.")
        return
    cols = st.columns(4)
    for col, (label, name, digits) in zip(cols, (("Test accuracy", "test_accuracy", 3),
                                                 ("Monocyte F1", "monocyte_f1", 3),
                                                 ("Immature gran. F1", "ig_f1", 3))):
        stat = figures.stat(name)
        col.metric(label, f"{stat.mean:.{digits}f}", f"± {stat.sd:.{digits}f}", delta_color="off",
                   delta_arrow="off")
    minutes = figures.stat("command_seconds")
    cols[3].metric("Whole command", f"{minutes.mean / 60:.1f} min", f"± {minutes.sd / 60:.1f}", delta_color="off",
                   delta_arrow="off")
    other = [(label, name) for label, name in (
        (f"{figures.external}, shared classes", "external_shared_accuracy"),
        (f"{figures.external}, all 8 classes", "external_accuracy"),
        ("Clean (corruption benchmark)", "clean_accuracy"),
        ("Mean corrupted accuracy", "corrupted_accuracy")) if figures.has(name)]
    if other:
        for col, (label, name) in zip(st.columns(4), other):
            stat = figures.stat(name)
            col.metric(md_escape(label), f"{stat.mean:.3f}", f"± {stat.sd:.3f}", delta_color="off", delta_arrow="off")
    st.caption(f"Measured {md_escape(figures.measured)} on {md_escape(figures.machine)}: mean ± sd of seeds "
               f"{figures.seed_list}, each `{figures.command}`; "
               f"{figures.stat('train_seconds').mean:.0f} s of training each. Chosen on validation accuracy; "
               f"test touched once per run."
               + (f" The other lab's cells ({md_escape(figures.external)}) are the trained model applied unchanged, "
                  "with cell-centred framing (`--resize cell`)." if figures.has("external_shared_accuracy") else ""))


def _registry_sizes() -> tuple[int, int, int]:
    n = registry.info().n_samples
    return n["train"], n["val"], n["test"]


def sweep_section(plan: Plan) -> None:
    active = bool(ss["sweep_fields"] or ss.get("variants_preset") or ss["sweep_repeats"] > 1)
    with st.expander("Sweep: try several values, or repeat with other seeds", expanded=active,
                     icon=":material/grid_view:"):
        st.caption("Pick settings to vary and type their values separated by commas. Every combination becomes "
                   "one job; each is repeated with seeds seed, seed+1, …")
        if ss.get("variants_preset"):
            preset = PRESETS_BY_KEY[ss["variants_preset"]]
            variants = " · ".join(", ".join(f"{k} {format_value(v)}" for k, v in var.items()) or "as set below"
                                  for var in preset.variants)
            st.info(f"**{md_escape(preset.title)}** runs {plural(len(preset.variants), 'variant')} of the "
                    f"settings: {md_escape(variants)}", icon=":material/science:")
        cols = st.columns([3, 1], vertical_alignment="bottom")
        with cols[0]:
            st.multiselect("Settings to sweep", SWEEPABLE, key="sweep_fields", on_change=sweep_changed,
                           format_func=lambda f: f"{LABELS[f]} ({f})",
                           placeholder="none: one job")
        with cols[1]:
            st.number_input("Repeats", min_value=1, max_value=50, step=1, key="sweep_repeats",
                            on_change=sweep_changed, help=SETTINGS["seed"].help)
            error_slot("sweep_repeats", plan)
        fields_ = ss["sweep_fields"]
        if fields_:
            cols = st.columns(min(len(fields_), 3))
            for i, f in enumerate(fields_):
                with cols[i % len(cols)]:
                    example = {"int": "16, 32", "float": "0.001, 0.0001", "bool": "true, false"}.get(
                        field_type(f).__name__, "a, b")
                    st.text_input(f"{LABELS[f]}: values", key=sweep_key(f), help=SETTINGS[f].help,
                                  placeholder=example, on_change=sweep_changed)
                    error_slot(sweep_key(f), plan)
        if active:
            st.button("Clear sweep", key="clear_sweep", icon=":material/close:", on_click=clear_sweep)


# -- search mode: an Optuna study over ranges, each trial a job (core.jobs.search) ----------------------------
SEARCH_EXAMPLES = {"float": "e.g. 1e-4:1e-2:log or 0:0.5", "int": "e.g. 16:64 or 32,64,128", "bool": "true,false"}


def search_key(name: str) -> str:
    return f"srch_{name}"


def search_plan(choice: DataChoice, plan: Plan) -> search.SearchPlan | None:
    """The search the Search inputs describe over the form's one run (None until a field is picked)."""
    fields_ = ss.get("srch_fields") or []
    if not fields_ or not plan.ok or len(plan.configs) != 1:
        return None
    given = {**SEARCH_DEFAULTS, **{k: ss[k] for k in SEARCH_DEFAULTS if k in ss}}
    return search.plan_search(
        plan.configs[0], {f: ss.get(search_key(f), "") for f in fields_}, int(given["srch_trials"]),
        store=RunStore(), hours=float(given["srch_hours"] or 0) or None, pruner=given["srch_pruner"],
        name=given["srch_name"], split_sizes=split_sizes(choice), refund=bool(given["srch_refund"]))


def launch_search() -> None:
    """Launch search's callback: the study, and its first trial queued."""
    available = registry.available_sizes()
    choice = data_choice(available)
    sp = search_plan(choice, make_plan(choice, available))
    if sp is None or not sp.ok:
        ss["_launch"] = ("error", "Nothing was launched: fix the search's settings marked in red.")
        return
    try:
        queue = open_queue()
        row = search.create_search(sp.spec, queue, current_user())
        queue.tick()
    except UserFacingError as e:
        ss["_launch"] = ("error", str(e))
        return
    ss["_launch"] = ("success", f"Started search “{row.name}”: {sp.spec.describe_budget()}, queued one after "
                                f"another as the jobs end. Its trials and best so far are on Results.")
    ss["tab"] = "Jobs"


def search_section(choice: DataChoice, plan: Plan) -> None:
    with st.expander("Search: let Optuna choose values within ranges, and stop poor trials early",
                     expanded=bool(ss.get("srch_fields")), icon=":material/travel_explore:"):
        st.caption("Pick settings and give each a range (low:high, or low:high:log for rates) or values (a,b,c). "
                   "Each trial is one job of the settings below with values chosen by TPE (Bayesian) from how "
                   "earlier trials did; a trial behind the others at an epoch is stopped there (pruned). Trials are "
                   "compared on validation accuracy only.")
        st.multiselect("Settings to search", SWEEPABLE, key="srch_fields", format_func=lambda f: f"{LABELS[f]} ({f})",
                       placeholder="none: no search")
        fields_ = ss.get("srch_fields") or []
        if not fields_:
            return
        sp = search_plan(choice, plan)
        errors = sp.errors if sp else {}
        cols = st.columns(min(len(fields_), 3))
        for i, f in enumerate(fields_):
            with cols[i % len(cols)]:
                st.text_input(f"{LABELS[f]}: range or values", key=search_key(f), help=SETTINGS[f].help,
                              placeholder=SEARCH_EXAMPLES.get(field_type(f).__name__, "a,b"))
                if f in errors:
                    st.error(md_escape(errors[f].message), icon=":material/error:")
        cols = st.columns(4)
        cols[0].number_input("Trials", min_value=1, max_value=search.MAX_TRIALS, step=1, key="srch_trials",
                             help="The budget, in full trials.")
        cols[1].number_input("Hours (0: no limit)", min_value=0.0, step=0.5, key="srch_hours",
                             help="No trial starts after this; running ones finish.")
        cols[2].selectbox("Pruner", list(search.PRUNERS), key="srch_pruner", help="; ".join(search.PRUNERS.values()))
        cols[3].text_input("Study name", key="srch_name", placeholder="default: search-date-time")
        st.checkbox("Spend the epochs pruned trials leave on further trials", key="srch_refund",
                    help="On: the trials are a budget of full trials, and a trial stopped early spends only the "
                         "epochs it trained, so the search uses all the compute it was given. Off: exactly that "
                         "many trials, however short.")
        for slot in ("search_space", "search_trials", "search_hours", "search_pruner", "search_name"):
            if slot in errors:
                st.error(md_escape(errors[slot].message), icon=":material/error:")
        if sp is None:
            st.warning("A search starts from one run's settings: clear the sweep and fix any setting marked in red.",
                       icon=":material/edit:")
            return
        if sp.ok:
            st.markdown("**What the search will run**")
            st.dataframe([{"setting": LABELS[d.name], "searched over": d.describe().split(": ", 1)[1]}
                          for d in sp.spec.space], hide_index=True, key="search_preview")
            each = format_duration(sp.seconds_per_trial) if sp.seconds_per_trial is not None else "?"
            spend = ("pruned trials' unused epochs run further trials in that time" if sp.spec.refund else
                     "pruning usually cuts that")
            budget = sp.spec.budget_words
            st.caption(f"{budget[0].upper() + budget[1:]} of about {each} each (the settings below), at most about "
                       f"{format_duration(sp.max_seconds or 0)} one at a time; {spend}. The first "
                       f"{plural(sp.spec.startup_trials, 'trial')} spread evenly over the ranges; the results go to "
                       f"Optuna's storage `{md_escape(sp.spec.storage)}`.")
        st.button("Launch search", key="launch_search", type="primary", icon=":material/travel_explore:",
                  on_click=launch_search, disabled=not sp.ok)


def error_slot(slot: str, plan: Plan) -> None:
    if slot in plan.errors:
        st.error(md_escape(plan.errors[slot].message), icon=":material/error:")


# -- the form ------------------------------------------------------------------------------------------------
def field_input(name: str) -> None:
    if name == "weights_file":
        st.text_input("Weights file", key=form_key(name), help=SETTINGS["weights"].help,
                      placeholder="only for “a weights file”")
        return
    setting = SETTINGS[name]
    key, label, help_ = form_key(name), setting.form_text, setting.help
    if setting.widget == "weights":
        st.selectbox(label, WEIGHT_CHOICES, key=key, help=help_, format_func=WEIGHT_NAMES.get)
    elif setting.choices:
        options = setting.choices
        if name == "precision":  # what this machine runs (a GPU adds mixed float16)
            options = precision_choices()
            if ss.get(key) not in options:
                ss[key] = AUTO_PRECISION
        st.selectbox(label, options, key=key, help=help_, format_func=setting.value_name)
        if name == "precision":
            st.caption(describe_support())
    elif setting.widget == "tags":
        st.text_input(label, key=key, help=help_, placeholder="e.g. demo, week 3")
    elif setting.kind is bool:
        st.toggle(label, key=key, help=help_)
    elif setting.kind is int:
        st.number_input(label, key=key, help=help_, step=1, format="%d")
    elif setting.kind is float:
        st.number_input(label, key=key, help=help_, step=setting.step, format="%g")
    else:
        st.text_input(label, key=key, help=help_)


def launch() -> None:
    """Launch's callback: runs before the page redraws, with the values the inputs hold (the plan shown)."""
    available = registry.available_sizes()
    plan = make_plan(data_choice(available), available)
    if not plan.ok or plan.blockers:
        ss["_launch"] = ("error", "Nothing was launched: " + (" ".join(plan.blockers) if plan.ok else
                                                             "fix the settings marked in red."))
        return
    try:
        queue = open_queue()
        ids = queue.submit_many(plan.configs, current_user(), sweep=plan.sweep_name)
        queue.tick()
    except UserFacingError as e:
        ss["_launch"] = ("error", str(e))
        return
    what = f"sweep “{plan.sweep_name}”, about {format_duration(sum(plan.seconds))} in total" if plan.sweep_name \
        else f"a single run of about {format_duration(sum(plan.seconds))}"
    ss["_launch"] = ("success", f"Queued {plural(len(ids), 'job')} ({what}). They train in the background: you "
                                f"may close this tab and come back.")
    ss["tab"] = "Jobs"


def settings_section(choice: DataChoice, plan: Plan) -> None:
    st.subheader("2 · Settings", anchor=False)
    preset_section(choice)
    sweep_section(plan)
    search_section(choice, plan)
    # Not an st.form: every change reruns the page, so the plan below, its estimate and every error next to its
    # field follow what the inputs hold now (all errors at once; a corrected one goes at once), and Launch
    # queues exactly that.
    with st.container(key="run_settings"):
        st.caption("Defaults are the study's best recipe (ResNet-50, ImageNet weights, dropout 0.3, Adam 1e-4). "
                   "Hover over the ? of a setting to learn what it does.")
        for title, inputs, switches in FORM_GROUPS:
            st.markdown(f"**{title}**")
            for start in range(0, len(inputs), FORM_COLUMNS):
                for col, name in zip(st.columns(FORM_COLUMNS), inputs[start:start + FORM_COLUMNS]):
                    with col:
                        field_input(name)
                        error_slot(name, plan)
            with st.container(horizontal=True, gap="large"):
                for name in switches:
                    field_input(name)
            for name in switches:
                error_slot(name, plan)
        st.divider()
        st.markdown("**What will run**")
        if "data" in plan.errors:
            st.error(f"Data: {md_escape(plan.errors['data'].message)}", icon=":material/database:")
        show_plan(plan)
        st.caption("The plan follows every change; **Launch** queues exactly what it shows.")
        n = len(plan.configs) if plan.ok else 0
        st.button(f"Launch {plural(n, 'job')}" if n else "Launch", key="launch", type="primary",
                  icon=":material/rocket_launch:", on_click=launch)
    message = ss.pop("_launch", None)
    if message and message[0] == "error":
        st.error(md_escape(message[1]), icon=":material/block:")


# -- jobs ---------------------------------------------------------------------------------------------------
def config_summary(c: RunConfig) -> str:
    parts = [SETTINGS["arch"].value_name(c.arch), f"{c.size} px", weights_label(c.weights), f"batch {c.batch_size}",
             plural(c.epochs, "epoch"), f"{SETTINGS['optimizer'].value_name(c.optimizer)} lr {c.lr:g}"]
    if c.optimizer == "sgd":
        parts.append(f"momentum {c.momentum:g}")
    parts.append(f"dropout {c.dropout:g}")
    if c.attention:
        parts.append("attention")
    if c.class_weights:
        parts.append("class weights")
    if c.limit_train:
        parts.append(f"{c.limit_train:,} training images")
    parts.append(f"seed {c.seed}")
    parts.append(Path(c.data).name if c.data else "BloodMNIST")
    return " · ".join(parts)


def progress_text(job: Job, max_concurrent: int) -> str:
    """The bar's line: core.progress's phase · detail · time left ("Validating · epoch 2/5 · about 1 min left")."""
    if job.status == "queued":
        return f"Queued: starts when a slot is free ({max_concurrent} at a time)"
    if job.cancel_requested:
        return "Cancelling… the job stops after the write in progress and keeps its last completed epoch"
    return job.progress.text()


def ago(when: float | None, now: float | None = None) -> str:
    """'just now', '3 min ago', '2 h ago' (the exact time is in the tooltip)."""
    if when is None:
        return "never"
    seconds = max((now or time.time()) - when, 0.0)
    if seconds < 45:
        return "just now"
    return "1 min ago" if seconds < 90 else f"{format_seconds(seconds)} ago"


def clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def timing(job: Job) -> str:
    """When it was queued, started and finished, in words relative to now."""
    parts = [f"queued {ago(job.created)}"]
    if job.started and job.status != "queued":
        parts.append(f"started {ago(job.started)}")
    if job.finished and job.status in ("succeeded", "failed", "cancelled"):
        took = f" after {format_seconds(job.finished - job.started)}" if job.started else ""
        parts.append(f"{job.status} {ago(job.finished)}{took}")
    return " · ".join(parts)


def score(job: Job) -> dict[str, Any] | None:
    """A succeeded job's run's figures (None when its run folder is gone or unreadable)."""
    if not job.run_path:
        return None
    try:
        metrics = open_run(job.run_path).metrics
        return {"val": metrics["val"]["accuracy"], "test": metrics["test"]["accuracy"],
                "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run")}
    except (OSError, ValueError, KeyError, TypeError, UserFacingError):
        return None


def curves_figure(rows: list[dict[str, float]]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"), horizontal_spacing=0.1)
    epochs = [int(r["epoch"]) for r in rows]
    for col, (train_key, val_key) in enumerate((("loss", "val_loss"), ("accuracy", "val_accuracy")), start=1):
        for key, name, color in ((train_key, "train", TRAIN_COLOR), (val_key, "validation", VAL_COLOR)):
            fig.add_trace(go.Scatter(x=epochs, y=[r.get(key) for r in rows], name=name, legendgroup=name,
                                     showlegend=col == 1, mode="lines+markers", line=dict(color=color)),
                          row=1, col=col)
    fig.update_xaxes(title_text="epoch", dtick=1 if len(rows) <= 15 else None)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    fig.update_layout(height=280, margin=dict(l=0, r=0, t=28, b=0),
                      legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="center", x=0.5))
    return fig


def job_action(action: str, job_id: int) -> None:
    ss.pop(confirm_key(job_id), None)
    try:
        getattr(open_queue(), action)(job_id, current_user())
    except UserFacingError as e:
        ss["_job_error"] = str(e)


def confirm_key(job_id: int) -> str:
    return f"_confirm_cancel_{job_id}"


def ask_cancel(job_id: int) -> None:
    ss[confirm_key(job_id)] = True


def keep_job(job_id: int) -> None:
    ss.pop(confirm_key(job_id), None)


def set_max_concurrent() -> None:
    try:
        open_queue().set_max_concurrent(int(ss["max_concurrent"]), current_user())
    except UserFacingError as e:
        ss["_job_error"] = str(e)


def job_buttons(job: Job) -> None:
    # another user's job: no buttons unless you are an admin (the queue checks it again)
    mine = current_user().can("train", owner=job.owner)
    with st.container(horizontal=True, gap="small", horizontal_alignment="right"):
        if mine and job.status in ACTIVE and not ss.get(confirm_key(job.id)):
            st.button("Cancel", key=f"ask_cancel_{job.id}", icon=":material/stop_circle:",
                      on_click=ask_cancel, args=(job.id,), disabled=job.cancel_requested,
                      help="Asks first. A running job keeps its last completed epoch and can be resumed.")
        if mine and job.resumable:
            st.button("Resume", key=f"resume_{job.id}", icon=":material/play_arrow:",
                      on_click=job_action, args=("resume", job.id),
                      help="Continue from the last completed epoch.")
        if mine and job.status not in ACTIVE:
            st.button("Delete", key=f"delete_{job.id}", icon=":material/delete:",
                      on_click=job_action, args=("delete", job.id),
                      help="Remove the job and its log from this list. A finished run stays in the run "
                           "store.")


def cancel_confirmation(job: Job) -> None:
    """The second step of Cancel: what it does, and the two ways out."""
    if not (ss.get(confirm_key(job.id)) and job.status in ACTIVE and not job.cancel_requested):
        ss.pop(confirm_key(job.id), None)
        return
    with st.container(horizontal=True, gap="small", vertical_alignment="center", key=f"confirm_{job.id}"):
        st.markdown(f"**Cancel job {job.id}?** " + ("It has not started, so nothing is lost." if job.status ==
                    "queued" else "It stops now and keeps its last completed epoch: **Resume** continues from "
                                  "there."))
        st.button("Yes, cancel it", key=f"cancel_{job.id}", type="primary", icon=":material/stop_circle:",
                  on_click=job_action, args=("cancel", job.id))
        st.button("Keep it", key=f"keep_{job.id}", on_click=keep_job, args=(job.id,))


def finished_summary(job: Job) -> None:
    """A succeeded job: its figures and one click to its run on Results and Confusions."""
    figures = score(job)
    with st.container(horizontal=True, gap="medium", vertical_alignment="center", key=f"done_{job.id}"):
        if figures is None:
            st.markdown(f":green[:material/check_circle:] Finished. Run saved in `{job.run_path}`")
        else:
            best = (f" · best epoch {figures['best_epoch']} of {figures['epochs_run']}"
                    if figures["best_epoch"] else "") + (f" · {job.detail}" if job.detail else "")  # pruned at k
            st.markdown(f":green[:material/check_circle:] Validation accuracy **{figures['val']:.3f}** · "
                        f"test accuracy **{figures['test']:.3f}**{best}")
        if job.run_id:
            st.page_link("pages/results.py", label="Open on Results", icon=":material/leaderboard:",
                         query_params={"run": job.run_id})
            st.page_link("pages/confusion.py", label="Confusions", icon=":material/grid_on:",
                         query_params={"run": job.run_id})


def job_card(queue: JobQueue, job: Job, max_concurrent: int) -> None:
    with st.container(border=True, key=f"job_{job.id}"):
        head, buttons = st.columns([5, 2], vertical_alignment="center")
        with head:
            with st.container(horizontal=True, gap="small", vertical_alignment="center"):
                st.markdown(f"**Job {job.id}**")
                st.badge(job.status, icon=STATUS_ICONS[job.status], color=STATUS_COLORS[job.status])
                if job.sweep:
                    st.badge(job.sweep, icon=":material/grid_view:", color="violet")
                for tag in job.config.tags:
                    st.badge(tag, icon=":material/sell:", color="blue")
                if job.owner:
                    st.badge(job.owner, icon=":material/person:", color="gray")
                if job.gpu is not None:  # the GPU its process was pinned to (core.devices)
                    st.badge(f"GPU {job.gpu}", icon=":material/memory:", color="green")
                if job.executor:
                    st.badge(job.executor.capitalize(), icon=":material/hub:", color="orange")
            st.caption(md_escape(config_summary(job.config)) + " · " + timing(job),
                       help=f"Queued {clock(job.created)}" + (f", started {clock(job.started)}" if job.started
                                                              else "")
                       + (f", ended {clock(job.finished)}" if job.finished else ""))
        with buttons:
            job_buttons(job)
        cancel_confirmation(job)
        try:
            history = queue.history(job)
        except UserFacingError as e:  # a damaged history.csv: said on its card, the other jobs still shown
            show_error(e)
            history = []
        if job.status in ACTIVE:
            st.progress(min(max(job.fraction, 0.0), 1.0), text=md_escape(progress_text(job, max_concurrent)))
        elif job.status == "succeeded":
            finished_summary(job)
        elif job.status == "failed":
            st.error(md_escape(job.error or "failed; see the log"), icon=":material/error:")
        elif job.status == "cancelled" and job.epoch:
            st.caption(f"Cancelled during epoch {job.epoch} of {job.epochs}.")
        if job.resumable:
            st.caption(f"{plural(len(history), 'completed epoch')} kept: **Resume** continues from there."
                       if history else "**Resume** starts it again.")
        if history:
            if job.status in ACTIVE:
                st.plotly_chart(curves_figure(history), key=f"curves_{job.id}", config={"displayModeBar": False})
            else:
                with st.expander("Learning curves", icon=":material/show_chart:"):
                    st.plotly_chart(curves_figure(history), key=f"curves_{job.id}",
                                    config={"displayModeBar": False})
        elif job.status == "running":
            st.caption("Loss and accuracy curves appear after the first epoch.")
        log = queue.log_tail(job.id) or job.log_tail
        if log:  # a failed job's log is open: the reason is usually in its last lines
            with st.expander("Log", icon=":material/terminal:", expanded=job.status == "failed"):
                st.code(log, language=None)
        with st.expander("Command line", icon=":material/content_copy:"):
            st.caption("Queues the same run again from a terminal (copy button at the right):")
            st.code(submit_command(job.config), language="bash", wrap_lines=True)


@st.fragment(run_every=REFRESH_SECONDS)
def jobs_view() -> None:
    """Redrawn every couple of seconds on its own; each redraw also ticks the queue (starts queued jobs and
    notices jobs whose process died)."""
    try:
        queue = open_queue()
        queue.tick()
        jobs = queue.list()
        max_concurrent = queue.max_concurrent
    except UserFacingError as e:
        show_error(e)
        return
    if "_job_error" in ss:
        st.error(md_escape(ss.pop("_job_error")), icon=":material/error:")
    top = st.columns([3, 1, 1], vertical_alignment="bottom")
    with top[0]:
        st.segmented_control("Show", list(FILTERS), key="job_filter", default="All", required=True)
    with top[1]:
        mine_only = st.toggle("Only my jobs", key="my_jobs", help=f"Jobs submitted by {user.name}.")
    if mine_only:
        jobs = [j for j in jobs if j.owner == user.name]
    counts = Counter(j.status for j in jobs)
    with top[2]:
        if "max_concurrent" not in ss:
            ss["max_concurrent"] = max_concurrent
        st.number_input("Max concurrent jobs", min_value=1, max_value=16, step=1, key="max_concurrent",
                        on_change=set_max_concurrent, disabled=not user.is_admin,  # a server-wide setting
                        help="How many jobs train at the same time. On a small CPU machine one at a time is "
                             "fastest overall; more helps on a machine with many cores or a GPU."
                             + ("" if user.is_admin else " Only an admin changes it."))
    summary = " · ".join(f"{counts[s]} {s}" for s in ("running", "queued", "succeeded", "failed", "cancelled")
                         if counts[s])
    lease = queue.executor_lease()
    if lease:  # python -m core worker --ray runs the queue
        summary += f" · jobs start on {str(lease.get('name', '')).capitalize()} at {lease.get('address', '')}"
    st.caption((summary or "No jobs yet") + f" · updated {time.strftime('%H:%M:%S')}")
    wanted = FILTERS[ss.get("job_filter") or "All"]
    shown = [j for j in jobs if wanted is None or j.status in wanted]
    if not jobs and mine_only:
        st.info("You have no training jobs yet.", icon=":material/model_training:")
        return
    if not jobs:
        st.info("No training jobs yet. Set one up under **New training** and press **Launch**.",
                icon=":material/model_training:")
        return
    if not shown:
        st.caption("No jobs with this status.")
    for job in shown[:JOBS_SHOWN]:
        job_card(queue, job, max_concurrent)
    if len(shown) > JOBS_SHOWN:
        st.caption(f"Showing the newest {JOBS_SHOWN} of {len(shown)} jobs.")


# -- the page -----------------------------------------------------------------------------------------------
user = page_user("train")  # opened by URL without the role: one message, and the page stops
st.title("Train", anchor=False)
st.markdown("Train a network on BloodMNIST or your own file: one run, a sweep over settings, or an experiment "
            "of the study. Jobs train in the background, one process each, so you can leave this page and "
            "come back to find them running or done.")
try:
    st.caption(devices.describe_gpus(), help="`python -m core info` says more; `make app GPU=1` sets "
                                                       "up TensorFlow with CUDA on a machine with an NVIDIA GPU.")
except UserFacingError as e:
    show_error(e)
new_tab, jobs_tab = st.tabs(TABS, key="tab", bind="query-params")
if new_tab.open:
    restore_settings()
    with new_tab:
        try:
            available = registry.available_sizes()
            choice = data_section(available)
            plan = make_plan(choice, available)
        except UserFacingError as e:
            show_error(e)
        else:
            settings_section(choice, plan)
    save_settings()
if jobs_tab.open:
    with jobs_tab:
        message = ss.pop("_launch", None)
        if message:
            (st.success if message[0] == "success" else st.error)(md_escape(message[1]))
        jobs_view()
