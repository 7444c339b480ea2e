"""What the Classify page does, without Streamlit: uploads -> model inputs -> predictions, flags, explanations.

The page (pages/classify.py) is a thin view over these functions, and benchmarks/pbc_samples_accuracy.py
runs the same path on the 160 CellaVision samples, so what is measured is what users get.

Flags:
- "unidentified": the top class's (calibrated) probability is below a threshold, by default the run's own,
  chosen on validation from a target accuracy (core.evaluation.calibration; digital morphology analysers leave
  such cells for a person to classify);
- "unlike the training data": the image's pooled embedding is farther from every class centre than 99% of
  validation images are (see core.inference.ood).

Importing this module is light (no TensorFlow): the page draws its uploader before a model exists, and the
model is loaded by core.inference.precompute in the background (`load_classifier`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
from PIL import Image

from core.data.cell_framing import run_fraction
from core.data.images import ImageInputError, to_model_input
from core.data.registry import short_label
from core.data.uploads import UploadItem
from core.errors import UserFacingError
from core.evaluation import calibration
from core.explain.cam import METHOD_TITLES
from core.explain.faithfulness import Faithfulness, faithfulness
from core.explain.overlay import with_caption
from core.inference.ood import OODStats, load_or_fit
from core.store.csv_safe import safe_dict
from core.store.runs import open_run

if TYPE_CHECKING:
    from core.evaluation.calibration import Calibration
    from core.explain.cam.base import Explanation
    from core.inference.classifier import Classifier

DEFAULT_THRESHOLD = 0.5
RUNNERS_UP = 2  # the next most likely classes shown and exported after the prediction
DISPLAY_MAX = 384  # the uploaded image is kept for display at most this many pixels a side
UNIDENTIFIED, UNLIKE = "unidentified", "unlike training data"


@dataclass
class Prepared:
    """One upload as the model will see it (or why it cannot be used)."""

    name: str
    model_input: np.ndarray | None = None  # (S, S, 3) uint8
    display: np.ndarray | None = None  # the upload, scaled down for display
    error: str | None = None
    note: str | None = None


@dataclass
class ImageResult:
    name: str
    model_input: np.ndarray | None = None
    display: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    index: int | None = None
    label: str | None = None
    confidence: float | None = None
    flags: list[str] = field(default_factory=list)
    distance: float | None = None
    error: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def default_threshold(run_dir: str | Path) -> tuple[float, "Calibration | None"]:
    """The 'unidentified' threshold to start from: the run's, chosen on validation from its target accuracy, or
    DEFAULT_THRESHOLD while the run is not calibrated (then returned with None)."""
    found = calibration.stored(run_dir)
    return (found.unidentified.threshold, found) if found is not None else (DEFAULT_THRESHOLD, None)


def load_classifier(run_dir: str | Path) -> "Classifier":
    """The run's model, with prediction and the default Grad-CAM traced (so the first request is fast)."""
    from core.inference.classifier import Classifier  # noqa: PLC0415 - TensorFlow only when a model is loaded

    clf = Classifier(run_dir)
    try:
        clf.warm_up()
    except Exception:  # tracing ahead is a nicety: the first request traces what it needs
        # Seen twice, never reproduced: a mixed-bfloat16 model's Grad-CAM trace failing in a background thread
        # of the served app (a Conv2D given bfloat16 input with a float32 kernel). The model itself loaded; say
        # so in the server log and let the page's first explanation trace it.
        import sys  # noqa: PLC0415
        import traceback  # noqa: PLC0415

        print(f"warming up the model of {Path(run_dir).name} failed; it is traced on first use:", file=sys.stderr)
        traceback.print_exc()
    return clf


def run_labels(run_dir: str | Path) -> list[str]:
    """The run's class names, short (as the model's `short_labels`), read from its metrics without a model."""
    try:
        return [short_label(label) for label in open_run(run_dir).metrics["test"]["labels"]]
    except (KeyError, TypeError) as e:
        raise UserFacingError(f"Run {Path(run_dir).name} does not name its classes (metrics.json: {e})") from None


