"""Each run's most faithful heatmap: the (CAM method, layer) that scores highest on ROAD, measured once on a
fixed, stratified sample of its VALIDATION images and kept in the run folder (`faithful_maps.json`, written
atomically, versioned). It is the default method and layer of the Classify and Confusions pages, which show
the table it was chosen from.

Measured here on the 64 px reference runs: at the default (last, 2x2 or 4x4) layer CAM methods can be less
faithful than random blobs, while an earlier, finer block is far better; which one wins depends on the run,
so it is measured per run rather than fixed.

For every CAM method (core.explain.cam) and every layer the model offers (Classifier.cam_layers), and for two
baselines that know nothing of the model's reasoning (smooth random blobs, seeded, and the image's Sobel
edges), the table holds:
  road         ROAD combined score (core.explain.road): mean over removal fractions of (LeRF - MoRF) / 2
  morf, lerf   the explained class's mean probability after removing the most / least relevant pixels
  masked_mean  the existing masked-mean score's difference (core.explain.faithfulness): top 20% vs random
Each map explains the model's predicted class (what the pages explain by default). The choice is the CAM row
with the highest `road`; it is said whether it beats the random baseline.

Affordable by construction (it runs at the end of every training job and, for older runs, once in the
background): SAMPLE images and the removal FRACTIONS below (see the module's measurements in the report of
benchmarks/road.py). Importing this module is light (numpy); TensorFlow and scipy load when a run is measured.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from core.explain.cam import METHOD_NAMES, METHOD_TITLES
from core.explain.faithfulness import faithfulness_many, reference

if TYPE_CHECKING:
    from core.inference.classifier import Classifier
    from core.models.build import CamLayer

FILE = "faithful_maps.json"
VERSION = 1
SAMPLE = 32  # validation images, stratified by class
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)  # every other percentile of pytorch-grad-cam's 10..90
SEED = 0
# The candidates: the gradient methods. Score-CAM costs 64 forward passes per image and layer (on the tiny 28 px
# run, 40 of the step's 90 CPU seconds) and never came first where measured (benchmarks/road.py, which scores
# it too: 28 px ResNet-18 +7.3 against +13.7 points, 64 px compact ResNet +20.6 against +23.5); it stays
# on the pages' menu.
METHODS = tuple(m for m in METHOD_NAMES if m != "scorecam")
FALLBACK_METHOD = "gradcam"  # before a run is measured: Grad-CAM at the last block, as in the study
BASELINES = {"random": "Random blobs", "sobel": "Sobel edges"}
CHUNK = 32  # images per CAM call (Score-CAM runs 64 masked copies of each)


@dataclass(frozen=True)
class Score:
    method: str  # a CAM method, or a baseline ("random", "sobel")
    layer: str | None  # None for a baseline
    road: float
    morf: float
    lerf: float
    masked_mean: float

    @property
    def title(self) -> str:
        return METHOD_TITLES.get(self.method) or BASELINES.get(self.method, self.method)


@dataclass(frozen=True)
class FaithfulMaps:
    method: str
    layer: str
    scores: tuple[Score, ...]
    sample: int
    fractions: tuple[float, ...]
    seconds: float
    version: int = VERSION

    def baseline(self, name: str) -> Score:
        return next(s for s in self.scores if s.method == name)

    @property
    def chosen(self) -> Score:
        return next(s for s in self.scores if (s.method, s.layer) == (self.method, self.layer))

    @property
    def beats_random(self) -> bool:
        return self.chosen.road > self.baseline("random").road

    def reason(self) -> str:
        """One sentence: what was chosen and why, with the baselines."""
        c, rnd, sob = self.chosen, self.baseline("random"), self.baseline("sobel")
        verdict = ("above" if self.beats_random else "NOT above (no method and layer is; read every heatmap of "
                   "this run with care)")
        return (f"Chosen because {c.title} at `{c.layer}` is the most faithful heatmap of this run on ROAD: "
                f"{points(c.road)} on {self.sample} validation images, {verdict} random blobs ({points(rnd.road)}) "
                f"and against Sobel edges ({points(sob.road)}).")

    def rows(self) -> list[dict]:
        """The table it was chosen from, best ROAD first (baselines included), scores in points (x100)."""
        return [{"method": s.title, "layer": s.layer or "—", "ROAD": round(100 * s.road, 1),
                 "MoRF p": round(s.morf, 3), "LeRF p": round(s.lerf, 3),
                 "masked-mean": round(100 * s.masked_mean, 1),
                 "chosen": (s.method, s.layer) == (self.method, self.layer)}
                for s in sorted(self.scores, key=lambda s: -s.road)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> "FaithfulMaps":
        data = json.loads(Path(path).read_text())
        if data.get("version") != VERSION:
            raise ValueError("another version")
        scores = tuple(Score(**s) for s in data.pop("scores"))
        data["fractions"] = tuple(data["fractions"])
        found = cls(scores=scores, **data)
        if not any((s.method, s.layer) == (found.method, found.layer) for s in scores) or \
                not {"random", "sobel"} <= {s.method for s in scores}:
            raise ValueError("the choice or a baseline is missing from the table")
        return found


def points(score: float) -> str:
    return f"{100 * score:+.1f} points"


def sample_indices(labels: np.ndarray, n: int = SAMPLE, seed: int = SEED) -> np.ndarray:
    """The fixed, stratified validation sample (sorted indices)."""
    from core.data.dataset import stratified_subset  # noqa: PLC0415

    return np.sort(stratified_subset(np.asarray(labels).reshape(-1), n, seed))


def measure(clf: "Classifier", images: np.ndarray, fractions: Sequence[float] = FRACTIONS,
            progress: Callable[[float], None] | None = None, methods: Sequence[str] = METHODS,
            seed: int = SEED) -> FaithfulMaps:
    """Score every (method, layer) and both baselines on `images` (uint8, the model's size) and choose."""
    from core.explain.cam import method as cam_method  # noqa: PLC0415
    from core.explain.cam.base import gradient_maps  # noqa: PLC0415 - TensorFlow
    from core.explain.road import NOISE, random_maps, road, sobel_maps  # noqa: PLC0415 - scipy

    start = time.monotonic()
    images = np.asarray(images, np.uint8)
    predict = clf.raw_probabilities  # the model's own softmax, as ROAD defines it (not the shown, calibrated one)
    targets = predict(images).argmax(axis=1)
    shared = reference(predict, images, targets, seed=seed)  # the same for every map of these images
    layers = [c.name for c in clf.cam_layers()]
    todo = len(BASELINES) + len(methods) * len(layers)
    done = 0
    fractions = tuple(fractions)

    def score(name: str, layer: str | None, heat: np.ndarray) -> Score:
        nonlocal done
        r = road(predict, images, heat, targets, fractions, NOISE, seed, shared.probability)
        masked = faithfulness_many(predict, images, heat, targets, seed=seed, reference=shared)
        done += 1
        if progress:
            progress(done / todo)
        return Score(name, layer, r.score, float(r.morf.mean()), float(r.lerf.mean()),
                     float(np.mean([m.difference for m in masked])))

    shape = images.shape[1:3]
    scores = [score("random", None, random_maps(shape, len(images), seed)), score("sobel", None, sobel_maps(images))]
    gradient = [m for m in methods if cam_method(m).uses_gradients]
    maps = gradient_maps(clf.model, gradient, layers, images, targets, clf.preprocess, CHUNK)  # one trace for all
    for name in methods:
        for layer in layers:
            if name in gradient:
                heat = maps[(name, layer)]
            else:  # Score-CAM, when asked for (benchmarks/road.py): its own traced function
                with cam_method(name)(clf.model, layer, preprocess=clf.preprocess) as cam:
                    heat = np.concatenate([cam.explain(images[i:i + CHUNK], targets[i:i + CHUNK]).heatmaps
                                           for i in range(0, len(images), CHUNK)])
            scores.append(score(name, layer, heat))
    best = max((s for s in scores if s.layer is not None), key=lambda s: s.road)
    return FaithfulMaps(best.method, str(best.layer), tuple(scores), len(images), fractions,
                        round(time.monotonic() - start, 2))


def load_or_measure(run_dir: str | Path, model: Callable[[], "Classifier"],
                    progress: Callable[[float], None] | None = None, sample: int | None = None) -> FaithfulMaps:
    """The run's choice from its folder, measuring it (on its validation sample) and keeping it the first time.
    A `sample` other than SAMPLE measures anew and keeps nothing (the run's default stays the standard one)."""
    from core.store.runs import open_run  # noqa: PLC0415

    run = open_run(run_dir)
    n = SAMPLE if sample is None else sample

    def compute() -> FaithfulMaps:
        images, labels = run.split("val")
        return measure(model(), images[sample_indices(labels, n)], FRACTIONS, progress, METHODS)

    if n != SAMPLE:
        return compute()
    return run.derived(FILE, FaithfulMaps.from_file, compute, FaithfulMaps.to_json)


def default_choice(found: FaithfulMaps | None, layers: Sequence["CamLayer"]) -> tuple[int, int]:
    """(index in METHOD_NAMES, index in `layers`) to preselect: the run's measured choice when there is one and
    its layer is offered, else Grad-CAM at the default (last) layer."""
    names = [c.name for c in layers]
    if found is not None and found.method in METHOD_NAMES and found.layer in names:
        return METHOD_NAMES.index(found.method), names.index(found.layer)
    default = next((i for i, c in enumerate(layers) if c.default), len(layers) - 1)
    return METHOD_NAMES.index(FALLBACK_METHOD), default


def heatmaps(clf: "Classifier", image: np.ndarray, class_indices: Sequence[int], method: str = FALLBACK_METHOD,
             layer: str | None = None) -> np.ndarray:
    """(len(class_indices), S, S) maps in [0, 1] of one uint8 image, one per class to explain, in one pass of
    the run's (cached) explainer for this method and layer."""
    batch = np.repeat(np.asarray(image, np.uint8)[None], len(class_indices), axis=0)
    return clf.explainer(method, layer).explain(batch, list(class_indices)).heatmaps
