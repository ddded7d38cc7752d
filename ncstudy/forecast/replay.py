"""Replay the stopper epoch by epoch over logged trajectories and score its decisions honestly.

For each run a :class:`~ncstudy.forecast.stopper.TrialMonitor` with a *fixed* calibration is fed
the run's evaluations in order; the first trusted decision is what the policy acts on. Calibration
modes:

* ``prior`` -- the prior calibration only (by default ncstudy's trajectory corpus);
* ``leave-one-out`` -- the prior plus every *other* replayed run;
* ``leave-one-group-out`` -- the prior plus the replayed runs outside the run's holdout group
  (``holdout_by``: a metadata key such as the corpus's ``config``, a configuration without its seed;
  a flattened-config key such as ``model.width`` names its attribute, ``width``: :meth:`Run.attr`).

**Scoring** (every figure against the *strict* onset; a run that never reaches NC1 < 0.01 within its
budget is *censored*):

* a collapsing run is stopped by a forecast before its onset (reporting the forecast), runs to its
  onset (reporting the observed T_NC), or is wrongly stopped as ``no onset`` (a failure);
* on a censored run a collapse forecast acted on is a **false stop** (a failure, never "saved"); a
  ``no onset`` stop is correct;
* epochs saved count correct decisions only, against stop-at-onset-or-budget (onset for collapsing
  runs, the budget for censored ones); the study-level figure is the total over all runs;
* the reported T_NC (forecast or observed) is compared with the true one: MAE, interval coverage,
  and Spearman rank correlation (over collapsing runs, and over all runs with censored runs ranked
  last);
* a forecast whose onset is not after the epoch it was made at is invalid: counted, never acted on.

Budgets: a run's metadata ``budget``, else ``budget=``, else inferred per group from the runs that
never collapsed (they ran to their budget: the most common last epoch), else the group's last
epoch. Runs whose log stops at onset say nothing about their budget.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from scipy import stats

from ncstudy.onset import TERMINAL_ACC, OnsetRule, onset_of
from ncstudy.runs import Run
from ncstudy.text import table

from .calibration import Calibration, Prior, RunRecord, observation_from_records
from .protocol import Forecast, first_crossing
from .settings import DEFAULT_FORECASTER, POLICIES
from .stopper import FORECAST_STOP, NO_ONSET_STOP, ONSET_STOP, TrialMonitor

CALIBRATION_MODES = ("prior", "leave-one-out", "leave-one-group-out")


# ----------------------------------------------------------------------------------------------
@dataclass
class RunReplay:
    """One run's replay; every field can be checked by hand against its log."""

    run_id: str
    group: str
    budget: int
    t_nc: int | None  # strict onset (None: censored within the budget)
    decision: str | None  # the first trusted decision: "forecast", "no_onset_forecast" or None
    decided_at: int | None  # epoch of that decision
    forecast_onset: float | None  # the acted-on forecast (decision "forecast")
    forecast_low: float | None
    forecast_high: float | None
    p_onset: float | None  # its P(onset <= budget)
    stop_epoch: int  # where the policy stops the run (epochs run)
    stop_reason: str  # forecast | no_onset_forecast | onset | budget
    reported_t_nc: float | None  # forecast (forecast stop) or observed (onset); None = censored
    error: float | None  # reported - t_nc (collapsing runs that report one)
    lead: float | None  # t_nc - decided_at (forecast stops on collapsing runs)
    in_interval: bool | None  # forecast_low <= t_nc <= forecast_high (forecast stops, collapsing runs)
    baseline_epoch: int  # stop-at-onset-or-budget
    epochs_saved: int  # baseline - stop, counted only for correct decisions
    false_stop: bool  # a collapse forecast acted on in a censored run
    false_no_onset: bool  # a collapsing run stopped as "no onset"
    invalid_forecasts: int
    crossing_epoch: int | None
    calibration: str


