"""Forecasters. Each consumes one trial's records in epoch order via ``observe(record)``.

* :class:`ConformalOnset` (``conformal``, the default): a calibrated predictive distribution of the
  onset from analog states of completed runs, with both decisions (onset / no onset);
  ``conformal_no_fn`` is the same without the fn input;
* the baselines: :class:`FnStarCrossing` (``fn_star``, the paper's rule), :class:`NC1Extrapolation`
  (``nc1``) and :class:`TrainLossExtrapolation` (``train_loss``).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Mapping

import numpy as np
from scipy import stats

from ncstudy.onset import STRICT_NC1, TERMINAL_ACC
from ncstudy.records import EPOCH, FN, LOSS, NC1, finite, num

from .analog import EpochDistribution
from .calibration import Calibration
from .protocol import NO_ONSET, ONSET, Forecast, Streak, TerminalGate, first_crossing, phase_of, phase_ok
from .settings import (
    DEFAULT_FORECASTER,
    FORECASTER_NAMES,
    ConformalSettings,
    ExtrapolationSettings,
    FnStarSettings,
    forecaster_settings,
)
from .state import FEATURES, FN_FEATURES, StateTracker


class FnStarCrossing:
    """Crossing = first terminal evaluation (phase 2 unless ``phases`` says otherwise; ``None``
    = any phase) with ``fn <= fn*(1 + margin)``, ``confirm`` evaluations in a row; forecast =
    crossing epoch + lead. fn* and lead come from ``calibration.estimate(group, ...)`` and are
    re-read at every evaluation, so a calibration that learns online is picked up at once."""

    signal = "fn_star_crossing"

    def __init__(self, calibration: Calibration, group: str, *, terminal_acc: float = TERMINAL_ACC,
                 **options: Any) -> None:
        self.settings = s = forecaster_settings("fn_star", options)
        assert isinstance(s, FnStarSettings)
        self.calibration, self.group = calibration, group
        self.margin, self.phases, self.confirm = s.margin, s.phases, s.confirm
        self._gate = TerminalGate(terminal_acc)
        self._points: list[tuple[int, int | None, float]] = []
        self._made_at: dict[tuple, int] = {}
        self.forecast: Forecast | None = None

    def observe(self, record: Mapping[str, Any]) -> Forecast | None:
        epoch = int(record[EPOCH])
        if self._gate.update(record) and finite(record.get(FN)):
            self._points.append((epoch, phase_of(record), float(record[FN])))
        est = self.calibration.estimate(self.group, self.margin, self.phases, self.confirm)
        if est.fn_star is None or est.lead is None:
            return self.forecast
        c = first_crossing(self._points, est.threshold, self.phases, self.confirm)
        if c is None:
            return self.forecast
        crossing, _confirmed = c
        key = (crossing, est.lead, est.threshold, est.trusted)
        made_at = self._made_at.setdefault(key, epoch)  # a changed calibration makes a new forecast
        if not crossing + est.lead > made_at:  # the forecast onset has already passed: not a forecast
            return self.forecast
        lo, hi = est.lead_interval or (est.lead, est.lead)
        lo = max(lo, made_at + 1 - crossing)
        self.forecast = Forecast(onset=crossing + est.lead, low=crossing + lo, high=crossing + hi, made_at=made_at,
                                 signal=self.signal, trusted=est.trusted, crossing_epoch=crossing,
                                 calibration=est.describe(),
                                 details={"fn_star": est.fn_star, "threshold": est.threshold, "lead": est.lead})
        return self.forecast


class _LogLinearExtrapolation(ABC):
    """Fit ``log(metric)`` against epoch over the last ``window`` eligible evaluations (terminal,
    phase in ``phases``); forecast the epoch where the fit reaches ``target`` -- only when the
    fit is decreasing with R^2 >= ``r2_min``. The interval comes from the slope's 95 % CI."""

    signal = "extrapolation"
    key = NC1

    name = "nc1"

    def __init__(self, *, terminal_acc: float = TERMINAL_ACC, **options: Any) -> None:
        self.settings = s = forecaster_settings(self.name, options)
        assert isinstance(s, ExtrapolationSettings)
        if s.window < s.min_points:
            raise ValueError("need window >= min_points >= 3")
        self.window, self.min_points, self.r2_min = s.window, s.min_points, s.r2_min
        self.phases, self.max_horizon = s.phases, s.max_horizon
        self._gate = TerminalGate(terminal_acc)
        self._xy: list[tuple[int, float]] = []
        self.forecast: Forecast | None = None

    @abstractmethod
    def _target(self) -> tuple[float | None, bool, str]:
        """The level to extrapolate to, whether it is trusted, and where it comes from."""

    def observe(self, record: Mapping[str, Any]) -> Forecast | None:
        epoch = int(record[EPOCH])
        v = record.get(self.key)
        if (self._gate.update(record) and phase_ok(phase_of(record), self.phases)
                and finite(v) and float(v) > 0):
            self._xy.append((epoch, math.log(float(v))))
        if len(self._xy) < self.min_points or self._xy[-1][0] != epoch:
            return self.forecast
        target, trusted, calib = self._target()
        if target is None or not target > 0:
            return self.forecast
        x = np.array([p[0] for p in self._xy[-self.window:]], float)
        y = np.array([p[1] for p in self._xy[-self.window:]], float)
        fit = stats.linregress(x, y)
        r2 = float(fit.rvalue) ** 2
        if not (fit.slope < 0 and r2 >= self.r2_min):
            return self.forecast
        y_now = fit.intercept + fit.slope * epoch
        dy = math.log(target) - y_now
        onset = epoch + dy / fit.slope
        tcrit = float(stats.t.ppf(0.975, len(x) - 2))
        b_fast, b_slow = fit.slope - tcrit * fit.stderr, fit.slope + tcrit * fit.stderr
        t_fast = epoch + dy / b_fast
        t_slow = epoch + dy / b_slow if b_slow < 0 else math.inf
        lo, hi = (min(t_fast, t_slow), max(t_fast, t_slow)) if dy < 0 else (onset, onset)
        if not onset > epoch:  # the fit says the target is behind us: nothing to forecast
            return self.forecast
        if self.max_horizon is not None and onset - epoch > self.max_horizon:
            trusted = False
        self.forecast = Forecast(onset=float(onset), low=float(lo), high=float(hi), made_at=epoch, signal=self.signal,
                                 trusted=trusted, calibration=calib,
                                 details={"slope": float(fit.slope), "r2": r2, "n": len(x), "target": target})
        return self.forecast


