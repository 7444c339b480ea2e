"""The user file for login = "password": user names, roles and argon2 password hashes, never passwords.

A TOML file (its path is `load_settings().users_file`), written only by `python -m core users ...` and by a
rehash at login, always through the atomic write and with mode 0600 (readable by the server's account only):

    [users."ada"]
    roles = ["trainer", "reviewer"]
    password = "$argon2id$v=19$m=65536,t=3,p=4$..."

Hashing and checking are argon2-cffi's `PasswordHasher` (argon2id, its recommended parameters); nothing here
hashes by hand. `verify` costs one argon2 check whether or not the user exists (a missing user is checked
against a dummy hash), so the time taken does not tell which names exist; a hash made with older parameters
is replaced by one with the current parameters at the next successful login.

`LoginThrottle` slows down guessing: after a few wrong passwords for a name, that name is refused for a
delay that doubles with each further failure, for every browser session of this server process.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import tomllib
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.access.roles import AccessDenied, User, check_roles, check_user_name
from core.errors import UserFacingError
from core.store.io import write_atomic

FILE_MODE = 0o600
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 accepts any length; a bound keeps one login's cost bounded
HEADER = ("# CellScope users (login = \"password\"): written by `python -m core users`; argon2 hashes, never "
          "passwords.\n# Keep this file private (mode 0600).\n")


class UsersFileError(UserFacingError):
    """The user file cannot be read or written, or a user command cannot be done (unknown user, weak password)."""


@dataclass(frozen=True)
class UserRecord:
    name: str
    roles: tuple[str, ...]
    password_hash: str

    @property
    def user(self) -> User:
        return User(self.name, self.roles)


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise UsersFileError(f"A password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UsersFileError(f"A password has at most {MAX_PASSWORD} characters")
    return password


@lru_cache(maxsize=8)
def _dummy_hash_for(time_cost: int, memory_cost: int, parallelism: int, hash_len: int, salt_len: int) -> str:
    return PasswordHasher(time_cost, memory_cost, parallelism, hash_len, salt_len).hash(
        "no such user: this hash matches no password anyone types")


def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash with the hasher's parameters (made once per set of parameters, so a missing user costs one
    check, as a present one does), checked when the user does not exist."""
    return _dummy_hash_for(hasher.time_cost, hasher.memory_cost, hasher.parallelism, hasher.hash_len,
                           hasher.salt_len)


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


