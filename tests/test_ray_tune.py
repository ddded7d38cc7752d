"""OnsetStopper (ncstudy.adapters.ray_tune) and the core it shares with the Optuna pruner
(ncstudy.adapters.stopper_core): decisions and result fields on synthetic trajectories, the messages a
user gets for each mistake, state round trips, the study file's stopper -- and a real Tune run with
ASHA, OptunaSearch and Ray's stock MLflowLoggerCallback, where every consumer sees the forecast."""
from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import pytest

from ncstudy.adapters.ray_tune import OnsetStopper
from ncstudy.forecast import Calibration, Prior, synthetic_trajectory
from ncstudy.study.runner import build_stopper
from ncstudy.study.spec import StudySpec

CONFIG = {"model": {"name": "mlp"}, "data": {"name": "synthetic"}}
GROUP = "mlp/synthetic"


def fn_star_prior() -> Calibration:
    return Calibration({GROUP: Prior(fn_star=1.1, lead=50.0)})


def feed(stopper: OnsetStopper, trial_id: str, traj, config=CONFIG):
    """Hand results to the stopper as Tune does; returns (stop epoch or None, the results)."""
    results = []
    for rec in traj:
        result = dict(rec, training_iteration=rec["epoch"] // 10, trial_id=trial_id, config=dict(config))
        results.append(result)
        if stopper(trial_id, result):
            return rec["epoch"], results
    return None, results


def test_stops_at_forecast_and_writes_it_into_the_result():
    stopper = OnsetStopper(forecaster="fn_star", mode="sweep", prior=fn_star_prior())
    stop, results = feed(stopper, "a", synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0))
    # fn = 1 + 2 exp(-(t-200)/30) <= 1.1 first at epoch 290; forecast = 290 + lead 50
    assert stop == 290
    last = results[-1]
    assert last["stop_reason"] == "forecast"
    assert last["t_nc_estimate"] == last["collapse_epoch"] == 340.0
    assert last["t_nc_low"] <= 340.0 <= last["t_nc_high"]
    # before the crossing there is no forecast: NaN, and no objective yet
    assert math.isnan(results[10]["t_nc_estimate"]) and math.isnan(results[10]["collapse_epoch"])
    assert "stop_reason" not in results[10]


def test_record_policy_forecasts_without_stopping_and_the_observed_onset_wins():
    stopper = OnsetStopper("record", forecaster="fn_star", mode="sweep", prior=fn_star_prior())
    stop, results = feed(stopper, "a", synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0))
    assert stop is None
    est = [(r["epoch"], r["t_nc_estimate"]) for r in results]
    assert math.isnan(est[27][1]) and est[28] == (290, 340.0) and est[33] == (340, 340.0)
    assert est[34] == (350, 350.0)  # the observed strict onset replaces the forecast
    assert results[-1]["t_nc_low"] == results[-1]["t_nc_high"] == 350.0 and results[-1]["p_onset"] == 1.0
    assert results[-1]["collapse_epoch"] == 350.0


def test_no_crossing_stops_at_onset_and_the_trial_keeps_its_own_objective():
    stopper = OnsetStopper(forecaster="fn_star", mode="sweep", prior=fn_star_prior(), objective="t_nc")
    traj = [dict(r, t_nc=350.0 if r["epoch"] >= 330 else math.nan)
            for r in synthetic_trajectory(t_nc=330, fn_end=1.3, tau=30.0)]
    stop, results = feed(stopper, "a", traj)
    assert stop == 330 and results[-1]["stop_reason"] == "onset"
    assert results[-1]["t_nc"] == 350.0  # finite: the trial's own value is kept
    assert results[-1]["t_nc_estimate"] == 330.0


def test_the_same_result_again_is_not_a_new_evaluation():
    """Tune hands a finished trial's last result back (done=True); nothing may change."""
    stopper = OnsetStopper("record", forecaster="fn_star", mode="sweep", prior=fn_star_prior())
    _, results = feed(stopper, "a", synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0)[:30])
    before = dict(results[-1])
    again = dict(results[-1], done=True)
    assert stopper("a", again) is False
    assert {k: again[k] for k in before} == before
    assert len(stopper.core.stopper.monitors["a"].records) == 30


