"""Onset forecasting core: the paper's in-sample rule on the reference logs, forecasters,
calibration, the shared stopper and the replay engine / CLI."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ncstudy.cli import main
from ncstudy.forecast import (
    Calibration,
    FnStarCrossing,
    ForecastStopper,
    NC1Extrapolation,
    Observation,
    Prior,
    TrainLossExtrapolation,
    calibration_from_trajectories,
    default_group_key,
    first_crossing,
    lead_statistics,
    observation_from_records,
    paper_insample_rule,
    replay,
    synthetic_trajectory,
)
from ncstudy.logs import read_log
from ncstudy.onset import onset_of
from ncstudy.runs import Run, load_runs, read_manifest

_ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [os.environ.get("NCSTUDY_REFERENCE_LOGS"), _ROOT.parent / "shared" / "reference" / "rupa2026_logs",
               _ROOT / "shared" / "reference" / "rupa2026_logs", "/work/shared/reference/rupa2026_logs"]
REF = next((Path(p) for p in _CANDIDATES if p and Path(p).is_dir()), Path("/nonexistent"))
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason="reference logs not available")
RUNS = _ROOT / "ncstudy" / "analyze" / "presets" / "rupa2026_runs.csv"  # what each reference file is


def _mnist_mlp5(t: Run) -> bool:
    """The two-phase MNIST MLP runs of depth 5 (any width, activation or weight decay)."""
    m = t.attrs
    return (m.get("model"), m.get("dataset"), m.get("depth"), m.get("protocol")) == ("mlp", "mnist", 5, "two-phase")


def records(name: str) -> list[dict]:
    return read_log(REF / f"{name}.csv").to_dict("records")


# ------------------------------------------------------------------------------------------------
def test_forecast_package_is_pure_python():
    code = ("import importlib, pkgutil, sys, ncstudy.forecast; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(ncstudy.forecast.__path__, "
            "'ncstudy.forecast.')]; "
            "bad = [m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the paper's in-sample rule ------------------------------------------------------------------
@needs_ref
def test_paper_insample_rule_reproduces_ep_cross_for_every_run_with_a_file():
    sweep = pd.read_csv(REF / "sweep_width.csv")
    table = pd.read_csv(REF / "prediction_analysis.csv")
    files = {f"width{w}_s{s}": (w, s) for w, s in zip(sweep.width, sweep.seed) if (REF / f"width{w}_s{s}.csv").exists()}
    assert sorted(files) == ["width128_s0", "width128_s1", "width128_s2", "width256_s0", "width256_s1",
                             "width256_s2", "width512_s0"]
    runs = {rid: (w, records(rid)) for rid, (w, s) in files.items()}
    for fit_on in ("means", "runs"):
        got = paper_insample_rule(zip(sweep.width, sweep.fn), runs, fit_on=fit_on)
        for rid, (w, s) in files.items():
            row = table[(table.width == w) & (table.seed == s)]
            if len(row):  # the run crossed in the paper: same epoch, same T_NC, same gap
                assert got[rid].crossing == int(row.ep_cross.iloc[0]), (rid, fit_on)
                assert got[rid].t_nc == int(row.T_NC.iloc[0])
                assert got[rid].gap == int(row.gap.iloc[0])
            else:  # not in the table: never crosses
                assert got[rid].crossing is None, (rid, fit_on)
    got = paper_insample_rule(zip(sweep.width, sweep.fn), runs)
    assert {r: got[r].crossing for r in got} == {
        "width128_s0": 260, "width128_s1": None, "width128_s2": None, "width256_s0": 280,
        "width256_s1": 260, "width256_s2": 290, "width512_s0": 240}
    assert got["width256_s0"].threshold == pytest.approx(1.1589, abs=1e-4)
    # the logs' own T_NC and fn* agree with the sweep table
    for rid, (w, s) in files.items():
        o = onset_of(runs[rid][1])
        row = sweep[(sweep.width == w) & (sweep.seed == s)]
        assert o.t_nc == int(row.T_NC.iloc[0]) and o.fn_star == pytest.approx(float(row.fn.iloc[0]), rel=1e-6)


@needs_ref
def test_width_sweep_lead_row():
    """8 of 12 runs cross; gap 62.5 +- 37.3; MAE 24 for T_NC = T_cross + 62. Five crossings (and
    both non-crossings) are recomputed from per-run logs, the three runs without a log
    (width 512 s1/s2, 1024 s0) enter with the paper's tabulated values."""
    sweep = pd.read_csv(REF / "sweep_width.csv")
    table = pd.read_csv(REF / "prediction_analysis.csv")
    runs = {f"width{w}_s{s}": (w, records(f"width{w}_s{s}")) for w, s in zip(sweep.width, sweep.seed)
            if (REF / f"width{w}_s{s}.csv").exists()}
    got = paper_insample_rule(zip(sweep.width, sweep.fn), runs)
    pairs, crossed = [], 0
    for w, s in zip(sweep.width, sweep.seed):
        rid = f"width{w}_s{s}"
        if rid in got:
            if got[rid].crossing is not None:
                pairs.append((got[rid].crossing, got[rid].t_nc))
                crossed += 1
        else:
            row = table[(table.width == w) & (table.seed == s)]
            if len(row):
                pairs.append((int(row.ep_cross.iloc[0]), int(row.T_NC.iloc[0])))
                crossed += 1
    assert (crossed, len(sweep)) == (8, 12)
    st = lead_statistics(pairs, lead=62)
    assert st["gap_mean"] == pytest.approx(62.5)
    assert st["gap_sd"] == pytest.approx(37.3, abs=0.05)
    assert st["mae"] == pytest.approx(23.5) and round(st["mae"]) == 24
    assert lead_statistics(pairs)["mae"] == pytest.approx(23.75)  # lead = gap mean


