"""User-facing errors.

Anything a user can get wrong (an unknown environment, a bad option, a missing
model) raises :class:`UsageError`; the command line prints its message on one
line and exits with code 2 instead of showing a traceback.
"""


class UsageError(Exception):
    """Bad input from the user; the message says what to do instead."""


class MissingExtra(UsageError, ImportError):
    """An optional extra (e.g. ``atari``) is not installed.

    Also an ImportError, so code that walks every card (the locality probe)
    leaves such cards out instead of failing a run that never uses them.
    """