def test_fn_alias_needs_no_mapping_and_misspelt_metric_names_list_the_valid_ones():
    stopper = OnsetStopper(forecaster="fn_star", mode="sweep", prior=fn_star_prior())
    traj = synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0)
    for r in traj:
        r["fn"] = r.pop("feat_norm")  # NCAccumulator's short name
    assert feed(stopper, "a", traj)[0] == 290
    with pytest.raises(ValueError) as e:
        OnsetStopper(metrics={"feat_nrm": "fn"})
    msg = str(e.value)
    assert "feat_nrm" in msg and "feat_norm" in msg and "nc1" in msg and "OnsetStopper" in msg
    with pytest.raises(ValueError, match="policy 'stop_early': choose from record, stop_at_forecast"):
        OnsetStopper("stop_early")
    with pytest.raises(ValueError, match="prior 'paper'"):
        OnsetStopper(prior="paper")


def test_conformal_needs_a_budget_and_says_how_to_give_it():
    stopper = OnsetStopper()
    with pytest.raises(ValueError, match=r"budget=<int>, budget='<config key>'"):
        stopper("a", {"epoch": 10, "nc1": 0.5, "feat_norm": 3.0, "config": {}})
    stopper = OnsetStopper(budget="train.epochs")
    with pytest.raises(ValueError, match=r"budget='train.epochs' is not a key of trial a's config \(lr\)"):
        stopper("a", {"epoch": 10, "nc1": 0.5, "feat_norm": 3.0, "config": {"lr": 0.1}})
    stopper = OnsetStopper(budget="train.epochs")
    assert stopper("a", {"epoch": 10, "nc1": 0.5, "feat_norm": 3.0, "config": {"train": {"epochs": 300}}}) is False
    assert stopper.core.stopper.monitors["a"].budget == 300.0
    with pytest.raises(ValueError, match="has no epoch"):
        OnsetStopper(budget=100)("b", {"nc1": 0.5, "config": {}})


def test_it_says_why_it_is_not_stopping_once(caplog):
    caplog.set_level(logging.WARNING, logger="ncstudy.stopper")
    stopper = OnsetStopper(budget=600, prior="none")
    for e in range(10, 110, 10):  # no NC1 at all
        stopper("t1", {"epoch": e, "feat_norm": 2.0, "train_loss": 0.1, "config": {}})
    no_nc1 = [r for r in caplog.records if "reports no 'nc1'" in r.message]
    assert len(no_nc1) == 1 and "measure(model, loader)" in no_nc1[0].message
    assert "feat_norm, train_loss" in no_nc1[0].message
    pool = [r for r in caplog.records if "calibration pool has 0 completed run(s)" in r.message]
    assert len(pool) == 1
    caplog.clear()
    stopper = OnsetStopper(budget=100, prior="none")
    for e in range(10, 110, 10):  # a cross-entropy-only run reporting phase 1: said when it reaches its budget
        assert not any("only phase 1" in r.message for r in caplog.records)
        stopper("t2", {"epoch": e, "phase": 1, "nc1": 0.5, "feat_norm": 2.0, "config": {}})
    stopper.on_trial_complete(0, [], type("T", (), {"trial_id": "t2", "last_result": {}})())
    phase = [r for r in caplog.records if "only phase 1" in r.message]
    assert len(phase) == 1 and "metrics={'phase': None}" in phase[0].message
    caplog.clear()
    # priors that match no group of the search
    stopper = OnsetStopper(forecaster="fn_star", mode="sweep", prior=Calibration({"mlp/mnist": Prior(1.05, 60.0)}))
    stopper("t", {"epoch": 10, "nc1": 0.5, "feat_norm": 2.0, "config": {"model": "mlp", "dataset": "mnist5k"}})
    stopper("u", {"epoch": 10, "nc1": 0.5, "feat_norm": 2.0, "config": {"model": "mlp", "dataset": "mnist5k"}})
    prior = [r for r in caplog.records if "has no prior" in r.message]
    assert len(prior) == 1 and "'mlp/mnist5k'" in prior[0].message and "mlp/mnist" in prior[0].message
    assert any("no fn* yet" in r.message for r in caplog.records)


def test_single_phase_runs_are_forecast_when_phase_is_not_reported():
    stopper = OnsetStopper("record", forecaster="fn_star", mode="sweep", prior=fn_star_prior(),
                            metrics={"phase": None})
    traj = synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0)
    for r in traj:
        r["phase"] = 1  # would hide every record from a phase-2 forecaster
    _, results = feed(stopper, "a", traj)
    assert results[28]["t_nc_estimate"] == 340.0


