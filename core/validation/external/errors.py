"""The one error type of external validation: a dataset, a mapping or a setting a user can fix."""

from core.errors import UserFacingError


class ExternalError(UserFacingError, ValueError):
    pass
