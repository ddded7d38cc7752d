"""A search for the fastest collapse, replayed over logged runs: what each stopper saves, and
whether the search still finds the best configuration.

Each logged run stands for one configuration of a tabular benchmark. A replayed search takes the
runs in a random order, ``concurrent`` at a time (every epoch costs the same, so a run's
evaluation at epoch ``e`` happens ``e`` time units after it started); when one ends, the next
starts. A stopper sees each evaluation as it happens and may stop the run; the incumbent -- the
earliest onset observed so far -- is updated the moment an onset is observed. Every stopper meets
the same ``repeats`` orders.

Figures, per stopper (:class:`SearchSummary`):

* ``speedup``: epochs of stop-at-onset-or-budget (every run trained until its strict onset, else to
  its budget) divided by the mean epochs the search used;
* ``found_best``: the share of orders whose final answer -- the run with the smallest reported
  collapse time (ties: the one that ended first) -- truly has the earliest onset of all runs;
* ``stops``: the mean number of runs per search ended for each reason.

Stoppers (:data:`SEARCH_STOPPERS`):

``none``
    stop at the onset or the budget (the baseline: speedup 1, the best always found);
``capping``
    stop a run once it reaches the incumbent's onset without collapsing (adaptive capping);
``asha``
    Ray Tune's asynchronous successive halving on NC1 (mode min), with ncstudy's study defaults
    (grace period 5 evaluations, reduction factor 3, ``max_t`` the longest budget): Ray's
    ``_Bracket`` rule, step for step;
``median``
    Optuna's ``MedianPruner`` on NC1 (5 startup trials, no warm-up): a run is pruned when its best
    NC1 so far is above the median of the completed runs' NC1 at the same epoch;
``fn_star``
    the paper's rule: stop at the fn* crossing and report crossing + lead as the collapse time;
``search``
    ncstudy's stopper in search mode (capping, ``cannot_win`` and ``no_onset_forecast`` stops;
    :mod:`ncstudy.forecast.stopper`).

The forecasters' calibration is one of :func:`~ncstudy.forecast.replay.held_out_calibrations`'s
modes (a run is never in its own calibration), fixed for the whole search: each run's forecasts are
computed once and played back in every order, so what differs between orders is the incumbent.
(In a live study the calibration also learns from the study's own finished runs.)
"""
from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ncstudy.onset import TERMINAL_ACC, OnsetRule, onset_of
from ncstudy.records import EPOCH, NC1, finite
from ncstudy.runs import Run

from .calibration import Calibration, Prior
from .forecasters import make_forecaster
from .protocol import Forecast
from .replay import held_out_calibrations, infer_budgets
from .settings import DEFAULT_FORECASTER
from .stopper import ONSET_STOP, ForecastStopper

SEARCH_STOPPERS = ("none", "capping", "asha", "median", "fn_star", "search")
#: ASHA as a study file configures it (``ncstudy.study.spec.AshaConfig``): evaluations, reduction factor.
ASHA_GRACE_EVALUATIONS, ASHA_REDUCTION = 5, 3.0
MEDIAN_STARTUP = 5


@dataclass(frozen=True)
class SearchRun:
    """One configuration of the benchmark: its records up to where the search may run it."""

    run_id: str
    group: str
    budget: int
    t_nc: int | None  # strict onset (None: none within the budget)
    records: tuple[Mapping[str, Any], ...]

    @property
    def baseline(self) -> int:
        """Epochs under stop-at-onset-or-budget."""
        return int(self.t_nc) if self.t_nc is not None else int(self.records[-1][EPOCH])


@dataclass
class SearchSummary:
    stopper: str
    n_runs: int
    concurrent: int
    repeats: int
    true_best: int | None  # the earliest strict onset among the runs
    epochs_baseline: int  # stop-at-onset-or-budget
    epochs_mean: float  # epochs the search used, mean over orders
    speedup: float
    found_best: float | None  # share of orders that end with a truly best run (None: no run collapses)
    stops: dict[str, float] = field(default_factory=dict)  # mean runs per search, by how they ended

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecordedForecaster:
    """A forecaster that plays back what a real one said at each epoch of a run (computed once)."""

    def __init__(self, steps: Mapping[int, tuple[Forecast | None, bool]], settings: Any = None) -> None:
        self._steps, self.settings = steps, settings
        self.forecast: Forecast | None = None
        self.ready = False

    def observe(self, record: Mapping[str, Any]) -> Forecast | None:
        self.forecast, self.ready = self._steps.get(int(record[EPOCH]), (self.forecast, self.ready))
        return self.forecast


