"""`ncstudy slurm` without a Slurm: bad flags exit 2 naming the flag before anything is written;
the written script is the shipped template filled in (valid bash, every placeholder replaced)."""
from __future__ import annotations

import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest
from study_helpers import synthetic_study, write_study

from ncstudy.cli import main
from ncstudy.cli.slurm import SIGNAL_LEAD_S


@pytest.fixture
def study(tmp_path) -> Path:
    return write_study(tmp_path, synthetic_study("slurm_cli"))


def _slurm(study: Path, *flags: str) -> list[str]:
    return ["slurm", str(study), *flags]


BASE = ("--nodes", "2", "--gpus-per-node", "4", "--time", "12:00:00")


@pytest.mark.parametrize("flags, flag, fix", [
    (("--nodes", "0", "--gpus-per-node", "1", "--time", "1:00:00"), "--nodes", "greater than or equal to 1"),
    (("--nodes", "1", "--gpus-per-node", "-1", "--time", "1:00:00"), "--gpus-per-node", "greater than or equal to 0"),
    (("--nodes", "1", "--gpus-per-node", "1", "--time", "90"), "--time", "HH:MM:SS"),
    (("--nodes", "1", "--gpus-per-node", "1", "--time", "00:01:59"), "--time", f"{SIGNAL_LEAD_S} s before"),
    ((*BASE, "--cpus-per-node", "0"), "--cpus-per-node", "greater than or equal to 1"),
    ((*BASE, "--partition", "gpu;rm -rf"), "--partition", "letters, digits"),
    ((*BASE, "--account", "a b"), "--account", "letters, digits"),
    ((*BASE, "--tracking-uri", "mlflow.db"), "--tracking-uri", "every node reaches"),
    ((*BASE[:4], "--time", "00:10:00", "--stop-before", "600"), "--stop-before", "leaves no time"),
    ((*BASE, "--stop-before", "0"), "--stop-before", "greater than or equal to 1"),
    (("--nodes", "two", "--gpus-per-node", "1", "--time", "1:00:00"), "--nodes", "invalid int value"),
    (("--gpus-per-node", "1", "--time", "1:00:00"), "--nodes", "required"),
])
def test_bad_flag_exits_2_naming_it_and_writes_nothing(flags, flag, fix, study, tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    assert main(_slurm(study, *flags, "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert flag in err and fix in err, err
    assert not out.exists()


def test_bad_study_file_exits_2_before_writing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsearcher: grid\nspace: {lr: {grid: [0.1]}}\nbogus_key: 1\n")
    out = tmp_path / "job.sbatch"
    assert main(_slurm(bad, *BASE, "--out", str(out))) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert not out.exists()


def test_template_is_package_data():
    text = files("ncstudy.cli").joinpath("templates/slurm.sbatch").read_text()
    assert text.startswith("#!/bin/bash") and "{{STUDY}}" in text


def test_written_script(study, tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    assert main(_slurm(study, *BASE, "--partition", "gpu", "--account", "lab-1",
                       "--tracking-uri", "http://mlflow.example:5000", "--out", str(out))) == 0
    assert f"sbatch {out}" in capsys.readouterr().out
    text = out.read_text()
    assert not re.search(r"\{\{|\}\}", text)
    sbatch = re.findall(r"^#SBATCH (\S+)", text, re.M)
    assert sbatch == ["--job-name=ncstudy-slurm_cli", "--nodes=2", "--ntasks-per-node=1", "--time=12:00:00",
                      f"--signal=B:TERM@{SIGNAL_LEAD_S}", "--output=ncstudy-%x-%j.out", "--gpus-per-node=4",
                      "--exclusive", "--partition=gpu", "--account=lab-1"]
    assert f"STUDY={study.resolve()}" in text
    assert "TRACKING_URI=http://mlflow.example:5000" in text and 'RESUME=""' in text
    assert 'STORAGE="$SLURM_SUBMIT_DIR/ncstudy_results"' in text
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(out)], capture_output=True).returncode == 0


def test_resume_script(study, tmp_path):
    out = tmp_path / "again.sbatch"
    assert main(_slurm(study, "--nodes", "1", "--gpus-per-node", "0", "--cpus-per-node", "8", "--time",
                       "2-00:00:00", "--storage", "/shared/me/tune", "--resume", "--out", str(out))) == 0
    text = out.read_text()
    assert "RESUME=--resume" in text and "STORAGE=/shared/me/tune" in text and "TRACKING_URI=''" in text
    assert "#SBATCH --cpus-per-task=8" in text and "#SBATCH --gpus-per-node" not in text
    assert "#SBATCH --exclusive" not in text


def test_stop_before(study, tmp_path):
    out = tmp_path / "long.sbatch"
    assert main(_slurm(study, *BASE, "--stop-before", "600", "--out", str(out))) == 0
    text = out.read_text()
    assert "#SBATCH --signal=B:TERM@600" in text
    assert "--time 12:00:00 --stop-before 600 --out" in text  # the command that wrote it, and the resume one
    assert "--stop-before 600 --resume --out" in text
