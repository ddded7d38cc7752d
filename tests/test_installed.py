"""Installed, not only editable (issue 26, item 6): the wheel built from this checkout, installed into
a fresh virtual environment, runs the commands a new user runs first, from a directory outside the
checkout.

The fresh environment gets ncstudy from the wheel alone. Its dependencies (torch, Ray, MLflow, ...)
are not downloaded again: a ``.pth`` file puts this environment's ``site-packages`` on its path. A path
line in a ``.pth`` file does not run the ``.pth`` files of that folder, so the checkout's editable
finder is never installed there; the test asserts ``ncstudy.__file__`` lies in the fresh environment.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
REFERENCE_LOGS = ROOT.parent / "shared" / "reference" / "rupa2026_logs"


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} -> {proc.returncode}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build the wheel, install it into a fresh venv; returns the venv, its python, its ncstudy and a
    working directory outside the checkout."""
    base = tmp_path_factory.mktemp("installed")
    # Built from a copy of what the wheel is made of: an in-tree build would write build/ into the
    # checkout and could pack a stale build/lib (modules since removed) into the wheel.
    src = base / "src"
    shutil.copytree(ROOT / "ncstudy", src / "ncstudy", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    dist = base / "dist"
    # --no-build-isolation: build with this environment's setuptools (no download)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], cwd=base)
    wheels = list(dist.glob("ncstudy-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    py = venv / "bin" / "python"
    # this environment's pip, run by the fresh interpreter (--python): the wheel goes in before the
    # dependencies are on its path, so pip never sees this checkout's editable ncstudy
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
          "--no-compile", str(wheels[0])], cwd=base)
    fresh_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           cwd=base).stdout.strip())
    (fresh_site / "ncstudy_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "work"  # outside the checkout: nothing of it on the path
    work.mkdir()
    return {"wheel": wheels[0], "venv": venv, "python": py, "ncstudy": venv / "bin" / "ncstudy", "work": work}


def test_the_wheel_carries_the_package_data(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assert {"ncstudy/analyze/presets/rupa2026.py", "ncstudy/analyze/presets/rupa2026_runs.csv",
            "ncstudy/forecast/data/corpus_calibration.json"} <= names
    # the package alone: nothing of the checkout's research folders or tests
    assert not [n for n in names if not n.startswith(("ncstudy/", "ncstudy-"))]


def test_ncstudy_is_the_installed_one(installed):
    out = _run([str(installed["python"]), "-c",
                "import json, ncstudy, ncstudy.analyze.presets as p, ncstudy.forecast.calibration as c; "
                "print(json.dumps([ncstudy.__file__, p.known_presets(), str(c.DEFAULT_PRIOR), "
                "c.DEFAULT_PRIOR.is_file()]))"], cwd=installed["work"]).stdout
    file, presets, prior, prior_exists = json.loads(out)
    venv = str(installed["venv"].resolve())
    assert str(Path(file).resolve()).startswith(venv), file
    assert not str(Path(file).resolve()).startswith(str(ROOT))
    assert presets == ["rupa2026"]
    assert str(Path(prior).resolve()).startswith(venv) and prior_exists


def test_help(installed):
    out = _run([str(installed["ncstudy"]), "--help"], cwd=installed["work"]).stdout
    for command in ("run", "train", "replay", "analyze", "ui", "slurm"):
        assert command in out


def test_slurm_script_from_the_installed_template(installed):
    """`ncstudy slurm` fills the template shipped in the wheel (package data), with the venv's bin first."""
    study = shutil.copy(ROOT / "search_spaces" / "quickstart.yaml", installed["work"] / "quickstart.yaml")
    _run([str(installed["ncstudy"]), "slurm", str(study), "--nodes", "2", "--gpus-per-node", "1", "--time",
          "04:00:00", "--out", "quickstart.sbatch"], cwd=installed["work"])
    text = (installed["work"] / "quickstart.sbatch").read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --nodes=2" in text and "{{" not in text
    assert f"export PATH={installed['venv'] / 'bin'}:$PATH" in text


def test_run_dry_run_on_a_shipped_study(installed):
    study = shutil.copy(ROOT / "search_spaces" / "quickstart.yaml", installed["work"] / "quickstart.yaml")
    out = _run([str(installed["ncstudy"]), "run", "--dry-run", str(study)], cwd=installed["work"]).stdout
    assert "study quickstart: 8 trial(s), searcher=grid, scheduler=fnstar" in out
    assert "w256-wd0.001: mlp d5 w256 relu on mnist5k, 30 CE + 400 MSE epochs" in out
    assert not (installed["work"] / "mlruns").exists()  # a dry run starts nothing


@pytest.mark.skipif(not REFERENCE_LOGS.is_dir(), reason="reference logs (../shared/reference) not available")
def test_replay_on_the_reference_logs(installed):
    """Grouped by the rupa2026 file map and calibrated by the corpus prior, both from the installed package."""
    manifest = installed["venv"].glob("lib/python*/site-packages/ncstudy/analyze/presets/rupa2026_runs.csv")
    manifest = next(manifest)
    out = _run([str(installed["ncstudy"]), "replay", str(REFERENCE_LOGS.resolve()), "--manifest", str(manifest),
                "--calibration", "prior", "--json"], cwd=installed["work"]).stdout
    res = json.loads(out)
    assert res["options"]["prior"] == "corpus" and res["options"]["n_runs"] == 56
    (conformal,) = res["results"]
    assert conformal["summary"]["forecaster"] == "conformal" and conformal["summary"]["n_runs"] == 56
    assert {r["group"] for r in conformal["runs"]} == {"mlp/mnist", "mlp/cifar10", "resnet20/mnist",
                                                        "resnet20/cifar10"}
    assert {r["run_id"]: r["t_nc"] for r in conformal["runs"]}["cifar10_s0"] == 660


@pytest.mark.skipif(not REFERENCE_LOGS.is_dir(), reason="reference logs (../shared/reference) not available")
def test_analyze_with_the_shipped_preset(installed):
    out_dir = installed["work"] / "report"
    out = _run([str(installed["ncstudy"]), "analyze", "--preset", "rupa2026", "--logs", str(REFERENCE_LOGS.resolve()),
                "--out", str(out_dir)], cwd=installed["work"]).stdout
    # the paper's headline numbers (analysis/rupa2026/README.md)
    assert "1.052 +- 0.066, CV 6.2 %, 95 % CI [1.010, 1.093] (N = 12)" in out
    assert "273 / 250 / 297 / 340 epochs" in out
    report = (out_dir / "report.md").read_text()
    assert "1.052 +- 0.066" in report
    assert len(list((out_dir / "figures").glob("*.png"))) >= 10
