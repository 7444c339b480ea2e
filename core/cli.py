"""Command line: `python -m core {train,submit,search,presets,jobs,worker,evaluate,predict,gradcam,external,
robustness,calibrate,faithfulness,download,runs,users,info}`.

Every command reports user errors (bad files, missing data, offline) as one clear message on stderr and
exit status 2, never a traceback. TensorFlow is imported only by the commands that need it. The command line
acts as the local administrator (core.access.roles.LOCAL_ADMIN): whoever has a shell on the machine owns it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

from core.access.roles import LOCAL_ADMIN
from core.config import SETTINGS, SIZES, RunConfig
from core.data.images import RESIZE_DESCRIPTIONS, RESIZE_MODES
from core.errors import UserFacingError
from core.explain.cam import METHOD_NAMES

EXIT_USAGE = 2
RESIZE_HELP = "; ".join(f"{m}: {RESIZE_DESCRIPTIONS[m]}" for m in RESIZE_MODES).replace("%", "%%")


class UserError(UserFacingError):
    pass


def _opposite(flag: str) -> str:
    return f"--{flag.removeprefix('--no-')}" if flag.startswith("--no-") else f"--no-{flag.removeprefix('--')}"


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig setting, spelt, grouped and explained by its metadata (core.config.SETTINGS).
    A flag that is not given leaves no attribute (`explicit_values` reads only what the user typed), so a
    preset's values stay unless a flag overrides them. Each switch also has its opposite (--vflip /
    --no-vflip), to undo a preset's."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for s in SETTINGS.values():
        if s.group not in groups:
            groups[s.group] = p.add_argument_group(s.group.lower())
        help_ = s.cli_help or (f"turn off: {s.help}" if s.kind is bool and s.default else s.help)
        g, help_ = groups[s.group], help_.replace("%", "%%")
        if s.kind is bool:
            g.add_argument(s.cli_flag, dest=s.name, action="store_false" if s.default else "store_true",
                           default=argparse.SUPPRESS, help=help_)
            g.add_argument(_opposite(s.cli_flag), dest=s.name, action="store_true" if s.default else "store_false",
                           default=argparse.SUPPRESS, help=f"undo {s.cli_flag} (e.g. a preset's)")
        elif s.kind is tuple:
            g.add_argument(s.cli_flag, dest=s.name, action="append", default=argparse.SUPPRESS, help=help_)
        else:
            g.add_argument(s.cli_flag, dest=s.name, type=s.kind, choices=s.choices or None, metavar=s.metavar,
                           default=argparse.SUPPRESS, help=help_)


def explicit_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave on the command line, as RunConfig values."""
    values = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    if "tags" in values:
        values["tags"] = tuple(values["tags"])
    return values


