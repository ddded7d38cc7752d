"""MLflowStudyCallback's hooks driven directly, on a real SQLite store, without Ray (the writes
that depend on the store also through an MLflow server on a real PostgreSQL: ``store``).

The study tests (test_study_run, test_faults, test_multinode) cover the callback inside Tune; these
pin down what is hard to reach from there: hooks only queue and the writer thread sends, a write
that fails is retried and nothing queued is lost, the saved state is consistent while the writer
runs, and a bug in the writer reaches the driver.
"""
from __future__ import annotations

import pickle
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
from ncstudy.adapters.mlflow.layout import TRIAL_TAG

EPOCHS = (5, 10, 15, 20)


@dataclass
class FakeTrial:
    """What the callback reads of a Tune ``Trial``."""

    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)
    last_result: dict[str, Any] = field(default_factory=dict)
    status: str = "RUNNING"

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def _result(epoch: int) -> dict[str, Any]:
    return {"epoch": epoch, "train": 0.5 + epoch / 100, "feat_norm": 1.0 + epoch / 50, "nc1": 1.0 / (1 + epoch),
            "t_nc": float("nan")}


def _callback(uri: str, name: str, tmp_path, **kw: Any) -> MLflowStudyCallback:
    MlflowClient(uri).create_experiment(name, artifact_location=str(tmp_path / "artifacts"))
    cb = MLflowStudyCallback(uri, name, study_params={"study.searcher": "grid"}, flush_interval_s=3600,
                             spill_dir=str(tmp_path), **kw)
    cb.setup()
    return cb


def _report(cb: MLflowStudyCallback, trial: FakeTrial, epochs=EPOCHS) -> None:
    for e in epochs:
        trial.last_result = _result(e)
        cb.on_trial_result(0, [trial], trial, trial.last_result)


def _child(client: MlflowClient, cb: MLflowStudyCallback, trial: FakeTrial):
    runs = client.search_runs([cb.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial.trial_id}'")
    assert len(runs) == 1
    return runs[0]


def _steps(client: MlflowClient, run_id: str, key: str = "train") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


class _Gate:
    """Holds the writer inside MLflow calls until released (the driver thread is never held)."""

    def __init__(self, cb: MLflowStudyCallback) -> None:
        self.open, self.entered = threading.Event(), threading.Event()
        real = cb.writer.client.create_run

        def create_run(*a: Any, **k: Any):
            self.entered.set()
            assert self.open.wait(60)
            return real(*a, **k)

        cb.writer.client.create_run = create_run


def _dead_client() -> MlflowClient:
    with socket.socket() as s:  # a port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        return MlflowClient(f"http://127.0.0.1:{s.getsockname()[1]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, mlflow_uri) -> str:
    """A tracking URI: the session's SQLite store, or an MLflow server on PostgreSQL (the cluster's
    default, tests/postgres.py)."""
    return mlflow_uri if request.param == "sqlite" else request.getfixturevalue("pg_mlflow_server").uri


def test_hooks_queue_and_the_writer_sends(store, tmp_path):
    mlflow_uri = store
    cb = _callback(mlflow_uri, "tracking_writer", tmp_path)
    client = MlflowClient(mlflow_uri)
    trials = [FakeTrial("a0"), FakeTrial("a1")]
    gate = _Gate(cb)
    for t in trials:
        cb.on_trial_start(0, trials, t)
    assert gate.entered.wait(60)  # the writer is inside MLflow, held there ...
    for t in trials:  # ... while the driver's hooks go on: they only queue
        _report(cb, t)
        t.status = "TERMINATED"
        cb.on_trial_complete(0, trials, t)
    # Tune pickles callbacks and saves their state while trials run: both work mid-write, and the
    # saved queue still holds every point not yet confirmed written.
    assert pickle.loads(pickle.dumps(cb)).trials.keys() == {"a0", "a1"}
    state = cb.get_state()
    assert sum(len(s["pending"]) for s in state["trials"].values()) == 2 * len(EPOCHS) * 3
    gate.open.set()
    assert cb.flush()
    for t in trials:
        run = _child(client, cb, t)
        assert _steps(client, run.info.run_id) == list(EPOCHS)
        assert run.info.status == "FINISHED"
        assert run.data.tags["status"] == "completed" and run.data.tags["stop_reason"] == "budget"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"trajectory.csv", "trajectory.png"}
    cb.on_experiment_end(trials)
    assert client.get_run(cb.parent_run_id).info.status == "FINISHED"
    assert cb.pending_points() == 0 and cb.writer.cpu_s > 0
    # trajectory.csv came from the rows kept in memory: the same as MLflow's own history
    run_id = cb.trials["a0"].run_id
    got, want = _trajectory(client, run_id, tmp_path), _frame(cb.writer.reader.history(run_id))
    assert [r.keys() for r in got] == [r.keys() for r in want] and len(want) == len(EPOCHS)
    assert all(g == pytest.approx(w, rel=1e-12) for g, w in zip(got, want))