class UserFile:
    """The users of one file. Every change re-reads the file and writes it whole, atomically."""

    _lock = threading.Lock()  # one writer at a time within this process (the rehash at login)

    def __init__(self, path: str | Path, hasher: PasswordHasher | None = None):
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher()

    # -- reading --------------------------------------------------------------------------------------
    def records(self) -> dict[str, UserRecord]:
        """Every user in the file (an absent file has none); a damaged file is one UsersFileError naming it."""
        if not self.path.exists():
            return {}
        try:
            raw = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise UsersFileError(f"Cannot read the user file {self.path}: {e}") from None
        users = raw.get("users", {})
        if not isinstance(users, dict) or set(raw) - {"users"}:
            raise UsersFileError(f"{self.path}: expected only [users.\"NAME\"] tables")
        out: dict[str, UserRecord] = {}
        for name, entry in users.items():
            try:
                if not isinstance(entry, dict) or not isinstance(entry.get("password"), str):
                    raise AccessDenied("needs `roles` and `password`")
                roles = entry.get("roles", [])
                out[name] = UserRecord(check_user_name(name), check_roles(roles if isinstance(roles, list) else []),
                                       entry["password"])
            except AccessDenied as e:
                raise UsersFileError(f"{self.path}: user {name!r}: {e}") from None
        return out

    def list(self) -> list[User]:
        return [r.user for r in sorted(self.records().values(), key=lambda r: r.name.lower())]

    def current(self, user: User) -> User | None:
        """`user` as the file says now (their current roles), or None when they have been removed."""
        record = self.records().get(user.name)
        return record.user if record else None

    # -- changing -------------------------------------------------------------------------------------
    def _write(self, records: dict[str, UserRecord]) -> None:
        lines = [HEADER]
        for r in sorted(records.values(), key=lambda r: r.name.lower()):
            lines.append(f"\n[users.{_toml_string(r.name)}]\nroles = [{', '.join(map(_toml_string, r.roles))}]\n"
                         f"password = {_toml_string(r.password_hash)}\n")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, "".join(lines), mode=FILE_MODE)
        except OSError as e:
            raise UsersFileError(f"Cannot write the user file {self.path} ({e.strerror or e})") from None

    def add(self, name: str, roles: list[str] | tuple[str, ...], password: str) -> User:
        """A new user with these roles (an existing name is refused: use set_password or remove it first)."""
        user = User(check_user_name(name), check_roles(roles))
        password_hash = self.hasher.hash(check_password(password))
        with self._lock:
            records = self.records()
            if user.name in records:
                raise UsersFileError(f"User {user.name!r} already exists in {self.path}")
            records[user.name] = UserRecord(user.name, user.roles, password_hash)
            self._write(records)
        return user

    def remove(self, name: str) -> None:
        with self._lock:
            records = self.records()
            if name not in records:
                raise UsersFileError(f"No user {name!r} in {self.path}")
            del records[name]
            self._write(records)

    def set_password(self, name: str, password: str) -> None:
        password_hash = self.hasher.hash(check_password(password))
        self._replace_hash(name, password_hash, must_exist=True)

    def _replace_hash(self, name: str, password_hash: str, must_exist: bool) -> None:
        with self._lock:
            records = self.records()
            if name not in records:
                if must_exist:
                    raise UsersFileError(f"No user {name!r} in {self.path}")
                return  # removed meanwhile: nothing to rehash
            old = records[name]
            records[name] = UserRecord(old.name, old.roles, password_hash)
            self._write(records)

    # -- logging in -----------------------------------------------------------------------------------
    def verify(self, name: str, password: str) -> User | None:
        """The user when `password` is theirs, else None. One argon2 check whether or not the user exists; a
        hash with outdated parameters is replaced (a failure to write it does not refuse the login)."""
        name = (name or "").strip()
        record = self.records().get(name)
        stored = record.password_hash if record else _dummy_hash(self.hasher)
        password = password if isinstance(password, str) else ""
        try:
            self.hasher.verify(stored, password[:MAX_PASSWORD])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if record is None:
            return None
        if self.hasher.check_needs_rehash(stored):
            try:
                self._replace_hash(record.name, self.hasher.hash(password), must_exist=False)
            except UsersFileError:
                pass  # the login is still valid; the next one tries again
        return record.user


def world_readable(path: str | Path) -> bool:
    """Whether anyone but the owner (group or others) may read the file."""
    return bool(os.stat(path).st_mode & 0o077)


class LoginThrottle:
    """Failed logins per user name, shared by every session of the process: after `free` failures, the
    name is refused for `base` seconds, doubling with each further failure, up to `cap`; a success clears it."""

    def __init__(self, free: int = 3, base: float = 2.0, cap: float = 300.0):
        self.free, self.base, self.cap = free, base, cap
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(name: str) -> str:
        return (name or "").strip().lower()

    def wait(self, name: str, now: float | None = None) -> float:
        """Seconds until `name` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            count, last = self._failures.get(self._key(name), (0, 0.0))
        if count < self.free:
            return 0.0
        delay = min(self.base * 2 ** (count - self.free), self.cap)
        return max(0.0, last + delay - now)

    def failed(self, name: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            count, _ = self._failures.get(self._key(name), (0, 0.0))
            self._failures[self._key(name)] = (count + 1, now)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(self._key(name), None)


LOGIN_THROTTLE = LoginThrottle()  # the server process's one throttle
