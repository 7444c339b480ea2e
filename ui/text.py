"""Text the pages share: messages shown literally in Markdown, counted nouns, and the resize modes' names."""

from __future__ import annotations

import re

from core.data.images import RESIZE_DESCRIPTIONS, RESIZE_MODES

_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|$~])")


def md_escape(text: object) -> str:
    """A message as literal Markdown text (paths, <urlopen error>, $VARS, under_scores), its lines kept."""
    return "  \n".join(_MARKDOWN.sub(r"\\\1", str(text)).splitlines())


def plural(n: int, word: str) -> str:
    """'1 run', '3 runs'."""
    return f"{n} {word}{'s' * (n != 1)}"


# core.data.images.RESIZE_MODES as the pages name them; what each does is said once, in RESIZE_DESCRIPTIONS
RESIZE_TITLES = {"medmnist": "MedMNIST recipe", "plain": "Plain resize", "cell": "Cell-centred"}
RESIZE_HELP = "\n\n".join(f"{RESIZE_TITLES[m]}: {RESIZE_DESCRIPTIONS[m]}" for m in RESIZE_MODES)