def _trajectory(client: MlflowClient, run_id: str, tmp_path) -> list[dict[str, Any]]:
    from ncstudy.logs import read_log

    d = tmp_path / run_id
    d.mkdir()
    return _frame(read_log(client.download_artifacts(run_id, "trajectory.csv", str(d))).to_dict("records"))


def _frame(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: float(v) for k, v in r.items() if v == v and v is not None} for r in rows]  # NaN cells out


def test_resumed_callback_continues_the_same_runs(store, tmp_path):
    """A driver restart: the callback restored from Tune's saved state (pickled callback +
    ``get_state``) continues the study run and the trial's run, with no step twice."""
    mlflow_uri = store
    first = _callback(mlflow_uri, "tracking_resume", tmp_path)
    client = MlflowClient(mlflow_uri)
    trial = FakeTrial("e0")
    first.on_trial_start(0, [trial], trial)
    _report(first, trial, (5, 10))
    assert first.flush()
    blob, state = pickle.dumps(first), first.get_state()
    first.writer.stop()  # the old driver is gone

    second = pickle.loads(blob)
    second.set_state(state)
    second.setup()
    assert second.parent_run_id == first.parent_run_id
    second.on_trial_restore(0, [trial], trial)
    _report(second, trial, (5, 10, 15, 20))  # restored from an older checkpoint: 5, 10 again
    trial.status = "TERMINATED"
    second.on_trial_complete(0, [trial], trial)
    second.on_experiment_end([trial])
    run = _child(client, second, trial)
    assert run.info.run_id == state["trials"]["e0"]["run_id"] and run.info.status == "FINISHED"
    assert _steps(client, run.info.run_id) == list(EPOCHS)
    # this process saw only part of the history: the trajectory is read back from MLflow
    assert [r["epoch"] for r in _trajectory(client, run.info.run_id, tmp_path)] == list(EPOCHS)


def test_outage_queues_and_retries_then_writes_everything(mlflow_uri, tmp_path):
    cb = _callback(mlflow_uri, "tracking_outage", tmp_path)
    client = MlflowClient(mlflow_uri)
    trial = FakeTrial("b0")
    cb.on_trial_start(0, [trial], trial)
    assert cb.flush()
    run_id = cb.trials["b0"].run_id
    good, cb.writer._client = cb.writer._client, _dead_client()  # the server goes away
    _report(cb, trial)
    trial.status = "TERMINATED"
    cb.on_trial_complete(0, [trial], trial)
    assert cb.flush()
    # Nothing written, nothing lost, a backoff window; the hooks still only queue.
    assert cb.pending_points() == len(EPOCHS) * 3 and not cb.trials["b0"].finished
    assert cb.writer.down_since is not None and cb.writer.backoff_until > 0
    assert _steps(client, run_id) == [] and client.get_run(run_id).info.status == "RUNNING"

    cb.writer._client = good  # back
    cb.on_experiment_end([trial])  # waits for the retry, which writes the queue and the finish
    assert _steps(client, run_id) == list(EPOCHS)
    assert client.get_run(run_id).info.status == "FINISHED" and cb.writer.down_since is None


def test_outage_past_the_limit_spills_and_the_driver_raises(mlflow_uri, tmp_path):
    from ncstudy.adapters.mlflow.writer import TrackingUnavailable

    cb = _callback(mlflow_uri, "tracking_gone", tmp_path, max_outage_s=0.5)
    trial = FakeTrial("c0")
    cb.on_trial_start(0, [trial], trial)
    assert cb.flush()
    cb.writer._client = _dead_client()
    _report(cb, trial)
    deadline = time.monotonic() + 30  # backoff 0.5 s, then 1 s: past the limit within a few tries
    while not cb.writer.gave_up and time.monotonic() < deadline:
        cb.flush()
        time.sleep(0.1)
    assert cb.writer.gave_up and cb.pending_points() == 0
    spilled = (tmp_path / "unsent_metrics_tracking_gone.jsonl").read_text().splitlines()
    assert len(spilled) == len(EPOCHS) * 3
    with pytest.raises(TrackingUnavailable, match="unreachable"):
        cb.on_trial_result(0, [trial], trial, _result(25))
    with pytest.raises(TrackingUnavailable):
        cb.on_experiment_end([trial])


def test_a_bug_in_the_writer_reaches_the_driver(mlflow_uri, tmp_path):
    cb = _callback(mlflow_uri, "tracking_writer_bug", tmp_path)
    trial = FakeTrial("d0")
    cb.on_trial_start(0, [trial], trial)
    assert cb.flush()
    cb.trials["d0"].run_id = "0" * 32  # a run MLflow does not have: a bug, not an outage
    _report(cb, trial)
    cb.flush()
    with pytest.raises(Exception, match="not found"):
        cb.on_trial_result(0, [trial], trial, _result(25))


def test_a_trial_costs_three_store_requests_and_one_upload(mlflow_uri, tmp_path):
    """Params ride with the first metrics batch, end tags with the last, both trajectory artifacts
    go up in one upload to the artifact URI create_run returned: create_run, log_batch, the upload,
    update_run_info -- no run is looked up (no get_run) and nothing else is asked of the store."""
    cb = _callback(mlflow_uri, "tracking_requests", tmp_path, trial_params=lambda c: {"model.width": 64, "seed": 0})
    client = MlflowClient(mlflow_uri)
    store = cb.writer.client._tracking_client.store  # what the requests reach (a server's REST API, here SQL)
    calls: list[tuple[str, str]] = []
    for name in ("create_run", "log_batch", "update_run_info", "get_run", "set_tag", "get_metric_history",
                 "search_runs", "log_param", "log_metric"):
        real = getattr(store, name)

        def counted(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            out = _real(*a, **k)
            rid = out.info.run_id if _name == "create_run" else (k.get("run_id") or (a[0] if a else ""))
            calls.append((_name, str(rid)))
            return out

        setattr(store, name, counted)
    gate = _Gate(cb)  # the writer waits inside create_run while the trial reports and ends
    trial = FakeTrial("f0", config={"model.width": 64, "seed": 0})
    cb.on_trial_start(0, [trial], trial)
    assert gate.entered.wait(60)
    _report(cb, trial)
    trial.status = "TERMINATED"
    cb.on_trial_complete(0, [trial], trial)
    gate.open.set()
    assert cb.flush()
    run = _child(client, cb, trial)
    mine = sorted(n for n, r in calls if r == run.info.run_id)
    assert mine == ["create_run", "log_batch", "update_run_info"], calls
    assert cb.trials["f0"].artifact_uri == run.info.artifact_uri
    assert run.data.params == {"model.width": "64", "seed": "0"}
    assert run.data.tags["stop_reason"] == "budget" and run.data.tags["threshold"] == "none"
    assert _steps(client, run.info.run_id) == list(EPOCHS)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"trajectory.csv", "trajectory.png"}
    cb.on_experiment_end([trial])


def test_trial_picture_data_crossing_forecast_onset(tmp_path):
    """What trajectory.png shows, worked out once: fn* band, the first MSE-phase epoch with
    fn <= fn*, the forecast acted on (its row at forecast_epoch), the onset."""
    from ncstudy.adapters.mlflow.pictures import trial_view
    from ncstudy.plots import plot_trajectory

    rows = []
    for e in range(10, 210, 10):
        phase = 1 if e <= 50 else 2
        fn = 20.0 if phase == 1 else 1.0 + 10.0 * 0.9 ** (e - 50)
        r = {"epoch": e, "phase": phase, "train": 1.0, "feat_norm": fn, "nc1": 0.3 * 0.98 ** e}
        if e >= 120:
            r.update(t_nc_estimate=190.0 + (e - 120) / 10, t_nc_low=170.0, t_nc_high=220.0, p_onset=0.9,
                     forecast_epoch=140.0)
        rows.append(r)
    crossing = next(r["epoch"] for r in rows if r["phase"] == 2 and r["feat_norm"] <= 1.5)
    plot = {"title": "w64-s0", "band": {"value": 1.5, "low": 1.3, "high": 1.7, "source": "prior"},
            "t_nc": 200.0, "stop_reason": "onset", "keys": {"model.width": 64}}
    view = trial_view(rows, plot)
    assert view.crossing == crossing and view.t_nc == 200.0 and view.switch() == 55.0
    fc = view.forecast()
    assert (fc.made_at, fc.onset, fc.low, fc.high) == (140.0, 192.0, 170.0, 220.0)
    out = plot_trajectory(view, tmp_path / "trajectory.png")
    assert out.stat().st_size > 10_000


def _rows() -> list[dict[str, Any]]:
    return [{"epoch": e, "phase": 1 if e <= 50 else 2, "train": 1.0, "feat_norm": 2.0 + 8.0 * 0.97 ** e,
             "nc1": 0.3 * 0.98 ** e} for e in range(10, 310, 10)]


def _gone(pid: int, within_s: float) -> bool:
    """True once process ``pid`` has ended (or is a zombie) within ``within_s`` seconds."""
    from pathlib import Path

    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat[stat.rindex(")") + 2] == "Z":
            return True
        time.sleep(0.1)
    return False


def test_pictures_are_drawn_in_one_child_process_that_ends_with_the_driver(tmp_path):
    """trajectory.png is drawn in a child (not the driver's GIL), reused from picture to picture;
    a drawing error comes back with its traceback; close() ends the child; an idle child ends on
    its own and the next picture starts a fresh one; a function that cannot be sent is drawn here."""
    import os

    from ncstudy.adapters.mlflow.pictures import PictureError, PictureProcess, draw_trajectory

    pics = PictureProcess(idle_s=30)
    plot = {"title": "w64-s0", "t_nc": 250.0, "stop_reason": "onset"}
    out, cpu = pics.run(draw_trajectory, _rows(), tmp_path / "a.png", plot)
    pid = pics.pid
    assert out == tmp_path / "a.png" and out.stat().st_size > 10_000 and cpu > 0
    assert pid is not None and pid != os.getpid()
    pics.run(draw_trajectory, _rows(), tmp_path / "b.png", plot)
    assert pics.pid == pid and pics.started == 1 and (tmp_path / "b.png").is_file()
    with pytest.raises(PictureError, match="Traceback"):
        pics.run(draw_trajectory, None, tmp_path / "c.png", plot)  # no rows: the child's TypeError
    assert pics.pid == pid  # an error in a picture does not cost the process
    pics.close()
    assert pics.pid is None and _gone(pid, 10)
    value, _ = pics.run(lambda x: x + 1, 41)  # a lambda cannot travel: computed in this process
    assert value == 42 and pics.started == 1

    idle = PictureProcess(idle_s=0.5)
    idle.run(draw_trajectory, _rows(), tmp_path / "d.png", plot)
    first = idle.pid
    assert first is not None and _gone(first, 30)  # idle: it ended on its own
    idle.run(draw_trajectory, _rows(), tmp_path / "e.png", plot)
    assert idle.started == 2 and (tmp_path / "e.png").is_file()
    idle.close()


def test_the_picture_process_ends_when_the_driver_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    code = ("import sys, time\n"
            "from pathlib import Path\n"
            "from ncstudy.adapters.mlflow.pictures import PictureProcess, draw_trajectory\n"
            "p = PictureProcess(idle_s=600)\n"
            "p.run(draw_trajectory, [{'epoch': 10, 'nc1': 0.5, 'feat_norm': 3.0}], Path(sys.argv[1]), {})\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "x.png")], stdout=subprocess.PIPE, text=True)
    try:
        child = int(driver.stdout.readline())
        assert not _gone(child, 0.5)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
        assert _gone(child, 30), "the picture process outlived its driver"
    finally:
        if driver.poll() is None:
            driver.kill()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_log_batch_to_a_server_writes_what_the_client_would(backend, request, tmp_path):
    """The writer's own JSON log_batch (an MLflow server on SQLite, and on PostgreSQL) against
    MlflowClient.log_batch: the same metric history (values, timestamps, steps), params and tags;
    a bad run id is MLflow's error."""
    from mlflow.entities import Metric, Param, RunTag

    from ncstudy.adapters.mlflow.writer import StudyWriter

    mlflow_server = request.getfixturevalue("mlflow_server" if backend == "sqlite" else "pg_mlflow_server")
    if mlflow_server.proc is None:
        mlflow_server.start()
    client = MlflowClient(mlflow_server.uri)
    exp = client.create_experiment("tracking_json_batch")
    ours, theirs = (client.create_run(exp).info.run_id for _ in range(2))
    points = [("nc1", 0.5 / (1 + i), 1_700_000_000_000 + i, 5 * i) for i in range(40)] + [
        ("feat_norm", 3.25, 1_700_000_000_000, 0), ("big", 1e300, 1_700_000_000_001, 7)]
    params, tags = [("model.width", "64"), ("seed", "0")], {"stop_reason": "budget", "note": "é ✓"}
    w = StudyWriter(mlflow_server.uri, "tracking_json_batch")
    w.client.log_batch = lambda *a, **k: pytest.fail("the JSON path went through MlflowClient.log_batch")
    w.log_batch(ours, points, params, tags)
    client.log_batch(theirs, metrics=[Metric(*p) for p in points], params=[Param(*p) for p in params],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    a, b = client.get_run(ours).data, client.get_run(theirs).data
    assert a.params == b.params and {k: a.tags[k] for k in tags} == {k: b.tags[k] for k in tags} == tags
    for key in ("nc1", "feat_norm", "big"):
        ha = [(m.value, m.timestamp, m.step) for m in client.get_metric_history(ours, key)]
        hb = [(m.value, m.timestamp, m.step) for m in client.get_metric_history(theirs, key)]
        assert sorted(ha) == sorted(hb) and ha
    with pytest.raises(Exception, match="not found|RESOURCE_DOES_NOT_EXIST"):
        w.log_batch("0" * 32, points[:1], [], {})
