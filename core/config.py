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

from core.errors import UserFacingError

ARCHITECTURES = ("resnet18", "resnet50", "resnet101", "mobilenetv3small", "efficientnetb0", "densenet121")
DISPLAY_NAMES = {
    "resnet18": "ResNet-18", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
    "mobilenetv3small": "MobileNetV3-Small", "efficientnetb0": "EfficientNet-B0", "densenet121": "DenseNet-121",
}
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

    # a wrong type (say "0.1" in a hand-edited config.json) is a ConfigError, never a TypeError
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    need(isinstance(c.data, str), "data", "must be a file path or empty")
    need(c.arch in ARCHITECTURES, "arch", f"must be one of {', '.join(ARCHITECTURES)}")
    need(c.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    need(integer(c.size) and c.size in SIZES, "size", f"must be one of {SIZES}")
    need(isinstance(c.weights, str) and (c.weights in WEIGHT_CHOICES or bool(c.weights.strip())), "weights",
         "imagenet, none or a file path")
    need(not (c.arch in NO_IMAGENET_WEIGHTS and c.weights == "imagenet"), "weights",
         f"Keras has no ImageNet weights for {c.arch}; train from scratch (none) or give a weights file")
    if c.weights not in WEIGHT_CHOICES:
        need(os.path.isfile(c.weights), "weights", f"no such weights file: {c.weights}")
    need(integer(c.batch_size) and 1 <= c.batch_size <= 1024, "batch_size", "must be 1..1024")
    need(integer(c.epochs) and 1 <= c.epochs <= 1000, "epochs", "must be 1..1000")
    need(number(c.lr) and 0.0 < c.lr <= 1.0, "lr", "must be in (0, 1]")
    need(number(c.momentum) and 0.0 <= c.momentum < 1.0, "momentum", "must be in [0, 1)")
    need(number(c.dropout) and 0.0 <= c.dropout < 1.0, "dropout", "must be in [0, 1)")
    need(integer(c.patience) and c.patience >= 0, "patience", "must be >= 0 (0 = off)")
    need(integer(c.limit_train) and c.limit_train >= 0, "limit_train", "must be >= 0 (0 = all)")
    need(number(c.aug_shear) and 0.0 <= c.aug_shear <= 0.8, "aug_shear", "radians, must be in [0, 0.8]")
    need(number(c.aug_zoom) and 0.0 <= c.aug_zoom < 1.0, "aug_zoom", "must be in [0, 1)")
    need(c.bn_recalibration in BN_RECALIBRATION, "bn_recalibration", f"one of {BN_RECALIBRATION}")
    need(integer(c.bn_recalibration_batches) and c.bn_recalibration_batches >= 1,
         "bn_recalibration_batches", "must be >= 1")
    need(integer(c.seed) and 0 <= c.seed < 2**31, "seed", "must be in [0, 2^31)")
    for flag in ("attention", "class_weights", "aug_hflip", "aug_vflip", "aug_rot90", "deterministic"):
        need(isinstance(getattr(c, flag), bool), flag, "must be true or false")
    need(isinstance(c.tags, (tuple, list)) and all(isinstance(t, str) for t in c.tags), "tags",
         "must be a list of text labels")


# One line per field that teaches what it does: shown next to every input of the Train page and usable
# in classroom demos.
FIELD_HELP: dict[str, str] = {
    "data": "A MedMNIST-layout .npz file to train on; leave empty to use BloodMNIST at the chosen size.",
    "size": "Image side in pixels. Larger images show more detail of nucleus and granules but train slower.",
    "limit_train": "Train on only this many training images (same class mix) for quick runs; 0 uses all.",
    "arch": "The network. Deeper ResNets see more complex patterns; MobileNet and EfficientNet are light.",
    "weights": "Start from ImageNet-pretrained filters (transfer learning) or from random ones ('none').",
    "dropout": "Share of features randomly switched off in each training step; fights overfitting.",
    "attention": "Adds a block that learns which channels and image regions to emphasise.",
    "batch_size": "Images per weight update. Small batches add helpful noise; large ones are faster per image.",
    "epochs": "How many times the model sees the whole training set. The best epoch on validation is kept.",
    "optimizer": "The update rule: Adam and RMSprop adapt step sizes per weight; SGD uses one, with momentum.",
    "lr": "Learning rate: the size of each update step. Too large diverges, too small learns slowly.",
    "momentum": "SGD only: how much of the previous step carries into the next, smoothing the path.",
    "class_weights": "Weights the loss so rare cell types count as much as common ones.",
    "patience": "Stop after this many epochs without a better validation accuracy; 0 never stops early.",
    "aug_shear": "Random shear of training images, up to this many radians either way (0.2 rad = 11.5°).",
    "aug_zoom": "Random zoom of training images by a factor between 1-z and 1+z.",
    "aug_hflip": "Randomly mirror training images left-right (a cell has no left or right).",
    "aug_vflip": "Randomly mirror training images top-bottom (a cell has no up or down either).",
    "aug_rot90": "Randomly turn training images by 0, 90, 180 or 270 degrees.",
    "bn_recalibration": "Re-estimate BatchNorm statistics before each evaluation; 'auto' does it when "
                        "training from scratch, where stale statistics can make every prediction one class.",
    "bn_recalibration_batches": "How many training batches the BatchNorm re-estimate averages over.",
    "seed": "Random seed for data order, augmentation and initial weights; repeats use seed, seed+1, ...",
    "deterministic": "Use deterministic TensorFlow ops: the same seed then gives identical results (slower).",
    "tags": "Free labels to find and group runs on the results page.",
}
