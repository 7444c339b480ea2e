"""What a finished run's pages need before they can answer, prepared once: at the end of its training job
(phase "precomputing"), or in the background the first time a page asks for a run that lacks it.

Steps, each cached in the run folder by its own module (`Run.derived` or `add_to_finished_run`):
  test_predictions  the test split predicted by the run's model (Confusions: the images behind a cell)
  ood_stats         class centres of the training features (Classify, Review: "unlike the training data")
  cell_framing      the size of the run's training cells (cell-centred framing of uploads and other labs)
  stain_target      the colours of the run's training images (colour normalisation of other labs' cells)
  calibration       temperature scaling fitted on the validation split, stored in metrics.json (a run trained
                    before calibration existed); its file is the cached validation predictions, written last
  faithful_maps     the most faithful (CAM method, layer) on a validation sample (Classify, Confusions defaults)
  embedding_map     the test split's features drawn in 2-D, and training features (Feature map; Classify's
                    nearest training images of an upload)

Models are loaded once per process (`classifier`, at most MODELS_KEPT at a time) and shared by every page
and background task; the call that really loads one records how long it took. `step_task` runs one step
(loading the model first when the step needs one and its file is not there yet) as a core.tasks background
task whose progress has phases "loading" and the step's own, each expected to take what it took last time on
this machine (core.progress.PhaseTimes, by architecture and image size), and moves within its phase as the
step reports. A step whose task failed keeps its message for the pages (`retry=False`) until someone asks
again (`retry=True`, the default), so a page never restarts a failing step on every rerun.

TensorFlow is imported only by the steps that need a model.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from core import tasks
from core.errors import UserFacingError
from core.progress import PhaseTimes, Tracker, phase_title
from core.store.runs import open_run

if TYPE_CHECKING:
    from core.inference.classifier import Classifier

MODELS_KEPT = 3  # models held in memory at once (each is tens to hundreds of MB)
DEFAULT_SECONDS = {"loading": 20.0, "predicting": 30.0, "measuring": 30.0}  # before anything was measured


@dataclass(frozen=True)
class Step:
    name: str
    phase: str  # core.progress phase shown while it runs
    title: str  # what the page says is being prepared
    file: str  # the run-folder file that holds it
    needs_model: bool
    compute: Callable[[Path, "ModelFn", "Fraction"], Any]  # (run folder, its model on demand, fraction done)
    at_job_end: bool = True  # prepared by every training job; else only when a page first asks for it


ModelFn = Callable[[], "Classifier"]  # the run's model, loaded only when a step really needs it
Fraction = Callable[[float], None]  # how much of the step is done, 0..1


def _test_predictions(run_dir: Path, model: ModelFn, progress: Fraction) -> Any:
    from core.evaluation import predictions  # noqa: PLC0415

    found = predictions.cached(run_dir)
    return found if found is not None else predictions.compute(run_dir, model(), progress)


def _ood_stats(run_dir: Path, model: ModelFn, progress: Fraction) -> Any:
    from core.inference.ood import load_or_fit  # noqa: PLC0415

    return load_or_fit(run_dir, lambda images: model().probabilities_and_embeddings(images)[1], progress)


def _cell_framing(run_dir: Path, model: ModelFn, progress: Fraction) -> Any:
    from core.data.cell_framing import run_target  # noqa: PLC0415

    return run_target(run_dir)


def _stain_target(run_dir: Path, model: ModelFn, progress: Fraction) -> Any:
    from core.validation.stain import run_target  # noqa: PLC0415

    return run_target(run_dir)


def _calibration(run_dir: Path, model: ModelFn, progress: Fraction) -> Any:
    from core.evaluation import calibration  # noqa: PLC0415

    found = calibration.stored(run_dir)
    return found if found is not None and ready(run_dir, "calibration") else calibration.fit_run(run_dir, model,
                                                                                                 progress)


def _faithful_maps(run_dir: Path, model: ModelFn, progress: Fraction) -> Any:
    from core.explain.best_map import load_or_measure  # noqa: PLC0415

    return load_or_measure(run_dir, model, progress)


def _embedding_map(run_dir: Path, model: ModelFn, progress: Fraction) -> Any:
    from core.evaluation import predictions  # noqa: PLC0415
    from core.explain.embedding import load_or_compute  # noqa: PLC0415

    return load_or_compute(run_dir, lambda images: model().probabilities_and_embeddings(images)[1],
                           lambda: predictions.load_or_compute(run_dir, model()), progress)


def _step_files() -> dict[str, str]:
    from core.data.cell_framing import FRAMING_FILE  # noqa: PLC0415
    from core.evaluation.predictions import PREDICTIONS_FILE, VAL_PREDICTIONS_FILE  # noqa: PLC0415
    from core.explain.best_map import FILE as FAITHFUL_FILE  # noqa: PLC0415
    from core.explain.embedding import MAP_FILE  # noqa: PLC0415
    from core.inference.ood import STATS_FILE as OOD_FILE  # noqa: PLC0415
    from core.validation.stain import STATS_FILE as STAIN_FILE  # noqa: PLC0415

    return {"test_predictions": PREDICTIONS_FILE, "ood_stats": OOD_FILE, "cell_framing": FRAMING_FILE,
            "stain_target": STAIN_FILE, "calibration": VAL_PREDICTIONS_FILE, "faithful_maps": FAITHFUL_FILE,
            "embedding_map": MAP_FILE}


_FILES = _step_files()
STEPS: dict[str, Step] = {s.name: s for s in (
    Step("test_predictions", "predicting", "Predicting the run's test split", _FILES["test_predictions"], True,
         _test_predictions),
    Step("ood_stats", "measuring", "Measuring the features of the run's training images", _FILES["ood_stats"],
         True, _ood_stats),
    Step("cell_framing", "measuring", "Measuring the cells of the run's training images", _FILES["cell_framing"],
         False, _cell_framing),
    Step("stain_target", "measuring", "Measuring the colours of the run's training images",
         _FILES["stain_target"], False, _stain_target),
    Step("calibration", "predicting", "Predicting the run's validation and test splits to calibrate its "
         "confidence", _FILES["calibration"], True, _calibration),
    Step("faithful_maps", "measuring", "Measuring which heatmap method and layer are most faithful for the run",
         _FILES["faithful_maps"], True, _faithful_maps),
    # t-SNE of the whole test split takes as long as a quick run trains: made when the Feature map first opens
    Step("embedding_map", "measuring", "Measuring the features of the run's test images for the feature map",
         _FILES["embedding_map"], True, _embedding_map, at_job_end=False),
)}


# -- models, loaded once per process ------------------------------------------------------------------------
_MODELS: OrderedDict[str, "Classifier"] = OrderedDict()
_MODELS_LOCK = threading.Lock()
_LOADING: dict[str, threading.Lock] = {}


def _key(run_dir: str | Path) -> str:
    return str(Path(run_dir).resolve())


def loaded(run_dir: str | Path) -> "Classifier | None":
    """The run's model when it is already in memory, else None (never loads)."""
    with _MODELS_LOCK:
        return _MODELS.get(_key(run_dir))