# -- forecasters -----------------------------------------------------------------------------------
def test_first_crossing_phase_filter_and_confirm():
    pts = [(190, 1, 0.5), (210, 2, 1.2), (220, 2, 0.99), (230, 2, 1.01), (240, 2, 0.98), (250, 2, 0.97)]
    assert first_crossing(pts, 1.0) == (220, 220)
    assert first_crossing(pts, 1.0, phases=None) == (190, 190)
    assert first_crossing(pts, 1.0, confirm=2) == (240, 250)
    assert first_crossing(pts, 0.9) is None


def test_fn_star_crossing_forecast_from_prior_and_interval():
    cal = Calibration({"g": Prior(fn_star=1.1, lead=50.0, lead_sd=10.0)})
    f = FnStarCrossing(cal, "g")
    traj = synthetic_trajectory(t_nc=350, fn_start=3.0, fn_end=1.0, tau=30.0)
    first = None
    for r in traj:
        fc = f.observe(r)
        if fc is not None and first is None:
            first = fc
    # fn(t) = 1 + 2 exp(-(t-200)/30) <= 1.1  <=>  t >= 200 + 30 ln 20 = 289.9
    assert first.crossing_epoch == 290 and first.made_at == 290
    assert first.onset == 340.0 and first.trusted
    assert (first.low, first.high) == pytest.approx((290 + 50 - 19.6, 290 + 50 + 19.6))
    assert first.signal == "fn_star_crossing" and "fn*=1.1" in first.calibration
    # a margin moves the threshold up: fn <= 1.1 * 1.5 = 1.65 at 200 + 30 ln(2/0.65) = 233.7
    f2 = FnStarCrossing(cal, "g", margin=0.5)
    fcs = [f2.observe(r) for r in traj]
    assert next(fc for fc in fcs if fc).crossing_epoch == 240


def test_fn_star_crossing_without_calibration_or_lead_makes_no_forecast():
    traj = synthetic_trajectory()
    assert all(FnStarCrossing(Calibration(), "g").observe(r) is None for r in traj)
    cal = Calibration({"g": Prior(fn_star=1.1)})  # fn* but no lead
    assert all(FnStarCrossing(cal, "g").observe(r) is None for r in traj)


def test_nc1_extrapolation_hits_exact_log_linear_onset():
    traj = synthetic_trajectory(t_nc=330)
    f = NC1Extrapolation()
    fcs = [f.observe(r) for r in traj if r["epoch"] <= 240]
    fc = fcs[-1]
    assert fc.made_at == 240 and fc.onset == pytest.approx(330.0, abs=0.5) and fc.trusted
    assert fc.details["r2"] > 0.999
    # a flat / rising NC1 gives no forecast
    flat = synthetic_trajectory(collapse=False)
    f = NC1Extrapolation()
    outs = [f.observe({**r, "nc1": 0.05}) for r in flat]
    assert all(o is None for o in outs)
    # max_horizon: far forecasts are not trusted
    f = NC1Extrapolation(max_horizon=20)
    fc = [f.observe(r) for r in traj if r["epoch"] <= 240][-1]
    assert not fc.trusted


