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
