"""The one external-evaluation flow, used by `python -m core external` and the External validation page:
score loaded images with one or more colour normalisations, and optionally fine-tune on part of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from core.validation.external.errors import ExternalError
from core.validation.external.finetune import FineTuneConfig, fine_tune
from core.validation.external.loading import ExternalImages
from core.validation.external.scoring import evaluate
from core.validation.external.storage import write_evaluation


def run_external(clf, data: ExternalImages, normalize: str = "none", *, compare: Sequence[str] = (),
                 fine_tune_config: FineTuneConfig | None = None, run_dir: str | Path | None = None,
                 store: bool = True, target=None) -> list[dict[str, Any]]:
    """Evaluate `data` with each method in `compare` (say "none", to compare against) and then `normalize`;
    returns the records in that order, the last one the main result. Only the main result is an evaluation of
    its own (stored when `store`): the comparisons are kept inside it (`compared`: {method: metrics}), so one
    request stores exactly one evaluation. With `fine_tune_config`, a copy of the model is also fine-tuned on
    part of the data with the main normalisation, reported in the main record (and stored with it, when
    `store`). `target` (the run's colour statistics) is computed when needed."""
    from core.validation import stain  # noqa: PLC0415  (OpenCV only when images are scored)

    methods = [m for m in compare if m != normalize] + [normalize]
    for m in methods:
        if m not in stain.METHODS:
            raise ExternalError(f"--normalize must be one of {', '.join(stain.METHODS)}")
    run_dir = Path(run_dir or clf.run.path)
    if target is None and any(m != "none" for m in methods):
        target = stain.run_target(run_dir)
    records = [evaluate(clf, data, m, run_dir=run_dir, store=False, target=target, keep_predictions=False)
               for m in methods[:-1]]
    main = evaluate(clf, data, normalize, run_dir=run_dir, store=False, target=target)
    if records:
        main["compared"] = {r["normalize"]: r["metrics"] for r in records}
    if store:
        main["stored_at"] = str(write_evaluation(run_dir, main))
    if fine_tune_config is not None:
        main["fine_tune"] = fine_tune(clf, data, normalize, fine_tune_config, target=target, run_dir=run_dir,
                                      eval_id=main["id"] if store else None)
    return [*records, main]
