"""Collapse onset (T_NC) and fn*, as the paper defines them, in one place.

The trainer (online), the analysis (offline over logs) and the forecaster's replay all use
:class:`OnsetTracker`, so a threshold rule cannot drift between them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from ncstudy.records import EPOCH, FN, NC1, PHASE, finite

#: The paper's thresholds (``../shared/reference``): the onset T_NC is the first evaluation with NC1
#: below STRICT_NC1 (RELAXED_NC1: the relaxed onset, reported); NC is measured from the first
#: evaluation with training accuracy >= TERMINAL_ACC (the terminal phase).
STRICT_NC1, RELAXED_NC1, TERMINAL_ACC = 0.01, 0.05, 0.99


@dataclass(frozen=True)
class OnsetRule:
    strict: float = STRICT_NC1
    relaxed: float = RELAXED_NC1
    phase2_only: bool = True


@dataclass
class Onset:
    t_nc: int | None  # first epoch under the strict threshold (or relaxed, see ``threshold``)
    fn_star: float | None
    threshold: str | None  # "strict", "relaxed", or None when the run never collapsed
    t_strict: int | None
    t_relaxed: int | None
    fn_strict: float | None
    fn_relaxed: float | None
    min_nc1: float | None


class OnsetTracker:
    """Feed evaluations in epoch order; remembers the first strict and relaxed crossings."""

    def __init__(self, rule: OnsetRule = OnsetRule()) -> None:
        self.rule = rule
        self.t_strict: int | None = None
        self.t_relaxed: int | None = None
        self.fn_strict: float | None = None
        self.fn_relaxed: float | None = None
        self.min_nc1: float | None = None

    def update(self, epoch: int, nc1: float | None, fn: float | None, phase: int | None = None) -> bool:
        """Returns True when this evaluation is the strict onset."""
        if not finite(nc1):
            return False
        nc1 = float(nc1)
        if self.rule.phase2_only and phase is not None and phase != 2:
            return False
        self.min_nc1 = nc1 if self.min_nc1 is None else min(self.min_nc1, nc1)
        if self.t_relaxed is None and nc1 < self.rule.relaxed:
            self.t_relaxed, self.fn_relaxed = int(epoch), fn
        if self.t_strict is None and nc1 < self.rule.strict:
            self.t_strict, self.fn_strict = int(epoch), fn
            return True
        return False

    @property
    def collapsed(self) -> bool:
        return self.t_strict is not None

    def result(self, relaxed_fallback: bool = True) -> Onset:
        if self.t_strict is not None:
            t, fn, which = self.t_strict, self.fn_strict, "strict"
        elif relaxed_fallback and self.t_relaxed is not None:
            t, fn, which = self.t_relaxed, self.fn_relaxed, "relaxed"
        else:
            t, fn, which = None, None, None
        return Onset(t, fn, which, self.t_strict, self.t_relaxed, self.fn_strict, self.fn_relaxed, self.min_nc1)


def onset_of(records: Iterable[Mapping[str, object]], rule: OnsetRule = OnsetRule(),
             relaxed_fallback: bool = True) -> Onset:
    """Onset of a logged trajectory (rows with ``epoch``, ``nc1``, ``feat_norm``, optional ``phase``)."""
    tr = OnsetTracker(rule)
    for r in records:
        phase = r.get(PHASE)
        tr.update(int(r[EPOCH]), r.get(NC1), r.get(FN), int(phase) if finite(phase) else None)
    return tr.result(relaxed_fallback)
