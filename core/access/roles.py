"""Users, roles and the one permission check (`require`) that every page and every core write goes through.

A user has one or more roles; a role is a set of permissions:

| role | may |
|---|---|
| viewer | browse runs and results; classify images and validate on external data |
| trainer | as viewer, and launch jobs and sweeps; cancel, resume and delete *their own* jobs; tag runs |
| reviewer | as viewer, and review a model's calls, as themselves only |
| admin | everything, including other users' jobs and sessions, deleting runs, the concurrent-job limit |

Things with an owner (a job, a review session) take `owner=`: a non-admin may act only on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from core.errors import UserFacingError

PERMISSIONS = {
    "browse": "see runs, results, confusions and jobs",
    "classify": "classify images and validate a run on external data",
    "train": "launch training jobs and sweeps, and cancel, resume and delete their own jobs",
    "review": "review a model's calls under their own name",
    "admin": "act on anyone's jobs and review sessions, delete runs, set the concurrent-job limit",
}
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"browse", "classify"}),
    "trainer": frozenset({"browse", "classify", "train"}),
    "reviewer": frozenset({"browse", "classify", "review"}),
    "admin": frozenset(PERMISSIONS),
}
ROLES = tuple(ROLE_PERMISSIONS)
ACTIVE_JOBS_PER_USER = 8  # queued + running jobs one non-admin may have at once (a sweep counts each job)
MAX_USER_NAME = 80


class AccessDenied(UserFacingError, PermissionError):
    pass


def check_roles(names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in names))
    unknown = [n for n in names if n not in ROLE_PERMISSIONS]
    if unknown or not names:
        raise AccessDenied(f"unknown role(s) {', '.join(unknown) or '(none given)'}; roles are {', '.join(ROLES)}")
    return names


def check_user_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > MAX_USER_NAME or any(not c.isprintable() for c in name):
        raise AccessDenied(f"a user name is 1 to {MAX_USER_NAME} printable characters")
    return name


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_user_name(self.name))
        object.__setattr__(self, "roles", check_roles(self.roles))

    @property
    def permissions(self) -> frozenset[str]:
        return frozenset().union(*(ROLE_PERMISSIONS[r] for r in self.roles))

    @property
    def is_admin(self) -> bool:
        return "admin" in self.permissions

    def can(self, permission: str, owner: str | None = None) -> bool:
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")
        if self.is_admin:
            return True
        return permission in self.permissions and (owner is None or owner == self.name)


LOCAL_ADMIN = User("local", ("admin",))  # the command line, and the dashboard with login off


def require(user: User, permission: str, owner: str | None = None, what: str = "") -> None:
    """Raise AccessDenied unless `user` may do `permission` (on a thing belonging to `owner`)."""
    if user.can(permission, owner):
        return
    thing = f" {what}" if what else ""
    if permission in user.permissions:  # allowed in general, but the thing is someone else's
        raise AccessDenied(f"{user.name} may not act on{thing or ' this'}: it belongs to {owner}")
    raise AccessDenied(f"{user.name} ({', '.join(user.roles)}) may not {PERMISSIONS[permission]}"
                       f"{' (' + what + ')' if what else ''}; ask an admin for the role")
