"""`ncstudy run` end to end on real Ray Tune and real MLflow (SQLite), synthetic data."""
from __future__ import annotations

import signal

import pytest
from study_helpers import child_runs, kill_group, spawn_cli, steps, synthetic_study, wait_for, write_study

from ncstudy.study.runner import RunOptions, run_study
from ncstudy.study.spec import load_study


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, mlflow_uri, ray_local):
    """One finished 2-trial study shared by the tracking and UI tests."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("small")
    spec = load_study(write_study(tmp, synthetic_study("study_small", mse_epochs=30, widths=(16, 32), seeds=(0,))))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = run_study(spec, RunOptions(tracking_uri=mlflow_uri, storage=str(tmp / "res"), progress_interval_s=0))
    return rc, out.getvalue(), tmp


def test_small_study_tracks_every_trial(small_study, mlflow_uri):
    rc, out, tmp_path = small_study
    assert rc == 0
    assert "Study summary" in out and "w16-s0" in out and "w32-s0" in out

    client, parents, children = child_runs(mlflow_uri, "study_small")
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.info.run_name for c in children} == {"w16-s0", "w32-s0"}
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.data.tags["model"] == "mlp" and c.data.tags["dataset"] == "synthetic"
        assert c.data.tags["status"] == "completed" and c.data.tags["stop_reason"] == "budget"
        assert c.info.status == "FINISHED"
        assert c.data.params["model.width"] in ("16", "32") and c.data.params["ce_epochs"] == "10"
        expected = [5, 10, 15, 20, 25, 30, 35, 40]
        for key in ("train", "test", "phase", "train_loss"):
            assert steps(client, c.info.run_id, key) == expected, key
        nc1 = client.get_metric_history(c.info.run_id, "nc1")
        assert nc1 and all(m.value == m.value for m in nc1)  # NaN dropped, never logged
        arts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert {"trajectory.csv", "trajectory.png"} <= arts
        local = client.download_artifacts(c.info.run_id, "trajectory.csv", str(tmp_path))
        from ncstudy.logs import read_log

        df = read_log(local)
        assert list(df["epoch"]) == expected
    assert "summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_mlflow_ui_shows_trials_nested_under_study(small_study, mlflow_uri, artifacts_dir, tmp_path):
    """Headless Chromium on `ncstudy ui`: the trial runs appear nested under the study run."""
    import shutil
    import socket

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("Chromium/chromedriver absent (`apt-get install chromium chromium-driver`; .ci/run installs them)")
    from mlflow.tracking import MlflowClient
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    ui = spawn_cli(["ui", "--tracking-uri", mlflow_uri, "--port", str(port)], tmp_path, tmp_path / "ui.log")
    browser = None
    try:
        import urllib.request

        assert wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200,
                        timeout=120), (tmp_path / "ui.log").read_text()[-2000:]
        assert f"http://127.0.0.1:{port}" in (tmp_path / "ui.log").read_text()
        exp = MlflowClient(mlflow_uri).get_experiment_by_name("study_small")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900", f"--user-data-dir={tmp_path / 'chrome'}"):
            opts.add_argument(a)
        browser = webdriver.Chrome(service=Service(driver_bin), options=opts)
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs")
        wait = WebDriverWait(browser, 90)
        parent = "//a[.//*[normalize-space(text())='study_small'] or normalize-space(text())='study_small']"
        wait.until(EC.presence_of_element_located((By.XPATH, parent)))
        assert "w16-s0" not in browser.page_source  # child runs are collapsed under the study run
        # The parent row's expander (MLflow's run-name cell) reveals the nested trial runs.
        expander = wait.until(EC.element_to_be_clickable(
            (By.XPATH, "//button[contains(@data-component-id, 'runnamecellrenderer')]")))
        expander.click()
        wait.until(EC.presence_of_element_located((By.XPATH, "//*[normalize-space(text())='w16-s0']")))
        wait.until(EC.presence_of_element_located((By.XPATH, "//*[normalize-space(text())='w32-s0']")))
        browser.save_screenshot(str(artifacts_dir / "mlflow_ui_study.png"))
        page = browser.page_source
        assert page.index("study_small") < page.index("w16-s0")  # the parent row comes first
    finally:
        if browser is not None:
            browser.quit()
        kill_group(ui, signal.SIGTERM)


def test_fnstar_stop_at_forecast_ends_trials_early(tmp_path, mlflow_uri, ray_local):
    """A study with the fn* stopper: trials stop once onset is forecast; the forecast is their
    objective in MLflow."""
    import contextlib
    import io

    data = synthetic_study("study_fnstar", mse_epochs=190, widths=(16, 32), seeds=(0,))
    data["scheduler"] = {"name": "fnstar", "fnstar": {
        "policy": "stop_at_forecast", "forecaster": "fn_star", "mode": "sweep",
        "priors": {"mlp/synthetic": {"fn_star": 1.95, "lead": 30}}}}
    spec = load_study(write_study(tmp_path, data))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = run_study(spec, RunOptions(tracking_uri=mlflow_uri, storage=str(tmp_path / "res"), progress_interval_s=0))
    assert rc == 0, out.getvalue()
    client, parents, children = child_runs(mlflow_uri, "study_fnstar")
    assert len(children) == 2
    for c in children:
        tags, metrics = c.data.tags, c.data.metrics
        assert tags["stop_reason"] == "forecast", tags
        made, forecast = float(tags["forecast_epoch"]), float(tags["t_nc_estimate"])
        assert forecast == made + 30  # the fn* crossing + the prior's lead
        ran = steps(client, c.info.run_id)
        assert ran[-1] == made < 200  # stopped at the evaluation that made the forecast
        # the forecast is the trial's collapse-time objective and a metric of its last step
        assert metrics["collapse_epoch"] == metrics["t_nc_estimate"] == forecast
        hist = client.get_metric_history(c.info.run_id, "t_nc_estimate")
        assert hist[-1].step == ran[-1] and hist[-1].value == forecast
    assert "forecast" in out.getvalue()


def test_analyze_a_finished_study(small_study, mlflow_uri, tmp_path):
    """`ncstudy analyze --experiment` on a study that ncstudy itself ran: report, figures, artifacts."""

    from ncstudy.cli import main

    out = tmp_path / "report"
    assert main(["analyze", "--experiment", "study_small", "--tracking-uri", mlflow_uri, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "w16-s0" in report or "16" in report
    pngs = list((out / "figures").glob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs)
    client, parents, _ = child_runs(mlflow_uri, "study_small")
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "analysis")}
    assert "analysis/report.md" in logged
    assert main(["analyze", "--experiment", "no_such_study", "--tracking-uri", mlflow_uri,
                 "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_reused_actor_runs_the_next_trial_identically(tmp_path, mlflow_uri, ray_local):
    """`reuse_actors` (the default): one trial after another in the same worker process, and the
    second is bit-for-bit the first (same config and seed), so nothing leaks between trials."""
    import contextlib
    import io
    import json

    data = synthetic_study("study_reuse", mse_epochs=30, widths=(16,), seeds=(0,), num_samples=2,
                           max_concurrent=1)
    spec = load_study(write_study(tmp_path, data))
    assert spec.reuse_actors
    with contextlib.redirect_stdout(io.StringIO()):
        rc = run_study(spec, RunOptions(tracking_uri=mlflow_uri, storage=str(tmp_path / "res"), progress_interval_s=0))
    assert rc == 0
    pids = {json.loads(line)["pid"] for f in (tmp_path / "res" / "study_reuse").glob("trial_*/result.json")
            for line in f.read_text().splitlines()}
    assert len(pids) == 1  # both trials ran in one actor
    client, _, children = child_runs(mlflow_uri, "study_reuse")
    assert len(children) == 2
    hist = [{k: [(m.step, m.value) for m in sorted(client.get_metric_history(c.info.run_id, k), key=lambda m: m.step)]
             for k in ("train_loss", "nc1", "feat_norm", "test")} for c in children]
    assert hist[0]["nc1"] and hist[0] == hist[1]


def test_a_diverging_trial_fails_the_study(tmp_path, mlflow_uri, ray_local):
    """lr 1e3: the loss explodes (finite, 1e20+) -- the trial is diverged, its run FAILED, exit 1."""
    import contextlib
    import io

    data = synthetic_study("study_diverge", mse_epochs=10, widths=(16,), seeds=(0,))
    data["space"]["optimizer.lr"] = {"grid": [0.02, 1.0e3]}
    data["trial_name"] = "lr{optimizer.lr}"
    spec = load_study(write_study(tmp_path, data))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = run_study(spec, RunOptions(tracking_uri=mlflow_uri, storage=str(tmp_path / "res"), progress_interval_s=0))
    assert rc == 1, out.getvalue()
    assert "1 complete, 1 diverged" in out.getvalue() and "failed or diverged: lr1000" in out.getvalue()
    _, parents, children = child_runs(mlflow_uri, "study_diverge")
    assert parents[0].info.status == "FAILED"
    by = {c.info.run_name: c for c in children}
    assert by["lr1000"].info.status == "FAILED" and by["lr1000"].data.tags["status"] == "diverged"
    assert by["lr0.02"].info.status == "FINISHED" and by["lr0.02"].data.tags["status"] == "completed"


@pytest.mark.slow
def test_a_trial_failing_after_its_retries_fails_the_study(tmp_path, mlflow_uri):
    """w32 raises at epoch 15 on every attempt: Tune retries it from its checkpoint at epoch 10
    (failure.max_retries: 1), then gives up; the study exits 1, w32's run FAILED (status error),
    w16's FINISHED, and the summary names the failed trial."""
    import json

    study = write_study(tmp_path, synthetic_study("study_fails", mse_epochs=20, widths=(16, 32),
                                                  failure={"max_retries": 1}))
    args = ["run", str(study), "--tracking-uri", mlflow_uri, "--storage", str(tmp_path / "res"), "--num-cpus", "2",
            "--progress-interval", "0"]
    p = spawn_cli(args, tmp_path, tmp_path / "run.log", held=("--fail", "15:model.width=32"))
    try:
        rc = p.wait(timeout=600)
    finally:
        kill_group(p)
    out = (tmp_path / "run.log").read_text()
    assert rc == 1, out[-3000:]
    assert "1 complete, 1 failed" in out and "failed or diverged: w32-s0" in out, out[-3000:]
    _, parents, children = child_runs(mlflow_uri, "study_fails")
    assert parents[0].info.status == "FAILED"
    by = {c.info.run_name: c for c in children}
    assert by["w32-s0"].info.status == "FAILED" and by["w32-s0"].data.tags["status"] == "error"
    assert by["w16-s0"].info.status == "FINISHED"
    rows = [json.loads(line) for line in (tmp_path / "barrier" / "reports.jsonl").read_text().splitlines()]
    w32 = [r["epoch"] for r in rows if r["config"]["model.width"] == 32]
    assert w32 == [5, 10, 15, 15], w32  # retried once, from its checkpoint at epoch 10


