"""FnStarPruner in real Optuna studies."""
from __future__ import annotations

import math

import optuna
import pytest

from ncstudy.adapters.optuna_pruner import FnStarPruner
from ncstudy.forecast import MissingMetricError, Prior, synthetic_trajectory

optuna.logging.set_verbosity(optuna.logging.WARNING)


def t_nc_of(wd: float) -> int:
    return int(round(330 + 2000 * wd, -1))


def make_objective(pruner, honest=True, fn_key="feat_norm"):
    def objective(trial: optuna.Trial) -> float:
        wd = trial.suggest_float("weight_decay", 0.0, 0.05)
        trial.set_user_attr("model", "mlp")
        trial.set_user_attr("dataset", "synthetic")
        t_nc = t_nc_of(wd)
        # fn plateau differs per trial: some cross the group's fn*, some do not
        fn_end = 0.95 + 0.1 * (trial.number % 3) / 2
        for rec in synthetic_trajectory(t_nc=t_nc, fn_end=fn_end, tau=20.0, epochs=500, seed=trial.number):
            if fn_key != "feat_norm":
                rec[fn_key] = rec.pop("feat_norm")
            pruner.report(trial, rec)
            if trial.should_prune():
                if honest:  # collapse time is the objective: return the onset the stop rests on
                    return pruner.forecast_onset(trial.number)
                raise optuna.TrialPruned()
        return float(t_nc)

    return objective


def test_pruner_learns_and_stops_at_forecast_in_a_real_study():
    pruner = FnStarPruner("stop_at_forecast", min_observations=2)
    study = optuna.create_study(direction="minimize", pruner=pruner, sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(make_objective(pruner), n_trials=8)
    trials = study.trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    reasons = [pruner.trial_forecast(t.number).stop_reason for t in trials]
    # the first two trials reach onset (nothing to forecast with yet) and calibrate the group
    assert reasons[:2] == ["onset", "onset"]
    assert "forecast" in reasons
    for t, reason in zip(trials, reasons):
        last = max(int(k[len("fnstar.e"):]) for k in t.user_attrs if k.startswith("fnstar.e"))
        onset = t_nc_of(t.params["weight_decay"])
        if reason == "forecast":
            ann = pruner.trial_forecast(t.number)
            assert last < onset and last == ann.forecast.crossing_epoch
            assert t.value == ann.onset == pruner.forecast_onset(t.number)
        else:
            assert reason == "onset" and last == onset and t.value == onset
    cal = pruner.calibration
    assert cal.estimate("mlp/synthetic").trusted
    # only trials that reached onset were learned (a stop at forecast hides the onset)
    assert {o.run_id for o in cal.observations("mlp/synthetic")} == {
        str(t.number) for t, r in zip(trials, reasons) if r == "onset"}


def test_pruner_with_intermediate_values_prior_and_trial_pruned():
    pruner = FnStarPruner("stop_at_forecast", source="intermediate_values", metrics={"feat_norm": "fn"},
                          priors={"mlp/synthetic": Prior(fn_star=1.1, lead=50.0)})
    study = optuna.create_study(direction="minimize", pruner=pruner, sampler=optuna.samplers.TPESampler(seed=1))
    study.optimize(make_objective(pruner, honest=False, fn_key="fn"), n_trials=3)
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.PRUNED
        # stopped at the first phase-2 evaluation with fn <= 1.1; forecast = that epoch + 50
        steps = sorted(t.intermediate_values)
        last, before = steps[-1], steps[-2]
        assert t.intermediate_values[last] <= 1.1 < t.intermediate_values[before] and last > 200
        assert pruner.trial_forecast(t.number).onset == last + 50.0
        assert last < t_nc_of(t.params["weight_decay"])


def test_record_policy_never_prunes_and_missing_metric_raises():
    pruner = FnStarPruner("record", priors={"mlp/synthetic": Prior(fn_star=1.1, lead=50.0)})
    study = optuna.create_study(pruner=pruner)
    study.optimize(make_objective(pruner), n_trials=2, callbacks=[pruner])
    assert pruner.trial_forecast(1).stop_reason == "budget"  # finalised by the callback
    assert all(len([k for k in t.user_attrs if k.startswith("fnstar.e")]) == 50 for t in study.trials)
    assert pruner.trial_forecast(0).onset == 310.0  # crossing 1.1 at 260, + 50
    assert pruner.trial_forecast(0).stop_reason == "budget"
    # a record without fn
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    trial.set_user_attr("fnstar.e0000010", {"epoch": 10, "nc1": 0.3})
    with pytest.raises(MissingMetricError, match=r"trial 0 .*'feat_norm'"):
        trial.should_prune()
    p2 = FnStarPruner(source="intermediate_values")
    trial = optuna.create_study(pruner=p2).ask()
    with pytest.raises(MissingMetricError, match="feat_norm"):
        p2.report(trial, {"epoch": 10, "nc1": math.nan})
    with pytest.raises(ValueError, match="source"):
        FnStarPruner(source="nope")
