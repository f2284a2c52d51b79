"""User-facing errors.

Anything a user can get wrong (an unknown environment, a bad option, a missing
model) raises :class:`UsageError`; the command line prints its message on one
line and exits with code 2 instead of showing a traceback.
"""


class UsageError(Exception):
    """Bad input from the user; the message says what to do instead."""
