"""`python -m core predict | gradcam | external --resize cell` on real images with the real tiny trained run:
cells found are classified, images without one are reported (a per-image error line; a skipped count)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import EXTERNAL_DEV, PBC_SAMPLES, mirror_run
from PIL import Image

from core.cli import build_parser, main
from core.data import registry
from core.data.cell_framing import FRAMING_FILE
from core.data.images import RESIZE_DESCRIPTIONS, RESIZE_MODES

COMMANDS = ("predict", "gradcam", "external")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_run) -> Path:
    """A private copy of the trained run, so the cached framing target stays out of the shared fixture."""
    return mirror_run(Path(trained_run), tmp_path_factory.mktemp("cell-artifacts"))


def blank(path: Path) -> Path:
    """A slide with nothing on it: the smear's beige background only."""
    Image.new("RGB", (300, 300), (250, 228, 205)).save(path)
    return path


def test_resize_choices_and_help_come_from_the_one_list():
    sub = build_parser()._subparsers._group_actions[0].choices
    for command in COMMANDS:
        action = next(a for a in sub[command]._actions if a.dest == "resize")
        assert tuple(action.choices) == RESIZE_MODES and action.default == "medmnist"
        for mode in RESIZE_MODES:
            assert f"{mode}: {RESIZE_DESCRIPTIONS[mode]}" in action.help


def test_predict_with_cell_framing(run_dir, tmp_path, capsys):
    files = [sorted((PBC_SAMPLES / c).glob("*.jpg"))[0] for c in ("lymphocyte", "platelet")]
    files += [sorted((EXTERNAL_DEV / "neutrophil").glob("*.png"))[0], blank(tmp_path / "blank.png")]
    assert not (run_dir / FRAMING_FILE).exists()
    code = main(["predict", "--run", str(run_dir), "--resize", "cell", *map(str, files)])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and [line["file"] for line in lines] == [str(f) for f in files]
    for line in lines[:3]:
        assert line["label"] in registry.label_names() and 0 < line["confidence"] <= 1
    assert set(lines[3]) == {"file", "error"} and lines[3]["error"].startswith("no white cell found in ")
    assert "blank.png: the image is blank" in lines[3]["error"]
    target = json.loads((run_dir / FRAMING_FILE).read_text())  # measured on the run's training images, once
    assert 0.4 < target["fraction"] < 0.8 and target["found"] >= 0.95 * target["n_images"]


def test_gradcam_with_cell_framing(run_dir, tmp_path, capsys):
    image = sorted((EXTERNAL_DEV / "monocyte").glob("*.png"))[0]
    out = tmp_path / "cam.png"
    code = main(["gradcam", "--run", str(run_dir), "--resize", "cell", str(image), "--out", str(out)])
    assert code == 0 and json.loads(capsys.readouterr().out)["out"] == str(out)
    with Image.open(out) as png:
        assert png.size[0] == 3 * png.size[1] + 8
    code = main(["gradcam", "--run", str(run_dir), "--resize", "cell", str(blank(tmp_path / "empty.png")),
                 "--out", str(tmp_path / "none.png")])
    assert code == 2 and "error: no white cell found in empty.png" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()


def test_external_with_cell_framing_skips_images_without_a_cell(run_dir, tmp_path, capsys):
    root = tmp_path / "lab"
    for cls, n in (("lymphocyte", 3), ("neutrophil", 2)):
        (root / cls).mkdir(parents=True)
        for f in sorted((EXTERNAL_DEV / cls).glob("*.png"))[:n]:
            shutil.copy(f, root / cls / f.name)
    blank(root / "lymphocyte" / "blank.png")
    code = main(["external", "--run", str(run_dir), "--folder", str(root), "--resize", "cell", "--no-store"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["resize"] == "cell"
    assert summary["n_images"] == 5 and summary["excluded"]["no_cell"] == 1
    assert summary["excluded"]["unreadable"] == 0
    assert {k: v["support"] for k, v in summary["per_class"].items()} == {"lymphocyte": 3, "neutrophil": 2}
    assert np.asarray(summary["confusion"]).sum() == 5
