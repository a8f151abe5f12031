"""Floor 0: the one exception family for input a user can fix.

Every error that bad input can cause -- an option value, a data array, a checkpoint, a backend
that is not installed -- is a :class:`ScratchVAEError`, a ``ValueError`` subclass whose message
is one sentence saying what is wrong and how to fix it.  The command line prints that sentence
and exits with code 2; a library user catches ``ValueError`` (or the subclass) as usual.
"""
from __future__ import annotations


class ScratchVAEError(ValueError):
    """Bad input a user can fix; the message says what is wrong and how to fix it."""


class UsageError(ScratchVAEError):
    """An option value (keyword argument or command-line flag) that cannot work."""


class DataError(ScratchVAEError):
    """A data problem the user can fix (a missing or corrupt file, NaN rows, values a
    likelihood cannot model); the message says what is wrong and how to fix it."""


class NotFittedError(ScratchVAEError, AttributeError):
    """An estimator method that needs a fitted model was called before ``fit`` / ``load``."""