def test_learns_online_and_never_trusts_a_lead_from_fewer_runs_than_its_minimum():
    stopper = OnsetStopper(forecaster="fn_star", mode="sweep", prior="none", min_observations=2)
    spec = [(330, 1.0), (350, 1.0), (340, 1.2), (360, 0.97)]
    stops, trusted = [], []
    for i, (t, f) in enumerate(spec):
        stops.append(feed(stopper, f"t{i}", synthetic_trajectory(t_nc=t, fn_end=f, tau=20.0, seed=i))[0])
        est = stopper.calibration.estimate(GROUP)
        trusted.append((est.n_fn, est.n_gaps, est.trusted))
    # two runs give fn*, but only one of them crossed it before its onset: one gap is not a lead
    assert trusted[:3] == [(1, 1, False), (2, 1, False), (3, 2, True)]
    assert stops == [330, 350, 340, 270]
    assert stopper.calibration.estimate(GROUP).lead == 70.0


def test_state_round_trip_continues_identically():
    spec = [(330, 1.0), (350, 1.0), (340, 1.2), (360, 0.97)]
    trajs = [synthetic_trajectory(t_nc=t, fn_end=f, tau=20.0, seed=i) for i, (t, f) in enumerate(spec)]
    ref = OnsetStopper(forecaster="fn_star", mode="sweep", prior="none", min_observations=2)
    ref_out = [feed(ref, f"t{i}", tr)[1][-1] for i, tr in enumerate(trajs)]
    a = OnsetStopper(forecaster="fn_star", mode="sweep", prior="none", min_observations=2)
    for i in range(3):
        feed(a, f"t{i}", trajs[i])
    feed(a, "t3", [r for r in trajs[3] if r["epoch"] <= 250])  # the driver dies at epoch 250
    state = json.loads(json.dumps(a.get_state()))  # what Tune's experiment state keeps
    b = OnsetStopper(forecaster="fn_star", mode="sweep", prior="none", min_observations=2)
    b.set_state(state)
    stop, out = feed(b, "t3", [r for r in trajs[3] if r["epoch"] >= 240])  # restored from its epoch-240 checkpoint
    assert stop == 270 and out[-1]["collapse_epoch"] == 340.0
    assert json.dumps(out[-1], sort_keys=True) == json.dumps(ref_out[3], sort_keys=True)  # NaN-aware
    assert [r["epoch"] for r in b.core.stopper.monitors["t3"].records] == list(range(10, 271, 10))


def _study(fnstar: dict, objective: str = "collapse_epoch") -> StudySpec:
    return StudySpec.model_validate({"name": "s", "scheduler": {"name": "fnstar", "fnstar": fnstar},
                                     "objective": {"metric": objective}})


def test_the_study_file_builds_the_same_stopper(tmp_path):
    s = build_stopper(_study({"policy": "stop_at_forecast", "forecaster": "fn_star", "margin": 0.05,
                              "min_observations": 2, "objective": "t_nc",
                              "priors": {"mlp/mnist": {"fn_star": 1.05, "lead": 60}}, "paper_priors": True,
                              "metrics": {"feat_norm": "fn"}}))
    core = s.core
    assert core.stopper.policy == "stop_at_forecast" and core.names.feat_norm == "fn" and core.objective == "t_nc"
    assert s.calibration.priors["mlp/mnist"].fn_star == 1.05
    assert s.calibration.priors["mlp/mnist"].source == "study file"
    assert s.calibration.priors["resnet20/mnist"].fn_star == pytest.approx(5.867)
    assert core.stopper.forecaster_options["margin"] == 0.05 and s.calibration.min_observations == 2
    assert build_stopper(_study({}, objective="test")).core.objective is None
    assert build_stopper(_study({"objective": "t_nc"}, objective="test")).core.objective == "t_nc"
    assert build_stopper(StudySpec.model_validate({"name": "s"})) is None
    # budgets and groups come from the resolved trial config
    s = build_stopper(_study({"policy": "record"}))
    s("a", {"epoch": 10, "nc1": 0.5, "feat_norm": 3.0, "config": {"model.width": 64}})
    mon = s.core.stopper.monitors["a"]
    spec = _study({})
    assert mon.budget == spec.base.total_epochs and mon.group == "mlp/" + spec.base.data.name


# -- a real Tune run ------------------------------------------------------------------------------
def user_trainable(config):
    """A user's own trainable: reports its record per evaluation, nothing from ncstudy but the
    synthetic trajectory standing in for training (collapse later for larger weight decay)."""
    from ray import tune

    from ncstudy.forecast import synthetic_trajectory

    t_nc = int(round(330 + 2000 * config["weight_decay"], -1))
    for rec in synthetic_trajectory(t_nc=t_nc, fn_end=1.0, tau=30.0, epochs=500, seed=config["seed"]):
        # Tune checks a searcher's metric before the stopper runs: report it, the stopper fills it in
        tune.report(dict(rec, collapse_epoch=math.nan))


