"""The feature map as pages draw it (core.explain.embedding): its points as a table, the Vega-Lite chart (colour:
true class; wrong calls as larger crosses; hover: the cell's thumbnail, its classes and confidence; click:
picks the point), and an uploaded cell on the map beside its nearest training images (Classify).

The map's file is read once per server and file version (`st.cache_resource`: the page never changes it), so
reruns only filter the table and build the chart. A run without its map gets it from a background task
(core.inference.precompute, through ui.model), with its progress where the map would be.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import streamlit as st

from core import tasks
from core.data.registry import short_label
from core.errors import UserFacingError
from core.explain import embedding
from core.inference import precompute
from ui.model import step_when_ready
from ui.progress import await_task, task_result
from ui.text import md_escape

if TYPE_CHECKING:
    from core.inference.classifier import Classifier

STEP = "embedding_map"
RESULTS = ("correct", "wrong")
SHAPES = ("circle", "cross")  # correct, wrong
SIZES = (22, 70)
OPACITY = (0.5, 0.95)
HEIGHT = 560
UPLOAD_COLOUR = "#111111"
THUMB_SHOWN_PX = 96


def explanation(method: str) -> str:
    """What the map shows, and how far to trust its distances."""
    title = embedding.METHOD_TITLES.get(method, method)
    local = ("Distances are only meaningful locally: neighbours on the map are neighbours to the network, but the "
             "gaps between clusters and their sizes mean little." if method != "pca" else
             "PCA keeps the two directions of largest spread, so points that overlap here may still be apart in "
             "the other directions.")
    return (f"Each point is one test image, placed by the features the network computes just before its classifier "
            f"({title} reduces them to two dimensions). Colour: the true class; larger crosses: wrong calls. "
            f"Cells the network finds alike sit together, so classes it confuses overlap. {local} Hover over a "
            "point to see the cell; click it to see the cell and its Grad-CAM below.")


# -- the map's data ---------------------------------------------------------------------------------------
def _version(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


@st.cache_resource(show_spinner=False, max_entries=4)
def _read(version: tuple[str, int, int]) -> embedding.EmbeddingMap | None:
    return embedding.cached(Path(version[0]).parent)


def map_when_ready(run_dir: str | Path) -> embedding.EmbeddingMap | None:
    """The run's map: read from its file (once per file version), or None with a background task making it
    (a missing or damaged file) and its progress bar here. UserFacingError (under a "Try again" button) when
    it cannot be made."""
    path = Path(run_dir) / embedding.MAP_FILE
    what = ("Mapping this run's test images once (their features, then "
            f"{embedding.METHOD_TITLES[embedding.default_method()]}; kept in its folder). The map appears when it "
            "is done.")
    if not path.is_file():
        return step_when_ready(run_dir, STEP, what)
    found = _read(_version(path))
    if found is not None:
        return found
    task = precompute.step_task(run_dir, STEP)  # damaged or from another version: made again in the background
    if task.running:
        await_task(task, what)
        return None
    return task_result(task)


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _frame(emap: embedding.EmbeddingMap) -> pd.DataFrame:
    names = np.asarray(short_labels(emap), dtype=object)
    return pd.DataFrame({
        "index": np.arange(len(emap)), "x": emap.xy[:, 0], "y": emap.xy[:, 1],
        "true": names[emap.y_true], "predicted": names[emap.y_pred],
        "confidence": emap.confidence.astype(float),
        "result": np.where(emap.correct, RESULTS[0], RESULTS[1]),
        "image": [data_url(t) for t in emap.thumbnails()]})


@st.cache_resource(show_spinner=False, max_entries=4)
def _points(version: tuple[str, int, int], _emap: embedding.EmbeddingMap) -> pd.DataFrame:
    return _frame(_emap)


def points(emap: embedding.EmbeddingMap) -> pd.DataFrame:
    """One row a test image, in order (row i: test image i): index, x, y, true, predicted, confidence, result
    ("correct"/"wrong") and image (its thumbnail as a data URL, shown on hover). Shared: do not modify."""
    if emap.path is None or not emap.path.is_file():
        return _frame(emap)  # not read from a file: nothing to key a cache on
    return _points(_version(emap.path), emap)


def short_labels(emap: embedding.EmbeddingMap) -> list[str]:
    return [short_label(x) for x in emap.labels]


# -- the chart ---------------------------------------------------------------------------------------------
def _domain(values: np.ndarray) -> list[float]:
    low, high = float(np.min(values)), float(np.max(values))
    pad = 0.04 * (high - low or 1.0)
    return [low - pad, high + pad]


def _field(name: str, kind: str, title: str, **extra: Any) -> dict[str, Any]:
    return {"field": name, "type": kind, "title": title, **extra}


def chart(emap: embedding.EmbeddingMap, upload: pd.DataFrame | None = None, pick: bool = True,
          images: bool = True) -> dict[str, Any]:
    """The Vega-Lite spec of the map, for `st.vega_lite_chart(rows, spec)` with rows from `points` (all or a
    subset): its axes fixed to the whole map so filtering never moves a point; hover shows the thumbnail (the
    "image" field, with `images`), the test image's number, classes and confidence. With `pick`, a click selects
    a point (selection "pick", field "index"). `upload`: rows x, y, name, image of new cells, drawn as black
    diamonds on top. A plain spec, not Altair's: no schema validation at each draw (0.3-0.4 s for this map)."""
    x_scale = {"domain": _domain(emap.xy[:, 0]), "nice": False, "zero": False}
    y_scale = {"domain": _domain(emap.xy[:, 1]), "nice": False, "zero": False}
    tooltip = ([_field("image", "nominal", "image")] if images else []) + [
        _field("index", "quantitative", "test image #"), _field("true", "nominal", "true"),
        _field("predicted", "nominal", "predicted"),
        _field("confidence", "quantitative", "confidence", format=".0%")]
    base: dict[str, Any] = {
        "mark": {"type": "point", "filled": True},
        "encoding": {
            "x": _field("x", "quantitative", "x", scale=x_scale, axis=None),
            "y": _field("y", "quantitative", "y", scale=y_scale, axis=None),
            "color": _field("true", "nominal", "True class",
                            scale={"domain": short_labels(emap), "scheme": "tableau10"}, legend={"orient": "right"}),
            "shape": _field("result", "nominal", "Call", scale={"domain": list(RESULTS), "range": list(SHAPES)},
                            legend={"orient": "right"}),
            # one legend "Call" for the three channels of the same field (a null legend on one hides it)
            "size": _field("result", "nominal", "Call", scale={"domain": list(RESULTS), "range": list(SIZES)},
                           legend={"orient": "right"}),
            "opacity": _field("result", "nominal", "Call",
                              scale={"domain": list(RESULTS), "range": list(OPACITY)}, legend={"orient": "right"}),
            "tooltip": tooltip}}
    if pick:
        base["params"] = [{"name": "pick", "select": {"type": "point", "fields": ["index"], "on": "click",
                                                      "clear": "dblclick"}}]
    layers = [base]
    if upload is not None and len(upload):
        layers.append({
            "data": {"values": upload[["x", "y", "name", "image"]].to_dict("records")},
            "mark": {"type": "point", "shape": "diamond", "filled": True, "size": 340, "color": UPLOAD_COLOUR,
                     "stroke": "white", "strokeWidth": 1.5, "opacity": 1},
            "encoding": {"x": _field("x", "quantitative", "x", scale=x_scale, axis=None),
                         "y": _field("y", "quantitative", "y", scale=y_scale, axis=None),
                         "tooltip": [_field("image", "nominal", "image"), _field("name", "nominal", "your cell")]}})
    return {"height": HEIGHT, "layer": layers, "config": {"view": {"strokeWidth": 0}}}