def test_asha_stops_the_worse_trials_at_its_first_rung(tmp_path, mlflow_uri, ray_local):
    """`scheduler: asha` (grace period 1 evaluation = 5 epochs, reduction factor 2, max_t = the
    budget): one trial at a time, the best learning rate first, so every later trial meets the
    first rung with a worse training loss and ASHA stops it there, well before its budget."""
    import contextlib
    import io

    data = synthetic_study("study_asha", mse_epochs=20, widths=(16,), seeds=(0,), max_concurrent=1,
                           scheduler={"name": "asha", "asha": {"grace_period": 1, "reduction_factor": 2}},
                           objective={"metric": "train_loss", "mode": "min"})
    data["space"]["optimizer.lr"] = {"grid": [0.02, 1.0e-5, 2.0e-5]}
    data["trial_name"] = "lr{optimizer.lr}"
    spec = load_study(write_study(tmp_path, data))
    with contextlib.redirect_stdout(io.StringIO()):
        rc = run_study(spec, RunOptions(tracking_uri=mlflow_uri, storage=str(tmp_path / "res"), progress_interval_s=0))
    assert rc == 0
    client, _, children = child_runs(mlflow_uri, "study_asha")
    ran = {c.info.run_name: steps(client, c.info.run_id) for c in children}
    assert ran["lr0.02"] == list(range(5, 31, 5))  # the best one ran its whole budget
    assert ran["lr1e-05"] == [5] and ran["lr2e-05"] == [5], ran  # ASHA stopped the others at its rung
    reasons = {c.info.run_name: c.data.tags.get("stop_reason") for c in children}
    assert reasons == {"lr0.02": "budget", "lr1e-05": "scheduler", "lr2e-05": "scheduler"}  # not "ran its budget"
