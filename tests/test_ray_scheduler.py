"""FnStarScheduler: decisions on synthetic trajectories (hook-level), resume from its sidecar,
and a real Ray Tune run with a user-style function trainable beside Optuna TPE."""
from __future__ import annotations

import json
import math
import sys

import pytest
from pydantic import ValidationError
from ray.tune.schedulers import TrialScheduler

from ncstudy.adapters.ray_scheduler import SIDECAR_NAME, FnStarScheduler
from ncstudy.forecast import Calibration, MissingMetricError, Prior, synthetic_trajectory
from ncstudy.study.runner import build_scheduler
from ncstudy.study.spec import FnStarConfig, StudySpec

CONFIG = {"model": {"name": "mlp"}, "data": {"name": "synthetic"}}
GROUP = "mlp/synthetic"


class FakeTrial:
    """What the scheduler uses of ray.tune.experiment.Trial."""

    def __init__(self, trial_id: str, exp_dir, config=None):
        self.trial_id, self.config = trial_id, dict(config or CONFIG)
        self.local_experiment_path = str(exp_dir)
        self.last_result: dict = {}


def run_trial(sched, trial, traj, complete=True):
    """Feed results like TuneController does; returns (stop epoch or None, decisions)."""
    sched.on_trial_add(None, trial)
    stop = None
    for rec in traj:
        result = dict(rec, training_iteration=rec["epoch"] // 10, trial_id=trial.trial_id)
        d = sched.on_trial_result(None, trial, dict(result))
        trial.last_result = result
        if d == TrialScheduler.STOP:
            stop = rec["epoch"]
            break
    if complete:
        sched.on_trial_complete(None, trial, dict(trial.last_result))
    return stop


def test_crossing_stops_at_forecast_and_searcher_sees_forecast(tmp_path):
    sched = FnStarScheduler("stop_at_forecast", priors={GROUP: Prior(fn_star=1.1, lead=50.0)}, objective="t_nc")
    trial = FakeTrial("a", tmp_path)
    traj = [dict(r, t_nc=math.nan) for r in synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0)]
    stop = run_trial(sched, trial, traj)
    # fn = 1 + 2 exp(-(t-200)/30) <= 1.1 first at epoch 290
    assert stop == 290
    ann = sched.trial_forecast("a")
    assert ann.onset == 340.0 and ann.stop_reason == "forecast" and ann.forecast.crossing_epoch == 290
    assert ann.forecast.calibration.startswith(GROUP + ": fn*=1.1 (prior")
    # the dict Tune hands to search_alg.on_trial_complete is flatten(trial.last_result)
    assert trial.last_result["t_nc"] == 340.0
    # the sidecar is in the experiment directory
    state = json.loads((tmp_path / SIDECAR_NAME).read_text())
    assert state["trials"][0]["stop_reason"] == "forecast"


def test_record_policy_never_stops_but_forecasts(tmp_path):
    sched = FnStarScheduler("record", priors={GROUP: Prior(fn_star=1.1, lead=50.0)})
    trial = FakeTrial("a", tmp_path)
    seen = []
    sched.on_trial_add(None, trial)
    for rec in synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0):
        assert sched.on_trial_result(None, trial, dict(rec)) == TrialScheduler.CONTINUE
        seen.append(sched.trial_forecast("a").onset)
    assert seen[27] is None and seen[28] == 340.0 and seen[-1] == 340.0  # epochs 280 / 290 / 600
    sched.on_trial_complete(None, trial, {})
    assert sched.trial_forecast("a").stop_reason == "budget"


def test_no_crossing_runs_to_onset(tmp_path):
    sched = FnStarScheduler("stop_at_forecast", priors={GROUP: Prior(fn_star=1.1, lead=50.0)}, objective="t_nc")
    trial = FakeTrial("a", tmp_path)
    stop = run_trial(sched, trial, synthetic_trajectory(t_nc=330, fn_end=1.3, tau=30.0))
    ann = sched.trial_forecast("a")
    assert stop == 330 and ann.stop_reason == "onset" and ann.onset is None
    assert ann.forecast is None and trial.last_result["t_nc"] == 330.0
    # stop_at_onset on the same trajectory, no fn* at all
    sched = FnStarScheduler("stop_at_onset")
    assert run_trial(sched, FakeTrial("b", tmp_path / "x"), synthetic_trajectory(t_nc=330)) == 330


def test_noisy_crossing_first_dip_or_confirmed(tmp_path):
    traj = synthetic_trajectory(t_nc=400, fn_end=1.0, tau=30.0, ce_epochs=200)
    # a single noisy dip below the threshold at 250, back above until 290
    for r in traj:
        if r["epoch"] == 250:
            r["feat_norm"] = 1.08
    prior = {GROUP: Prior(fn_star=1.1, lead=50.0)}
    s1 = FnStarScheduler("stop_at_forecast", priors=prior)
    assert run_trial(s1, FakeTrial("a", tmp_path), traj) == 250
    s2 = FnStarScheduler("stop_at_forecast", priors=prior, forecaster_options={"confirm": 2})
    assert run_trial(s2, FakeTrial("a", tmp_path / "c"), traj) == 300  # 290 and 300 below: confirmed at 300
    assert s2.trial_forecast("a").forecast.crossing_epoch == 290
    assert s2.trial_forecast("a").onset == 340.0


