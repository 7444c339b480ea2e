"""The one run configuration that flows from the form or command line to the job, training and the run store.

Every setting a user may change lives in `RunConfig`; everything else is fixed in code. Defaults are the
study's best recipe (ResNet-50 family, dropout 0.3, Adam 1e-4, no attention, no class weights), except
batch size 32 where the study picked it on validation (Table 1).

Each field carries its `Setting` (label, help, form group and widget, CLI flag, sweepable, indexed, ...), and
`SETTINGS` lists them in field order: the command line's train flags, the Train page's form, the results
page's labels, the run index's columns and the study's shared fields are all generated from it. Adding a
setting is one field here (with its metadata) plus its use in training. No TensorFlow: architectures come
from the TF-free registry in core.models.architectures.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from core.errors import UserFacingError
from core.models import architectures

ARCHITECTURES = architectures.KEYS  # the registry's keys (core.models.architectures holds their facts)
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
LR_SCHEDULES = ("constant", "cosine", "onecycle")
# core.training.precision: what a machine runs; "auto" is the fastest this machine runs natively, chosen when
# the run starts (mixed bfloat16 on a GPU or a CPU with bfloat16 instructions, else float32)
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
SIZES = (28, 64, 128, 224)
WEIGHT_CHOICES = ("imagenet", "none")  # or a path to a local weights file
BN_RECALIBRATION = ("auto", "on", "off")
NORMS = ("batch", "group")  # the normalisation layers; "group" only where architectures say group_norm

# Form groups, in the order the Train page shows them (the command line groups its flags the same way).
DATA, MODEL, OPTIMISATION, AUGMENTATION, REPRODUCIBILITY = (
    "Data", "Model", "Optimisation", "Training images and augmentation", "BatchNorm and reproducibility")
PRECISION_AND_EVALUATION = "Precision and evaluation"


class ConfigError(UserFacingError, ValueError):
    """A configuration value is invalid; `field` names the offending field for forms."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Setting:
    """Everything the Train form, the command line, the results page and the run index know about one
    `RunConfig` field. Written once, beside the field (`setting(...)` below); `SETTINGS` fills in the field's
    name, type and default."""

    label: str  # short, for tables and the results page ("Learning rate")
    help: str  # one line that teaches what it does: the Train page's tooltip and the CLI's --help
    group: str  # the form group (DATA, MODEL, ...); also the CLI's flag group
    form_label: str = ""  # the Train form's label where it differs from `label`
    widget: str = ""  # "toggle", "int", "float", "text", "select", "tags", "weights", "data" ("" = from the type)
    choices: tuple[Any, ...] = ()  # the allowed values (a select on the form, argparse choices)
    value_names: Mapping[str, str] = field(default_factory=dict)  # value -> display name (forms, results)
    level: str = "{label} {value}"  # how a results matrix names one value: "{value} px", "{name}", ...
    step: float = 0.05  # float inputs: the +/- step
    flag: str = ""  # CLI spelling; "" = --name-with-dashes (a bool defaulting to True: --no-name)
    metavar: str | None = None  # CLI metavar
    cli_help: str = ""  # the CLI's help where its default differs from the form's ("" = `help`)
    cli_auto: bool = False  # the CLI derives an unset value (size from --data, weights from --arch)
    sweepable: bool = True  # offered as a sweep axis on the Train page
    indexed: bool = False  # has its own column in the run index (fast listing, speed estimates, CLI table)
    main: int = 0  # position among the fields the results page's pickers offer first (0: not among them)
    preview: bool = False  # always a column of the Train page's plan preview
    study: bool = False  # the study's tables record it (core.store.reference groups by these)
    # filled in from the dataclass field by SETTINGS:
    name: str = ""
    kind: type = str  # bool, int, float, str or tuple (tags)
    default: Any = None

    @property
    def form_text(self) -> str:
        return self.form_label or self.label

    @property
    def cli_flag(self) -> str:
        if self.flag:
            return self.flag
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.kind is bool and self.default is True else f"--{dashed}"

    def value_name(self, value: Any) -> str:
        return self.value_names.get(str(value), str(value))

    def describe(self, value: Any) -> str:
        """One value as a short human label: 'ResNet-50', '64 px', 'batch 32', 'no attention'."""
        label = self.label.lower()
        if self.kind is bool:
            return label if value else f"no {label}"
        text = format(value, "g") if isinstance(value, float) else str(value)
        name = self.value_names.get(text) or (os.path.basename(text) if self.widget == "weights" else text)
        return self.level.format(label=label, value=text, name=name)


