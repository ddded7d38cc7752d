"""Forecasters: fn* crossing (the paper's signal) and two competitors (NC1 and training-loss
extrapolation). Each consumes one trial's records in epoch order via ``observe(record)``."""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from .calibration import Calibration
from .core import EPOCH, FN, LOSS, NC1, Forecast, TerminalGate, finite, first_crossing, phase_of, phase_ok


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
        lo, hi = est.lead_interval or (est.lead, est.lead)
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
        lo, hi = (min(t_fast, t_slow), max(t_fast, t_slow)) if dy < 0 else (min(onset, epoch), max(onset, epoch))
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


FORECASTERS: dict[str, type] = {
    "fn_star": FnStarCrossing,
    "nc1": NC1Extrapolation,
    "train_loss": TrainLossExtrapolation,
}


def make_forecaster(name: str, calibration: Calibration, group: str, **options: Any):
    """Build a forecaster by name (``fn_star``, ``nc1``, ``train_loss``) for one trial.
    ``options`` may hold keyword arguments of any forecaster; each class takes the ones it knows
    (so one option set can serve a comparison of several forecasters)."""
    if name not in FORECASTERS:
        raise ValueError(f"unknown forecaster {name!r}; choose from {', '.join(FORECASTERS)}")
    cls = FORECASTERS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "calibration", "group"}
    unknown = set(options) - _ALL_OPTIONS
    if unknown:
        raise ValueError(f"unknown forecaster option(s) {', '.join(sorted(unknown))}")
    opts = {k: v for k, v in options.items() if k in accepted}
    if cls is NC1Extrapolation:
        return cls(**opts)
    return cls(calibration, group, **opts)


_ALL_OPTIONS = {p for c in FORECASTERS.values() for p in inspect.signature(c.__init__).parameters} - {
    "self", "calibration", "group"}

