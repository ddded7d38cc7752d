"""Forecasters. Each consumes one trial's records in epoch order via ``observe(record)``.

* :class:`ConformalOnset` (``conformal``, the default): a calibrated predictive distribution of the
  onset from analog states of completed runs, with both decisions (onset / no onset);
  ``conformal_no_fn`` is the same without the fn input;
* the baselines: :class:`FnStarCrossing` (``fn_star``, the paper's rule), :class:`NC1Extrapolation`
  (``nc1``) and :class:`TrainLossExtrapolation` (``train_loss``).
"""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from ncstudy.records import EPOCH, FN, LOSS, NC1, finite, num

from .calibration import Calibration
from .core import NO_ONSET, ONSET, Forecast, TerminalGate, first_crossing, phase_of, phase_ok
from .state import FEATURES, FN_FEATURES, StateTracker


class FnStarCrossing:
    """Crossing = first terminal evaluation (phase 2 unless ``phases`` says otherwise; ``None``
    = any phase) with ``fn <= fn*(1 + margin)``, ``confirm`` evaluations in a row; forecast =
    crossing epoch + lead. fn* and lead come from ``calibration.estimate(group, ...)`` and are
    re-read at every evaluation, so a calibration that learns online is picked up at once."""

    signal = "fn_star_crossing"

    def __init__(self, calibration: Calibration, group: str, margin: float = 0.0,
                 phases: Sequence[int] | None = (2,), confirm: int = 1, terminal_acc: float = 0.99) -> None:
        if confirm < 1:
            raise ValueError("confirm must be >= 1")
        self.calibration, self.group = calibration, group
        self.margin, self.phases, self.confirm = float(margin), phases, int(confirm)
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
        self.forecast = Forecast(crossing + est.lead, crossing + lo, crossing + hi, made_at, self.signal,
                                 est.trusted, crossing, est.describe(),
                                 {"fn_star": est.fn_star, "threshold": est.threshold, "lead": est.lead})
        return self.forecast


class _LogLinearExtrapolation(ABC):
    """Fit ``log(metric)`` against epoch over the last ``window`` eligible evaluations (terminal,
    phase in ``phases``); forecast the epoch where the fit reaches ``target`` -- only when the
    fit is decreasing with R^2 >= ``r2_min``. The interval comes from the slope's 95 % CI."""

    signal = "extrapolation"
    key = NC1

    def __init__(self, window: int = 5, min_points: int = 3, r2_min: float = 0.9,
                 phases: Sequence[int] | None = (2,), max_horizon: float | None = None,
                 terminal_acc: float = 0.99) -> None:
        if min_points < 3 or window < min_points:
            raise ValueError("need window >= min_points >= 3")
        self.window, self.min_points, self.r2_min = int(window), int(min_points), float(r2_min)
        self.phases, self.max_horizon = phases, max_horizon
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
        self.forecast = Forecast(float(onset), float(lo), float(hi), epoch, self.signal, trusted, None,
                                 calib, {"slope": float(fit.slope), "r2": r2, "n": len(x), "target": target})
        return self.forecast


