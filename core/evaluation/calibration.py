"""Calibrated confidence: temperature scaling fitted on the validation split, what it changes, and the
"unidentified" threshold chosen from a target accuracy.

A softmax's top probability is not the chance that the call is right (an uncalibrated network is usually
over-confident). Temperature scaling (Guo et al. 2017) divides the logits by one number T > 0, fitted on the
validation split by minimising the negative log-likelihood (a 1-D bounded search over log T); it never changes
the argmax, so accuracy, the confusion matrix and every stored metric of the run stay as they are. The model's
probabilities are its logits up to a constant, so the log-probabilities serve as logits.

Figures, on each split, before and after scaling: ECE (expected calibration error, N_BINS equal-width bins of
the top probability, each weighted by its share of the cells), NLL and the Brier score (sum over classes of the
squared error, 0 to 2). The reliability diagram's bins and the risk-coverage curve (accuracy of the cells kept
against the fraction kept, most confident first) are computed here, drawn by ui.figures.

The "unidentified" threshold: the lowest calibrated confidence at which the validation cells it accepts
(confidence >= threshold) are right at least `target` of the time, so as few cells as possible go to review;
the fractions of validation and test cells below it are reported (test is only reported, never chosen on).

Stored in the run's metrics.json as `"calibration"` (core.store.runs: `Run.calibration`, `store_calibration`):

    {"temperature": T, "n_bins": 15, "fitted_on": "val",
     "val":  {"n", "ece_before", "ece_after", "nll_before", "nll_after", "brier_before", "brier_after"},
     "test": {... the same ...},
     "unidentified": {"target", "threshold", "reachable", "val_review_fraction", "test_review_fraction",
                      "val_accepted_accuracy", "test_accepted_accuracy"}}

`apply_temperature` is the one function that turns a run's raw probabilities into the ones shown: the
Classifier (core.inference.classifier) and the stored predictions (core.evaluation.predictions) go through it
with the run's temperature (`temperature_of`; None: not calibrated yet, probabilities shown as the model gives
them). numpy and scipy only; no TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

if TYPE_CHECKING:
    from core.inference.classifier import Classifier

N_BINS = 15
DEFAULT_TARGET = 0.99
TEMPERATURE_BOUNDS = (0.05, 20.0)
EPS = 1e-12  # probabilities are clipped here before their log (a float32 softmax underflows to 0)
UNCALIBRATED = "uncalibrated"


# -- the one transformation --------------------------------------------------------------------------------
def logits(probabilities: np.ndarray) -> np.ndarray:
    """Log-probabilities (the logits up to a per-row constant, which softmax ignores)."""
    return np.log(np.clip(np.asarray(probabilities, np.float64), EPS, 1.0))


def apply_temperature(probabilities: np.ndarray, temperature: float | None) -> np.ndarray:
    """softmax(log p / T): the probabilities as shown. T None or 1: returned unchanged. The argmax never
    changes; rows stay summing to 1; the dtype is kept (float32 stays float32)."""
    p = np.asarray(probabilities)
    if temperature is None or temperature == 1.0 or p.size == 0:
        return p
    z = logits(p) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(p.dtype if p.dtype.kind == "f" else np.float64)


def describe(temperature: float | None) -> str:
    """How probabilities are shown: 'calibrated (T = 1.52)' or 'uncalibrated'."""
    return UNCALIBRATED if temperature is None else f"calibrated (T = {temperature:.2f})"


# -- the figures ---------------------------------------------------------------------------------------------
def _check(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"expected (N, classes) probabilities for N labels, got {p.shape} and {y.shape}")
    return p, y


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    p, y = _check(probabilities, labels)
    return float(-np.mean(logits(p)[np.arange(len(y)), y])) if len(y) else float("nan")


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over cells of the sum over classes of (p - one-hot)^2: 0 (perfect) to 2."""
    p, y = _check(probabilities, labels)
    if not len(y):
        return float("nan")
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float | None  # mean top probability of its cells (None: empty bin)
    accuracy: float | None  # share of its cells called right


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bins (lower, upper] of equal width; a confidence of exactly 0 falls in the first."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> list[ReliabilityBin]:
    """The reliability diagram's bins of the top probability."""
    p, y = _check(probabilities, labels)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y)
    index = _bin_index(confidence, n_bins)
    out = []
    for b in range(n_bins):
        members = index == b
        n = int(members.sum())
        out.append(ReliabilityBin(b / n_bins, (b + 1) / n_bins, n,
                                  float(confidence[members].mean()) if n else None,
                                  float(correct[members].mean()) if n else None))
    return out


