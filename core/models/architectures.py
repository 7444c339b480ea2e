"""The architecture registry: every fact about each backbone this project can train, in one place.

TensorFlow-free on purpose: the configuration, the job planner, the run store and the pages read it without
loading Keras; `core.models.build` and `core.models.preprocessing` turn the same facts into layers.

Adding an architecture is one `Architecture(...)` entry here (plus, for one written by hand, its builder in
`core.models`). Grad-CAM's default layer is not a per-architecture fact: it is read from the built graph
(`core.models.build.last_conv_block`, the backbone's last spatial output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

KERAS_MIN_SIZE = 32  # keras.applications backbones refuse smaller inputs
# ResNet-18's stems for inputs of 32 px or less (RunConfig.resnet18_stem; core.models.resnet18 builds them).
# The first is the default; "full" is the stride-1 stem of runs saved before the setting existed.
RESNET18_STEMS = ("strided", "full")
# The compact ResNet's settings (RunConfig.width: base channels, RunConfig.depth: basic blocks per stage)
COMPACT_WIDTHS = tuple(range(16, 65, 8))
COMPACT_DEPTHS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Architecture:
    key: str  # the RunConfig value, e.g. "resnet50"
    name: str  # display name, e.g. "ResNet-50"
    preprocessing: str  # "caffe" (BGR, ImageNet mean), "torch" (RGB, mean/std) or "builtin" (model rescales)
    imagenet_weights: bool  # keras.applications has ImageNet weights for it
    gflops_224: float  # forward GFLOPs at 224 px: the reference cost for time estimates
    keras_builder: str | None  # the keras.applications constructor; None: written here (core.models)
    # Inputs smaller than this are upsampled to it by a Resizing layer first (0: any size is taken as is).
    min_input: int = KERAS_MIN_SIZE
    # Inputs up to this size get a stem that downsamples less than the large-input one (0: never) ...
    small_input_stem: int = 0
    # ... keeping this many times the side the large-input stem keeps, by the value of the RunConfig setting
    # `stem_setting` (its first entry when the setting is not given)
    stem_setting: str = ""
    stem_gains: tuple[tuple[str, int], ...] = ()
    # (width, depth) that gflops_224 was counted at, for a backbone whose RunConfig.width/.depth are settings;
    # the cost of 3x3 convolutions grows with width squared and with depth
    width_depth: tuple[int, int] | None = None
    # GroupNorm can replace its BatchNorm layers (RunConfig.norm = "group"; core.models builds it)
    group_norm: bool = False
    # Mixed bfloat16 trains it faster than float32 on a CPU with bfloat16 instructions, so precision "auto"
    # picks it there. Measured on AVX512_BF16 against float32, same model and batches: the compact ResNet 1.39x
    # (trainer epochs, 28 px), ResNet-50 1.3x (84 against 65 img/s on one constant batch, 64 px, batch 32);
    # MobileNetV3-Small about 0.8x (depthwise convolutions, hard-swish and the casts around them); unmeasured
    # networks stay float32.
    cpu_bfloat16_faster: bool = False

    def effective_size(self, size: int, settings: Mapping[str, Any] | None = None) -> int:
        """The image side the backbone effectively computes on, for relative costs."""
        if size <= self.small_input_stem:
            gains = dict(self.stem_gains)
            return size * gains.get((settings or {}).get(self.stem_setting, ""), self.stem_gains[0][1])
        return max(size, self.min_input)

    def relative_cost(self, size: int, settings: Mapping[str, Any] | None = None) -> float:
        """Training cost per image: GFLOPs at 224 px scaled by the pixels actually computed on and, where
        width and depth are settings, by (width / reference)^2 x (depth / reference); `settings` are the
        run's RunConfig fields (a dict), defaults where absent."""
        cost = self.gflops_224 * (self.effective_size(size, settings) / 224) ** 2
        if self.width_depth:
            width, depth = self.width_depth
            cost *= ((settings or {}).get("width", width) / width) ** 2 * (settings or {}).get("depth", depth) / depth
        return cost

    def upsample_to(self, image_size: int) -> int | None:
        """The side a Resizing layer brings `image_size` inputs to, or None when none is needed."""
        return self.min_input if image_size < self.min_input else None


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("resnet18", "ResNet-18", "torch", imagenet_weights=False, gflops_224=1.8, keras_builder=None,
                 min_input=0, small_input_stem=32, stem_setting="resnet18_stem",
                 stem_gains=(("strided", 2), ("full", 4)), group_norm=True, cpu_bfloat16_faster=True),
    # counted for width 32, depth 2 (core.models.compact_resnet); stride-1 stem at 32 px or less
    Architecture("compactresnet", "Compact ResNet", "torch", imagenet_weights=False, gflops_224=1.3,
                 keras_builder=None, min_input=0, small_input_stem=32, stem_gains=(("", 2),), width_depth=(32, 2),
                 group_norm=True, cpu_bfloat16_faster=True),
    Architecture("resnet50", "ResNet-50", "caffe", imagenet_weights=True, gflops_224=4.1,
                 keras_builder="ResNet50", group_norm=True, cpu_bfloat16_faster=True),
    Architecture("resnet101", "ResNet-101", "caffe", imagenet_weights=True, gflops_224=7.8,
                 keras_builder="ResNet101", group_norm=True, cpu_bfloat16_faster=True),
    Architecture("mobilenetv3small", "MobileNetV3-Small", "builtin", imagenet_weights=True, gflops_224=0.06,
                 keras_builder="MobileNetV3Small"),
    Architecture("efficientnetb0", "EfficientNet-B0", "builtin", imagenet_weights=True, gflops_224=0.39,
                 keras_builder="EfficientNetB0"),
    Architecture("densenet121", "DenseNet-121", "torch", imagenet_weights=True, gflops_224=2.9,
                 keras_builder="DenseNet121"),
)
BY_KEY: dict[str, Architecture] = {a.key: a for a in ARCHITECTURES}
KEYS: tuple[str, ...] = tuple(BY_KEY)
GROUP_NORM_KEYS: tuple[str, ...] = tuple(a.key for a in ARCHITECTURES if a.group_norm)


def get(key: str) -> Architecture:
    """The registry entry; KeyError for a key that is not one (RunConfig validation rejects those first)."""
    return BY_KEY[key]


def display_name(key: str) -> str:
    """'resnet50' -> 'ResNet-50'; an unknown key (say from a hand-edited config) is shown as it is."""
    arch = BY_KEY.get(key)
    return arch.name if arch else key