@dataclass
class ReplaySummary:
    forecaster: str
    policy: str
    calibration: str
    n_runs: int
    n_collapsing: int
    n_censored: int
    # collapsing runs
    n_forecast_stops: int  # stopped by a forecast before their onset
    forecast_stop_rate: float | None
    n_forecast_stops_held: int  # ... whose stated interval holds the true onset
    forecast_held_rate: float | None  # n_forecast_stops_held / n_collapsing
    n_ran_to_onset: int
    n_false_no_onset: int
    false_no_onset_rate: float | None
    mae: float | None  # |reported - true| over collapsing runs that report a T_NC (forecast or observed)
    mae_forecasts: float | None  # ... over forecast stops only
    bias: float | None  # mean (forecast - true) over forecast stops
    mean_lead: float | None
    interval_coverage: float | None  # forecast stops whose interval holds the true onset
    # censored runs
    n_false_stops: int
    n_no_onset_stops: int
    censored_saved: float | None  # epochs saved by no-onset stops / censored runs' budgets
    # study level
    epochs_run: int
    epochs_baseline: int  # stop-at-onset-or-budget
    saved: float | None  # correct decisions' epochs saved / epochs_baseline
    run_fraction: float | None  # epochs_run / epochs_baseline (wrong stops included)
    spearman: float | None  # reported vs true T_NC, collapsing runs
    spearman_all: float | None  # all runs, censored ranked last
    invalid_forecasts: int
    evaluations: int  # finite intervals stated at evaluations of collapsing runs before onset
    eval_interval_coverage: float | None  # of those intervals, the share that holds the true onset
    evaluations_if_onset: int  # conditional intervals ("when, if it collapses") stated before onset
    eval_coverage_if_onset: float | None  # of those, the share that holds the true onset
    p_onset_brier: float | None  # mean (p_onset - collapsed)^2 over every trusted evaluation
    p_onset_brier_base: float | None  # ... of the constant forecast at those evaluations' outcome rate
    p_onset_evaluations: int


@dataclass
class ReplayResult:
    runs: list[RunReplay]
    summary: ReplaySummary
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": _clean(asdict(self.summary)), "runs": [_clean(asdict(r)) for r in self.runs]}


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def infer_budgets(trajectories: Sequence[Run], budget: int | None = None,
                  rule: OnsetRule = OnsetRule()) -> dict[str, int]:
    """Each run's budget (see the module docs): its metadata's, else ``budget``; else, for a run
    that never collapsed, its own last epoch (it ran to its end); for one whose log stops at its
    onset, the group's most common end among the runs that never collapsed (ties: the latest),
    or the group's last epoch when all of them collapsed."""
    last = {t.run_id: int(t.records[-1]["epoch"]) for t in trajectories if t.records}
    collapsed = {t.run_id for t in trajectories
                 if t.records and onset_of(t.records, rule, relaxed_fallback=False).t_strict is not None}
    ends: dict[str, list[int]] = {}
    for t in trajectories:
        if t.records and t.run_id not in collapsed:
            ends.setdefault(t.group, []).append(last[t.run_id])
    by_group: dict[str, int] = {}
    for g in {t.group for t in trajectories}:
        if ends.get(g):
            counts = Counter(ends[g])
            top = max(counts.values())
            by_group[g] = max(e for e, c in counts.items() if c == top)
        else:
            by_group[g] = max(last[t.run_id] for t in trajectories if t.group == g and t.run_id in last)
    out = {}
    for t in trajectories:
        if t.budget is not None:
            b = t.budget
        elif budget is not None:
            b = budget
        else:
            b = by_group[t.group] if t.run_id in collapsed else last.get(t.run_id, by_group[t.group])
        out[t.run_id] = max(int(b), last.get(t.run_id, 0))
    return out


@dataclass
class EvalLog:
    """Per-evaluation diagnostics of a replay, pooled over its runs: does each stated interval hold
    the true onset (the published one, and the one given onset within the budget), and how good is
    ``p_onset`` as a probability (Brier score against the run's outcome)."""

    covered: list[bool] = field(default_factory=list)
    covered_if_onset: list[bool] = field(default_factory=list)
    brier: list[float] = field(default_factory=list)
    outcomes: list[float] = field(default_factory=list)

    def add(self, fc: Forecast, t_nc: int | None, budget: int) -> None:
        if not fc.trusted:
            return
        if fc.p_onset is not None:
            y = 1.0 if t_nc is not None and t_nc <= budget else 0.0
            self.brier.append((fc.p_onset - y) ** 2)
            self.outcomes.append(y)
        if t_nc is None or fc.made_at >= t_nc:
            return
        if math.isfinite(fc.high):
            self.covered.append(fc.low <= t_nc <= fc.high)
        lo, hi = fc.details.get("low_if_onset"), fc.details.get("high_if_onset")
        if lo is not None and hi is not None and math.isfinite(hi):
            self.covered_if_onset.append(lo <= t_nc <= hi)