def ece(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of (share of cells) * |accuracy - mean confidence|."""
    bins = reliability(probabilities, labels, n_bins)
    total = sum(b.count for b in bins)
    if not total:
        return float("nan")
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins if b.count))


@dataclass(frozen=True)
class RiskCoverage:
    """Cells sorted by confidence, most confident first: keeping the first k (coverage k/N), the accuracy of
    those kept; `confidence[k-1]` is the lowest confidence kept."""

    coverage: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    def at_threshold(self, threshold: float) -> tuple[float, float | None]:
        """(coverage, accuracy of the cells kept) when cells at or above `threshold` are kept."""
        kept = int(np.sum(self.confidence >= threshold))
        return kept / max(len(self.confidence), 1), (float(self.accuracy[kept - 1]) if kept else None)

    def thinned(self, points: int = 200) -> "RiskCoverage":
        """At most about `points` points (plots), the last (everything kept) always among them."""
        n = len(self.coverage)
        if n <= points:
            return self
        index = np.unique(np.r_[np.linspace(0, n - 1, points).round().astype(int), n - 1])
        return RiskCoverage(self.coverage[index], self.accuracy[index], self.confidence[index])


def risk_coverage(probabilities: np.ndarray, labels: np.ndarray) -> RiskCoverage:
    p, y = _check(probabilities, labels)
    confidence = p.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    correct = (p.argmax(axis=1) == y)[order].astype(np.float64)
    k = np.arange(1, len(y) + 1)
    return RiskCoverage(k / max(len(y), 1), np.cumsum(correct) / k, confidence[order])


# -- fitting ---------------------------------------------------------------------------------------------------
def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS minimising the NLL of softmax(log p / T) (bounded search over log T). Never
    worse than T = 1 on these cells: the search's result is kept only when it beats 1."""
    from scipy.optimize import minimize_scalar  # noqa: PLC0415 - scipy only when fitting

    p, y = _check(probabilities, labels)
    if not len(y):
        return 1.0
    z = logits(p)
    z -= z.max(axis=1, keepdims=True)
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        s -= s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[rows, y]))

    found = minimize_scalar(loss, bounds=tuple(np.log(TEMPERATURE_BOUNDS)), method="bounded",
                            options={"xatol": 1e-5})
    return float(np.exp(found.x)) if found.success and found.fun < loss(0.0) else 1.0


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, target: float = DEFAULT_TARGET
                     ) -> tuple[float, bool]:
    """(threshold, reachable): the lowest top-probability t such that the cells with confidence >= t are right
    at least `target` of the time (most cells accepted); (1.0, False) when no non-empty set of the most
    confident cells reaches the target (every cell then goes to review but those at exactly 1.0)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the target accuracy must be in (0, 1], got {target}")
    curve = risk_coverage(probabilities, labels)
    if not len(curve.confidence):
        return 1.0, False
    # a threshold keeps every cell tied with the lowest one kept: only the last cell of each tie is a candidate
    last_of_tie = np.r_[curve.confidence[1:] < curve.confidence[:-1], True]
    ok = np.flatnonzero(last_of_tie & (curve.accuracy >= target - 1e-12))
    if not len(ok):
        return 1.0, False
    return float(curve.confidence[ok[-1]]), True


@dataclass(frozen=True)
class SplitCalibration:
    n: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    brier_before: float
    brier_after: float

    @classmethod
    def measure(cls, probabilities: np.ndarray, labels: np.ndarray, temperature: float,
                n_bins: int = N_BINS) -> "SplitCalibration":
        after = apply_temperature(np.asarray(probabilities, np.float64), temperature)
        return cls(len(np.asarray(labels).reshape(-1)), ece(probabilities, labels, n_bins), ece(after, labels, n_bins),
                   nll(probabilities, labels), nll(after, labels), brier(probabilities, labels), brier(after, labels))


@dataclass(frozen=True)
class Unidentified:
    target: float
    threshold: float
    reachable: bool
    val_review_fraction: float
    test_review_fraction: float | None
    val_accepted_accuracy: float | None
    test_accepted_accuracy: float | None


@dataclass(frozen=True)
class Calibration:
    """A run's temperature (fitted on validation), its figures on each split, and its unidentified threshold."""

    temperature: float
    val: SplitCalibration
    test: SplitCalibration | None
    unidentified: Unidentified
    n_bins: int = N_BINS
    fitted_on: str = "val"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        """The stored block (KeyError, TypeError or ValueError when it is not one)."""
        temperature = float(d["temperature"])
        if not temperature > 0:
            raise ValueError(f"temperature {temperature} is not positive")
        test = d.get("test")
        return cls(temperature, SplitCalibration(**d["val"]), SplitCalibration(**test) if test else None,
                   Unidentified(**d["unidentified"]), int(d.get("n_bins", N_BINS)), str(d.get("fitted_on", "val")))

    def summary(self) -> str:
        u, t = self.unidentified, self.test
        text = f"T = {self.temperature:.3f}; validation ECE {self.val.ece_before:.4f} -> {self.val.ece_after:.4f}"
        if t is not None:
            text += f"; test ECE {t.ece_before:.4f} -> {t.ece_after:.4f}"
        text += (f"; unidentified below {u.threshold:.3f} (target {u.target:.0%} on validation"
                 f"{'' if u.reachable else ', not reachable'}): {u.val_review_fraction:.1%} of validation")
        if u.test_review_fraction is not None:
            text += f", {u.test_review_fraction:.1%} of test"
        return text + " to review"


