"""What every forecaster shares: the :class:`Forecast` value, the :class:`Forecaster` protocol, and
the rules they read records by (phase, terminal gate, the fn crossing :func:`first_crossing`).
(Formerly ``ncstudy.forecast.core``; that name still imports, with a deprecation warning.)

A forecaster consumes one trial's evaluation records in epoch order. A record is a mapping with
the reference-log keys (see ``docs/CONTRACTS.md``): ``epoch`` (required), ``phase`` (1 = CE,
2 = MSE), ``train`` (training accuracy), ``feat_norm`` (fn), ``nc1``, optionally ``terminal``
(0/1) and ``train_loss``. Missing or NaN values are allowed everywhere except ``epoch``.

This package is pure Python (numpy/scipy): no Ray, Optuna or MLflow imports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from ncstudy.onset import TERMINAL_ACC
from ncstudy.records import (  # noqa: F401 (re-exported)
    EPOCH,
    FN,
    LOSS,
    NC1,
    P_ONSET,
    PHASE,
    T_NC_ESTIMATE,
    T_NC_HIGH,
    T_NC_LOW,
    TERMINAL,
    TRAIN,
    finite,
    num,
)


def phase_of(record: Mapping[str, Any]) -> int | None:
    p = record.get(PHASE)
    return int(float(p)) if finite(p) else None


def phase_ok(phase: int | None, phases: Sequence[int] | None) -> bool:
    """An evaluation counts for a phase filter when the filter is off, the phase is not reported,
    or the phase is one of ``phases``."""
    return phases is None or phase is None or phase in phases


class TerminalGate:
    """The paper's "terminal" state: from the first evaluation with training accuracy >= 0.99 on,
    never unset. Precedence per record: an explicit ``terminal`` flag, else ``train``, else a
    finite ``feat_norm`` (the reference logs leave fn empty until terminal)."""

    def __init__(self, terminal_acc: float = TERMINAL_ACC) -> None:
        self.terminal_acc = terminal_acc
        self.terminal = False

    def update(self, record: Mapping[str, Any]) -> bool:
        if not self.terminal:
            flag, acc = record.get(TERMINAL), record.get(TRAIN)
            if finite(flag):
                self.terminal = float(flag) >= 0.5
            elif finite(acc):
                self.terminal = float(acc) >= self.terminal_acc
            else:
                self.terminal = finite(record.get(FN))
        return self.terminal


class MissingMetricError(KeyError):
    """A trial result lacks the configured feature-norm metric (the message names metric and trial)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


Point = tuple  # (epoch: int, phase: int | None, fn: float)


def first_crossing(points: Iterable[Point], threshold: float, phases: Sequence[int] | None = (2,),
                   confirm: int = 1) -> tuple[int, int] | None:
    """First terminal evaluation with ``fn <= threshold`` (``confirm`` consecutive eligible
    evaluations in a row when ``confirm > 1``). Returns ``(crossing_epoch, confirmed_at_epoch)``
    or None. ``points`` are ``(epoch, phase, fn)`` of terminal evaluations in epoch order."""
    run_start, run_len = None, 0
    for epoch, phase, fn in points:
        if not phase_ok(phase, phases) or not finite(fn):
            continue
        if fn <= threshold:
            if run_len == 0:
                run_start = epoch
            run_len += 1
            if run_len >= confirm:
                return int(run_start), int(epoch)
        else:
            run_len = 0
    return None


ONSET, NO_ONSET = "onset", "no_onset"  # the two decisions a forecast can carry


class Streak:
    """A decision is acted on only once it has held at ``confirm`` consecutive evaluations: feed
    what would be decided at each evaluation (None: nothing), get the confirmed decision or None."""

    def __init__(self, confirm: int = 1) -> None:
        if confirm < 1:
            raise ValueError("confirm must be >= 1")
        self.confirm = int(confirm)
        self.last: str | None = None
        self.count = 0

    def update(self, would: str | None) -> str | None:
        self.count = self.count + 1 if would is not None and would == self.last else (1 if would is not None else 0)
        self.last = would
        return would if would is not None and self.count >= self.confirm else None


@runtime_checkable
class OnsetDistribution(Protocol):
    """A forecaster's calibrated predictive distribution of one trial's onset, in global epochs.

    ``cdf(epoch)`` = P(T_NC <= epoch), an upper bound where the calibration is discrete (so a
    decision "P(T_NC <= x) <= alpha" errs on the side of not stopping); it levels off at
    P(onset <= budget). ``quantile(level)`` is the smallest epoch whose ``cdf`` reaches ``level``
    (``inf`` beyond the budget)."""

    def cdf(self, epoch: float) -> float: ...

    def quantile(self, level: float) -> float: ...


