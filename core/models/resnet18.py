"""ResNet-18 (He et al. 2016), MedMNIST's own baseline, which keras.applications lacks.

Basic blocks [2, 2, 2, 2] with widths 64-128-256-512. Inputs above 32 px get the usual 7x7/2 conv and 3x3/2
max-pool. For inputs of 32 px or less the stem is a RunConfig setting (`resnet18_stem`):

- "strided": a 3x3 conv with stride 2 and no max-pool, so stage 1 runs at half the input's side (14x14 at
  28 px): a quarter of the full-resolution stem's work in every later layer;
- "full": a 3x3 conv with stride 1 and no max-pool (MedMNIST's ResNet-18 at 28 px): stage 1 runs 64-channel
  3x3 convolutions at the full input resolution, the slowest choice on a CPU. Runs saved before the setting
  existed used it (RunConfig.from_dict keeps it for them).

Layer names follow keras.applications' ResNets (`conv5_block2_out` is the last block), so layer pickers and
Grad-CAM treat all ResNets alike; `conv_bn` and `basic_block` are shared with the compact ResNet. The layer after
each conv is BatchNorm or GroupNorm (RunConfig.norm, core.models.normalization), named `*_bn` either way.
"""

from __future__ import annotations

import keras
from keras import layers

from core.models.architectures import RESNET18_STEMS, get
from core.models.normalization import normalization_layer


def conv_bn(x, filters: int, kernel: int, stride: int, name: str, *, norm: str, relu: bool = True):
    """Conv (no bias) -> normalisation (`norm`: "batch" or "group") [-> ReLU], named `{name}_conv`, `{name}_bn`,
    `{name}_relu`."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = normalization_layer(norm, filters, f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def basic_block(x, filters: int, stride: int, name: str, *, norm: str):
    """Two 3x3 conv-norm layers plus a shortcut (1x1 projection where the shape changes); output `{name}_out`."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, stride, f"{name}_0", norm=norm, relu=False)
    y = conv_bn(x, filters, 3, stride, f"{name}_1", norm=norm)
    y = conv_bn(y, filters, 3, 1, f"{name}_2", norm=norm, relu=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def residual_stages(x, widths: tuple[int, ...], blocks: int, *, norm: str):
    """Stages `conv2`, `conv3`, ... of `blocks` basic blocks each; every stage after the first opens with
    stride 2. Block outputs are named `conv{stage}_block{m}_out`, which Grad-CAM's layer pickers look for."""
    for stage, filters in enumerate(widths, start=2):
        for block in range(1, blocks + 1):
            x = basic_block(x, filters, 2 if (block == 1 and stage > 2) else 1, f"conv{stage}_block{block}",
                            norm=norm)
    return x


def backbone(input_tensor, output, name: str, weights: str | None) -> keras.Model:
    """The backbone as a model on the caller's input tensor, with a local weights file loaded if given."""
    model = keras.Model(input_tensor, output, name=name)
    if weights:
        model.load_weights(weights)
    return model


def ResNet18(input_tensor, weights: str | None = None, stem: str = "strided", norm: str = "batch") -> keras.Model:
    """Backbone without head, built on `input_tensor` (so it joins the caller's graph flat)."""
    if stem not in RESNET18_STEMS:
        raise ValueError(f"unknown ResNet-18 stem {stem!r}; one of {RESNET18_STEMS}")
    size = input_tensor.shape[1]
    if size is not None and size <= get("resnet18").small_input_stem:
        x = conv_bn(input_tensor, 64, 3, 1 if stem == "full" else 2, "conv1", norm=norm)
    else:
        x = conv_bn(input_tensor, 64, 7, 2, "conv1", norm=norm)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
    return backbone(input_tensor, residual_stages(x, (64, 128, 256, 512), 2, norm=norm), "resnet18", weights)
