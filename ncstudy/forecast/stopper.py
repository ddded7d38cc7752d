"""The stopping logic shared by the Ray scheduler, the Optuna pruner and the replay engine.

Policies:

* ``record`` -- forecast only, never stop (the decision the stopper *would* act on is recorded);
* ``stop_at_forecast`` -- stop at the first *trusted* decision the mode acts on (below), or at the
  strict onset, if that comes first (once NC1 < 0.01 has been observed there is nothing left to
  forecast);
* ``stop_at_onset`` -- stop when NC1 crosses the strict threshold (``OnsetTracker``) and, in a
  search, once a trial has run past the incumbent's onset (capping needs no forecast).

Modes (:mod:`.settings`):

* ``sweep`` (every trial's onset is wanted): the forecaster's decisions -- ``onset`` (stop reason
  ``forecast``; the trial reports the forecast onset) or ``no_onset`` (``no_onset_forecast``; the
  trial reports the censored objective ``2 x budget``);
* ``search`` (the fastest collapse is wanted): the **incumbent** is the earliest onset observed so far
  among the study's trials. A trial that reaches the incumbent's epoch without collapsing cannot
  beat it and is stopped exactly (``capped``); earlier, a trial whose forecast states
  P(T_NC < incumbent) <= ``alpha`` at ``confirm`` evaluations in a row is stopped (``cannot_win``),
  and one whose forecaster decides ``no_onset`` too (``no_onset_forecast``). Collapse forecasts are
  not acted on: a trial that may beat the incumbent runs to its observed onset. A capped or
  cannot-win trial's objective is censored at the bound it was stopped at: the median of its
  forecast beyond the bound (``2 x budget`` when that lies beyond the budget), and at least the bound
  plus one epoch -- so it ranks after the incumbent, for a searcher and for ``get_best_result``.

:class:`TrialMonitor` follows one trial; :class:`ForecastStopper` holds the monitors of a study and
its :class:`Calibration`, which learns online: a trial that reaches strict onset joins its group at
that evaluation, and one that runs to its budget without onset joins as a censored run. Trials
stopped by a forecast never show their outcome and are not learnt from.

Scale (``docs/performance.md``, "Scale"): a finished trial's monitor is **released** -- its records,
forecaster and onset points are dropped; what its summary needs (the onset tracker, the forecast
acted on, the stop reasons, its last record) stays, and its full record is kept compressed for the
rare trial that reports again (a resumed errored trial). Learnt runs join the calibration in
**batches** (``learn_batch``: once those waiting number that fraction of the pool, at once while a
group is small): each batch costs one rebuild of the analog pool. ``max_pool`` bounds how many of
the study's own runs the pool holds: past it a learnt run takes the place of a uniformly drawn one
(reservoir sampling, a deterministic draw per run), so the pool -- and the cost of a forecast and of
a rebuild -- stops growing with the study. With a ``journal`` the stopper lists every durable change
(a run to learn, a batch committed, a trial finished) for an adapter to persist incrementally;
:meth:`ForecastStopper.live_dict` is then the small rest of its state (the running trials).
:meth:`ForecastStopper.to_dict` still gives the whole state as one JSON-able dict.
"""
from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ncstudy.onset import TERMINAL_ACC, Onset, OnsetRule, OnsetTracker
from ncstudy.records import (
    EPOCH,
    FN,
    FORECAST_EPOCH,
    FORECAST_STOPS,
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
from .forecasters import make_forecaster
from .protocol import NO_ONSET, ONSET, Forecast, Streak, TerminalGate, phase_of
from .settings import DEFAULT_FORECASTER, FORECASTER_NAMES, MODES, POLICIES, ConformalSettings

#: Stop reasons of the stopper (:data:`ncstudy.records.STOP_REASONS`; a trial's own reasons --
#: ``budget``, ``diverged`` -- pass through).
FORECAST_STOP, NO_ONSET_STOP, CANNOT_WIN_STOP, CAPPED_STOP = FORECAST_STOPS + ("capped",)
ONSET_STOP = "onset"
SEARCH_STOPS = (CAPPED_STOP, CANNOT_WIN_STOP)
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


def _no_incumbent() -> float:
    return math.inf


class TrialMonitor:
    """One trial: onset tracking, a forecaster and the policy. Feed records in epoch order;
    a record whose epoch is not after the last one rewinds the trial to before it (a trial
    restored from a checkpoint re-reports those epochs).

    ``mode``: ``sweep`` or ``search`` (module docs); in a search ``incumbent()`` gives the study's
    earliest observed onset (``inf`` while there is none). ``make``: builds the trial's forecaster
    (default: :func:`~ncstudy.forecast.forecasters.make_forecaster` from the other arguments; replay
    hands in forecasts computed once)."""

    def __init__(self, trial_id: str, group: str, policy: str, calibration: Calibration,
                 forecaster: str = DEFAULT_FORECASTER, rule: OnsetRule = OnsetRule(),
                 terminal_acc: float = TERMINAL_ACC,
                 forecaster_options: Mapping[str, Any] | None = None, budget: float | None = None, *,
                 mode: str = "sweep", incumbent: Callable[[], float] = _no_incumbent,
                 make: Callable[["TrialMonitor"], Any] | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        self.trial_id, self.group, self.policy, self.mode = str(trial_id), group, policy, mode
        self.incumbent, self._make = incumbent, make
        self.budget = None if budget is None else float(budget)
        self.calibration, self.forecaster_name, self.rule = calibration, forecaster, rule
        self.terminal_acc = terminal_acc
        self.forecaster_options = dict(forecaster_options or {})
        self.records: list[dict[str, Any]] = []
        self.final_reason: str | None = None  # set by complete()
        self.released = False  # see release()
        self._reset()

    def _reset(self) -> None:
        self.forecaster = self._make(self) if self._make is not None else make_forecaster(
            self.forecaster_name, self.calibration, self.group, self.budget, strict=self.rule.strict,
            terminal_acc=self.terminal_acc, lenient=True, **self.forecaster_options)
        settings = getattr(self.forecaster, "settings", None)
        # a search's cannot-win decision keeps the forecaster's own risk and confirmation
        self._search_alpha = settings.alpha if isinstance(settings, ConformalSettings) else None
        self._cannot_win = Streak(settings.confirm if isinstance(settings, ConformalSettings) else 1)
        self.tracker = OnsetTracker(self.rule)
        self.gate = TerminalGate(self.terminal_acc)
        self.latest: Forecast | None = None
        self.acted: Forecast | None = None  # the trusted forecast the (would-be) stop decision rests on
        self.would: str | None = None  # the first stop reason the mode would act on (also under `record`)
        self.would_at: int | None = None
        self.invalid: list[Forecast] = []  # forecasts whose onset was not after the epoch they were made at
        self.stop_reason: str | None = None
        self.stopped_at: int | None = None
        self.bound: float | None = None  # a search stop: T_NC is believed (cannot_win) or known (capped) > bound
        self.censored: float | None = None  # a search stop's objective (see _censored)
        self.points: list[tuple[int, int | None, float]] = []
        self.loss_at_onset: float | None = None

    # ------------------------------------------------------------------------------------------
    def observe(self, record: Mapping[str, Any]) -> Decision:
        if not finite(record.get(EPOCH)):
            raise ValueError(f"trial {self.trial_id}: record without a numeric 'epoch': {dict(record)}")
        if self.released:
            raise RuntimeError(f"trial {self.trial_id}: its monitor was released (ForecastStopper revives it)")
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
        fresh = fc is not None and fc is not self.latest
        if fresh:
            if not fc.valid:  # a forecaster bug, never acted on; replay counts these
                self.invalid.append(fc)
                fresh = False
            else:
                self.latest = fc
        collapsed = self.tracker.collapsed
        # a search: a trial that reaches the incumbent's onset without collapsing cannot win (no forecast needed)
        capped = self.mode == "search" and not collapsed and self.stop_reason is None and epoch >= self.incumbent()
        if self.would is None and not collapsed:
            reason = CAPPED_STOP if capped else self._would_stop(epoch, fc if fresh else None)
            if reason is not None:
                self.would, self.would_at = reason, epoch
        if self.stop_reason is None and self.policy != "record":
            if collapsed:
                self.stop_reason, self.stopped_at = ONSET_STOP, epoch
            elif capped:
                self.stop_reason, self.stopped_at = CAPPED_STOP, epoch
            elif self.policy == "stop_at_forecast" and self.would is not None:
                self.stop_reason, self.stopped_at = self.would, epoch
        if capped and (self.stop_reason == CAPPED_STOP or self.would == CAPPED_STOP):
            self._search_stop(None, float(epoch))  # valued by the latest forecast
        return Decision(self.stop_reason is not None, self.stop_reason, self.latest, is_onset)

    def _would_stop(self, epoch: int, fc: Forecast | None) -> str | None:
        """The forecast decision the mode acts on at this evaluation (``fc``: a new valid forecast), or None."""
        if self.mode == "sweep":
            if fc is not None and fc.trusted and fc.decision is not None:
                self.acted = fc
                return _REASON_OF[fc.decision]
            return None
        inc = self.incumbent()
        if fc is None:
            return None
        if fc.trusted and fc.decision == NO_ONSET:
            self.acted = fc
            if self.budget is not None:  # ranks after the incumbent even when budgets differ
                self.censored = max(2.0 * self.budget, inc + 1.0) if math.isfinite(inc) else 2.0 * self.budget
            return NO_ONSET_STOP
        would = None
        if (math.isfinite(inc) and self.budget is not None and inc - 1 < self.budget
                and self._search_alpha is not None and self.forecaster.ready):
            # (with the incumbent past the budget, beating it = collapsing at all: the no-onset decision)
            p = fc.p_before(inc - 1)  # P(T_NC < incumbent)
            would = CANNOT_WIN_STOP if p is not None and p <= self._search_alpha else None
        if self._cannot_win.update(would) is None or not fc.trusted:
            return None
        self.acted = fc
        self._search_stop(fc, float(inc - 1))
        return CANNOT_WIN_STOP

    def _search_stop(self, fc: Forecast | None, bound: float) -> None:
        """Record a search stop: T_NC > ``bound``, and the censored objective from the forecast it
        rests on (``fc``; the latest when None) -- computed now, from the live forecast: a restored
        forecast carries no distribution."""
        self.bound = bound
        self.censored = self._censored(bound, fc or self.latest)

    @property
    def decision(self) -> str | None:
        """What the stopper decided or would decide (under ``record``) on a forecast:
        ``forecast``, ``no_onset_forecast``, ``cannot_win``, or ``capped`` in a search; None
        otherwise (for the strict onset itself see :attr:`tracker`)."""
        return self.would

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
        or censored once it has run to its budget without onset; None otherwise (a forecast or
        search stop hides the outcome)."""
        if self.tracker.collapsed:
            return RunRecord.from_records(self.trial_id, self.records, int(self.budget or self.tracker.t_strict),
                                          self.rule, self.terminal_acc)
        if (self.budget is not None and self.last_epoch is not None and self.last_epoch >= self.budget
                and self.final_reason in ("budget", None) and self.stop_reason is None):
            return RunRecord.from_records(self.trial_id, self.records, int(self.budget), self.rule,
                                          self.terminal_acc)
        return None

    def complete(self, reason: str | None = None) -> str:
        """Mark the trial finished; returns its stop reason (the one this monitor stopped it for,
        else ``reason`` if given, else ``onset`` when the last evaluation was the strict onset --
        a trainable stopping itself at onset -- else ``budget``)."""
        if self.stop_reason is not None:
            self.final_reason = self.stop_reason
        elif reason is not None:
            self.final_reason = reason
        elif self.tracker.collapsed and self.tracker.t_strict == self.last_epoch:
            self.final_reason = "onset"
        else:
            self.final_reason = "budget"
        return self.final_reason

    def objective(self) -> float | None:
        """The collapse-time objective (module docs): the observed onset; the forecast onset of a
        trial stopped at one; the censored value of a search stop; ``2 x budget`` once no onset can
        come (a no-onset stop, or the budget reached); None while unknown."""
        if self.tracker.t_strict is not None:
            return float(self.tracker.t_strict)
        reason = self.stop_reason
        if reason == FORECAST_STOP and self.acted is not None:
            return float(self.acted.onset)
        if reason in (*SEARCH_STOPS, NO_ONSET_STOP) and self.censored is not None:
            return self.censored
        done = reason == NO_ONSET_STOP or (self.budget is not None and float(self.last_epoch or 0) >= self.budget)
        return 2.0 * self.budget if done and self.budget is not None else None

    def _censored(self, bound: float, fc: Forecast | None) -> float:
        """A search-stopped trial's objective: T_NC > ``bound``; the median of forecast ``fc`` beyond
        the bound (2 x budget when that is past the budget), at least ``bound + 1``."""
        med = fc.median_after(bound) if fc is not None else None
        if med is not None and not math.isfinite(med) and self.budget is not None:
            return 2.0 * self.budget
        return max(float(bound) + 1.0, med if med is not None and math.isfinite(med) else -math.inf)

    def fields(self) -> dict[str, float]:
        """What a result of this trial carries (:data:`ncstudy.records.FORECAST_FIELDS`): the observed
        onset once reached, else the forecast acted on, else the latest one; NaN where unknown (an
        onset not expected within the budget has ``t_nc_estimate`` NaN and a low ``p_onset``).
        ``forecast_epoch`` is when the onset forecast acted on (or, under ``record``, that would be)
        was made -- kept after onset, so ``t_nc - forecast_epoch`` is its lead."""
        nan = float("nan")
        made = float(self.acted.made_at) if self.acted is not None and self.would == FORECAST_STOP else nan
        if self.tracker.t_strict is not None:
            t = float(self.tracker.t_strict)
            return {T_NC_ESTIMATE: t, T_NC_LOW: t, T_NC_HIGH: t, P_ONSET: 1.0, FORECAST_EPOCH: made}
        fc = self.acted or self.latest
        if fc is None and self.bound is None:
            return {T_NC_ESTIMATE: nan, T_NC_LOW: nan, T_NC_HIGH: nan, P_ONSET: nan, FORECAST_EPOCH: nan}

        def fin(x: float | None) -> float:
            return float(x) if finite(x) else nan

        out = {T_NC_ESTIMATE: nan, T_NC_LOW: nan, T_NC_HIGH: nan, P_ONSET: nan, FORECAST_EPOCH: made}
        if fc is not None:
            out.update({T_NC_ESTIMATE: fin(fc.onset), T_NC_LOW: fin(fc.low), T_NC_HIGH: fin(fc.high),
                        P_ONSET: fin(fc.p_onset)})
        if self.bound is not None and (self.stop_reason or self.would) in SEARCH_STOPS:
            # a search stop: the onset is later than the bound (known when capped, forecast otherwise)
            median = fc.median_after(self.bound) if fc is not None else None
            out[T_NC_LOW] = self.bound + 1.0
            out[T_NC_ESTIMATE] = fin(median) if median is not None else nan
            out[T_NC_HIGH] = max(fin(fc.high), self.bound + 1.0) if fc is not None and finite(fc.high) else nan
        return out

    def state(self) -> TrialForecast:
        return TrialForecast(self.acted or self.latest, self.final_reason or self.stop_reason)

    def release(self) -> None:
        """Drop what only a running trial needs -- its records (all but the last), the forecaster,
        the onset points -- keeping what its summary reads (:meth:`fields`, :meth:`state`,
        :meth:`onset`, :meth:`objective`, the stop reasons, :attr:`last_epoch`). Call once the trial
        has completed and its run, if any, has been handed to the calibration (:meth:`run_record`
        needs the records)."""
        self.records = self.records[-1:]
        self.points, self.invalid = [], []
        self.forecaster = None
        self.released = True

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The monitor as a JSON-able dict: its records (replayed by :meth:`ForecastStopper.load_dict`)
        and its summary (what a released monitor is restored from without a replay)."""
        return {"trial_id": self.trial_id, "group": self.group, "budget": self.budget,
                "records": _jsonable(self.records),
                "final_reason": self.final_reason, "stop_reason": self.stop_reason,
                "stopped_at": self.stopped_at, "would": self.would, "would_at": self.would_at,
                "bound": self.bound, "censored": self.censored,
                "acted": None if self.acted is None else self.acted.to_dict(),
                "latest": None if self.latest is None else self.latest.to_dict(),
                "tracker": {k: _json_num(getattr(self.tracker, k)) for k in _TRACKER_FIELDS},
                "loss_at_onset": _json_num(self.loss_at_onset)}


class ForecastStopper:
    """Monitors for many trials sharing one :class:`Calibration`; the core of both adapters.

    ``learn_batch``: learnt runs join the calibration once those waiting number at least this
    fraction of its pool (0: each at once); a run of a group with fewer than ``1 / learn_batch``
    pooled runs joins at once, with everything waiting. ``max_pool``: the most of this stopper's
    learnt runs the calibration holds at once (None: all; see the module docs). ``journal``: list
    every durable change for :meth:`drain` (see the module docs). ``mode``: ``sweep`` or ``search``;
    in a search the incumbent is the earliest onset its trials have shown (:meth:`incumbent`), or
    one a caller offers (:meth:`offer_incumbent`: trials it does not follow, e.g. other workers').
    """

    def __init__(self, policy: str = "record", forecaster: str = DEFAULT_FORECASTER,
                 calibration: Calibration | None = None, rule: OnsetRule = OnsetRule(),
                 terminal_acc: float = TERMINAL_ACC, learn: bool = True,
                 forecaster_options: Mapping[str, Any] | None = None, budget: float | None = None,
                 learn_batch: float = 0.0, journal: bool = False, max_pool: int | None = None,
                 mode: str = "sweep", make: Callable[[TrialMonitor], Any] | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        if forecaster not in FORECASTER_NAMES:
            raise ValueError(f"unknown forecaster {forecaster!r}; choose from {', '.join(FORECASTER_NAMES)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if not 0.0 <= learn_batch < 1.0:
            raise ValueError("learn_batch must be in [0, 1)")
        if max_pool is not None and max_pool < 1:
            raise ValueError("max_pool must be None or >= 1")
        self.policy, self.forecaster, self.rule, self.mode, self._make = policy, forecaster, rule, mode, make
        self.best_onset = math.inf  # the earliest onset the study's trials have shown
        self.offered = math.inf  # the earliest onset offered from outside (offer_incumbent)
        self.calibration = calibration if calibration is not None else Calibration()
        self.terminal_acc, self.learn = terminal_acc, learn
        self.forecaster_options = dict(forecaster_options or {})
        self.budget = budget
        self.learn_batch = float(learn_batch)
        self.max_pool = max_pool
        self.slots: list[tuple[str, str]] = []  # (group, run id) of the learnt runs in the pool (max_pool only)
        self.seen = 0  # learnt runs offered to a capped pool
        self.monitors: dict[str, TrialMonitor] = {}
        #: learnt runs not yet in the calibration: run id -> (group, run)
        self.pending: dict[str, tuple[str, RunRecord]] = {}
        self.journal: list[dict[str, Any]] | None = [] if journal else None
        self.commits = 0  # batches handed to the calibration (each costs a pool rebuild at the next forecast)
        self._archive: dict[str, bytes] = {}  # released trial -> its full to_dict(), JSON, zlib
        # fail fast on bad options
        make_forecaster(forecaster, self.calibration, "default", budget or 1.0, strict=rule.strict,
                        terminal_acc=terminal_acc, lenient=True, **self.forecaster_options)

    def incumbent(self) -> float:
        """The search's incumbent: the earliest observed onset (``inf`` while there is none)."""
        return min(self.best_onset, self.offered)

    def offer_incumbent(self, onset: float | None) -> None:
        """An observed onset from a trial this stopper does not follow (it lowers the incumbent)."""
        if onset is not None and finite(onset):
            self.offered = min(self.offered, float(onset))

    def monitor(self, trial_id: str, group: str = "default", budget: float | None = None) -> TrialMonitor:
        tid = str(trial_id)
        m = self.monitors.get(tid)
        if m is not None and m.released:  # a finished trial reports again (e.g. a resumed errored trial)
            m = self.monitors[tid] = self._replay(json.loads(zlib.decompress(self._archive.pop(tid))))
        if m is None:
            m = self.monitors[tid] = self._new({"trial_id": tid, "group": group,
                                                "budget": budget if budget is not None else self.budget})
        return m

    def observe(self, trial_id: str, record: Mapping[str, Any], group: str | None = None,
                budget: float | None = None) -> Decision:
        m = self.monitor(trial_id, group or "default", budget)
        d = m.observe(record)
        if d.onset:
            self.best_onset = min(self.best_onset, float(m.tracker.t_strict))
            if self.learn:
                run = m.run_record()
                if run is not None:
                    self._learn(m.group, run)
        return d

    def complete(self, trial_id: str, reason: str | None = None) -> str | None:
        """Mark a trial finished (learn from it when it ran to its budget) and release its monitor."""
        m = self.monitors.get(str(trial_id))
        if m is None:
            return None
        if m.released:  # completed again (a reason given late): only the reason can change
            before = m.final_reason
            out = m.complete(reason)
            if out != before:
                d = json.loads(zlib.decompress(self._archive[m.trial_id]))
                d["final_reason"] = out
                self._archive[m.trial_id] = _pack(d)
                self._emit({"e": "done", "trial": d})
            return out
        out = m.complete(reason)
        if self.learn and not m.tracker.collapsed:  # collapsed runs were learnt at their onset
            run = m.run_record()
            if run is not None:
                self._learn(m.group, run)
        d = m.to_dict()
        self._archive[m.trial_id] = _pack(d)
        self._emit({"e": "done", "trial": d})
        m.release()
        return out

    def state(self, trial_id: str) -> TrialForecast | None:
        """The trial's :class:`TrialForecast` (None for a trial never seen)."""
        m = self.monitors.get(str(trial_id))
        return None if m is None else m.state()

    # -- learning ------------------------------------------------------------------------------
    def _learn(self, group: str, run: RunRecord) -> None:
        self.pending[run.run_id] = (group, run)
        self._emit({"e": "learn", "group": group, "run": run.to_dict()})
        small = self.learn_batch <= 0 or self.calibration.n_runs(group) < math.ceil(1.0 / self.learn_batch)
        if small or len(self.pending) >= math.ceil(self.learn_batch * self.calibration.n_runs()):
            self.commit()

    def commit(self) -> None:
        """Hand every learnt run still waiting to the calibration."""
        if not self.pending:
            return
        for group, run in self.pending.values():
            self._pool_add(group, run)
        self.pending = {}
        self.commits += 1
        self._emit({"e": "commit"})

    def _pool_add(self, group: str, run: RunRecord) -> None:
        """One learnt run into the calibration; with ``max_pool``, by reservoir sampling."""
        if self.max_pool is None or any(rid == run.run_id for _, rid in self.slots):
            self.calibration.add_run(group, run)  # (a run learnt again replaces itself)
            return
        self.seen += 1
        if len(self.slots) < self.max_pool:
            j = len(self.slots)
            self.slots.append((group, run.run_id))
        else:
            j = _draw(run.run_id, self.seen)
            if j >= self.max_pool:
                return
            self.calibration.remove_run(*self.slots[j])
            self.slots[j] = (group, run.run_id)
        self.calibration.add_run(group, run)

    # -- state ---------------------------------------------------------------------------------
    def _emit(self, event: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal.append(event)

    def drain(self) -> list[dict[str, Any]]:
        """The journal's events since the last call (JSON-able; see :meth:`apply`)."""
        out, self.journal = (self.journal or []), ([] if self.journal is not None else None)
        return out

    def live_dict(self) -> dict[str, Any]:
        """What the journal does not hold: the trials still running (their records)."""
        return {"version": 2, "policy": self.policy, "forecaster": self.forecaster, "mode": self.mode,
                "offered": _json_num(self.offered),
                "trials": [m.to_dict() for m in self.monitors.values() if not m.released]}

    def apply(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Replay journal events in order (nothing is journalled meanwhile)."""
        journal, self.journal = self.journal, None
        try:
            for e in events:
                kind = e["e"]
                if kind == "learn":
                    run = RunRecord.from_dict(e["run"])
                    self.pending[run.run_id] = (e["group"], run)
                elif kind == "commit":
                    self.commit()
                elif kind == "done":
                    m = self._released(e["trial"])
                    self.monitors[m.trial_id] = m
                else:
                    raise ValueError(f"unknown stopper journal event {kind!r}")
        finally:
            self.journal = journal

    def restore(self, base: Mapping[str, Any], events: Iterable[Mapping[str, Any]], live: Mapping[str, Any]) -> None:
        """The state ``base`` (a :meth:`to_dict`) + journal ``events`` + :meth:`live_dict` ``live``."""
        self.load_dict(base)
        self.apply(events)
        for t in live.get("trials", []):
            m = self._replay(t)
            self.monitors[m.trial_id] = m
            self._archive.pop(m.trial_id, None)
        self._offered_from(live)
        self._best_from_monitors()

    def _offered_from(self, state: Mapping[str, Any]) -> None:
        if state.get("offered") is not None:
            self.offer_incumbent(state["offered"])

    def _best_from_monitors(self) -> None:
        onsets = [m.tracker.t_strict for m in self.monitors.values() if m.tracker.t_strict is not None]
        self.best_onset = float(min(onsets)) if onsets else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "policy": self.policy, "forecaster": self.forecaster, "mode": self.mode,
                "offered": _json_num(self.offered), "calibration": self.calibration.to_dict(),
                "pending": [{"group": g, "run": r.to_dict()} for g, r in self.pending.values()],
                "pool": {"slots": [list(x) for x in self.slots], "seen": self.seen},
                "trials": [dict(json.loads(zlib.decompress(self._archive[m.trial_id])), released=True)
                           if m.released else m.to_dict() for m in self.monitors.values()]}

    def load_dict(self, state: Mapping[str, Any]) -> None:
        """Restore calibration and trial monitors (replaying each running trial's records without
        learning: the saved calibration already holds what was learnt; finished trials are
        restored released, from their summary)."""
        self.calibration = Calibration.from_dict(state["calibration"])
        self.pending = {}
        pool = state.get("pool") or {}
        self.slots = [(str(g), str(r)) for g, r in pool.get("slots", [])]
        self.seen = int(pool.get("seen", 0))
        for p in state.get("pending", []):
            run = RunRecord.from_dict(p["run"])
            self.pending[run.run_id] = (p["group"], run)
        self.monitors, self._archive = {}, {}
        for t in state.get("trials", []):
            m = self._released(t) if t.get("released") else self._replay(t)
            self.monitors[m.trial_id] = m
        self._offered_from(state)
        self._best_from_monitors()

    def _new(self, t: Mapping[str, Any]) -> TrialMonitor:
        return TrialMonitor(t["trial_id"], t["group"], self.policy, self.calibration, self.forecaster, self.rule,
                            self.terminal_acc, self.forecaster_options, t.get("budget", self.budget),
                            mode=self.mode, incumbent=self.incumbent, make=self._make)

    @staticmethod
    def _decided(m: TrialMonitor, t: Mapping[str, Any]) -> None:
        """The decisions a saved monitor had made (a replay against today's incumbent could differ)."""
        m.acted = None if t.get("acted") is None else Forecast.from_dict(t["acted"])
        m.stop_reason, m.stopped_at = t.get("stop_reason"), t.get("stopped_at")
        m.would, m.would_at = t.get("would"), t.get("would_at")
        if m.would is None and m.acted is not None and m.acted.decision is not None:  # saved before issue 24
            m.would = _REASON_OF.get(m.acted.decision)
        m.bound, m.censored = t.get("bound"), t.get("censored")
        m.final_reason = t.get("final_reason")

    def _replay(self, t: Mapping[str, Any]) -> TrialMonitor:
        """A monitor rebuilt by replaying its records (no learning)."""
        m = self._new(t)
        for r in t.get("records", []):
            m.observe(r)
        live_acted = m.acted
        self._decided(m, t)
        if m.acted is not None and live_acted is not None and live_acted.made_at == m.acted.made_at:
            m.acted = live_acted  # the same forecast, with its distribution
        return m

    def _released(self, t: Mapping[str, Any]) -> TrialMonitor:
        """A finished trial's released monitor, from its summary (no replay); its full dict is archived."""
        d = {k: v for k, v in t.items() if k != "released"}
        m = self._new(d)
        self._decided(m, d)
        m.latest = None if d.get("latest") is None else Forecast.from_dict(d["latest"])
        tr = d.get("tracker") or {}
        for k in _TRACKER_FIELDS:
            v = tr.get(k)
            setattr(m.tracker, k, None if v is None else (int(v) if k.startswith("t_") else float(v)))
        m.loss_at_onset = d.get("loss_at_onset")
        last = d.get("records", [])[-1:]
        m.records = [dict(r, **{EPOCH: int(r[EPOCH])}) for r in last]
        m.release()
        self._archive[m.trial_id] = _pack(d)
        return m


def _draw(run_id: str, k: int) -> int:
    """Reservoir sampling's uniform draw in [0, k) for the k-th run, from its id (so a replay of the
    journal makes the same draws)."""
    h = hashlib.blake2b(f"{run_id}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % k




_TRACKER_FIELDS = ("t_strict", "t_relaxed", "fn_strict", "fn_relaxed", "min_nc1")


def _json_num(v: Any) -> float | int | None:
    if not finite(v):
        return None
    return int(v) if isinstance(v, int) else float(v)


def _pack(d: Mapping[str, Any]) -> bytes:
    return zlib.compress(json.dumps(d, separators=(",", ":")).encode(), 6)


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