class NC1Extrapolation(_LogLinearExtrapolation):
    """Log-linear extrapolation of NC1 to the strict threshold (0.01). Needs no calibration;
    every forecast that passes the fit gate is trusted."""

    signal = "nc1_extrapolation"
    key = NC1

    def __init__(self, strict: float = 0.01, window: int = 5, min_points: int = 3, r2_min: float = 0.9,
                 phases: Sequence[int] | None = (2,), max_horizon: float | None = None,
                 terminal_acc: float = 0.99) -> None:
        super().__init__(window, min_points, r2_min, phases, max_horizon, terminal_acc)
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

    def __init__(self, calibration: Calibration, group: str, window: int = 5, min_points: int = 3,
                 r2_min: float = 0.9, phases: Sequence[int] | None = (2,), max_horizon: float | None = None,
                 terminal_acc: float = 0.99) -> None:
        super().__init__(window, min_points, r2_min, phases, max_horizon, terminal_acc)
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
    (leave-one-run-out PITs). The forecast states the median onset, a ``coverage`` interval and
    ``p_onset`` = P(onset <= budget), and carries a decision:

    * ``onset`` (stop at forecast) when ``p_onset >= 1 - alpha`` and the interval is at most
      ``tolerance`` epochs wide;
    * ``no_onset`` when ``p_onset <= alpha``;
    * none otherwise.

    A decision is stated only from the ``min_points``-th evaluation of the collapse phase on (the
    rates need points), and only once the same decision has held at ``confirm`` consecutive
    evaluations. Forecasts are trusted (acted on) only when the pool holds at least ``min_runs``
    runs, of which ``min_collapsed`` reached onset. A signal the trial does not report is left out
    of the comparison, not guessed; without an fn* for the group the fn features are left out.
    """

    signal = "conformal"

    def __init__(self, calibration: Calibration, group: str, budget: float, alpha: float = 0.05,
                 coverage: float = 0.9, tolerance: float = 40.0, use_fn: bool = True, strict: float = 0.01,
                 window: int = 5, k: int = 15, group_penalty: float = 0.5, min_runs: int = 10,
                 min_collapsed: int = 5, weights: Mapping[str, float] | None = None,
                 terminal_acc: float = 0.99, min_points: int = 4, confirm: int = 2) -> None:
        if not 0 < alpha < 0.5:
            raise ValueError("alpha must be in (0, 0.5)")
        if not 0 < coverage < 1:
            raise ValueError("coverage must be in (0, 1)")
        if not tolerance > 0:
            raise ValueError("tolerance must be > 0 epochs")
        if not (budget and budget > 0):
            raise ValueError("the conformal forecaster needs the trial's budget (its last epoch)")
        self.calibration, self.group, self.budget = calibration, group, float(budget)
        self.alpha, self.coverage, self.tolerance = float(alpha), float(coverage), float(tolerance)
        self.use_fn, self.strict, self.window = bool(use_fn), float(strict), int(window)
        self.k, self.group_penalty = int(k), float(group_penalty)
        self.min_runs, self.min_collapsed = int(min_runs), int(min_collapsed)
        self.weights, self.terminal_acc = dict(weights or {}), terminal_acc
        if min_points < 1 or confirm < 1:
            raise ValueError("min_points and confirm must be >= 1")
        self.min_points, self.confirm = int(min_points), int(confirm)
        self._n_points = 0
        self._streak: tuple[str | None, int] = (None, 0)
        self.features = tuple(f for f in FEATURES if use_fn or f not in FN_FEATURES)
        self.tracker = StateTracker(self.budget, self.strict, self.window, terminal_acc,
                                    fn_star=(lambda: calibration.fn_star(group)) if use_fn else (lambda: None))
        self.forecast: Forecast | None = None

    def pool(self):
        return self.calibration.analog_pool(self.window, self.strict, self.terminal_acc, self.features,
                                            self.weights, self.k, self.group_penalty)

    def observe(self, record: Mapping[str, Any]) -> Forecast | None:
        state = self.tracker.observe(record)
        if state is None:
            return self.forecast
        self._n_points += 1
        pool = self.pool()
        pred = pool.predictive(state.features, self.group)
        if pred is None:
            return self.forecast
        t, rem = float(state.epoch), state.remaining
        a = (1.0 - self.coverage) / 2
        q_lo, q_med, q_hi = pred.quantile(a), pred.quantile(0.5), pred.quantile(1 - a)
        p = pred.p_onset
        onset, low, high = (t + q * rem if math.isfinite(q) else math.inf for q in (q_med, q_lo, q_hi))
        # the interval given onset within the budget ("when, if it collapses"): what the conformal
        # recalibration of the timing alone promises (replay scores its coverage)
        low_if, high_if = (t + pred.onset_quantile(q) * rem if len(pred.rho_c) else math.inf for q in (a, 1 - a))
        would = None
        if self._n_points >= self.min_points:
            if p >= 1 - self.alpha and high - low <= self.tolerance:
                would = ONSET
            elif p <= self.alpha:
                would = NO_ONSET
        streak = self._streak[1] + 1 if would is not None and would == self._streak[0] else 1
        self._streak = (would, streak)
        decision = would if would is not None and streak >= self.confirm else None
        trusted = pool.n_runs >= self.min_runs and pool.n_collapsed >= self.min_collapsed
        fn_star = self.calibration.fn_star(self.group) if self.use_fn else None
        desc = (f"{self.group}: {pool.k} analogs of {pool.n_runs} pooled runs ({pool.n_collapsed} collapsed)"
                + (f", fn*={fn_star:.4g}" if fn_star else ", no fn input" if not self.use_fn else ", no fn* yet")
                + ("" if trusted else ", untrusted: too few runs"))
        self.forecast = Forecast(onset, low, high, int(t), self.signal, trusted, None, desc,
                                 {"distance": pred.distance, "nc1": state.nc1, "remaining": rem,
                                  "collapsed_analogs": pred.n_collapsed, "low_if_onset": num(low_if),
                                  "high_if_onset": num(high_if)}, p, self.budget,
                                 decision)
        return self.forecast


class ConformalOnsetNoFn(ConformalOnset):
    """:class:`ConformalOnset` without the fn input (does fn* carry information beyond NC1?)."""

    def __init__(self, calibration: Calibration, group: str, budget: float, **options: Any) -> None:
        options["use_fn"] = False
        super().__init__(calibration, group, budget, **options)


FORECASTERS: dict[str, type] = {
    "conformal": ConformalOnset,
    "conformal_no_fn": ConformalOnsetNoFn,
    "fn_star": FnStarCrossing,
    "nc1": NC1Extrapolation,
    "train_loss": TrainLossExtrapolation,
}
DEFAULT_FORECASTER = "conformal"


def make_forecaster(name: str, calibration: Calibration, group: str, budget: float | None = None,
                    **options: Any):
    """Build a forecaster by name (see :data:`FORECASTERS`) for one trial of ``budget`` epochs.
    ``options`` may hold keyword arguments of any forecaster; each class takes the ones it knows
    (so one option set can serve a comparison of several forecasters)."""
    if name not in FORECASTERS:
        raise ValueError(f"unknown forecaster {name!r}; choose from {', '.join(FORECASTERS)}")
    cls = FORECASTERS[name]
    unknown = set(options) - _ALL_OPTIONS
    if unknown:
        raise ValueError(f"unknown forecaster option(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(_ALL_OPTIONS))}")
    if issubclass(cls, ConformalOnset):
        accepted = set(inspect.signature(ConformalOnset.__init__).parameters)
        return cls(calibration, group, budget, **{k: v for k, v in options.items() if k in accepted})
    accepted = set(inspect.signature(cls.__init__).parameters)
    opts = {k: v for k, v in options.items() if k in accepted}
    if cls is NC1Extrapolation:
        return cls(**opts)
    return cls(calibration, group, **opts)


_ALL_OPTIONS = {p for c in FORECASTERS.values() for p in inspect.signature(c.__init__).parameters} - {
    "self", "calibration", "group", "budget", "options"}

