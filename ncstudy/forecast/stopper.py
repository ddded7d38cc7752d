"""The stopping logic shared by the Ray scheduler, the Optuna pruner and the replay engine.

Policies:

* ``record`` -- forecast only, never stop;
* ``stop_at_forecast`` -- stop at the first *trusted* forecast (or at the strict onset, if that
  comes first: once NC1 < 0.01 has been observed there is nothing left to forecast);
* ``stop_at_onset`` -- stop when NC1 crosses the strict threshold (``OnsetTracker``).

:class:`TrialMonitor` follows one trial; :class:`ForecastStopper` holds the monitors of a study,
its :class:`Calibration` (learning online: each trial that reaches strict onset is added to its
group) and serialises everything to a JSON-able dict for resumption.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ncstudy.onset import Onset, OnsetRule, OnsetTracker
from ncstudy.records import EPOCH, FN, LOSS, NC1, finite, num

from .calibration import Calibration, Observation
from .core import Forecast, TerminalGate, phase_of
from .forecasters import FORECASTERS, make_forecaster

POLICIES = ("record", "stop_at_forecast", "stop_at_onset")


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
    reason: str | None  # "forecast" or "onset" when ``stop``
    forecast: Forecast | None  # the latest forecast (trusted or not)
    onset: bool  # this evaluation is the strict onset


class TrialMonitor:
    """One trial: onset tracking, a forecaster and the policy. Feed records in epoch order;
    a record whose epoch is not after the last one rewinds the trial to before it (a trial
    restored from a checkpoint re-reports those epochs)."""

    def __init__(self, trial_id: str, group: str, policy: str, calibration: Calibration,
                 forecaster: str = "fn_star", rule: OnsetRule = OnsetRule(), terminal_acc: float = 0.99,
                 forecaster_options: Mapping[str, Any] | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        self.trial_id, self.group, self.policy = str(trial_id), group, policy
        self.calibration, self.forecaster_name, self.rule = calibration, forecaster, rule
        self.terminal_acc = terminal_acc
        self.forecaster_options = dict(forecaster_options or {})
        self.records: list[dict[str, Any]] = []
        self.final_reason: str | None = None  # set by complete()
        self._reset()

    def _reset(self) -> None:
        opts = dict(self.forecaster_options)
        opts.setdefault("terminal_acc", self.terminal_acc)
        if self.forecaster_name == "nc1":
            opts.setdefault("strict", self.rule.strict)
        self.forecaster = make_forecaster(self.forecaster_name, self.calibration, self.group, **opts)
        self.tracker = OnsetTracker(self.rule)
        self.gate = TerminalGate(self.terminal_acc)
        self.latest: Forecast | None = None
        self.acted: Forecast | None = None  # first trusted forecast
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
        if fc is not None:
            self.latest = fc
            if fc.trusted and self.acted is None:
                self.acted = fc
        if self.stop_reason is None and self.policy != "record":
            if self.tracker.collapsed:
                self.stop_reason, self.stopped_at = "onset", epoch
            elif self.policy == "stop_at_forecast" and self.acted is not None:
                self.stop_reason, self.stopped_at = "forecast", epoch
        return Decision(self.stop_reason is not None, self.stop_reason, self.latest, is_onset)

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

    def state(self) -> TrialForecast:
        return TrialForecast(self.acted or self.latest, self.final_reason or self.stop_reason)

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "group": self.group, "records": _jsonable(self.records),
                "final_reason": self.final_reason, "stop_reason": self.stop_reason,
                "stopped_at": self.stopped_at, "acted": None if self.acted is None else self.acted.to_dict()}


class ForecastStopper:
    """Monitors for many trials sharing one :class:`Calibration`; the core of both adapters."""

    def __init__(self, policy: str = "record", forecaster: str = "fn_star",
                 calibration: Calibration | None = None, rule: OnsetRule = OnsetRule(),
                 terminal_acc: float = 0.99, learn: bool = True,
                 forecaster_options: Mapping[str, Any] | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        if forecaster not in FORECASTERS:
            raise ValueError(f"unknown forecaster {forecaster!r}; choose from {', '.join(FORECASTERS)}")
        self.policy, self.forecaster, self.rule = policy, forecaster, rule
        self.calibration = calibration if calibration is not None else Calibration()
        self.terminal_acc, self.learn = terminal_acc, learn
        self.forecaster_options = dict(forecaster_options or {})
        self.monitors: dict[str, TrialMonitor] = {}
        # fail fast on bad options
        make_forecaster(forecaster, self.calibration, "default", **self.forecaster_options)

    def monitor(self, trial_id: str, group: str = "default") -> TrialMonitor:
        tid = str(trial_id)
        m = self.monitors.get(tid)
        if m is None:
            m = self.monitors[tid] = TrialMonitor(tid, group, self.policy, self.calibration, self.forecaster,
                                                  self.rule, self.terminal_acc, self.forecaster_options)
        return m

    def observe(self, trial_id: str, record: Mapping[str, Any], group: str | None = None) -> Decision:
        m = self.monitor(trial_id, group or "default")
        d = m.observe(record)
        if d.onset and self.learn:
            obs = m.observation()
            if obs is not None:
                self.calibration.add(m.group, obs)
        return d

    def complete(self, trial_id: str, reason: str | None = None) -> str | None:
        m = self.monitors.get(str(trial_id))
        return None if m is None else m.complete(reason)

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
                             self.rule, self.terminal_acc, self.forecaster_options)
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
