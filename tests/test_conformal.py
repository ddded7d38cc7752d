"""The conformal onset forecaster: state features, Kaplan-Meier, recalibrated coverage on data of
known law, decisions, and that no forecast lies in the past."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ncstudy.forecast import Calibration, replay, synthetic_trajectory
from ncstudy.forecast.analog import AnalogPool, PoolRun, conformal_quantile, isotonic
from ncstudy.forecast.calibration import RunRecord
from ncstudy.forecast.forecasters import ConformalOnset
from ncstudy.forecast.protocol import NO_ONSET, ONSET
from ncstudy.forecast.state import FEATURES, State, trajectory_states
from ncstudy.runs import Run


# -- state features --------------------------------------------------------------------------------
def test_state_features_of_an_exact_log_linear_run():
    # NC1 = 0.1 exp(-k (t - 200)) in phase 2, evaluations every 10 epochs, budget 600 (L = 400)
    k = math.log(10) / 150  # reaches 0.01 at 350
    recs = [{"epoch": e, "phase": 1, "train": 1.0, "nc1": 0.3, "feat_norm": 20.0} for e in range(10, 201, 10)]
    recs += [{"epoch": e, "phase": 2, "train": 1.0, "nc1": 0.1 * math.exp(-k * (e - 200)), "feat_norm": 1.5,
              "train_loss": 0.01 * math.exp(-2 * k * (e - 200))} for e in range(210, 341, 10)]
    states = trajectory_states(recs, budget=600, fn_star=1.5)
    assert [s.epoch for s in states] == list(range(210, 341, 10))  # phase 1 is not the collapse phase
    s = states[-1]  # epoch 340
    f = s.features
    assert f["level"] == pytest.approx(math.log(0.1 * math.exp(-k * 140) / 0.01))
    assert f["rate"] == pytest.approx(k * 400) and f["rate_old"] == pytest.approx(k * 400)
    assert f["noise"] == pytest.approx(0.0, abs=1e-9) and f["progress"] == pytest.approx(140 / 400)
    assert f["fn"] == pytest.approx(0.0) and f["fn_rate"] == pytest.approx(0.0, abs=1e-12)
    assert f["loss_rate"] == pytest.approx(-2 * k * 400)
    assert math.isnan(f["grad_rate"]) and math.isnan(f["weight_rate"])  # not reported: unknown, not guessed
    assert s.remaining == 260
    # the first evaluations have too few points for rates
    assert math.isnan(states[0].features["rate"]) and not math.isnan(states[2].features["rate"])


def test_state_without_phase_column_starts_at_the_first_terminal_point():
    recs = [{"epoch": e, "train": 0.5 if e < 50 else 1.0, "nc1": 0.5 / e} for e in range(10, 101, 10)]
    states = trajectory_states(recs, budget=100)
    assert [s.epoch for s in states] == [50, 60, 70, 80, 90]  # from terminal on, before the budget
    assert states[0].features["progress"] == pytest.approx(1 / 51)


# -- isotonic calibration ---------------------------------------------------------------------------
def test_isotonic_pools_adjacent_violators_and_shrinks():
    x = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    y = np.array([0, 1, 0, 1, 1, 1])
    ux, rate = isotonic(x, y, prior=0.0)
    assert list(ux) == [0.0, 0.2, 0.5] and list(rate) == [0.0, 0.5, 1.0]  # (1, 0) pooled into one block
    ux, rate = isotonic(x, y)  # Laplace's rule: never 0 or 1
    assert rate[0] == pytest.approx(1 / 3) and rate[-1] == pytest.approx(4 / 5)
    assert np.all(np.diff(rate) >= 0)


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 20.0)  # n = 19: level 0.9 -> the ceil(0.9 * 20) = 18th smallest
    assert conformal_quantile(scores, 0.9) == 18.0 and conformal_quantile(scores, 0.5) == 10.0
    assert conformal_quantile(scores, 0.96) == math.inf  # ceil(19.2) = 20 > n: no finite bound
    assert conformal_quantile(scores, 0.1) == 2.0 and conformal_quantile(scores, 0.04) == -math.inf  # floor
    assert conformal_quantile(scores[:1], 0.5) == 1.0


# -- recalibrated coverage on data of known law ----------------------------------------------------
def _draw(rng: np.random.Generator, n: int, budget: float = 1000.0):
    """State feature x ~ U(0, 3); collapse before the budget with probability 1 - x/3; then
    rho = (T - t)/remaining ~ (0.1 + 0.8 V)(0.3 + 0.7 x/3), V ~ U(0, 1)."""
    x = rng.uniform(0, 3, n)
    collapsed = rng.uniform(0, 1, n) < 1 - x / 3
    rho = np.where(collapsed, (0.1 + 0.8 * rng.uniform(0, 1, n)) * (0.3 + 0.7 * x / 3), np.inf)
    return x, rho


def _pool(x, rho, k: int, budget: float = 1000.0) -> AnalogPool:
    runs = []
    for i, (xi, ri) in enumerate(zip(x, rho)):
        f = dict.fromkeys(FEATURES, math.nan)
        f["level"] = float(xi)
        state = State(0, f, budget, 0.1)
        runs.append(PoolRun(f"r{i}", "g", None if math.isinf(ri) else float(ri * budget), budget, (state,)))
    return AnalogPool(runs, ("level",), k=k)


def _coverage(pool: AnalogPool, x, rho, naive: bool = False) -> dict[str, float]:
    """Conditional quantile levels achieved on collapsed truths, and P(onset) reliability."""
    hits = {0.1: [], 0.5: [], 0.9: []}
    p_on = []
    for xi, ri in zip(x, rho):
        pred = pool.predictive({"level": float(xi)})
        p_on.append(pred.p_onset)
        if np.isfinite(ri):
            for level in hits:
                q = float(np.quantile(pred.rho_c, level)) if naive else pred.onset_quantile(level)
                hits[level].append(ri <= q)
    p_on, col = np.array(p_on), np.isfinite(rho)
    out = {f"q{int(100 * k)}": float(np.mean(v)) for k, v in hits.items()}
    out["p_onset"], out["onset_rate"] = float(p_on.mean()), float(col.mean())
    for name, lo, hi in (("low", 0.0, 0.3), ("mid", 0.3, 0.7), ("high", 0.7, 1.01)):
        sel = (p_on >= lo) & (p_on < hi)
        out[f"gap_{name}"] = float(abs(p_on[sel].mean() - col[sel].mean())) if sel.sum() >= 50 else 0.0
    return out


def test_recalibrated_analogs_hold_their_stated_levels():
    rng = np.random.default_rng(0)
    pool = _pool(*_draw(rng, 600), k=15)
    c = _coverage(pool, *_draw(rng, 2000))
    # conditional quantiles at their level, within the pool's sampling error (~300 collapsed runs)
    assert c["q10"] == pytest.approx(0.10, abs=0.06) and c["q50"] == pytest.approx(0.5, abs=0.06)
    assert c["q90"] == pytest.approx(0.90, abs=0.06)
    # P(onset <= budget) is calibrated overall and where it is low, middling or high
    assert c["p_onset"] == pytest.approx(c["onset_rate"], abs=0.05)
    assert max(c["gap_low"], c["gap_mid"], c["gap_high"]) < 0.1
    # the naive empirical quantile of a few analogs (no rank scale, no recalibration) under-covers
    # its upper quantile: the test would catch that variant
    few = _pool(*_draw(np.random.default_rng(0), 600), k=5)
    assert _coverage(few, *_draw(np.random.default_rng(1), 2000), naive=True)["q90"] < 0.84


# -- the forecaster on trajectories ----------------------------------------------------------------
def _run(i: int, rng: np.random.Generator) -> Run:
    if rng.uniform() < 0.3:  # plateaus above the threshold: censored at the budget (600)
        recs = synthetic_trajectory(collapse=False, nc1_floor=float(rng.uniform(0.02, 0.05)), noise=0.03, seed=i)
    else:
        recs = synthetic_trajectory(t_nc=int(rng.integers(25, 45)) * 10, noise=0.03, seed=i)
    return Run(f"r{i}", "g", recs, {"budget": 600})


def _calibration(runs) -> Calibration:
    cal = Calibration()
    for t in runs:
        cal.add_run("g", RunRecord.from_records(t.run_id, t.records, 600))
    return cal


@pytest.fixture(scope="module")
def split_runs():
    """140 synthetic runs to calibrate on and 80 fresh ones of the same law to test on."""
    rng = np.random.default_rng(3)
    runs = [_run(i, rng) for i in range(220)]
    return runs[:140], runs[140:]


def test_conformal_replay_decides_both_ways_and_never_forecasts_the_past(split_runs):
    pool, fresh = split_runs
    opts = {"forecast_alpha": 0.05}  # 40 censored pool runs: a 5 % level is the strictest they support
    res = replay(fresh, "conformal", "prior", "stop_at_forecast", prior=_calibration(pool), forecaster_options=opts)
    s = res.summary
    assert s.invalid_forecasts == 0
    assert s.n_collapsing >= 40 and s.n_censored >= 15
    # on these smooth runs it stops collapsing runs at a forecast whose interval holds, most plateaus as
    # no onset, and errs at most at its stated rates (5 %: about 1 of 25 censored, 3 of 55 collapsing)
    assert s.n_forecast_stops_held >= 0.25 * s.n_collapsing and s.mae <= 20 and s.interval_coverage >= 0.8
    assert s.n_false_stops <= 2 and s.n_false_no_onset <= 3 and s.n_no_onset_stops >= 0.6 * s.n_censored
    # per-evaluation diagnostics: the "when, if it collapses" 90 % interval holds the true onset at about
    # its level on fresh runs, and p_onset beats the base rate as a probability
    assert s.evaluations_if_onset >= 200 and s.eval_coverage_if_onset == pytest.approx(0.9, abs=0.08)
    assert s.p_onset_evaluations > s.evaluations_if_onset and s.p_onset_brier < 0.8 * s.p_onset_brier_base
    for r in res.runs:
        if r.decision == "forecast":
            assert r.forecast_onset > r.decided_at and r.forecast_low > r.decided_at - 1e-9
            assert r.forecast_high - r.forecast_low <= 40


def test_run_level_thresholds_hold_their_rate_on_the_pool_and_need_enough_runs(split_runs):
    pool_runs, _ = split_runs
    cal = _calibration(pool_runs)
    f = ConformalOnset(cal, "g", 600, forecast_alpha=0.05)
    pool = f.pool()
    cut = pool.thresholds(f.settings)
    n_coll, n_cens = pool.n_collapsed, pool.n_runs - pool.n_collapsed
    assert math.isfinite(cut.no_onset) and math.isfinite(cut.onset) and cut.distance > 0
    # replayed on the pool's own held-out predictions, each rule fires on at most floor(alpha (n + 1)) - 1 runs
    fired_no = 0
    for i, (frac, _, dist) in enumerate(pool.held_out()):
        ok = dist <= cut.distance
        if pool.collapsed_run[i]:
            s = np.where(ok, frac, np.inf)[f.settings.min_points - 1:]
            fired_no += bool(np.any((s[1:] <= cut.no_onset) & (s[:-1] <= cut.no_onset)))
    assert fired_no <= math.floor(0.05 * (n_coll + 1)) - 1
    # too few runs for a level: that rule never fires (a 1 % collapse forecast needs 99 censored runs)
    strict = ConformalOnset(cal, "g", 600, forecast_alpha=0.01)
    assert n_cens < 99 and pool.thresholds(strict.settings).onset == math.inf


def test_an_invalid_forecast_is_counted_and_never_acted_on(monkeypatch):
    """A forecaster that states an onset in the past (a bug) is caught by replay."""
    def past(self, record):
        out = real(self, record)
        if out is not None:
            out = type(out)(**{**out.__dict__, "onset": out.made_at - 10.0, "low": out.made_at - 20.0})
            self.forecast = out
        return out

    real = ConformalOnset.observe
    monkeypatch.setattr(ConformalOnset, "observe", past)
    rng = np.random.default_rng(3)
    res = replay([_run(i, rng) for i in range(30)], "conformal", "leave-one-out")
    assert res.summary.invalid_forecasts > 0
    assert res.summary.n_forecast_stops == 0 and all(r.decision != "forecast" for r in res.runs)


def test_untrusted_without_enough_pooled_runs_and_options_checked():
    cal = Calibration()
    f = ConformalOnset(cal, "g", 600)
    recs = synthetic_trajectory(t_nc=350)
    assert all(f.observe(r) is None for r in recs)  # an empty pool: no forecast at all
    rng = np.random.default_rng(0)
    for i in range(6):
        t = _run(i, rng)
        cal.add_run("g", RunRecord.from_records(t.run_id, t.records, 600))
    f = ConformalOnset(cal, "g", 600, min_runs=10)
    fcs = [f.observe(r) for r in recs]
    assert any(fc is not None for fc in fcs) and not any(fc.trusted for fc in fcs if fc is not None)
    for bad in ({"alpha": 0.6}, {"coverage": 1.0}, {"tolerance": 0}):
        with pytest.raises(ValueError):
            ConformalOnset(cal, "g", 600, **bad)
    with pytest.raises(ValueError, match="budget"):
        ConformalOnset(cal, "g", None)


def test_decisions_follow_alpha_and_tolerance(split_runs):
    cal = _calibration(split_runs[0])
    plateau = synthetic_trajectory(collapse=False, nc1_floor=0.04, noise=0.03, seed=99)
    collapse = synthetic_trajectory(t_nc=330, noise=0.03, seed=98)
    decisions = {}
    for name, recs in (("plateau", plateau), ("collapse", collapse)):
        f = ConformalOnset(cal, "g", 600, forecast_alpha=0.05)
        decisions[name] = [fc.decision for fc in map(f.observe, recs) if fc is not None]
    assert NO_ONSET in decisions["plateau"] and ONSET in decisions["collapse"]
    assert NO_ONSET not in decisions["collapse"]
    # a decision is stated only after min_points evaluations and when it held at `confirm` in a row
    f = ConformalOnset(cal, "g", 600, confirm=3, forecast_alpha=0.05)
    fcs = [fc for fc in map(f.observe, plateau) if fc is not None]
    first = [fc.decision for fc in fcs].index(NO_ONSET)
    tau = f.pool().thresholds(f.settings).no_onset
    assert first >= f.settings.min_points + 1  # the 4th evaluation, and two more in a row
    assert all(fc.details["frac"] <= tau for fc in fcs[first - 2:first + 1])
    # ... and not earlier: the state before that streak was above the threshold, or not yet counted
    assert fcs[first - 3].details["frac"] > tau or first - 2 == f.settings.min_points - 1
    # the tolerance bounds every onset decision's interval; a tighter one decides no more often
    counts = []
    for tol in (40.0, 15.0, 5.0):
        f = ConformalOnset(cal, "g", 600, tolerance=tol, confirm=1, forecast_alpha=0.05)
        fcs = [fc for fc in map(f.observe, collapse) if fc is not None and fc.decision == ONSET]
        assert all(fc.high - fc.low <= tol for fc in fcs)
        counts.append(len({fc.made_at for fc in fcs}))
    assert counts[0] >= counts[1] >= counts[2] and counts[0] > counts[2]
