"""Which files a dashboard user may name: the one confinement check for every typed path.

A path typed into a page (an external dataset's folder or CSV, a review folder, a training file, a weights
file), and every path a manifest names, is resolved (symlinks included, as the operating system would follow
them) and must lie inside one of the configured data roots (`load_settings().data_roots`: the BloodMNIST
data folder, the artifacts folder and the roots of `cellscope.toml` / `$CELLSCOPE_DATA_ROOTS`). Anything
else is refused with a `PathNotAllowed` naming the path and the allowed roots; nothing is read from a file
to decide, so a refusal never shows a file's contents.

The command line acts as the local administrator and passes no roots (`roots=None` everywhere means "not
confined").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from core.access.roles import AccessDenied

Roots = Sequence[Path]


class PathNotAllowed(AccessDenied):
    """A path outside the folders this server may read."""


def data_roots() -> tuple[Path, ...]:
    """The configured data roots, resolved (read from the settings on each call: they may change)."""
    from core.access.settings import load_settings  # noqa: PLC0415 - settings imports the data registry

    return load_settings().data_roots


def resolve(path: str | Path) -> Path:
    """`path` made absolute with `~` expanded and every symlink followed (what opening it would read)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def is_inside(path: str | Path, roots: Roots) -> bool:
    """True when the resolved `path` is one of `roots` or lies under one (roots are compared resolved)."""
    real = resolve(path)
    return any(real == r or real.is_relative_to(r) for r in map(resolve, roots))


def roots_text(roots: Roots) -> str:
    return ", ".join(str(r) for r in roots) or "(none configured)"


def confine(path: str | Path, roots: Roots | None = None, what: str = "path") -> Path:
    """The resolved `path`, or PathNotAllowed when it lies outside the data roots (`roots`, default: the
    configured ones). `what` names the input in the message ("dataset folder", "CSV file", ...)."""
    text = str(path).strip()
    if not text or "\x00" in text:
        raise PathNotAllowed(f"Enter a {what}")
    roots = tuple(roots) if roots is not None else data_roots()
    real = resolve(text)
    if not is_inside(real, roots):
        shown = text if str(real) == text else f"{text} (resolves to {real})"
        raise PathNotAllowed(f"The {what} {shown} is outside the folders this server may read: "
                             f"{roots_text(roots)}. An admin can add a folder to `[data] roots` in "
                             f"cellscope.toml.")
    return real
