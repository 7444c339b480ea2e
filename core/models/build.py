"""Build a classifier: backbone -> [attention] -> GlobalAveragePooling -> Dropout -> Dense -> softmax.

The result is one flat functional graph (the backbone is built on our input tensor, never nested as a
sub-model), so Grad-CAM can reach any inner layer by name. The Dense layer is named `logits` and is
followed by a softmax named `probabilities`, so explanations can use the pre-softmax score.

Normalisation (RunConfig.norm): the networks written here make each normalisation layer through
core.models.normalization; keras.applications builds BatchNorm inside its ResNets, so their GroupNorm variant is
Keras' model rebuilt layer by layer with each BatchNormalization replaced by a GroupNormalization of the same name
(`_group_norm_copy`): the same graph, the same layer names, still flat on our input tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from core.config import SETTINGS, RunConfig
from core.errors import UserFacingError
from core.models import architectures
from core.models.architectures import display_name
from core.models.compact_resnet import CompactResNet
from core.models.normalization import normalization_layer
from core.models.resnet18 import ResNet18

SCRATCH_BN_MOMENTUM = 0.9  # Keras' 0.99-0.999 lags far behind the weights on short schedules
# Backbones keras.applications lacks (registry: keras_builder None): (input tensor, config, weights) -> backbone
WRITTEN_HERE = {
    "resnet18": lambda x, config, weights: ResNet18(x, weights=weights, stem=config.resnet18_stem, norm=config.norm),
    "compactresnet": lambda x, config, weights: CompactResNet(x, weights=weights, width=config.width,
                                                             depth=config.depth, norm=config.norm),
}


class WeightsUnavailableError(UserFacingError, RuntimeError):
    pass


def _imagenet_message(arch: str, reason: str) -> str:
    return (
        f"ImageNet weights for {display_name(arch)} could not be downloaded by Keras ({reason}).\n"
        f"Choose one of:\n"
        f"  - train from scratch: weights 'none' (--weights none);\n"
        f"  - a local weights file for the backbone without its top: --weights PATH\n"
        f"    (or place Keras' own file in ~/.keras/models/ on this machine; Keras then finds it offline)."
    )


def attention_block(x, name: str = "attention"):
    """Channel (squeeze-and-excitation) then spatial attention over the backbone's feature map."""
    channels = x.shape[-1]
    squeeze = layers.GlobalAveragePooling2D(name=f"{name}_squeeze")(x)
    excite = layers.Dense(max(8, channels // 16), activation="relu", name=f"{name}_reduce")(squeeze)
    excite = layers.Dense(channels, activation="sigmoid", name=f"{name}_expand")(excite)
    excite = layers.Reshape((1, 1, channels), name=f"{name}_reshape")(excite)
    x = layers.Multiply(name=f"{name}_channel")([x, excite])
    spatial = layers.Conv2D(1, 7, padding="same", activation="sigmoid", name=f"{name}_spatial_map")(x)
    return layers.Multiply(name=f"{name}_out")([x, spatial])


def _weights_file_message(config: RunConfig, weights: str, error: Exception) -> str:
    norm = SETTINGS["norm"].value_name(config.norm)
    return (f"Could not load weights file {weights} into {display_name(config.arch)} with {norm}: it takes a file "
            f"saved from a {norm} {display_name(config.arch)} backbone. {error}")


def _group_norm_instead_of_batch_norm(layer: keras.layers.Layer) -> keras.layers.Layer:
    """For keras.models.clone_model: a GroupNormalization of the same name for a BatchNormalization, else a
    fresh copy of the layer (Keras' default: the same config, new weights)."""
    if isinstance(layer, layers.BatchNormalization):
        return normalization_layer("group", layer.input.shape[-1], layer.name)
    return layer.__class__.from_config(layer.get_config())


def _call_without_mask(layer: keras.layers.Layer, *args, **kwargs):
    """For keras.models.clone_model: call the copy as the original was called, less the `mask=None` Keras
    recorded for BatchNormalization (GroupNormalization's call takes no mask; these ResNets carry none)."""
    if kwargs.get("mask", False) is None:
        del kwargs["mask"]
    return layer(*args, **kwargs)


def _group_norm_copy(model: keras.Model) -> keras.Model:
    """`model` (built by keras.applications on our input tensor) rebuilt with GroupNorm for BatchNorm, on the
    same input tensor: the copy's layers replace the original's in the graph build_model goes on from."""
    return keras.models.clone_model(model, input_tensors=model.input,
                                    clone_function=_group_norm_instead_of_batch_norm,
                                    call_function=_call_without_mask)


def _backbone(config: RunConfig, inputs, weights: str | None):
    arch = config.arch
    spec = architectures.get(arch)
    if spec.keras_builder is None:
        if weights == "imagenet":
            raise WeightsUnavailableError(
                f"Keras has no ImageNet weights for {spec.name}. Train it from scratch (weights 'none') "
                "or give a local weights file.")
        try:
            return WRITTEN_HERE[arch](inputs, config, weights)
        except Exception as e:  # a file that is not this backbone's weights: same message as below
            if weights:
                raise WeightsUnavailableError(_weights_file_message(config, weights, e)) from None
            raise
    constructor = getattr(keras.applications, spec.keras_builder)
    try:
        if config.norm == "batch":
            return constructor(include_top=False, weights=weights, input_tensor=inputs)
        # GroupNorm: Keras' model is built without weights and copied with GroupNorm; a weights file (saved from
        # a GroupNorm model of this network) goes into the copy. ImageNet weights are BatchNorm's: config refuses.
        model = _group_norm_copy(constructor(include_top=False, weights=None, input_tensor=inputs))
        if weights:
            model.load_weights(weights)
        return model
    except WeightsUnavailableError:
        raise
    except Exception as e:  # Keras raises a bare Exception("URL fetch failure ...") when offline
        if weights == "imagenet" and ("fetch" in str(e).lower() or "url" in str(e).lower()
                                      or isinstance(e, OSError)):
            raise WeightsUnavailableError(_imagenet_message(arch, str(e).splitlines()[0][:200])) from None
        if weights not in (None, "imagenet"):
            raise WeightsUnavailableError(_weights_file_message(config, weights, e)) from None
        raise


def build_model(config: RunConfig, n_classes: int, image_size: int) -> keras.Model:
    weights = None if config.weights == "none" else config.weights
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    side = architectures.get(config.arch).upsample_to(image_size)
    if side is not None:
        x = layers.Resizing(side, side, interpolation="bilinear", name="upsample")(x)
    backbone = _backbone(config, x, weights)
    features = backbone.output
    if config.attention:
        features = attention_block(features)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = layers.Dropout(config.dropout, name="head_dropout")(x)
    x = layers.Dense(n_classes, dtype="float32", name="logits")(x)  # float32 head under mixed precision
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"{config.arch}_bloodcells")
    if config.from_scratch:
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    return model


def feature_layer_names(model: keras.Model) -> list[str]:
    """Names of layers with 4-D (spatial) outputs, in graph order: the candidates for CAM methods."""
    names = []
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and not isinstance(layer, layers.InputLayer):
            names.append(layer.name)
    return names


def last_conv_block(model: keras.Model) -> str:
    """The backbone's last spatial output (before attention and pooling): Grad-CAM's default layer."""
    names = [n for n in feature_layer_names(model) if not n.startswith("attention")]
    return names[-1]


@dataclass(frozen=True)
class CamLayer:
    """A layer worth explaining from: a block output, with its feature map's size."""

    name: str
    height: int
    width: int
    channels: int
    default: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} ({self.height}×{self.width}{', default' if self.default else ''})"