def config_from_args(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> RunConfig:
    """The run the flags describe: RunConfig's defaults, then `base` (a preset's values), then the flags.
    With --data the size is the file's (a different --size or preset size is an error); weights left unset
    are the network's default."""
    base = dict(base or {})
    given = explicit_values(args)
    size = given.get("size", base.get("size"))
    if given.get("data"):
        from core.data.dataset import load_npz  # noqa: PLC0415

        file_size = load_npz(given["data"]).image_size
        if size is not None and size != file_size:
            if "size" in given:
                raise UserError(f"--size {size} but {given['data']} holds {file_size} px images")
            raise UserError(f"preset {getattr(args, 'preset', '')} is for {size} px images but {given['data']} "
                            f"holds {file_size} px ones; add --size {file_size} to use it anyway")
        size = file_size
    values = {**base, **given}
    values["size"] = size or RunConfig().size
    arch = values.get("arch", RunConfig().arch)
    values["weights"] = values.get("weights") or RunConfig.default_weights(arch, values.get("norm", "batch"))
    return RunConfig(**values)


def _preset(key: str) -> Any:
    from core.config import ConfigError  # noqa: PLC0415
    from core.jobs.presets import get  # noqa: PLC0415

    try:
        return get(key)
    except ConfigError as e:
        raise UserError(e.message) from None


def cmd_train(args: argparse.Namespace) -> int:
    if args.preset:
        preset = _preset(args.preset)
        n = len(preset.configs())
        if n > 1:
            raise UserError(f"preset {preset.key} queues {n} runs; use: python -m core submit --preset {preset.key}")
        config = config_from_args(args, preset.base)
    else:
        config = config_from_args(args)
    from core.store.runs import RunStore  # noqa: PLC0415
    from core.training.trainer import Progress, train  # noqa: PLC0415

    last = [-1.0]

    def progress(p: Progress) -> None:
        if p.batch == p.batches or p.fraction - last[0] >= 0.02:
            last[0] = p.fraction
            print(f"\r  epoch {p.epoch}/{p.epochs} batch {p.batch}/{p.batches} "
                  f"{p.images_per_second:.0f} img/s, ETA {p.eta_seconds:.0f}s", end="", file=sys.stderr,
                  flush=True)
            if p.batch == p.batches:
                print(file=sys.stderr)

    run = train(config, RunStore(args.runs_dir), progress=progress, echo=lambda m: print(m, file=sys.stderr))
    print(run.path)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from core.jobs.plans import PlanRequest, plan, preset_request  # noqa: PLC0415
    from core.jobs.queue import JobQueue  # noqa: PLC0415
    from core.store.runs import RunStore  # noqa: PLC0415

    if args.preset and args.grid:
        raise UserError("--preset and --grid: give one (a preset brings its own grid)")
    if args.preset:
        preset = _preset(args.preset)
        overrides = explicit_values(args)
        if overrides.get("data") and "size" not in preset.values:
            overrides["size"] = config_from_args(args, preset.base).size  # the file's, checked against the preset's
        request = preset_request(preset.key, repeats=args.repeats, overrides=overrides)  # errors reach main()
    else:
        sweep = {}
        for item in args.grid:
            name, sep, text = item.partition("=")
            if not sep:
                raise UserError(f"--grid takes FIELD=V1,V2,...; got {item!r}")
            sweep[name.strip().replace("-", "_")] = text
        request = PlanRequest(values=config_from_args(args).to_dict(), sweep=sweep, repeats=args.repeats)
    store = RunStore(args.runs_dir)
    p = plan(request, store=store)
    error = p.first_error()
    if error is not None:
        raise error
    queue = JobQueue(store)
    ids = queue.submit_many(p.configs, LOCAL_ADMIN, p.sweep_name)
    if not args.no_start:
        queue.tick()
    print(f"queued {len(ids)} job(s): {', '.join(map(str, ids))}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """An Optuna study whose trials are queue jobs (core.jobs.search): start one, or show, list or cancel."""
    import time  # noqa: PLC0415

    from core.jobs import search  # noqa: PLC0415
    from core.jobs.queue import JobQueue  # noqa: PLC0415
    from core.store.runs import RunStore  # noqa: PLC0415

    store = RunStore(args.runs_dir)
    if args.list:
        rows = search.list_searches(store.runs_dir.parent)
        for r in rows:
            print(f"{r.name}\t{r.status}\t{r.trials_summary()}\t{r.owner}\t{r.storage}")
        if not rows:
            print("(no searches yet: python -m core search --space FIELD=LOW:HIGH ...)")
        return 0
    queue = JobQueue(store)
    if args.cancel:
        search.cancel_search(queue, args.cancel, LOCAL_ADMIN)
        print(f"cancelled search {args.cancel}: no more trials; its queued and running jobs are cancelled")
        return 0
    if args.show:
        print(search.format_view(search.show(queue, args.show)))
        return 0
    if not args.space:
        raise UserError("give the space to search (--space lr=1e-4:1e-2:log ...), or --show/--cancel NAME, or --list")
    p = search.plan_search(config_from_args(args), args.space, args.trials, store=store, hours=args.hours,
                           pruner=args.pruner, name=args.study, storage=args.storage,
                           startup_trials=args.startup_trials, prune_after=args.prune_after, first=args.try_,
                           refund=not args.exact_trials)
    if not p.ok:
        raise next(iter(p.errors.values()))
    row = search.create_search(p.spec, queue, LOCAL_ADMIN)
    if not args.no_start:
        queue.tick()
    space = "; ".join(d.describe() for d in p.spec.space)
    print(f"search {row.name}: {p.spec.describe_budget()} over {space}; storage {row.storage}")
    if not args.wait:
        print(f"the queue runs it (the app, or python -m core worker); python -m core search --show {row.name}")
        return 0
    while search.get_search(queue, row.name).status == "running":
        queue.tick()
        time.sleep(args.poll)
    print(search.format_view(search.show(queue, row.name)))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from core.jobs.plans import format_value  # noqa: PLC0415
    from core.jobs.presets import PRESETS, RECIPE  # noqa: PLC0415

    if args.json:
        print(json.dumps([{"key": p.key, "title": p.title, "kind": p.kind, "description": p.description,
                           "runs": len(p.configs()), "settings": dict(p.base), "grid": dict(p.values),
                           "variants": list(p.variants),
                           "measured": p.figures.to_dict() if p.figures else None} for p in PRESETS], indent=2))
        return 0
    def block(text: str) -> None:
        print(textwrap.fill(text, width=110, initial_indent=" " * 12, subsequent_indent=" " * 12))

    for p in PRESETS:
        n = len(p.configs())
        print(f"{p.key:<11} {p.title} ({n} run{'s' if n > 1 else ''})")
        block(p.description)
        if p.kind == RECIPE:
            block("settings: " + " ".join(f"{k}={format_value(v)}" for k, v in p.base.items()))
            figures = p.figures
            block("measured: " + (f"{figures.summary()}; {figures.machine}, {figures.measured}" if figures
                                  else "not yet (benchmarks/preset_figures.py)"))
        print()
    print("run one: python -m core train --preset NAME [--flag value ...]; queue one: python -m core submit "
          "--preset NAME")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from core.jobs.queue import JobQueue  # noqa: PLC0415
    from core.store.runs import RunStore  # noqa: PLC0415

    queue = JobQueue(RunStore(args.runs_dir))
    if args.max_concurrent:
        queue.set_max_concurrent(args.max_concurrent, LOCAL_ADMIN)
    if args.cancel:
        queue.cancel(args.cancel, LOCAL_ADMIN)
    if args.resume:
        queue.resume(args.resume, LOCAL_ADMIN)
    if args.delete:
        queue.delete(args.delete, LOCAL_ADMIN)
    queue.tick()
    jobs = queue.list()
    if args.json:
        print(json.dumps([{"id": j.id, "status": j.status, "owner": j.owner, "arch": j.config.arch,
                           "size": j.config.size, "epoch": j.epoch, "epochs": j.epochs, "fraction": j.fraction,
                           "phase": j.phase, "detail": j.detail, "eta_seconds": j.eta_seconds,
                           "run_path": j.run_path, "error": j.error} for j in jobs], indent=2))
        return 0
    print(f"{'id':>4} {'status':<10} {'arch':<16} {'px':>4} {'bs':>4} {'progress':>9} {'img/s':>6}  run / error")
    for j in jobs:
        # a running job: its phase, detail and time left ("Validating · epoch 2/5 · about 1 min left")
        detail = j.progress.text() if j.status == "running" else j.run_path or j.error or ""
        ips = f"{j.images_per_second:.0f}" if j.images_per_second else ""
        print(f"{j.id:>4} {j.status:<10} {j.config.arch:<16} {j.config.size:>4} {j.config.batch_size:>4} "
              f"{100 * j.fraction:>8.0f}% {ips:>6}  {detail[:80]}")
    if not jobs:
        print("(no jobs: python -m core submit ...)")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from core.jobs.queue import worker  # noqa: PLC0415
    from core.store.runs import RunStore  # noqa: PLC0415

    executor = None
    if args.ray:
        try:
            from core.jobs.ray_executor import RayExecutor  # noqa: PLC0415  (Ray only when asked for)

            executor = RayExecutor(None if args.ray == "local" else args.ray, cpus_per_job=args.cpus_per_job,
                                   gpus_per_job=args.gpus_per_job)
        except ImportError as e:
            raise UserError(f"--ray needs Ray installed (pip install 'ray>=2.40,<3'): {e}") from e
        except ConnectionError as e:
            raise UserError(f"could not reach the Ray cluster at {args.ray}: {e}") from e
        print(f"worker: {executor.describe()}; Ctrl-C stops the worker and the jobs it runs (they can be "
              f"resumed)", file=sys.stderr)
    else:
        print("worker: running the job queue; Ctrl-C to stop (running jobs go on)", file=sys.stderr)
    worker(RunStore(args.runs_dir), poll_seconds=args.poll, once=args.once, executor=executor)
    return 0


def cmd_job_exec(args: argparse.Namespace) -> int:
    from core.jobs.queue import execute  # noqa: PLC0415
    from core.store.runs import RunStore  # noqa: PLC0415

    return execute(args.job_id, RunStore(args.runs_dir), start_next=not args.no_next)


def cmd_info(args: argparse.Namespace) -> int:
    """The TensorFlow build, the devices (as listed without TensorFlow, then as TensorFlow sees them) and the
    precisions this machine runs."""
    from core import devices  # noqa: PLC0415
    from core.training import precision  # noqa: PLC0415

    build, version = devices.tensorflow_build()
    listed = devices.gpus()
    info: dict[str, Any] = {"tensorflow": {"build": build, "version": version},
                            "gpus": [{"index": g.index, "name": g.name, "uuid": g.uuid, "memory_mib": g.memory_mib,
                                      "compute_capability": ".".join(map(str, g.capability)) if g.capability
                                      else None, "simulated": g.simulated} for g in listed],
                            "cpu_cores": os.cpu_count(), "device": devices.describe_gpus(listed)}
    if build != "missing" and not args.no_tensorflow:
        tf_gpus = devices.tensorflow_gpus()  # imports TensorFlow
        import tensorflow as tf  # noqa: PLC0415

        info["tensorflow"].update(cuda=tf.test.is_built_with_cuda(),
                                  devices=[d.name for d in tf.config.list_physical_devices()],
                                  gpus=[g.describe() for g in tf_gpus])
        gpu, capability = bool(tf_gpus), devices.min_capability(tf_gpus)
    else:
        gpu, capability = precision.gpu_present(), precision.gpu_capability()
    info["precisions"] = list(precision.supported(gpu))
    info["auto_precision"] = precision.resolve("auto", None, gpu=gpu, capability=capability)  # for any network
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    tf_info = info["tensorflow"]
    print(f"TensorFlow: {tf_info['version'] or 'not installed'} ({build} build"
          + (f"; built with CUDA: {tf_info['cuda']}" if "cuda" in tf_info else "") + ")")
    if "devices" in tf_info:
        print(f"TensorFlow sees: {', '.join(tf_info['devices'])}")
    print(f"GPUs listed: {len(listed)}" + "".join(f"\n  {g.describe()}" + (" [simulated]" if g.simulated else "")
                                                  for g in listed))
    print(info["device"])
    print(precision.describe_support(gpu, capability=capability))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.data.dataset import load_npz, resolve  # noqa: PLC0415
    from core.evaluation.metrics import evaluate  # noqa: PLC0415
    from core.inference import tta  # noqa: PLC0415
    from core.inference.classifier import Classifier  # noqa: PLC0415

    clf = Classifier(args.run)
    data = load_npz(args.data or resolve(clf.config.data, clf.config.size))
    if data.image_size != clf.image_size:
        raise UserError(f"the run's model takes {clf.image_size} px images; {data.source} holds "
                        f"{data.image_size} px")
    from core.evaluation.calibration import describe  # noqa: PLC0415

    # probabilities as every page shows them: through the run's temperature (its loss and AUC can differ from
    # metrics.json's, which are the model's own; the accuracy cannot)
    out = {"run": str(clf.run.path), "data": data.source, "temperature": clf.temperature,
           "probabilities": describe(clf.temperature)}
    augmented = {}
    for split in ("val", "test"):
        s = data.split(split)
        probs = clf.probabilities(s.images) if len(s) <= 512 else _batched(clf, s.images)
        out[split] = evaluate(s.labels, probs, clf.labels).to_dict()
        if args.tta:  # beside the plain figures, never instead of them
            augmented[split] = evaluate(s.labels, tta.probabilities(lambda x: _batched(clf, x), s.images),
                                        clf.labels).to_dict()
    if args.tta:
        out["tta"] = augmented
    print(json.dumps(out, indent=2))
    return 0


def _batched(clf, images, batch: int = 256):
    import numpy as np  # noqa: PLC0415

    return np.concatenate([clf.probabilities(images[i:i + batch]) for i in range(0, len(images), batch)])


def _threshold(text: str, run_dir: Path) -> float:
    """--threshold P (a probability) or "run" (the run's calibrated threshold, chosen on validation)."""
    if text.strip().lower() == "run":
        from core.inference.classify import default_threshold  # noqa: PLC0415

        value, found = default_threshold(run_dir)
        if found is None:
            raise UserError(f"run {run_dir.name} has no calibrated threshold yet: python -m core calibrate {run_dir}")
        return value
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--threshold takes a probability (0 to 1) or 'run', not {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"--threshold takes a probability from 0 to 1, not {value:g}")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    from core.data.uploads import iter_paths  # noqa: PLC0415
    from core.inference import classify  # noqa: PLC0415

    clf = classify.Classifier(args.run)
    prepared = classify.prepare(iter_paths(args.images), clf.image_size, args.resize,  # a zip gives its members
                                classify.cell_fraction(clf, args.resize))
    ood = classify.ood_stats(clf) if args.ood else None
    threshold = _threshold(args.threshold, clf.run.path) if args.threshold is not None else 0.0
    from core.evaluation.calibration import describe  # noqa: PLC0415

    print(f"probabilities: {describe(clf.temperature)}", file=sys.stderr)  # "uncalibrated" for a run without T
    ok = 0
    for r in classify.classify(clf, prepared, threshold, ood):
        if not r.ok:
            print(json.dumps({"file": r.name, "error": r.error}), flush=True)
            continue
        line = {"file": r.name, "label": r.label, "confidence": round(r.confidence, 6),
                "probabilities": {k: round(float(v), 6) for k, v in zip(clf.labels, r.probabilities)}}
        if r.note:
            line["note"] = r.note
        if args.threshold is not None or args.ood:
            line["flags"] = r.flags
        if args.ood:
            line["distance"] = round(r.distance, 4)
        print(json.dumps(line), flush=True)
        ok += 1
    return 0 if ok else 1


def cmd_gradcam(args: argparse.Namespace) -> int:
    from PIL import Image  # noqa: PLC0415

    from core.data.images import read_file, to_model_input  # noqa: PLC0415
    from core.explain.overlay import COLORMAPS, triptych  # noqa: PLC0415
    from core.inference import classify  # noqa: PLC0415

    if args.colormap not in COLORMAPS:
        raise UserError(f"unknown colormap {args.colormap!r}; one of {', '.join(COLORMAPS)}")
    clf = classify.Classifier(args.run)
    x = to_model_input(read_file(args.image), clf.image_size, args.resize, classify.cell_fraction(clf, args.resize),
                       Path(args.image).name)
    class_index = None if args.target is None else _label_index(clf.labels, args.target)
    layers = [c.name for c in clf.cam_layers()]
    try:
        ex = classify.explain(clf, x, args.method, args.layer, class_index)
    except ValueError as e:
        raise UserError(f"{e}; layers to try: {', '.join(layers)}") from None
    pred = clf.prediction(ex.explanation.probabilities[0])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(triptych(x, ex.heatmap, args.alpha, args.colormap)).save(out)
    f = ex.faithfulness
    print(json.dumps({"file": args.image, "label": pred.label, "confidence": round(pred.confidence, 6),
                      "explained": clf.labels[ex.target], "layer": args.layer or clf.explainer(args.method).layer_name,
                      "method": args.method, "out": str(out),
                      "faithfulness": {"top_drop": round(f.top_drop, 6), "random_drop": round(f.random_drop, 6),
                                       "difference": round(f.difference, 6), "fraction": f.fraction}}))
    return 0


def cmd_faithfulness(args: argparse.Namespace) -> int:
    from core.explain import best_map  # noqa: PLC0415
    from core.inference import precompute  # noqa: PLC0415

    if args.sample < 8:
        raise UserError("--sample must be at least 8 (one image per class)")
    found = best_map.load_or_measure(args.run, lambda: precompute.classifier(args.run), sample=args.sample)
    print(f"{'method':<14}{'layer':<26}{'ROAD':>8}{'MoRF p':>9}{'LeRF p':>9}{'masked-mean':>13}")
    for row in found.rows():
        print(f"{row['method']:<14}{row['layer']:<26}{row['ROAD']:>+8.1f}{row['MoRF p']:>9.3f}"
              f"{row['LeRF p']:>9.3f}{row['masked-mean']:>+13.1f}{'  <- default' * row['chosen']}")
    print(found.reason().replace("`", ""))
    kept = "kept in the run folder" if args.sample == best_map.SAMPLE else "not kept (the run's default uses " \
        f"--sample {best_map.SAMPLE})"
    print(f"ROAD and masked-mean in points (x100); {found.sample} validation images, {found.seconds:.0f} s; {kept}")
    return 0


def _label_index(labels: Sequence[str], target: str) -> int:
    for i, label in enumerate(labels):
        if target in (label, str(i)) or label.startswith(target):
            return i
    raise UserError(f"unknown class {target!r}; one of: {', '.join(labels)}")


def cmd_external(args: argparse.Namespace) -> int:
    from core.validation.external.errors import ExternalError  # noqa: PLC0415
    from core.validation.external.finetune import FineTuneConfig  # noqa: PLC0415
    from core.validation.external.flow import run_external  # noqa: PLC0415
    from core.validation.external.loading import load_for_run  # noqa: PLC0415
    from core.validation.external.mapping import parse_map_args  # noqa: PLC0415
    from core.validation.external.scoring import summary  # noqa: PLC0415
    from core.validation.stain import METHODS  # noqa: PLC0415

    if not args.folder and not args.csv:
        raise ExternalError("give --folder DIR (one subfolder per class) or --csv FILE (path,label rows)")
    if args.normalize not in METHODS:
        raise ExternalError(f"--normalize must be one of {', '.join(METHODS)}")
    overrides = parse_map_args(args.map)
    fine_tune = (FineTuneConfig(args.fine_tune_fraction, args.fine_tune_epochs, args.fine_tune_lr, args.seed)
                 if args.fine_tune else None)
    from core.inference.classifier import Classifier  # noqa: PLC0415  (TensorFlow only once the input is checked)

    clf = Classifier(args.run)
    data = load_for_run(clf, args.folder, args.csv, overrides, args.resize)
    record = run_external(clf, data, args.normalize, fine_tune_config=fine_tune, run_dir=args.run,
                          store=not args.no_store)[-1]
    print(json.dumps(summary(record), indent=2))
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from core.evaluation.robustness import evaluate_robustness, format_table, report_path  # noqa: PLC0415

    def progress(done: int, total: int, label: str) -> None:
        print(f"\r  [{done}/{total}] {label:<24}", end="", file=sys.stderr, flush=True)
        if done == total:
            print(file=sys.stderr)

    report = evaluate_robustness(args.run, limit=args.limit, seed=args.seed, progress=progress, split=args.split)
    print(format_table(report))
    if args.split == "test":
        print(f"\nstored in {report_path(args.run)}")
    else:
        print("\nnot stored: the run's stored report is its test split's (validation scores are for choosing)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from core.evaluation import calibration  # noqa: PLC0415
    from core.store.runs import open_run  # noqa: PLC0415

    if args.target is not None and not 0.0 < args.target <= 1.0:
        raise UserError(f"--target is an accuracy in (0, 1], e.g. 0.99; got {args.target}")
    run_dir = open_run(args.run).path  # a missing or incomplete run: one message
    clf = []

    def model():  # loaded (TensorFlow) only when a split's predictions are not cached in the run yet
        if not clf:
            from core.inference.classifier import Classifier  # noqa: PLC0415

            clf.append(Classifier(run_dir))
        return clf[0]

    def progress(fraction: float) -> None:
        print(f"\r  predicting {fraction:6.1%}", end="", file=sys.stderr, flush=True)

    result = calibration.fit_run(run_dir, model, progress if sys.stderr.isatty() else None, args.target)
    print(("\n" if sys.stderr.isatty() else "") + result.summary(), file=sys.stderr)
    print(json.dumps({"run": str(run_dir), "calibration": result.to_dict()}, indent=2))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from core.data.download import download  # noqa: PLC0415

    def progress(done: int, total: int) -> None:
        pct = f"{100 * done / total:5.1f}%" if total else ""
        print(f"\r  {done / 1e6:8.1f} MB {pct}", end="", file=sys.stderr, flush=True)

    path = download(args.size, Path(args.root) if args.root else None, progress=progress)
    print(file=sys.stderr)
    print(path)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from core.store.runs import RunStore  # noqa: PLC0415

    if args.reindex:
        store, aside = RunStore.rebuilt(args.runs_dir)
        if aside:
            print(f"the index could not be read at all: moved it aside to {aside} and built a new one",
                  file=sys.stderr)
    else:
        store = RunStore(args.runs_dir)
    rows = store.list_runs("val_accuracy DESC" if args.best else "created DESC")
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "config_json"} for r in rows], indent=2))
        return 0
    header = f"{'run_id':<23} {'arch':<16} {'px':>4} {'weights':<9} {'bs':>4} {'ep':>5} {'val_acc':>8} " \
             f"{'test_acc':>8} {'test_auc':>8}"
    print(header)
    for r in rows:
        weights = r["weights"] if r["weights"] in ("imagenet", "none") else "file"
        print(f"{r['run_id']:<23} {r['arch']:<16} {r['size']:>4} {weights:<9} {r['batch_size']:>4} "
              f"{r['best_epoch']:>2}/{r['epochs_run']:<2} {r['val_accuracy']:>8.4f} {r['test_accuracy']:>8.4f} "
              f"{(r['test_auc'] or float('nan')):>8.4f}")
    if not rows:
        print("(no runs yet: python -m core train ...)")
    return 0