def record_forecasts(run: SearchRun, calibration: Calibration, forecaster: str, rule: OnsetRule,
                     terminal_acc: float, options: Mapping[str, Any]) -> tuple[dict[int, tuple], Any]:
    """What ``forecaster`` says at each of the run's evaluations, and its settings."""
    f = make_forecaster(forecaster, calibration, run.group, run.budget, strict=rule.strict,
                        terminal_acc=terminal_acc, lenient=True, **options)
    return {int(r[EPOCH]): (f.observe(r), bool(getattr(f, "ready", True))) for r in run.records}, \
        getattr(f, "settings", None)


# -- the stoppers, as the simulation drives them --------------------------------------------------
class _Baseline:
    """``none``: no early stop. A run reports its onset, or ``2 x budget`` once it has run its budget
    without one (what ncstudy's trainable reports); a run stopped early reports nothing."""

    def __init__(self) -> None:
        self.onsets: dict[str, float] = {}

    def observe(self, run: SearchRun, record: Mapping[str, Any]) -> str | None:
        return None

    def end(self, run: SearchRun, reason: str, epoch: int) -> None:
        if reason == ONSET_STOP:
            self.onsets[run.run_id] = float(epoch)
        elif reason == "budget" and epoch >= run.budget:
            self.onsets[run.run_id] = 2.0 * run.budget

    def reported(self, run: SearchRun) -> float | None:
        return self.onsets.get(run.run_id)


class _Stopper(_Baseline):
    """``capping``, ``fn_star``, ``search``: a :class:`ForecastStopper` over played-back forecasts."""

    def __init__(self, policy: str, mode: str, forecaster: str, streams: Mapping[str, tuple[dict, Any]],
                 rule: OnsetRule, terminal_acc: float, options: Mapping[str, Any]) -> None:
        super().__init__()
        self.stopper = ForecastStopper(policy, forecaster, Calibration(), rule, terminal_acc, learn=False,
                                       forecaster_options=options, mode=mode,
                                       make=lambda m: RecordedForecaster(*streams.get(m.trial_id, ({}, None))))

    def observe(self, run: SearchRun, record: Mapping[str, Any]) -> str | None:
        d = self.stopper.observe(run.run_id, record, run.group, run.budget)
        return d.reason if d.stop else None

    def end(self, run: SearchRun, reason: str, epoch: int) -> None:
        self.stopper.monitors[run.run_id].complete(reason)  # (no archive: nothing is saved here)

    def reported(self, run: SearchRun) -> float | None:
        m = self.stopper.monitors.get(run.run_id)
        return None if m is None else m.objective()


class _Asha(_Baseline):
    """Ray Tune's ``AsyncHyperBandScheduler`` bracket (one bracket, ``stop_last_trials``) on NC1, min."""

    def __init__(self, grace: float, reduction: float, max_t: float) -> None:
        super().__init__()
        self.rf = reduction
        n = int(np.log(max_t / grace) / np.log(reduction) + 1)
        self.rungs = [(grace * reduction ** k, {}) for k in reversed(range(n))]

    def observe(self, run: SearchRun, record: Mapping[str, Any]) -> str | None:
        it = float(record[EPOCH])
        rew = -float(record[NC1]) if finite(record.get(NC1)) else math.nan  # mode min
        for milestone, recorded in self.rungs:
            if it < milestone or run.run_id in recorded:
                continue
            values = [v for v in recorded.values() if not math.isnan(v)]
            cutoff = float(np.percentile(values, (1 - 1 / self.rf) * 100)) if values else None
            recorded[run.run_id] = rew
            return "asha" if cutoff is not None and rew < cutoff else None
        return None


