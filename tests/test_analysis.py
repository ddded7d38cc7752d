"""`ncstudy analyze`: the paper's numbers from the author's logs, bad input, figures, MLflow source.

The expected values below are typed in from ../shared/reference/README.md ("Numbers these logs
must reproduce"); each is asserted to the number of decimals the README prints (at most 3).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ncstudy.analyze import AnalysisOptions, analyze
from ncstudy.cli import main
from ncstudy.errors import InputError
from ncstudy.logs import read_log, write_log

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO.parent / "shared" / "reference" / "rupa2026_logs"
needs_logs = pytest.mark.skipif(not LOGS.is_dir(), reason=f"reference logs not found at {LOGS}")


# ---------------------------------------------------------------------------------------------
# The author's logs through the rupa2026 preset (one CLI run per test session)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def rupa(tmp_path_factory):
    out = tmp_path_factory.mktemp("rupa") / "report"
    assert main(["analyze", "--logs", str(LOGS), "--preset", "rupa2026", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def group(res: dict, exp: str, **keys) -> dict:
    rows = [g for g in res["experiments"][exp]["groups"] if all(g[k] == v for k, v in keys.items())]
    assert len(rows) == 1, (exp, keys, rows)
    return rows[0]


def runs_of(res: dict, exp: str, **keys) -> list[dict]:
    ids = set(res["experiments"][exp]["runs"])
    return [r for r in res["runs"] if r["run_id"] in ids and all(r[k] == v for k, v in keys.items())]


def r3(x: float, nd: int = 3) -> float:
    return round(x, nd)


@needs_logs
def test_fn_star_mnist_mlp5(rupa):
    # "1.052 +- 0.066, CV 6.2 %, 95 % CI [1.010, 1.093]", 12 runs
    _, res = rupa
    g = group(res, "grid", dataset="mnist", model="mlp")
    assert g["N"] == g["n_collapsed"] == 12
    assert r3(g["fn_mean"]) == 1.052
    assert r3(g["fn_sd"]) == 0.066
    assert r3(100 * g["fn_cv"], 1) == 6.2
    assert r3(g["fn_ci_low"]) == 1.010
    assert r3(g["fn_ci_high"]) == 1.093
    members = {r["run_id"] for r in runs_of(res, "grid", dataset="mnist", model="mlp")}
    assert members == {"mnist_twophase", "depth5_s1", "depth5_s2", "depth7_s0", "depth7_s1", "depth7_s2",
                       "wd1e-05_s0", "wd1e-05_s1", "wd1e-05_s2", "wd5e-05_s0", "wd5e-05_s1", "wd5e-05_s2"}


@needs_logs
def test_fn_star_other_pairs(rupa):
    _, res = rupa
    g = group(res, "grid", dataset="mnist", model="resnet20")  # 5.867 +- 0.034, CV 0.6 %
    assert (g["n_collapsed"], r3(g["fn_mean"]), r3(g["fn_sd"]), r3(100 * g["fn_cv"], 1)) == (3, 5.867, 0.034, 0.6)
    # "collapse at epoch 110, inside phase 1"
    assert {r["t_nc"] for r in runs_of(res, "grid", dataset="mnist", model="resnet20")} == {110}
    g = group(res, "grid", dataset="cifar10", model="mlp")  # relaxed: 0.900 +- 0.065, CV 7.3 %
    assert (g["n_collapsed"], r3(g["fn_mean"]), r3(g["fn_sd"]), r3(100 * g["fn_cv"], 1)) == (3, 0.900, 0.065, 7.3)
    assert g["threshold"] == "relaxed"
    g = group(res, "grid", dataset="cifar10", model="resnet20")  # 1.515 +- 0.008, CV 0.5 %, T_NC 660 each
    assert (g["n_collapsed"], r3(g["fn_mean"]), r3(g["fn_sd"]), r3(100 * g["fn_cv"], 1)) == (3, 1.515, 0.008, 0.5)
    assert [r["t_nc"] for r in runs_of(res, "grid", dataset="cifar10", model="resnet20")] == [660, 660, 660]


@needs_logs
def test_architecture_effect_and_kruskal(rupa):
    _, res = rupa
    grid = res["experiments"]["grid"]
    arch = {e["dataset"]: e["effect_pct"] for e in grid["effects"]["architecture"]}
    assert round(arch["mnist"]) == 458 and round(arch["cifar10"]) == 68  # MNIST +458 %, CIFAR-10 +68 %
    kw = grid["across"]["kruskal_fn"]
    # H = 15.75, df 3, p = 0.0013, epsilon^2 = 0.75 (n = 21). The 0.75 is eta^2_H = (H-k+1)/(n-k);
    # epsilon^2 = H/((n^2-1)/(n+1)) gives 0.788.
    assert (kw["n"], kw["k"], kw["df"]) == (21, 4, 3)
    assert r3(kw["H"], 2) == 15.75
    assert r3(kw["p"], 4) == 0.0013
    assert r3(kw["eta2_H"], 2) == 0.75
    assert r3(kw["epsilon2"]) == 0.788
    an = grid["across"]["anova_fn"]
    assert (an["df_between"], an["df_within"]) == (3, 17) and an["p"] < 1e-10
    add = grid["effects"]["additivity"][0]
    assert (add["model"], add["dataset"]) == ("resnet20", "cifar10")
    assert add["additive_prediction"] == pytest.approx(5.867 + 0.900 - 1.052, abs=2e-3)


@needs_logs
def test_sweeps_t_nc(rupa):
    _, res = rupa
    # depth 2 / 3 / 5 / 7: 273 / 250 / 297 / 340 (2, 3 relaxed, ext runs)
    assert [round(group(res, "depth", depth=d)["t_nc_mean"]) for d in (2, 3, 5, 7)] == [273, 250, 297, 340]
    assert [group(res, "depth", depth=d)["threshold"] for d in (2, 3, 5, 7)] == ["relaxed", "relaxed", "strict",
                                                                                  "strict"]
    assert all(r["run_id"].endswith("_ext") for r in runs_of(res, "depth") if r["depth"] in (2, 3))
    # activation ReLU / Tanh (relaxed) / GELU (relaxed, seeds 1-4): 297 / 220 / 265
    assert [round(group(res, "activation", activation=a)["t_nc_mean"]) for a in ("relu", "tanh", "gelu")] == \
        [297, 220, 265]
    assert group(res, "activation", activation="gelu")["seeds"] == "1,2,3,4"
    # weight decay 1e-5 / 5e-5 / 1e-4 / 5e-4: 380 / 290 / 297 / never (min nc1 about 0.03)
    assert [round(group(res, "weight_decay", weight_decay=w)["t_nc_mean"]) for w in (1e-5, 5e-5, 1e-4)] == \
        [380, 290, 297]
    never = group(res, "weight_decay", weight_decay=5e-4)
    assert never["n_collapsed"] == 0 and never["t_nc_mean"] is None
    assert r3(never["min_nc1_mean"], 2) == 0.03
    regimes = {r["weight_decay"]: r["regime"] for r in res["experiments"]["weight_decay"]["wd_regimes"]}
    assert regimes == {1e-5: "slow", 5e-5: "fastest", 1e-4: "near-fastest", 5e-4: "no collapse"}
    # width 128 / 256 / 512 / 1024: T_NC 383 / 327 / 310 / 257; fn* 1.241 / 1.125 / 1.096 / 1.080
    ws = [group(res, "width", width=w) for w in (128, 256, 512, 1024)]
    assert [round(g["t_nc_mean"]) for g in ws] == [383, 327, 310, 257]
    assert [r3(g["fn_mean"]) for g in ws] == [1.241, 1.125, 1.096, 1.080]
    assert [g["N"] for g in ws] == [3, 3, 3, 3]


@needs_logs
def test_consistency_with_author_tables(rupa):
    _, res = rupa
    statuses = [c["status"] for c in res["consistency"]]
    assert statuses and not [c for c in res["consistency"] if c["status"] == "differs"]
    assert sum(s.startswith("agrees") for s in statuses) >= 45
    lead = res["lead_consistency"]  # width-sweep fn crossings vs prediction_analysis.csv
    assert [c["status"] for c in lead if c["status"] != "no log in folder"] and \
        all(c["status"].startswith("agrees") for c in lead if c["status"] != "no log in folder")


@needs_logs
def test_report_and_figures(rupa):
    out, res = rupa
    report = (out / "report.md").read_text()
    assert "## Reproduced numbers" in report and "| 273 / 250 / 297 / 340 epochs |" in report
    for f in ("runs.csv", "groups.csv", "results.json"):
        assert (out / f).stat().st_size > 100
    figs = sorted((out / "figures").glob("*.png"))
    names = {f.stem for f in figs}
    assert {"trajectories_grid", "fn_star_grid", "tnc_vs_depth_depth", "tnc_vs_width_width",
            "tnc_vs_weight_decay_weight_decay", "activation_activation"} <= names
    for f in figs:
        assert_png(f)
        assert f"figures/{f.name}" in report


def assert_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert float(np.std(img[..., :3])) > 0.02  # not blank


@needs_logs
def test_threshold_and_phase_overrides():
    # --threshold relaxed-fallback --phase2-only override every cell of the preset
    a = analyze(logs=LOGS, preset="rupa2026", options=AnalysisOptions(threshold="relaxed-fallback", phase2_only=True))
    g = a.experiments["weight_decay"].groups.set_index("group")
    assert g.loc["0.0005", "n_collapsed"] == 3 and g.loc["0.0005", "t_nc_mean"] == 220  # relaxed crossing
    g = a.experiments["grid"].groups
    # ResNet-20 MNIST collapses inside phase 1: phase-2-only leaves only the tabulated seed 0
    assert g[g["group"] == "dataset=mnist, model=resnet20"]["n_collapsed"].item() == 1
    assert set(a.table.loc[a.table["origin"] == "log", "phase_rule"]) == {"phase 2"}


def test_phase_inference_for_files_without_phase(tmp_path):
    p = write_log([{"epoch": e, "nc1": 0.2 if e <= 200 else 0.005, "feat_norm": 1.0} for e in (190, 200, 210)],
                  tmp_path / "x.csv")
    df = pd.read_csv(p).drop(columns="phase")
    df.to_csv(p, index=False)
    assert "phase" not in read_log(p).columns
    assert read_log(p, phase1_epochs=200)["phase"].tolist() == [1, 1, 2]


def test_a_run_the_stopper_ended_early_is_censored_not_given_the_relaxed_onset():
    """A search stops trials that cannot win while NC1 is still above 0.01: their relaxed onset
    (NC1 < 0.05, reached early) must not rank them as collapsing first; a run that sat above 0.01 to
    its budget keeps the relaxed fallback of its cell."""
    from ncstudy.analyze.experiments import group_stats, no_onset_text, onset_table
    from ncstudy.runs import Run

    def traj(last: int) -> pd.DataFrame:  # NC1 0.2 -> 0.03: crosses 0.05 at epoch 60, never 0.01
        return pd.DataFrame([{"epoch": e, "phase": 2, "nc1": max(0.03, 0.2 - 0.003 * e), "feat_norm": 1.0,
                              "test": 0.9} for e in range(10, last + 1, 10)])

    runs = [Run("cut", attrs={"width": 128}, source="mlflow:cut", frame=traj(140), origin="mlflow-artifact",
                cell="a", tags={"stop_reason": "cannot_win"}),
            Run("budget", attrs={"width": 256}, source="mlflow:budget", frame=traj(400), origin="mlflow-artifact",
                cell="b", tags={"stop_reason": "budget"})]
    t = onset_table(runs, AnalysisOptions()).set_index("run_id")
    assert t.loc["budget", "t_relaxed"] == 60 and t.loc["cut", "t_relaxed"] == 60
    assert t.loc["budget", "t_nc"] == 60 and t.loc["budget", "threshold"] == "relaxed"
    assert pd.isna(t.loc["cut", "t_nc"]) and not t.loc["cut", "collapsed"]
    g = group_stats(t.reset_index(), ["width"]).set_index("width")
    assert g.loc[128, "n_cut"] == 1 and no_onset_text(g.loc[128]) == "stopped early"
    assert g.loc[256, "n_cut"] == 0 and g.loc[256, "t_nc_mean"] == 60


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, a message naming what is missing, nothing written
# ---------------------------------------------------------------------------------------------
def test_empty_folder(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    out = tmp_path / "out"
    assert main(["analyze", "--logs", str(tmp_path / "logs"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no *.csv" in err and str(tmp_path / "logs") in err
    assert not out.exists()


def test_missing_folder(tmp_path, capsys):
    assert main(["analyze", "--logs", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_csv_without_required_columns(tmp_path, capsys):
    d = tmp_path / "logs"
    d.mkdir()
    write_log(synthetic_rows(300, 1.1), d / "width128_s0.csv")
    pd.DataFrame({"epoch": [10, 20], "train": [0.9, 0.99], "feat_norm": [3.0, 2.0]}).to_csv(d / "broken_s1.csv",
                                                                                             index=False)
    out = tmp_path / "out"
    assert main(["analyze", "--logs", str(d), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "broken_s1.csv" in err and "nc1" in err and "missing required column" in err
    assert "width128_s0.csv" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_other_bad_input(tmp_path, capsys):
    d = tmp_path / "logs"
    d.mkdir()
    write_log(synthetic_rows(300, 1.1), d / "width128_s0.csv")
    assert main(["analyze", "--logs", str(d), "--preset", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["analyze", "--logs", str(d), "--group-by", "colour", "--out", str(tmp_path / "o")]) == 2
    assert "unknown --group-by key(s) colour" in capsys.readouterr().err
    assert main(["analyze", "--logs", str(d), "--preset", "rupa2026", "--out", str(tmp_path / "o")]) == 2
    assert "preset rupa2026 needs file(s) missing" in capsys.readouterr().err
    assert main(["analyze", "--out", str(tmp_path / "o")]) == 2  # no source: argparse usage error
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Generated runs: generic log folder, interventions
# ---------------------------------------------------------------------------------------------
def synthetic_rows(t_nc: int, fn_star: float, last: int | None = None, seed: int = 0) -> list[dict]:
    """Two-phase trajectory whose strict onset is exactly ``t_nc`` with fn there exactly ``fn_star``."""
    rows = []
    rng = np.random.default_rng(seed)
    for e in range(10, (last or t_nc) + 1, 10):
        phase = 1 if e <= 200 else 2
        if phase == 1:
            nc1, fn = 0.3 - 0.001 * e, 15.0 - 0.01 * e
        else:
            nc1 = 0.009 if e >= t_nc else 0.01 * (1 + (t_nc - e) / 100)
            fn = fn_star + 0.002 * max(t_nc - e, 0)
        rows.append({"epoch": e, "phase": phase, "train": 0.999, "test": 0.98 + 0.001 * rng.random(),
                     "nc1": nc1, "nc2": 0.1, "nc3": 0.1, "feat_norm": fn})
    return rows


def test_generic_folder_group_by_width(tmp_path, capsys):
    d = tmp_path / "logs"
    d.mkdir()
    for w, ts in ((128, (380, 390, 400)), (256, (320, 330, 340))):
        for s, t in enumerate(ts):
            write_log(synthetic_rows(t, 1.0 + w / 1000 + s / 100), d / f"width{w}_s{s}.csv")
    out = tmp_path / "out"
    assert main(["analyze", "--logs", str(d), "--group-by", "width", "--out", str(out), "--no-figures", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads((out / "results.json").read_text())
    g = {x["width"]: x for x in res["experiments"]["study"]["groups"]}
    assert g[128]["t_nc_mean"] == 390 and g[256]["t_nc_mean"] == 330
    assert g[128]["fn_mean"] == pytest.approx(1.128 + 0.01)
    assert res["experiments"]["study"]["lead"]["summary"]["fit"]["key"] == "width"


# ---------------------------------------------------------------------------------------------
# MLflow source: a small study in a temp SQLite store, laid out as docs/CONTRACTS.md says
# ---------------------------------------------------------------------------------------------
STUDY = "analysis-synthetic-study"
# (width, intervention_alpha, seed, T_NC, fn*)
TRIALS = [(128, None, s, 380 + 10 * s, 1.20 + 0.02 * s) for s in range(3)] + \
         [(256, None, s, 320 + 10 * s, 1.10 + 0.02 * s) for s in range(3)] + \
         [(256, 3.0, s, 260 + 10 * s, 1.50 + 0.02 * s) for s in range(3)]


@pytest.fixture(scope="session")
def mlflow_study(request, tmp_path_factory):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("analysis_mlflow")
    try:  # the session's shared SQLite store (tests/conftest.py) when there is one
        uri = request.getfixturevalue("mlflow_uri")
    except pytest.FixtureLookupError:
        uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(STUDY, artifact_location=(root / "artifacts").as_uri())
    parent = c.create_run(exp, run_name=STUDY, tags={"ncstudy.role": "study", "ncstudy.study": STUDY}).info.run_id
    children = []
    for i, (w, alpha, seed, t, fn) in enumerate(TRIALS):
        tags = {"mlflow.parentRunId": parent, "ncstudy.role": "trial", "ncstudy.trial_id": f"t{i:03d}",
                "ncstudy.study": STUDY, "model": "mlp", "dataset": "synthetic", "status": "completed",
                "stop_reason": "onset", "t_nc": str(t), "fn_star": str(fn), "threshold": "strict"}
        if i == 1:
            tags.update(t_nc_estimate="330", forecast_epoch="300")
        rid = c.create_run(exp, run_name=f"trial_{i}", tags=tags).info.run_id
        params = {"model.name": "mlp", "model.width": w, "model.depth": 5, "model.activation": "relu",
                  "optimizer.name": "adam", "optimizer.lr": 1e-3, "optimizer.weight_decay": 1e-4,
                  "data.name": "synthetic", "seed": seed, "intervention_alpha": alpha,
                  "eval.onset_phase2_only": True}
        rows = synthetic_rows(t, fn, seed=seed)
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(r[k]), ts, r["epoch"]) for r in rows
                   for k in ("phase", "train", "test", "nc1", "nc2", "nc3", "feat_norm")]
        c.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        if i != 4:  # trial 4 has no trajectory.csv: the analysis falls back to metric histories
            d = root / f"traj{i}"
            c.log_artifact(rid, str(write_log(rows, d / "trajectory.csv")))
        c.set_terminated(rid)
        children.append(rid)
    c.set_terminated(parent)
    return uri, parent, children


def test_mlflow_study(mlflow_study, tmp_path):
    from mlflow.tracking import MlflowClient

    uri, parent, children = mlflow_study
    out = tmp_path / "report"
    assert main(["analyze", "--experiment", STUDY, "--tracking-uri", uri, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    runs = {r["run_id"]: r for r in res["runs"]}
    assert set(runs) == set(children)
    for rid, (w, alpha, seed, t, fn) in zip(children, TRIALS):
        assert runs[rid]["t_nc"] == t and runs[rid]["fn_star"] == pytest.approx(fn)
        assert runs[rid]["width"] == w and runs[rid]["seed"] == seed and runs[rid]["threshold"] == "strict"
    assert runs[children[4]]["origin"] == "mlflow-metrics" and runs[children[0]]["origin"] == "mlflow-artifact"
    study = res["experiments"]["study"]
    assert study["group_by"] == ["width", "intervention_alpha"]
    assert len(study["groups"]) == 3
    # intervention: alpha 3 against the control at width 256, Student t-tests
    tt = {r["metric"]: r for r in study["intervention"]}
    ctrl = [t for w, a, s, t, f in TRIALS if w == 256 and a is None]
    trt = [t for w, a, s, t, f in TRIALS if w == 256 and a == 3.0]
    ref = stats.ttest_ind(trt, ctrl, equal_var=True)
    assert tt["T_NC"]["stratum"] == "width=256" and tt["T_NC"]["df"] == 4
    assert tt["T_NC"]["t"] == pytest.approx(ref.statistic) and tt["T_NC"]["p"] == pytest.approx(ref.pvalue)
    assert tt["fn*"]["treated_mean"] == pytest.approx(1.52) and tt["fn*"]["control_mean"] == pytest.approx(1.12)
    lead = study["lead"]["summary"]
    assert lead["fit"] is None  # grouped by width and alpha: group-mean thresholds, no width fit
    assert lead["n_forecast"] == 1 and lead["forecast_lead_mean"] == 390 - 300
    figs = sorted((out / "figures").glob("*.png"))
    assert {"trajectories_study", "fn_star_study", "tnc_vs_width_study"} <= {f.stem for f in figs}
    for f in figs:
        assert_png(f)
    # report and figures logged on the study's parent run
    c = MlflowClient(tracking_uri=uri)
    top = {a.path for a in c.list_artifacts(parent, "analysis")}
    assert {"analysis/report.md", "analysis/results.json", "analysis/runs.csv", "analysis/figures"} <= top
    logged = {Path(a.path).name for a in c.list_artifacts(parent, "analysis/figures")}
    assert logged == {f.name for f in figs}
    assert c.get_run(parent).data.tags["ncstudy.analysis"] == "analysis/report.md"
    local = c.download_artifacts(parent, "analysis/report.md", str(tmp_path / "dl"))
    assert "Intervention against control" in Path(local).read_text()


def test_one_reading_of_a_study_for_analysis_replay_and_log_files(mlflow_study, tmp_path):
    """A trial read from MLflow (by the analysis, by replay) and the same trial's log file read by
    ncstudy.runs carry one attribute naming: model, dataset, width, seed, typed alike."""
    from ncstudy.adapters.mlflow.reader import mlflow_trajectories, read_study
    from ncstudy.analyze.sources import load_mlflow
    from ncstudy.runs import ATTR_KEYS, load_runs

    uri, parent, children = mlflow_study
    study = read_study(STUDY, uri)
    assert [r.run_id for r in study.runs] == children and study.parent_run_ids == [parent]
    first = study.runs[0]
    w, _, seed, _, _ = TRIALS[0]
    keys = ("model", "dataset", "width", "seed")
    assert {k: first.attrs[k] for k in keys} == {"model": "mlp", "dataset": "synthetic", "width": w, "seed": seed}
    assert "model.width" not in first.attrs and first.attrs["trial_id"] == "t000"
    logs = tmp_path / "logs"
    write_log(first.records, logs / f"width{w}_s{seed}.csv")
    (tmp_path / "manifest.csv").write_text(f"file,model,dataset,width,seed\n"
                                           f"width{w}_s{seed}.csv,mlp,synthetic,{w},{seed}\n")
    from_manifest, = load_runs(logs, tmp_path / "manifest.csv")
    from_name, = load_runs(logs)
    assert {k: from_manifest.attrs[k] for k in keys} == {k: first.attrs[k] for k in keys}
    assert {k: from_name.attrs[k] for k in ("width", "seed")} == {k: first.attrs[k] for k in ("width", "seed")}
    assert from_manifest.group == first.group == "mlp/synthetic"
    assert from_manifest.records == first.records
    # replay and the priors: the same runs and attributes, named by trial id
    replayed = mlflow_trajectories(STUDY, uri)
    assert [r.run_id for r in replayed] == [f"t{i:03d}" for i in range(len(TRIALS))]
    assert [r.attrs for r in replayed] == [r.attrs for r in study.runs]
    # the analysis: the same runs, described by the analysis attributes
    runs, info = load_mlflow(STUDY, uri)
    assert [r.run_id for r in runs] == children and info.parent_run_id == parent
    assert all(set(r.attrs) <= set(ATTR_KEYS) for r in runs)
    assert [{k: r.attrs.get(k) for k in keys} for r in runs] == [{k: r.attrs.get(k) for k in keys} for r in study.runs]


def test_mlflow_unknown_experiment(mlflow_study, tmp_path, capsys):
    uri, _, _ = mlflow_study
    out = tmp_path / "out"
    assert main(["analyze", "--experiment", "no-such-study", "--tracking-uri", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-study'" in err and STUDY in err
    assert not out.exists()


def test_api_error_type():
    with pytest.raises(InputError):
        analyze()


def test_rupa2026_run_attrs_from_its_table():
    from ncstudy.analyze.presets import load_preset_module

    run_attrs = load_preset_module("rupa2026").run_attrs
    assert run_attrs("mnist_twophase.csv") == {"model": "mlp", "dataset": "mnist", "depth": 5, "width": 512,
                                               "activation": "relu", "weight_decay": 1e-4, "lr": 1e-3, "seed": 0}
    assert run_attrs("cifar10_s2.csv") == {"model": "resnet20", "dataset": "cifar10", "depth": None, "width": None,
                                           "activation": None, "weight_decay": 1e-3, "lr": 0.1, "seed": 2}
    assert run_attrs("depth2_s1_ext.csv")["variant"] == "ext" and run_attrs("depth3_s0.csv")["variant"] == "no-stop"
    assert "variant" not in run_attrs("depth7_s0.csv")
    assert run_attrs("wd0p0005_s1.csv")["weight_decay"] == 5e-4 and run_attrs("gelu_s3.csv")["activation"] == "gelu"
    with pytest.raises(ValueError, match="sweep_width.csv: not a file of the reference logs"):
        run_attrs("sweep_width.csv")



def test_a_preset_file_given_by_path(tmp_path, capsys):
    """``--preset path/to/file.py``: a plug-in preset outside the package, with the shipped machinery."""
    d = tmp_path / "logs"
    d.mkdir()
    for name, (t, fn) in {"a_s0.csv": (300, 1.10), "a_s1.csv": (320, 1.20), "b_s0.csv": (250, 0.90)}.items():
        write_log(synthetic_rows(t, fn, last=400), d / name)
    (tmp_path / "my_preset.py").write_text('''
from ncstudy.analyze import ExperimentSpec
from ncstudy.analyze.presets import FileRun, Preset

PRESET = Preset(
    name="mine", description="two cells", table_rows=[], checks=[],
    files=[FileRun(f, {"model": "mlp", "dataset": "toy", "width": w}, f"w{w}", "strict", ("width",))
           for f, w in (("a_s0.csv", 128), ("a_s1.csv", 128), ("b_s0.csv", 256))],
    experiments=[ExperimentSpec("width", "T_NC by width", ("width",), x="width")])
''')
    out = tmp_path / "out"
    assert main(["analyze", "--logs", str(d), "--preset", str(tmp_path / "my_preset.py"), "--out", str(out),
                 "--no-figures", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["source"]["preset"] == "mine"
    groups = {g["group"]: g for g in res["experiments"]["width"]["groups"]}
    assert groups["128"]["N"] == 2 and groups["128"]["t_nc_mean"] == 310.0
    assert groups["128"]["fn_mean"] == pytest.approx(1.15)
    assert groups["256"]["t_nc_mean"] == 250.0 and groups["256"]["fn_mean"] == pytest.approx(0.90)
    assert main(["analyze", "--logs", str(d), "--preset", str(tmp_path / "nope.py"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "preset file" in err and "nope.py not found" in err and "rupa2026" in err