class NC1Extrapolation(_LogLinearExtrapolation):
    """Log-linear extrapolation of NC1 to the strict threshold (0.01). Needs no calibration;
    every forecast that passes the fit gate is trusted."""

    signal = "nc1_extrapolation"
    key = NC1
    name = "nc1"

    def __init__(self, *, strict: float = STRICT_NC1, terminal_acc: float = TERMINAL_ACC, **options: Any) -> None:
        super().__init__(terminal_acc=terminal_acc, **options)
        self.strict = float(strict)

    def _target(self):
        return self.strict, True, (f"log-linear fit of nc1, window {self.window}, R^2 >= {self.r2_min:g}, "
                                   f"target {self.strict:g} (no calibration)")


class TrainLossExtrapolation(_LogLinearExtrapolation):
    """Log-linear extrapolation of the training loss (record key ``train_loss``) to the group's
    loss-at-onset level (geometric mean over observed runs, or a prior ``levels['train_loss']``).
    Makes no forecast when the trial does not report ``train_loss``."""

    signal = "train_loss_extrapolation"
    key = LOSS
    name = "train_loss"

    def __init__(self, calibration: Calibration, group: str, *, terminal_acc: float = TERMINAL_ACC,
                 **options: Any) -> None:
        super().__init__(terminal_acc=terminal_acc, **options)
        self.calibration, self.group = calibration, group

    def _target(self):
        lv = self.calibration.level(self.group, LOSS)
        return lv.value, lv.trusted, lv.describe()


