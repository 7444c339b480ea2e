"""External validation: a trained BloodMNIST run applied, unchanged, to cells from another lab.

1. `scan` reads a dataset's layout without decoding anything: a folder with one subfolder per class (the
   Raabin-WBC layout; images may sit in nested subfolders of a class folder) or a CSV of `path,label`.
   Problems are counted and reported, never raised: empty class folders, files that are not images, loose
   files outside class folders, CSV rows that are malformed or name missing files.
2. `auto_mapping` maps the dataset's class names to BloodMNIST's (case, plural, abbreviations and synonyms
   such as 'ig' or 'immature granulocyte', the 'lymph' prefix...); a user's edits override it. Classes
   mapped to nothing are left out, with their counts reported.
3. `load_images` decodes the mapped files and brings them to the model's input exactly as the upload path
   does (`core.data.images.to_model_input`, MedMNIST recipe by default); unreadable files are counted.
4. `evaluate` scores the run on them, optionally after colour normalisation to its training set
   (core.validation.stain), in the study's Tables 14/15 format twice: argmax over all 8 classes, and argmax over the
   classes the dataset shares with BloodMNIST only. The result is stored with the run, atomically, as
   `<run>/external/<eval_id>.json` (ids are generated, never taken from user text).
5. `fine_tune` (optional, the study's approach) splits the data into a stratified fine-tune part and a
   held-out part, fine-tunes a copy of the model briefly on the first and scores the second, reported
   apart from the zero-shot result.

TensorFlow is imported only inside the functions that run the model.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from core.data.images import RESIZE_MODES, ImageInputError, read_file, to_model_input
from core.data.registry import label_names, short_label
from core.errors import UserFacingError
from core.evaluation.metrics import wilson_interval

EXTERNAL_DIR = "external"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
EVAL_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}\Z")
MAX_MESSAGES = 50  # problem details kept for display; the counts are always complete
CSV_PATH_HEADERS = ("path", "file", "filename", "file_name", "image", "image_path", "img", "filepath")
CSV_LABEL_HEADERS = ("label", "class", "class_name", "classname", "category", "cell_type", "celltype", "type")
ProgressFn = Callable[[int, int], None]


class ExternalError(UserFacingError, ValueError):
    pass


# -- 1. the layout ----------------------------------------------------------------------------------------

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

    def problems(self) -> dict[str, Any]:
        return {"empty_classes": list(self.empty_classes), "not_images": self.not_images,
                "loose_files": self.loose_files, "nested_files": self.nested_files, "bad_rows": self.bad_rows,
                "missing_files": self.missing_files}


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_folder(folder: str | Path) -> ExternalSource:
    """One subfolder per class, images anywhere inside it (nested subfolders count for the top class).

    A folder holding only one subfolder that is not itself a class (say `Raabin/Train/<class>/`) is entered.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ExternalError(f"No folder at {root}")
    root = _enter_wrappers(root)
    out = ExternalSource(str(root), "folder")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name.lower())
    except OSError as e:
        raise ExternalError(f"Cannot list {root} ({e.strerror or e})") from None
    for entry in entries:
        if _ignored(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            _scan_class(out, Path(entry.path), entry.name)
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


def _scan_class(out: ExternalSource, folder: Path, name: str) -> None:
    found = 0
    for dirpath, dirnames, filenames in os.walk(folder, onerror=lambda e: out.note(f"{name}: {e}")):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        nested = Path(dirpath) != folder
        for fname in sorted(filenames):
            if _ignored(fname):
                continue
            if not _is_image(fname):
                out.not_images += 1
                continue
            out.files.append(SourceFile(str(Path(dirpath) / fname), name))
            found += 1
            out.nested_files += int(nested)
    if not found:
        out.empty_classes.append(name)
        out.note(f"{name}/: no images in this class folder")


def scan_csv(csv_path: str | Path, base: str | Path | None = None) -> ExternalSource:
    """Rows of `path,label` (a header row is recognised and skipped); relative paths are read from `base`,
    else from the CSV's own folder."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise ExternalError(f"No CSV file at {csv_path}")
    base = Path(base).expanduser() if base else csv_path.parent
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ExternalError(f"{csv_path.name} is not a UTF-8 text file") from None
    except OSError as e:
        raise ExternalError(f"{csv_path.name}: cannot read the file ({e.strerror or e})") from None
    out = ExternalSource(str(csv_path), "csv")
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as e:
        raise ExternalError(f"{csv_path.name} is not a readable CSV ({e})") from None
    path_col, label_col, start = 0, 1, 0
    if rows:
        header = [c.strip().lower() for c in rows[0]]
        p = next((i for i, c in enumerate(header) if c in CSV_PATH_HEADERS), None)
        lab = next((i for i, c in enumerate(header) if c in CSV_LABEL_HEADERS), None)
        if p is not None and lab is not None:
            path_col, label_col, start = p, lab, 1
    for number, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(path_col, label_col) or not row[path_col].strip() or not row[label_col].strip():
            out.bad_rows += 1
            out.note(f"row {number}: expected a path and a label, got {','.join(row)[:80]!r}")
            continue
        rel, label = row[path_col].strip(), row[label_col].strip()
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else base / path
        if not _is_image(path.name):
            out.not_images += 1
            out.note(f"row {number}: {rel} is not an image file name")
            continue
        if not path.is_file():
            out.missing_files += 1
            out.note(f"row {number}: no file at {rel}")
            continue
        out.files.append(SourceFile(str(path), label))
    if not out.files and not out.bad_rows and not out.missing_files and not out.not_images:
        raise ExternalError(f"{csv_path.name} has no rows (expected path,label rows)")
    return out


def scan(folder: str | Path | None = None, csv_file: str | Path | None = None) -> ExternalSource:
    if csv_file:
        return scan_csv(csv_file, folder)
    if folder:
        return scan_folder(folder)
    raise ExternalError("Give a dataset folder (one subfolder per class) or a CSV of path,label")


# -- 2. class names -> BloodMNIST labels -------------------------------------------------------------------

# Synonyms and abbreviations (Raabin-WBC, PBC, Matek et al.'s AML cytomorphology codes, CellaVision) by the
# first word of a BloodMNIST label; the labels themselves come from medmnist's registry.
_SYNONYMS = {
    "basophil": ("baso", "ba", "bas", "basophile"),
    "eosinophil": ("eos", "eo", "eosino", "eosinophile"),
    "erythroblast": ("erb", "ebo", "nrbc", "normoblast", "nucleated red blood cell", "nucleated rbc",
                     "nucleated red cell"),
    "immature": ("ig", "igs", "immature granulocyte", "immature granulocytes", "myelocyte", "metamyelocyte",
                 "promyelocyte", "my", "mmy", "pmy", "pmo", "myo", "mmz", "meta", "pro"),
    "lymphocyte": ("lym", "ly", "lyt", "lympho", "lymphs", "small lymphocyte", "large lymphocyte"),
    "monocyte": ("mono", "mo", "mon", "monos"),
    "neutrophil": ("neut", "neu", "ne", "neutro", "sne", "bne", "ngs", "ngb", "seg", "segmented", "band",
                   "pmn", "polymorph", "segmented neutrophil", "band neutrophil", "neutrophile"),
    "platelet": ("plt", "plat", "thrombocyte", "thrombocytes", "giant platelet"),
}
# word stems that say which class a longer name belongs to ("lymph" also covers "lymphs", "lymphocytes")
_STEMS = {
    "basophil": ("basophil",), "eosinophil": ("eosinophil",), "erythroblast": ("erythroblast", "normoblast"),
    "immature": ("myelocyt", "metamyelocyt", "promyelocyt"), "lymphocyte": ("lymph",),
    "monocyte": ("monocyt",), "neutrophil": ("neutrophil",), "platelet": ("platelet", "thrombocyt"),
}
_NOT_OURS = ("blast", "smudge", "artefact", "artifact", "unknown", "other", "atypical", "abnormal", "variant")


def short_label_list() -> list[str]:
    """BloodMNIST's labels in short form ('immature granulocytes'), in the registry's order."""
    return [short_label(x) for x in label_names()]


def normalise_name(name: str) -> str:
    """'Immature_Granulocytes' -> 'immature granulocytes'; '01-Basophil' -> 'basophil'."""
    text = re.sub(r"[^0-9a-z]+", " ", name.lower()).strip()
    words = text.split()
    while len(words) > 1 and words[0].isdigit():
        words = words[1:]
    return " ".join(words)


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _key_for(labels: Sequence[str]) -> dict[str, int]:
    """first word of each label ('immature', 'lymphocyte'...) -> its index."""
    return {normalise_name(short_label(label)).split()[0]: i for i, label in enumerate(labels)}


def auto_map(name: str, labels: Sequence[str] | None = None) -> str | None:
    """The BloodMNIST label (as given in `labels`, default the registry's) a class name means, or None."""
    labels = list(labels or label_names())
    index = auto_map_index(name, labels)
    return None if index is None else labels[index]


def auto_map_index(name: str, labels: Sequence[str]) -> int | None:
    keys = _key_for(labels)
    text = normalise_name(name)
    if not text:
        return None
    singular = " ".join(_singular(w) for w in text.split())
    for i, label in enumerate(labels):  # the label itself, its short form, or their singulars
        for form in (label, short_label(label)):
            f = normalise_name(form)
            if text in (f, " ".join(_singular(w) for w in f.split())) or \
                    singular in (f, " ".join(_singular(w) for w in f.split())):
                return i
    for key, words in _SYNONYMS.items():
        if key in keys and (text in words or singular in words or text.replace(" ", "") in words):
            return keys[key]
    words = singular.split()
    if any(bad in w for w in words for bad in _NOT_OURS if not w.startswith(("erythroblast", "normoblast"))):
        return None
    hits = {key for key, stems in _STEMS.items() if key in keys
            for w in words for stem in stems if w.startswith(stem)}
    if "granulocyte" in words and "immature" in words:
        hits.add("immature")
    if len(hits) == 1:
        return keys[hits.pop()]
    return None


def auto_mapping(classes: Iterable[str], labels: Sequence[str] | None = None) -> dict[str, str | None]:
    """Each class name -> a BloodMNIST short label, or None when it matches none of them."""
    labels = list(labels or label_names())
    out = {}
    for name in classes:
        i = auto_map_index(name, labels)
        out[name] = None if i is None else short_label(labels[i])
    return out


NONE_WORDS = ("", "none", "-", "skip", "exclude", "excluded", "null", "unmapped", "(none)", "—")


def resolve_target(value: str | None, labels: Sequence[str]) -> int | None:
    """A mapping target as a user may write it (full or short label, index, synonym; 'none' to leave out)."""
    if value is None or str(value).strip().lower() in NONE_WORDS:
        return None
    text = str(value).strip()
    if text.isdigit() and int(text) < len(labels):
        return int(text)
    for i, label in enumerate(labels):
        if text.lower() in (label.lower(), short_label(label).lower()):
            return i
    i = auto_map_index(text, labels)
    if i is None:
        raise ExternalError(f"unknown class {value!r}; one of: {', '.join(short_label(x) for x in labels)} "
                            f"(or none to leave a class out)")
    return i


def build_mapping(classes: Iterable[str], overrides: Mapping[str, str | None] | None = None,
                  labels: Sequence[str] | None = None) -> dict[str, str | None]:
    """The automatic mapping with a user's edits applied; values are short labels or None (left out).

    An override for a class the dataset does not have is an error (a typo would otherwise go unnoticed).
    """
    labels = list(labels or label_names())
    classes = list(classes)
    mapping = auto_mapping(classes, labels)
    lowered = {c.lower(): c for c in classes}
    for src, dst in (overrides or {}).items():
        key = src if src in mapping else lowered.get(str(src).lower())
        if key is None:
            raise ExternalError(f"the dataset has no class {src!r}; its classes: {', '.join(classes) or 'none'}")
        i = resolve_target(dst, labels)
        mapping[key] = None if i is None else short_label(labels[i])
    return mapping


def parse_map_args(items: Iterable[str]) -> dict[str, str | None]:
    """['Band=neutrophil', 'Smudge=none'] -> {'Band': 'neutrophil', 'Smudge': None}."""
    out: dict[str, str | None] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip():
            raise ExternalError(f"--map takes SOURCE=TARGET (TARGET a BloodMNIST class or none); got {item!r}")
        out[src.strip()] = None if dst.strip().lower() in NONE_WORDS else dst.strip()
    return out


# -- 3. images --------------------------------------------------------------------------------------------

@dataclass
class ExternalImages:
    images: np.ndarray  # (N, S, S, 3) uint8, as the model sees them
    labels: np.ndarray  # (N,) indices into `label_list`
    paths: list[str]
    source_classes: list[str]
    label_list: list[str]  # short BloodMNIST labels, in the model's order
    mapping: dict[str, str | None]
    excluded: dict[str, Any]
    resize: str
    location: str
    kind: str
    counts: dict[str, int]  # files per source class, as found

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def shared(self) -> list[int]:
        """Indices of the BloodMNIST classes the dataset has images of, in label order."""
        return sorted(set(int(v) for v in self.labels if v >= 0))

    def subset(self, index: np.ndarray) -> "ExternalImages":
        index = np.asarray(index, dtype=int)
        return ExternalImages(self.images[index], self.labels[index], [self.paths[i] for i in index],
                              [self.source_classes[i] for i in index], self.label_list, self.mapping,
                              self.excluded, self.resize, self.location, self.kind, self.counts)


def load_images(source: ExternalSource, size: int, mapping: Mapping[str, str | None] | None = None,
                resize: str = "medmnist", labels: Sequence[str] | None = None,
                progress: ProgressFn | None = None, keep_unmapped: bool = False) -> ExternalImages:
    """Decode the mapped files and bring each to (size, size, 3) as the upload path does.

    With `keep_unmapped` the files of unmapped classes are loaded too, with label -1 (for review sessions,
    never for scoring).
    """
    if resize not in RESIZE_MODES:
        raise ExternalError(f"resize must be one of {', '.join(RESIZE_MODES)}")
    labels = [short_label(x) for x in (labels or label_names())]
    mapping = dict(mapping) if mapping is not None else auto_mapping(source.classes, labels)
    for cls in source.classes:
        mapping.setdefault(cls, None)
    index_of = {label: i for i, label in enumerate(labels)}
    unmapped: Counter[str] = Counter()
    todo: list[tuple[SourceFile, int]] = []
    for f in source.files:
        target = mapping.get(f.source_class)
        if target is None and keep_unmapped:
            todo.append((f, -1))
            continue
        if target is None:
            unmapped[f.source_class] += 1
            continue
        if target not in index_of:
            i = resolve_target(target, labels)
            target = labels[i] if i is not None else None
            if target is None:
                unmapped[f.source_class] += 1
                continue
        todo.append((f, index_of[target]))
    images, ys, paths, classes, unreadable = [], [], [], [], []
    for k, (f, y) in enumerate(todo):
        try:
            images.append(to_model_input(read_file(f.path), size, resize))
        except ImageInputError as e:
            unreadable.append(str(e))
            continue
        finally:
            if progress:
                progress(k + 1, len(todo))
        ys.append(y)
        paths.append(f.path)
        classes.append(f.source_class)
    messages = list(source.messages) + unreadable[:MAX_MESSAGES]
    excluded = {
        "unmapped": dict(sorted(unmapped.items())), "unmapped_total": int(sum(unmapped.values())),
        "unreadable": len(unreadable), **source.problems(), "messages": messages[:MAX_MESSAGES],
    }
    stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return ExternalImages(stack, np.asarray(ys, dtype=np.int64), paths, classes, labels,
                          {k: mapping[k] for k in source.classes}, excluded, resize, source.location, source.kind,
                          source.counts)


def excluded_total(excluded: Mapping[str, Any]) -> int:
    """Files found but not evaluated: unmapped, unreadable, outside class folders, not images, missing."""
    return int(excluded.get("unmapped_total", 0) + excluded.get("unreadable", 0) + excluded.get("loose_files", 0)
               + excluded.get("not_images", 0) + excluded.get("missing_files", 0) + excluded.get("bad_rows", 0))


# -- 4. metrics in the study's Tables 14/15 format ------------------------------------------------------

def predictions(probabilities: np.ndarray, allowed: Sequence[int] | None = None) -> np.ndarray:
    """argmax over all classes, or over `allowed` only (the shared classes)."""
    p = np.asarray(probabilities)
    if allowed is None:
        return p.argmax(axis=1)
    allowed = np.asarray(list(allowed), dtype=int)
    return allowed[p[:, allowed].argmax(axis=1)] if len(p) else np.zeros(0, int)


def table_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], shared: Sequence[int],
                  columns: Sequence[int]) -> dict[str, Any]:
    """Per-class precision/recall/F1/support (Table 14) and per-class accuracy (Table 15) for the shared
    classes; the confusion matrix has a row per shared (true) class and a column per possible prediction."""
    from sklearn.metrics import precision_recall_fscore_support  # noqa: PLC0415

    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    n = int(len(y_true))
    correct = int((y_true == y_pred).sum())
    shared = list(shared)
    columns = list(columns)
    if n:
        precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=shared,
                                                                         zero_division=0)
    else:
        precision = recall = f1 = np.zeros(len(shared))
        support = np.zeros(len(shared), dtype=int)
    per_class = {labels[c]: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                             "support": int(support[k]), "accuracy": float(recall[k])}
                 for k, c in enumerate(shared)}
    col_pos = {c: j for j, c in enumerate(columns)}
    confusion = np.zeros((len(shared), len(columns)), dtype=int)
    row_pos = {c: i for i, c in enumerate(shared)}
    for t, p in zip(y_true, y_pred):
        if t in row_pos and p in col_pos:
            confusion[row_pos[t], col_pos[p]] += 1
    outside = Counter(labels[int(p)] for p in y_pred if int(p) not in row_pos)
    low, high = wilson_interval(correct, n)
    return {
        "n": n, "accuracy": correct / n if n else 0.0, "accuracy_ci95": [low, high],
        "balanced_accuracy": float(np.mean(recall)) if n and shared else 0.0,
        "macro_f1": float(np.mean(f1)) if n and shared else 0.0,
        "macro_precision": float(np.mean(precision)) if n and shared else 0.0,
        "macro_recall": float(np.mean(recall)) if n and shared else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(), "rows": [labels[c] for c in shared], "columns": [labels[c] for c in columns],
        "predicted_outside": dict(sorted(outside.items())), "predicted_outside_total": int(sum(outside.values())),
    }