def test_train_loss_extrapolation_needs_level_and_loss():
    cal = Calibration({"g": Prior(levels={"train_loss": 1e-3})})
    traj = synthetic_trajectory(t_nc=330, loss_at_onset=1e-3)
    f = TrainLossExtrapolation(cal, "g")
    fc = [f.observe(r) for r in traj if r["epoch"] <= 250][-1]
    assert fc.onset == pytest.approx(330.0, abs=0.5) and fc.trusted
    f = TrainLossExtrapolation(cal, "g")
    assert all(f.observe({k: v for k, v in r.items() if k != "train_loss"}) is None for r in traj)


# -- calibration -----------------------------------------------------------------------------------
def _obs(rid: str, t: int, fn_star: float, fns: list[float], loss: float | None = None) -> Observation:
    pts = tuple((210 + 10 * i, 2, f) for i, f in enumerate(fns))
    return Observation(rid, t, fn_star, "strict", pts, {"train_loss": loss} if loss else {})


def test_calibration_mean_median_priors_groups_and_json(tmp_path):
    cal = Calibration({"a": Prior(fn_star=2.0, lead=5.0)}, min_observations=3)
    e = cal.estimate("a")
    assert (e.fn_star, e.lead, e.trusted) == (2.0, 5.0, True) and e.fn_star_source.startswith("prior")
    # observations of group a: fn* mean = 1.0; crossings (fn <= 1.0) at 230, 220, 240
    cal.add("a", _obs("r1", 260, 0.95, [1.5, 1.2, 1.0, 0.97, 0.96, 0.95], 1e-3))
    cal.add("a", _obs("r2", 280, 1.05, [1.3, 0.99, 1.02, 1.03, 1.04, 1.04, 1.05, 1.05], 4e-3))
    e = cal.estimate("a")
    assert e.fn_star == 2.0 and e.trusted  # prior until min_observations
    cal.add("a", _obs("r3", 300, 1.0, [1.4, 1.2, 1.1, 1.0, 1.0] + [1.0] * 4, 2e-3))
    e = cal.estimate("a")
    assert e.fn_star == pytest.approx(1.0) and e.fn_star_source == "observed" and e.n_fn == 3
    assert e.lead == 60.0 and e.n_gaps == 3 and e.lead_interval == (30.0, 60.0)  # gaps 30, 60, 60
    assert cal.level("a", "train_loss").value == pytest.approx(2e-3)
    # groups never mix
    cal.add("b", _obs("q1", 400, 5.0, [6.0, 5.0]))
    assert cal.estimate("a").fn_star == pytest.approx(1.0)
    eb = cal.estimate("b")
    assert eb.fn_star == 5.0 and not eb.trusted and eb.fn_star_source == "observed-untrusted"
    # JSON round trip
    cal2 = Calibration.from_json(cal.to_json())
    assert cal2.estimate("a") == cal.estimate("a") and cal2.estimate("b") == cal.estimate("b")
    cal.save(tmp_path / "cal.json")
    assert Calibration.load(tmp_path / "cal.json").to_dict() == cal.to_dict()
    # leave-one-out copy
    assert cal.without("r3").estimate("a").fn_star == 2.0  # back to the prior (2 < 3 runs)


def test_calibration_remove_run_takes_out_run_observation_and_pool_states():
    runs = [Run(f"r{i}", "g", synthetic_trajectory(t_nc=300 + 10 * i, seed=i), {"budget": 600})
            for i in range(3)]
    cal = calibration_from_trajectories(runs)
    before = cal.analog_pool()
    assert cal.n_runs("g") == 3 and len(cal.observations("g")) == 3 and before.n_runs == 3
    assert cal.remove_run("g", "r1") and not cal.remove_run("g", "r1") and not cal.remove_run("other", "r0")
    assert cal.n_runs("g") == 2 and {o.run_id for o in cal.observations("g")} == {"r0", "r2"}
    after = cal.analog_pool()
    assert after is not before and {r.run_id for r in after.runs} == {"r0", "r2"}