def test_real_tune_run_with_asha_optuna_and_stock_mlflow(ray_local, tmp_path):  # ray_local: tests/conftest.py
    from mlflow.tracking import MlflowClient
    from ray import cloudpickle, tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    stopper = OnsetStopper(forecaster="fn_star", mode="sweep", prior=fn_star_prior())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    searcher = OptunaSearch(seed=0, metric="collapse_epoch", mode="min")
    tuner = tune.Tuner(
        user_trainable,
        param_space={"weight_decay": tune.uniform(0.0, 0.05), "seed": 0, **CONFIG},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(metric="nc1", mode="min", time_attr="epoch", max_t=500, grace_period=500),
            search_alg=searcher, num_samples=3, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="fnstar", verbose=0, stop=stopper,
                                  callbacks=[stopper, MLflowLoggerCallback(tracking_uri=uri, experiment_name="x")]))
    grid = tuner.fit()
    assert not grid.errors and len(grid) == 3
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    for res in grid:
        m = res.metrics
        assert m["epoch"] == 290 and m["stop_reason"] == "forecast"  # stopped at the fn* crossing
        assert m["collapse_epoch"] == m["t_nc_estimate"] == 340.0
        last = json.loads((Path(res.path) / "result.json").read_text().splitlines()[-1])
        assert last["collapse_epoch"] == 340.0 and last["stop_reason"] == "forecast"
        logged = next(r for r in runs if r.data.tags["trial_name"].endswith(m["trial_id"]))
        assert logged.data.metrics["collapse_epoch"] == logged.data.metrics["t_nc_estimate"] == 340.0
    assert grid.get_best_result(metric="collapse_epoch", mode="min").metrics["collapse_epoch"] == 340.0
    assert [t.value for t in searcher._ot_study.trials] == [340.0, 340.0, 340.0]  # the searcher was told it


def test_paper_priors_cover_a_subset_of_a_paper_dataset():
    spec = StudySpec.model_validate({"name": "s", "base": {"data": {"name": "mnist5k"}},
                                     "scheduler": {"name": "fnstar", "fnstar": {"forecaster": "fn_star",
                                                                                "paper_priors": True}}})
    prior = build_stopper(spec).calibration.priors["mlp/mnist5k"]
    assert prior.fn_star == 1.052 and "applied to mnist5k" in prior.source


# -- incremental state (issue 17): journal segments + the running trials --------------------------------------
class _Trial:
    """What the stopper's callback hooks read of a Tune trial (no storage: the store is attached by hand)."""

    def __init__(self, trial_id: str, last_result: dict) -> None:
        self.trial_id, self.last_result, self.storage = trial_id, last_result, None


def _canon(state: dict) -> str:
    """The whole stopper state, trials in id order (a restore lists finished trials first)."""
    return json.dumps(dict(state, trials=sorted(state["trials"], key=lambda t: t["trial_id"])), sort_keys=True)


