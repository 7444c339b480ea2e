"""Helpers shared by the external-validation and review tests: a private store holding the trained fixture run,
small datasets with wrong layouts written to temporary folders (the real data is only read), and waiting for a
page's background work."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
from conftest import mirror_run
from page_helpers import ok, texts
from PIL import Image
from streamlit.testing.v1 import AppTest

EXTERNAL_COUNTS = {"basophil": 3, "eosinophil": 12, "lymphocyte": 37, "monocyte": 15, "neutrophil": 33}


def captions(at: AppTest) -> str:
    """The captions of the images a page shows."""
    return "\n".join(img.caption for e in at.get("image") for img in e.proto.imgs)


def until(at: AppTest, shown: str, timeout: float = 300) -> AppTest:
    """Rerun the page (as its progress fragment does in a browser) until `shown` is in its text or an image's
    caption: long work (a session's cells, the model, an evaluation) runs in background tasks, and the page
    never blocks on it."""
    deadline = time.monotonic() + timeout
    while shown not in texts(ok(at)) + captions(at):
        assert time.monotonic() < deadline, f"{shown!r} not shown within {timeout} s"
        time.sleep(0.3)
        at.run()
    return at


def private_store(tmp_path_factory, trained_run: Path, name: str) -> Path:
    """An artifacts folder of its own holding the trained fixture run (so what a test stores stays there)."""
    root = tmp_path_factory.mktemp(name)
    mirror_run(Path(trained_run), root)
    return root


def cell_image(seed: int, size: int = 96) -> np.ndarray:
    """A smear-like test image: a beige background with a purple disc (a 'nucleus') and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.empty((size, size, 3), np.float64)
    image[:] = (235, 215, 200)
    r = size * (0.2 + 0.1 * rng.random())
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r * r
    image[disc] = (120 + 20 * rng.random(), 60, 150)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def save(path: Path, rgb: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, fmt)
    return path


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def messy_dataset(root: Path) -> Path:
    """Every layout problem at once:

    Basophils/            2 images (one PNG, one JPEG)            -> basophil
    monocytes/            empty                                    -> an empty class folder
    Smudge cells/         1 image                                  -> unknown class, left out
    Lymphocytes/          1 image + nested/deeper/1 image          -> lymphocyte, 1 nested
    Neutrophil/           1 good, a text file renamed .png, a truncated JPEG, a readme.txt
    loose.png             an image outside any class folder
    .hidden/, .DS_Store   ignored
    """
    save(root / "Basophils" / "a.png", cell_image(1))
    save(root / "Basophils" / "b.jpg", cell_image(2), "JPEG")
    (root / "monocytes").mkdir(parents=True)
    save(root / "Smudge cells" / "s.png", cell_image(3))
    save(root / "Lymphocytes" / "l.png", cell_image(4))
    save(root / "Lymphocytes" / "nested" / "deeper" / "l2.png", cell_image(5))
    save(root / "Neutrophil" / "ok.png", cell_image(6))
    (root / "Neutrophil" / "not_really.png").write_text("this is text, not a PNG\n")
    data = jpeg_bytes(cell_image(7))
    (root / "Neutrophil" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "Neutrophil" / "readme.txt").write_text("notes\n")
    save(root / "loose.png", cell_image(8))
    save(root / ".hidden" / "h.png", cell_image(9))
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive in memory holding `members` (name -> bytes) as given, names unchecked."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()
