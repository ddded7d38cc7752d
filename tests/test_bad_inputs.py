"""Every case of ``tests/bad_inputs/cases.yaml`` through the real command line, in a fresh folder:
the exit status, the message, and nothing written -- no MLflow store, no results, no Ray temp dir."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent / "bad_inputs"
CASES = yaml.safe_load((HERE / "cases.yaml").read_text())


def _closed_port() -> int:
    with socket.socket() as s:  # bound then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(name: str | None, tmp: Path) -> dict[str, str]:
    if name is None:
        return {}
    if name == "closed_port":
        return {"port": str(_closed_port())}
    if name == "deleted_experiment":
        from mlflow.tracking import MlflowClient

        c = MlflowClient(f"sqlite:///{tmp}/deleted.db")
        c.delete_experiment(c.create_experiment("valid_study", artifact_location=str(tmp / "art")))
        return {}
    if name == "saved_study":  # a first launch of changed_space.yaml with two seeds
        from ncstudy.study.preflight import STUDY_FILE
        from ncstudy.study.spec import load_study

        spec = load_study(HERE / "changed_space.yaml")
        first = spec.model_copy(update={"space": {"seed": spec.space["seed"].model_copy(update={"grid": [0, 1]})}})
        d = tmp / "results" / spec.name
        d.mkdir(parents=True)
        (d / STUDY_FILE).write_text(first.model_dump_json())
        return {}
    if name == "csv_folder":
        d = tmp / "csvs"
        d.mkdir()
        (d / "no_columns.csv").write_text((HERE / "no_columns.csv").read_text())
        return {}
    raise AssertionError(f"unknown setup {name}")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case, tmp_path):
    if case.get("needs_no_gpu"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    cwd, aux = tmp_path / "cwd", tmp_path / "aux"
    cwd.mkdir()
    aux.mkdir()
    values = {"dir": str(HERE), "tmp": str(aux), **_setup(case.get("setup"), aux)}
    args = [a.format(**values) for a in case["args"]]
    before_aux = sorted(p.relative_to(aux) for p in aux.rglob("*"))
    # a probe that hung (the old --address / tracking waits ran for 10 minutes) fails here
    with subprocess.Popen([sys.executable, "-m", "ncstudy.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""}) as child:
        try:
            out, err = child.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
    proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    assert proc.returncode == case["rc"], (proc.stdout, proc.stderr)
    assert case["says"] in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # nothing written: not in the working folder, not beside the inputs, no Ray temp folder left
    assert sorted(cwd.rglob("*")) == [], sorted(cwd.rglob("*"))
    assert sorted(p.relative_to(aux) for p in aux.rglob("*")) == before_aux
    # this command's own Ray session folder (named by its PID): other tests may start studies meanwhile
    assert not (Path(tempfile.gettempdir()) / f"ncstudy_ray_{child.pid}").exists()


def test_the_corpus_covers_every_command():
    assert {c["args"][0] for c in CASES} == {"run", "train", "analyze", "replay", "ui", "slurm"}
    assert len({c["name"] for c in CASES}) == len(CASES) and json.dumps(CASES)
