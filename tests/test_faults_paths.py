"""Issue 12, confined paths and bounded uploads: every escape a user of a shared server tried is refused.

Real files in pytest's temporary folders: a data root holding small datasets, a folder outside it holding
"secret" files, symlinks between them. The roots are given explicitly (`roots=`) so each test says which
folders it allows; the pages read the configured roots (tests/conftest.py sets `$CELLSCOPE_DATA_ROOTS`).
Uploads are built in the test: the 16-bit bomb of the issue (a 6300x6300 16-bit PNG of ~77 KB), a zip of
1,000 such 8-bit PNGs, a zip of 1,000 small PNGs, and zips with escaping members.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from external_fixtures import cell_image, save
from external_fixtures import make_zip as zip_of
from PIL import Image

from core.access.paths import PathNotAllowed, confine, data_roots, is_inside
from core.data import images, uploads
from core.data.images import MAX_PIXELS, BudgetExceeded, DecodeBudget, decode, decode_with_note
from core.data.uploads import UploadRefused, extract_dataset, iter_uploads, read_uploads
from core.errors import UserFacingError
from core.validation import review
from core.validation.external import loading, scan
from core.validation.external.errors import ExternalError

SECRET = "root:x:0:0:root:/root:/bin/bash"


@pytest.fixture
def layout(tmp_path) -> tuple[Path, Path]:
    """(a data root with a two-class dataset, a folder outside it with a secret text file and an image)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for cls, n in (("basophil", 2), ("lymphocyte", 3)):
        for i in range(n):
            save(root / "set" / cls / f"{i}.png", cell_image(i))
    save(outside / "private.png", cell_image(99))
    (outside / "passwd").write_text("\n".join([SECRET, "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin"]) + "\n")
    return root, outside


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def empty(folder: Path) -> bool:
    """Nothing was left there (the folder may not even have been made)."""
    return not folder.exists() or not any(folder.iterdir())


def make_zip(members: dict[str, bytes]) -> bytes:
    return zip_of(members, zipfile.ZIP_STORED)  # stored: sizes as declared, no compression ratio in the way


# -- confinement ---------------------------------------------------------------------------------------------

def test_confine_refuses_outside_and_names_path_and_roots(layout):
    root, outside = layout
    assert confine(root / "set", [root]) == (root / "set").resolve()
    with pytest.raises(PathNotAllowed) as info:
        confine(outside / "passwd", [root], "CSV file")
    message = str(info.value)
    assert isinstance(info.value, UserFacingError)
    assert str(outside / "passwd") in message and str(root.resolve()) in message and "CSV file" in message
    assert SECRET not in message
    with pytest.raises(PathNotAllowed):
        confine(f"{root}/set/../../outside", [root])  # `..` out of the root
    with pytest.raises(PathNotAllowed):
        confine("", [root])


def test_a_symlink_inside_a_root_to_outside_is_refused(layout):
    root, outside = layout
    (root / "innocent").symlink_to(outside)
    (root / "labels.csv").symlink_to(outside / "passwd")
    for link in (root / "innocent", root / "labels.csv"):
        with pytest.raises(PathNotAllowed) as info:
            confine(link, [root])
        assert f"resolves to {outside.resolve()}" in str(info.value)
    assert not is_inside(root / "innocent" / "private.png", [root])


def test_the_configured_roots_come_from_the_settings(monkeypatch, layout):
    root, _ = layout
    monkeypatch.setenv("CELLSCOPE_DATA_ROOTS", str(root))
    assert root.resolve() in data_roots()
    assert confine(root / "set") == (root / "set").resolve()
    with pytest.raises(PathNotAllowed):
        confine("/etc")


def test_folder_outside_the_roots_is_refused(layout):
    root, outside = layout
    assert scan.scan(root / "set", roots=[root]).counts == {"basophil": 2, "lymphocyte": 3}
    for folder in (outside, "/etc", root / ".." / "outside"):
        with pytest.raises(PathNotAllowed):
            scan.scan(folder, roots=[root])
    assert scan.scan(outside.parent / "root" / "set").counts  # the command line (no roots) is not confined


def test_csv_file_outside_the_roots_is_refused_without_its_lines(layout):
    root, outside = layout
    with pytest.raises(PathNotAllowed) as info:
        scan.scan(None, outside / "passwd", roots=[root])
    assert SECRET not in str(info.value) and "root:x" not in str(info.value)
    with pytest.raises(PathNotAllowed):  # the base folder of relative paths is confined too
        scan.scan(outside, root / "set" / "x.csv", roots=[root])


def test_a_non_manifest_inside_a_root_gives_a_message_without_its_lines(layout):
    root, outside = layout
    copy = root / "passwd.csv"
    copy.write_text((outside / "passwd").read_text())
    with pytest.raises(ExternalError) as info:
        scan.scan(None, copy, roots=[root])
    message = str(info.value)
    assert "not a manifest" in message and "root:x" not in message and "daemon" not in message


