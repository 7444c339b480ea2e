"""Text for Markdown elements: user-facing messages shown literally, and counted nouns."""

from __future__ import annotations

import re

_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|$~])")


def md_escape(text: object) -> str:
    """A message as literal Markdown text (paths, <urlopen error>, $VARS, under_scores), its lines kept."""
    return "  \n".join(_MARKDOWN.sub(r"\\\1", str(text)).splitlines())


def plural(n: int, word: str) -> str:
    """'1 run', '3 runs'."""
    return f"{n} {word}{'s' * (n != 1)}"