@dataclass(frozen=True, kw_only=True)
class Forecast:
    """A forecast of one trial's collapse onset (T_NC), in global epochs (built by keyword).

    Every forecast satisfies ``onset > made_at`` (an onset already passed is observed, not
    forecast); ``onset`` is ``inf`` when onset is not expected within the budget.
    """

    onset: float  # predicted onset epoch (the median of the predictive distribution)
    low: float  # the stated interval (``math.inf`` allowed for ``high``)
    high: float
    made_at: int  # epoch of the evaluation at which the forecast was (first) made
    signal: str  # "conformal", "fn_star_crossing", "nc1_extrapolation", "train_loss_extrapolation"
    trusted: bool = True  # the calibration behind it is trusted (stopping policies act only then)
    crossing_epoch: int | None = None  # fn* crossing (fn_star signal only)
    calibration: str = ""  # human-readable description of what the forecast rests on
    details: Mapping[str, Any] = field(default_factory=dict)
    p_onset: float | None = None  # P(onset <= budget), when the forecaster states it
    budget: float | None = None
    # What a stopping policy may act on: ONSET (stop, reporting `onset`), NO_ONSET (stop, reporting
    # the censored objective), None (keep training).
    decision: str | None = ONSET
    # The whole predictive distribution, when the forecaster states one (the conformal forecasters):
    # what a search asks "P(T_NC < incumbent)" of. Kept in memory only (not in to_dict).
    distribution: OnsetDistribution | None = field(default=None, compare=False, repr=False)

    @property
    def valid(self) -> bool:
        """An onset after the epoch the forecast was made at (never one already in the past)."""
        return self.onset > self.made_at and self.low > self.made_at - 1e-9

    def p_before(self, epoch: float) -> float | None:
        """P(T_NC <= epoch) from the stated distribution; None when the forecaster states none."""
        if self.distribution is None:
            return None
        return 0.0 if epoch <= self.made_at else float(self.distribution.cdf(epoch))

    def median_after(self, bound: float) -> float | None:
        """The median onset given T_NC > ``bound`` (``inf`` when it lies beyond the budget);
        None without a distribution."""
        if self.distribution is None:
            return None
        f = self.p_before(bound) or 0.0
        return float(self.distribution.quantile(f + (1.0 - f) / 2.0))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "distribution"}
        d["details"] = dict(self.details)
        for k in ("onset", "low", "high"):
            if not math.isfinite(d[k]):
                d[k] = None if math.isnan(d[k]) else ("inf" if d[k] > 0 else "-inf")
        return d

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Forecast | None":
        """The forecast a result record carries (:data:`ncstudy.records.FORECAST_FIELDS`, as the
        stopper writes them), made at the record's epoch; None when it carries none. A record with a
        ``p_onset`` but no ``t_nc_estimate`` says no onset is expected within the budget: ``onset``
        inf, decision :data:`NO_ONSET`. Unknown bounds are NaN; ``signal`` is ``""`` (a record does
        not say which forecaster made it)."""
        onset, p_onset, epoch = num(record.get(T_NC_ESTIMATE)), num(record.get(P_ONSET)), num(record.get(EPOCH))
        if epoch is None or (onset is None and p_onset is None):
            return None
        low, high = (num(record.get(T_NC_LOW)), num(record.get(T_NC_HIGH))) if onset is not None else (None, None)
        return cls(onset=math.inf if onset is None else onset, low=math.nan if low is None else low,
                   high=math.nan if high is None else high, made_at=int(epoch), signal="", p_onset=p_onset,
                   decision=ONSET if onset is not None else NO_ONSET)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Forecast":
        d = dict(d)
        for k in ("onset", "low", "high"):
            v = d.get(k)
            d[k] = float("nan") if v is None else float(v)
        d["details"] = dict(d.get("details") or {})
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@runtime_checkable
class Forecaster(Protocol):
    """Consumes one trial's evaluation records one at a time, in epoch order.

    ``observe`` returns the current forecast (the latest one made, possibly from an earlier
    evaluation) or None while no forecast can be made.
    """

    signal: str

    def observe(self, record: Mapping[str, Any]) -> Forecast | None: ...