def test_incremental_state_restores_exactly_after_a_driver_kill(tmp_path):
    from ncstudy.adapters.ray_tune import FsStore

    spec = [(330, 1.0), (350, 1.0), (340, 1.2), (360, 0.97), (345, 1.05)]
    trajs = [synthetic_trajectory(t_nc=t, fn_end=f, tau=20.0, seed=i) for i, (t, f) in enumerate(spec)]

    def make() -> OnsetStopper:
        return OnsetStopper(forecaster="fn_star", mode="sweep", prior="none", min_observations=2)

    def run(s: OnsetStopper, tid: str, traj) -> list[dict]:
        stop, out = feed(s, tid, traj)
        s.on_trial_complete(0, [], _Trial(tid, out[-1]))
        return out

    a = make()
    a.core.attach(FsStore.at(str(tmp_path / "fnstar_state")))
    for i in range(2):
        run(a, f"t{i}", trajs[i])
    _, part = feed(a, "t2", [r for r in trajs[2] if r["epoch"] <= 200])
    saved = json.loads(json.dumps(a.get_state()))  # what Tune's experiment state keeps
    whole = _canon(a.core.stopper.to_dict())
    assert [t["trial_id"] for t in saved["live"]["trials"]] == ["t2"]  # finished trials are in the journal only
    # the driver goes on past the save (its next segments are written) and is killed
    after_a = run(a, "t2", [r for r in trajs[2] if r["epoch"] >= 190])
    after_a += run(a, "t3", trajs[3])
    a.get_state()
    assert a.core.segments > saved["segments"]

    b = make()
    b.set_state(saved)
    b.core.attach(FsStore.at(str(tmp_path / "fnstar_state")))  # what on_trial_start does
    assert _canon(b.core.stopper.to_dict()) == whole  # exactly the saved state; later segments ignored
    after_b = run(b, "t2", [r for r in trajs[2] if r["epoch"] >= 190])  # from its epoch-190 checkpoint
    after_b += run(b, "t3", trajs[3])
    assert json.dumps(after_b, sort_keys=True) == json.dumps(after_a, sort_keys=True)  # the same decisions
    # b's next save overwrites the stale segments; a restore of it is b again
    run(b, "t4", trajs[4])
    state_b = json.loads(json.dumps(b.get_state()))
    c = make()
    c.set_state(state_b)
    c.core.attach(FsStore.at(str(tmp_path / "fnstar_state")))
    assert _canon(c.core.stopper.to_dict()) == _canon(b.core.stopper.to_dict())
    # a restore without a hook first (the first result arrives before any trial starts) reads the store too
    d = make()
    d.set_state(state_b)
    assert d.get_state() == state_b  # unchanged until needed
    feed(d, "t5", trajs[0][:3])
    assert "t0" in d.core.stopper.monitors and d.core.stopper.monitors["t0"].released


def test_saved_state_and_journal_bytes_do_not_grow_with_finished_trials(tmp_path):
    from ncstudy.adapters.state_store import LocalStore

    s = OnsetStopper(forecaster="fn_star", mode="sweep", prior=fn_star_prior())
    s.core.attach(LocalStore(tmp_path / "st"))
    sizes, journal = [], []
    for i in range(24):
        traj = synthetic_trajectory(t_nc=330 + i % 5 * 10, fn_end=1.0, tau=20.0, seed=i)
        _, out = feed(s, f"t{i}", traj)
        s.on_trial_complete(0, [], _Trial(f"t{i}", out[-1]))
        before = s.core.bytes_written
        sizes.append(len(json.dumps(s.get_state())))
        journal.append(s.core.bytes_written - before)
    assert max(sizes) == min(sizes) or max(sizes) - min(sizes) < 64  # no running trial: the same few fields
    assert max(journal[12:]) <= 1.5 * min(journal[:12])  # one trial's records each, not the whole study
    done = [json.loads(line) for f in sorted((tmp_path / "st").glob("seg-*.jsonl"))
            for line in f.read_text().splitlines()]
    assert sorted(e["trial"]["trial_id"] for e in done if e["e"] == "done") == sorted(f"t{i}" for i in range(24))
    # finished monitors are released: one record each, no forecaster; what the summary needs stays
    m = s.core.stopper.monitors["t3"]
    assert m.released and len(m.records) == 1 and m.forecaster is None
    assert m.state().stop_reason == "forecast" and math.isfinite(m.fields()["t_nc_estimate"])


def test_a_capped_pool_keeps_a_reservoir_of_the_study_runs_and_replays_exactly():
    from ncstudy.forecast import ForecastStopper

    def make() -> ForecastStopper:
        return ForecastStopper("record", "fn_star", Calibration(min_observations=2), learn_batch=0.0, max_pool=3,
                               journal=True)

    s = make()
    base = s.to_dict()
    sizes = []
    for i in range(12):
        for r in synthetic_trajectory(t_nc=330 + 5 * i, fn_end=1.0, tau=20.0, seed=i):
            s.observe(f"t{i}", r, GROUP)
        s.complete(f"t{i}")
        sizes.append(s.calibration.n_runs())
    assert sizes[:3] == [1, 2, 3] and set(sizes[3:]) == {3} and s.seen == 12
    pooled = {r.run_id for _, r in s.calibration.runs()}
    assert pooled == {rid for _, rid in s.slots} and pooled != {"t0", "t1", "t2"}  # later runs took places
    assert set(s.calibration._obs[GROUP]) == pooled  # their fn* observations left with them
    events = s.drain()
    r = make()
    r.restore(base, events, s.live_dict())  # the journal replayed: the same draws, the same pool
    assert json.dumps(r.to_dict(), sort_keys=True) == json.dumps(s.to_dict(), sort_keys=True)
    t = make()
    t.load_dict(json.loads(json.dumps(s.to_dict())))
    assert t.slots == s.slots and t.seen == s.seen