def test_default_group_key():
    assert default_group_key({"model": {"name": "mlp"}, "data": {"name": "mnist"}}) == "mlp/mnist"
    assert default_group_key({"model.name": "resnet20", "data.name": "cifar10"}) == "resnet20/cifar10"
    assert default_group_key({"lr": 0.1}) == "default"


# -- the shared stopper ----------------------------------------------------------------------------
def test_stopper_policies_and_online_learning():
    # fn levels off (tau 20) at a run-specific plateau well before onset
    spec = [(330, 0.95), (350, 1.05), (340, 0.97)]
    trajs = [synthetic_trajectory(t_nc=t, fn_end=f, tau=20.0, seed=i) for i, (t, f) in enumerate(spec)]
    # record: never stops; stop_at_onset: stops at T_NC
    for policy, expect in (("record", None), ("stop_at_onset", 330)):
        s = ForecastStopper(policy, "fn_star", calibration=Calibration({"g": Prior(1.0, 40.0)}))
        stops = [r["epoch"] for r in trajs[0] if s.observe("t0", r, "g").stop]
        assert (stops[0] if stops else None) == expect
    # learning online, no priors, min_observations 2
    spec = [(330, 1.0), (350, 1.0), (340, 1.2), (360, 0.97)]
    trajs = [synthetic_trajectory(t_nc=t, fn_end=f, tau=20.0, seed=i) for i, (t, f) in enumerate(spec)]
    s = ForecastStopper("stop_at_forecast", "fn_star", calibration=Calibration(min_observations=2))
    first_stop, estimates = {}, []
    for i, traj in enumerate(trajs):
        for r in traj:
            d = s.observe(f"t{i}", r, "g")
            if d.stop:
                first_stop[i] = (r["epoch"], d.reason)
                break
        s.complete(f"t{i}")
        estimates.append(s.calibration.estimate("g"))
    assert [first_stop[i] for i in range(3)] == [(330, "onset"), (350, "onset"), (340, "onset")]
    # after two runs fn* is their mean, but only run 0 crossed it before its onset: one gap is no lead
    est = estimates[1]
    fn0 = next(r["feat_norm"] for r in trajs[0] if r["epoch"] == 330)
    fn1 = next(r["feat_norm"] for r in trajs[1] if r["epoch"] == 350)
    assert est.n_fn == 2 and est.fn_star == pytest.approx((fn0 + fn1) / 2) and est.n_gaps == 1 and not est.trusted
    # after three: runs 0 and 1 crossed the mean (raised by run 2's 1.2) 60 and 80 epochs early
    est = estimates[2]
    assert est.trusted and (est.n_fn, est.n_gaps, est.lead) == (3, 2, 70.0)
    # the fourth run is stopped at its crossing, 90 epochs before its onset at 360
    crossing = next(r["epoch"] for r in trajs[3] if r["phase"] == 2 and r["feat_norm"] <= est.fn_star)
    assert first_stop[3] == (crossing, "forecast") and crossing == 270
    ann = s.state("t3")
    assert ann.stop_reason == "forecast" and ann.onset == 340.0
    assert ann.forecast.crossing_epoch == 270 and "mean of 3 runs" in ann.forecast.calibration
    assert s.state("t0").stop_reason == "onset"


def test_monitor_rewinds_on_repeated_epochs():
    s = ForecastStopper("record", "fn_star", calibration=Calibration({"g": Prior(1.05, 40.0)}))
    traj = synthetic_trajectory(t_nc=330, fn_end=0.95)
    for r in traj[:30]:
        s.observe("t", r, "g")
    for r in traj[25:]:  # resumed from a checkpoint at epoch 250
        s.observe("t", r, "g")
    m = s.monitors["t"]
    assert [r["epoch"] for r in m.records] == [r["epoch"] for r in traj]
    assert m.onset().t_nc == 330