class _Median(_Baseline):
    """Optuna's ``MedianPruner`` (percentile 50, ``n_startup_trials`` 5, no warm-up) on NC1, minimize;
    a run reports NC1 where it is defined."""

    def __init__(self, startup: int = MEDIAN_STARTUP) -> None:
        super().__init__()
        self.startup = startup
        self.values: dict[str, dict[int, float]] = {}
        self.completed: list[dict[int, float]] = []

    def observe(self, run: SearchRun, record: Mapping[str, Any]) -> str | None:
        vals = self.values.setdefault(run.run_id, {})
        if not finite(record.get(NC1)):
            return None
        step = int(record[EPOCH])
        vals[step] = float(record[NC1])
        if len(self.completed) < self.startup:
            return None
        at = [c[step] for c in self.completed if step in c]
        if not at:
            return None
        return "median" if min(vals.values()) > float(np.percentile(at, 50)) else None

    def end(self, run: SearchRun, reason: str, epoch: int) -> None:
        super().end(run, reason, epoch)
        if reason in (ONSET_STOP, "budget"):  # a COMPLETE trial (pruned ones are not)
            self.completed.append(self.values.get(run.run_id, {}))


# -- the simulation --------------------------------------------------------------------------------
def _search_once(runs: Sequence[SearchRun], order: Sequence[int], concurrent: int,
                 policy: _Baseline) -> tuple[int, dict[str, int], str | None]:
    """One replayed search: epochs used, runs per end reason, the run it answers with."""
    heap: list[tuple[float, int, int, int]] = []  # (time, sequence, run, record index)
    queue, seq, used = list(order), 0, 0
    reasons: dict[str, int] = {}
    ended: list[SearchRun] = []

    def start(t0: float) -> None:
        nonlocal seq
        if queue:
            i = queue.pop(0)
            heapq.heappush(heap, (t0 + float(runs[i].records[0][EPOCH]), seq, i, 0))
            seq += 1

    for _ in range(concurrent):
        start(0.0)
    while heap:
        now, _, i, k = heapq.heappop(heap)
        run = runs[i]
        rec = run.records[k]
        epoch = int(rec[EPOCH])
        reason = policy.observe(run, rec)
        if run.t_nc is not None and epoch >= run.t_nc:
            reason = ONSET_STOP  # the onset was observed, whatever the stopper says
        elif reason is None and k == len(run.records) - 1:
            reason = "budget"
        if reason is None:
            heapq.heappush(heap, (now - epoch + float(run.records[k + 1][EPOCH]), seq, i, k + 1))
            seq += 1
            continue
        policy.end(run, reason, epoch)
        used += epoch
        reasons[reason] = reasons.get(reason, 0) + 1
        ended.append(run)
        start(now)
    values = [(v, n, r.run_id) for n, r in enumerate(ended)
              if (v := policy.reported(r)) is not None and math.isfinite(v)]
    return used, reasons, (min(values)[2] if values else None)


def prepare(trajectories: Sequence[Run], budget: int | None = None,
            rule: OnsetRule = OnsetRule()) -> list[SearchRun]:
    """The benchmark's runs: each trajectory up to its onset (or its budget)."""
    budgets = infer_budgets(trajectories, budget, rule)
    out = []
    for t in trajectories:
        t_nc = onset_of(t.records, rule, relaxed_fallback=False).t_strict
        b = budgets[t.run_id]
        end = t_nc if t_nc is not None else b
        recs = tuple(r for r in t.records if int(r[EPOCH]) <= end)
        if recs:
            out.append(SearchRun(t.run_id, t.group, b, t_nc, recs))
    return out