def replay_run(traj: Run, calibration: Calibration, forecaster: str = DEFAULT_FORECASTER,
               policy: str = "stop_at_forecast", rule: OnsetRule = OnsetRule(), budget: int | None = None,
               terminal_acc: float = TERMINAL_ACC, forecaster_options: Mapping[str, Any] | None = None,
               log: EvalLog | None = None) -> RunReplay:
    if not traj.records:
        raise ValueError(f"{traj.run_id}: no evaluations")
    run_budget = int(budget if budget is not None else (traj.budget or traj.records[-1]["epoch"]))
    mon = TrialMonitor(traj.run_id, traj.group, policy, calibration, forecaster, rule, terminal_acc,
                       forecaster_options, run_budget)
    t_nc = onset_of(traj.records, rule, relaxed_fallback=False).t_strict
    for r in traj.records:
        d = mon.observe(r)
        fc = d.forecast
        if log is not None and fc is not None and fc.made_at == int(r["epoch"]):
            log.add(fc, t_nc, run_budget)
        if mon.stop_reason is not None and policy != "record":
            break
    fc = mon.acted
    decision = mon.decision
    baseline = t_nc if t_nc is not None else run_budget
    if mon.stop_reason is not None:
        stop, reason = int(mon.stopped_at), mon.stop_reason
    elif t_nc is not None:
        stop, reason = t_nc, ONSET_STOP
    else:
        stop, reason = run_budget, "budget"
    reported = (float(fc.onset) if reason == FORECAST_STOP else float(t_nc) if reason == ONSET_STOP else None)
    error = lead = in_interval = None
    if t_nc is not None and reported is not None:
        error = reported - t_nc
    if t_nc is not None and reason == FORECAST_STOP:
        lead, in_interval = float(t_nc - mon.stopped_at), bool(fc.low <= t_nc <= fc.high)
    correct = (reason == FORECAST_STOP and t_nc is not None) or (reason == NO_ONSET_STOP and t_nc is None)
    return RunReplay(
        traj.run_id, traj.group, run_budget, t_nc, decision, None if fc is None else fc.made_at,
        None if fc is None else float(fc.onset), None if fc is None else float(fc.low),
        None if fc is None else float(fc.high), None if fc is None else fc.p_onset, stop, reason, reported, error,
        lead, in_interval, int(baseline), int(baseline - stop) if correct else 0,
        reason == FORECAST_STOP and t_nc is None, reason == NO_ONSET_STOP and t_nc is not None,
        len(mon.invalid), None if fc is None else fc.crossing_epoch, "" if fc is None else fc.calibration)