def classifier(run_dir: str | Path) -> "Classifier":
    """The run's model with prediction and the default Grad-CAM traced, loaded once per process (two callers
    asking at once wait for one load) and shared. UserFacingError for a missing or broken run. The call that
    loads it records how long loading took (PhaseTimes, for the next estimate)."""
    key = _key(run_dir)
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        lock = _LOADING.setdefault(key, threading.Lock())
    with lock:
        with _MODELS_LOCK:
            if key in _MODELS:
                return _MODELS[key]
        start = time.monotonic()
        try:
            # TensorFlow only when a model is needed: importing it is part of the first load's time
            from core.inference.classify import load_classifier  # noqa: PLC0415

            clf = load_classifier(key)
        except (OSError, ValueError) as e:  # Keras on a damaged or foreign model file
            raise UserFacingError(f"Could not load the model of run {Path(key).name}: {e}") from None
        with _MODELS_LOCK:
            _MODELS[key] = clf
            while len(_MODELS) > MODELS_KEPT:
                _MODELS.popitem(last=False)
        _record(Path(key), "loading", time.monotonic() - start)
        return clf


def forget_model(run_dir: str | Path) -> None:
    with _MODELS_LOCK:
        _MODELS.pop(_key(run_dir), None)


# -- steps --------------------------------------------------------------------------------------------------
def ready(run_dir: str | Path, step: str) -> bool:
    return (Path(run_dir) / STEPS[step].file).is_file()


def _times(run_dir: Path) -> tuple[PhaseTimes, str]:
    config = open_run(run_dir).config
    return PhaseTimes.in_artifacts(run_dir.parent.parent), f"{config.arch}/{config.size}"


def expected_seconds(run_dir: str | Path, phase_key: str) -> float:
    """What loading the model ("loading") or one step (its name) took last time for runs like this one."""
    phase = "loading" if phase_key == "loading" else STEPS[phase_key].phase
    try:
        times, shape = _times(Path(run_dir))
    except UserFacingError:  # a broken run: its task will say so
        return DEFAULT_SECONDS[phase]
    return times.expected(f"{phase_key}/{shape}", "seconds", DEFAULT_SECONDS[phase])


def _record(run_dir: Path, phase_key: str, seconds: float) -> None:
    try:
        times, shape = _times(run_dir)
    except UserFacingError:
        return
    times.record(f"{phase_key}/{shape}", {"seconds": seconds})


