"""The one exception type for mistakes a user can fix (bad file, missing column, changed config...).

The CLI prints its message without a traceback and exits with status 2.
"""


class UserError(Exception):
    pass


class UsageError(UserError):
    """A command line that does not parse (unknown or abbreviated flag, missing or malformed value)."""
