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


def spawn_cli(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ncstudy.cli", *args], cwd=cwd, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


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
