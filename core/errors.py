"""The base of every error a user can cause and fix (bad file, missing data, offline, bad setting).

The command line and the pages catch `UserFacingError` and show its message; anything else is a bug.
"""


class UserFacingError(Exception):
    pass


class StoreError(UserFacingError, RuntimeError):
    """A store on disk (the run index, the job queue, a review store) could not be read or written.

    The one type pages and the command line catch for store failures; its message names the file and says
    how to repair it.
    """
