"""Train one run: data -> model -> fit with per-epoch validation -> best epoch -> test once -> run store.

Selection uses validation only: after every epoch the model is scored on the validation split (after
re-estimating BatchNorm statistics for from-scratch runs), the best epoch's weights are kept (highest
validation accuracy, ties broken by lower validation loss), and the test split is evaluated exactly once,
with those weights, at the end.

Settings with their own modules: the learning-rate schedule (core.training.schedules), the precision policy
(core.training.precision: set for the run, restored after it) and test-time augmentation
(core.inference.tta: reported beside the plain figures as metrics.json's "tta"). With weight averaging
(`ema`) the optimizer keeps a moving average of the weights; every evaluation swaps it in (BatchNorm
statistics re-estimated on it), so the kept epoch, the test pass and the stored model are the averaged
weights, and training continues from the raw ones.

The run walks the phases of core.progress (loading, then training and validating for each epoch, testing,
publishing) on a `Tracker`: a training job passes its own, whose plan is core.jobs.sweeps.phase_plan and
whose reports become the job card's phase and time left; without one (the command line, tests) the trainer
keeps a silent one. Either way the run's phase times end up in metrics.json ("phase_seconds", this attempt's)
and in core.progress.PhaseTimes (per image where a phase scales with images: core.jobs.sweeps.phase_units),
so the next estimate is measured.

Each epoch also leaves a checkpoint (model with optimizer state, best weights, history) in the run's work
directory as one atomic unit (core.store.checkpoints), so a failed or cancelled run can be resumed from its
last completed epoch. Checkpoint and publish writes finish before a cancel takes effect.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from core import devices
from core.config import RunConfig
from core.data.dataset import Dataset, load_for_config
from core.evaluation import calibration, predictions
from core.evaluation.metrics import SCHEMA_VERSION, SplitMetrics, evaluate
from core.inference import tta
from core.jobs import sweeps
from core.models import batchnorm
from core.models.build import build_model
from core.progress import PhaseTimes, Tracker
from core.store import checkpoints
from core.store.runs import CALIBRATION_KEY, Run, RunStore, RunWriter
from core.training import pipeline, precision, schedules, threads

EVAL_BATCH = 128


class TrainingCancelled(RuntimeError):
    """Raised when the cancel check said stop; the run's work directory keeps its last checkpoint."""

    def __init__(self, work_dir: Path, epochs_done: int):
        super().__init__(f"cancelled after {epochs_done} completed epoch(s); resumable from {work_dir}")
        self.work_dir = work_dir
        self.epochs_done = epochs_done


@dataclass
class Progress:
    epoch: int  # 1-based
    epochs: int
    batch: int  # 1-based within the epoch
    batches: int
    images_per_second: float
    eta_seconds: float
    logs: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return ((self.epoch - 1) * self.batches + self.batch) / (self.epochs * self.batches)


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]
EpochFn = Callable[[dict[str, float]], "bool | None"]  # after each epoch's validation; True stops training there