def replay_search(trajectories: Sequence[Run], stoppers: Sequence[str] = SEARCH_STOPPERS, *,
                  concurrent: int = 4, repeats: int = 200, seed: int = 0, forecaster: str = DEFAULT_FORECASTER,
                  calibration: str = "leave-one-out", prior: Calibration | None = None,
                  priors: Mapping[str, Prior] | None = None, min_observations: int = 3,
                  rule: OnsetRule = OnsetRule(), budget: int | None = None, terminal_acc: float = TERMINAL_ACC,
                  forecaster_options: Mapping[str, Any] | None = None,
                  holdout_by: str | None = None) -> list[SearchSummary]:
    """Replay ``repeats`` searches over ``trajectories`` with each of ``stoppers`` (module docs)."""
    unknown = [s for s in stoppers if s not in SEARCH_STOPPERS]
    if unknown:
        raise ValueError(f"unknown search stopper(s) {', '.join(unknown)}; choose from {', '.join(SEARCH_STOPPERS)}")
    if concurrent < 1 or repeats < 1:
        raise ValueError("concurrent and repeats must be >= 1")
    runs = prepare(trajectories, budget, rule)
    if not runs:
        raise ValueError("no run to search over")
    options = dict(forecaster_options or {})
    by_id = {r.run_id: r for r in runs}
    budgets = {r.run_id: r.budget for r in runs}
    streams: dict[str, dict[str, tuple[dict, Any]]] = {}
    wanted = [forecaster] * ("search" in stoppers) + ["fn_star"] * ("fn_star" in stoppers)
    trajs = [t for t in trajectories if t.run_id in by_id]
    for name in dict.fromkeys(wanted):
        streams[name] = {t.run_id: record_forecasts(by_id[t.run_id], cal, name, rule, terminal_acc, options)
                         for t, cal in held_out_calibrations(trajs, budgets, calibration, prior, priors,
                                                             min_observations, rule, terminal_acc, holdout_by,
                                                             needs_prior=name != "nc1")}
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(runs)) for _ in range(repeats)]
    collapsing = [r.t_nc for r in runs if r.t_nc is not None]
    best = min(collapsing) if collapsing else None
    baseline = sum(r.baseline for r in runs)
    max_t = max(r.budget for r in runs)
    step = _evaluation_step(runs)
    out = []
    for name in stoppers:
        used, found, reasons = [], 0, {}
        for order in orders:
            policy = _policy(name, forecaster, streams, rule, terminal_acc, options, step, max_t)
            u, rs, answer = _search_once(runs, order, concurrent, policy)
            used.append(u)
            found += best is not None and answer is not None and by_id[answer].t_nc == best
            for k, v in rs.items():
                reasons[k] = reasons.get(k, 0) + v
        mean = float(np.mean(used))
        out.append(SearchSummary(name, len(runs), concurrent, repeats, best, baseline, mean,
                                 baseline / mean if mean else math.nan,
                                 None if best is None else found / repeats,
                                 {k: v / repeats for k, v in sorted(reasons.items())}))
    return out


def _evaluation_step(runs: Sequence[SearchRun]) -> float:
    """The most common spacing of evaluations (ASHA's grace period is counted in evaluations)."""
    gaps = [int(b[EPOCH]) - int(a[EPOCH]) for r in runs for a, b in zip(r.records, r.records[1:])]
    if not gaps:
        return 1.0
    vals, counts = np.unique(gaps, return_counts=True)
    return float(vals[int(np.argmax(counts))])


def _policy(name: str, forecaster: str, streams: Mapping[str, Mapping[str, tuple[dict, Any]]], rule: OnsetRule,
            terminal_acc: float, options: Mapping[str, Any], step: float, max_t: float) -> _Baseline:
    if name == "none":
        return _Baseline()
    if name == "capping":
        return _Stopper("stop_at_onset", "search", forecaster, {}, rule, terminal_acc, options)
    if name == "asha":
        return _Asha(ASHA_GRACE_EVALUATIONS * step, ASHA_REDUCTION, max_t)
    if name == "median":
        return _Median()
    if name == "fn_star":
        return _Stopper("stop_at_forecast", "sweep", "fn_star", streams["fn_star"], rule, terminal_acc, options)
    return _Stopper("stop_at_forecast", "search", forecaster, streams[forecaster], rule, terminal_acc, options)


def format_search(summaries: Sequence[SearchSummary]) -> str:
    """One row per stopper: speedup, found_best, epochs, how runs ended."""
    from .replay import _table

    reasons = sorted({k for s in summaries for k in s.stops})
    head = ["stopper", "speedup", "found_best", "epochs", *[f"n_{k}" for k in reasons]]
    rows = [[s.stopper, f"{s.speedup:.2f}x", "-" if s.found_best is None else f"{s.found_best:.1%}",
             f"{s.epochs_mean:.0f}", *[f"{s.stops.get(k, 0.0):.1f}" for k in reasons]] for s in summaries]
    return _table(head, rows)