def shrink(rgb: np.ndarray, side: int = DISPLAY_MAX) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    scale = side / max(h, w)
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                  Image.Resampling.BILINEAR))


def prepare(items: Iterable[UploadItem], size: int, mode: str = "medmnist",
            cell_fraction: float | None = None) -> list[Prepared]:
    """Uploads (decoded one at a time) -> model inputs and display copies; the full image is not kept.

    `cell_fraction` is the run's cell framing target, needed in cell mode (`cell_fraction(clf, mode)`); an
    image in which cell framing finds no cell keeps the reason as its error, as an unreadable file does."""
    out = []
    for item in items:
        if not item.ok:
            out.append(Prepared(item.name, error=item.error))
            continue
        try:
            model_input = to_model_input(item.image, size, mode, cell_fraction, item.name)
        except ImageInputError as e:  # NoCellError: no cell to frame
            out.append(Prepared(item.name, error=str(e), note=item.note))
            continue
        out.append(Prepared(item.name, model_input, shrink(item.image), note=item.note))
    return out


def cell_fraction(clf: "Classifier", mode: str) -> float | None:
    """What `prepare` needs for `mode`: in cell mode the run's target (measured once per run on its training
    images, then read from `cell_framing.json`), else None."""
    return run_fraction(clf.run.path, mode)


def classify(clf: "Classifier", prepared: list[Prepared], threshold: float = DEFAULT_THRESHOLD,
             ood: OODStats | None = None) -> list[ImageResult]:
    """All good images in one batched call; bad ones keep their message. Order is kept."""
    good = [p for p in prepared if p.error is None]
    probs = emb = None
    if good:
        probs, emb = clf.probabilities_and_embeddings(np.stack([p.model_input for p in good]))
    distances = ood.distance(emb) if (ood is not None and good) else None
    results, g = [], 0
    for p in prepared:
        if p.error is not None:
            results.append(ImageResult(p.name, error=p.error))
            continue
        pr = probs[g]
        i = int(np.argmax(pr))
        r = ImageResult(p.name, p.model_input, p.display, pr, i, clf.labels[i], float(pr[i]), note=p.note)
        r.flags = flags(r.confidence, threshold, None if distances is None else float(distances[g]), ood)
        r.distance = None if distances is None else float(distances[g])
        results.append(r)
        g += 1
    return results


def flags(confidence: float, threshold: float, distance: float | None, ood: OODStats | None) -> list[str]:
    out = []
    if confidence < threshold:
        out.append(UNIDENTIFIED)
    if distance is not None and ood is not None and distance > ood.threshold:
        out.append(UNLIKE)
    return out


def ood_stats(clf: "Classifier") -> OODStats:
    """The run's 'unlike the training data' statistics (computed once per run, then read from disk)."""
    return load_or_fit(clf.run.path, lambda images: clf.probabilities_and_embeddings(images)[1])


RANKS = ("second", "third")[:RUNNERS_UP]
TABLE_COLUMNS = ("file", "prediction", "confidence", *(c for r in RANKS for c in (r, f"{r}_probability")), "flag",
                 "distance", "note", "error")


def runners_up(probabilities: np.ndarray | None, n: int = RUNNERS_UP) -> list[int]:
    """The classes after the top one, most likely first."""
    if probabilities is None:
        return []
    return [int(i) for i in np.argsort(-np.asarray(probabilities), kind="stable")[1:1 + n]]


def table_rows(results: list[ImageResult], short_labels: list[str] | None = None) -> list[dict]:
    """One row per file: file, prediction, confidence, the next most likely classes with their probabilities,
    flag, distance, note, error."""
    names = lambda i: short_labels[i] if short_labels is not None else None  # noqa: E731
    rows = []
    for r in results:
        label = r.label
        if label is not None and short_labels is not None:
            label = short_labels[r.index]
        row = {"file": r.name, "prediction": label or "",
               "confidence": None if r.confidence is None else round(r.confidence, 4)}
        others = runners_up(r.probabilities)
        for k, rank in enumerate(RANKS):
            i = others[k] if k < len(others) else None
            row[rank] = "" if i is None else (names(i) or str(i))
            row[f"{rank}_probability"] = None if i is None else round(float(r.probabilities[i]), 4)
        row.update({"flag": ", ".join(r.flags), "distance": None if r.distance is None else round(r.distance, 2),
                    "note": r.note or "", "error": r.error or ""})
        rows.append(row)
    return rows