# -- replay ---------------------------------------------------------------------------------------
@needs_ref
def test_manifest_gives_reference_logs_their_groups():
    trajs = {t.run_id: t for t in load_runs([REF], read_manifest(RUNS))}
    assert trajs["mnist_twophase"].attrs["cell"] == "baseline" and trajs["mnist_twophase"].group == "mlp/mnist"
    m = trajs["wd1e-05_s2"].attrs
    assert (m["model"], m["dataset"], m["weight_decay"], m["seed"]) == ("mlp", "mnist", 1e-5, 2)
    assert trajs["cifar10_s0"].group == "resnet20/cifar10" and trajs["mlp5_cifar10_s1"].group == "mlp/cifar10"
    assert not _mnist_mlp5(trajs["depth7_s0"]) and not _mnist_mlp5(trajs["baseline"])
    assert "sweep_width" not in trajs  # a summary table, not a log
    # phase from the manifest's ce_epochs where a file has no phase column (gelu_s3)
    assert {r["phase"] for r in trajs["gelu_s3"].records if r["epoch"] > 200} == {2}
    # without a manifest every log is in one group, and --group names it
    assert {t.group for t in load_runs([REF / "width128_s0.csv"])} == {"default"}
    assert {t.group for t in load_runs([REF / "width128_s0.csv"], group="mlp/mnist")} == {"mlp/mnist"}


@needs_ref
def test_leave_one_out_replay_matches_independent_computation():
    trajs = [t for t in load_runs([REF], read_manifest(RUNS)) if _mnist_mlp5(t)]
    assert len(trajs) == 27
    res = replay(trajs, "fn_star", "leave-one-out", "stop_at_forecast", budget=600)
    by = {r.run_id: r for r in res.runs}
    # independent recomputation for mnist_twophase: fn* = mean fn at strict T_NC of the other
    # strict runs; lead = median over them of T_NC - first phase-2 epoch with fn <= fn*
    others = {}
    for t in trajs:
        o = onset_of(t.records, relaxed_fallback=False)
        if o.t_nc is not None and t.run_id != "mnist_twophase":
            others[t.run_id] = (o.t_nc, o.fn_star, t.records)
    fn_star = statistics.fmean(v[1] for v in others.values())
    gaps = []
    for t_nc, _, recs in others.values():
        c = next((r["epoch"] for r in recs if r.get("phase") == 2 and r["epoch"] <= t_nc
                  and r["feat_norm"] is not None and r["feat_norm"] <= fn_star), None)
        if c is not None:
            gaps.append(t_nc - c)
    lead = statistics.median(gaps)
    mine = next(r["epoch"] for r in records("mnist_twophase") if r["phase"] == 2 and r["feat_norm"] <= fn_star)
    r = by["mnist_twophase"]
    assert len(others) == 15 and r.crossing_epoch == mine == 220
    assert r.forecast_onset == pytest.approx(mine + lead) and r.t_nc == 310
    assert r.stop_epoch == 220 and r.stop_reason == "forecast" and r.baseline_epoch == 310 and r.epochs_saved == 90
    assert "mean of 15 runs" in r.calibration
    s = res.summary
    assert s.n_runs == 27 and s.n_collapsing == 16 and s.n_censored == 11  # strict onset only
    # every collapsing run reports a T_NC: its forecast when stopped by one, else the observed onset
    for r in res.runs:
        if r.t_nc is not None and r.reported_t_nc is not None:
            want = r.forecast_onset if r.stop_reason == "forecast" else r.t_nc
            assert r.reported_t_nc == want and r.error == pytest.approx(want - r.t_nc)
    assert s.mae == pytest.approx(statistics.fmean(abs(r.error) for r in res.runs if r.error is not None))
    # a censored run stopped by a crossing forecast is a false stop and saves nothing
    false = [r for r in res.runs if r.false_stop]
    assert false and all(r.t_nc is None and r.epochs_saved == 0 for r in false) and s.n_false_stops == len(false)
    assert s.saved == pytest.approx(sum(r.epochs_saved for r in res.runs) / sum(r.baseline_epoch for r in res.runs))
    assert s.invalid_forecasts == 0