class ConformalOnset:
    """A calibrated forecast of the onset and of whether it comes at all, at every evaluation.

    The trial's state (:mod:`.state`: NC1's level, rates, noise and dip, the schedule's progress,
    fn relative to the group's fn*, loss / gradient / weight-norm rates when reported) is matched
    against the states of the calibration's completed runs (:mod:`.analog`); the ``k`` closest
    runs give a predictive distribution of the remaining time, recalibrated distribution-free
    (held-out predictions of the pool's own runs). The forecast states the median onset, a
    ``coverage`` interval, ``p_onset`` = P(onset <= budget) and the whole distribution
    (``Forecast.distribution``: a search asks it for P(T_NC < incumbent)), and carries a decision:

    * ``onset`` (stop at forecast) when ``p_onset >= 1 - alpha`` and the interval is at most
      ``tolerance`` epochs wide;
    * ``no_onset`` when ``p_onset <= alpha``;
    * none otherwise.

    A decision is stated only from the ``min_points``-th evaluation of the collapse phase on (the
    rates need points), and only once the same decision has held at ``confirm`` consecutive
    evaluations. Forecasts are trusted (acted on) only when the pool holds at least ``min_runs``
    runs, of which ``min_collapsed`` reached onset. A signal the trial does not report is left out
    of the comparison, not guessed; without an fn* for the group the fn features are left out.
    Options: :class:`~ncstudy.forecast.settings.ConformalSettings`.
    """

    signal = "conformal"
    name = "conformal"
    use_fn = True

    def __init__(self, calibration: Calibration, group: str, budget: float | None, *, strict: float = STRICT_NC1,
                 terminal_acc: float = TERMINAL_ACC, **options: Any) -> None:
        self.settings = s = forecaster_settings(self.name, options)
        assert isinstance(s, ConformalSettings)
        if not (budget and budget > 0):
            raise ValueError("the conformal forecaster needs the trial's budget (its last epoch)")
        self.calibration, self.group, self.budget = calibration, group, float(budget)
        self.strict, self.terminal_acc = float(strict), terminal_acc
        self.n_points = 0  # evaluations of the collapse phase seen
        self._streak = Streak(s.confirm)
        self.features = tuple(f for f in FEATURES if self.use_fn or f not in FN_FEATURES)
        self.tracker = StateTracker(self.budget, self.strict, s.window, terminal_acc,
                                    fn_star=(lambda: calibration.fn_star(group)) if self.use_fn else (lambda: None))
        self.forecast: Forecast | None = None

    def pool(self):
        s = self.settings
        return self.calibration.analog_pool(s.window, self.strict, self.terminal_acc, self.features, s.weights, s.k,
                                            s.group_penalty)

    @property
    def ready(self) -> bool:
        """Enough evaluations of the collapse phase for a decision (``min_points``)."""
        return self.n_points >= self.settings.min_points

    def observe(self, record: Mapping[str, Any]) -> Forecast | None:
        state = self.tracker.observe(record)
        if state is None:
            return self.forecast
        self.n_points += 1
        s = self.settings
        pool = self.pool()
        pred = pool.predictive(state.features, self.group)
        if pred is None:
            return self.forecast
        t, rem = float(state.epoch), state.remaining
        dist = EpochDistribution(pred, t, rem)
        a = (1.0 - s.coverage) / 2
        low, onset, high = (dist.quantile(q) for q in (a, 0.5, 1 - a))
        p = pred.p_onset
        # the interval given onset within the budget ("when, if it collapses"): what the conformal
        # recalibration of the timing alone promises (replay scores its coverage)
        low_if, mid_if, high_if = (t + pred.onset_quantile(q) * rem if len(pred.rho_c) else math.inf
                                   for q in (a, 0.5, 1 - a))
        cut = pool.thresholds(s)
        would = None
        if self.ready and pred.distance <= cut.distance:
            if state.approach(s.horizon) >= cut.onset and high_if - low_if <= s.tolerance:
                would = ONSET
            elif pred.frac <= cut.no_onset and state.features["level"] >= cut.level:
                would = NO_ONSET
        decision = self._streak.update(would)
        if decision == ONSET:  # it collapses: the forecast is the timing given onset
            low, onset, high = low_if, mid_if, high_if
        trusted = pool.n_runs >= s.min_runs and pool.n_collapsed >= s.min_collapsed
        fn_star = self.calibration.fn_star(self.group) if self.use_fn else None
        desc = (f"{self.group}: {pool.k} analogs of {pool.n_runs} pooled runs ({pool.n_collapsed} collapsed)"
                + (f", fn*={fn_star:.4g}" if fn_star else ", no fn input" if not self.use_fn else ", no fn* yet")
                + ("" if trusted else ", untrusted: too few runs"))
        self.forecast = Forecast(
            onset=onset, low=low, high=high, made_at=int(t), signal=self.signal, trusted=trusted, calibration=desc,
            details={"distance": pred.distance, "nc1": state.nc1, "remaining": rem,
                     "collapsed_analogs": pred.n_collapsed, "frac": pred.frac, "approach": state.approach(s.horizon),
                     "low_if_onset": num(low_if), "high_if_onset": num(high_if)},
            p_onset=p, budget=self.budget, decision=decision, distribution=dist)
        return self.forecast


class ConformalOnsetNoFn(ConformalOnset):
    """:class:`ConformalOnset` without the fn input (does fn* carry information beyond NC1?)."""

    name = "conformal_no_fn"
    use_fn = False


FORECASTERS: dict[str, type] = {
    "conformal": ConformalOnset,
    "conformal_no_fn": ConformalOnsetNoFn,
    "fn_star": FnStarCrossing,
    "nc1": NC1Extrapolation,
    "train_loss": TrainLossExtrapolation,
}
assert tuple(FORECASTERS) == FORECASTER_NAMES


def make_forecaster(name: str, calibration: Calibration, group: str, budget: float | None = None, *,
                    strict: float = STRICT_NC1, terminal_acc: float = TERMINAL_ACC, lenient: bool = False,
                    **options: Any):
    """Build a forecaster by name (see :data:`FORECASTERS`) for one trial of ``budget`` epochs, its
    options validated by :data:`~ncstudy.forecast.settings.FORECASTER_SETTINGS` (``ValueError``
    naming a bad one). ``lenient``: drop options that only other forecasters take (one option set
    serving a comparison of several forecasters)."""
    settings = forecaster_settings(name, options, lenient=lenient)
    opts = settings.model_dump(exclude_unset=True)
    cls = FORECASTERS[name]
    if issubclass(cls, ConformalOnset):
        return cls(calibration, group, budget, strict=strict, terminal_acc=terminal_acc, **opts)
    if cls is NC1Extrapolation:
        return cls(strict=strict, terminal_acc=terminal_acc, **opts)
    return cls(calibration, group, terminal_acc=terminal_acc, **opts)


__all__ = ["ConformalOnset", "ConformalOnsetNoFn", "DEFAULT_FORECASTER", "FORECASTERS", "FnStarCrossing",
           "NC1Extrapolation", "TrainLossExtrapolation", "make_forecaster"]
