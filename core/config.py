"""The one run configuration that flows from the form or command line to the job, training and the run store.

Every setting a user may change lives in `RunConfig`; everything else is fixed in code. Defaults are the
study's best recipe (ResNet-50 family, dropout 0.3, Adam 1e-4, no attention, no class weights), except
batch size 32 where the study picked it on validation (Table 1).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UserFacingError

ARCHITECTURES = ("resnet18", "resnet50", "resnet101", "mobilenetv3small", "efficientnetb0", "densenet121")
NO_IMAGENET_WEIGHTS = ("resnet18",)  # written here; keras.applications has none for it
OPTIMIZERS = ("adam", "rmsprop", "sgd")
SIZES = (28, 64, 128, 224)
WEIGHT_CHOICES = ("imagenet", "none")  # or a path to a local weights file
BN_RECALIBRATION = ("auto", "on", "off")


class ConfigError(UserFacingError, ValueError):
    """A configuration value is invalid; `field` names the offending field for forms."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class RunConfig:
    # Data
    data: str = ""  # path to a MedMNIST-layout .npz; empty means BloodMNIST at `size` from the data root
    size: int = 64
    limit_train: int = 0  # use only the first N (stratified) training images; 0 = all
    # Model
    arch: str = "resnet50"
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file for the backbone
    dropout: float = 0.3
    attention: bool = False
    # Optimisation
    batch_size: int = 32
    epochs: int = 10
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9  # SGD only
    class_weights: bool = False
    patience: int = 0  # early stopping on validation accuracy; 0 = off
    # Augmentation (applied to training batches only)
    aug_shear: float = 0.2  # radians, +-; the study's text says radians (its code used degrees)
    aug_zoom: float = 0.2  # zoom factor drawn from [1-z, 1+z] per axis
    aug_hflip: bool = True
    aug_vflip: bool = False
    aug_rot90: bool = False
    # BatchNorm statistics: "auto" re-estimates them before each evaluation for from-scratch runs
    bn_recalibration: str = "auto"
    bn_recalibration_batches: int = 50
    # Reproducibility
    seed: int = 0
    deterministic: bool = False
    # Free text labels for the results page; never used in paths
    tags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        validate(self)

    @staticmethod
    def default_weights(arch: str) -> str:
        return "none" if arch in NO_IMAGENET_WEIGHTS else "imagenet"

    @property
    def from_scratch(self) -> bool:
        return self.weights == "none"

    @property
    def recalibrate_bn(self) -> bool:
        if self.bn_recalibration == "auto":
            return self.from_scratch
        return self.bn_recalibration == "on"

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tags"] = list(self.tags)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown setting")
        kwargs = dict(d)
        if "tags" in kwargs:
            kwargs["tags"] = tuple(kwargs["tags"])
        return cls(**kwargs)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def validate(c: RunConfig) -> None:
    """Raise ConfigError naming the first invalid field."""

    def need(ok: bool, name: str, msg: str) -> None:
        if not ok:
            raise ConfigError(name, msg)

    need(c.arch in ARCHITECTURES, "arch", f"must be one of {', '.join(ARCHITECTURES)}")
    need(c.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    need(isinstance(c.size, int) and c.size in SIZES, "size", f"must be one of {SIZES}")
    need(c.weights in WEIGHT_CHOICES or bool(c.weights.strip()), "weights", "imagenet, none or a file path")
    need(not (c.arch in NO_IMAGENET_WEIGHTS and c.weights == "imagenet"), "weights",
         f"Keras has no ImageNet weights for {c.arch}; train from scratch (none) or give a weights file")
    if c.weights not in WEIGHT_CHOICES:
        need(os.path.isfile(c.weights), "weights", f"no such weights file: {c.weights}")
    need(isinstance(c.batch_size, int) and 1 <= c.batch_size <= 1024, "batch_size", "must be 1..1024")
    need(isinstance(c.epochs, int) and 1 <= c.epochs <= 1000, "epochs", "must be 1..1000")
    need(0.0 < c.lr <= 1.0, "lr", "must be in (0, 1]")
    need(0.0 <= c.momentum < 1.0, "momentum", "must be in [0, 1)")
    need(0.0 <= c.dropout < 1.0, "dropout", "must be in [0, 1)")
    need(isinstance(c.patience, int) and c.patience >= 0, "patience", "must be >= 0 (0 = off)")
    need(isinstance(c.limit_train, int) and c.limit_train >= 0, "limit_train", "must be >= 0 (0 = all)")
    need(0.0 <= c.aug_shear <= 0.8, "aug_shear", "radians, must be in [0, 0.8]")
    need(0.0 <= c.aug_zoom < 1.0, "aug_zoom", "must be in [0, 1)")
    need(c.bn_recalibration in BN_RECALIBRATION, "bn_recalibration", f"one of {BN_RECALIBRATION}")
    need(isinstance(c.bn_recalibration_batches, int) and c.bn_recalibration_batches >= 1,
         "bn_recalibration_batches", "must be >= 1")
    need(isinstance(c.seed, int) and 0 <= c.seed < 2**31, "seed", "must be in [0, 2^31)")
    need(all(isinstance(t, str) for t in c.tags), "tags", "must be text")
