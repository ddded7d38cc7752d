"""The state of a trial at one evaluation, as scale-free features (the forecaster's inputs).

A trial is followed in its *collapse phase*: the MSE phase (``phase == 2``) when phases are
reported, else every evaluation, from the terminal point on (train accuracy >= 0.99), where NC1
is defined. At each such evaluation ``t`` the tracker gives, with ``L`` the length of the collapse
phase (budget - its start) so that runs of different lengths compare:

===============  ========================================================================
``level``        log(NC1 / strict threshold), NC1 smoothed by a linear fit over the last
                 ``window`` evaluations (the distance still to go, in log units)
``rate``         -(slope of log NC1 per epoch over the last ``window`` evaluations) x L
``rate_old``     the same over the ``window`` evaluations before those (deceleration)
``noise``        residual SD of log NC1 around the recent fit
``dip``          log(lowest NC1 so far / threshold)
``progress``     (t - start of the collapse phase) / L (where the schedule is)
``fn``           log(fn / fn*) with the group's fn*, when one is known  (the paper's signal)
``fn_rate``      slope of log fn x L
``loss_rate``    slope of log training loss x L         (when ``train_loss`` is reported)
``grad_rate``    slope of log gradient norm x L         (when ``grad_norm`` is reported)
``weight_rate``  slope of log weight norm x L           (when ``weight_norm`` is reported)
===============  ========================================================================

Features that cannot be computed (too few points, a signal not reported) are NaN; the forecaster
compares states on the features both have. Plain Python; O(window) per evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ncstudy.onset import STRICT_NC1, TERMINAL_ACC
from ncstudy.records import EPOCH, FN, GRAD_NORM, LOSS, NC1, WEIGHT_NORM, finite, num

from .protocol import TerminalGate, phase_of

FEATURES = ("level", "rate", "rate_old", "noise", "dip", "progress", "fn", "fn_rate", "loss_rate", "grad_rate",
            "weight_rate")
FN_FEATURES = ("fn", "fn_rate")  # what "without the fn input" leaves out
_SERIES = {"fn_rate": FN, "loss_rate": LOSS, "grad_rate": GRAD_NORM, "weight_rate": WEIGHT_NORM}


def _slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares slope, the fit's value at ``x[-1]`` and the residual SD (ddof 2). Plain
    Python: a window is a handful of points, where numpy's per-call cost dominates."""
    n = len(x)
    xm, ym = sum(x) / n, sum(y) / n
    sxx = sum((a - xm) ** 2 for a in x)
    if sxx <= 0:
        return math.nan, float(y[-1]), math.nan
    b = sum((a - xm) * (c - ym) for a, c in zip(x, y)) / sxx
    sd = math.sqrt(sum((c - (ym + b * (a - xm))) ** 2 for a, c in zip(x, y)) / (n - 2)) if n > 2 else math.nan
    return float(b), float(ym + b * (x[-1] - xm)), float(sd)


@dataclass
class State:
    """A trial at one evaluation of its collapse phase."""

    epoch: int
    features: dict[str, float]  # FEATURES -> value (NaN when unknown)
    remaining: float  # budget - epoch
    nc1: float
    log_fn: float = math.nan  # log fn at this evaluation (``fn`` = log_fn - log fn*, for any fn*)
    length: float = math.nan  # L: the collapse phase's length (budget - its start)

    def with_fn_star(self, fn_star: float | None) -> "State":
        """This state with its ``fn`` feature relative to ``fn_star`` (NaN when either is unknown)."""
        f = dict(self.features)
        f["fn"] = self.log_fn - math.log(fn_star) if fn_star and fn_star > 0 and math.isfinite(self.log_fn) \
            else math.nan
        return State(self.epoch, f, self.remaining, self.nc1, self.log_fn, self.length)

    def approach(self, horizon: float) -> float:
        """How far NC1 would go past the strict threshold within ``horizon`` epochs at its recent
        rate (log units; >= 0: it would cross): ``max(rate, 0) horizon / L - level``. The score a
        collapse forecast is decided on (:meth:`~ncstudy.forecast.analog.AnalogPool.thresholds`)."""
        return approach(self.features.get("level", math.nan), self.features.get("rate", math.nan), self.length,
                        horizon)


def approach(level: float, rate: float, length: float, horizon: float) -> float:
    """:meth:`State.approach` from its parts (NaN rate: none yet, counted as 0)."""
    if not math.isfinite(level):
        return -math.inf
    r = rate if math.isfinite(rate) and rate > 0 and length > 0 else 0.0
    return r * horizon / length - level


