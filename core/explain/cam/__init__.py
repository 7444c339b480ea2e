"""Class-activation-map explanations: one small class per method over a shared base (see base.py).

This module stays light (no TensorFlow) so menus can list the methods; `method(name)` imports one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import BaseCAM

# name -> (module, class, title for menus)
_METHODS = {
    "gradcam": ("gradcam", "GradCAM", "Grad-CAM"),
    "gradcampp": ("gradcampp", "GradCAMPlusPlus", "Grad-CAM++"),
    "hirescam": ("hirescam", "HiResCAM", "HiResCAM"),
    "scorecam": ("scorecam", "ScoreCAM", "Score-CAM"),
}
METHOD_NAMES = tuple(_METHODS)
METHOD_TITLES = {name: entry[2] for name, entry in _METHODS.items()}
# shown with a HiResCAM map whose explanation has `flat_gradients` (see base.py)
SAME_AS_GRADCAM_NOTE = ("HiResCAM gives exactly Grad-CAM's map here, and that is expected: at this layer the class "
                        "score's gradient is the same at every position (the layer feeds global average pooling "
                        "and the dense head directly), so Grad-CAM's averaging of the gradient over positions "
                        "loses nothing. Pick an earlier layer to see them differ.")


def method(name: str) -> "type[BaseCAM]":
    if name not in _METHODS:
        raise ValueError(f"unknown CAM method {name!r}; one of {METHOD_NAMES}")
    module, cls, _ = _METHODS[name]
    return getattr(importlib.import_module(f".{module}", __name__), cls)
