"""The one external-evaluation flow, used by `python -m core external` and the External validation page:
score loaded images with one or more colour normalisations, and optionally fine-tune on part of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from core.validation.external.errors import ExternalError
from core.validation.external.finetune import FineTuneConfig, fine_tune
from core.validation.external.loading import ExternalImages
from core.validation.external.scoring import evaluate


def run_external(clf, data: ExternalImages, normalize: str = "none", *, compare: Sequence[str] = (),
                 fine_tune_config: FineTuneConfig | None = None, run_dir: str | Path | None = None,
                 store: bool = True, target=None) -> list[dict[str, Any]]:
    """Evaluate `data` with each method in `compare` (say "none", to compare against) and then `normalize`;
    returns the records in that order, the last one the main result. With `fine_tune_config`, a copy of the
    model is also fine-tuned on part of the data with the main normalisation, reported in the main record
    (and stored with it, when `store`). `target` (the run's colour statistics) is computed when needed."""
    from core.validation import stain  # noqa: PLC0415  (OpenCV only when images are scored)

    methods = [m for m in compare if m != normalize] + [normalize]
    for m in methods:
        if m not in stain.METHODS:
            raise ExternalError(f"--normalize must be one of {', '.join(stain.METHODS)}")
    run_dir = Path(run_dir or clf.run.path)
    if target is None and any(m != "none" for m in methods):
        target = stain.run_target(run_dir)
    records = [evaluate(clf, data, m, run_dir=run_dir, store=store, target=target) for m in methods]
    if fine_tune_config is not None:
        main = records[-1]
        main["fine_tune"] = fine_tune(clf, data, normalize, fine_tune_config, target=target, run_dir=run_dir,
                                      eval_id=main["id"] if store else None)
    return records
