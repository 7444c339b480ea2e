"""The hashed-password user file (argon2 through argon2-cffi) and its `python -m core users` command: real
files, a real process for the command line."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from core import cli
from core.access.roles import AccessDenied, User
from core.access.users import LoginThrottle, UserFile, UsersFileError, _dummy_hash, world_readable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)  # cheap parameters for the tests


class CountingHasher(PasswordHasher):
    """A real argon2 hasher that also counts the checks it makes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.checks = 0

    def verify(self, hash, password):
        self.checks += 1
        return super().verify(hash, password)


def settings_file(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "cellscope.toml"
    path.write_text('[access]\nlogin = "password"\nusers_file = "users.toml"\n')
    monkeypatch.setenv("CELLSCOPE_SETTINGS", str(path))
    return tmp_path / "users.toml"


def test_add_list_verify_set_password_remove(tmp_path):
    users = UserFile(tmp_path / "users.toml", FAST)
    assert users.list() == []
    users.add("ada", ["trainer", "reviewer"], "correct horse")
    users.add("bob", ["viewer"], "battery staple")
    assert users.list() == [User("ada", ("trainer", "reviewer")), User("bob", ("viewer",))]
    text = (tmp_path / "users.toml").read_text()
    assert "correct horse" not in text and "$argon2id$" in text  # hashes, never passwords
    assert users.verify("ada", "correct horse") == User("ada", ("trainer", "reviewer"))
    assert users.verify("ada", "battery staple") is None
    assert users.verify("nobody", "correct horse") is None
    users.set_password("ada", "a new passphrase")
    assert users.verify("ada", "correct horse") is None
    assert users.verify("ada", "a new passphrase") is not None
    users.remove("bob")
    assert [u.name for u in users.list()] == ["ada"]
    assert users.verify("bob", "battery staple") is None


def test_bad_input_is_refused_and_nothing_stored_is_lost(tmp_path):
    path = tmp_path / "users.toml"
    users = UserFile(path, FAST)
    users.add("ada", ["admin"], "correct horse")
    before = path.read_bytes()
    with pytest.raises(UsersFileError, match="already exists"):
        users.add("ada", ["viewer"], "another password")
    with pytest.raises(UsersFileError, match="at least"):
        users.add("bob", ["viewer"], "short")
    with pytest.raises(AccessDenied, match="unknown role"):
        users.add("bob", ["wizard"], "long enough")
    with pytest.raises(UsersFileError, match="No user"):
        users.remove("carol")
    with pytest.raises(UsersFileError, match="No user"):
        users.set_password("carol", "long enough")
    assert path.read_bytes() == before
    path.write_text("[users.x\nthis is not toml")
    with pytest.raises(UsersFileError, match=str(path)):
        users.verify("ada", "correct horse")


def test_verify_costs_one_argon2_check_whether_or_not_the_user_exists(tmp_path):
    hasher = CountingHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    users = UserFile(tmp_path / "users.toml", hasher)
    users.add("ada", ["viewer"], "correct horse")
    assert users.verify("ada", "wrong password") is None and hasher.checks == 1
    assert users.verify("nobody", "wrong password") is None and hasher.checks == 2
    assert users.verify("ada", "correct horse") is not None and hasher.checks == 3
    # the dummy hash is made once per set of parameters, not per login (the server makes a hasher per login)
    again = UserFile(tmp_path / "users.toml", PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    assert _dummy_hash(again.hasher) == _dummy_hash(hasher)


def test_a_hash_with_old_parameters_is_replaced_at_login(tmp_path):
    path = tmp_path / "users.toml"
    UserFile(path, FAST).add("ada", ["viewer"], "correct horse")
    assert "m=8192,t=1" in path.read_text()
    current = PasswordHasher(time_cost=2, memory_cost=16 * 1024, parallelism=1)
    assert UserFile(path, current).verify("ada", "correct horse") == User("ada", ("viewer",))
    assert "m=16384,t=2" in path.read_text() and "m=8192,t=1" not in path.read_text()
    assert not world_readable(path)
    assert UserFile(path, current).verify("ada", "correct horse") is not None  # the new hash still matches


def test_the_user_file_is_never_world_readable(tmp_path):
    path = tmp_path / "users.toml"
    old = os.umask(0)  # even a permissive umask
    try:
        users = UserFile(path, FAST)
        users.add("ada", ["viewer"], "correct horse")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        users.set_password("ada", "a new passphrase")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        users.remove("ada")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.iterdir() if p.name != "users.toml"]  # no temporary file left


def test_throttle_delays_a_name_after_repeated_failures():
    throttle = LoginThrottle(free=3, base=2.0, cap=10.0)
    for _ in range(3):
        assert throttle.wait("ada", now=100.0) == 0
        throttle.failed("Ada ", now=100.0)  # the same name however typed
    assert throttle.wait("ada", now=100.0) == pytest.approx(2.0)
    assert throttle.wait("ada", now=102.0) == 0
    throttle.failed("ada", now=102.0)
    assert throttle.wait("ada", now=102.0) == pytest.approx(4.0)
    for _ in range(10):
        throttle.failed("ada", now=102.0)
    assert throttle.wait("ada", now=102.0) == pytest.approx(10.0)  # capped
    assert throttle.wait("bob", now=102.0) == 0  # other names are not slowed
    throttle.succeeded("ada")
    assert throttle.wait("ada", now=102.0) == 0


def test_cli_users_add_list_passwd_remove(tmp_path, monkeypatch, capsys):
    path = settings_file(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse\n"))
    assert cli.main(["users", "add", "ada", "--role", "trainer", "--role", "reviewer", "--password-stdin"]) == 0
    assert "added ada (trainer, reviewer)" in capsys.readouterr().out
    assert cli.main(["users", "list"]) == 0
    assert capsys.readouterr().out == "ada\ttrainer, reviewer\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("a new passphrase\n"))
    assert cli.main(["users", "passwd", "ada", "--password-stdin"]) == 0
    assert UserFile(path).verify("ada", "a new passphrase") is not None
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert cli.main(["users", "add", "bob", "--role", "viewer", "--password-stdin"]) == cli.EXIT_USAGE
    assert "at least 8 characters" in capsys.readouterr().err
    assert cli.main(["users", "remove", "ada"]) == 0
    assert UserFile(path).list() == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cli_users_without_a_user_file_says_how_to_configure_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CELLSCOPE_SETTINGS", str(tmp_path / "absent.toml"))
    assert cli.main(["users", "list"]) == cli.EXIT_USAGE
    assert 'login = "password"' in capsys.readouterr().err


def test_cli_users_add_as_a_real_process(tmp_path, monkeypatch):
    path = settings_file(tmp_path, monkeypatch)
    done = subprocess.run([sys.executable, "-m", "core", "users", "add", "eve", "--role", "admin", "--password-stdin"],
                          input="correct horse\n", text=True, capture_output=True, cwd=PROJECT_ROOT,
                          env={**os.environ}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert UserFile(path).verify("eve", "correct horse") == User("eve", ("admin",))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
