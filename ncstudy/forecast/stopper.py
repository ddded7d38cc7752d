"""The stopping logic shared by the Ray scheduler, the Optuna pruner and the replay engine.

Policies:

* ``record`` -- forecast only, never stop (the decision the stopper *would* act on is recorded);
* ``stop_at_forecast`` -- stop at the first *trusted* forecast that carries a decision: ``onset``
  (stop reason ``forecast``; the trial reports the forecast onset) or ``no_onset`` (stop reason
  ``no_onset_forecast``; the trial reports the censored objective) -- or at the strict onset, if
  that comes first (once NC1 < 0.01 has been observed there is nothing left to forecast);
* ``stop_at_onset`` -- stop when NC1 crosses the strict threshold (``OnsetTracker``).

:class:`TrialMonitor` follows one trial; :class:`ForecastStopper` holds the monitors of a study and
its :class:`Calibration`, which learns online: a trial that reaches strict onset joins its group at
that evaluation, and one that runs to its budget without onset joins as a censored run. Trials
stopped by a forecast never show their outcome and are not learnt from. Everything serialises to
a JSON-able dict for resumption.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ncstudy.onset import Onset, OnsetRule, OnsetTracker
from ncstudy.records import (
    EPOCH,
    FN,
    FORECAST_EPOCH,
    LOSS,
    NC1,
    P_ONSET,
    T_NC_ESTIMATE,
    T_NC_HIGH,
    T_NC_LOW,
    finite,
    num,
)

from .calibration import Calibration, Observation, RunRecord
from .core import NO_ONSET, ONSET, Forecast, TerminalGate, phase_of
from .forecasters import DEFAULT_FORECASTER, FORECASTERS, make_forecaster

POLICIES = ("record", "stop_at_forecast", "stop_at_onset")
#: Stop reasons of the stopper (a trial's own reasons -- ``budget``, ``diverged`` -- pass through).
FORECAST_STOP, NO_ONSET_STOP, ONSET_STOP = "forecast", "no_onset_forecast", "onset"
_REASON_OF = {ONSET: FORECAST_STOP, NO_ONSET: NO_ONSET_STOP}


@dataclass(frozen=True)
class TrialForecast:
    """What a stopper knows of one trial: the forecast its decision rests on (the acted-on one,
    else the latest) and why it stopped (None while it runs and nothing has stopped it)."""

    forecast: Forecast | None
    stop_reason: str | None

    @property
    def onset(self) -> float | None:
        return None if self.forecast is None else float(self.forecast.onset)


@dataclass(frozen=True)
class Decision:
    stop: bool
    reason: str | None  # "forecast", "no_onset_forecast" or "onset" when ``stop``
    forecast: Forecast | None  # the latest forecast (trusted or not)
    onset: bool  # this evaluation is the strict onset


class TrialMonitor:
    """One trial: onset tracking, a forecaster and the policy. Feed records in epoch order;
    a record whose epoch is not after the last one rewinds the trial to before it (a trial
    restored from a checkpoint re-reports those epochs)."""

    def __init__(self, trial_id: str, group: str, policy: str, calibration: Calibration,
                 forecaster: str = DEFAULT_FORECASTER, rule: OnsetRule = OnsetRule(), terminal_acc: float = 0.99,
                 forecaster_options: Mapping[str, Any] | None = None, budget: float | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        self.trial_id, self.group, self.policy = str(trial_id), group, policy
        self.budget = None if budget is None else float(budget)
        self.calibration, self.forecaster_name, self.rule = calibration, forecaster, rule
        self.terminal_acc = terminal_acc
        self.forecaster_options = dict(forecaster_options or {})
        self.records: list[dict[str, Any]] = []
        self.final_reason: str | None = None  # set by complete()
        self._reset()

    def _reset(self) -> None:
        opts = dict(self.forecaster_options)
        opts.setdefault("terminal_acc", self.terminal_acc)
        if self.forecaster_name in ("nc1", "conformal", "conformal_no_fn"):
            opts.setdefault("strict", self.rule.strict)
        self.forecaster = make_forecaster(self.forecaster_name, self.calibration, self.group, self.budget, **opts)
        self.tracker = OnsetTracker(self.rule)
        self.gate = TerminalGate(self.terminal_acc)
        self.latest: Forecast | None = None
        self.acted: Forecast | None = None  # first trusted forecast with a decision
        self.invalid: list[Forecast] = []  # forecasts whose onset was not after the epoch they were made at
        self.stop_reason: str | None = None
        self.stopped_at: int | None = None
        self.points: list[tuple[int, int | None, float]] = []
        self.loss_at_onset: float | None = None

    # ------------------------------------------------------------------------------------------
    def observe(self, record: Mapping[str, Any]) -> Decision:
        if not finite(record.get(EPOCH)):
            raise ValueError(f"trial {self.trial_id}: record without a numeric 'epoch': {dict(record)}")
        epoch = int(float(record[EPOCH]))
        if self.records and epoch <= self.records[-1][EPOCH]:
            keep = [r for r in self.records if r[EPOCH] < epoch]
            self.records = []
            self._reset()
            for r in keep:
                self.records.append(r)
                self._step(r)
        rec = {k: v for k, v in record.items()}
        rec[EPOCH] = epoch
        self.records.append(rec)
        return self._step(rec)

    def _step(self, r: Mapping[str, Any]) -> Decision:
        epoch, phase = r[EPOCH], phase_of(r)
        fn = num(r.get(FN))
        if self.gate.update(r) and fn is not None and not self.tracker.collapsed:
            self.points.append((epoch, phase, fn))
        is_onset = self.tracker.update(epoch, num(r.get(NC1)), fn, phase)
        if is_onset:
            self.loss_at_onset = num(r.get(LOSS))
        fc = self.forecaster.observe(r)
        if fc is not None and fc is not self.latest:
            if not fc.valid:  # a forecaster bug, never acted on; replay counts these
                self.invalid.append(fc)
                fc = None
            else:
                self.latest = fc
                if fc.trusted and fc.decision is not None and self.acted is None and not self.tracker.collapsed:
                    self.acted = fc
        if self.stop_reason is None and self.policy != "record":
            if self.tracker.collapsed:
                self.stop_reason, self.stopped_at = ONSET_STOP, epoch
            elif self.policy == "stop_at_forecast" and self.acted is not None:
                self.stop_reason, self.stopped_at = _REASON_OF[self.acted.decision], epoch
        return Decision(self.stop_reason is not None, self.stop_reason, self.latest, is_onset)

    @property
    def decision(self) -> str | None:
        """What the stopper decided or would decide (under ``record``): ``forecast``,
        ``no_onset_forecast`` or None (for the strict onset itself see :attr:`tracker`)."""
        return None if self.acted is None else _REASON_OF[self.acted.decision]

    # ------------------------------------------------------------------------------------------
    @property
    def last_epoch(self) -> int | None:
        return self.records[-1][EPOCH] if self.records else None

    def onset(self, relaxed_fallback: bool = True) -> Onset:
        return self.tracker.result(relaxed_fallback)

    def observation(self) -> Observation | None:
        """The calibration observation once the trial reached strict onset."""
        if not self.tracker.collapsed or not finite(self.tracker.fn_strict):
            return None
        levels = {LOSS: self.loss_at_onset} if self.loss_at_onset is not None else {}
        t = self.tracker.t_strict
        pts = tuple(p for p in self.points if p[0] <= t)
        return Observation(self.trial_id, int(t), float(self.tracker.fn_strict), "strict", pts, levels)

    def run_record(self) -> RunRecord | None:
        """The trial as a completed run for the calibration: collapsed (from its strict onset on),
        or censored once it has run to its budget without onset; None otherwise (a forecast stop
        hides the outcome)."""
        if self.tracker.collapsed:
            return RunRecord.from_records(self.trial_id, self.records, int(self.budget or self.tracker.t_strict),
                                          self.rule, self.terminal_acc)
        if (self.budget is not None and self.last_epoch is not None and self.last_epoch >= self.budget
                and self.final_reason in ("budget", None) and self.stop_reason is None):
            return RunRecord.from_records(self.trial_id, self.records, int(self.budget), self.rule,
                                          self.terminal_acc)
        return None

    def complete(self, reason: str | None = None) -> str:
        """Mark the trial finished; returns its stop reason (``forecast``/``onset`` when this
        monitor stopped it, else ``reason`` if given, else ``onset`` when the last evaluation was
        the strict onset -- a trainable stopping itself at onset -- else ``budget``)."""
        if self.stop_reason is not None:
            self.final_reason = self.stop_reason
        elif reason is not None:
            self.final_reason = reason
        elif self.tracker.collapsed and self.tracker.t_strict == self.last_epoch:
            self.final_reason = "onset"
        else:
            self.final_reason = "budget"
        return self.final_reason

    def fields(self) -> dict[str, float]:
        """What a result of this trial carries (:data:`ncstudy.records.FORECAST_FIELDS`): the observed
        onset once reached, else the forecast acted on, else the latest one; NaN where unknown (an
        onset not expected within the budget has ``t_nc_estimate`` NaN and a low ``p_onset``).
        ``forecast_epoch`` is when the onset forecast acted on (or, under ``record``, that would be)
        was made -- kept after onset, so ``t_nc - forecast_epoch`` is its lead."""
        nan = float("nan")
        made = float(self.acted.made_at) if self.acted is not None and self.acted.decision == ONSET else nan
        if self.tracker.t_strict is not None:
            t = float(self.tracker.t_strict)
            return {T_NC_ESTIMATE: t, T_NC_LOW: t, T_NC_HIGH: t, P_ONSET: 1.0, FORECAST_EPOCH: made}
        fc = self.acted or self.latest
        if fc is None:
            return {T_NC_ESTIMATE: nan, T_NC_LOW: nan, T_NC_HIGH: nan, P_ONSET: nan, FORECAST_EPOCH: nan}

        def fin(x: float) -> float:
            return float(x) if finite(x) else nan

        return {T_NC_ESTIMATE: fin(fc.onset), T_NC_LOW: fin(fc.low), T_NC_HIGH: fin(fc.high),
                P_ONSET: fin(fc.p_onset) if fc.p_onset is not None else nan, FORECAST_EPOCH: made}

    def state(self) -> TrialForecast:
        return TrialForecast(self.acted or self.latest, self.final_reason or self.stop_reason)

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "group": self.group, "budget": self.budget,
                "records": _jsonable(self.records),
                "final_reason": self.final_reason, "stop_reason": self.stop_reason,
                "stopped_at": self.stopped_at, "acted": None if self.acted is None else self.acted.to_dict()}


class ForecastStopper:
    """Monitors for many trials sharing one :class:`Calibration`; the core of both adapters."""

    def __init__(self, policy: str = "record", forecaster: str = DEFAULT_FORECASTER,
                 calibration: Calibration | None = None, rule: OnsetRule = OnsetRule(),
                 terminal_acc: float = 0.99, learn: bool = True,
                 forecaster_options: Mapping[str, Any] | None = None, budget: float | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        if forecaster not in FORECASTERS:
            raise ValueError(f"unknown forecaster {forecaster!r}; choose from {', '.join(FORECASTERS)}")
        self.policy, self.forecaster, self.rule = policy, forecaster, rule
        self.calibration = calibration if calibration is not None else Calibration()
        self.terminal_acc, self.learn = terminal_acc, learn
        self.forecaster_options = dict(forecaster_options or {})
        self.budget = budget
        self.monitors: dict[str, TrialMonitor] = {}
        # fail fast on bad options
        make_forecaster(forecaster, self.calibration, "default", budget or 1.0, **self.forecaster_options)

    def monitor(self, trial_id: str, group: str = "default", budget: float | None = None) -> TrialMonitor:
        tid = str(trial_id)
        m = self.monitors.get(tid)
        if m is None:
            m = self.monitors[tid] = TrialMonitor(tid, group, self.policy, self.calibration, self.forecaster,
                                                  self.rule, self.terminal_acc, self.forecaster_options,
                                                  budget if budget is not None else self.budget)
        return m

    def observe(self, trial_id: str, record: Mapping[str, Any], group: str | None = None,
                budget: float | None = None) -> Decision:
        m = self.monitor(trial_id, group or "default", budget)
        d = m.observe(record)
        if d.onset and self.learn:
            run = m.run_record()
            if run is not None:
                self.calibration.add_run(m.group, run)
        return d

    def complete(self, trial_id: str, reason: str | None = None) -> str | None:
        m = self.monitors.get(str(trial_id))
        if m is None:
            return None
        out = m.complete(reason)
        if self.learn and not m.tracker.collapsed:  # collapsed runs were learnt at their onset
            run = m.run_record()
            if run is not None:
                self.calibration.add_run(m.group, run)
        return out

    def state(self, trial_id: str) -> TrialForecast | None:
        """The trial's :class:`TrialForecast` (None for a trial never seen)."""
        m = self.monitors.get(str(trial_id))
        return None if m is None else m.state()

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "policy": self.policy, "forecaster": self.forecaster,
                "calibration": self.calibration.to_dict(),
                "trials": [m.to_dict() for m in self.monitors.values()]}

    def load_dict(self, state: Mapping[str, Any]) -> None:
        """Restore calibration and trial monitors (replaying each trial's records without
        learning: the saved calibration already holds what was learnt)."""
        self.calibration = Calibration.from_dict(state["calibration"])
        self.monitors = {}
        for t in state.get("trials", []):
            m = TrialMonitor(t["trial_id"], t["group"], self.policy, self.calibration, self.forecaster,
                             self.rule, self.terminal_acc, self.forecaster_options, t.get("budget", self.budget))
            for r in t.get("records", []):
                m.observe(r)
            if t.get("acted") is not None:
                m.acted = Forecast.from_dict(t["acted"])
            if t.get("stop_reason") is not None:
                m.stop_reason, m.stopped_at = t["stop_reason"], t.get("stopped_at")
            m.final_reason = t.get("final_reason")
            self.monitors[m.trial_id] = m


def _jsonable(records: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        d = {}
        for k, v in r.items():
            if isinstance(v, (bool, str)) or v is None:
                d[k] = v
            elif finite(v):
                f = float(v)
                d[k] = int(f) if k == EPOCH else f
            elif isinstance(v, (int, float)) or hasattr(v, "dtype"):
                d[k] = None  # NaN / inf
        out.append(d)
    return out
