"""Helpers shared by the study tests: small synthetic study files and MLflow read-back."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def synthetic_study(name: str, mse_epochs: int = 60, widths=(16, 32), seeds=(0,), **over: Any) -> dict:
    d: dict[str, Any] = {
        "name": name,
        "base": {
            "device": "cpu", "threads": 1,
            # the collapsing synthetic recipe of tests/test_train.py
            "data": {"name": "synthetic", "num_classes": 4, "dim": 128, "n_train": 200, "n_test": 100,
                     "separation": 8.0},
            "model": {"name": "mlp", "depth": 2, "width": 32},
            "optimizer": {"name": "sgd", "lr": 0.02, "weight_decay": 1e-2, "schedule": "constant"},
            "ce_epochs": 10, "mse_epochs": mse_epochs, "batch_size": 32,
            "eval": {"nc_every": 5, "stop_at_onset": False},
        },
        "space": {"model.width": {"grid": list(widths)}, "seed": {"grid": list(seeds)}},
        "searcher": "grid", "scheduler": {"name": "fifo"}, "checkpoint_every": 2,
        "trial_name": "w{model.width}-s{seed}", "resources": {"cpu": 1},
    }
    d.update(over)
    return d


def write_study(tmp: Path, data: dict) -> Path:
    p = tmp / f"{data['name']}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def child_runs(uri: str, study: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(study)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ncstudy.role") == "study"]
    children = [r for r in runs if r.data.tags.get("ncstudy.role") == "trial"]
    return c, parents, children


def steps(client, run_id: str, key: str = "train") -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def spawn_cli(args: list[str], cwd: Path, log: Path, held: tuple[str, ...] = (),
              barrier: Path | None = None) -> subprocess.Popen:
    """`ncstudy ARGS` in its own session; with ``held`` (tests/held_cli.py options such as
    ``--hold NAME:EPOCH``), through tests/held_cli.py with its barrier folder ``barrier``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "ncstudy.cli", *args]
    if held:
        cmd = [sys.executable, str(ROOT / "tests" / "held_cli.py"), "--barrier", str(barrier or cwd / "barrier"),
               *held, "--", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def reached(barrier: Path, pattern: str, proc: subprocess.Popen, count: int = 1, log: Path | None = None) -> None:
    """Wait for ``count`` barrier files ``reached-<pattern>`` of tests/held_cli.py: a state the
    barrier holds (so waiting for it is no race), as long as the process runs."""
    while len(list(barrier.glob(f"reached-{pattern}"))) < count:
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()[-3000:] if log else ''}"
        time.sleep(0.1)


def saved_statuses(experiment: Path) -> dict[str, str]:
    """Trial id -> status in Tune's newest saved experiment state on storage."""
    from ncstudy.study.persist import saved_run

    return {t.trial_id: t.status for t in saved_run(str(experiment)).trials}


def wait_for(pred, timeout: float, every: float = 0.5) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(every)
    return False


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Stop a process we started and everything it started (its own session), by PID."""
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)


# -- a TPE search whose driver is killed (tests/test_search_storage.py, tests/test_postgres.py) -------
def tpe_study(name: str, **over) -> dict:
    """Five sequential TPE trials over two continuous keys (a repeated configuration could only be
    a replayed one), 15 evaluations each, a checkpoint every 2nd."""
    d = synthetic_study(name, mse_epochs=65, searcher="optuna", num_samples=5, max_concurrent=1, seed=3,
                        trial_name=None, space={"optimizer.lr": {"loguniform": [0.005, 0.05]},
                                                "optimizer.weight_decay": {"loguniform": [1.0e-4, 1.0e-2]}})
    d.update(over)
    return d


def kill_tpe_driver_then_resume(tmp_path: Path, name: str, address: str, tracking_uri: str, journal_or_url: str,
                                **over) -> list:
    """Launch the study held at its 3rd trial (2 completed), SIGKILL the driver, resume it; checks
    the search in its storage and returns its trials."""
    import json

    import optuna

    from ncstudy.study.search import EXPERIMENT_ATTR, TUNE_TRIAL_ATTR, stored_trials

    write_study(tmp_path, tpe_study(name, **over))
    args = ["run", str(tmp_path / f"{name}.yaml"), "--address", address, "--tracking-uri", tracking_uri,
            "--storage", str(tmp_path / "res"), "--progress-interval", "5"]
    barrier = tmp_path / "barrier"
    p = spawn_cli(args, tmp_path, tmp_path / "first.log", held=("--hold", "k:10:nth=3"), barrier=barrier)
    try:
        reached(barrier, "k-*", p, log=tmp_path / "first.log")
        exp = tmp_path / "res" / name
        # Tune's saved state has the two finished trials and the held one (it copies it every few seconds)
        assert wait_for(lambda: sorted(saved_statuses(exp).values()) == ["RUNNING", "TERMINATED", "TERMINATED"],
                        timeout=300, every=0.2), (saved_statuses(exp), (tmp_path / "first.log").read_text()[-3000:])
        before = {t.number: t for t in stored_trials(journal_or_url, name)}
        assert sorted(t.state.name for t in before.values()) == ["COMPLETE", "COMPLETE", "RUNNING"], before
        assert p.poll() is None
        kill_group(p, signal.SIGKILL)
        assert p.returncode == -signal.SIGKILL
    finally:
        kill_group(p)
    p2 = spawn_cli([*args, "--resume"], tmp_path, tmp_path / "second.log")
    try:
        assert p2.wait(timeout=480) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        kill_group(p2)

    trials = stored_trials(journal_or_url, name)
    # every completed trial is in the storage, once, with the Tune trial it was
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5, [t.state for t in trials]
    tune_ids = [t.user_attrs[TUNE_TRIAL_ATTR] for t in trials]
    assert sorted(tune_ids) == sorted(saved_statuses(exp)) and len(set(tune_ids)) == 5
    assert all(t.user_attrs[EXPERIMENT_ATTR] == str(exp) for t in trials)
    for n, t in before.items():  # the first launch's trials: the same, the held one continued (not asked again)
        assert trials[n].params == t.params and trials[n].user_attrs == t.user_attrs
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert trials[n].value == t.value
    # no configuration proposed twice (Tune's trials hold exactly what Optuna proposed)
    configs = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(configs)) == 5, configs
    runs = {tr: json.loads((exp / f"trial_{tr}" / "params.json").read_text()) for tr in tune_ids}
    assert all(runs[t.user_attrs[TUNE_TRIAL_ATTR]] == t.params for t in trials)
    # MLflow: one study run, one run per trial
    _, parents, children = child_runs(tracking_uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["ncstudy.trial_id"] for c in children) == sorted(tune_ids)
    assert all(c.info.status == "FINISHED" for c in children)
    return trials