def _mean(xs: Sequence[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    r = stats.spearmanr(x, y).statistic
    return None if not math.isfinite(r) else float(r)


def summarize(runs: Sequence[RunReplay], forecaster: str, policy: str, calibration: str,
              log: EvalLog | None = None) -> ReplaySummary:
    log = log or EvalLog()
    coll = [r for r in runs if r.t_nc is not None]
    cens = [r for r in runs if r.t_nc is None]
    fstops = [r for r in coll if r.stop_reason == FORECAST_STOP]
    reported = [r for r in coll if r.reported_t_nc is not None]
    held = sum(bool(r.in_interval) for r in fstops)
    base = sum(r.baseline_epoch for r in runs)
    cens_budget = sum(r.budget for r in cens)
    inf = math.inf
    return ReplaySummary(
        forecaster, policy, calibration, len(runs), len(coll), len(cens),
        len(fstops), len(fstops) / len(coll) if coll else None,
        held, held / len(coll) if coll else None,
        sum(r.stop_reason == ONSET_STOP for r in coll), sum(r.false_no_onset for r in coll),
        sum(r.false_no_onset for r in coll) / len(coll) if coll else None,
        _mean([abs(r.error) for r in reported]), _mean([abs(r.error) for r in fstops]),
        _mean([r.error for r in fstops]), _mean([r.lead for r in fstops]),
        _mean([1.0 if r.in_interval else 0.0 for r in fstops]),
        sum(r.false_stop for r in cens), sum(r.stop_reason == NO_ONSET_STOP for r in cens),
        sum(r.epochs_saved for r in cens) / cens_budget if cens_budget else None,
        sum(r.stop_epoch for r in runs), base, sum(r.epochs_saved for r in runs) / base if base else None,
        sum(r.stop_epoch for r in runs) / base if base else None,
        _spearman([r.reported_t_nc for r in reported], [r.t_nc for r in reported]),
        _spearman([r.reported_t_nc if r.reported_t_nc is not None else inf for r in runs],
                  [r.t_nc if r.t_nc is not None else inf for r in runs]),
        sum(r.invalid_forecasts for r in runs), len(log.covered), _mean([1.0 if c else 0.0 for c in log.covered]),
        len(log.covered_if_onset), _mean([1.0 if c else 0.0 for c in log.covered_if_onset]),
        _mean(log.brier), _base_brier(log.outcomes), len(log.brier))


def _base_brier(outcomes: Sequence[float]) -> float | None:
    m = _mean(outcomes)
    return None if m is None else m * (1 - m)


def cluster_of(t: Run) -> str:
    """The configuration a logged run is a seed of (metadata ``config``, as the corpus manifest
    has it): the pool holds it out with its twins when it calibrates."""
    c = t.attrs.get("config")
    return str(c) if c not in (None, "") and not (isinstance(c, float) and math.isnan(c)) else ""


def held_out_calibrations(trajectories: Sequence[Run], budgets: Mapping[str, int],
                          calibration: str = "leave-one-out", prior: Calibration | None = None,
                          priors: Mapping[str, Prior] | None = None, min_observations: int = 3,
                          rule: OnsetRule = OnsetRule(), terminal_acc: float = TERMINAL_ACC,
                          holdout_by: str | None = None,
                          use_relaxed: bool = False,
                          needs_prior: bool = True) -> Iterator[tuple[Run, Calibration]]:
    """Each trajectory with the calibration it is replayed with (the module docs' modes): the
    ``prior`` (plus ``priors``) and, under ``leave-one-out`` / ``leave-one-group-out``, every other
    replayed run outside the run's holdout unit -- never the run itself."""
    if calibration not in CALIBRATION_MODES:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATION_MODES)}")
    if calibration == "leave-one-group-out" and not holdout_by:
        raise ValueError("leave-one-group-out needs holdout_by (a metadata key, e.g. 'config')")
    ids = [t.run_id for t in trajectories]
    if len(set(ids)) != len(ids):
        raise ValueError("run ids must be unique")
    base = Calibration(min_observations=min_observations, use_relaxed=use_relaxed)
    if prior is not None:
        base = base.merged(prior)
        base.min_observations = min_observations
    for g, p in (priors or {}).items():
        base.set_prior(g, p)
    if calibration == "prior" and not base.priors and not base.n_runs() and needs_prior:
        raise ValueError("prior calibration needs a prior (a calibration with runs or priors)")
    if calibration != "prior":
        for t in trajectories:
            base.add_run(t.group, RunRecord.from_records(t.run_id, t.records, budgets[t.run_id], rule, terminal_acc,
                                                         cluster_of(t)))
    for t in trajectories:
        if calibration == "leave-one-out":
            yield t, base.without(t.run_id)
        elif calibration == "leave-one-group-out":
            key = t.attr(holdout_by)
            yield t, base.without_runs(u.run_id for u in trajectories if u.attr(holdout_by) == key)
        else:
            yield t, base