def test_missing_feature_norm_metric_raises_at_first_result(tmp_path):
    sched = FnStarScheduler("record", metrics={"feat_norm": "fn"})
    trial = FakeTrial("trial_7", tmp_path)
    sched.on_trial_add(None, trial)
    with pytest.raises(MissingMetricError) as e:
        sched.on_trial_result(None, trial, {"epoch": 10, "feat_norm": 20.0, "nc1": 0.3})
    assert "'fn'" in str(e.value) and "trial_7" in str(e.value)
    # NaN is fine (fn is undefined before terminal): the key just has to be there
    assert sched.on_trial_result(None, trial, {"epoch": 10, "fn": math.nan}) == TrialScheduler.CONTINUE


def test_learns_online_then_stops_at_forecast(tmp_path):
    sched = FnStarScheduler("stop_at_forecast", min_observations=2)
    spec = [(330, 0.95), (350, 1.05), (340, 0.97)]
    stops = [run_trial(sched, FakeTrial(f"t{i}", tmp_path), synthetic_trajectory(t_nc=t, fn_end=f, tau=20.0, seed=i))
             for i, (t, f) in enumerate(spec)]
    assert stops == [330, 350, 290]
    assert [sched.trial_forecast(f"t{i}").stop_reason for i in range(3)] == ["onset", "onset", "forecast"]
    assert len(sched.calibration.observations(GROUP)) == 2
    # a trial of another group learns nothing from these
    other = FakeTrial("o", tmp_path, {"model": {"name": "resnet20"}, "data": {"name": "synthetic"}})
    assert run_trial(sched, other, synthetic_trajectory(t_nc=340, fn_end=0.97, tau=20.0)) == 340


def test_restore_from_sidecar_continues_identically(tmp_path):
    spec = [(330, 0.95), (350, 1.05), (340, 0.97)]
    trajs = [synthetic_trajectory(t_nc=t, fn_end=f, tau=20.0, seed=i) for i, (t, f) in enumerate(spec)]
    # uninterrupted reference
    ref = FnStarScheduler("stop_at_forecast", min_observations=2, state_path=tmp_path / "ref.json")
    ref_stops = [run_trial(ref, FakeTrial(f"t{i}", tmp_path), tr) for i, tr in enumerate(trajs)]
    # interrupted: two trials done, the third half-way (epoch 250) when the driver dies
    exp = tmp_path / "exp"
    a = FnStarScheduler("stop_at_forecast", min_observations=2)
    run_trial(a, FakeTrial("t0", exp), trajs[0])
    run_trial(a, FakeTrial("t1", exp), trajs[1])
    t2 = FakeTrial("t2", exp)
    run_trial(a, t2, [r for r in trajs[2] if r["epoch"] <= 250], complete=False)
    a._save(force=True)
    # resume: a fresh scheduler (as unpickled from tuner.pkl), trials re-added, t2 restarts at 240
    b = FnStarScheduler("stop_at_forecast", min_observations=2)
    b.on_trial_add(None, FakeTrial("t0", exp))
    assert b.calibration.to_dict() == a.calibration.to_dict()
    assert b.trial_forecast("t1").stop_reason == "onset"
    stop = run_trial(b, FakeTrial("t2", exp), [r for r in trajs[2] if r["epoch"] >= 240])
    assert stop == ref_stops[2] == 290
    assert b.trial_forecast("t2") == ref.trial_forecast("t2")
    assert [r["epoch"] for r in b.stopper.monitors["t2"].records] == list(range(10, 291, 10))


def _study(fnstar: dict, objective: str = "collapse_epoch") -> StudySpec:
    return StudySpec.model_validate({"name": "s", "scheduler": {"name": "fnstar", "fnstar": fnstar},
                                     "objective": {"metric": objective}})


def test_fnstar_config_builds_a_scheduler(tmp_path):
    s = build_scheduler(_study({
        "policy": "stop_at_forecast", "forecaster": "fn_star", "margin": 0.05, "min_observations": 2,
        "objective": "t_nc",
        "priors": {"mlp/mnist": {"fn_star": 1.05, "lead": 60}}, "paper_priors": True,
        "metrics": {"feat_norm": "fn"}}), tmp_path)
    assert s.policy == "stop_at_forecast" and s.metrics.feat_norm == "fn" and s.objective == "t_nc"
    prior = s.calibration.priors["mlp/mnist"]
    assert prior.fn_star == 1.05 and prior.source == "study file"
    assert s.calibration.priors["resnet20/mnist"].fn_star == pytest.approx(5.867)
    assert s.stopper.forecaster_options["margin"] == 0.05
    with pytest.raises(ValidationError):
        FnStarConfig.model_validate({"policy": "stop_early"})
    with pytest.raises(ValidationError):
        FnStarConfig.model_validate({"polcy": "record"})
    cal = Calibration({"g": Prior(1.0, 10.0)})
    cal.save(tmp_path / "cal.json")
    s = build_scheduler(_study({"calibration_file": str(tmp_path / "cal.json")}), None)
    assert s.calibration.estimate("g").fn_star == 1.0