def test_csv_rows_that_escape_are_left_out_with_their_row_numbers(layout):
    root, outside = layout
    (root / "set" / "lymphocyte" / "link.png").symlink_to(outside / "private.png")
    rows = ["path,label",
            "set/basophil/0.png,basophil",  # 2: fine
            f"{outside / 'private.png'},basophil",  # 3: absolute, outside
            "../outside/private.png,basophil",  # 4: ../ out of the root
            "set/lymphocyte/link.png,lymphocyte",  # 5: a symlink to outside
            f"{root / 'set' / 'lymphocyte' / '0.png'},lymphocyte",  # 6: absolute, inside: fine
            SECRET]  # 7: not a row
    manifest = root / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    source = scan.scan(None, manifest, roots=[root])
    assert [Path(f.path).name for f in source.files] == ["0.png", "0.png"]
    assert source.outside == 3 and source.bad_rows == 1
    shown = "\n".join(source.messages)
    for number in (3, 4, 5):
        assert f"row {number}: the path leads outside" in shown
    assert "row 7: expected a path and a label" in shown
    assert "private.png" not in shown and str(outside) not in shown and "root:x" not in shown
    assert source.problems()["outside"] == 3
    unconfined = scan.scan(None, manifest)  # the command line reads what the rows name
    assert unconfined.outside == 0 and len(unconfined.files) == 5


def test_symlinked_files_in_a_class_folder_are_left_out(layout):
    root, outside = layout
    (root / "set" / "basophil" / "escape.png").symlink_to(outside / "private.png")
    (root / "set" / "basophil" / "alias.png").symlink_to(root / "set" / "basophil" / "0.png")  # inside: kept
    (root / "set" / "lymphocyte" / "outside_dir").symlink_to(outside, target_is_directory=True)  # not entered
    source = scan.scan(root / "set", roots=[root])
    assert source.counts == {"basophil": 3, "lymphocyte": 3} and source.outside == 1
    assert not any("private" in f.path or "outside_dir" in f.path for f in source.files)
    assert any("escape.png: a link to a file outside" in m for m in source.messages)


def test_a_file_swapped_for_a_link_after_the_scan_is_not_read(layout):
    root, outside = layout
    source = scan.scan(root / "set", roots=[root])
    victim = root / "set" / "basophil" / "1.png"
    victim.unlink()
    victim.symlink_to(outside / "private.png")
    data = loading.load_images(source, 28, resize="plain", roots=[root])
    assert len(data) == 4 and data.excluded["outside"] == 1 and str(victim) not in data.paths
    assert len(loading.load_images(source, 28, resize="plain")) == 5  # the command line: not confined


def test_review_from_an_external_folder_is_confined(layout):
    root, outside = layout
    with pytest.raises(PathNotAllowed):
        review.cells_from_external(None, str(outside), roots=[root])


# -- the folder scan is cached -------------------------------------------------------------------------------

def test_folder_scan_is_cached_until_the_folder_changes(layout):
    root, _ = layout
    scan.scan(root / "set", roots=[root])
    before = scan._scan_folder_cached.cache_info()
    again = scan.scan(root / "set", roots=[root])
    after = scan._scan_folder_cached.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    again.files.clear()  # a caller's copy: the cached listing is not changed
    assert len(scan.scan(root / "set", roots=[root]).files) == 5
    save(root / "set" / "basophil" / "new.png", cell_image(7))
    os.utime(root / "set" / "basophil", ns=(0, 1))  # a new modification time, as any added file gives
    assert scan.scan(root / "set", roots=[root]).counts["basophil"] == 3
    assert scan._scan_folder_cached.cache_info().misses == after.misses + 1


# -- zips of datasets: extracted safely --------------------------------------------------------------------------

def test_dataset_zip_is_extracted_under_the_uploads_folder_and_scanned(tmp_path):
    members = {f"cells/{cls}/{i}.png": png_bytes(cell_image(i)) for cls in ("basophil", "monocyte") for i in range(3)}
    members |= {"cells/readme.txt": b"notes", "__MACOSX/cells/._x.png": b"\0"}
    folder, problems = extract_dataset("set.zip", make_zip(members), tmp_path / "uploads")
    assert folder.parent == tmp_path / "uploads" and any("readme.txt" in p for p in problems)
    source = scan.scan(folder, roots=[tmp_path / "uploads"])
    assert source.counts == {"basophil": 3, "monocyte": 3}


@pytest.mark.parametrize("evil", ["../evil.png", "a/../../evil.png", "/tmp/evil.png", "..\\evil.png", "C:\\evil.png"])
def test_zip_slip_members_refuse_the_dataset_zip(tmp_path, evil):
    data = make_zip({"cells/a/ok.png": png_bytes(cell_image(1)), evil: png_bytes(cell_image(2))})
    with pytest.raises(UploadRefused) as info:
        extract_dataset("slip.zip", data, tmp_path / "uploads")
    assert "path traversal" in str(info.value)
    assert empty(tmp_path / "uploads") and not (tmp_path / "evil.png").exists()