_BLOCK_SUFFIXES = ("_out", "_add", "_concat")


def cam_layers(model: keras.Model) -> list[CamLayer]:
    """The layers to offer for CAM methods: the last block output at each spatial size, in graph order.

    Block outputs are layers named like keras.applications' and our ResNet-18's (`*_out`), residual adds
    (`*_add`: MobileNetV3, EfficientNet) or dense-block concatenations (DenseNet); the backbone's last
    spatial layer (the default) and an attention block's output are always included. Maps of 1x1 (the
    squeeze-and-excitation pools) are left out: they have no spatial extent to show.
    """
    default = last_conv_block(model)
    by_size: dict[tuple[int, int], str] = {}
    extra = []
    for layer in model.layers:
        name = layer.name
        if name not in (default,) and not name.endswith(_BLOCK_SUFFIXES):
            continue
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is None or len(shape) != 4 or shape[1] is None or (min(shape[1], shape[2]) < 2 and name != default):
            continue
        if name.startswith("attention"):
            extra.append(layer)
            continue
        by_size[(shape[1], shape[2])] = name  # later layers of the same size replace earlier ones
    by_size[tuple(model.get_layer(default).output.shape[1:3])] = default
    names = set(by_size.values()) | {layer.name for layer in extra}
    out = []
    for layer in model.layers:
        if layer.name in names:
            _, h, w, c = layer.output.shape
            out.append(CamLayer(layer.name, int(h), int(w), int(c), layer.name == default))
    return out


def coarse_map_note(image_size: int, layer: CamLayer) -> str:
    """A sentence on how coarse a layer's map is for this input size."""
    cell = image_size / max(layer.height, 1)
    return (f"At {image_size} px, `{layer.name}` gives a {layer.height}×{layer.width} map: each cell covers "
            f"about {cell:.0f}×{cell:.0f} input pixels, so the heatmap is only a blur of "
            f"{layer.height * layer.width} values stretched over the image. Earlier blocks give finer maps but "
            f"see simpler features (edges, colour) rather than whole-cell evidence.")