def seed_everything(config: RunConfig) -> None:
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def class_weight_map(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """'Balanced' weights n / (k * n_c), so each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


OPTIMIZER_CLASSES = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
                     "rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}


def make_optimizer(config: RunConfig, steps_per_epoch: int = 1) -> keras.optimizers.Optimizer:
    """The run's optimizer: its schedule (per step; `steps_per_epoch` sets its length), decoupled weight
    decay (not Adam's: AdamW is Adam with it) and weight averaging where the config asks for them, and
    nothing else (defaults as before)."""
    decay = {"adam": None, "adamw": config.weight_decay}.get(config.optimizer, config.weight_decay or None)
    options: dict[str, Any] = {"learning_rate": schedules.learning_rate(config, steps_per_epoch),
                               "weight_decay": decay}  # None: no decay step at all (AdamW takes a float)
    if config.ema:
        options.update(use_ema=True, ema_momentum=config.ema_decay)
    if config.optimizer == "sgd":
        options["momentum"] = config.momentum
    return OPTIMIZER_CLASSES[config.optimizer](**options)


def compile_model(model: keras.Model, config: RunConfig, n_classes: int, steps_per_epoch: int = 1) -> None:
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.AUC(multi_label=True, num_labels=n_classes, name="auc")],
        jit_compile=False,  # XLA is ~4x slower on CPU
    )


class _PredictProgress(keras.callbacks.Callback):
    def __init__(self, on_batch: Callable[[int, int], None], n: int):
        super().__init__()
        self.on_batch, self.n = on_batch, n

    def on_predict_batch_end(self, batch, logs=None):
        self.on_batch(min((batch + 1) * EVAL_BATCH, self.n), self.n)


def predict_probabilities(model: keras.Model, images: np.ndarray, arch: str,
                          on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Class probabilities; `on_batch(images done, images)` after each batch when given."""
    ds = pipeline.inference_dataset(images, arch, EVAL_BATCH)
    callbacks = [_PredictProgress(on_batch, len(images))] if on_batch else None
    return model.predict(ds, verbose=0, callbacks=callbacks)


def tta_probabilities(model: keras.Model, images: np.ndarray, arch: str) -> np.ndarray:
    return tta.probabilities(lambda x: predict_probabilities(model, x, arch), images)


class _EpochEnd(keras.callbacks.Callback):
    """Validation, best-epoch tracking, early stopping, checkpoints, progress and cancel checks."""

    def __init__(self, trainer: "Trainer"):
        super().__init__()
        self.t = trainer
        self._epoch_start = 0.0
        self._batch_times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch = epoch
        self.t.tracker.start("training", f"epoch {epoch + 1}/{self.t.config.epochs}")

    def on_train_batch_end(self, batch, logs=None):
        t = self.t
        elapsed = time.perf_counter() - self._epoch_start
        done = batch + 1
        ips = done * t.config.batch_size / elapsed if elapsed > 0 else 0.0
        remaining_batches = (t.config.epochs - self._epoch - 1) * t.steps + (t.steps - done)
        eta = remaining_batches * (elapsed / done)
        t.tracker.advance(done / t.steps, f"epoch {self._epoch + 1}/{t.config.epochs} · batch {done}/{t.steps}"
                                          f" · {ips:,.0f} images/s")
        if t.progress:
            t.progress(Progress(self._epoch + 1, t.config.epochs, done, t.steps, ips, eta,
                                {k: float(v) for k, v in (logs or {}).items()}))
        if t.should_cancel and t.should_cancel():
            t.cancelled = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        t = self.t
        train_seconds = time.perf_counter() - self._epoch_start
        if t.cancelled:
            return  # an interrupted epoch is not a completed epoch
        t.train_seconds += train_seconds
        t.images_trained += t.steps * t.config.batch_size
        t.epochs_this_attempt += 1
        # the next epochs: this one's pace past its first batches (the first epoch's include tracing the graph)
        t.tracker.expect("training", t.tracker.steady_seconds() or train_seconds)
        row = t.validate_epoch(epoch + 1, logs or {}, train_seconds)
        if t.on_epoch and t.on_epoch(row):  # True: stop after this epoch (a search's pruner), as early stopping
            t.writer.log(f"stopped after epoch {epoch + 1} by its caller (a search pruned it)")
            self.model.stop_training = True
        if t.config.patience and (epoch + 1) - t.best_epoch >= t.config.patience:
            t.writer.log(f"early stopping: no better validation accuracy for {t.config.patience} epochs")
            self.model.stop_training = True


class Trainer:
    def __init__(self, config: RunConfig, store: RunStore, progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None, on_epoch: EpochFn | None = None,
                 echo: Callable[[str], None] | None = print, run_id: str | None = None,
                 tracker: Tracker | None = None):
        self.config = config
        self.store = store
        self.progress = progress
        self.should_cancel = should_cancel
        self.on_epoch = on_epoch
        self.echo = echo
        self.writer = RunWriter(store, config, run_id)
        self.cancelled = False
        self.precision = config.precision  # resolved ("auto" -> what this machine runs) when the run starts
        self.threads = threads.CpuThreads()  # the CPU thread pools it ran with, read when the run starts
        self.history: list[dict[str, float]] = []
        self.best_epoch = 0
        self.best_key: tuple[float, float] = (-1.0, 0.0)
        self.best_weights: list[np.ndarray] | None = None
        self.train_seconds = 0.0
        self.images_trained = 0
        self.epochs_this_attempt = 0
        self.validations = 0  # validation passes in this attempt
        self.best_val_probabilities: np.ndarray | None = None  # the kept epoch's, reused by the final report
        # a job's tracker (its plan from core.jobs.sweeps.phase_plan, its reports on the job card), else a
        # silent one that only measures the phases
        self.own_tracker = tracker is None
        self.tracker = tracker or Tracker([("loading", 0.0), *[(p, 0.0) for _ in range(config.epochs)
                                                               for p in ("training", "validating")],
                                           ("testing", 0.0), ("publishing", 0.0)])

    @property
    def run_id(self) -> str:
        return self.writer.run_id

    def log(self, message: str) -> None:
        self.writer.log(message)
        if self.echo:
            self.echo(message)

    # -- per-epoch validation ------------------------------------------------------------------------
    def _swap_in_average(self) -> list[np.ndarray] | None:
        """With weight averaging: put the averaged weights in the model; returns all weights as they were
        (raw trainable weights and BatchNorm statistics), for `model.set_weights` after evaluating."""
        if not self.config.ema:
            return None
        raw = self.model.get_weights()
        self.model.optimizer.finalize_variable_values(self.model.trainable_weights)
        return raw

    def validate_epoch(self, epoch: int, train_logs: dict[str, Any], train_seconds: float) -> dict[str, float]:
        self.tracker.start("validating", f"epoch {epoch}/{self.config.epochs}")
        start = time.perf_counter()
        raw = self._swap_in_average()
        try:
            row = self._score_epoch(epoch, train_logs, train_seconds)
        finally:
            if raw is not None:
                self.model.set_weights(raw)  # training goes on from the raw weights
        # the validation's own cost (with the BatchNorm re-estimate): with train_seconds, the epoch's wall time
        row["val_seconds"] = time.perf_counter() - start
        self.validations += 1
        self._checkpoint(epoch)  # first: a history row on disk always has its checkpoint to resume from
        self.writer.write_history(self.history)
        # the next validations take this one's pace past its warm-up (the first one, which traces its graphs,
        # its whole time), with the checkpoint: all of it is the phase's time; the test pass by its image count
        units = self.units()
        expected = self.tracker.steady_seconds() or (time.perf_counter() - start)
        self.tracker.expect("validating", expected)
        self.tracker.expect("testing", expected / max(units["validating"], 1) * units["testing"])
        c = self.config
        self.log(f"epoch {epoch}/{c.epochs}: loss {row['loss']:.4f} acc {row['accuracy']:.4f} | "
                 f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} auc {row['val_auc']:.4f}"
                 f"{' (best)' if self.best_epoch == epoch else ''} [{train_seconds:.1f}s]")
        return row

    def _score_epoch(self, epoch: int, train_logs: dict[str, Any], train_seconds: float) -> dict[str, float]:
        """Validation of the weights now in the model (the averaged ones with `ema`); keeps them if best."""
        c, data = self.config, self.data
        detail = f"epoch {epoch}/{c.epochs}"
        units = self.units()["validating"]
        re_estimated = units - len(data.val)  # the BatchNorm re-estimate's images, done before predicting
        # both parts say how far they are; the first pass in words only: it traces both graphs, and on a small
        # run its first batch is a large share of the pass, so its pace would promise far too long a wait (the
        # time left then comes from the expectation)
        paced = self.validations > 0
        if c.recalibrate_bn:
            batches = -(-re_estimated // c.batch_size)  # those the re-estimate reads

            def on_statistics_batch(done: int, n: int) -> None:
                self.tracker.advance(min(done * c.batch_size, re_estimated) / units if paced else 0.0,
                                     f"{detail} · BatchNorm statistics, batch {min(done, batches)}/{batches}")

            batchnorm.recalibrate(self.model, pipeline.bn_statistics_dataset(
                data.train.images, c.arch, c.batch_size, c.seed + epoch), c.bn_recalibration_batches,
                on_statistics_batch)

        def on_batch(done: int, n: int) -> None:
            self.tracker.advance((re_estimated + done) / units if paced else 0.0, f"{detail} · {done:,}/{n:,} images")

        probabilities = predict_probabilities(self.model, data.val.images, c.arch, on_batch)
        val = evaluate(data.val.labels, probabilities, data.labels)
        row = {
            "epoch": epoch,
            "loss": float(train_logs.get("loss", np.nan)),
            "accuracy": float(train_logs.get("accuracy", np.nan)),
            "auc": float(train_logs.get("auc", np.nan)),
            "val_loss": val.loss, "val_accuracy": val.accuracy,
            "val_auc": val.auc if val.auc is not None else np.nan,
            "train_seconds": train_seconds,
        }
        self.history.append(row)
        key = (val.accuracy, -val.loss)
        if key > self.best_key:
            self.best_key, self.best_epoch = key, epoch
            self.best_weights = [w.copy() for w in self.model.get_weights()]  # saved with the checkpoint unit
            self.best_val_probabilities = probabilities
        return row

    def _checkpoint(self, epoch: int) -> None:
        state = {"epochs_done": epoch, "best_epoch": self.best_epoch, "best_key": list(self.best_key),
                 "history": self.history, "train_seconds": self.train_seconds,
                 "images_trained": self.images_trained}
        checkpoints.save(self.writer.work_dir, epoch, self.model.save, self.best_weights, state)

    def _restore_checkpoint(self) -> int:
        """Resume from the work directory's last complete checkpoint; returns the epochs already done."""
        checkpoint = checkpoints.load(self.writer.work_dir)
        if checkpoint is None:
            return 0
        state = checkpoint.state
        self.model = keras.models.load_model(checkpoint.model_path)
        self.history = state["history"]
        self.best_epoch = state["best_epoch"]
        self.best_key = tuple(state["best_key"])
        self.train_seconds = state["train_seconds"]
        self.images_trained = state["images_trained"]
        if checkpoint.legacy:
            best = keras.models.clone_model(self.model)
            best.load_weights(checkpoint.best_path)
            self.best_weights = best.get_weights()
        else:
            self.best_weights = checkpoint.best_weights()
        self.log(f"resuming after epoch {state['epochs_done']} (best so far: epoch {self.best_epoch})")
        return int(state["epochs_done"])

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> Run:
        c = self.config
        if self.own_tracker:
            self.tracker.start("loading", "data and model")
        try:
            gpus = devices.tensorflow_gpus()  # memory growth on; a queued job sees its own GPU only
            gpu = bool(gpus)
            self.precision = precision.resolve(c.precision, c.arch, gpu=gpu, capability=devices.min_capability(gpus))
            precision.check(self.precision, gpu=gpu)
            # before TensorFlow runs its first operation in this process (else the pools it has are kept)
            self.threads = threads.apply(threads.plan(c.arch, c.size, c.batch_size, c.to_dict(), gpu=gpu))
            with precision.policy(self.precision):
                return self._run()
        except (TrainingCancelled, KeyboardInterrupt):
            self.writer.log("stopped; the last completed epoch's checkpoint is kept for resuming")
            self._close_work_dir()
            raise
        except BaseException as e:
            self.writer.log(f"failed: {e.__class__.__name__}: {e}")
            self._close_work_dir()
            raise

    def _run(self) -> Run:
        c = self.config
        seed_everything(c)
        self.data: Dataset = load_for_config(c.data, c.size, c.limit_train, c.seed)
        n_classes = self.data.n_classes
        self.steps = pipeline.steps_per_epoch(len(self.data.train), c.batch_size)
        self.log(f"run {self.run_id}: {c.arch} {self.data.image_size}px weights={c.weights} "
                 f"train/val/test {len(self.data.train)}/{len(self.data.val)}/{len(self.data.test)}"
                 f" precision={self.precision}; {self.threads.describe()}")
        self.model = build_model(c, n_classes, self.data.image_size)
        compile_model(self.model, c, n_classes, self.steps)
        initial_epoch = self._restore_checkpoint()
        if initial_epoch < c.epochs and not (c.patience and initial_epoch - self.best_epoch >= c.patience):
            train_ds = pipeline.training_dataset(self.data.train.images, self.data.train.labels, c,
                                                 n_classes, start_step=initial_epoch * self.steps)
            self.model.fit(
                train_ds, epochs=c.epochs, initial_epoch=initial_epoch, steps_per_epoch=self.steps,
                class_weight=class_weight_map(self.data.train.labels, n_classes) if c.class_weights
                else None, callbacks=[_EpochEnd(self)], shuffle=False, verbose=0)
        if self.cancelled:
            self.log("cancelled")
            raise TrainingCancelled(self.writer.work_dir, len(self.history))
        return self._finish()

    def _close_work_dir(self) -> None:
        """Keep the work directory only if it holds a checkpoint to resume from."""
        self.writer.close()
        if not checkpoints.exists(self.writer.work_dir):
            shutil.rmtree(self.writer.work_dir, ignore_errors=True)

    def _finish(self) -> Run:
        c, data = self.config, self.data
        if self.best_weights is None:
            raise RuntimeError("no epoch completed")
        n_test = len(data.test)
        self.tracker.start("testing", f"{n_test:,} images")
        self.model.set_weights(self.best_weights)
        val_probabilities = self.best_val_probabilities  # None after a resume: predicted again
        if val_probabilities is None:
            val_probabilities = predict_probabilities(self.model, data.val.images, c.arch)
        val = evaluate(data.val.labels, val_probabilities, data.labels)
        test_probabilities = predict_probabilities(
            self.model, data.test.images, c.arch,
            lambda done, n: self.tracker.advance(done / n, f"{done:,} of {n:,} images"))
        test = evaluate(data.test.labels, test_probabilities, data.labels)
        metrics = {
            "schema_version": SCHEMA_VERSION,
            "val": val.to_dict(), "test": test.to_dict(),
            "best_epoch": self.best_epoch, "epochs_run": len(self.history),
            "train_seconds": self.train_seconds,
            "train_images_per_second": self.images_trained / self.train_seconds if self.train_seconds else 0.0,
            "precision": self.precision,  # the policy it ran in ("auto" resolved on this machine)
            "cpu_threads": self.threads.to_dict(),  # TensorFlow's pools it trained with (0: the default)
            "bn_recalibrated": c.recalibrate_bn,
            "weights_averaged": c.ema,
            "dataset": {"source": data.source, "image_size": data.image_size,
                        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test)},
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        }
        auc = "n/a (one class)" if test.auc is None else f"{test.auc:.4f}"
        self.log(f"best epoch {self.best_epoch}: val acc {val.accuracy:.4f}; "
                 f"test acc {test.accuracy:.4f} auc {auc} (evaluated once)")
        # temperature scaling fitted on validation, reported on both splits (the metrics above stay raw)
        calibrated = calibration.calibrate(data.val.labels, val_probabilities, data.test.labels, test_probabilities)
        metrics[CALIBRATION_KEY] = calibrated.to_dict()
        self.log(f"calibration: {calibrated.summary()}")
        if c.tta:
            augmented = self._tta_metrics()
            metrics["tta"] = {split: m.to_dict() for split, m in augmented.items()}
            self.log(f"with test-time augmentation (8 flips/turns, reported beside): val acc "
                     f"{augmented['val'].accuracy:.4f}; test acc {augmented['test'].accuracy:.4f}")
        self.tracker.start("publishing", "saving the model and the run")
        publish_start = time.monotonic()
        metrics["phase_seconds"] = {p: round(s, 6) for p, s in self.tracker.seconds_in.items()}
        run = self.writer.publish(metrics, self.model.save)
        try:  # the test pass just made is what Confusions needs: kept, so no page predicts it again
            predictions.save(run.path, data.test.labels, test_probabilities)
            predictions.save(run.path, data.val.labels, val_probabilities, split="val")  # calibration's
        except OSError as e:  # a nicety: the page predicts it on first use instead
            self.log(f"could not keep the test predictions ({e}); Confusions will predict them once")
        self.record_phase_times(time.monotonic() - publish_start)
        return run

    def classifier(self):
        """The trained model (its kept weights, as published) as a core.inference Classifier, for work on the
        finished run in this process without loading it from disk again (a job's precomputing)."""
        from core.inference.classifier import Classifier  # noqa: PLC0415

        return Classifier.from_model(self.model, self.config, list(self.data.labels))

    def units(self) -> dict[str, int]:
        data = self.data
        return sweeps.phase_units(self.config, len(data.train), len(data.val), len(data.test))

    def record_phase_times(self, publish_seconds: float) -> None:
        """This attempt's phase times for the next estimates: per image where the phase scales with images."""
        seconds, units = self.tracker.seconds_in, self.units()
        per_pass = {"training": self.epochs_this_attempt, "validating": self.validations, "testing": 1}
        measured = {"publishing": publish_seconds}
        if "loading" in seconds:
            measured["loading"] = seconds["loading"]
        for phase in sweeps.PER_IMAGE:
            images = units[phase] * per_pass[phase]
            if phase in seconds and images:
                measured[phase] = seconds[phase] / images
        PhaseTimes.in_artifacts(self.store.runs_dir.parent).record(sweeps.times_key(self.config), measured)

    def _tta_metrics(self) -> dict[str, SplitMetrics]:
        c, data = self.config, self.data
        return {name: evaluate(split.labels, tta_probabilities(self.model, split.images, c.arch), data.labels)
                for name, split in (("val", data.val), ("test", data.test))}


def train(config: RunConfig, store: RunStore | None = None, **kwargs: Any) -> Run:
    return Trainer(config, store or RunStore(), **kwargs).run()


def resume(run_id: str, store: RunStore | None = None, **kwargs: Any) -> Run:
    """Continue an interrupted run from its last completed epoch (a run already published is returned as it
    is, never trained again)."""
    store = store or RunStore()
    published = store.published(run_id)
    if published is not None:
        return published
    work = store.runs_dir / ".incomplete" / run_id
    config = RunConfig.from_dict(json.loads((work / "config.json").read_text()))
    return Trainer(config, store, run_id=run_id, **kwargs).run()