def _users_file() -> Any:
    from core.access.settings import load_settings  # noqa: PLC0415
    from core.access.users import UserFile  # noqa: PLC0415

    settings = load_settings()
    if settings.users_file is None:
        where = settings.source or "cellscope.toml (or $CELLSCOPE_SETTINGS)"
        raise UserError(f"no user file is configured: set [access] login = \"password\" and users_file = "
                        f"\"users.toml\" in {where}")
    return UserFile(settings.users_file)


def _new_password(args: argparse.Namespace) -> str:
    import getpass  # noqa: PLC0415

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("password: ")
    if getpass.getpass("again: ") != password:
        raise UserError("the two passwords differ")
    return password


def cmd_users(args: argparse.Namespace) -> int:
    """The user file of login = "password" (the command line acts as the local administrator)."""
    users = _users_file()
    if args.action == "list":
        rows = users.list()
        for u in rows:
            print(f"{u.name}\t{', '.join(u.roles)}")
        if not rows:
            print(f"(no users yet in {users.path}: python -m core users add NAME --role ROLE)")
        return 0
    if not args.name:
        raise UserError(f"users {args.action} needs a user NAME")
    if args.action == "add":
        user = users.add(args.name, args.role or [], _new_password(args))
        print(f"added {user.name} ({', '.join(user.roles)}) to {users.path}")
    elif args.action == "passwd":
        users.set_password(args.name, _new_password(args))
        print(f"changed the password of {args.name}")
    else:
        users.remove(args.name)
        print(f"removed {args.name} from {users.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from core.store.runs import default_runs_dir  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m core", description="Blood cell classification on BloodMNIST")
    sub = parser.add_subparsers(dest="command", required=True)
    runs_dir = str(default_runs_dir())

    p = sub.add_parser("train", help="train one run and print its directory")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="start from a preset's settings (python -m core presets lists them); flags override them")
    _add_train_flags(p)
    p.add_argument("--runs-dir", default=runs_dir)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("submit", help="queue training jobs: one run, a grid (--grid), or a preset")
    _add_train_flags(p)
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                   help="sweep a field over values, e.g. --grid batch_size=16,32 --grid lr=1e-3,1e-4")
    p.add_argument("--repeats", type=int, default=1, help="repeat each configuration with seeds seed, seed+1, ...")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a recipe or a study experiment (python -m core presets lists them); flags override its "
                        "settings")
    p.add_argument("--no-start", action="store_true", help="only queue; a worker or the app starts them")
    p.add_argument("--runs-dir", default=runs_dir)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("search", help="search settings with Optuna (TPE, pruning), each trial a queued job; "
                                      "--show NAME prints its trials")
    _add_train_flags(p)  # the base config of every trial
    g = p.add_argument_group("search")
    g.add_argument("--space", action="append", default=[], metavar="FIELD=LOW:HIGH[:log] | FIELD=A,B",
                   help="a setting to search: a range (log scale with :log) or values; repeatable, e.g. --space "
                        "lr=1e-4:1e-2:log --space dropout=0:0.5 --space batch_size=32,64,128")
    g.add_argument("--trials", type=int, default=20,
                   help="the budget, in full trials (default 20): a trial that stops early (pruned, or early "
                        "stopping) gives its unused epochs to further trials")
    g.add_argument("--exact-trials", action="store_true",
                   help="run exactly --trials trials, however short (the epochs pruning saves are not spent)")
    g.add_argument("--hours", type=float, default=None, help="start no trial after this many hours")
    from core.jobs.search import PRUNERS  # noqa: PLC0415  (light: Optuna is imported when a study opens)

    g.add_argument("--pruner", choices=tuple(PRUNERS), default="median",
                   help="; ".join(PRUNERS.values()) + " (default median)")
    g.add_argument("--prune-after", type=int, default=1, metavar="EPOCHS",
                   help="epochs every trial completes before it may be pruned (default 1)")
    g.add_argument("--startup-trials", type=int, default=None,
                   help="trials spread evenly over the space (a scrambled Sobol sequence) before TPE models the "
                        "results; pruning starts after half of them complete (default: 2 per searched field, at "
                        "most half the trials, 2 to 10)")
    g.add_argument("--try", dest="try_", action="append", default=[], metavar="FIELD=V,FIELD=V",
                   help="a point to try first (e.g. a known recipe), within the space; repeatable")
    g.add_argument("--study", default=None, metavar="NAME", help="the study's name (default: search-DATE-TIME)")
    g.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage, any database URL it accepts (default: sqlite in the artifacts folder)")
    g.add_argument("--wait", action="store_true",
                   help="run the queue here until the search is done, then print its trials and best")
    g.add_argument("--poll", type=float, default=2.0, help="with --wait: seconds between looks at the queue")
    g.add_argument("--no-start", action="store_true", help="only queue; a worker or the app starts the trials")
    g.add_argument("--show", metavar="NAME", help="print a search's trials, best so far and importances")
    g.add_argument("--cancel", metavar="NAME", help="stop a search: no more trials, its jobs cancelled")
    g.add_argument("--list", action="store_true", help="list the searches")
    p.add_argument("--runs-dir", default=runs_dir)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("presets", help="list the presets, with what each reached when measured here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("jobs", help="list jobs (and cancel, resume or delete one)")
    p.add_argument("--cancel", type=int, metavar="ID")
    p.add_argument("--resume", type=int, metavar="ID")
    p.add_argument("--delete", type=int, metavar="ID", help="remove a finished job, its log and its work folder")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="set how many jobs may train at once")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs-dir", default=runs_dir)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("worker", help="run the job queue headless (for a server without a browser)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between looks at the queue")
    p.add_argument("--once", action="store_true", help="exit when no job is queued or running")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run each job as a task on this Ray cluster (auto, ray://host:10001, host:6379; local: "
                        "start one on this machine); the runs dir must be on a filesystem every node sees "
                        "(README: A cluster through Ray)")
    p.add_argument("--cpus-per-job", type=int, default=1, metavar="N", help="with --ray: CPUs each job asks for")
    p.add_argument("--gpus-per-job", type=int, default=None, metavar="N",
                   help="with --ray: GPUs each job asks for (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--runs-dir", default=runs_dir)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("job-exec", help=argparse.SUPPRESS)
    p.add_argument("job_id", type=int)
    p.add_argument("--runs-dir", default=runs_dir)
    p.add_argument("--no-next", action="store_true", help="do not start the next job (an executor does)")
    p.set_defaults(func=cmd_job_exec)

    p = sub.add_parser("info", help="the TensorFlow build, the GPUs and the precisions this machine runs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-tensorflow", action="store_true",
                   help="do not import TensorFlow (GPUs as nvidia-smi lists them; $CELLSCOPE_FAKE_GPUS simulates)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("evaluate", help="score a run's model on val and test of its (or another) npz, with its "
                                        "probabilities calibrated as shown everywhere (loss and AUC may differ "
                                        "from metrics.json's raw ones; accuracy does not)")
    p.add_argument("--run", required=True, metavar="DIR")
    p.add_argument("--data", default="", metavar="PATH")
    p.add_argument("--tta", action="store_true",
                   help="also print figures averaged over the 8 flips and 90° turns (\"tta\"), beside the plain ones")
    p.set_defaults(func=cmd_evaluate)

    for name, helptext in (("predict", "classify image files (or zips of them); one JSON line per image"),
                           ("gradcam", "write a CAM PNG (original | heatmap | overlay)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--run", required=True, metavar="DIR")
        p.add_argument("--resize", choices=RESIZE_MODES, default="medmnist", help=RESIZE_HELP)
        if name == "predict":
            p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or zips of them")
            p.add_argument("--threshold", default=None, metavar="P|run",
                           help="flag predictions below this (calibrated) confidence 'unidentified' (adds "
                                "\"flags\"); 'run': the run's own threshold, chosen on validation from its target")
            p.add_argument("--ood", action="store_true",
                           help="also flag images unlike the training data (needs the run's dataset; computed "
                                "once per run)")
            p.set_defaults(func=cmd_predict)
        else:
            p.add_argument("image", metavar="IMAGE")
            p.add_argument("--out", required=True, metavar="PNG")
            p.add_argument("--method", choices=METHOD_NAMES, default="gradcam",
                           help="gradcam, gradcampp (Grad-CAM++), hirescam or scorecam")
            p.add_argument("--layer", default=None, help="layer name (default: the last convolutional block)")
            p.add_argument("--target", default=None, help="class to explain (default: the predicted one)")
            p.add_argument("--alpha", type=float, default=0.4, help="overlay opacity")
            p.add_argument("--colormap", default="jet", help="jet, turbo, viridis, inferno or magma (OpenCV)")
            p.set_defaults(func=cmd_gradcam)

    p = sub.add_parser("external", help="score a run, unchanged, on another lab's cells; print a JSON summary")
    p.add_argument("--run", required=True, metavar="DIR")
    p.add_argument("--folder", default=None, metavar="DIR",
                   help="one subfolder per class, images inside (Raabin-WBC layout); with --csv: the base of "
                        "relative paths")
    p.add_argument("--csv", default=None, metavar="FILE", help="rows of path,label (a header row is optional)")
    p.add_argument("--map", action="append", default=[], metavar="SRC=DST",
                   help="map a dataset class to a BloodMNIST class (or none to leave it out); repeatable. "
                        "Matching names are mapped automatically")
    p.add_argument("--normalize", choices=("none", "reinhard", "macenko"), default="none",
                   help="colour normalisation to the run's training images")
    p.add_argument("--resize", choices=RESIZE_MODES, default="medmnist", help=RESIZE_HELP)
    p.add_argument("--no-store", action="store_true", help="do not store the evaluation with the run")
    p.add_argument("--fine-tune", action="store_true",
                   help="also fine-tune a copy of the model on a stratified part and score the held-out rest")
    from core.validation.external.finetune import FineTuneConfig  # noqa: PLC0415  (light: settings only)

    ft, ranges = FineTuneConfig(), FineTuneConfig.RANGES
    p.add_argument("--fine-tune-fraction", type=float, default=ft.fraction, metavar="F",
                   help="share of each class to fine-tune on, {:g} to {:g} (default {:g})".format(
                       *ranges["fraction"], ft.fraction))
    p.add_argument("--fine-tune-epochs", type=int, default=ft.epochs, metavar="N",
                   help="{:g} to {:g} (default {:g})".format(*ranges["epochs"], ft.epochs))
    p.add_argument("--fine-tune-lr", type=float, default=ft.lr, metavar="LR",
                   help="{:g} to {:g} (default {:g})".format(*ranges["lr"], ft.lr))
    p.add_argument("--seed", type=int, default=ft.seed, help="seed of the fine-tune split and training")
    p.set_defaults(func=cmd_external)

    p = sub.add_parser("robustness", help="score a run on its test split under MedMNIST-C's blood corruptions "
                                          "(5 severities each); print and store robustness.json in the run")
    p.add_argument("--run", required=True, metavar="DIR")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="a stratified subset of about N test images (default: the whole test split)")
    p.add_argument("--seed", type=int, default=0, help="the corruptions' random choices (and the subset's)")
    p.add_argument("--split", choices=("test", "val"), default="test",  # robustness.SPLITS (heavy to import here)
                   help="val: score the validation split instead, to choose a recipe without touching test "
                        "(printed, not stored)")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("calibrate", help="fit a run's temperature on its validation split, choose its "
                                         "'unidentified' threshold and store both in its metrics.json")
    p.add_argument("run", metavar="RUN", help="the run's folder")
    p.add_argument("--target", type=float, default=None, metavar="ACC",
                   help="accuracy the cells above the threshold must reach on validation (default: the run's "
                        "stored target, else 0.99)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("faithfulness", help="score every heatmap method and layer of a run on ROAD (validation "
                                            "sample) and print the table its default heatmap was chosen from")
    p.add_argument("run", metavar="RUN", help="the run folder")
    from core.explain.best_map import SAMPLE  # noqa: PLC0415

    p.add_argument("--sample", type=int, default=SAMPLE, metavar="N",
                   help=f"validation images, stratified (default {SAMPLE}: the measurement kept as the run's default)")
    p.set_defaults(func=cmd_faithfulness)

    p = sub.add_parser("download", help="download BloodMNIST at a size (MD5-checked)")
    p.add_argument("--size", type=int, choices=SIZES, required=True)
    p.add_argument("--root", default=None, help="folder (default: medmnist's, or $CELLSCOPE_DATA_DIR)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--runs-dir", default=runs_dir)
    p.add_argument("--best", action="store_true", help="sort by validation accuracy")
    p.add_argument("--json", action="store_true")
    p.add_argument("--reindex", action="store_true", help="rebuild the index from the run directories")
    p.set_defaults(func=cmd_runs)

    from core.access.roles import ROLES  # noqa: PLC0415

    p = sub.add_parser("users", help="manage the user file of login = \"password\" (add, list, remove, passwd)")
    p.add_argument("action", choices=("add", "list", "remove", "passwd"))
    p.add_argument("name", nargs="?", help="the user name (not for list)")
    p.add_argument("--role", action="append", choices=ROLES, help="a role for add (repeat for several)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.set_defaults(func=cmd_users)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserFacingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (python -m core presets | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exiting does not flush into it
        return 0
