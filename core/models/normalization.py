"""The normalisation layer after a convolution: BatchNorm or GroupNorm (RunConfig.norm).

BatchNorm normalises each channel with statistics of the batch (and, at inference, with moving averages of
those statistics): they carry the colours of the lab the model was trained on. GroupNorm (Wu & He, "Group
Normalization", ECCV 2018) normalises each image by itself over groups of channels, so an image's output
never depends on the other images in its batch or on the training set's statistics, and it has no moving
statistics to go stale (the BatchNorm re-estimate, core.models.batchnorm, finds nothing to do).

Groups: Wu & He's default is 32 groups in every layer; their ResNet-50 then has 2 channels per group in its
64-channel layers, and one channel per group (instance normalisation) was clearly worse in their ablation.
`group_count` keeps 32 where the channels allow it and otherwise takes the largest divisor of the channel
count that leaves at least 2 channels per group (16 channels -> 8 groups, 24 -> 12, 56 -> 28), so every
channel count the networks here use gets a valid group count.
"""

from __future__ import annotations

from keras import layers

from core.config import NORMS

BN_EPSILON = 1.001e-5  # keras.applications' ResNets use it; ours (core.models.resnet18) do too
GN_EPSILON = 1e-5  # Wu & He's reference implementation
GN_GROUPS = 32
GN_MIN_CHANNELS_PER_GROUP = 2


def group_count(channels: int) -> int:
    """The number of GroupNorm groups for `channels`: the largest divisor of it that is at most GN_GROUPS
    and leaves at least GN_MIN_CHANNELS_PER_GROUP channels in each group."""
    if channels < GN_MIN_CHANNELS_PER_GROUP:
        raise ValueError(f"GroupNorm needs at least {GN_MIN_CHANNELS_PER_GROUP} channels, got {channels}")
    limit = min(GN_GROUPS, channels // GN_MIN_CHANNELS_PER_GROUP)
    return next(g for g in range(limit, 0, -1) if channels % g == 0)


def normalization_layer(norm: str, channels: int, name: str) -> layers.Layer:
    """The layer named `name` that normalises a `channels`-channel feature map: BatchNormalization ("batch",
    as the networks written here always had it) or GroupNormalization ("group")."""
    if norm == "batch":
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)
    if norm == "group":
        return layers.GroupNormalization(groups=group_count(channels), epsilon=GN_EPSILON, name=name)
    raise ValueError(f"unknown normalisation {norm!r}; one of {NORMS}")
