"""The one exception type for mistakes a user can fix (bad option, missing file).

Drivers catch it, print its message on one line and exit with status 2,
without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, stated with the fix."""
