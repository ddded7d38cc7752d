"""``searcher: optuna`` keeps its Optuna study in a persistent storage (ncstudy.study.search): a
search that survives its driver. The searcher on a real journal file (real Optuna, Ray's
OptunaSearch underneath), and a TPE study whose driver is killed mid-study and resumed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import kill_tpe_driver_then_resume

from ncstudy.study.search import EXPERIMENT_ATTR, TUNE_TRIAL_ATTR, build_searcher, stored_trials


def space() -> dict:
    from ray import tune

    return {"lr": tune.loguniform(1e-3, 1e-1), "wd": tune.uniform(0.0, 1.0)}


def searcher(where: Path | str, experiment: str = "exp", resumed: dict[str, str] | None = None):
    s = build_searcher("s", 0, str(where), experiment, resumed or {})
    assert s.set_search_properties("loss", "min", space())
    return s


def states(where: Path | str, experiment: str = "exp") -> dict[str, str]:
    return {t.user_attrs[TUNE_TRIAL_ATTR]: t.state.name for t in stored_trials(str(where), "s")
            if t.user_attrs.get(EXPERIMENT_ATTR) == experiment}


def test_a_search_goes_on_from_its_storage(tmp_path):
    """A second searcher on the storage (a resumed driver) has every completed trial, continues the
    trial Tune resumes (same Optuna trial, same parameters), fails the one Tune never kept, leaves
    another experiment's trials alone, and proposes none of the first launch's configurations again
    -- which a sampler seeded as the first launch's would."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    where = tmp_path / "journal.log"
    first = searcher(where)
    asked = {f"t{i}": first.suggest(f"t{i}") for i in range(4)}
    for i in range(2):
        first.on_trial_complete(f"t{i}", {"loss": float(i)})
    other = searcher(where, experiment="other")  # another driver sharing the search, one trial running
    other_cfg = other.suggest("o0")
    assert states(where) == {"t0": "COMPLETE", "t1": "COMPLETE", "t2": "RUNNING", "t3": "RUNNING"}

    # the driver dies; Tune's saved state has t0-t2 (t3 was asked for just before the kill)
    again = searcher(where, resumed={"t0": "TERMINATED", "t1": "TERMINATED", "t2": "RUNNING"})
    assert states(where) == {"t0": "COMPLETE", "t1": "COMPLETE", "t2": "RUNNING", "t3": "FAIL"}
    assert states(where, "other") == {"o0": "RUNNING"}
    assert again.suggest("t2") == asked["t2"]  # linked to its Optuna trial, not asked again
    again.on_trial_result("t2", {"loss": 0.7, "training_iteration": 3})
    again.on_trial_complete("t2", {"loss": 0.5})
    again.on_trial_complete("t0", {"loss": 9.0})  # told already: Ray's searcher ignores it
    new = [again.suggest(f"u{i}") for i in range(6)]
    for i in range(6):
        again.on_trial_complete(f"u{i}", {"loss": 1.0 + i})
    done = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in stored_trials(str(where), "s")
            if t.state == optuna.trial.TrialState.COMPLETE}
    assert sorted(done) == ["t0", "t1", "t2", *[f"u{i}" for i in range(6)]]
    assert done["t0"].value == 0.0 and done["t2"].value == 0.5 and done["t2"].intermediate_values == {3: 0.7}
    configs = [json.dumps(c, sort_keys=True) for c in [*asked.values(), other_cfg, *new]]
    assert len(set(configs)) == len(configs), configs
    # what the resume avoids: a sampler seeded as the first launch's replays its first proposal
    replay = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0))
    replay.set_search_properties("loss", "min", space())
    assert replay.suggest("x") == asked["t0"]


def test_tunes_searcher_state_holds_a_record_and_an_older_pickle_is_copied_in(tmp_path):
    """Tune's searcher state file is a JSON record, not the search. A study an older ncstudy
    launched (Ray's pickle of an in-memory Optuna study) is copied into the empty storage on resume:
    its completed trial kept, its running one continued."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    old = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0))
    old.set_search_properties("loss", "min", space())
    asked = {t: old.suggest(t) for t in ("t0", "t1")}
    old.on_trial_complete("t0", {"loss": 2.0})
    pkl = tmp_path / "searcher-state-old.pkl"
    old.save(str(pkl))

    where = tmp_path / "journal.log"
    new = searcher(where, resumed={"t0": "TERMINATED", "t1": "RUNNING"})
    new.restore(str(pkl))
    assert states(where) == {"t0": "COMPLETE", "t1": "RUNNING"}
    assert {t.user_attrs[TUNE_TRIAL_ATTR]: t.params for t in stored_trials(str(where), "s")} == \
        {k: dict(v) for k, v in asked.items()}
    new.on_trial_complete("t1", {"loss": 1.0})
    assert states(where) == {"t0": "COMPLETE", "t1": "COMPLETE"}
    record = tmp_path / "searcher-state-new.pkl"
    new.save(str(record))
    assert json.loads(record.read_text()) == {"ncstudy_searcher": 1, "study_name": "s", "storage": str(where)}
    new.restore(str(record))  # the storage holds the search: nothing to read
    assert states(where) == {"t0": "COMPLETE", "t1": "COMPLETE"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tpe_driver_killed_then_resumed_continues_its_search(tmp_path, cluster, mlflow_server):
    """The journal file beside Tune's results (the default)."""
    assert cluster.wait_idle(), "trial actors of an earlier test still hold the workers"
    name = "tpe_killed"
    kill_tpe_driver_then_resume(tmp_path, name, cluster.address, mlflow_server.uri,
                                str(tmp_path / "res" / name / "optuna_journal.log"))


def test_where_the_search_lives(tmp_path):
    """The default journal beside Tune's results (also for a file:// --storage), a relative journal
    path from --storage, an RDB URL as given; with --storage on S3 a journal needs searcher_storage."""
    from ncstudy.errors import InputError
    from ncstudy.study.search import storage_location

    res = str(tmp_path / "res")
    assert storage_location(None, res, f"{res}/s") == f"{res}/s/optuna_journal.log"
    assert storage_location(None, f"file://{res}", f"file://{res}/s") == f"{res}/s/optuna_journal.log"
    assert storage_location("shared/j.log", res, f"{res}/s") == f"{res}/shared/j.log"
    assert storage_location("/mnt/j.log", "s3://b/t", "s3://b/t/s") == "/mnt/j.log"
    url = "postgresql+psycopg2://u:p@127.0.0.1:5432/optuna"
    assert storage_location(url, "s3://b/t", "s3://b/t/s") == url
    for given in (None, "j.log"):
        with pytest.raises(InputError, match="s3://b/t is not a local folder"):
            storage_location(given, "s3://b/t", "s3://b/t/s")
