"""Issue 17 (scale): the progress view of a large study stays a few lines, and a small version of
``benchmarks/scale.py`` -- the real ``run_study`` path, Tune, the fn* stopper at stop_at_forecast,
a real ``mlflow server`` -- whose stopper state is written once per trial (not once per save) and
restores exactly from the experiment folder. Structure only: nothing here asserts a speed."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest

from ncstudy.study.progress import ProgressTable

ROOT = Path(__file__).resolve().parents[1]


class FakeTrial:
    def __init__(self, i: int, status: str, result: dict | None = None) -> None:
        self.trial_id, self.status, self.config = f"t{i:04d}", status, {"seed": i}
        self.last_result = result or {}


def study(n: int, running: int = 3, pending: int = 10) -> list[FakeTrial]:
    out = []
    for i in range(n):
        if i < n - running - pending:
            reason = ("forecast", "onset", "no_onset_forecast")[i % 3]
            out.append(FakeTrial(i, "TERMINATED", {"epoch": 300 + i % 50, "collapse_epoch": 400.0 - i % 97,
                                                   "stop_reason": reason, "t_nc_estimate": 400.0 - i % 97}))
        elif i < n - pending:
            out.append(FakeTrial(i, "RUNNING", {"epoch": 100, "feat_norm": 3.0, "nc1": 0.2}))
        else:
            out.append(FakeTrial(i, "PENDING"))
    return out


def table(**kw) -> ProgressTable:
    return ProgressTable(lambda t: f"r{t.config['seed']}", metric="collapse_epoch", mode="min",
                         summary_note="every trial: summary.csv on the study's MLflow run", **kw)


def test_progress_view_of_a_large_study_is_the_same_few_lines_at_any_size():
    views = {}
    for n in (100, 1000):
        trials = study(n)
        p = table()
        for t in trials[:8]:  # the last trials to end, newest last
            p.on_trial_complete(0, trials, t)
        views[n] = p.view(trials).splitlines()
        text = "\n".join(views[n])
        done = n - 13
        assert f"{done}/{n} trials done" in text
        assert f"3 running, 10 pending, {done} terminated (" in text and "forecast" in text
        shown = [ln.split()[0] for ln in views[n][3:] if ln.startswith("r")]
        # the running trials, then the 5 most recently ended (newest first)
        assert shown == [f"r{i}" for i in range(n - 13, n - 10)] + [f"r{i}" for i in (7, 6, 5, 4, 3)]
        best = min(trials[:done], key=lambda t: t.last_result["collapse_epoch"])
        assert f"best collapse_epoch so far: {best.last_result['collapse_epoch']:g} (r{best.config['seed']}" in text
    assert len(views[100]) == len(views[1000]) <= 14


def test_small_study_shows_every_trial_and_the_summary_of_a_large_one_is_short():
    trials = study(12, running=2, pending=2)
    p = table()
    assert len(p.view(trials).splitlines()) == 1 + 2 + 12  # header, column titles and rule, every trial
    assert len(p.summary(trials).splitlines()) == 1 + 2 + 12
    big = study(1000)
    s = p.summary(big).splitlines()
    assert len(s) <= 1 + 1 + 1 + 2 + 10 + 1 and s[-1].startswith("every trial: summary.csv")
    assert "best 10 by collapse_epoch (min):" in s


def test_the_counts_name_why_trials_ended_and_ask_budgets_only_of_trials_without_a_reason():
    asked = []

    def budget_of(t):
        asked.append(t.trial_id)
        return 30

    trials = [FakeTrial(0, "TERMINATED", {"epoch": 30, "stop_reason": "budget"}),
              FakeTrial(1, "TERMINATED", {"epoch": 5}),  # ASHA's cut: no reason of its own, before its budget
              FakeTrial(2, "TERMINATED", {"epoch": 5}), FakeTrial(3, "ERROR", {"epoch": 10}),
              FakeTrial(4, "TERMINATED", {"epoch": 30})]  # no reason, at its budget
    assert table(budget_of=budget_of).counts(trials).startswith("4 terminated (budget 2, scheduler 2, ")
    assert asked == ["t0001", "t0002", "t0004"]  # a trial's own reason, or its error, needs no budget
    assert table().counts(trials).startswith("4 terminated (budget 4, ")  # budgets unknown: as before


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("cluster", [False, True], ids=["one_node", "head_and_two_workers"])
def test_scale_benchmark_small_n_state_written_once_per_trial_and_restored_exactly(tmp_path, cluster):
    """benchmarks/scale.py at N = 10 (one driver, one MLflow server; on one local node, and with
    ``--cluster`` on a head with no CPU and two worker nodes): every finished trial and every
    learnt run is in the stopper's journal exactly once and no segment repeats another's events
    (what keeps bytes per trial flat as N grows; the benchmark measures the ratio), Tune's saved
    stopper state holds only running trials, and a fresh stopper restored from the experiment folder
    is the saved state exactly."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import scale
    from ncstudy.adapters.ray_tune import FsStore
    from ncstudy.study.runner import build_stopper
    from ncstudy.study.spec import StudySpec

    n = 10
    r = scale.run_one(n, tmp_path / "n", timeout_s=1000, check_restore=True, cluster=cluster)
    assert "error" not in r, r.get("error")
    assert r["nodes"] == ("head (0 CPU) + 2 workers (1 CPU)" if cluster else "1 (2 CPUs)")
    assert r["status"] == 0 and r["results"] >= 20 * n and sum(r["stop_reasons"].values()) == n
    assert r["mlflow_requests"] > 0 and r["stopper_saves"] > 0 and r["picture_cpu_s_per_trial"] > 0
    exp = tmp_path / "n" / "res" / f"scale{n}"
    segs = sorted((exp / "fnstar_state").glob("seg-*.jsonl"))
    assert (exp / "fnstar_state" / "base.json").is_file() and segs
    # the callback state Tune saved last: the stopper's part is small (running trials only)
    pkl = max(exp.glob("callback-states-*.pkl"), key=lambda p: p.stat().st_mtime)
    states = pickle.loads(pkl.read_bytes())
    state = next(s for s in (states.values() if isinstance(states, dict) else states)
                 if isinstance(s, dict) and "store" in s)
    assert state["live"]["trials"] == [] and state["segments"] <= len(segs)
    events = [json.loads(ln) for f in segs[:state["segments"]] for ln in f.read_text().splitlines()]
    done = [e["trial"]["trial_id"] for e in events if e["e"] == "done"]
    assert len(done) == len(set(done)) == n  # each finished trial written once
    learnt = [(e["group"], e["run"]["run_id"]) for e in events if e["e"] == "learn"]
    assert len(learnt) == len(set(learnt)) <= n  # each learnt run (if any) written once
    assert r["stopper_journal_bytes"] == sum(f.stat().st_size for f in segs) + (
        exp / "fnstar_state" / "base.json").stat().st_size  # nothing rewritten in place
    # a fresh stopper (as Tuner.restore builds one) restored from the folder: the saved state exactly
    spec = StudySpec.model_validate(scale.study_dict(n))
    fresh = build_stopper(spec)
    fresh.set_state(state)
    fresh.core.attach(FsStore.at(state["store"]))
    saved = json.loads((tmp_path / "n" / "saved_state.json").read_text())
    got = json.loads(json.dumps(fresh.core.stopper.to_dict()))
    key = lambda d: dict(d, trials=sorted(d["trials"], key=lambda t: t["trial_id"]))  # noqa: E731
    assert json.dumps(key(got), sort_keys=True) == json.dumps(key(saved), sort_keys=True)
