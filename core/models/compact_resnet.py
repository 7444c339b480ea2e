"""A compact ResNet for 28-64 px cells on a CPU: CIFAR-style ResNet (He et al. 2016, section 4.2) widened.

Stem: one 3x3 conv with `width` channels, stride 1 for inputs of 32 px or less and stride 2 above (so the
stages compute on 28x28 at 28 px and 32x32 at 64 px). Then three stages of `depth` basic blocks with `width`,
2x`width` and 4x`width` channels, the second and third starting with stride 2: the last map is 7x7 at 28 px
and 8x8 at 64 px, finer than ResNet-18's for Grad-CAM. With width 16 and depth 3 this is ResNet-20 (0.27 M
parameters); the defaults (width 32, depth 2) have about 0.7 M, ResNet-18 about 11 M.

Layer names follow the ResNets' (`conv1_*` stem, `conv{2,3,4}_block{m}_out` blocks, a normalisation layer
`*_bn` after every conv: BatchNorm, or GroupNorm with RunConfig.norm "group"), so Grad-CAM's layer pickers and
the BatchNorm re-estimate find them like ResNet-18's.
"""

from __future__ import annotations

import keras

from core.models.architectures import COMPACT_DEPTHS, COMPACT_WIDTHS, get
from core.models.resnet18 import backbone, conv_bn, residual_stages


def CompactResNet(input_tensor, weights: str | None = None, width: int = 32, depth: int = 2,
                  norm: str = "batch") -> keras.Model:
    """Backbone without head, built on `input_tensor` (so it joins the caller's graph flat)."""
    if width not in COMPACT_WIDTHS or depth not in COMPACT_DEPTHS:
        raise ValueError(f"compact ResNet: width {width} / depth {depth} out of range")
    size = input_tensor.shape[1]
    small = size is not None and size <= get("compactresnet").small_input_stem
    x = conv_bn(input_tensor, width, 3, 1 if small else 2, "conv1", norm=norm)
    return backbone(input_tensor, residual_stages(x, (width, 2 * width, 4 * width), depth, norm=norm),
                    "compactresnet", weights)
