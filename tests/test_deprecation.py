"""Public names that changed keep working for a release, with a warning that names the new one
(issue 26, item 7)."""
from __future__ import annotations

import importlib
import sys

import pytest

import ncstudy.analyze
import ncstudy.analyze.experiments
import ncstudy.analyze.pipeline
import ncstudy.analyze.presets


def _forget_old_package() -> None:
    """Import ``ncstudy.analysis`` afresh (a module warns once, when it is first imported)."""
    for name in [m for m in sys.modules if m == "ncstudy.analysis" or m.startswith("ncstudy.analysis.")]:
        del sys.modules[name]


def test_the_forecast_protocol_module_under_its_former_name():
    sys.modules.pop("ncstudy.forecast.core", None)
    with pytest.warns(DeprecationWarning, match=r"^module ncstudy\.forecast\.core is deprecated .*; use "
                                                r"ncstudy\.forecast\.protocol$"):
        from ncstudy.forecast.core import Forecast, first_crossing
    import ncstudy.forecast.protocol as protocol

    assert Forecast is protocol.Forecast and first_crossing is protocol.first_crossing


@pytest.mark.parametrize("old, new", [
    ("ncstudy.analysis.engine", "ncstudy.analyze.experiments"),
    ("ncstudy.analysis.core", "ncstudy.analyze.pipeline"),
    ("ncstudy.analysis.presets", "ncstudy.analyze.presets"),
    ("ncstudy.analysis.sources", "ncstudy.analyze.sources"),
    ("ncstudy.analysis.report", "ncstudy.analyze.report"),
    ("ncstudy.analysis.figures", "ncstudy.analyze.figures"),
])
def test_old_analysis_modules_are_the_new_ones_with_a_warning(old, new):
    _forget_old_package()
    with pytest.warns(DeprecationWarning) as record:
        module = importlib.import_module(old)
    messages = [str(w.message) for w in record]
    assert f"module {old} is deprecated and will be removed in a future release; use {new}" in messages
    assert "module ncstudy.analysis is deprecated and will be removed in a future release; use ncstudy.analyze" \
        in messages
    assert module is importlib.import_module(new)
    assert sys.modules[old] is sys.modules[new]


def test_old_import_statements_give_the_same_objects():
    _forget_old_package()
    with pytest.warns(DeprecationWarning) as record:
        from ncstudy.analysis.engine import AnalysisOptions, ExperimentSpec
        from ncstudy.analysis.presets import Preset, get_preset
    assert sorted(str(w.message).rsplit("use ", 1)[1] for w in record) == [
        "ncstudy.analyze", "ncstudy.analyze.experiments", "ncstudy.analyze.presets"]
    from ncstudy.analysis import analyze  # the package: already imported above, no second warning

    assert AnalysisOptions is ncstudy.analyze.experiments.AnalysisOptions
    assert ExperimentSpec is ncstudy.analyze.ExperimentSpec
    assert analyze is ncstudy.analyze.pipeline.analyze
    # a preset written against the old path is still a Preset of the new one
    assert isinstance(get_preset("rupa2026"), Preset) and Preset is ncstudy.analyze.presets.Preset


def test_the_warning_points_at_the_import_statement():
    _forget_old_package()
    source = "\n\nimport ncstudy.analysis.core\n"
    with pytest.warns(DeprecationWarning) as record:
        exec(compile(source, "old_script.py", "exec"), {})
    # both warnings (package, module) name the script's import line, not ncstudy's alias files
    assert [(w.filename, w.lineno) for w in record] == [("old_script.py", 3), ("old_script.py", 3)]


def test_nc_metrics_read_the_old_fn_key_with_a_warning():
    import json

    import torch

    from ncstudy.metrics import NCAccumulator, nc_metrics

    torch.manual_seed(0)
    feats, labels = torch.randn(60, 8), torch.arange(60) % 3
    w = torch.randn(3, 8)
    acc = NCAccumulator(3)
    acc.update(feats, labels)
    m = acc.compute(w)
    expected = float(feats.to(torch.float64).norm(dim=1).mean())  # fn: mean uncentred feature norm
    assert m["feat_norm"] == pytest.approx(expected, rel=1e-12)
    with pytest.warns(DeprecationWarning, match=r"key 'fn' is deprecated .*; use 'feat_norm'") as record:
        old = m["fn"]
    assert old == m["feat_norm"] and record[0].filename == __file__
    with pytest.warns(DeprecationWarning, match="use 'feat_norm'"):
        assert m.get("fn") == m["feat_norm"]
    assert nc_metrics(feats, labels, w)["feat_norm"] == pytest.approx(expected, rel=1e-12)
    # the old key is read, never stored: the record a caller writes has the new key only
    assert "fn" not in m and "fn" not in dict(m) and "fn" not in json.loads(json.dumps(m))
    with pytest.raises(KeyError):
        m["no_such_metric"]
    assert m.get("no_such_metric", -1.0) == -1.0


