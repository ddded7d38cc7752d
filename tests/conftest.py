"""Shared, expensive fixtures: one MLflow SQLite store and one local Ray instance per session."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
REFERENCE_LOGS = REFERENCE / "rupa2026_logs"
ARTIFACTS = ROOT / "test-artifacts"  # screenshots and other outputs worth keeping


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One SQLite store for the session (creating one costs ~4 s)."""
    d = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{d / 'mlflow.db'}"


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray instance (never attaches to another Ray on the machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS

