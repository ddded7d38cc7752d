"""Faults around a running study on a local multi-node cluster: the driver killed (SIGKILL) and
resumed, the MLflow server stopped and restarted, the MLflow server gone for good."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from mlflow_server import free_port
from study_helpers import (
    child_runs,
    kill_group,
    reached,
    saved_statuses,
    spawn_cli,
    steps,
    synthetic_study,
    wait_for,
    write_study,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def study(tmp_path, cluster, mlflow_server):
    """Start `ncstudy run` against the cluster; returns a launcher; every driver is killed by PID at the end."""
    assert cluster.wait_idle(), "trial actors of an earlier test still hold the workers"
    if mlflow_server.proc is None:
        mlflow_server.start()
    procs = []

    def launch(name: str, *extra: str, log: str = "driver.log", held: tuple[str, ...] = (), **over):
        path = tmp_path / f"{name}.yaml"
        if not path.exists():
            write_study(tmp_path, synthetic_study(name, **over))
        args = ["run", str(path), "--address", cluster.address, "--tracking-uri", mlflow_server.uri,
                "--storage", str(tmp_path / "res"), "--progress-interval", "5",
                # the tests poll MLflow for progress: no 5-s lag between a result and its point
                "--tracking-flush-interval", "0.2", *extra]
        p = spawn_cli(args, tmp_path, tmp_path / log, held=held, barrier=tmp_path / "barrier")
        procs.append(p)
        return p

    yield launch
    for p in procs:
        kill_group(p)


def tail(p: Path, n: int = 3000) -> str:
    return p.read_text()[-n:] if p.exists() else ""


def last_steps(uri: str, name: str) -> dict[str, int]:
    client, _, ch = child_runs(uri, name)
    return {c.data.tags["ncstudy.trial_id"]: max(steps(client, c.info.run_id), default=0) for c in ch}


def checkpoints(storage: Path, name: str) -> dict[str, int]:
    """Newest checkpoint index per trial, as the trials write them to Tune storage (no MLflow, no driver)."""
    out = {}
    for d in (storage / name).glob("trial_*/checkpoint_*"):
        t = d.parent.name
        out[t] = max(out.get(t, -1), int(d.name.split("_")[-1]))
    return out


def assert_complete(uri: str, name: str, n_trials: int, last_epoch: int) -> None:
    client, parents, children = child_runs(uri, name)
    assert len(parents) == 1, [p.info.run_id for p in parents]
    assert parents[0].info.status == "FINISHED"
    assert len(children) == n_trials, sorted(c.data.tags["ncstudy.trial_id"] for c in children)
    assert len({c.data.tags["ncstudy.trial_id"] for c in children}) == n_trials
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["stop_reason"] == "budget", c.data.tags
        for key in ("train", "nc1", "feat_norm"):
            assert steps(client, c.info.run_id, key) == list(range(5, last_epoch + 1, 5)), (c.info.run_name, key)


def test_driver_killed_then_resumed(tmp_path, study, mlflow_server):
    """SIGKILL the driver's process group mid-study; `--resume` (with the tracking server at a new
    address) completes it: the same parent run, exactly one run per trial, every step once."""
    name = "fault_driver"
    # both trials held right after their checkpoint at epoch 20 (a checkpoint every 2nd evaluation)
    p = study(name, mse_epochs=110, widths=(16, 32), log="first.log", held=("--hold", "k:20"))
    reached(tmp_path / "barrier", "k-*", p, count=2, log=tmp_path / "first.log")
    exp = tmp_path / "res" / name
    # Tune's state on storage has both trials (Tune copies it every few seconds; the trials stay held)
    assert wait_for(lambda: len(saved_statuses(exp)) == 2, timeout=300, every=0.2), tail(tmp_path / "first.log")
    assert p.poll() is None, tail(tmp_path / "first.log")  # the driver being killed is still running
    kill_group(p, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL  # killed, not finished
    before = last_steps(mlflow_server.uri, name)
    assert max(before.values(), default=0) < 120, before
    # The tracking server comes back at a new address (as after a replaced head node), same store:
    # `--resume --tracking-uri NEW` must write there, not to the address of the first launch.
    mlflow_server.stop()
    mlflow_server.port = free_port()
    mlflow_server.start()

    p2 = study(name, "--resume", log="second.log")
    assert p2.wait(timeout=300) == 0, tail(tmp_path / "second.log")
    assert_complete(mlflow_server.uri, name, 2, 120)


def test_driver_killed_with_the_fnstar_stopper_restores_its_state_exactly(tmp_path, study, mlflow_server):
    """The fn* stopper's incremental state (journal segments beside Tune's experiment state, the
    running trials in Tune's callback state) across a SIGKILL of the driver after one trial has
    finished: the resumed study completes, every finished trial is in the journal once, and a fresh
    stopper restored from the folder holds both trials to their last epoch."""
    import pickle

    from ncstudy.adapters.ray_tune import FsStore
    from ncstudy.study.runner import build_stopper
    from ncstudy.study.spec import StudySpec

    name = "fault_fnstar"
    over = dict(mse_epochs=110, widths=(16, 32), max_concurrent=1,
                scheduler={"name": "fnstar", "fnstar": {"policy": "record", "prior": "none"}})
    # one trial at a time: w16 runs to its end, then w32 is held after its checkpoint at epoch 20
    p = study(name, log="first.log", held=("--hold", "w32:20:model.width=32"), **over)
    reached(tmp_path / "barrier", "w32-*", p, log=tmp_path / "first.log")
    exp = tmp_path / "res" / name
    # the saved state has the finished trial (Tune copies it every few seconds; w32 stays held)
    assert wait_for(lambda: sorted(saved_statuses(exp).values()) == ["RUNNING", "TERMINATED"],
                    timeout=300, every=0.2), (saved_statuses(exp), tail(tmp_path / "first.log"))
    assert any(exp.glob("callback-states-*.pkl"))
    assert p.poll() is None, tail(tmp_path / "first.log")  # the driver being killed is still running
    kill_group(p, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    p2 = study(name, "--resume", log="second.log")
    assert p2.wait(timeout=300) == 0, tail(tmp_path / "second.log")
    assert_complete(mlflow_server.uri, name, 2, 120)

    pkl = max(exp.glob("callback-states-*.pkl"), key=lambda f: f.name)  # Tune's rule: the latest session's
    states = pickle.loads(pkl.read_bytes())
    state = next(s for s in (states.values() if isinstance(states, dict) else states)
                 if isinstance(s, dict) and "store" in s)
    assert state["live"]["trials"] == []
    segs = sorted((exp / "fnstar_state").glob("seg-*.jsonl"))[:state["segments"]]
    done = [json.loads(ln)["trial"]["trial_id"] for f in segs for ln in f.read_text().splitlines()
            if json.loads(ln)["e"] == "done"]
    assert len(done) == len(set(done)) == 2
    spec = StudySpec.model_validate(synthetic_study(name, **over))
    fresh = build_stopper(spec)
    fresh.set_state(state)
    fresh.core.attach(FsStore.at(state["store"]))
    mons = fresh.core.stopper.monitors
    assert len(mons) == 2 and all(m.released and m.last_epoch == 120 for m in mons.values())


def test_mlflow_down_then_back(tmp_path, study, mlflow_server):
    """Stop the MLflow server while trials train and start it again on the same port: training goes
    on meanwhile, and what was queued is written once it is back (every step once, one run each)."""
    name = "fault_mlflow_blip"
    storage = tmp_path / "res"
    barrier = tmp_path / "barrier"
    # 120 evaluations, a checkpoint every 2nd; both trials held after epoch 5, then after epoch 50
    p = study(name, mse_epochs=590, widths=(16, 32), held=("--hold", "a:5", "--hold", "b:50"))
    reached(barrier, "a-*", p, count=2, log=tmp_path / "driver.log")
    mlflow_server.stop()  # returns once the port is closed
    down_at = int(time.time() * 1000)
    at_stop = checkpoints(storage, name)
    (barrier / "release-a").write_text("")
    # training goes on without MLflow: both trials reach epoch 50, several checkpoints later
    reached(barrier, "b-*", p, count=2, log=tmp_path / "driver.log")
    now = checkpoints(storage, name)
    assert len(now) == 2 and all(now[t] >= at_stop.get(t, -1) + 2 for t in now), (at_stop, now)
    assert p.poll() is None
    up_at = int(time.time() * 1000)
    mlflow_server.start()
    (barrier / "release-b").write_text("")
    assert p.wait(timeout=300) == 0, tail(tmp_path / "driver.log")

    assert_complete(mlflow_server.uri, name, 2, 600)
    client, _, children = child_runs(mlflow_server.uri, name)
    for c in children:  # points reported while the server was down were written afterwards
        ts = [m.timestamp for m in client.get_metric_history(c.info.run_id, "train")]
        assert any(down_at < t < up_at for t in ts), c.info.run_name
    assert "MLflow unreachable" in (tmp_path / "driver.log").read_text()


def test_mlflow_down_for_good(tmp_path, study, mlflow_server):
    """The server stays down past --tracking-max-outage: the study stops with an error naming the
    tracking URI, what was not written is in a local JSONL file (every reported step is in MLflow or
    there, once), and `--resume` once the server is back completes the runs."""
    name = "fault_mlflow_gone"
    storage = tmp_path / "res"
    # w16 held after epoch 10, so the study is still running when the outage runs out, however
    # fast w32 trains (w32's reports and end are what the writer fails to send)
    p = study(name, "--tracking-max-outage", "2", mse_epochs=290, widths=(16, 32),
              held=("--hold", "h:10:model.width=16"))
    reached(tmp_path / "barrier", "h-*", p, log=tmp_path / "driver.log")
    mlflow_server.stop()
    rc = p.wait(timeout=300)  # a hang guard, not a speed assertion (the machine may be busy)
    out = (tmp_path / "driver.log").read_text()
    assert rc == 3, out[-3000:]
    spill = storage / name / f"unsent_metrics_{name}.jsonl"
    assert f"error: MLflow at {mlflow_server.uri} unreachable for over 2 s" in out and str(spill) in out, out[-3000:]
    rows = [json.loads(line) for line in spill.read_text().splitlines()]
    assert rows and {"trial_id", "run_id", "key", "value", "step", "timestamp"} <= set(rows[0])

    mlflow_server.start()
    client, _, children = child_runs(mlflow_server.uri, name)
    runs = {c.data.tags["ncstudy.trial_id"]: c for c in children}
    assert all(r["run_id"] == (runs[r["trial_id"]].info.run_id if r["run_id"] else None) for r in rows)
    for tid in {r["trial_id"] for r in rows} | set(runs):  # a trial may have no run yet: all in the file
        written = steps(client, runs[tid].info.run_id) if tid in runs else []
        spilled = sorted(r["step"] for r in rows if r["trial_id"] == tid and r["key"] == "train")
        assert written + spilled == list(range(5, 5 * (len(written) + len(spilled)) + 1, 5)), tid
        if spilled and tid in runs:
            assert runs[tid].info.status == "RUNNING"

    p2 = study(name, "--resume", log="resume.log")
    assert p2.wait(timeout=300) == 0, tail(tmp_path / "resume.log")
    assert_complete(mlflow_server.uri, name, 2, 300)