def both_modes(y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
               shared: Sequence[int]) -> dict[str, dict[str, Any]]:
    everything = list(range(len(labels)))
    return {"all": table_metrics(y_true, predictions(probabilities), labels, shared, everything),
            "shared": table_metrics(y_true, predictions(probabilities, shared), labels, shared, shared)}


# -- storage ------------------------------------------------------------------------------------------------

def evaluations_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / EXTERNAL_DIR


def _write(run_dir: str | Path, record: dict[str, Any]) -> Path:
    from core.store.io import write_json  # noqa: PLC0415

    folder = evaluations_dir(run_dir)
    folder.mkdir(exist_ok=True)
    path = folder / f"{record['id']}.json"
    write_json(path, record)
    return path


def load_evaluation(run_dir: str | Path, eval_id: str) -> dict[str, Any]:
    if not EVAL_ID.match(str(eval_id)):
        raise ExternalError(f"invalid evaluation id {eval_id!r}")
    path = evaluations_dir(run_dir) / f"{eval_id}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExternalError(f"no external evaluation {eval_id} in {run_dir}") from None
    except (OSError, ValueError) as e:
        raise ExternalError(f"external evaluation {eval_id} cannot be read ({e})") from None


def list_evaluations(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's stored external evaluations, newest first, as short rows (damaged files are skipped)."""
    folder = evaluations_dir(run_dir)
    if not folder.is_dir():
        return []
    rows = []
    for path in folder.glob("*.json"):
        if not EVAL_ID.match(path.stem):
            continue
        try:
            rows.append(evaluation_row(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(rows, key=lambda r: r["id"], reverse=True)


def evaluation_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One line per evaluation, for tables (the Results page shows these)."""
    m = record["metrics"]
    ft = record.get("fine_tune") or {}
    return {
        "id": record["id"], "created": record.get("created"), "dataset": Path(record["dataset"]["path"]).name,
        "dataset_path": record["dataset"]["path"], "normalize": record.get("normalize"),
        "resize": record.get("resize"), "n_images": record.get("n_images"),
        "excluded": excluded_total(record.get("excluded", {})),
        "accuracy_all": m["all"]["accuracy"], "accuracy_shared": m["shared"]["accuracy"],
        "balanced_accuracy_all": m["all"].get("balanced_accuracy"),
        "macro_f1_all": m["all"].get("macro_f1"),
        "fine_tuned_accuracy": (ft.get("fine_tuned") or {}).get("all", {}).get("accuracy"),
    }


def evaluations_table(run_dirs: Mapping[str, str | Path]) -> list[dict[str, Any]]:
    """Every stored external evaluation of some runs ({run_id: run folder}), one row each, newest first per run:
    what the Results page lists."""
    rows = []
    for run_id, folder in run_dirs.items():
        rows += [{"run_id": run_id, **r} for r in list_evaluations(folder)]
    return rows


def new_eval_id() -> str:
    from core.store.io import new_run_id  # noqa: PLC0415

    return new_run_id()


# -- 4. zero-shot evaluation ------------------------------------------------------------------------------

def evaluate(clf, data: ExternalImages, normalize: str = "none", *, run_dir: str | Path | None = None,
             store: bool = True, target=None, keep_predictions: bool = True) -> dict[str, Any]:
    """Score the classifier's run, unchanged, on `data` (after colour normalisation if asked)."""
    from core.validation import stain  # noqa: PLC0415

    if len(data) == 0:
        raise ExternalError("No images to evaluate: no class is mapped to a BloodMNIST class, or no file "
                            "could be read")
    run_dir = Path(run_dir or clf.run.path)
    if (data.labels < 0).any():
        raise ExternalError("images of unmapped classes cannot be scored; map their class or leave it out")
    if data.images.shape[1] != clf.image_size:
        raise ExternalError(f"images are {data.images.shape[1]} px but the model takes {clf.image_size} px")
    if normalize != "none" and target is None:
        target = stain.run_target(run_dir)
    started = time.perf_counter()
    images, note = stain.normalize(data.images, normalize, target)
    probabilities = clf.probabilities(images)
    labels = [short_label(x) for x in clf.labels]
    shared = data.shared
    metrics = both_modes(data.labels, probabilities, labels, shared)
    pred_all, pred_shared = predictions(probabilities), predictions(probabilities, shared)
    record: dict[str, Any] = {
        "id": new_eval_id(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": clf.run.run_id, "run_path": str(run_dir), "arch": clf.config.arch, "image_size": clf.image_size,
        "dataset": {"path": data.location, "kind": data.kind, "counts": data.counts},
        "mapping": data.mapping, "excluded": data.excluded,
        "normalize": normalize, "normalization": {k: v for k, v in note.items() if k != "method"},
        "resize": data.resize, "n_images": len(data),
        "labels": labels, "shared_labels": [labels[c] for c in shared],
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 3),
        "fine_tune": None,
    }
    if keep_predictions:
        record["predictions"] = [
            {"path": p, "source_class": s, "true": labels[int(t)], "pred": labels[int(a)],
             "pred_shared": labels[int(b)], "confidence": round(float(pr[int(a)]), 6)}
            for p, s, t, a, b, pr in zip(data.paths, data.source_classes, data.labels, pred_all, pred_shared,
                                         probabilities)]
    if store:
        record["stored_at"] = str(_write(run_dir, record))
    return record


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON the command line prints: the all-classes result at the top, the shared-only one inside."""
    m_all, m_shared = record["metrics"]["all"], record["metrics"]["shared"]

    def part(m: Mapping[str, Any]) -> dict[str, Any]:
        return {"accuracy": m["accuracy"], "accuracy_ci95": m["accuracy_ci95"],
                "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"], "per_class": m["per_class"],
                "confusion": m["confusion"], "confusion_rows": m["rows"], "labels": m["columns"],
                "predicted_outside": m["predicted_outside"]}

    out = {"eval_id": record["id"], "run": record["run_path"], "dataset": record["dataset"]["path"],
           "normalize": record["normalize"], "resize": record["resize"], "n_images": record["n_images"],
           "mapping": record["mapping"], "excluded": {k: v for k, v in record["excluded"].items() if k != "messages"},
           **part(m_all), "shared_only": part(m_shared)}
    if record.get("stored_at"):
        out["stored_at"] = record["stored_at"]
    if record.get("fine_tune"):
        out["fine_tune"] = {k: v for k, v in record["fine_tune"].items() if k != "history"}
    return out


def table14(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the study's Table 14 (precision, recall, F1, support) with Table 15's per-class accuracy; the
    Overall row holds the macro averages of precision, recall and F1, and the accuracy over all images."""
    rows = [{"class": label, "precision": v["precision"], "recall": v["recall"], "f1": v["f1"],
             "support": v["support"], "accuracy": v["accuracy"]} for label, v in metrics["per_class"].items()]
    rows.append({"class": "Overall", "precision": metrics.get("macro_precision"),
                 "recall": metrics.get("macro_recall", metrics.get("balanced_accuracy")), "f1": metrics["macro_f1"],
                 "support": metrics["n"], "accuracy": metrics["accuracy"]})
    return rows


# -- convenience: path in, stored record out ----------------------------------------------------------------

def load_for_run(clf, folder: str | Path | None = None, csv_file: str | Path | None = None,
                 overrides: Mapping[str, str | None] | None = None, resize: str = "medmnist",
                 progress: ProgressFn | None = None) -> ExternalImages:
    """Scan and map a dataset, and load it at the classifier's input size."""
    source = scan(folder, csv_file)
    mapping = build_mapping(source.classes, overrides, clf.labels)
    return load_images(source, clf.image_size, mapping, resize, clf.labels, progress)


def run_external(run_dir: str | Path, folder: str | Path | None = None, csv_file: str | Path | None = None,
                 overrides: Mapping[str, str | None] | None = None, normalize: str = "none",
                 resize: str = "medmnist", store: bool = True, clf=None,
                 progress: ProgressFn | None = None) -> dict[str, Any]:
    """Scan, map, load and evaluate in one call (the command line's path)."""
    from core.validation import stain  # noqa: PLC0415

    if normalize not in stain.METHODS:
        raise ExternalError(f"--normalize must be one of {', '.join(stain.METHODS)}")
    if clf is None:
        from core.inference.classifier import Classifier  # noqa: PLC0415

        clf = Classifier(run_dir)
    data = load_for_run(clf, folder, csv_file, overrides, resize, progress)
    return evaluate(clf, data, normalize, run_dir=run_dir, store=store)


# -- 5. fine-tuning on part of the external data -----------------------------------------------------------

def stratified_halves(labels: np.ndarray, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fine-tune indices, held-out indices): `fraction` of each class to fine-tune, the rest held out.

    A class with one image goes to the held-out part (it is scored, not learnt from).
    """
    rng = np.random.default_rng(seed)
    tune, held = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(members) * fraction))
        k = min(k, len(members) - 1) if len(members) > 1 else 0
        tune.append(members[:k])
        held.append(members[k:])
    return np.sort(np.concatenate(tune)).astype(int), np.sort(np.concatenate(held)).astype(int)


def fine_tune(clf, data: ExternalImages, normalize: str = "none", *, fraction: float = 0.5, seed: int = 0,
              epochs: int = 3, lr: float = 1e-4, batch_size: int = 16, target=None,
              run_dir: str | Path | None = None, eval_id: str | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Fine-tune a copy of the run's model on a stratified part of the data; score the held-out part.

    BatchNorm layers stay frozen (their statistics are the training set's: a few dozen external images
    would only add noise), the rest trains with Adam at a small learning rate, with flips and 90-degree
    turns as augmentation. The zero-shot model is scored on the same held-out images for comparison.
    With `eval_id` the result is stored in that evaluation's record. The run's model file is never changed.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from core.validation import stain  # noqa: PLC0415

    run_dir = Path(run_dir or clf.run.path)
    if not 0.05 <= fraction <= 0.95:
        raise ExternalError("the fine-tune fraction must be between 0.05 and 0.95")
    if not 1 <= epochs <= 50:
        raise ExternalError("fine-tune epochs must be 1..50")
    if normalize != "none" and target is None:
        target = stain.run_target(run_dir)
    if (data.labels < 0).any():
        raise ExternalError("images of unmapped classes cannot be used; map their class or leave it out")
    images, _ = stain.normalize(data.images, normalize, target)
    tune, held = stratified_halves(data.labels, fraction, seed)
    if len(tune) == 0 or len(held) == 0:
        raise ExternalError("too few images to split into a fine-tune part and a held-out part")
    labels = [short_label(x) for x in clf.labels]
    n_classes = len(labels)
    shared = data.shared
    zero_shot = both_modes(data.labels[held], clf.probabilities(images[held]), labels, shared)

    keras.utils.set_random_seed(seed)
    model = keras.models.clone_model(clf.model)
    model.set_weights(clf.model.get_weights())
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=False)
    x = images[tune]
    y = keras.utils.to_categorical(data.labels[tune], n_classes)
    rng = np.random.default_rng(seed)
    history = []
    started = time.perf_counter()
    for epoch in range(epochs):
        xa = np.rot90(x, k=int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            xa = xa[:, :, ::-1]
        if rng.random() < 0.5:
            xa = xa[:, ::-1]
        xa = clf.preprocess(tf.constant(np.ascontiguousarray(xa))).numpy()
        h = model.fit(xa, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
        history.append({"epoch": epoch + 1, "loss": float(h.history["loss"][-1]),
                        "accuracy": float(h.history["accuracy"][-1])})
        if progress:
            progress(epoch + 1, epochs)
    xh = clf.preprocess(tf.constant(images[held])).numpy()
    tuned_probs = model.predict(xh, batch_size=64, verbose=0)
    result = {
        "fraction": fraction, "seed": seed, "epochs": epochs, "lr": lr, "batch_size": batch_size,
        "normalize": normalize, "n_fine_tune": int(len(tune)), "n_held_out": int(len(held)),
        "fine_tune_counts": {labels[c]: int((data.labels[tune] == c).sum()) for c in shared},
        "held_out_counts": {labels[c]: int((data.labels[held] == c).sum()) for c in shared},
        "frozen_batchnorm": True, "seconds": round(time.perf_counter() - started, 2), "history": history,
        "zero_shot": zero_shot, "fine_tuned": both_modes(data.labels[held], tuned_probs, labels, shared),
    }
    del model
    if eval_id:
        record = load_evaluation(run_dir, eval_id)
        record["fine_tune"] = result
        _write(run_dir, record)
    return result
