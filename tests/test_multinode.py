"""Multi-node behaviour on one machine: a head and two one-GPU workers (``ray.cluster_utils``),
MLflow over HTTP from a real ``mlflow server``; fractional GPUs and the loss of a worker node."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import child_runs, kill_group, reached, spawn_cli, steps, synthetic_study, wait_for, write_study

from ncstudy.adapters.mlflow.reader import HTTP_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def trial_results(storage: Path, study: str) -> dict[str, list[dict]]:
    """Tune's own per-trial result log (result.json in each trial dir of the shared storage)."""
    out = {}
    for f in (storage / study).glob("trial_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def test_fractional_gpu_trials_on_both_workers(tmp_path, monkeypatch, cluster, mlflow_server):
    """Four trials of {cpu: 0.5, gpu: 0.5} on two one-GPU workers: Ray grants each half a GPU and puts
    two trials on each worker's device; every write goes to MLflow over HTTP (no local tracking path is
    created). Asserted on what Ray granted and where, not on wall-clock overlap, which a busy machine
    does not guarantee."""
    from ncstudy.study.runner import RunOptions, run_study
    from ncstudy.study.spec import load_study

    monkeypatch.chdir(tmp_path)
    for k, v in HTTP_ENV.items():  # what the driver sets for itself; undone after this test
        monkeypatch.setenv(k, v)
    name = "mn_gpu_share"
    spec = load_study(write_study(tmp_path, synthetic_study(
        name, mse_epochs=70, widths=(16, 32), seeds=(0, 1), resources={"cpu": 0.5, "gpu": 0.5})))
    rc = run_study(spec, RunOptions(address=cluster.address, tracking_uri=mlflow_server.uri,
                                    storage=str(tmp_path / "res"), progress_interval_s=0, quiet=True))
    assert rc == 0

    client, parents, children = child_runs(mlflow_server.uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    workers = {n.node_id for n in cluster.workers}
    placed: dict[tuple[str, str], list] = {}
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["status"] == "completed"
        assert steps(client, c.info.run_id) == list(range(5, 81, 5))
        assert {"trajectory.csv", "trajectory.png"} <= {a.path for a in client.list_artifacts(c.info.run_id)}
        node, gpus = c.data.tags["ray.node_id"], c.data.tags["ray.gpu_ids"]
        assert node in workers and gpus == "0"  # each worker has one logical GPU, id 0
        assert c.data.tags["ray.gpu_share"] == "0.5"  # Ray granted half of it
        placed.setdefault((node, gpus), []).append(c)
    # two trials per GPU, on both worker nodes
    assert {k[0] for k in placed} == workers
    assert sorted(len(v) for v in placed.values()) == [2, 2]
    # the tracking URI was the only tracking location: nothing written next to the driver
    assert not any((tmp_path / p).exists() for p in ("mlruns", "mlflow.db", "mlartifacts"))


def test_worker_node_lost_mid_trial(tmp_path, cluster, mlflow_server):
    """Remove the worker node of a running trial after its first checkpoint: the trial is retried on
    the surviving node from that checkpoint, its MLflow run continues with every step exactly once."""
    cluster.ensure_workers(2)
    assert cluster.wait_idle()
    name = "mn_node_loss"
    storage = tmp_path / "res"
    study = write_study(tmp_path, synthetic_study(name, mse_epochs=110, widths=(16, 32), seeds=(0,),
                                                  failure={"max_retries": 2}))
    args = ["run", str(study), "--address", cluster.address, "--tracking-uri", mlflow_server.uri,
            "--storage", str(storage), "--progress-interval", "0",
            "--tracking-flush-interval", "0.2"]  # polled below: no 5-s lag in MLflow
    log = tmp_path / "driver.log"
    barrier = tmp_path / "barrier"
    # both trials held right after their checkpoint at epoch 20, one on each worker node
    p = spawn_cli(args, tmp_path, log, held=("--hold", "n:20"), barrier=barrier)
    victim: dict = {}
    try:
        reached(barrier, "n-*", p, count=2, log=log)

        def placed():  # the runs' node tags (written with their first points; the trials stay held)
            client, _, ch = child_runs(mlflow_server.uri, name)
            tagged = [c for c in ch if c.data.tags.get("ray.node_id")]
            if len(tagged) < 2:
                return False
            c = tagged[0]
            victim.update(run_id=c.info.run_id, node=c.data.tags["ray.node_id"], step=max(steps(client, c.info.run_id)),
                          trial_id=c.data.tags["ncstudy.trial_id"])
            return True

        assert wait_for(placed, timeout=180, every=0.2), log.read_text()[-3000:]
        assert p.poll() is None
        cluster.remove_worker(cluster.node_by_id(victim["node"]))
        (barrier / "release-n").write_text("")  # the other trial goes on; the victim is not held again
        assert p.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        kill_group(p)
        cluster.ensure_workers(2)

    client, parents, children = child_runs(mlflow_server.uri, name)
    assert len(parents) == 1 and len(children) == 2
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["stop_reason"] == "budget"
        assert steps(client, c.info.run_id) == list(range(5, 121, 5))  # no gap, no duplicate
    moved = client.get_run(victim["run_id"])
    assert moved.data.tags["ray.node_id"] != victim["node"]  # finished on the surviving node

    # Tune's view: the victim was restored once, from a checkpoint, not from epoch 0. Tune replaces
    # the driver's result.json with the copy on storage when it restarts a trial, so the rows
    # between the last copy (every 10 s) and the failure can be missing; the restart row is there.
    rows = trial_results(storage, name)[victim["trial_id"]]
    restarts = [r for r in rows if r["iterations_since_restore"] == 1 and r["epoch"] > 5]
    assert len(restarts) == 1, [(r["epoch"], r["iterations_since_restore"]) for r in rows]
    # resumed after a checkpoint taken before the failure (checkpoints every 10 epochs), not from 0
    restart = restarts[0]
    assert restart["epoch"] % 10 == 5 and restart["training_iteration"] > 1, restart["epoch"]
