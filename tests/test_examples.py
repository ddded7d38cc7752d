"""The examples in examples/ run as a user runs them, and check their own outcome (the forecast
reaches get_best_result, result.json, MLflow and the Optuna study)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["tune_own_loop.py", "tune_asha.py", "optuna_own_loop.py"])
def test_example_runs_and_checks_itself(name, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES.parent))
    p = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "checked:" in p.stdout
