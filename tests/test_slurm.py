"""`ncstudy slurm` on a real single-node Slurm (tests/slurm.py): the written batch script runs a
small study to the end, and a study stopped through Slurm resumes when resubmitted with --resume.

Skipped (with the install command) where Slurm and munge are not installed; under NCSTUDY_CI=1 that
skip is a failure (tests/conftest.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm import LocalSlurm, missing
from study_helpers import child_runs, steps, synthetic_study, write_study

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture
def slurm(tmp_path):
    with LocalSlurm(tmp_path / "slurm") as s:
        yield s


def _write_script(folder: Path, study: Path, *flags: str, out: str = "job.sbatch", nodes: int = 1) -> Path:
    cpus = str((os.cpu_count() or 1) // nodes)
    r = subprocess.run([sys.executable, "-m", "ncstudy.cli", "slurm", str(study), "--nodes", str(nodes),
                        "--gpus-per-node", "0", "--cpus-per-node", cpus, "--time", "00:10:00", "--out", out, *flags],
                       cwd=folder, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"sbatch {out}" in r.stdout
    return folder / out


def _job_output(folder: Path, job: str) -> str:
    out = list(folder.glob(f"ncstudy-*-{job}.out"))
    return out[0].read_text() if out else "(no job output)"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_study_runs_as_a_two_node_slurm_job(tmp_path):
    """Two nodes (two slurmd on this host, a CPU each): Ray's head and the MLflow server on the first,
    a worker on the second, one trial on each (tracked over HTTP from both nodes)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("two Slurm nodes of a CPU each need 2 CPUs")
    work = tmp_path / "shared"
    work.mkdir()
    study = write_study(work, synthetic_study("slurm_small", mse_epochs=10, widths=(16, 32)))
    script = _write_script(work, study, nodes=2)
    text = script.read_text()
    assert "#SBATCH --signal=B:TERM@120" in text and "#SBATCH --nodes=2" in text
    assert "#SBATCH --gpus-per-node" not in text  # CPU-only: no GRES asked for

    with LocalSlurm(tmp_path / "slurm", nodes=2) as slurm:
        job = slurm.sbatch(script, cwd=work)
        info = slurm.wait(job, timeout=240)
        log = _job_output(work, job)
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log + slurm.logs()
        assert info["NodeList"] == "n[1-2]" and "2 node(s)" in log and "exit status 0" in log
        assert "MLflow tracking server: http://" in log
    uri = f"sqlite:///{work / 'ncstudy_results' / 'mlflow' / 'mlflow.db'}"  # the server's database
    client, parents, children = child_runs(uri, "slurm_small")
    assert len(parents) == 1 and len(children) == 2
    assert {r.info.status for r in parents + children} == {"FINISHED"}
    # one CPU per node and `resources: {cpu: 1}`: each trial ran on a node of its own
    assert len({r.data.tags["ray.node_id"] for r in children}) == 2
    for run in children:  # every evaluation once: 10 CE + 10 MSE epochs
        assert steps(client, run.info.run_id) == sorted(set(steps(client, run.info.run_id)))
        assert max(steps(client, run.info.run_id)) == 20
    assert (work / "ncstudy_results" / "slurm_small").is_dir()  # Tune storage: the submit folder
    assert not Path(f"/tmp/ncstudy-{job}").exists()  # the job's Ray temp dir is gone


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_stopped_job_resumes_when_resubmitted(slurm, tmp_path):
    """Both trials held past a checkpoint, the job stopped as at its time limit (SIGTERM to the batch
    script), then resubmitted with --resume: the same MLflow runs, every step once."""
    work, barrier = tmp_path / "shared", tmp_path / "barrier"
    work.mkdir()
    study = write_study(work, synthetic_study("slurm_resume", mse_epochs=10, widths=(16, 32)))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    first = _write_script(work, study, "--tracking-uri", uri, out="first.sbatch")
    held = f"{sys.executable} {ROOT / 'tests' / 'held_cli.py'} --barrier {barrier} --hold mid:12 --"
    job = slurm.sbatch(first, cwd=work, env={"NCSTUDY": held})
    deadline = time.monotonic() + 240
    while len(list(barrier.glob("reached-mid-*"))) < 2:  # both trials held at epoch 12
        info = slurm.job(job)
        assert info["JobState"] in ("PENDING", "RUNNING"), _job_output(work, job)
        assert time.monotonic() < deadline, _job_output(work, job)
        time.sleep(0.5)
    slurm.run("scancel", "--batch", "--signal=TERM", job)  # what --signal=B:TERM@120 sends
    info = slurm.wait(job, timeout=120)
    (barrier / "release-mid").touch()
    log = _job_output(work, job)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "143:0"), log
    assert "SIGTERM: stopping the study" in log and "exit status 143" in log
    client, parents, children = child_runs(uri, "slurm_resume")
    assert len(parents) == 1 and len(children) == 2
    assert {r.info.status for r in children} == {"KILLED"}

    again = _write_script(work, study, "--tracking-uri", uri, "--resume", out="again.sbatch")
    assert "RESUME=--resume" in again.read_text()
    job2 = slurm.sbatch(again, cwd=work)
    info = slurm.wait(job2, timeout=240)
    log2 = _job_output(work, job2)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log2
    assert job2 != job
    client, parents2, children2 = child_runs(uri, "slurm_resume")
    assert [r.info.run_id for r in parents2] == [r.info.run_id for r in parents]
    assert sorted(r.info.run_id for r in children2) == sorted(r.info.run_id for r in children)
    assert {r.info.status for r in parents2 + children2} == {"FINISHED"}
    for run in children2:
        logged = steps(client, run.info.run_id)
        assert logged == sorted(set(logged)) and max(logged) == 20  # every step once, to the end