def results_csv(results: list[ImageResult], short_labels: list[str] | None = None, run_id: str | None = None) -> str:
    """The table as CSV (cells that a spreadsheet would run as formulas defused); `run_id` adds a column saying
    which run's model made each prediction, so a file passed on keeps its provenance."""
    fields = (*TABLE_COLUMNS, "run") if run_id else TABLE_COLUMNS
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(safe_dict({**r, "run": run_id} if run_id else r) for r in table_rows(results, short_labels))
    return buf.getvalue()


# -- explanations ---------------------------------------------------------------------------------------

@dataclass
class Explained:
    explanation: "Explanation"  # for one image
    heatmap: np.ndarray  # (S, S) in [0, 1]
    target: int
    faithfulness: Faithfulness | None

    @property
    def same_as_gradcam(self) -> bool:
        """The class score's gradient was the same at every position of the layer: Grad-CAM and HiResCAM
        coincide (see core.explain.cam.base)."""
        flat = self.explanation.flat_gradients
        return bool(flat is not None and flat.size and flat[0])


def explain(clf: "Classifier", image: np.ndarray, method: str = "gradcam", layer: str | None = None,
            class_index: int | None = None, score: bool = True) -> Explained:
    """One model input -> its probabilities, heatmap for the chosen class, and the faithfulness score."""
    result = clf.explain(image[None], method, layer, class_index)
    heat, target = result.heatmaps[0], int(result.targets[0])
    faith = faithfulness(clf.probabilities, image, heat, target) if score else None
    return Explained(result, heat, target, faith)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text.replace(" ", "-")).strip("-") or "image"


def labelled_overlay(overlay_rgb: np.ndarray, image_name: str, class_name: str, probability: float, method: str,
                     layer: str, run_id: str | None = None) -> tuple[bytes, str]:
    """A downloadable overlay that says what it shows: (PNG bytes with a caption strip naming the class
    explained, its probability, the method and the layer (and the run), file name carrying the same)."""
    title = METHOD_TITLES.get(method, method)
    lines = [f"{class_name} {probability:.1%} | {title} | layer {layer}", image_name.rsplit("/", 1)[-1]]
    if run_id:
        lines.append(f"run {run_id}")
    stem = image_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    name = f"{_slug(stem)}-{_slug(class_name)}-{probability * 100:.0f}pct-{method}-{_slug(layer)}.png"
    return png_bytes(with_caption(overlay_rgb, lines)), name


# -- a gallery of the run's test split ------------------------------------------------------------------

@dataclass
class GalleryImage:
    name: str
    image: np.ndarray  # (S, S, 3) uint8, already at the model's size
    true_index: int


def gallery(run_dir: str | Path, per_class: int = 2, seed: int = 0) -> list[GalleryImage]:
    """A few test-split images per class from the run's own dataset, for demos without files."""
    path = open_run(run_dir).training_data()
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = np.asarray(npz["test_labels"]).reshape(-1)
            rng = np.random.default_rng(seed)
            index = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                    for c in np.unique(labels)])
            images = npz["test_images"][index]
    except (OSError, ValueError, KeyError) as e:
        raise UserFacingError(f"{path.name}: cannot read the test images ({e})") from None
    return [GalleryImage(f"test #{int(i)}", img, int(labels[i])) for i, img in zip(index, images)]


def __getattr__(name: str):
    """`classify.Classifier` (the command line and benchmarks use it) without importing TensorFlow with this
    module: it is imported on first use."""
    if name == "Classifier":
        from core.inference.classifier import Classifier  # noqa: PLC0415

        return Classifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
