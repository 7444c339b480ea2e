"""External validation, step 2: a dataset's class names -> BloodMNIST's labels.

Case, plurals, abbreviations and synonyms ('ig', 'immature granulocyte', the 'lymph' prefix...) are matched
automatically; a user's edits override them. Classes mapped to nothing are left out, with their counts
reported. The labels themselves always come from medmnist's registry.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

from core.data.registry import label_names, short_label
from core.validation.external.errors import ExternalError

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
