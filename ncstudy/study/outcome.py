"""What happened to each trial of a study, and the exit status that follows from it.

Tune's trial status does not say it: when a run is interrupted (Ctrl-C, SIGUSR1), Tune marks the
running trials TERMINATED without ending them (no ``on_trial_complete``), and trials that never
started stay PENDING. :class:`StudyOutcome` records the trials that really ended, through Tune's
callback hooks, and keeps that record in Tune's saved state, so a resumed launch remembers the
trials an earlier launch finished.

===============  ==========================================================================
outcome          meaning
===============  ==========================================================================
``complete``     ran to its own end: onset, budget, or a stopper's decision
``diverged``     ended with a loss that exploded (the trainer's ``stop_reason: diverged``)
``failed``       ended with an error (after Tune's retries)
``interrupted``  started but did not end (the study was interrupted; ``--resume`` continues it)
``not started``  never started
===============  ==========================================================================
"""
from __future__ import annotations

from typing import Any

from ray.tune import Callback

from ncstudy.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ncstudy.records import STOP_REASON
from ncstudy.study.persist import WHAT_TO_DO, SavedStateError

OUTCOMES = ("complete", "diverged", "failed", "interrupted", "not started")


class StudyOutcome(Callback):
    """``expect_restore``: this launch resumes Tune's saved state; if Tune could not restore it
    (Tune logs that, then starts the experiment over, running a part of the trials again or
    dropping them), :meth:`setup` refuses to go on, before any trial starts (exit status 2, with
    the errors Tune logged, which the runner collects in :attr:`restore_errors`)."""

    STATE_VERSION = 1  # get_state(): {"version", "ended", "started"}

    def __init__(self, expect_restore: bool = False) -> None:
        self.ended: dict[str, str] = {}  # trial id -> "complete" | "error"
        self.started: set[str] = set()
        self.expect_restore = expect_restore
        self.restored = False
        self.restore_errors: list[str] = []

    def get_state(self) -> dict[str, Any]:
        return {"version": self.STATE_VERSION, "ended": dict(self.ended), "started": sorted(self.started)}

    def set_state(self, state: dict[str, Any]) -> None:
        if int(state.get("version", 0)) > self.STATE_VERSION:
            raise SavedStateError(f"StudyOutcome state version {state.get('version')} is newer than this ncstudy's "
                                  f"({self.STATE_VERSION}); {WHAT_TO_DO}")
        self.ended = dict(state.get("ended", {}))
        self.started = set(state.get("started", []))
        self.restored = True

    def setup(self, **info: Any) -> None:
        if self.expect_restore and not self.restored:
            why = "; ".join(self.restore_errors) or "its state was not handed back"
            raise SavedStateError(f"--resume: Tune could not restore the study's saved state ({why}); nothing was "
                                  f"started, so no trial was run twice or dropped. {WHAT_TO_DO[0].upper()}"
                                  f"{WHAT_TO_DO[1:]}")

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.started.add(trial.trial_id)

    def on_trial_restore(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.started.add(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        self.started.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.ended[trial.trial_id] = "complete"

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.ended[trial.trial_id] = "error"

    def __getstate__(self) -> dict[str, Any]:  # pickled with Tune's callbacks: no runtime links
        d = dict(self.__dict__)
        d["restore_errors"] = []
        return d

    def outcome(self, trial) -> str:
        end = self.ended.get(trial.trial_id)
        if end == "error":
            return "failed"
        if end == "complete":
            return "diverged" if (trial.last_result or {}).get(STOP_REASON) == "diverged" else "complete"
        return "interrupted" if trial.trial_id in self.started else "not started"


def exit_status(outcomes: list[str]) -> int:
    """0 when every trial completed; 1 when one failed or diverged; 130 when some did not end."""
    if any(o in ("failed", "diverged") for o in outcomes):
        return EXIT_FAILED
    if any(o in ("interrupted", "not started") for o in outcomes) or not outcomes:
        return EXIT_INTERRUPTED if outcomes else EXIT_FAILED
    return EXIT_OK


class StopForwarder(Callback):
    """Hands a stop signal that arrived while Tune's run was starting (before Tune had installed
    its interrupt handler) to Tune, as soon as it can (:meth:`StopSignals.forward
    <ncstudy.study.signals.StopSignals.forward>`): the study then stops cleanly before any trial
    starts. Holds no state."""

    def __init__(self, signals: Any) -> None:
        self.signals = signals

    def setup(self, **info: Any) -> None:
        self.signals.forward()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.signals.received:
            self.signals.forward()

