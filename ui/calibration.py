"""A run's calibrated confidence as Results and Classify show it: the temperature, ECE/NLL/Brier before and after
on each split, the 'unidentified' threshold chosen from its target on validation with the share of cells it sends
to review, a reliability diagram and a risk-coverage curve with the threshold marked.

A view over core.evaluation.calibration (it computes nothing itself): a run trained before calibration existed
is calibrated by the precompute step "calibration" in a background task (its model predicts the validation and
test splits once), drawn as a progress bar; Results starts it on a click (the page loads no model by itself),
Classify at once (its model is loaded anyway).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import tasks
from core.evaluation import calibration
from core.evaluation.calibration import Calibration
from core.inference import precompute
from ui.figures import SPLIT_TITLES, reliability_diagram, risk_coverage_plot
from ui.model import step_when_ready

STEP = "calibration"
COMMAND = "python -m core calibrate RUN_FOLDER"


def threshold_sentence(cal: Calibration) -> str:
    """'Unidentified below 0.912: 99% target met on validation (99.1% of the cells it accepts); it sends 6.2% of
    validation and 6.8% of test cells to review (accepted test cells 98.7% right).'"""
    u = cal.unidentified
    if not u.reachable:
        return (f"No threshold reaches the {u.target:.0%} target on validation: every cell would go to review "
                f"(threshold {u.threshold:.3f}).")
    text = (f"Unidentified below **{u.threshold:.3f}**: the {u.target:.0%} target is met on validation "
            f"({u.val_accepted_accuracy:.1%} of the cells it accepts are right); it sends "
            f"**{u.val_review_fraction:.1%}** of validation")
    if u.test_review_fraction is not None:
        text += f" and **{u.test_review_fraction:.1%}** of test cells to review"
        if u.test_accepted_accuracy is not None:
            text += f" (accepted test cells {u.test_accepted_accuracy:.1%} right)"
    return text + "."


def figures_table(cal: Calibration) -> pd.DataFrame:
    rows = []
    for split, s in (("val", cal.val), ("test", cal.test)):
        if s is None:
            continue
        rows.append({"split": SPLIT_TITLES[split], "cells": s.n, "ECE before": s.ece_before, "ECE after": s.ece_after,
                     "NLL before": s.nll_before, "NLL after": s.nll_after, "Brier before": s.brier_before,
                     "Brier after": s.brier_after})
    return pd.DataFrame(rows)


def _prepare(run_path: str | Path, what: str) -> Calibration | None:
    """The calibration step's value, with its bar while its background task runs (None meanwhile)."""
    return step_when_ready(run_path, STEP, what)


def calibration_section(run_path: str | Path, key: str, start: bool = False) -> Calibration | None:
    """The run's calibration: figures, threshold and the two plots; returns it (None: not calibrated yet). A run
    without it (or without the cached predictions the plots are drawn from) is prepared by the precompute step:
    at once with `start`, else on a click."""
    cal = calibration.stored(run_path)
    drawable = precompute.ready(run_path, STEP)
    if cal is None or not drawable:
        if start or tasks.get(precompute.task_key(STEP, run_path)) is not None:
            found = _prepare(run_path, "Calibrating the run's confidence once: its model predicts the validation "
                                       "and test splits…")
            cal, drawable = (found, True) if found is not None else (cal, False)
        elif cal is None:
            st.caption("This run's confidence is not calibrated yet (trained before calibration existed): its "
                       "probabilities are shown uncalibrated. Calibrating predicts its validation and test splits "
                       f"once (or from a terminal: `{COMMAND}`).")
        if not drawable and not start and st.button(
                "Calibrate this run" if cal is None else "Draw its reliability and risk–coverage plots",
                icon=":material/tune:", key=f"{key}_prepare",
                help="Its model predicts the validation and test splits once, in the background."):
            precompute.step_task(run_path, STEP)
            st.rerun()
    if cal is None:
        return None
    st.caption(f"Temperature **T = {cal.temperature:.3f}**, fitted on the validation split only (T > 1: the model "
               f"was over-confident). Probabilities everywhere in the dashboard are shown through it; accuracy "
               f"and the run's stored metrics do not change.")
    table = figures_table(cal)  # a static table: a handful of numbers, nothing to sort or scroll
    st.table(table.set_index("split").style.format({c: "{:.4f}" for c in table.columns if c not in ("split", "cells")}))
    st.markdown(threshold_sentence(cal))
    curves = calibration.curves(run_path, cal) if drawable else []
    if not curves:
        return cal
    left, right = st.columns(2)
    left.plotly_chart(reliability_diagram(curves), key=f"{key}_reliability")
    right.plotly_chart(risk_coverage_plot(curves, cal.unidentified.threshold, cal.unidentified.target),
                       key=f"{key}_risk_coverage")
    st.caption(f"Reliability: accuracy against confidence in {cal.n_bins} bins (on the diagonal: calibrated). "
               "Risk–coverage: the accuracy of the cells kept as fewer are kept, most confident first; the diamond "
               "marks the threshold chosen on validation.")
    return cal
