"""External validation, step 1: read a dataset's layout without decoding anything.

A folder with one subfolder per class (the Raabin-WBC layout; images may sit in nested subfolders of a class
folder) or a CSV of `path,label`. Problems are counted and reported, never raised: empty class folders, files
that are not images, loose files outside class folders, CSV rows that are malformed or name missing files.

Confinement (a dashboard user): with `roots` (the data roots, `core.access.paths`), the folder, the CSV and
its base folder must lie inside them (else `PathNotAllowed`), and every image must too: a CSV row whose path
is absolute, climbs out with `../` or goes through a symlink to somewhere outside, and a symlink in a class
folder pointing outside, are left out and counted (`outside`), with the row number or the file's name, never
the target. A CSV that is not a manifest (no row names an image file, e.g. a system file) is refused without
showing its lines, and bad rows are reported by number only. `roots=None` (the command line, the local
admin) reads anything.

Scans are cached: a folder by its resolved path and the modification times of the folder and its class
folders; a CSV by its modification time and size (and its base folder's). A page that reruns on every click
does not walk the folder again; a change to the folder or the file is a new scan.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.access.paths import Roots, confine, is_inside, resolve
from core.data.registry import label_names
from core.validation.external.errors import ExternalError
from core.validation.external.mapping import auto_map

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
MAX_MESSAGES = 50  # problem details kept for display; the counts are always complete
CSV_PATH_HEADERS = ("path", "file", "filename", "file_name", "image", "image_path", "img", "filepath")
CSV_LABEL_HEADERS = ("label", "class", "class_name", "classname", "category", "cell_type", "celltype", "type")
MAX_CSV_BYTES = 20 * 2**20  # a manifest of ~200,000 rows; larger files are refused unread
SCAN_CACHE_ENTRIES = 16


@dataclass(frozen=True)
class SourceFile:
    path: str
    source_class: str


@dataclass
class ExternalSource:
    """What a dataset holds, by its own class names, and what is wrong with it (nothing decoded yet)."""

    location: str  # the folder, or the CSV file
    kind: str  # "folder" or "csv"
    files: list[SourceFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)  # class folders with no image in them
    not_images: int = 0  # files skipped because their extension is not an image's
    loose_files: int = 0  # images directly in the folder, outside any class folder
    nested_files: int = 0  # images found in subfolders of a class folder (used, with that class)
    bad_rows: int = 0  # CSV rows without a path and a label
    missing_files: int = 0  # CSV rows naming a file that does not exist
    outside: int = 0  # CSV rows or linked files that lead outside the data roots (confined scans only)
    messages: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(f.source_class for f in self.files)
        for name in self.empty_classes:
            counts.setdefault(name, 0)
        return dict(sorted(counts.items(), key=lambda kv: kv[0].lower()))

    @property
    def classes(self) -> list[str]:
        return list(self.counts)

    def note(self, message: str) -> None:
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)

    def signature(self) -> tuple:
        """What tells this listing from another of the same place (for caching what was read from it): the
        number of files, the first and the last path, and the count of each class."""
        return (len(self.files), self.files[0].path if self.files else "",
                self.files[-1].path if self.files else "", tuple(self.counts.items()))

    def problems(self) -> dict[str, Any]:
        return {"empty_classes": list(self.empty_classes), "not_images": self.not_images,
                "loose_files": self.loose_files, "nested_files": self.nested_files, "bad_rows": self.bad_rows,
                "missing_files": self.missing_files, "outside": self.outside}

    def copy(self) -> "ExternalSource":
        """A copy a caller may change (the cached scan itself stays as read)."""
        return replace(self, files=list(self.files), empty_classes=list(self.empty_classes),
                       messages=list(self.messages))


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_folder(folder: str | Path, roots: Roots | None = None) -> ExternalSource:
    """One subfolder per class, images anywhere inside it (nested subfolders count for the top class).

    A folder holding only one subfolder that is not itself a class (say `Raabin/Train/<class>/`) is entered.
    With `roots`, the folder must lie inside them and links to files outside them are left out (`outside`).
    """
    root = confine(folder, roots, "dataset folder") if roots is not None else Path(folder).expanduser()
    if not root.is_dir():
        raise ExternalError(f"No folder at {root}")
    root = _enter_wrappers(root)
    try:
        signature = folder_signature(root)
    except OSError as e:
        raise ExternalError(f"Cannot list {root} ({e.strerror or e})") from None
    roots_key = None if roots is None else tuple(str(resolve(r)) for r in roots)
    return _scan_folder_cached(str(root), roots_key, signature).copy()


def folder_signature(root: Path) -> tuple:
    """What changes when a dataset folder changes, cheaply: the modification times of the folder and of each
    folder directly in it (adding or removing an image in a class folder changes that folder's time)."""
    entries = [(e.name, e.stat(follow_symlinks=False).st_mtime_ns) for e in os.scandir(root)
               if e.is_dir(follow_symlinks=False)]
    return root.stat().st_mtime_ns, tuple(sorted(entries))


@lru_cache(maxsize=SCAN_CACHE_ENTRIES)
def _scan_folder_cached(root_text: str, roots: tuple[str, ...] | None, signature: tuple) -> ExternalSource:
    root = Path(root_text)
    out = ExternalSource(str(root), "folder")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name.lower())
    except OSError as e:
        raise ExternalError(f"Cannot list {root} ({e.strerror or e})") from None
    for entry in entries:
        if _ignored(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            _scan_class(out, Path(entry.path), entry.name, roots)
        elif _is_image(entry.name):
            out.loose_files += 1
            out.note(f"{entry.name}: an image outside any class folder, left out")
        else:
            out.not_images += 1
    if not out.files and not out.empty_classes:
        raise ExternalError(f"{root} holds no class folders (expected one subfolder per class, "
                            f"images inside, as in Raabin-WBC)")
    return out


def _enter_wrappers(root: Path, depth: int = 3) -> Path:
    labels = label_names()
    for _ in range(depth):
        try:
            entries = [e for e in os.scandir(root) if not _ignored(e.name)]
        except OSError:
            return root
        dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
        files = [e for e in entries if not e.is_dir(follow_symlinks=False) and _is_image(e.name)]
        if len(dirs) != 1 or files or auto_map(dirs[0].name, labels) is not None:
            return root
        inner = Path(dirs[0].path)
        try:
            if not any(e.is_dir(follow_symlinks=False) and not _ignored(e.name) for e in os.scandir(inner)):
                return root
        except OSError:
            return root
        root = inner
    return root


def _scan_class(out: ExternalSource, folder: Path, name: str, roots: tuple[str, ...] | None) -> None:
    """Images anywhere under a class folder; folders linked from inside are not entered, and with `roots` a
    linked file is used only when its target lies inside them."""
    found = 0
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as e:
            out.note(f"{name}: cannot list {Path(here).name} ({e.strerror or e})")
            continue
        nested = here != folder
        subfolders = []
        for entry in entries:
            if _ignored(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
                continue
            if entry.is_symlink() and entry.is_dir():  # a linked folder: not entered (as os.walk)
                continue
            if not _is_image(entry.name):
                out.not_images += 1
                continue
            if roots is not None and entry.is_symlink() and not is_inside(entry.path, [Path(r) for r in roots]):
                out.outside += 1
                out.note(f"{name}/{entry.name}: a link to a file outside the folders this server may read, "
                         f"left out")
                continue
            out.files.append(SourceFile(entry.path, name))
            found += 1
            out.nested_files += int(nested)
        stack.extend(reversed(subfolders))  # depth first, in name order, as os.walk's top-down listing
    if not found:
        out.empty_classes.append(name)
        out.note(f"{name}/: no images in this class folder")


def scan_csv(csv_path: str | Path, base: str | Path | None = None, roots: Roots | None = None) -> ExternalSource:
    """Rows of `path,label` (a header row is recognised and skipped); relative paths are read from `base`,
    else from the CSV's own folder. With `roots`, the CSV, `base` and every row's image must lie inside them."""
    if roots is not None:
        csv_path = confine(csv_path, roots, "CSV file")
        base = confine(base, roots, "folder of relative paths") if base else None
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise ExternalError(f"No CSV file at {csv_path}")
    base = Path(base).expanduser() if base else csv_path.parent
    try:
        stat, base_mtime = csv_path.stat(), base.stat().st_mtime_ns if base.is_dir() else 0
    except OSError as e:
        raise ExternalError(f"{csv_path.name}: cannot read the file ({e.strerror or e})") from None
    if stat.st_size > MAX_CSV_BYTES:
        raise ExternalError(f"{csv_path.name}: {stat.st_size / 2**20:,.0f} MB is larger than the "
                            f"{MAX_CSV_BYTES // 2**20} MB a manifest may be")
    roots_key = None if roots is None else tuple(str(resolve(r)) for r in roots)
    signature = (stat.st_mtime_ns, stat.st_size, base_mtime)
    return _scan_csv_cached(str(csv_path), str(base), roots_key, signature).copy()


@lru_cache(maxsize=SCAN_CACHE_ENTRIES)
def _scan_csv_cached(csv_text: str, base_text: str, roots: tuple[str, ...] | None,
                     signature: tuple) -> ExternalSource:
    csv_path, base = Path(csv_text), Path(base_text)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ExternalError(f"{csv_path.name} is not a UTF-8 text file") from None
    except OSError as e:
        raise ExternalError(f"{csv_path.name}: cannot read the file ({e.strerror or e})") from None
    out = ExternalSource(str(csv_path), "csv")
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error:
        raise ExternalError(f"{csv_path.name} is not a readable CSV of path,label rows") from None
    path_col, label_col, start = 0, 1, 0
    if rows:
        header = [c.strip().lower() for c in rows[0]]
        p = next((i for i, c in enumerate(header) if c in CSV_PATH_HEADERS), None)
        lab = next((i for i, c in enumerate(header) if c in CSV_LABEL_HEADERS), None)
        if p is not None and lab is not None:
            path_col, label_col, start = p, lab, 1
    if not start and not any(len(row) > max(path_col, label_col) and _is_image(row[path_col].strip())
                             and row[label_col].strip() for row in rows):
        raise ExternalError(f"{csv_path.name} is not a manifest of path,label rows: no row names an image file "
                            f"and a label (its lines are not shown)")
    allowed = None if roots is None else [Path(r) for r in roots]
    for number, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(path_col, label_col) or not row[path_col].strip() or not row[label_col].strip():
            out.bad_rows += 1
            out.note(f"row {number}: expected a path and a label")
            continue
        rel, label = row[path_col].strip(), row[label_col].strip()
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else base / path
        if not _is_image(path.name):
            out.not_images += 1
            out.note(f"row {number}: the path is not an image file name")
            continue
        if allowed is not None and not is_inside(path, allowed):
            out.outside += 1
            out.note(f"row {number}: the path leads outside the folders this server may read, left out")
            continue
        if not path.is_file():
            out.missing_files += 1
            out.note(f"row {number}: no file at {rel}")
            continue
        out.files.append(SourceFile(str(path), label))
    if not out.files and not out.bad_rows and not out.missing_files and not out.not_images and not out.outside:
        raise ExternalError(f"{csv_path.name} has no rows (expected path,label rows)")
    return out


def scan(folder: str | Path | None = None, csv_file: str | Path | None = None,
         roots: Roots | None = None) -> ExternalSource:
    """A folder per class, or a CSV (`folder`: its base for relative paths); `roots`: confine to them."""
    if csv_file:
        return scan_csv(csv_file, folder, roots)
    if folder:
        return scan_folder(folder, roots)
    raise ExternalError("Give a dataset folder (one subfolder per class) or a CSV of path,label")
