"""The one cached classifier loader: a run's model is loaded once per server and shared by every page.

TensorFlow loads inside the loader (through core.inference.classify), so importing this module is light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from core.inference.classifier import Classifier

MODELS_KEPT = 3  # models held in memory at once (each is tens to hundreds of MB)


@st.cache_resource(max_entries=MODELS_KEPT, show_spinner="Loading the model…")
def _load(run_dir: str) -> Classifier:
    from core.inference.classify import load_classifier  # noqa: PLC0415  (TensorFlow only when a model is needed)

    return load_classifier(run_dir)


def classifier(run_dir: str | Path) -> Classifier:
    """The run's model with prediction and the default Grad-CAM traced, cached by the run folder's real path
    (so `runs/<id>` reached two ways is one model). Raises UserFacingError for a missing or broken run."""
    return _load(str(Path(run_dir).resolve()))