def calibrate(val_labels: np.ndarray, val_probabilities: np.ndarray, test_labels: np.ndarray | None = None,
              test_probabilities: np.ndarray | None = None, target: float = DEFAULT_TARGET,
              n_bins: int = N_BINS) -> Calibration:
    """Fit T on the validation split's raw probabilities, choose the threshold there, report both splits."""
    temperature = fit_temperature(val_probabilities, val_labels)
    val_after = apply_temperature(np.asarray(val_probabilities, np.float64), temperature)
    threshold, reachable = choose_threshold(val_after, val_labels, target)
    val_curve = risk_coverage(val_after, val_labels)
    val_cov, val_acc = val_curve.at_threshold(threshold)
    test = test_cov = test_acc = None
    if test_probabilities is not None and test_labels is not None:
        test = SplitCalibration.measure(test_probabilities, test_labels, temperature, n_bins)
        test_after = apply_temperature(np.asarray(test_probabilities, np.float64), temperature)
        test_cov, test_acc = risk_coverage(test_after, test_labels).at_threshold(threshold)
    unidentified = Unidentified(float(target), threshold, reachable, 1.0 - val_cov,
                                None if test_cov is None else 1.0 - test_cov, val_acc, test_acc)
    return Calibration(temperature, SplitCalibration.measure(val_probabilities, val_labels, temperature, n_bins),
                       test, unidentified, n_bins)


# -- a run's calibration --------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int, size: int) -> Calibration | None:
    from core.store.runs import open_run  # noqa: PLC0415

    block = open_run(path).calibration
    if block is None:
        return None
    try:
        return Calibration.from_dict(block)
    except (KeyError, TypeError, ValueError):
        return None  # damaged or from another version: the run counts as not calibrated (`calibrate` redoes it)


def stored(run_dir: str | Path) -> Calibration | None:
    """The run's stored calibration (read once per version of its metrics.json), or None."""
    from core.store.runs import METRICS_FILE  # noqa: PLC0415

    path = Path(run_dir).resolve()
    try:
        stat = (path / METRICS_FILE).stat()
    except OSError:
        return None
    try:
        return _read(str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError):
        return None


def temperature_of(run_dir: str | Path | None) -> float | None:
    """The run's temperature, or None when it has none yet (its probabilities are shown uncalibrated)."""
    if run_dir is None:
        return None
    found = stored(run_dir)
    return None if found is None else found.temperature


def fit_run(run_dir: str | Path, model: Callable[[], "Classifier"] | None = None,
            progress: Callable[[float], None] | None = None, target: float | None = None,
            store: bool = True) -> Calibration:
    """Calibrate a finished run: its validation and test predictions (read from the run folder where cached,
    else predicted with `model()`, the run's model on demand), T fitted on validation, the threshold for
    `target` (default: the one stored, else DEFAULT_TARGET). With `store`, the block goes into metrics.json
    (atomically, the rest unchanged) and then the validation predictions are cached (`val_predictions.npz`,
    the precompute step's file: written last, so its presence means the calibration is stored)."""
    from core.evaluation import predictions  # noqa: PLC0415
    from core.store.runs import store_calibration  # noqa: PLC0415

    run_dir = Path(run_dir)
    if target is None:
        previous = stored(run_dir)
        target = previous.unidentified.target if previous is not None else DEFAULT_TARGET
    report = progress or (lambda f: None)
    parts = {}
    for i, split in enumerate(("val", "test")):
        found = predictions.cached(run_dir, split, calibrated=False)
        if found is not None:
            parts[split] = (found.y_true, found.probabilities)
        else:
            if model is None:
                raise ValueError(f"run {run_dir.name} has no cached {split} predictions and no model was given")
            part = lambda f, i=i: report((i + f) / 2)  # noqa: E731
            parts[split] = predictions.predict(run_dir, model(), part, split)
            if split == "test" and store:
                predictions.save(run_dir, *parts[split], split="test")
        report((i + 1) / 2)
    result = calibrate(*parts["val"], *parts["test"], target=target)
    if store:
        store_calibration(run_dir, result.to_dict())
        if predictions.cached(run_dir, "val", calibrated=False) is None:
            predictions.save(run_dir, *parts["val"], split="val")
    return result


@dataclass(frozen=True)
class SplitCurves:
    """What a run's calibration plots show for one split."""

    split: str
    before: list[ReliabilityBin]
    after: list[ReliabilityBin]
    risk_coverage: RiskCoverage  # calibrated


def curves(run_dir: str | Path, calibration: Calibration) -> list[SplitCurves]:
    """The reliability bins (before and after scaling) and the risk-coverage curve of the splits whose
    predictions the run folder holds (validation, test), from those cached files: no model."""
    from core.evaluation import predictions  # noqa: PLC0415

    out = []
    for split in ("val", "test"):
        found = predictions.cached(run_dir, split, calibrated=False)
        if found is None:
            continue
        after = apply_temperature(found.probabilities.astype(np.float64), calibration.temperature)
        out.append(SplitCurves(split, reliability(found.probabilities, found.y_true, calibration.n_bins),
                               reliability(after, found.y_true, calibration.n_bins),
                               risk_coverage(after, found.y_true).thinned()))
    return out