def test_symlink_members_refuse_the_zip(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cells/a/ok.png", png_bytes(cell_image(1)))
        link = zipfile.ZipInfo("cells/a/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    with pytest.raises(UploadRefused) as info:
        extract_dataset("links.zip", buf.getvalue(), tmp_path / "uploads")
    assert "symbolic link" in str(info.value)
    assert empty(tmp_path / "uploads")
    assert "symbolic link" in read_uploads([("links.zip", buf.getvalue())])[0].error


def test_old_upload_folders_are_cleaned(tmp_path):
    parent = tmp_path / "uploads"
    data = make_zip({"c/basophil/a.png": png_bytes(cell_image(1))})
    folders = [extract_dataset("a.zip", data, parent)[0] for _ in range(3)]
    os.utime(folders[0], (0, 0))  # a folder from 1970: older than a day
    removed = uploads.clean_uploads(parent, keep=10)
    assert removed == [folders[0]] and not folders[0].exists()
    assert uploads.clean_uploads(parent, keep=1) == [folders[1]] and folders[2].exists()


# -- upload budgets ------------------------------------------------------------------------------------------------

def test_the_16bit_bomb_decodes_within_the_budget_without_float64_copies():
    """The issue's bomb: a 6300x6300 16-bit PNG of ~77 KB that took 1.1 GB as float64."""
    ramp = np.zeros((6300, 6300), np.uint16)
    ramp[::7, ::5] = 60000
    data = png_bytes(ramp)
    del ramp
    assert len(data) < 1_000_000 and Image.open(io.BytesIO(data)).mode.startswith("I;16")
    budget = uploads.upload_budget()
    tracemalloc.start()
    try:
        rgb, note = decode_with_note(data, "bomb16.png", budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rgb.shape == (6300, 6300, 3) and rgb.dtype == np.uint8 and "16-bit" in note
    assert rgb.max() == 255 and rgb.min() == 0
    # numpy's arrays: the 16-bit pixels (79 MB), the 8-bit result and its RGB copy (40 + 119 MB), and bands;
    # one float64 copy of the image alone would be 318 MB
    assert peak < 300 * 2**20, f"{peak / 2**20:.0f} MB"
    assert budget.pixels == 6300 * 6300 and budget.seconds < uploads.MAX_UPLOAD_SECONDS


def test_a_zip_of_1000_large_pngs_is_refused_before_decoding(tmp_path):
    big = png_bytes(np.zeros((6300, 6300), np.uint8))  # 39.7 megapixels, ~40 KB
    data = make_zip({f"cells/{i}.png": big for i in range(1000)})
    assert len(data) < uploads.MAX_FILE_BYTES
    items = read_uploads([("bomb.zip", data)])
    assert len(items) == 1 and not items[0].ok
    assert "over the zip's budget" in items[0].error and f"{uploads.MAX_ZIP_PIXELS:,}" in items[0].error
    assert f"{1000 * 6300 * 6300:,}" in items[0].error
    with pytest.raises(UploadRefused):
        extract_dataset("bomb.zip", data, tmp_path / "uploads")
    assert empty(tmp_path / "uploads")


def test_a_zip_of_1000_small_pngs_finishes_within_the_budget():
    members = {f"cells/{i}.png": png_bytes(cell_image(i, 28)) for i in range(1000)}
    budget = uploads.upload_budget()
    items = list(iter_uploads([("small.zip", make_zip(members))], budget))
    assert len(items) == 1000 and all(i.ok for i in items)
    assert budget.pixels == 1000 * 28 * 28 and budget.seconds < uploads.MAX_ZIP_SECONDS


def test_budget_refusals_name_the_budget_and_the_numbers():
    one = png_bytes(cell_image(1, 100))
    budget = DecodeBudget("this upload", 25_000, 60)
    items = list(iter_uploads([("a.png", one), ("b.png", one), ("c.png", one)], budget))
    assert [i.ok for i in items] == [True, True, False]
    assert items[2].error == ("c.png: refused, this upload would decode 30,000 pixels, over its budget of "
                              "25,000 decoded pixels (10,000 for this image)")
    spent = DecodeBudget("this upload", 10**9, 0.5, seconds=0.5)
    with pytest.raises(BudgetExceeded) as info:
        decode_with_note(one, "d.png", spent)
    assert "decoding-time budget (0.5 s of 0.5 s)" in str(info.value)


def test_a_spent_zip_budget_stops_the_zip_in_one_message(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_ZIP_SECONDS", 0.0)  # spent as soon as the first member is unpacked
    members = {f"c/{i}.png": png_bytes(cell_image(i, 28)) for i in range(50)}
    items = read_uploads([("slow.zip", make_zip(members))])
    assert len(items) == 2 and all(not i.ok for i in items)
    assert "decoding-time budget" in items[0].error and "the other 49 members were not read" in items[1].error


def test_pillow_limits_are_set_once_and_decoding_is_thread_safe():
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
    good = png_bytes(cell_image(3))
    header_bomb = make_header_bomb()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(20):
                if k % 2:
                    with pytest.raises(images.ImageInputError):
                        decode(header_bomb, "bomb.png")
                else:
                    assert decode(good).shape == (96, 96, 3)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and Image.MAX_IMAGE_PIXELS == MAX_PIXELS


def make_header_bomb() -> bytes:
    from test_images import png_header_only

    return png_header_only(20_000, 20_000)
