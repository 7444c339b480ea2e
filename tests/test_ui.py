"""The pages' shared UI module (ui/): escaping, enlarging, run labels, the confusion figures, the store guard
and the one cached classifier loader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from page_helpers import array, ok
from streamlit.testing.v1 import AppTest

from ui.figures import confusion_heatmap, difference_heatmap
from ui.images import enlarge
from ui.runs import run_label, run_labels
from ui.text import md_escape, plural


def test_md_escape_shows_paths_and_markup_literally():
    assert md_escape("/tmp/my_runs/index.sqlite") == r"/tmp/my\_runs/index.sqlite"
    assert md_escape("<urlopen error> $HOME *x* `y` [a](b)") == \
        r"\<urlopen error\> \$HOME \*x\* \`y\` \[a\](b)"
    assert md_escape("line one\nline two") == "line one  \nline two"
    assert md_escape(ValueError("a_b")) == r"a\_b"
    assert plural(1, "run") == "1 run" and plural(0, "run") == "0 runs" and plural(2, "job") == "2 jobs"


def test_enlarge_small_images_by_whole_factors_and_large_ones_to_size():
    small = np.arange(28 * 28 * 3, dtype=np.uint8).reshape(28, 28, 3)
    big = enlarge(small, 96)
    assert big.shape == (84, 84, 3)  # 3x: each pixel a 3x3 square
    assert (big[:3, :3] == small[0, 0]).all() and (big[81:, 81:] == small[27, 27]).all()
    assert enlarge(small, 320).shape == (308, 308, 3)  # 11x
    assert enlarge(small, 28) is small
    photo = np.full((363, 360, 3), 200, np.uint8)
    assert enlarge(photo, 320).shape == (320, 317, 3)  # longer side to 320, aspect kept
    assert enlarge(np.zeros((224, 224, 3), np.uint8), 320).shape == (320, 320, 3)
    grey = np.zeros((10, 20), np.uint8)
    assert enlarge(grey, 60).shape == (30, 60)


def test_run_labels_one_format_for_tables_and_store_rows():
    table = pd.DataFrame({"run_id": ["r1", "r2"], "arch": ["resnet50", "resnet18"], "size": [64, 28],
                          "batch_size": [32, 16], "val_accuracy": [0.97412, math.nan],
                          "status": ["complete", "running"]})
    labels = run_labels(table, best_id="r1")
    assert list(labels) == ["r1", "r2"]
    assert labels["r1"] == "ResNet-50 · 64 px · batch 32 · val 0.974 · r1 · best"
    assert labels["r2"] == "ResNet-18 · 28 px · batch 16 · running · r2"
    row = {"run_id": "r1", "arch": "resnet50", "size": 64, "batch_size": 32, "val_accuracy": 0.97412,
           "path": "/x"}
    assert run_label(row) == "ResNet-50 · 64 px · batch 32 · val 0.974 · r1"
    assert run_labels([row], best_id="r1") == {"r1": labels["r1"]}


def test_confusion_heatmap_shares_counts_and_rectangular_matrices():
    counts = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 3]])
    labels = ["a", "b", "c"]
    fig = confusion_heatmap(counts, labels, focus=["c"]).to_plotly_json()
    heat = fig["data"][0]
    assert array(heat["z"]) == pytest.approx(np.array([[0.8, 0.2, 0], [np.nan] * 3, [0.2, 0.2, 0.6]]),
                                             nan_ok=True)
    assert heat["text"][0] == ["8<br>80%", "2<br>20%", ""] and heat["text"][1] == ["", "", ""]
    assert heat["zmax"] == 1 and fig["layout"]["yaxis"]["ticktext"] == ["a", "b", "<b>c</b>"]
    by_count = confusion_heatmap(counts, labels, colour_by="count").to_plotly_json()["data"][0]
    assert array(by_count["z"]).tolist() == counts.tolist() and by_count.get("zmax") is None
    # a dataset with two of the model's three classes: rows and columns differ
    wide = confusion_heatmap(np.array([[5, 0, 1], [0, 2, 2]]), ["a", "c"], labels, title="T",
                             axes=("model's call", "reviewer's call")).to_plotly_json()
    assert wide["data"][0]["y"] == ["a", "c"] and wide["data"][0]["x"] == labels
    assert wide["layout"]["title"]["text"] == "T" and wide["layout"]["xaxis"]["title"]["text"] == "reviewer's call"
    assert "model's call %{y} → reviewer's call %{x}" in wide["data"][0]["hovertemplate"]


def test_difference_heatmap_is_symmetric_around_zero():
    diff = np.array([[0.1, -0.1], [-0.3, 0.3]])
    heat = difference_heatmap(diff, ["a", "b"]).to_plotly_json()["data"][0]
    assert heat["zmin"] == pytest.approx(-0.3) and heat["zmax"] == pytest.approx(0.3) and heat["zmid"] == 0
    assert heat["text"] == [["+10%", "-10%"], ["-30%", "+30%"]]
    assert difference_heatmap(np.zeros((2, 2)), ["a", "b"]).to_plotly_json()["data"][0]["zmax"] == 0.05


def guarded_page(stop: bool, error: str) -> None:
    import streamlit as st

    from core.errors import UserFacingError
    from ui.guard import guard

    with guard(stop=stop):
        if error == "user":
            raise UserFacingError("Could not read /tmp/a_b/index.sqlite: rebuild it with python -m core runs "
                                  "--reindex")
        if error == "bug":
            raise KeyError("a bug")
        st.write("inside")
    st.write("after")


@pytest.mark.parametrize("stop", [True, False])
def test_the_guard_shows_a_user_facing_error_and_stops_or_goes_on(stop):
    at = ok(AppTest.from_function(guarded_page, args=(stop, "user"), default_timeout=60).run())
    assert [e.value for e in at.error] == [r"Could not read /tmp/a\_b/index.sqlite: rebuild it with python -m "
                                           r"core runs --reindex"]
    assert [m.value for m in at.markdown] == ([] if stop else ["after"])
    at = ok(AppTest.from_function(guarded_page, args=(stop, "none"), default_timeout=60).run())
    assert [m.value for m in at.markdown] == ["inside", "after"] and not at.error


def test_the_guard_lets_bugs_through():
    at = AppTest.from_function(guarded_page, args=(True, "bug"), default_timeout=60).run()
    assert at.exception and "a bug" in at.exception[0].value and not at.error


def test_one_model_per_run_folder_for_every_page(trained_run, tmp_path):
    from core.inference.precompute import forget_model
    from ui.model import classifier

    forget_model(trained_run)
    link = tmp_path / "same-run"
    link.symlink_to(Path(trained_run))
    first = classifier(str(trained_run))
    assert classifier(Path(trained_run)) is first and classifier(link) is first
    assert first.image_size == 28 and len(first.labels) == 8
