"""Tracking and search state on a real PostgreSQL (the cluster default, docs/cluster.md): an MLflow
server whose backend store is a PostgreSQL database, an Optuna search kept in another, a TPE study
whose driver is killed and resumed against both, and what ncstudy's preflight says when the
database is not there for the server."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from study_helpers import kill_tpe_driver_then_resume

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

VALID = Path(__file__).resolve().parent / "bad_inputs" / "valid.yaml"


def ncstudy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ncstudy.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_tpe_study_on_postgres_killed_then_resumed(tmp_path, cluster, postgres, pg_mlflow_server):
    """MLflow on PostgreSQL and the Optuna search in PostgreSQL (searcher_storage): the driver of a TPE
    study is SIGKILLed after two completed trials, and `--resume` completes it -- one MLflow study run,
    one run per trial, every completed trial in the search's database, no configuration twice."""
    import optuna

    assert cluster.wait_idle(), "trial actors of an earlier test still hold the workers"
    name = "tpe_pg"
    url = postgres.create_database("optuna")
    trials = kill_tpe_driver_then_resume(tmp_path, name, cluster.address, pg_mlflow_server.uri, url,
                                         searcher_storage=url)
    assert not (tmp_path / "res" / name / "optuna_journal.log").exists()  # the search is in PostgreSQL only
    # read back from PostgreSQL by Optuna itself, as another driver sharing the search would
    study = optuna.load_study(study_name=name, storage=url)
    assert [t.params for t in study.trials] == [t.params for t in trials]
    assert study.best_value == min(t.value for t in trials)


def test_server_whose_database_refuses_it(tmp_path, postgres):
    """An MLflow server given a wrong PostgreSQL password does not answer: it retries its database
    (for about an hour, with its port closed) and logs the password error. `ncstudy run` against its
    address finds nothing answering there: exit 3, with the fix, nothing written."""
    import time

    from mlflow_server import MlflowServer

    bad = MlflowServer(tmp_path / "server", backend_store_uri=postgres.url("postgres", password="wrong")).launch()
    try:
        # a state the server holds: retrying, its port closed (the retries go on for an hour)
        while "password authentication failed" not in bad.log_tail(100_000):
            assert bad.proc is not None and bad.proc.poll() is None, bad.log_tail()
            time.sleep(0.2)
        assert not bad.healthy()
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        p = ncstudy("run", str(VALID), "--tracking-uri", bad.uri, cwd=cwd)
        assert p.returncode == 3, p.stderr
        assert f"MLflow server at {bad.uri} does not answer" in p.stderr and "start it" in p.stderr, p.stderr
        assert list(cwd.iterdir()) == []
        assert bad.proc.poll() is None  # still retrying
    finally:
        bad.stop()


def test_server_whose_database_stopped(tmp_path, postgres, pg_mlflow_server):
    """PostgreSQL stops under a running MLflow server: the server still answers its health check,
    and ncstudy's preflight reads through it -- exit 3, naming the backend store; nothing written.
    Once PostgreSQL is back, the same preflight passes through the same server."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert pg_mlflow_server.healthy()
    postgres.stop()
    try:
        assert pg_mlflow_server.healthy()  # /health does not touch the database
        p = ncstudy("run", str(VALID), "--tracking-uri", pg_mlflow_server.uri, cwd=cwd)
        assert p.returncode == 3, (p.stdout, p.stderr)
        assert f"MLflow server at {pg_mlflow_server.uri} answers, but cannot read its backend store" in p.stderr
        assert "PostgreSQL on the head" in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert list(cwd.iterdir()) == []
    finally:
        postgres.start()
    from ncstudy.study.preflight import check_tracking

    check_tracking(pg_mlflow_server.uri, "valid_study")  # answers again through the same server