def test_leave_one_out_uses_only_the_same_group():
    a = [Run(f"a{i}", "A", synthetic_trajectory(t_nc=330 + 10 * i, fn_end=1.0, seed=i)) for i in range(4)]
    b = [Run(f"b{i}", "B", synthetic_trajectory(t_nc=330 + 10 * i, fn_start=30.0, fn_end=10.0, seed=i))
         for i in range(4)]
    cal = calibration_from_trajectories(a + b)
    for t in a + b:  # what replay's leave-one-out gives each run: the other runs of its own group only
        est = cal.without(t.run_id).estimate(t.group)
        assert est.n_fn == 3 and est.describe().startswith(f"{t.group}: fn*={'1.' if t.group == 'A' else '10.'}")
    fa = observation_from_records("x", a[0].records).fn_star
    assert 1.0 < fa < 1.2


def test_replay_prior_mode_and_never_collapsing_runs():
    runs = [Run("c", "g", synthetic_trajectory(t_nc=350, fn_end=1.0)),
            Run("n", "g", synthetic_trajectory(collapse=False, nc1_floor=0.08, fn_end=1.0))]
    res = replay(runs, "fn_star", "prior", "stop_at_forecast", priors={"g": Prior(1.1, 50.0)}, budget=600)
    c, n = res.runs
    assert (c.crossing_epoch, c.forecast_onset, c.stop_epoch, c.t_nc, c.error, c.lead) == \
        (290, 340.0, 290, 350, -10.0, 60.0)
    assert c.epochs_saved == 60 and c.reported_t_nc == 340.0 and not c.false_stop
    # fn crosses although NC1 never collapses: a false stop, never counted as saved
    assert n.t_nc is None and n.forecast_onset == 340.0 and n.false_stop and n.epochs_saved == 0
    assert n.reported_t_nc == 340.0 and n.baseline_epoch == 600  # the study would be told 340
    s = res.summary
    assert (s.n_collapsing, s.n_censored, s.n_forecast_stops, s.n_false_stops, s.mae) == (1, 1, 1, 1, 10.0)
    assert s.saved == pytest.approx(60 / (350 + 600))  # the false stop's 310 epochs are not "saved"
    assert s.run_fraction == pytest.approx((290 + 290) / (350 + 600))
    with pytest.raises(ValueError, match="prior"):
        replay(runs, "fn_star", "prior")


