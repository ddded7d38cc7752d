"""Search mode on real trajectories (ncstudy's corpus): a trial that cannot beat the earliest onset
seen so far is stopped -- exactly at the incumbent's epoch (capping) or earlier on a calibrated
P(T_NC < incumbent) <= alpha (cannot_win) -- its objective ranks after the incumbent, a trial that
can win runs to its onset, and the same decisions come out of the core, Ray Tune and Optuna."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import optuna
import pytest

from ncstudy.adapters.optuna_pruner import OnsetPruner
from ncstudy.adapters.ray_tune import OnsetStopper
from ncstudy.forecast import ForecastStopper
from ncstudy.forecast.calibration import default_prior
from ncstudy.runs import load_corpus

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "analysis" / "corpus"
GROUP, BUDGET = "mlp/mnist5k", 430
FAST = "mnist-d7-w128-relu-lr0.003-wd0.0001-s0"  # strict onset at epoch 110
SLOW = "mnist-d6-w128-relu-lr0.001-wd3e-05-s0"  # strict onset at epoch 260
NEVER = "mnist-d4-w128-gelu-lr0.001-wd0.0001-s0"  # no onset within its 430 epochs
RUNS = {t.run_id: t for t in load_corpus(CORPUS) if t.run_id in (FAST, SLOW, NEVER)}


def held_out_prior():
    """The packaged corpus prior without the three runs and their twin seeds (never their own analogs)."""
    return default_prior().without_runs(r[:-1] + s for r in RUNS for s in "01")


def feed(stopper: ForecastStopper, run: str):
    for rec in RUNS[run].records:
        d = stopper.observe(run, rec, GROUP, BUDGET)
        if d.stop:
            break
    return stopper.monitors[run]


def test_the_runs_are_what_the_tests_say():
    from ncstudy.onset import onset_of

    assert [onset_of(RUNS[r].records, relaxed_fallback=False).t_strict for r in (FAST, SLOW, NEVER)] == [110, 260, None]


def test_capping_stops_exactly_at_the_incumbent_and_ranks_after_it():
    s = ForecastStopper("stop_at_onset", "conformal", held_out_prior(), mode="search", budget=BUDGET, learn=False)
    fast = feed(s, FAST)
    assert (fast.stop_reason, fast.stopped_at, fast.objective(), s.incumbent()) == ("onset", 110, 110.0, 110.0)
    for run in (SLOW, NEVER):
        m = feed(s, run)
        assert (m.stop_reason, m.stopped_at, m.bound) == ("capped", 110, 110.0)
        assert m.objective() > 110.0  # after the incumbent, for any searcher and get_best_result
    assert s.incumbent() == 110.0


def test_cannot_win_stops_earlier_on_the_calibrated_probability():
    s = ForecastStopper("stop_at_forecast", "conformal", held_out_prior(), mode="search", budget=BUDGET, learn=False)
    assert feed(s, FAST).stop_reason == "onset"
    for run, at in ((SLOW, 90), (NEVER, 80)):
        m = feed(s, run)
        assert m.stop_reason == "cannot_win" and m.stopped_at == at < 110
        p = m.acted.p_before(s.incumbent() - 1)  # P(T_NC < 110) at the decision
        assert p <= m.forecaster.settings.alpha and m.acted.made_at == at
        assert m.bound == 109.0 and m.objective() > 110.0
        # the decision held at `confirm` (2) evaluations in a row: not at the previous one alone
        prev = [r for r in m.records if r["epoch"] < at][-1]["epoch"]
        assert m.would_at == at and prev >= 70  # 4 evaluations into the MSE phase (min_points), then 2 in a row


def test_a_trial_that_can_win_runs_to_its_onset_and_becomes_the_incumbent():
    s = ForecastStopper("stop_at_forecast", "conformal", held_out_prior(), mode="search", budget=BUDGET, learn=False)
    assert feed(s, SLOW).stop_reason == "onset" and s.incumbent() == 260.0
    fast = feed(s, FAST)  # forecast to collapse before 260: never stopped on a forecast in a search
    assert (fast.stop_reason, fast.stopped_at) == ("onset", 110) and s.incumbent() == 110.0
    s.offer_incumbent(100.0)  # another worker's trial collapsed earlier
    assert s.incumbent() == 100.0


def test_a_sweep_never_caps():
    s = ForecastStopper("stop_at_forecast", "conformal", held_out_prior(), mode="sweep", budget=BUDGET, learn=False)
    feed(s, FAST)
    slow = feed(s, SLOW)
    assert slow.stop_reason == "onset" and slow.stopped_at == 260


def test_search_state_round_trips_with_its_incumbent_and_censored_values():
    s = ForecastStopper("stop_at_forecast", "conformal", held_out_prior(), mode="search", budget=BUDGET, learn=False)
    feed(s, FAST)
    m = feed(s, SLOW)
    s.complete(FAST)
    s.complete(SLOW)
    t = ForecastStopper("stop_at_forecast", "conformal", mode="search", budget=BUDGET, learn=False)
    t.load_dict(json.loads(json.dumps(s.to_dict())))
    assert t.incumbent() == 110.0 and t.mode == "search"
    r = t.monitors[SLOW]
    assert (r.stop_reason, r.bound, r.objective()) == ("cannot_win", 109.0, m.objective())


# -- Ray Tune ---------------------------------------------------------------------------------------
def replay_trainable(config):
    """A trainable that replays a logged corpus run (the 'training'), reporting a record per evaluation."""
    from ray import tune

    from ncstudy.runs import load_runs

    (traj,) = load_runs([config["log"]])
    for rec in traj.records:
        tune.report(dict(rec, collapse_epoch=math.nan))


def test_tune_search_stops_what_cannot_win_and_get_best_result_is_the_true_best(ray_local, tmp_path):
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stopper = OnsetStopper(budget=BUDGET, prior=held_out_prior())  # the default mode: search (collapse_epoch)
    assert stopper.core.mode == "search"
    logs = [str(CORPUS / "runs" / f"{r}.csv.gz") for r in (FAST, SLOW, NEVER)]
    tuner = tune.Tuner(
        replay_trainable,
        param_space={"log": tune.grid_search(logs), "model": "mlp", "dataset": "mnist5k"},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),  # one at a time: FAST ends before SLOW starts
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="search", verbose=0, stop=stopper,
                                  callbacks=[stopper]))
    grid = tuner.fit()
    assert not grid.errors and len(grid) == 3
    by_run = {Path(r.config["log"]).name.removesuffix(".csv.gz"): r.metrics for r in grid}
    assert by_run[FAST]["collapse_epoch"] == 110.0 and by_run[FAST]["stop_reason"] == "onset"
    for run in (SLOW, NEVER):
        m = by_run[run]
        assert m["stop_reason"] == "cannot_win" and m["epoch"] == {SLOW: 90, NEVER: 80}[run]
        assert m["collapse_epoch"] > 110.0
    best = grid.get_best_result(metric="collapse_epoch", mode="min")
    assert Path(best.config["log"]).name.startswith(FAST)
    for r in grid:  # result.json holds the same objective
        last = json.loads((Path(r.path) / "result.json").read_text().splitlines()[-1])
        assert last["collapse_epoch"] == r.metrics["collapse_epoch"]


# -- Optuna -----------------------------------------------------------------------------------------
def _objective(pruner: OnsetPruner):
    def objective(trial: optuna.Trial) -> float:
        run = trial.suggest_categorical("run", [FAST, SLOW, NEVER])
        trial.suggest_categorical("model", ["mlp"])
        trial.suggest_categorical("dataset", ["mnist5k"])
        for rec in RUNS[run].records:
            if pruner.should_stop(trial, rec):
                break
        return pruner.value(trial)

    return objective


def test_optuna_search_and_a_second_worker_reads_the_incumbent_from_the_study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")  # minimise the pruner's value: a search
    for run in (FAST, SLOW):
        study.enqueue_trial({"run": run, "model": "mlp", "dataset": "mnist5k"})
    pruner = OnsetPruner(budget=BUDGET, prior=held_out_prior())
    study.optimize(_objective(pruner), n_trials=2)
    assert pruner.mode == "search"
    fast, slow = study.trials
    assert fast.value == 110.0 and fast.user_attrs["t_nc"] == 110 and fast.user_attrs["stop_reason"] == "onset"
    assert slow.user_attrs["stop_reason"] == "cannot_win" and slow.value > 110.0
    assert study.best_trial.number == fast.number
    # another worker: a fresh pruner on the same study knows the incumbent from its completed trials
    other = OnsetPruner(budget=BUDGET, prior=held_out_prior())
    study.enqueue_trial({"run": NEVER, "model": "mlp", "dataset": "mnist5k"})
    study.optimize(_objective(other), n_trials=1)
    never = study.trials[-1]
    assert other.core.stopper.incumbent() == 110.0
    assert never.user_attrs["stop_reason"] == "cannot_win" and never.value > 110.0


def test_optuna_maximising_study_is_a_sweep():
    study = optuna.create_study(direction="maximize")
    pruner = OnsetPruner(budget=BUDGET, prior=held_out_prior())
    study.enqueue_trial({"run": FAST, "model": "mlp", "dataset": "mnist5k"})
    study.optimize(_objective(pruner), n_trials=1)
    assert pruner.mode == "sweep"


@pytest.mark.parametrize("mode", ["search", "sweep"])
def test_mode_is_explicit_and_checked(mode):
    assert OnsetStopper(mode=mode, budget=BUDGET).core.mode == mode
    assert OnsetStopper(objective=None, budget=BUDGET).core.mode == "sweep"  # no collapse-time objective
    with pytest.raises(ValueError, match="mode 'fastest': choose from search, sweep"):
        OnsetStopper(mode="fastest")