def replay(trajectories: Sequence[Run], forecaster: str = DEFAULT_FORECASTER,
           calibration: str = "leave-one-out", policy: str = "stop_at_forecast", prior: Calibration | None = None,
           min_observations: int = 3, rule: OnsetRule = OnsetRule(), budget: int | None = None,
           terminal_acc: float = TERMINAL_ACC, forecaster_options: Mapping[str, Any] | None = None,
           priors: Mapping[str, Prior] | None = None, holdout_by: str | None = None,
           use_relaxed: bool = False) -> ReplayResult:
    """Replay the stopper over ``trajectories`` (see the module docs). ``prior``: the calibration
    every run starts from (pooled runs, priors); ``priors``: per-group priors added to it."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
    budgets = infer_budgets(trajectories, budget, rule)
    runs, log = [], EvalLog()
    for t, cal in held_out_calibrations(trajectories, budgets, calibration, prior, priors, min_observations, rule,
                                        terminal_acc, holdout_by, use_relaxed, needs_prior=forecaster != "nc1"):
        runs.append(replay_run(t, cal, forecaster, policy, rule, budgets[t.run_id], terminal_acc,
                               forecaster_options, log))
    options = {"forecaster": forecaster, "calibration": calibration, "policy": policy, "holdout_by": holdout_by,
               "budget": budget, "min_observations": min_observations, **dict(forecaster_options or {})}
    return ReplayResult(runs, summarize(runs, forecaster, policy, calibration, log), options)


# ----------------------------------------------------------------------------------------------
def format_runs(result: ReplayResult) -> str:
    """One row per run with every :class:`RunReplay` field (the JSON ``runs`` entries)."""
    head = list(RunReplay.__dataclass_fields__)
    return table(head, [[getattr(r, k) for k in head] for r in result.runs])


def format_summaries(summaries: Sequence[ReplaySummary], markdown: bool = False) -> str:
    """Every :class:`ReplaySummary` field (the JSON ``summary``), one row per field, one column per
    forecaster."""
    fields = list(ReplaySummary.__dataclass_fields__)
    head = ["field"] + [s.forecaster for s in summaries]
    rows = [[f] + [getattr(s, f) for s in summaries] for f in fields if f != "forecaster"]
    return table(head, rows, markdown)


def calibration_from_trajectories(trajectories: Sequence[Run], min_observations: int = 3,
                                  rule: OnsetRule = OnsetRule(), terminal_acc: float = TERMINAL_ACC,
                                  use_relaxed: bool = False, priors: Mapping[str, Prior] | None = None,
                                  budget: int | None = None, prior: Calibration | None = None) -> Calibration:
    """A calibration holding every trajectory as a pooled run (collapsed or censored, budgets as in
    :func:`infer_budgets`), on top of ``prior`` and ``priors``. What ``ncstudy replay
    --save-calibration`` writes and ``--prior FILE`` reads back."""
    cal = Calibration(priors, min_observations=min_observations, use_relaxed=use_relaxed)
    if prior is not None:
        cal = prior.merged(cal)
        cal.min_observations = min_observations
    budgets = infer_budgets(trajectories, budget, rule)
    for t in trajectories:
        cal.add_run(t.group, RunRecord.from_records(t.run_id, t.records, budgets[t.run_id], rule, terminal_acc,
                                                    cluster_of(t)))
        if use_relaxed:  # relaxed onsets only enter as observations (fn*, lead), not as pooled outcomes
            obs = observation_from_records(t.run_id, t.records, rule, terminal_acc)
            if obs is not None and obs.threshold != "strict":
                cal.add(t.group, obs)
    return cal


def priors_from_trajectories(trajectories: Sequence[Run], margin: float = 0.0,
                             phases: Sequence[int] | None = (2,), confirm: int = 1,
                             rule: OnsetRule = OnsetRule(), terminal_acc: float = TERMINAL_ACC,
                             source: str = "previous runs") -> dict[str, Prior]:
    """Per-group priors (fn* mean and SD, median lead and gap SD, loss-at-onset) from logged runs,
    e.g. a previous MLflow experiment's trials."""
    cal = calibration_from_trajectories(trajectories, 1, rule, terminal_acc)
    out = {}
    for g in cal.groups():
        obs = cal.observations(g)
        if not obs:
            continue
        est = cal.estimate(g, margin, phases, confirm)
        fns = [o.fn_star for o in obs]
        gaps = []
        for o in obs:
            c = first_crossing(o.points, est.threshold, phases, confirm)
            if c is not None and c[0] <= o.t_nc:
                gaps.append(o.t_nc - c[0])
        lv = cal.level(g, "train_loss")
        out[g] = Prior(est.fn_star, est.lead, statistics.stdev(fns) if len(fns) > 1 else None,
                       statistics.stdev(gaps) if len(gaps) > 1 else None,
                       {"train_loss": lv.value} if lv.value is not None else {},
                       f"{source} ({len(obs)} runs)")
    return out
