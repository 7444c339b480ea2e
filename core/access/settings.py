"""The server's settings file, `cellscope.toml`: which folders the dashboard may read, and how users log in.

The file is optional. Without it, one user on localhost works as before: login is off and the data roots are
the BloodMNIST data folder (`$CELLSCOPE_DATA_DIR` or medmnist's) and the artifacts folder. Its location is
`$CELLSCOPE_SETTINGS`, else `cellscope.toml` in the project folder (ignored by git; the README's "Serving to a
class or a lab" shows it in use). Relative paths in it are relative to the file's own folder.

    [data]
    roots = ["/srv/cells", "../shared/data"]   # added to the two default roots

    [access]
    login = "password"          # "none" (default), "password" (a hashed user file) or "oidc" (st.login)
    users_file = "users.toml"   # for "password": written by `python -m core users add NAME --role ROLE`
    default_roles = ["viewer"]  # for "oidc": the roles of an address not listed below

    [access.oidc_roles]         # for "oidc": roles by e-mail address
    "head@lab.example" = ["admin"]

`$CELLSCOPE_DATA_ROOTS` (paths separated by `os.pathsep`) adds roots without a file (tests, containers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import tomllib

from core.errors import UserFacingError

SETTINGS_ENV = "CELLSCOPE_SETTINGS"
DATA_ROOTS_ENV = "CELLSCOPE_DATA_ROOTS"
SETTINGS_FILE = "cellscope.toml"
LOGIN_MODES = ("none", "password", "oidc")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SettingsError(UserFacingError):
    pass


@dataclass(frozen=True)
class ServerSettings:
    data_roots: tuple[Path, ...]
    login: str = "none"
    users_file: Path | None = None
    oidc_roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_roles: tuple[str, ...] = ("viewer",)
    source: Path | None = None  # the file read, None when there is none


def settings_path() -> Path:
    return Path(os.environ.get(SETTINGS_ENV) or PROJECT_ROOT / SETTINGS_FILE).expanduser()


def default_data_roots() -> tuple[Path, ...]:
    """The BloodMNIST data folder and the artifacts folder, plus $CELLSCOPE_DATA_ROOTS."""
    from core.data.registry import data_root  # noqa: PLC0415 - keeps this module's import light
    from core.store.runs import default_runs_dir  # noqa: PLC0415

    roots = [data_root(), default_runs_dir().parent]
    roots += [Path(p).expanduser() for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return tuple(roots)


def _strings(value: Any, key: str, path: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SettingsError(f"{path}: `{key}` must be a list of non-empty strings")
    return tuple(value)


def load_settings(path: str | Path | None = None) -> ServerSettings:
    """Read the settings file (a missing file gives the single-user defaults); every key is checked, and a
    bad file is one SettingsError naming the file and the key."""
    path = Path(path) if path is not None else settings_path()
    roots = default_data_roots()
    if not path.is_file():
        return ServerSettings(data_roots=tuple(_resolved(r) for r in roots))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"Could not read the settings file {path}: {e}") from e
    unknown = set(raw) - {"data", "access"}
    if unknown:
        raise SettingsError(f"{path}: unknown section(s) {', '.join(sorted(unknown))} (known: data, access)")
    base = path.parent
    data, access = raw.get("data", {}), raw.get("access", {})
    extra_roots = [base / Path(r).expanduser() for r in _strings(data.get("roots", []), "data.roots", path)]
    login = access.get("login", "none")
    if login not in LOGIN_MODES:
        raise SettingsError(f"{path}: access.login must be one of {', '.join(LOGIN_MODES)}, not {login!r}")
    users_file = access.get("users_file")
    if login == "password" and not users_file:
        raise SettingsError(f"{path}: access.login = \"password\" needs access.users_file")
    oidc_roles = access.get("oidc_roles", {})
    if not isinstance(oidc_roles, dict):
        raise SettingsError(f"{path}: [access.oidc_roles] must map e-mail addresses to lists of roles")
    from core.access.roles import AccessDenied, check_roles  # noqa: PLC0415 - roles imports nothing from here

    try:
        return ServerSettings(
            data_roots=tuple(_resolved(r) for r in [*roots, *extra_roots]),
            login=login,
            users_file=_resolved(base / Path(users_file).expanduser()) if users_file else None,
            oidc_roles={k.strip().lower(): check_roles(_strings(v, f"access.oidc_roles.{k}", path))
                        for k, v in oidc_roles.items()},
            default_roles=check_roles(_strings(access.get("default_roles", ["viewer"]), "access.default_roles", path)),
            source=path)
    except AccessDenied as e:
        raise SettingsError(f"{path}: {e}") from e


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))