def picked_index(event: Any) -> int | None:
    """The test image a chart click picked (st.vega_lite_chart's selection state), or None."""
    try:
        rows = event["selection"]["pick"]
    except (KeyError, TypeError):
        return None
    for row in rows or []:
        value = row.get("index") if isinstance(row, dict) else None
        if value is not None:
            return int(value)
    return None


# -- an uploaded cell on the map (Classify) -----------------------------------------------------------------
def show_upload(run_dir: str | Path, clf: "Classifier", image: np.ndarray, name: str,
                display: np.ndarray | None = None) -> None:
    """Where an uploaded cell (the model's input `image`) lies on the run's feature map, and its nearest
    training images (in the feature space, not on the map) with their classes. A run without its map gets a
    button that makes it in the background (its progress shown here meanwhile), so classifying never starts
    that work unasked."""
    st.subheader("On the feature map", anchor=False)
    if not precompute.ready(run_dir, STEP) and tasks.get(precompute.task_key(STEP, run_dir)) is None:
        # a run without its map (made when the Feature map page first opens): made here only when asked (a
        # minute or more of this server's CPU for a full test split)
        st.caption("This run has no feature map yet (it is made once, the first time the Feature map page shows "
                   "the run, or here). Make it to see where this cell lies among the test images, and its "
                   "nearest training images.")
        if not st.button("Make this run's feature map", key="fm_make", icon=":material/scatter_plot:"):
            return
    try:
        emap = map_when_ready(run_dir)
    except UserFacingError as e:
        st.warning(f"The feature map is not available for this run: {md_escape(e)}",
                   icon=":material/scatter_plot:")
        return
    if emap is None:
        return
    probabilities, features = clf.probabilities_and_embeddings(image[None])
    features = np.asarray(features, np.float32)
    placed = emap.place(features)
    try:
        near = emap.neighbours(features)
    except UserFacingError as e:
        st.warning(md_escape(e))
        return
    labels = short_labels(emap)
    from PIL import Image  # noqa: PLC0415

    thumb = np.asarray(Image.fromarray(np.asarray(display if display is not None else image)).convert("RGB")
                       .resize((embedding.THUMB_PX, embedding.THUMB_PX)))
    jpeg = embedding.thumbnails(thumb[None])[0].tobytes()
    upload = pd.DataFrame({"x": placed.xy[:, 0], "y": placed.xy[:, 1], "name": [name], "image": [data_url(jpeg)]})
    map_col, near_col = st.columns([3, 2], gap="large")
    with map_col:
        # the test images' thumbnails stay on the Feature map page: this page reruns often, and light
        st.vega_lite_chart(points(emap).drop(columns="image"), chart(emap, upload, pick=False, images=False),
                           key="fm_upload")
        st.caption(f"The black diamond is {md_escape(name)}, {placed.how}. " + explanation(emap.method)
                   .split(" Hover")[0])
    with near_col:
        st.markdown(f"**Its {near.train_index.shape[1]} nearest training images** (in the network's features)")
        columns = st.columns(3)
        for j, (index, label, distance, jpeg) in enumerate(zip(near.train_index[0], near.train_labels[0],
                                                                near.distance[0], near.thumbnails[0])):
            columns[j % 3].image(jpeg, width=THUMB_SHOWN_PX,
                                 caption=f"{labels[int(label)]} · training #{int(index)} · d={float(distance):.1f}")
        predicted = int(np.argmax(probabilities[0]))
        agree = int((near.train_labels[0] == predicted).sum())
        st.caption(f"{agree} of the {near.train_index.shape[1]} are of the predicted class. Neighbours of several "
                   "classes mean the network finds this cell alike to all of them: check it by eye.")