def setting(default: Any = dataclasses.MISSING, **info: Any) -> Any:
    """A RunConfig field with its `Setting` (label, help, group, ...) as metadata."""
    if default == ():
        return field(default_factory=tuple, metadata={"setting": Setting(**info)})
    return field(default=default, metadata={"setting": Setting(**info)})


@dataclass(frozen=True)
class RunConfig:
    # Data
    data: str = setting(
        "", label="Data file", form_label="Path to a .npz file", group=DATA, widget="data", sweepable=False,
        help="A MedMNIST-layout .npz file to train on; leave empty to use BloodMNIST at the chosen size.",
        cli_help="a MedMNIST-layout npz (default: BloodMNIST at --size)", metavar="PATH")
    size: int = setting(
        64, label="Image size", group=DATA, widget="size", choices=SIZES, level="{value} px", indexed=True, main=2,
        preview=True, study=True, cli_auto=True,
        help="Image side in pixels. Larger images show more detail of nucleus and granules but train slower.",
        cli_help="image size; with --data it must match the file (default: taken from the file, else 64)")
    # Model
    arch: str = setting(
        "resnet50", label="Architecture", form_label="Network", group=MODEL, choices=architectures.KEYS,
        value_names={a.key: a.name for a in architectures.ARCHITECTURES}, level="{name}", indexed=True, main=1,
        preview=True, study=True,
        help="The network. Deeper ResNets see more complex patterns; MobileNet and EfficientNet are light.")
    weights: str = setting(  # "imagenet", "none" or a path to a weights file for the backbone
        "imagenet", label="Weights", form_label="Starting weights", group=MODEL, widget="weights",
        value_names={"imagenet": "ImageNet", "none": "from scratch"}, level="{name}", indexed=True, main=3,
        preview=True, study=True, cli_auto=True,
        help="Start from ImageNet-pretrained filters (transfer learning) or from random ones ('none').",
        cli_help="imagenet, none (from scratch) or PATH to a weights file (default: imagenet where Keras has it, "
                 "else none)")
    dropout: float = setting(
        0.3, label="Dropout", group=MODEL, indexed=True, main=8, study=True,
        help="Share of features randomly switched off in each training step; fights overfitting.")
    attention: bool = setting(
        False, label="Attention", form_label="Attention block", group=MODEL, indexed=True, main=9, study=True,
        help="Adds a block that learns which channels and image regions to emphasise.")
    norm: str = setting(
        "batch", label="Normalisation", group=MODEL, choices=NORMS,
        value_names={"batch": "BatchNorm", "group": "GroupNorm"}, level="{name}",
        help="BatchNorm normalises with statistics of the training images, which carry the training lab's "
             "colours; GroupNorm normalises each image by itself and holds up better on other labs' cells. "
             f"GroupNorm: {', '.join(architectures.display_name(k) for k in architectures.GROUP_NORM_KEYS)}, "
             "from scratch or a weights file.")
    resnet18_stem: str = setting(  # RunConfig.from_dict gives saved configs without it "full" (their stem)
        "strided", label="ResNet-18 stem", group=MODEL, choices=architectures.RESNET18_STEMS,
        value_names={"strided": "strided 3x3/2", "full": "full-resolution 3x3/1"}, level="{name} stem",
        help="ResNet-18 only, inputs of 32 px or less: 'strided' starts with a stride-2 3x3 convolution (about 4x "
             "faster); 'full' keeps every pixel (MedMNIST's stem, slow on a CPU). Larger inputs: ImageNet stem.")
    width: int = setting(
        32, label="Width", form_label="Width (Compact ResNet only)", group=MODEL,
        choices=architectures.COMPACT_WIDTHS, level="width {value}",
        help="Compact ResNet only: channels of its first stage (the next two have 2x and 4x). Cost grows with "
             "width squared; 32 has about 0.7 M parameters.")
    depth: int = setting(
        2, label="Depth", form_label="Depth (Compact ResNet only)", group=MODEL,
        choices=architectures.COMPACT_DEPTHS, level="depth {value}",
        help="Compact ResNet only: residual blocks in each of its three stages (3 with width 16 is ResNet-20).")
    # Optimisation
    optimizer: str = setting(
        "adam", label="Optimizer", group=OPTIMISATION, choices=OPTIMIZERS,
        value_names={"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}, level="{name}",
        indexed=True, main=5, preview=True, study=True,
        help="The update rule: Adam and RMSprop adapt step sizes per weight; SGD uses one, with momentum. AdamW "
             "is Adam with decoupled weight decay.")
    lr: float = setting(
        1e-4, label="Learning rate", group=OPTIMISATION, step=1e-5, level="lr {value}", indexed=True, main=6,
        preview=True, study=True,
        help="Learning rate: the size of each update step. Too large diverges, too small learns slowly.")
    lr_schedule: str = setting(
        "constant", label="LR schedule", form_label="Learning-rate schedule", group=OPTIMISATION,
        choices=LR_SCHEDULES, value_names={"constant": "constant", "cosine": "cosine (warm-up)",
                                           "onecycle": "one-cycle"}, level="{name} lr",
        help="How the learning rate changes each step: constant; cosine (linear warm-up to the rate, then down "
             "to 0 by the last epoch); one-cycle (up from rate/25 over 30% of steps, then far down).")
    warmup_epochs: int = setting(
        0, label="Warm-up epochs", form_label="Warm-up epochs (cosine only)", group=OPTIMISATION,
        help="Cosine schedule only: epochs over which the rate rises linearly from near 0 to its full value.")
    momentum: float = setting(  # SGD only
        0.9, label="Momentum", form_label="Momentum (SGD only)", group=OPTIMISATION, main=7, study=True,
        help="SGD only: how much of the previous step carries into the next, smoothing the path.")
    weight_decay: float = setting(
        0.0, label="Weight decay", form_label="Weight decay (not Adam)", group=OPTIMISATION, step=1e-4,
        level="weight decay {value}",
        help="AdamW, SGD and RMSprop: decoupled weight decay, each step shrinks every weight by the fraction "
             "rate x decay; 0 is off. Adam ignores it (AdamW is Adam with it).")
    label_smoothing: float = setting(
        0.0, label="Label smoothing", group=OPTIMISATION, level="label smoothing {value}",
        help="Train towards 1 - s on the true class plus s shared equally by all classes, instead of a hard 1: "
             "less over-confident models. 0 is off; 0.1 is usual.")
    ema: bool = setting(
        False, label="Weight averaging", form_label="Weight averaging (EMA)", group=OPTIMISATION,
        help="Evaluate and keep a moving average of the weights instead of the last ones: steadier, often "
             "slightly better models.")
    ema_decay: float = setting(
        0.999, label="EMA decay", form_label="EMA decay (weight averaging only)", group=OPTIMISATION, step=0.001,
        help="Weight averaging only: the average's memory, about 1 / (1 - decay) steps (0.999: the last 1000).")
    batch_size: int = setting(
        32, label="Batch size", group=OPTIMISATION, level="batch {value}", indexed=True, main=4, preview=True,
        study=True,
        help="Images per weight update. Small batches add helpful noise; large ones are faster per image.")
    epochs: int = setting(
        10, label="Epochs", group=OPTIMISATION, indexed=True, main=11, preview=True,
        help="How many times the model sees the whole training set. The best epoch on validation is kept.")
    patience: int = setting(  # early stopping on validation accuracy; 0 = off
        0, label="Patience", form_label="Early-stop patience", group=OPTIMISATION,
        help="Stop after this many epochs without a better validation accuracy; 0 never stops early.")
    class_weights: bool = setting(
        False, label="Class weights", form_label="Class-weighted loss", group=OPTIMISATION, indexed=True, main=10,
        study=True, help="Weights the loss so rare cell types count as much as common ones.")
    # Training images and augmentation (applied to training batches only)
    limit_train: int = setting(  # use only the first N (stratified) training images; 0 = all
        0, label="Training images", form_label="Training images (0 = all)", group=AUGMENTATION, metavar="N",
        main=12, preview=True, value_names={"0": "all"}, level="{name} training images",
        help="Train on only this many training images (same class mix) for quick runs; 0 uses all.")
    aug_shear: float = setting(  # radians, +-; the study's text says radians (its code used degrees)
        0.2, label="Shear (radians)", group=AUGMENTATION,
        help="Random shear of training images, up to this many radians either way (0.2 rad = 11.5°).")
    aug_zoom: float = setting(  # zoom factor drawn from [1-z, 1+z] per axis
        0.2, label="Zoom range", group=AUGMENTATION,
        help="Random zoom of training images by a factor between 1-z and 1+z.")
    aug_hflip: bool = setting(
        True, label="Mirror left-right", group=AUGMENTATION, flag="--no-hflip", cli_help="no left-right mirroring",
        help="Randomly mirror training images left-right (a cell has no left or right).")
    aug_vflip: bool = setting(
        False, label="Mirror top-bottom", group=AUGMENTATION, flag="--vflip",
        help="Randomly mirror training images top-bottom (a cell has no up or down either).")
    aug_rot90: bool = setting(
        False, label="Turn by 90°", group=AUGMENTATION, flag="--rot90",
        help="Randomly turn training images by 0, 90, 180 or 270 degrees.")
    aug_scale: float = setting(  # isotropic: the cell's size times a log-uniform factor in [1/(1+s), 1+s]
        0.0, label="Scale range", group=AUGMENTATION,
        help="Random rescaling of training images by a factor between 1/(1+s) and 1+s, so the model sees cells "
             "that fill the frame as well as small ones; 0 is off.")
    aug_stain: float = setting(  # H and E concentrations x U[1-s, 1+s], + U[-s, s] x 0.5 OD (color_augment.STAIN_BIAS)
        0.0, label="Stain jitter", group=AUGMENTATION,
        help="Random change of each image's haematoxylin and eosin stain amounts (by colour deconvolution), up "
             "to this fraction, as another lab's staining would; 0 is off.")
    aug_brightness: float = setting(  # factor U[1-b, 1+b] (torchvision ColorJitter's meaning)
        0.0, label="Brightness jitter", group=AUGMENTATION,
        help="Random brightness factor between 1-b and 1+b; 0 is off.")
    aug_contrast: float = setting(
        0.0, label="Contrast jitter", group=AUGMENTATION,
        help="Random contrast factor between 1-c and 1+c; 0 is off.")
    aug_saturation: float = setting(
        0.0, label="Saturation jitter", group=AUGMENTATION,
        help="Random colour saturation factor between 1-s and 1+s; 0 is off.")
    aug_hue: float = setting(  # shift in [-h, h] turns of the hue circle, h <= 0.5
        0.0, label="Hue jitter", group=AUGMENTATION,
        help="Random hue shift of up to this fraction of the colour circle either way (at most 0.5); 0 is off.")
    aug_blur: float = setting(  # Gaussian blur with sigma U[0, b] pixels
        0.0, label="Blur (pixels)", group=AUGMENTATION,
        help="Random Gaussian blur with a sigma of up to this many pixels, as a slightly defocused microscope "
             "gives; 0 is off.")
    aug_noise: float = setting(  # additive Gaussian noise, std U[0, n] x 255
        0.0, label="Noise", group=AUGMENTATION,
        help="Random Gaussian pixel noise with a standard deviation of up to this fraction of the pixel range; "
             "0 is off.")
    # Numeric precision and evaluation
    precision: str = setting(
        "auto", label="Precision", group=PRECISION_AND_EVALUATION, choices=PRECISIONS,
        value_names={"auto": "auto (fastest here)", "float32": "float32", "mixed_bfloat16": "mixed bfloat16",
                     "mixed_float16": "mixed float16"},
        help="Number format of the computations: auto (mixed bfloat16 where this machine runs it natively, else "
             "float32; the run records which); float32; mixed bfloat16 (faster on CPUs with bfloat16 "
             "instructions and on GPUs); mixed float16 (GPUs only). Weights and the output stay float32.")
    tta: bool = setting(
        False, label="Test-time augmentation", group=PRECISION_AND_EVALUATION,
        help="Also report validation and test figures averaged over flips and 90° turns of each image, beside "
             "the plain ones (which still pick the best epoch).")
    # BatchNorm statistics: "auto" re-estimates them before each evaluation for from-scratch runs
    bn_recalibration: str = setting(
        "auto", label="BatchNorm re-estimate", group=REPRODUCIBILITY, choices=BN_RECALIBRATION,
        value_names={"auto": "auto (from scratch or averaged)", "on": "on", "off": "off"},
        help="Re-estimate BatchNorm statistics before each evaluation; 'auto' does it when training from "
             "scratch, where stale statistics can make every prediction one class, and with weight averaging "
             "(the running statistics belong to the raw weights, not the averaged ones).")
    bn_recalibration_batches: int = setting(
        50, label="Re-estimate batches", group=REPRODUCIBILITY,
        help="How many training batches the BatchNorm re-estimate averages over.")
    # Reproducibility
    seed: int = setting(  # seeds are varied with repeats, never swept
        0, label="Seed", group=REPRODUCIBILITY, sweepable=False, indexed=True, main=13, preview=True,
        help="Random seed for data order, augmentation and initial weights; repeats use seed, seed+1, ...")
    deterministic: bool = setting(
        False, label="Deterministic ops", group=REPRODUCIBILITY,
        help="Use deterministic TensorFlow ops: the same seed then gives identical results (slower).")
    # Free text labels for the results page; never used in paths
    tags: tuple[str, ...] = setting(
        (), label="Tags", form_label="Tags (comma separated)", group=REPRODUCIBILITY, widget="tags", flag="--tag",
        sweepable=False, indexed=True, help="Free labels to find and group runs on the results page.",
        cli_help="a label for the results page (repeatable)")

    def __post_init__(self) -> None:
        validate(self)

    @staticmethod
    def default_weights(arch: str, norm: str = "batch") -> str:
        """ImageNet where Keras has it (for BatchNorm networks: its weights were trained with BatchNorm),
        else from scratch."""
        return "imagenet" if architectures.get(arch).imagenet_weights and norm == "batch" else "none"

    @property
    def from_scratch(self) -> bool:
        return self.weights == "none"

    @property
    def recalibrate_bn(self) -> bool:
        if self.norm == "group":
            return False  # GroupNorm keeps no batch statistics to re-estimate
        if self.bn_recalibration == "auto":
            return self.from_scratch or self.ema
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
        if kwargs.get("arch") == "resnet18":  # saved before the setting: keep the stride-1 stem it was built with
            kwargs.setdefault("resnet18_stem", "full")
        kwargs.setdefault("precision", "float32")  # saved before the setting: it ran in float32
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
    need(not (c.weights == "imagenet" and not architectures.get(c.arch).imagenet_weights), "weights",
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
    for name, high in (("aug_scale", 1.5), ("aug_stain", 1.0), ("aug_brightness", 0.99), ("aug_contrast", 0.99),
                       ("aug_saturation", 0.99), ("aug_hue", 0.5), ("aug_blur", 3.0), ("aug_noise", 0.2)):
        value = getattr(c, name)
        need(number(value) and 0.0 <= value <= high, name, f"must be in [0, {high:g}]")
    need(c.norm in NORMS, "norm", f"must be one of {', '.join(NORMS)}")
    if c.norm == "group":
        need(c.arch not in architectures.KEYS or architectures.get(c.arch).group_norm, "norm",
             f"GroupNorm is built for {', '.join(architectures.GROUP_NORM_KEYS)}; {c.arch} keeps BatchNorm")
        need(c.weights != "imagenet", "norm",
             "ImageNet weights were trained with BatchNorm; a GroupNorm model trains from scratch (none) or "
             "from a weights file")
    need(c.resnet18_stem in architectures.RESNET18_STEMS, "resnet18_stem",
         f"must be one of {', '.join(architectures.RESNET18_STEMS)}")
    need(integer(c.width) and c.width in architectures.COMPACT_WIDTHS, "width",
         f"must be a multiple of 8 in {architectures.COMPACT_WIDTHS[0]}..{architectures.COMPACT_WIDTHS[-1]}")
    need(integer(c.depth) and c.depth in architectures.COMPACT_DEPTHS, "depth",
         f"must be {architectures.COMPACT_DEPTHS[0]}..{architectures.COMPACT_DEPTHS[-1]}")
    need(c.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}")
    need(integer(c.warmup_epochs) and c.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
    need(c.lr_schedule != "cosine" or not integer(c.epochs) or c.warmup_epochs < c.epochs, "warmup_epochs",
         "must be fewer than the epochs (the cosine decay follows the warm-up)")
    need(number(c.weight_decay) and 0.0 <= c.weight_decay < 1.0, "weight_decay", "must be in [0, 1)")
    need(number(c.label_smoothing) and 0.0 <= c.label_smoothing <= 0.5, "label_smoothing", "must be in [0, 0.5]")
    need(number(c.ema_decay) and 0.0 < c.ema_decay < 1.0, "ema_decay", "must be in (0, 1)")
    need(c.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
    need(c.bn_recalibration in BN_RECALIBRATION, "bn_recalibration", f"one of {BN_RECALIBRATION}")
    need(integer(c.bn_recalibration_batches) and c.bn_recalibration_batches >= 1,
         "bn_recalibration_batches", "must be >= 1")
    need(integer(c.seed) and 0 <= c.seed < 2**31, "seed", "must be in [0, 2^31)")
    for s in SETTINGS.values():
        if s.kind is bool:
            need(isinstance(getattr(c, s.name), bool), s.name, "must be true or false")
    need(isinstance(c.tags, (tuple, list)) and all(isinstance(t, str) for t in c.tags), "tags",
         "must be a list of text labels")


_KINDS = {"bool": bool, "int": int, "float": float, "str": str}


def _settings() -> dict[str, Setting]:
    out = {}
    for f in fields(RunConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        kind = _KINDS.get(str(f.type), tuple)
        out[f.name] = dataclasses.replace(f.metadata["setting"], name=f.name, kind=kind, default=default)
    return out


# Every setting, in the order of RunConfig's fields: the one list forms, flags, tables and the index read.
SETTINGS: dict[str, Setting] = _settings()


def settings_in(group: str) -> list[Setting]:
    return [s for s in SETTINGS.values() if s.group == group]


def groups() -> list[str]:
    """The form groups in the order their first setting appears."""
    return list(dict.fromkeys(s.group for s in SETTINGS.values()))
