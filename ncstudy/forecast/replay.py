"""Replay the stopper epoch by epoch over logged trajectories and score its forecasts.

For each run, a :class:`~ncstudy.forecast.stopper.TrialMonitor` with a *fixed* calibration is
fed the run's evaluations in order (it keeps observing after it would have stopped, so that the
first trusted forecast is known under every policy). Calibration modes:

* ``prior`` -- the given priors only (no observations);
* ``leave-one-out`` -- the observations of the *other* runs of the same group (plus the priors,
  if any, as fallback below ``min_observations``).

Scores (per run and summarised): crossing epoch, first trusted forecast (onset, interval, epoch
made at), actual T_NC (strict, relaxed where the run never reaches strict), error, lead, the epoch
the policy stops at, epochs saved against stop-at-onset and against the full budget.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from ncstudy.onset import OnsetRule

from .calibration import Calibration, Prior, observation_from_records
from .core import first_crossing
from .stopper import POLICIES, TrialMonitor
from .trajectories import Trajectory

CALIBRATION_MODES = ("prior", "leave-one-out")


# ----------------------------------------------------------------------------------------------
@dataclass
class RunReplay:
    run_id: str
    group: str
    t_nc: int | None  # strict, or relaxed when the run never reaches strict
    threshold: str | None  # "strict" / "relaxed" / None
    crossing_epoch: int | None
    forecast_onset: float | None  # first trusted forecast
    forecast_low: float | None
    forecast_high: float | None
    made_at: int | None
    error: float | None  # forecast - t_nc
    lead: float | None  # t_nc - made_at (negative: forecast made after onset)
    stop_epoch: int
    stop_reason: str
    onset_stop_epoch: int  # where stop_at_onset would stop (strict onset, else budget)
    budget: int
    epochs_saved: int  # budget - stop_epoch
    epochs_saved_vs_onset: int  # onset_stop_epoch - stop_epoch
    calibration: str


@dataclass
class ReplaySummary:
    forecaster: str
    policy: str
    calibration: str
    n_runs: int
    n_collapsing: int  # strict or relaxed onset
    n_forecast: int  # collapsing runs with a trusted forecast
    n_before_onset: int  # ... made before the onset
    coverage: float | None  # n_before_onset / n_collapsing
    mean_lead: float | None
    sd_lead: float | None
    mae: float | None
    median_abs_error: float | None
    mean_error: float | None  # bias (forecast - actual)
    saved_vs_onset: float | None  # 1 - sum(stop) / sum(stop-at-onset stop)
    saved_vs_budget: float | None  # 1 - sum(stop) / sum(budget)
    n_never: int  # runs with no onset at all (neither strict nor relaxed)
    forecasts_on_never: int
    n_no_strict: int  # runs that never reach the strict threshold
    forecasts_on_no_strict: int
    # the same scores over the runs with a strict onset only
    n_strict: int = 0
    n_forecast_strict: int = 0
    n_before_onset_strict: int = 0
    coverage_strict: float | None = None
    mean_lead_strict: float | None = None
    mae_strict: float | None = None


@dataclass
class ReplayResult:
    runs: list[RunReplay]
    summary: ReplaySummary

    def to_dict(self) -> dict[str, Any]:
        return {"summary": _clean(asdict(self.summary)), "runs": [_clean(asdict(r)) for r in self.runs]}


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def replay_run(traj: Trajectory, calibration: Calibration, forecaster: str = "fn_star",
               policy: str = "stop_at_forecast", rule: OnsetRule = OnsetRule(), budget: int | None = None,
               terminal_acc: float = 0.99, forecaster_options: Mapping[str, Any] | None = None) -> RunReplay:
    mon = TrialMonitor(traj.run_id, traj.group, policy, calibration, forecaster, rule, terminal_acc,
                       forecaster_options)
    if not traj.records:
        raise ValueError(f"{traj.run_id}: no evaluations")
    for r in traj.records:
        mon.observe(r)
    last = mon.last_epoch
    run_budget = max(last, int(budget or 0))
    onset = mon.onset(relaxed_fallback=True)
    t = onset.t_nc
    fc = mon.acted
    onset_stop = onset.t_strict if onset.t_strict is not None else run_budget
    stop = mon.stopped_at if mon.stopped_at is not None else run_budget
    reason = mon.stop_reason or "budget"
    err = lead = None
    if fc is not None and t is not None:
        err, lead = float(fc.onset - t), float(t - fc.made_at)
    return RunReplay(
        traj.run_id, traj.group, t, onset.threshold, None if fc is None else fc.crossing_epoch,
        None if fc is None else float(fc.onset), None if fc is None else float(fc.low),
        None if fc is None else float(fc.high), None if fc is None else fc.made_at, err, lead,
        int(stop), reason, int(onset_stop), int(run_budget), int(run_budget - stop), int(onset_stop - stop),
        "" if fc is None else fc.calibration)


def summarize(runs: Sequence[RunReplay], forecaster: str, policy: str, calibration: str) -> ReplaySummary:
    coll = [r for r in runs if r.t_nc is not None]
    fc = [r for r in coll if r.forecast_onset is not None]
    before = [r for r in fc if r.made_at < r.t_nc]
    leads = [r.lead for r in fc]
    errs = [r.error for r in fc]
    never = [r for r in runs if r.t_nc is None]
    no_strict = [r for r in runs if r.threshold != "strict"]
    s_stop = sum(r.stop_epoch for r in runs)

    def mean(xs):
        return statistics.fmean(xs) if xs else None

    strict = [r for r in coll if r.threshold == "strict"]
    fc_s = [r for r in strict if r.forecast_onset is not None]
    before_s = [r for r in fc_s if r.made_at < r.t_nc]
    return ReplaySummary(
        forecaster, policy, calibration, len(runs), len(coll), len(fc), len(before),
        len(before) / len(coll) if coll else None, mean(leads),
        statistics.stdev(leads) if len(leads) > 1 else None, mean([abs(e) for e in errs]),
        statistics.median([abs(e) for e in errs]) if errs else None, mean(errs),
        1 - s_stop / sum(r.onset_stop_epoch for r in runs) if runs else None,
        1 - s_stop / sum(r.budget for r in runs) if runs else None,
        len(never), sum(r.forecast_onset is not None for r in never),
        len(no_strict), sum(r.forecast_onset is not None for r in no_strict),
        len(strict), len(fc_s), len(before_s), len(before_s) / len(strict) if strict else None,
        mean([r.lead for r in fc_s]), mean([abs(r.error) for r in fc_s]))


def replay(trajectories: Sequence[Trajectory], forecaster: str = "fn_star", calibration: str = "leave-one-out",
           policy: str = "stop_at_forecast", priors: Mapping[str, Prior] | None = None, min_observations: int = 3,
           rule: OnsetRule = OnsetRule(), budget: int | None = None, terminal_acc: float = 0.99,
           use_relaxed: bool = False, forecaster_options: Mapping[str, Any] | None = None) -> ReplayResult:
    """Replay the stopper over ``trajectories`` (see module docs)."""
    if calibration not in CALIBRATION_MODES:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATION_MODES)}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
    if calibration == "prior" and not priors and forecaster != "nc1":
        raise ValueError("prior calibration needs priors (e.g. --prior paper or a calibration JSON)")
    ids = [t.run_id for t in trajectories]
    if len(set(ids)) != len(ids):
        raise ValueError("run ids must be unique")
    base = Calibration(priors, min_observations=min_observations, use_relaxed=use_relaxed)
    if calibration == "leave-one-out":
        for t in trajectories:
            obs = observation_from_records(t.run_id, t.records, rule, terminal_acc)
            if obs is not None:
                base.add(t.group, obs)
    runs = []
    for t in trajectories:
        cal = base.without(t.run_id) if calibration == "leave-one-out" else base
        runs.append(replay_run(t, cal, forecaster, policy, rule, budget, terminal_acc, forecaster_options))
    return ReplayResult(runs, summarize(runs, forecaster, policy, calibration))


# ----------------------------------------------------------------------------------------------
def _f(x: Any, fmt: str = "{:.1f}") -> str:
    if x is None:
        return "-"
    return fmt.format(x)


def format_runs(result: ReplayResult) -> str:
    head = ["run", "group", "T_NC", "thr", "cross", "forecast", "made_at", "error", "lead", "stop", "reason",
            "saved"]
    rows = [[r.run_id, r.group, _f(r.t_nc, "{}"), (r.threshold or "-")[:3], _f(r.crossing_epoch, "{}"),
             _f(r.forecast_onset), _f(r.made_at, "{}"), _f(r.error, "{:+.1f}"), _f(r.lead, "{:+.0f}"),
             str(r.stop_epoch), r.stop_reason, str(r.epochs_saved)] for r in result.runs]
    return _table(head, rows)


SUMMARY_HEAD = ["forecaster", "policy", "calibration", "runs", "coverage", "mean lead", "MAE",
                "coverage (strict)", "MAE (strict)", "saved vs onset", "saved vs budget", "fc on never",
                "fc on no-strict"]


def summary_row(s: ReplaySummary) -> list[str]:
    pct = "{:.0%}"
    lead = "-" if s.mean_lead is None else (
        f"{s.mean_lead:+.1f}" + ("" if s.sd_lead is None else f" ± {s.sd_lead:.1f}"))
    return [s.forecaster, s.policy, s.calibration, str(s.n_runs),
            "-" if s.coverage is None else f"{s.n_before_onset}/{s.n_collapsing} ({s.coverage:.0%})", lead,
            _f(s.mae) + f" (n={s.n_forecast})",
            "-" if s.coverage_strict is None else f"{s.n_before_onset_strict}/{s.n_strict} ({s.coverage_strict:.0%})",
            _f(s.mae_strict) + f" (n={s.n_forecast_strict})", _f(s.saved_vs_onset, pct), _f(s.saved_vs_budget, pct),
            f"{s.forecasts_on_never}/{s.n_never}", f"{s.forecasts_on_no_strict}/{s.n_no_strict}"]


def format_summaries(summaries: Sequence[ReplaySummary], markdown: bool = False) -> str:
    rows = [summary_row(s) for s in summaries]
    if markdown:
        lines = ["| " + " | ".join(SUMMARY_HEAD) + " |", "|" + "---|" * len(SUMMARY_HEAD)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    return _table(SUMMARY_HEAD, rows)


def _table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % x for x in w)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * x for x in w))] + [fmt.format(*r) for r in rows])


def calibration_from_trajectories(trajectories: Sequence[Trajectory], min_observations: int = 3,
                                  rule: OnsetRule = OnsetRule(), terminal_acc: float = 0.99,
                                  use_relaxed: bool = False, priors: Mapping[str, Prior] | None = None) -> Calibration:
    """A calibration holding the observation of every trajectory that reached onset."""
    cal = Calibration(priors, min_observations=min_observations, use_relaxed=use_relaxed)
    for t in trajectories:
        obs = observation_from_records(t.run_id, t.records, rule, terminal_acc)
        if obs is not None:
            cal.add(t.group, obs)
    return cal


def priors_from_trajectories(trajectories: Sequence[Trajectory], margin: float = 0.0,
                             phases: Sequence[int] | None = (2,), confirm: int = 1,
                             rule: OnsetRule = OnsetRule(), terminal_acc: float = 0.99,
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
