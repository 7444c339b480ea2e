"""External validation, step 3: decode the mapped files and bring them to the model's input exactly as the
upload path does (`core.data.images.to_model_input`, MedMNIST recipe by default); unreadable files are counted,
and so, with cell-centred framing, are images in which no cell is found (`no_cell`): skipped, never guessed.
With `roots` (a page: the data roots), each file is checked again just before it is read, so a file swapped
for a link to outside the roots after the (cached) scan is left out too, counted with `outside`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.access.paths import Roots, is_inside
from core.data.images import CELL, RESIZE_MODES, ImageInputError, NoCellError, read_file, to_model_input
from core.data.registry import label_names, short_label
from core.validation.external.errors import ExternalError
from core.validation.external.mapping import auto_mapping, build_mapping, resolve_target
from core.validation.external.scan import MAX_MESSAGES, ExternalSource, SourceFile, scan

ProgressFn = Callable[[int, int], None]


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
                progress: ProgressFn | None = None, keep_unmapped: bool = False,
                cell_fraction: float | None = None, roots: Roots | None = None) -> ExternalImages:
    """Decode the mapped files and bring each to (size, size, 3) as the upload path does.

    With `keep_unmapped` the files of unmapped classes are loaded too, with label -1 (for review sessions,
    never for scoring). Cell framing (`resize="cell"`) needs the run's target, `cell_fraction`
    (`core.data.cell_framing.run_fraction`); images without a cell are counted in `excluded["no_cell"]`.
    """
    if resize not in RESIZE_MODES:
        raise ExternalError(f"resize must be one of {', '.join(RESIZE_MODES)}")
    if resize == CELL and cell_fraction is None:
        raise ExternalError("cell framing needs the run's cell size target (core.data.cell_framing.run_fraction)")
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
    images, ys, paths, classes, unreadable, no_cell = [], [], [], [], [], []
    outside = 0
    for k, (f, y) in enumerate(todo):
        if roots is not None and not is_inside(f.path, roots):
            outside += 1
            if progress:
                progress(k + 1, len(todo))
            continue
        try:
            images.append(to_model_input(read_file(f.path), size, resize, cell_fraction, Path(f.path).name))
        except NoCellError as e:
            no_cell.append(str(e))
            continue
        except ImageInputError as e:
            unreadable.append(str(e))
            continue
        finally:
            if progress:
                progress(k + 1, len(todo))
        ys.append(y)
        paths.append(f.path)
        classes.append(f.source_class)
    messages = list(source.messages) + unreadable[:MAX_MESSAGES] + no_cell[:MAX_MESSAGES]
    excluded = {
        "unmapped": dict(sorted(unmapped.items())), "unmapped_total": int(sum(unmapped.values())),
        "unreadable": len(unreadable), **({"no_cell": len(no_cell)} if resize == CELL else {}),
        **source.problems(), "messages": messages[:MAX_MESSAGES],
    }
    excluded["outside"] = source.outside + outside
    stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return ExternalImages(stack, np.asarray(ys, dtype=np.int64), paths, classes, labels,
                          {k: mapping[k] for k in source.classes}, excluded, resize, source.location, source.kind,
                          source.counts)


def load_for_run(clf, folder: str | Path | None = None, csv_file: str | Path | None = None,
                 overrides: Mapping[str, str | None] | None = None, resize: str = "medmnist",
                 progress: ProgressFn | None = None) -> ExternalImages:
    """Scan and map a dataset, and load it at the classifier's input size (cell framing: to its run's target)."""
    from core.data.cell_framing import run_fraction  # noqa: PLC0415  (OpenCV only when framing)

    source = scan(folder, csv_file)
    mapping = build_mapping(source.classes, overrides, clf.labels)
    return load_images(source, clf.image_size, mapping, resize, clf.labels, progress,
                       cell_fraction=run_fraction(clf.run.path, resize))
