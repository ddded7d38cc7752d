"""OnsetPruner in real Optuna studies: the three-line loop, the forecast on the trial, learning
online, Optuna's own should_prune, and the messages for mistakes."""
from __future__ import annotations

import math

import optuna
import pytest

from ncstudy.adapters.optuna_pruner import OnsetPruner
from ncstudy.forecast import Calibration, Prior, synthetic_trajectory

optuna.logging.set_verbosity(optuna.logging.WARNING)
GROUP = "mlp/synthetic"
#: (onset epoch, final fn) of the trials in order; see tests/test_ray_tune.py for why four.
SPEC = [(330, 1.0), (350, 1.0), (340, 1.2), (360, 0.97), (380, 0.97)]


def objective_for(pruner: OnsetPruner, rename: dict[str, str] | None = None):
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("model", ["mlp"])
        trial.suggest_categorical("dataset", ["synthetic"])
        t_nc, fn_end = SPEC[trial.number]
        for rec in synthetic_trajectory(t_nc=t_nc, fn_end=fn_end, tau=20.0, seed=trial.number):
            rec = {(rename or {}).get(k, k): v for k, v in rec.items()}
            if pruner.should_stop(trial, rec):  # the three lines a user adds
                return pruner.value(trial)
        return pruner.value(trial)

    return objective


def test_three_lines_learn_online_and_report_the_forecast():
    # a sweep: every trial's onset is wanted (in a search -- the default when minimising -- trials that
    # cannot beat the first onset would be capped instead: tests/test_search_mode.py)
    pruner = OnsetPruner(forecaster="fn_star", mode="sweep", prior="none", budget=600, min_observations=2)
    study = optuna.create_study(direction="minimize", pruner=pruner, sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective_for(pruner), n_trials=5)
    trials = study.trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    reasons = [t.user_attrs["stop_reason"] for t in trials]
    assert reasons == ["onset", "onset", "onset", "forecast", "forecast"]
    assert [t.value for t in trials[:3]] == [330.0, 350.0, 340.0]  # the observed onsets
    for t in trials[3:]:  # the forecast: objective = t_nc_estimate, inside its interval
        a = t.user_attrs
        assert t.value == a["t_nc_estimate"] == 340.0 and a["t_nc_low"] <= 340.0 <= a["t_nc_high"]
    assert study.best_value == 330.0
    est = pruner.calibration.estimate(GROUP)
    assert est.n_fn == 3 and est.trusted  # forecast-stopped trials hide their onset: not learnt


def test_custom_names_prior_and_optunas_own_should_prune():
    cal = Calibration({GROUP: Prior(fn_star=1.1, lead=50.0)})
    pruner = OnsetPruner(forecaster="fn_star", mode="sweep", prior=cal, metrics={"nc1": "within_class"})
    study = optuna.create_study(pruner=pruner)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("model", ["mlp"])
        trial.suggest_categorical("dataset", ["synthetic"])
        for rec in synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0):
            rec["within_class"] = rec.pop("nc1")
            rec["fn"] = rec.pop("feat_norm")  # NCAccumulator's short name is understood
            pruner.should_stop(trial, rec)
            if trial.should_prune():  # Optuna's idiom works too
                raise optuna.TrialPruned()
        return 350.0

    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert t.user_attrs["stop_reason"] == "forecast" and t.user_attrs["t_nc_estimate"] == 340.0


def test_record_policy_never_stops_and_values_the_observed_onset():
    pruner = OnsetPruner("record", forecaster="fn_star", prior=Calibration({GROUP: Prior(1.1, 50.0)}))
    study = optuna.create_study(pruner=pruner)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("model", ["mlp"])
        trial.suggest_categorical("dataset", ["synthetic"])
        n = 0
        for rec in synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0):
            n += 1
            assert not pruner.should_stop(trial, rec)
        assert n == 60
        return pruner.value(trial)

    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.value == 350.0 and t.user_attrs["stop_reason"] == "budget" and t.user_attrs["t_nc_estimate"] == 350.0


def test_no_onset_is_the_censored_penalty():
    pruner = OnsetPruner("record", forecaster="fn_star", prior="none", budget="epochs")
    study = optuna.create_study(pruner=pruner)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_int("epochs", 300, 300)
        trial.suggest_categorical("model", ["mlp"])
        for rec in synthetic_trajectory(collapse=False, epochs=300):
            pruner.should_stop(trial, rec)
        return pruner.value(trial)

    study.optimize(objective, n_trials=1)
    assert study.trials[0].value == 600.0 and study.trials[0].user_attrs["stop_reason"] == "budget"


def test_mistakes_name_the_fix():
    with pytest.raises(ValueError) as e:
        OnsetPruner(metrics={"feature_norm": "fn"})
    assert "OnsetPruner" in str(e.value) and "feature_norm" in str(e.value) and "feat_norm" in str(e.value)
    pruner = OnsetPruner()  # conformal: needs each trial's budget
    trial = optuna.create_study(pruner=pruner).ask()
    with pytest.raises(ValueError, match="budget="):
        pruner.should_stop(trial, {"epoch": 10, "nc1": 0.5, "feat_norm": 2.0})
    pruner = OnsetPruner(budget=100)
    with pytest.raises(ValueError, match="no epoch"):
        pruner.should_stop(trial, {"nc1": 0.5})
    assert math.isnan(OnsetPruner(forecaster="fn_star").value(trial))  # nothing known, no budget