def test_the_former_stopper_name_constructs_the_onset_stopper_with_a_warning():
    from ncstudy.adapters.ray_tune import FnStarStopper, OnsetStopper
    from ncstudy.forecast import Calibration, Prior, synthetic_trajectory

    def stop_epoch(stopper) -> int | None:
        for rec in synthetic_trajectory(t_nc=350, fn_end=1.0, tau=30.0):
            result = dict(rec, trial_id="a", config={"model": {"name": "mlp"}, "data": {"name": "synthetic"}})
            if stopper("a", result):
                return rec["epoch"]
        return None

    prior = Calibration({"mlp/synthetic": Prior(fn_star=1.1, lead=50.0)})
    with pytest.warns(DeprecationWarning, match=r"^FnStarStopper is deprecated .*; use "
                                                r"ncstudy\.adapters\.ray_tune\.OnsetStopper$") as record:
        old = FnStarStopper(forecaster="fn_star", mode="sweep", prior=prior)
    assert record[0].filename == __file__
    assert isinstance(old, OnsetStopper)
    # the same stopper: fn = 1 + 2 exp(-(t-200)/30) <= 1.1 first at epoch 290 (tests/test_ray_tune.py)
    assert stop_epoch(old) == stop_epoch(OnsetStopper(forecaster="fn_star", mode="sweep", prior=prior)) == 290


def test_the_former_pruner_and_core_names_warn_and_name_themselves_in_errors():
    from ncstudy.adapters.optuna_pruner import FnStarPruner, OnsetPruner
    from ncstudy.adapters.stopper_core import FnStarCore, OnsetStopperCore

    with pytest.warns(DeprecationWarning, match=r"use ncstudy\.adapters\.optuna_pruner\.OnsetPruner$"):
        pruner = FnStarPruner(forecaster="fn_star", prior="none", budget=600)
    assert isinstance(pruner, OnsetPruner) and pruner.core.where == "FnStarPruner"
    with pytest.warns(DeprecationWarning, match=r"use ncstudy\.adapters\.stopper_core\.OnsetStopperCore$"):
        core = FnStarCore(budget=100)
    assert isinstance(core, OnsetStopperCore)
    # a bad argument is reported under the name the caller used
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"^FnStarPruner: metrics: unknown"):
        FnStarPruner(metrics={"feature_norm": "fn"})
    with pytest.raises(ValueError, match=r"^OnsetPruner: metrics: unknown"):
        OnsetPruner(metrics={"feature_norm": "fn"})


def test_the_split_common_module_still_gives_every_name_with_a_warning():
    import ncstudy.adapters.common as common
    from ncstudy.adapters import metric_names, state_store, stopper_core
    from ncstudy.forecast import settings

    for name, home in [("OnsetStopperCore", stopper_core), ("STATE_VERSION", stopper_core),
                       ("MetricNames", metric_names), ("LocalStore", state_store), ("StateStore", state_store),
                       ("DEFAULT_POLICY", settings)]:
        with pytest.warns(DeprecationWarning, match=rf"^ncstudy\.adapters\.common\.{name} is deprecated .*; use "
                                                    rf"{home.__name__}\.{name}$") as record:
            obj = getattr(common, name)
        assert obj is getattr(home, name) and record[0].filename == __file__
    with pytest.warns(DeprecationWarning, match=r"use ncstudy\.adapters\.stopper_core\.FnStarCore$"):
        from ncstudy.adapters.common import FnStarCore
    assert issubclass(FnStarCore, stopper_core.OnsetStopperCore)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        common.nothing_here  # noqa: B018