# -- CLI ------------------------------------------------------------------------------------------
@needs_ref
def test_replay_cli_json_and_errors(tmp_path, capsys):
    files = [str(REF / f"width{w}.csv") for w in ("128_s0", "256_s0", "256_s1", "256_s2", "512_s0")]
    assert main(["replay", *files, "--forecaster", "fn_star", "--forecaster", "nc1", "--json", "--budget", "600"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["summary"]["forecaster"] for r in out["results"]] == ["fn_star", "nc1"]
    assert out["results"][0]["summary"]["n_runs"] == 5 and out["options"]["budgets"]["width128_s0"] == 600
    assert main(["replay", str(REF / "width256_s1.csv"), "--calibration", "prior", "--prior", "paper",
                 "--forecaster", "fn_star"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    # the text carries the same fields as --json: every run field as a column, every summary field as a row
    assert "width256_s1" in text and all(f in text for f in out["results"][0]["summary"] if f != "forecaster")
    assert all(f in text for f in out["results"][0]["runs"][0])
    # without a manifest or --group the logs are in group "default": the paper's priors match no group
    assert "WARNING: the prior for group mlp/mnist matches no replayed group (default); pass --group mlp/mnist" \
        in captured.err
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["replay", str(tmp_path / "missing.csv")]) == 2
    assert main(["replay", str(bad)]) == 2
    assert "missing required column" in capsys.readouterr().err
    assert main(["replay"]) == 2
    assert main(["replay", files[0], "--calibration", "prior", "--prior", "none"]) == 2
    assert main(["replay", files[0], "--forecaster", "nope"]) == 2
    assert main(["replay", files[0], "--prior", str(bad)]) == 2
    for flag, value in (("--budget", "-10"), ("--margin", "nan"), ("--alpha", "0.7"), ("--tolerance", "0"),
                        ("--calibration", "nosuchmode")):
        assert main(["replay", files[0], flag, value]) == 2
        assert flag in capsys.readouterr().err
    dup = tmp_path / "dup.csv"
    dup.write_text("epoch,phase,nc1,feat_norm\n10,1,0.5,2\n10,1,0.5,2\n20,2,0.1,1\n")
    assert main(["replay", str(dup)]) == 2 and "duplicate epoch(s) 10" in capsys.readouterr().err


@needs_ref
def test_replay_calibration_round_trips(tmp_path, capsys):
    """--save-calibration FILE then --prior FILE (or --calibration FILE) gives back the same calibration,
    and replaying from the file equals replaying from memory."""
    files = [str(REF / f"width{w}.csv") for w in ("128_s0", "256_s0", "256_s1", "256_s2", "512_s0")]
    cal_path = tmp_path / "cal.json"
    assert main(["replay", *files, "--group", "mlp/mnist", "--save-calibration", str(cal_path), "--json"]) == 0
    capsys.readouterr()
    saved = Calibration.load(cal_path)
    assert saved.n_runs("mlp/mnist") == 5 and saved.estimate("mlp/mnist").n_fn == 5
    assert Calibration.from_json(saved.to_json()).to_dict() == saved.to_dict()
    other = [str(REF / "width128_s1.csv"), str(REF / "width128_s2.csv")]
    outs = []
    for args in (["--prior", str(cal_path), "--calibration", "prior"], ["--calibration", str(cal_path)]):
        assert main(["replay", *other, "--group", "mlp/mnist", "--json", "--budget", "600", *args]) == 0
        outs.append(json.loads(capsys.readouterr().out)["results"])
    assert outs[0] == outs[1]
    trajs = load_runs(other, group="mlp/mnist")
    mem = replay(trajs, "conformal", "prior", prior=saved, budget=600)
    assert [r.to_dict() for r in [mem]][0]["runs"] == outs[0][0]["runs"]


def test_replay_cli_reads_an_mlflow_experiment(tmp_path, capsys, mlflow_uri):  # mlflow_uri: conftest.py
    import mlflow

    from ncstudy.logs import write_log

    uri = mlflow_uri
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = f"replay_cli_{tmp_path.name}"
    exp = client.create_experiment(name, artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, tags={"ncstudy.role": "study"})
    for i, t_nc in enumerate([320, 330, 340, 350]):
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id, "ncstudy.role": "trial",
                                           "ncstudy.trial_id": f"trial{i}", "model": "mlp", "dataset": "synthetic"})
        p = write_log(synthetic_trajectory(t_nc=t_nc, fn_end=0.95, seed=i), tmp_path / f"t{i}" / "trajectory.csv")
        client.log_artifact(run.info.run_id, str(p))
    assert main(["replay", "--experiment", name, "--tracking-uri", uri, "--json", "--min-observations", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    runs = out["results"][0]["runs"]
    assert sorted(r["run_id"] for r in runs) == ["trial0", "trial1", "trial2", "trial3"]
    assert {r["group"] for r in runs} == {"mlp/synthetic"} and {r["t_nc"] for r in runs} == {320, 330, 340, 350}
    assert main(["replay", "--experiment", "no_such_experiment", "--tracking-uri", uri]) == 2
    assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err
    # a study's stopper starting from this experiment's runs (fnstar.prior_experiment) reads the same runs
    from ncstudy.study.runner import build_calibration
    from ncstudy.study.spec import FnStarConfig

    cal = build_calibration(FnStarConfig(forecaster="fn_star", prior_experiment=name, tracking_uri=uri))
    assert cal.n_runs("mlp/synthetic") == 4 and len(cal.observations("mlp/synthetic")) == 4


def test_forecast_read_back_from_a_result_record():
    """The fields a result carries (ncstudy.records.FORECAST_FIELDS) are one Forecast again."""
    import math

    from ncstudy.forecast import Forecast

    fc = Forecast.from_record({"epoch": 140, "t_nc_estimate": 192.0, "t_nc_low": 170.0, "t_nc_high": 220.0,
                               "p_onset": 0.9})
    assert (fc.made_at, fc.onset, fc.low, fc.high, fc.p_onset, fc.decision) == (140, 192.0, 170.0, 220.0, 0.9, "onset")
    none = Forecast.from_record({"epoch": 150.0, "t_nc_estimate": float("nan"), "t_nc_low": 160.0, "p_onset": 0.02})
    assert math.isinf(none.onset) and math.isnan(none.low) and none.decision == "no_onset" and none.p_onset == 0.02
    assert Forecast.from_record({"epoch": 10, "nc1": 0.3}) is None
