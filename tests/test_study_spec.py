"""Study files: validated before Ray or MLflow start; bad files exit 2 naming file and key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ncstudy.cli import main
from ncstudy.errors import ConfigError
from ncstudy.study.spec import load_study

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))

GOOD = {
    "name": "t",
    "base": {"data": {"name": "synthetic"}, "model": {"depth": 2, "width": 16}, "ce_epochs": 2, "mse_epochs": 2},
    "space": {"model.width": {"grid": [16, 32]}, "seed": {"grid": [0, 1]}},
}


def _write(tmp_path, data) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _mutate(**changes):
    import copy

    d = copy.deepcopy(GOOD)
    for k, v in changes.items():
        cur = d
        parts = k.split("/")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = v
    return d


def test_good_file_plan(tmp_path):
    spec = load_study(_write(tmp_path, GOOD))
    assert spec.num_trials() == 4
    assert spec.trial_label({"model.width": 32, "seed": 1}) == "w32-s1"
    assert spec.config_for({"model.width": 32}).model.width == 32


@pytest.mark.parametrize(
    "data, needle",
    [
        (_mutate(**{"sheduler": "fifo"}), "sheduler: unknown key"),
        (_mutate(**{"base/model/widht": 3}), "base.model.widht: unknown key"),
        (_mutate(**{"base/data/name": "imagenet"}), "base.data.name"),
        (_mutate(**{"space/model.width": {"grid": [16, -1]}}), "space.model.width: value -1"),
        (_mutate(**{"space/data.name": {"grid": ["mnist5k", "svhn"]}}), "space.data.name: value 'svhn'"),
        (_mutate(**{"space/model.name": {"choice": ["mlp", "vit"]}}), "space.model.name: value 'vit'"),
        (_mutate(**{"space/model.widthh": {"grid": [1]}}), "space.model.widthh: unknown config key"),
        (_mutate(**{"space/optimizer.lr": {"loguniform": [0.1, 0.01]}}), "low must be < high"),
        (_mutate(**{"space/optimizer.lr": {"loguniform": [0, 0.01]}}), "bounds must be > 0"),
        (_mutate(**{"space/seed": {"grid": [0], "choice": [1]}}), "exactly one of"),
        (_mutate(num_samples=0), "num_samples"),
        (_mutate(num_samples="many"), "num_samples"),
        (_mutate(searcher="bayes"), "searcher"),
        (_mutate(searcher="optuna"), "'grid' cannot be used with searcher 'optuna'"),
        (_mutate(**{"resources/gpu": -0.5}), "resources.gpu"),
        (_mutate(**{"scheduler/name": "pbt"}), "scheduler.name"),
        (_mutate(**{"objective/mode": "minimise"}), "objective.mode"),
        (_mutate(**{"failure/max_retries": -1}), "failure.max_retries"),
        (_mutate(trial_name="w{model.wdth}"), "trial_name: unknown key 'model.wdth'"),
        (_mutate(name="bad name!"), "name"),
    ],
)
def test_bad_files_exit_2_naming_key(tmp_path, capsys, data, needle):
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_study(p)
    assert str(p) in str(e.value) and needle in str(e.value)
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(p) in err


def test_bad_file_starts_no_ray_and_writes_nothing(tmp_path):
    """In a fresh process: exit 2 before Ray or MLflow start, and nothing written."""
    import subprocess
    import sys
    import tempfile

    p = _write(tmp_path, _mutate(**{"base/data/name": "imagenet"}))
    proc = subprocess.Popen([sys.executable, "-m", "ncstudy.cli", "run", str(p)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "base.data.name" in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["study.yaml"]  # no mlflow.db, no results
    assert not (Path(tempfile.gettempdir()) / f"ncstudy_ray_{proc.pid}").exists()  # no Ray session


def test_not_yaml_and_missing_file(tmp_path, capsys):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    assert main(["run", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_shipped_space_passes_dry_run(path, capsys):
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"study {load_study(path).name}:")
