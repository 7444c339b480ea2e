"""`python -m core predict` and `gradcam` on the bad-input list, zips, flags and every CAM method (in-process)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from test_page_classify import mirror_run
from test_uploads import ERRORS, NOTES, bad_list, cell, converted_list

from core.cli import main
from core.explain.cam import METHOD_NAMES


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_run) -> Path:
    return mirror_run(Path(trained_run), tmp_path_factory.mktemp("cli-artifacts"))


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.strip().splitlines()]


def test_predict_bad_list_zips_and_good_files(run, tmp_path, capsys):
    files = {"good.jpg": cell(0), **bad_list(), **converted_list()}
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as z:
        z.writestr("a.jpg", cell(1))
        z.writestr("b.jpg", cell(2))
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    paths.append(str(tmp_path / "two.zip"))
    assert main(["predict", "--run", str(run), *paths]) == 0
    out = {Path(line["file"]).relative_to(tmp_path).as_posix(): line for line in lines(capsys.readouterr().out)}
    assert set(out) == set(files) - {"zipbomb.zip"} | {"zipbomb.zip/bomb.bmp", "two.zip/a.jpg", "two.zip/b.jpg"}
    for name, words in ERRORS.items():
        assert set(out[name]) == {"file", "error"} and words in out[name]["error"], out[name]
    for name, words in NOTES.items():
        assert words in out[name]["note"] and out[name]["label"]
    for name in ("good.jpg", "two.zip/a.jpg", "two.zip/b.jpg"):
        assert set(out[name]) == {"file", "label", "confidence", "probabilities"}


def test_predict_flags(run, capsys):
    from conftest import PBC_SAMPLES

    sample = sorted((PBC_SAMPLES / "platelet").glob("*.jpg"))[0]
    assert main(["predict", "--run", str(run), "--threshold", "1.0", "--ood", str(sample)]) == 0
    (line,) = lines(capsys.readouterr().out)
    assert "unidentified" in line["flags"] and line["distance"] > 0


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_gradcam_every_method(run, tmp_path, capsys, method):
    from conftest import PBC_SAMPLES

    sample = sorted((PBC_SAMPLES / "neutrophil").glob("*.jpg"))[0]
    out = tmp_path / f"{method}.png"
    assert main(["gradcam", "--run", str(run), str(sample), "--out", str(out), "--method", method,
                 "--layer", "conv4_block2_out", "--colormap", "viridis"]) == 0
    info = lines(capsys.readouterr().out)[-1]
    assert info["method"] == method and info["layer"] == "conv4_block2_out"
    assert set(info["faithfulness"]) == {"top_drop", "random_drop", "difference", "fraction"}
    with Image.open(out) as png:
        assert png.size == (3 * 224 + 8, 224)


@pytest.mark.parametrize("name", ["empty.jpg", "truncated.jpg", "notes.png", "dot.png", "bomb.png"])
def test_gradcam_bad_file_is_one_line_error(run, tmp_path, capsys, name):
    path = tmp_path / name
    path.write_bytes(bad_list()[name])
    assert main(["gradcam", "--run", str(run), str(path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {name}: ") and "\n" not in err and ERRORS[name] in err
    assert not (tmp_path / "x.png").exists()


def test_gradcam_unknown_layer_and_colormap(run, tmp_path, capsys):
    from conftest import PBC_SAMPLES

    sample = str(sorted((PBC_SAMPLES / "monocyte").glob("*.jpg"))[0])
    assert main(["gradcam", "--run", str(run), sample, "--out", str(tmp_path / "x.png"), "--layer", "conv9"]) == 2
    err = capsys.readouterr().err
    assert "no layer named 'conv9'" in err and "conv5_block2_out" in err
    assert main(["gradcam", "--run", str(run), sample, "--out", str(tmp_path / "x.png"), "--colormap", "rainbow"]) == 2
    assert "unknown colormap" in capsys.readouterr().err