def test_study_scheduler_takes_a_collapse_time_objective_and_trainer_stop_reason(tmp_path):
    s = build_scheduler(_study({"policy": "stop_at_forecast", "forecaster": "fn_star",
                                "priors": {GROUP: {"fn_star": 1.1, "lead": 50}}}), tmp_path)
    s.group_key = lambda config: GROUP  # the study's own key resolves full trainer configs
    assert s.objective == "collapse_epoch" and s.state_path == tmp_path / "fnstar_state.json"
    assert build_scheduler(_study({}, objective="test"), None).objective is None
    assert build_scheduler(_study({"objective": "t_nc"}, objective="test"), None).objective == "t_nc"
    trial = FakeTrial("a", tmp_path)
    traj = [dict(r, collapse_epoch=1200.0, stop_reason="") for r in synthetic_trajectory(t_nc=350, fn_end=1.0)]
    assert run_trial(s, trial, traj) == 290
    assert trial.last_result["collapse_epoch"] == 340.0  # not the trainer's censored penalty
    assert (tmp_path / "fnstar_state.json").is_file()
    # a trial the trainer ended itself keeps the trainer's reason and its own objective
    s = build_scheduler(_study({"policy": "record", "forecaster": "fn_star"}), None)
    s.group_key = lambda config: GROUP
    trial = FakeTrial("b", tmp_path)
    traj = [dict(r, collapse_epoch=1200.0, stop_reason="") for r in synthetic_trajectory(t_nc=350)][:20]
    traj[-1]["stop_reason"] = "diverged"
    run_trial(s, trial, traj)
    assert s.trial_forecast("b").stop_reason == "diverged" and trial.last_result["collapse_epoch"] == 1200.0


# -- a real Tune run ------------------------------------------------------------------------------
def user_trainable(config):
    """A user's own trainable: reports fn/NC1/phase per evaluation, no ncstudy imports needed
    besides the synthetic trajectory standing in for training."""
    from ray import tune

    from ncstudy.forecast import synthetic_trajectory

    t_nc = int(round(330 + 2000 * config["weight_decay"], -1))
    for rec in synthetic_trajectory(t_nc=t_nc, fn_end=1.0, tau=30.0, epochs=500, seed=config["seed"]):
        rec["t_nc"] = float(t_nc) if rec["epoch"] >= t_nc else math.nan
        tune.report(rec)


def test_real_tune_run_stops_trials_at_forecast(ray_local, tmp_path):  # ray_local: tests/conftest.py
    from ray import cloudpickle, tune
    from ray.tune import Callback
    from ray.tune.search.optuna import OptunaSearch

    sched = FnStarScheduler("stop_at_forecast", priors={GROUP: Prior(fn_star=1.1, lead=50.0)}, objective="t_nc")

    class Tags(Callback):  # what the MLflow callback does with the query API
        def __init__(self):
            self.per_result, self.final = {}, {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            fc = sched.trial_forecast(trial.trial_id)
            if fc is not None and fc.onset is not None:
                self.per_result.setdefault(trial.trial_id, []).append((result["epoch"], fc.onset))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.final[trial.trial_id] = (sched.trial_forecast(trial.trial_id), trial.last_result["t_nc"])

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    tags = Tags()
    searcher = OptunaSearch(seed=0)
    tuner = tune.Tuner(
        user_trainable,
        param_space={"weight_decay": tune.uniform(0.0, 0.05), "seed": 0, **CONFIG},
        tune_config=tune.TuneConfig(metric="t_nc", mode="min", scheduler=sched, search_alg=searcher,
                                    num_samples=3, max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="fnstar", verbose=0, callbacks=[tags]))
    grid = tuner.fit()
    assert not grid.errors
    assert len(grid) == 3
    for res in grid:
        tid = res.metrics["trial_id"]
        expected_onset = int(round(330 + 2000 * res.config["weight_decay"], -1))
        assert res.metrics["epoch"] == 290 < expected_onset  # stopped early, at the fn* crossing
        assert res.metrics["t_nc"] == 340.0  # objective = forecast onset, not NaN
        final, last_t_nc = tags.final[tid]
        assert final.stop_reason == "forecast" and final.forecast.crossing_epoch == 290
        assert last_t_nc == 340.0
        assert tags.per_result[tid] == [(290, 340.0)]
    # the searcher was told the forecast onset
    values = [t.value for t in searcher._ot_study.trials]
    assert values == [340.0, 340.0, 340.0]
    state = json.loads((tmp_path / "fnstar" / SIDECAR_NAME).read_text())
    assert sorted(t["stop_reason"] for t in state["trials"]) == ["forecast"] * 3