@dataclass
class StateTracker:
    """Follows one trial's records (in epoch order) and gives its :class:`State` at each
    evaluation of the collapse phase.

    ``budget``: the trial's last epoch (its full budget). ``fn_star``: called at each evaluation
    for the group's current fn* (None when unknown).
    """

    budget: float
    strict: float = STRICT_NC1
    window: int = 5
    terminal_acc: float = TERMINAL_ACC
    fn_star: Callable[[], float | None] = field(default=lambda: None)
    _gate: TerminalGate = field(init=False)
    _start: float | None = field(default=None, init=False)  # last epoch before the collapse phase
    _phases_seen: set = field(default_factory=set, init=False)
    _x: list[float] = field(default_factory=list, init=False)
    _y: list[float] = field(default_factory=list, init=False)
    _series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict, init=False)
    _fn_last: float | None = field(default=None, init=False)
    _dip: float = field(default=math.inf, init=False)

    def __post_init__(self) -> None:
        self._gate = TerminalGate(self.terminal_acc)
        self._series = {k: ([], []) for k in _SERIES}

    def observe(self, record: Mapping[str, Any]) -> State | None:
        """The state at this evaluation, or None when it is not one of the collapse phase (or NC1
        is not defined there yet)."""
        epoch = float(record[EPOCH])
        phase = phase_of(record)
        if phase is not None:
            self._phases_seen.add(phase)
        terminal = self._gate.update(record)
        if phase == 1 or (phase is None and 2 in self._phases_seen):
            self._start = epoch  # the CE phase (or a record without phase after the MSE one began)
            return None
        nc1 = num(record.get(NC1))
        if not terminal or nc1 is None or nc1 <= 0 or epoch >= self.budget:
            return None
        if self._start is None:  # no phase information: the collapse phase starts at the first point
            self._start = epoch - 1.0
        self._x.append(epoch)
        self._y.append(math.log(nc1))
        self._dip = min(self._dip, self._y[-1])
        for key, name in _SERIES.items():
            v = num(record.get(name))
            if v is not None and v > 0:
                xs, ys = self._series[key]
                xs.append(epoch)
                ys.append(math.log(v))
        fn = num(record.get(FN))
        self._fn_last = fn if fn is not None and fn > 0 else None
        return State(int(epoch), self._features(epoch), self.budget - epoch, nc1,
                     math.log(self._fn_last) if self._fn_last is not None else math.nan,
                     max(self.budget - self._start, 1.0))

    # ------------------------------------------------------------------------------------------
    def _features(self, t: float) -> dict[str, float]:
        w = self.window
        length = max(self.budget - self._start, 1.0)
        x, y = self._x[-w:], self._y[-w:]
        thr = math.log(self.strict)
        f = dict.fromkeys(FEATURES, math.nan)
        if len(x) >= 3:
            b, level, sd = _slope(x, y)
            f["level"], f["rate"] = level - thr, -b * length
            f["noise"] = sd if len(x) >= 4 else math.nan
        else:
            f["level"] = float(y[-1]) - thr
        if len(self._x) >= w + 3:
            xo, yo = self._x[-2 * w:-w], self._y[-2 * w:-w]
            if len(xo) >= 3:
                f["rate_old"] = -_slope(xo, yo)[0] * length
        f["dip"] = self._dip - thr
        f["progress"] = (t - self._start) / length
        star = self.fn_star()
        if self._fn_last is not None and star is not None and star > 0:
            f["fn"] = math.log(self._fn_last) - math.log(star)  # as State.with_fn_star
        for key, (xs, ys) in self._series.items():
            if len(xs) >= 3 and xs[-1] == t:
                f[key] = _slope(xs[-w:], ys[-w:])[0] * length
        return f


def trajectory_states(records, budget: float, strict: float = STRICT_NC1, window: int = 5,
                      terminal_acc: float = TERMINAL_ACC,
                      fn_star: float | None = None) -> list[State]:
    """Every :class:`State` of a logged run (offline: the pool of a calibration)."""
    tr = StateTracker(budget, strict, window, terminal_acc, fn_star=lambda: fn_star)
    out = []
    for r in records:
        s = tr.observe(r)
        if s is not None:
            out.append(s)
    return out


def is_finite(x: Any) -> bool:  # numpy-friendly alias for the pool
    return finite(x)
