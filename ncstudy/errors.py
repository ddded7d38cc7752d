"""The one error type for bad input, and the exit statuses every ``ncstudy`` command shares.

Raise :class:`InputError` (or a subclass) for anything the user can fix -- a file, a key, a flag,
a missing dataset -- before work starts; the message names the file or key and the fix. Raise
:class:`TrackingUnavailable` when an MLflow server does not answer. The command line maps them to
exit statuses in one place (:func:`ncstudy.cli.main`).

=======  ===================================================================================
status   meaning (every command: ``run``, ``train``, ``ui``, ``replay``, ``analyze``)
=======  ===================================================================================
0        done: every planned trial (or the one run) reached its own end
1        a trial or run failed or diverged
2        bad input (:class:`InputError`); nothing was started or written
3        the MLflow tracking server is unreachable (:class:`TrackingUnavailable`)
128 + n  stopped by signal n after a clean shutdown: 130 SIGINT, 143 SIGTERM, 129 SIGHUP
=======  ===================================================================================
"""
from __future__ import annotations

import signal

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TRACKING_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # SIGINT, after a clean shutdown (128 + signal number, as shells report it)
#: The signals every command stops cleanly on (a second one stops at once).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exit_for_signal(signum: int) -> int:
    """The exit status after a clean stop on signal ``signum``: 128 + n, as shells report it."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class InputError(ValueError):
    """Input a command cannot use; the message names the file, key or flag (exit status 2)."""


class ConfigError(InputError):
    """A configuration or study file, or a value in it, that cannot be used."""


class LogFormatError(InputError):
    """A log file that lacks what is needed; the message names the file and the columns."""


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer (at start), or stayed unreachable past the
    configured limit (during a study): exit status 3."""


class Interrupted(BaseException):
    """A stop signal (:data:`STOP_SIGNALS`) ended a command; ``signum`` is the first one received.
    A :class:`BaseException`, like :class:`KeyboardInterrupt`, so no ``except Exception`` swallows
    it. ``forced``: a second signal asked to stop at once."""

    def __init__(self, signum: int, forced: bool = False) -> None:
        super().__init__(signal_name(signum))
        self.signum, self.forced = int(signum), forced

    @property
    def exit_status(self) -> int:
        return exit_for_signal(self.signum)
