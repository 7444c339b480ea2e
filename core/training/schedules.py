"""Learning-rate schedules, per optimizer step: constant, cosine decay after a linear warm-up, one-cycle.

`learning_rate(config, steps_per_epoch)` gives what an optimizer takes: the plain float for "constant" (as
runs before schedules existed), else a `StepSchedule`. The optimizer calls it with its own step counter,
which a checkpoint keeps, so a resumed run continues the schedule where it stopped.

- cosine: the rate rises linearly over `warmup_epochs` to `lr` ((step + 1) / warm-up steps of it), then
  falls along half a cosine to 0 at the end of the last epoch.
- onecycle: PyTorch's OneCycleLR defaults: from lr/25 up to lr over the first 30% of steps, then down to
  lr/25/1e4 at the last step, both halves along a cosine.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from core.config import RunConfig

ONECYCLE_RISE = 0.3  # share of steps spent rising
ONECYCLE_START_DIV = 25.0  # start = lr / 25
ONECYCLE_FINAL_DIV = 1e4  # final = start / 1e4


@keras.saving.register_keras_serializable(package="cellscope")
class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate at an optimizer step (0-based) for `kind` "cosine" or "onecycle"."""

    def __init__(self, kind: str, peak: float, total_steps: int, warmup_steps: int = 0):
        if kind not in ("cosine", "onecycle"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.kind = kind
        self.peak = float(peak)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))

    def __call__(self, step):
        s = ops.cast(step, "float32")
        if self.kind == "cosine":
            warm = float(self.warmup_steps)
            rising = self.peak * (s + 1.0) / max(warm, 1.0)
            progress = ops.minimum(1.0, (s - warm) / max(float(self.total_steps) - warm, 1.0))
            falling = self.peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
            return ops.where(s < warm, rising, falling)
        start = self.peak / ONECYCLE_START_DIV
        final = start / ONECYCLE_FINAL_DIV
        rise = float(max(1, round(ONECYCLE_RISE * self.total_steps)))
        up = ops.minimum(1.0, s / rise)
        down = ops.minimum(1.0, ops.maximum(0.0, s - rise) / max(float(self.total_steps) - 1.0 - rise, 1.0))
        rising = start + (self.peak - start) * 0.5 * (1.0 - ops.cos(math.pi * up))
        falling = final + (self.peak - final) * 0.5 * (1.0 + ops.cos(math.pi * down))
        return ops.where(s < rise, rising, falling)

    def get_config(self) -> dict:
        return {"kind": self.kind, "peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


def learning_rate(config: RunConfig, steps_per_epoch: int) -> float | StepSchedule:
    """What the run's optimizer takes as its learning rate."""
    if config.lr_schedule == "constant":
        return config.lr
    return StepSchedule(config.lr_schedule, config.lr, config.epochs * steps_per_epoch,
                        config.warmup_epochs * steps_per_epoch if config.lr_schedule == "cosine" else 0)
