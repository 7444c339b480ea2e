"""Text the pages share: messages shown literally in Markdown, counted nouns, and the resize modes' names."""

from __future__ import annotations

import re

_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|$~])")


def md_escape(text: object) -> str:
    """A message as literal Markdown text (paths, <urlopen error>, $VARS, under_scores), its lines kept."""
    return "  \n".join(_MARKDOWN.sub(r"\\\1", str(text)).splitlines())


def plural(n: int, word: str) -> str:
    """'1 run', '3 runs'."""
    return f"{n} {word}{'s' * (n != 1)}"


# core.data.images.RESIZE_MODES as the pages name and explain them
RESIZE_TITLES = {"medmnist": "MedMNIST recipe", "plain": "Plain resize"}
RESIZE_HELP = ("MedMNIST recipe: centre crop 200×200 px, then resize (how BloodMNIST was made from the 360×363 "
               "CellaVision originals)\n\nPlain resize of the whole image (for images already cropped to one cell)")