def test_ncstudy_itself_uses_no_deprecated_name():
    """Every module of the package imports without one of ncstudy's own deprecation warnings (the
    alias modules themselves excepted): the package uses the new names only."""
    import subprocess

    code = """
import importlib, warnings
from pathlib import Path
import ncstudy
warnings.filterwarnings("error", message=r".* is deprecated and will be removed in a future release; use ")
ALIASES = ("ncstudy.analysis", "ncstudy.forecast.core", "ncstudy.adapters.common")
root = Path(ncstudy.__file__).parent
names = [".".join(("ncstudy",) + p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
         for p in sorted(root.rglob("*.py"))]
names = [n for n in names if not n.startswith(ALIASES) and not n.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 50  # every module was imported, not a handful


@pytest.mark.parametrize("module, old, args, out, new", [
    ("ncstudy.analyze.report", "md_table", (["a", "b"], [[1, "x|y"]]), "| a | b |\n|---|---|\n| 1 | x\\|y |",
     "ncstudy.text.table(markdown=True)"),
    ("ncstudy.analyze.report", "f3", (1.23456,), "1.235", "ncstudy.text.value(x, fixed=nd)"),
    ("ncstudy.analyze.report", "f3", (None,), "–", "ncstudy.text.value(x, fixed=nd)"),
    ("ncstudy.analyze.report", "fint", (float("nan"),), "never", "ncstudy.text.value(x, fixed=0)"),
    ("ncstudy.analyze.report", "fp", (0.01234,), "0.0123", "ncstudy.text.value(p, fixed=4)"),
    ("ncstudy.analyze.report", "pm", (256.66, 11.5, 1), "256.7 ± 11.5", "ncstudy.text.mean_sd"),
    ("ncstudy.analyze.experiments", "fmt_value", (None,), "none", "ncstudy.text.value(v, 6, missing='none')"),
    ("ncstudy.study.progress", "render_table", ([{"trial": "t0", "epoch": 10}], ("trial", "epoch")),
     "trial  epoch\n-----  -----\nt0     10", "ncstudy.text.table"),
])
def test_former_formatters_keep_their_output_with_a_warning(module, old, args, out, new):
    fn = getattr(importlib.import_module(module), old)
    with pytest.warns(DeprecationWarning, match=rf"^{module}\.{old} is deprecated .*; use ") as record:
        assert fn(*args) == out
    assert str(record[0].message).endswith(f"use {new}") and record[0].filename == __file__


def test_the_pictures_former_forecast_builds_the_one_forecast_with_a_warning():
    import math

    from ncstudy.forecast import Forecast
    from ncstudy.plots import Forecast as OldForecast

    with pytest.warns(DeprecationWarning, match=r"^ncstudy\.plots\.Forecast is deprecated .*; "
                                                r"use ncstudy\.forecast\.Forecast$"):
        fc = OldForecast(140, None, None, None, 0.1)
    assert type(fc) is Forecast and math.isinf(fc.onset) and fc.decision == "no_onset" and fc.p_onset == 0.1


def test_the_two_former_run_types_construct_runs_with_a_warning():
    import pandas as pd

    from ncstudy.runs import Run

    recs = [{"epoch": 10, "nc1": 0.5, "feat_norm": 3.0}]
    with pytest.warns(DeprecationWarning, match=r"^Trajectory is deprecated .*; use ncstudy\.runs\.Run$") as record:
        from ncstudy.forecast.trajectories import Trajectory

        old = Trajectory("r", "g", recs, {"budget": 600}, "r.csv")  # the old positional call
    assert record[0].filename == __file__
    assert isinstance(old, Run) and (old.run_id, old.group, old.records, old.source, old.budget) == (
        "r", "g", recs, "r.csv", 600)
    with pytest.warns(DeprecationWarning, match=r"use ncstudy\.runs\.Run\.attrs$"):
        assert old.meta == {"budget": 600}
    frame = pd.DataFrame(recs)
    with pytest.warns(DeprecationWarning, match=r"^RunInput is deprecated .*; use ncstudy\.runs\.Run$"):
        from ncstudy.analyze import RunInput

        run = RunInput("r", "mlflow:r", {"model": "mlp", "dataset": "mnist"}, frame, origin="mlflow-artifact",
                       cell="c", tags={"stop_reason": "budget"})
    assert (run.source, run.group, run.cell, run.origin, run.tags) == (
        "mlflow:r", "mlp/mnist", "c", "mlflow-artifact", {"stop_reason": "budget"})
    with pytest.warns(DeprecationWarning, match=r"use ncstudy\.runs\.Run\.frame$"):
        assert run.trajectory is frame


def test_the_former_log_loaders_warn_and_load_runs(tmp_path):
    import ncstudy.analyze.sources as sources
    import ncstudy.forecast
    import ncstudy.forecast.trajectories as trajectories
    import ncstudy.runs as runs

    log = tmp_path / "width64_s3.csv"
    log.write_text("epoch,nc1,feat_norm\n10,0.5,7.5\n")
    with pytest.warns(DeprecationWarning, match=r"load_logs is deprecated .*; use ncstudy\.runs\.load_runs$"):
        (run,) = trajectories.load_logs([log], group="g")
    assert (run.run_id, run.group, run.attrs["seed"]) == ("width64_s3", "g", 3)
    for name in ("load_corpus", "read_manifest", "load_logs", "Trajectory"):
        with pytest.warns(DeprecationWarning, match=rf"^ncstudy\.forecast\.{name} is deprecated .*; use ncstudy\.runs"):
            getattr(ncstudy.forecast, name)
    for name in ("group_of", "frame_records", "log_stem", "GROUP_BY"):
        with pytest.warns(DeprecationWarning, match=rf"use ncstudy\.runs\.{name}$"):
            assert getattr(trajectories, name) is getattr(runs, name)
    for name in ("attrs_from_filename", "ATTR_KEYS", "NUMERIC_ATTRS", "PARAM_MAP", "MLP_ONLY"):
        with pytest.warns(DeprecationWarning, match=rf"use ncstudy\.runs\.{name}$"):
            assert getattr(sources, name) is getattr(runs, name)
    with pytest.warns(DeprecationWarning, match=r"use ncstudy\.runs\.read_run$"):
        assert sources.read_run_log(log)["feat_norm"].tolist() == [7.5]
