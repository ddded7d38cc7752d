"""The one error type for bad input: every ``ncstudy`` command exits with status 2 on it.

Raise :class:`InputError` (or a subclass) for anything the user can fix -- a file, a key, a flag,
a missing dataset -- before work starts; the message names the file or key and the fix. The
command line catches it in one place (:func:`ncstudy.cli.main`).
"""
from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TRACKING_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # SIGINT, after a clean shutdown (128 + signal number, as shells report it)


class InputError(ValueError):
    """Input a command cannot use; the message names the file, key or flag (exit status 2)."""


class ConfigError(InputError):
    """A configuration or study file, or a value in it, that cannot be used."""


class LogFormatError(InputError):
    """A log file that lacks what is needed; the message names the file and the columns."""
