"""External validation, step 5 (optional, the study's approach): fine-tune a copy of the model on a stratified
part of the external data and score the held-out rest, reported apart from the zero-shot result.

`FineTuneConfig` holds the settings, their defaults and their ranges in one place: the External page's
widgets and the command line's `--fine-tune-*` flags are made from it, so this module imports light (TensorFlow
and scikit-learn only inside `fine_tune`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from core.data.registry import short_label
from core.validation.external.errors import ExternalError
from core.validation.external.storage import load_evaluation, write_evaluation

if TYPE_CHECKING:
    from core.validation.external.loading import ExternalImages

BATCH_SIZE = 16


@dataclass(frozen=True)
class FineTuneConfig:
    """How to fine-tune on external data. Out-of-range values raise one ExternalError naming every such field."""

    fraction: float = 0.5  # share of each class to fine-tune on; the rest is held out and scored
    epochs: int = 3
    lr: float = 1e-4
    seed: int = 0  # of the split, the augmentation and the training

    # (minimum, maximum) of each field, inclusive
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "fraction": (0.05, 0.95), "epochs": (1, 50), "lr": (1e-6, 1e-1), "seed": (0, 2**31 - 1)}
    LR_CHOICES: ClassVar[tuple[float, ...]] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)  # the page's learning-rate steps
    TITLES: ClassVar[dict[str, str]] = {"fraction": "fine-tune fraction", "epochs": "fine-tune epochs",
                                        "lr": "fine-tune learning rate", "seed": "fine-tune seed"}

    def __post_init__(self) -> None:
        problems = []  # every field's problem at once, so a form shows them all, not one per submit
        for f in fields(self):
            value = getattr(self, f.name)
            kind = int if f.type in (int, "int") else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (kind is int and not float(value).is_integer()):
                problems.append(f"{self.TITLES[f.name]} must be {'a whole number' if kind is int else 'a number'}"
                                f"; got {value!r}")
                continue
            low, high = self.RANGES[f.name]
            if not low <= value <= high:
                problems.append(f"{self.TITLES[f.name]} must be between {low:g} and {high:g}; got {value:g}")
                continue
            object.__setattr__(self, f.name, kind(value))
        if problems:
            raise ExternalError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def stratified_halves(labels: np.ndarray, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fine-tune indices, held-out indices): `fraction` of each class to fine-tune, the rest held out.

    A class with one image goes to the held-out part (it is scored, not learnt from).
    """
    rng = np.random.default_rng(seed)
    tune, held = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(members) * fraction))
        k = min(k, len(members) - 1) if len(members) > 1 else 0
        tune.append(members[:k])
        held.append(members[k:])
    return np.sort(np.concatenate(tune)).astype(int), np.sort(np.concatenate(held)).astype(int)


def fine_tune(clf, data: "ExternalImages", normalize: str = "none", config: FineTuneConfig = FineTuneConfig(), *,
              target=None, run_dir: str | Path | None = None, eval_id: str | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Fine-tune a copy of the run's model on a stratified part of the data; score the held-out part.

    BatchNorm layers stay frozen (their statistics are the training set's: a few dozen external images
    would only add noise), the rest trains with Adam at a small learning rate, with flips and 90-degree
    turns as augmentation. The zero-shot model is scored on the same held-out images for comparison.
    With `eval_id` the result is stored in that evaluation's record. The run's model file is never changed.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: PLC0415  (TensorFlow only when fine-tuning)
    import tensorflow as tf  # noqa: PLC0415  (TensorFlow only when fine-tuning)

    from core.validation import stain  # noqa: PLC0415  (OpenCV only when images are scored)
    from core.validation.external.scoring import both_modes  # noqa: PLC0415  (scikit-learn only when scoring)

    run_dir = Path(run_dir or clf.run.path)
    fraction, epochs, lr, seed = config.fraction, config.epochs, config.lr, config.seed
    if normalize != "none" and target is None:
        target = stain.run_target(run_dir)
    if (data.labels < 0).any():
        raise ExternalError("images of unmapped classes cannot be used; map their class or leave it out")
    images, _ = stain.normalize(data.images, normalize, target)
    tune, held = stratified_halves(data.labels, fraction, seed)
    if len(tune) == 0 or len(held) == 0:
        raise ExternalError("too few images to split into a fine-tune part and a held-out part")
    labels = [short_label(x) for x in clf.labels]
    n_classes = len(labels)
    shared = data.shared
    zero_shot = both_modes(data.labels[held], clf.probabilities(images[held]), labels, shared)

    keras.utils.set_random_seed(seed)
    model = keras.models.clone_model(clf.model)
    model.set_weights(clf.model.get_weights())
    frozen = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in frozen:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=False)
    x = images[tune]
    y = keras.utils.to_categorical(data.labels[tune], n_classes)
    rng = np.random.default_rng(seed)
    history = []
    started = time.perf_counter()
    for epoch in range(epochs):
        xa = np.rot90(x, k=int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            xa = xa[:, :, ::-1]
        if rng.random() < 0.5:
            xa = xa[:, ::-1]
        xa = clf.preprocess(tf.constant(np.ascontiguousarray(xa))).numpy()
        h = model.fit(xa, y, batch_size=BATCH_SIZE, epochs=1, shuffle=True, verbose=0)
        history.append({"epoch": epoch + 1, "loss": float(h.history["loss"][-1]),
                        "accuracy": float(h.history["accuracy"][-1])})
        if progress:
            progress(epoch + 1, epochs)
    xh = clf.preprocess(tf.constant(images[held])).numpy()
    tuned_probs = model.predict(xh, batch_size=64, verbose=0)
    result = {
        "fraction": fraction, "seed": seed, "epochs": epochs, "lr": lr, "batch_size": BATCH_SIZE,
        "normalize": normalize, "n_fine_tune": int(len(tune)), "n_held_out": int(len(held)),
        "fine_tune_counts": {labels[c]: int((data.labels[tune] == c).sum()) for c in shared},
        "held_out_counts": {labels[c]: int((data.labels[held] == c).sum()) for c in shared},
        "frozen_batchnorm": bool(frozen), "seconds": round(time.perf_counter() - started, 2), "history": history,
        "zero_shot": zero_shot, "fine_tuned": both_modes(data.labels[held], tuned_probs, labels, shared),
    }
    del model
    if eval_id:
        record = load_evaluation(run_dir, eval_id)
        record["fine_tune"] = result
        write_evaluation(run_dir, record)
    return result