def run_step(run_dir: str | Path, step: str, tracker: Tracker | None = None, model: "Classifier | None" = None
             ) -> Any:
    """Do one step now in this thread, reporting to `tracker` when given, and return its value. The model is
    loaded first (phase "loading") only when the step needs it and its file is not there yet; a step whose
    file is there reads it without a model. `model`: the run's model already in memory (a training job's own,
    just trained), used instead of loading it from the run folder."""
    run_dir = Path(run_dir)
    s = STEPS[step]
    fresh = not ready(run_dir, step)
    if s.needs_model and fresh and model is None and loaded(run_dir) is None:
        open_run(run_dir).training_data()  # its data gone: say so before loading a model for nothing
        if tracker:
            tracker.start("loading", "the run's model")
        classifier(run_dir)
    if tracker:  # "Measuring · the features of the run's training images", not "Measuring · measuring …"
        verb, _, rest = s.title.partition(" ")
        tracker.start(s.phase, rest if verb.lower() == phase_title(s.phase).lower() else s.title.lower())
    start = time.monotonic()
    value = s.compute(run_dir, (lambda: model) if model is not None else (lambda: classifier(run_dir)),
                      tracker.advance if tracker else lambda f: None)
    if fresh:  # a file read back is no measurement of the step
        _record(run_dir, step, time.monotonic() - start)
    return value


def task_key(kind: str, run_dir: str | Path) -> str:
    """The core.tasks key of a run's step (its name) or of loading its model ("model")."""
    return f"{kind}:{Path(run_dir).resolve()}"


def step_task(run_dir: str | Path, step: str, retry: bool = True) -> tasks.Task:
    """One step as a background task shared by every page and user (started once per run and step).
    `retry=False`: a task that failed is returned as it is (its message for the page) instead of started again."""
    run_dir = Path(run_dir).resolve()
    s = STEPS[step]
    plan = [(s.phase, expected_seconds(run_dir, step))]
    if s.needs_model and loaded(run_dir) is None and not ready(run_dir, step):
        plan.insert(0, ("loading", expected_seconds(run_dir, "loading")))
    return tasks.start(task_key(step, run_dir), s.title, plan, lambda tracker: run_step(run_dir, step, tracker),
                       retry=retry)


def model_task(run_dir: str | Path, retry: bool = True) -> tasks.Task:
    """Loading the run's model as a background task (Classify draws its uploader meanwhile). The task's result
    is None: the model lives in the cache (`loaded`, `classifier`), so a finished task holds no memory, and a
    model dropped from the cache since is loaded again by a new task."""
    run_dir = Path(run_dir).resolve()
    key = task_key("model", run_dir)

    def work(tracker: Tracker) -> None:
        tracker.start("loading", "the run's model")
        classifier(run_dir)

    previous = tasks.get(key)
    if previous is not None and previous.done:
        tasks.forget(key)  # done before: the model is in the cache, or was dropped and must be loaded again
    return tasks.start(key, "Loading the model", [("loading", expected_seconds(run_dir, "loading"))], work,
                       retry=retry)


JOB_STEPS_ENV = "CELLSCOPE_JOB_PRECOMPUTE"


def default_job_steps() -> tuple[str, ...]:
    return tuple(name for name, step in STEPS.items() if step.at_job_end)


def job_steps() -> tuple[str, ...]:
    """The steps a training job prepares at its end: those marked `at_job_end`, or those named in
    $CELLSCOPE_JOB_PRECOMPUTE (comma-separated; "none" for none). A busy shared server (or a test suite) may
    leave the slower steps to first use, where a page prepares them in the background with a progress bar.
    Unknown names are an error, so a typo never silently skips a step."""
    text = os.environ.get(JOB_STEPS_ENV)
    if text is None:
        return default_job_steps()
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise UserFacingError(f"${JOB_STEPS_ENV} names unknown steps {', '.join(unknown)}; the steps are "
                              f"{', '.join(STEPS)}")
    return names


def precompute_all(run_dir: str | Path, report: Callable[[str, float], None] | None = None,
                   model: "Classifier | None" = None, steps: Sequence[str] | None = None) -> dict[str, str]:
    """Every step the run lacks (of `steps`, default all), one after the other (a training job's last phase).
    `report(step title, fraction done)` after each. A step that cannot be done here (its data file is gone,
    say) is skipped with its message, never failing the caller; returns {step: message} for those."""
    run_dir = Path(run_dir)
    skipped: dict[str, str] = {}
    todo = [name for name in (STEPS if steps is None else steps) if not ready(run_dir, name)]
    for i, name in enumerate(todo):
        if report:
            report(STEPS[name].title, i / max(len(todo), 1))
        try:
            run_step(run_dir, name, model=model)
        except UserFacingError as e:
            skipped[name] = str(e)
        except Exception as e:  # a bug in one step must not fail a finished training job
            traceback.print_exc()
            skipped[name] = f"{e.__class__.__name__}: {e}"
    if report:
        report("done", 1.0)
    return skipped
