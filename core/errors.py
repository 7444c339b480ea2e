"""The base of every error a user can cause and fix (bad file, missing data, offline, bad setting).

The command line and the pages catch `UserFacingError` and show its message; anything else is a bug.
"""


class UserFacingError(Exception):
    pass
