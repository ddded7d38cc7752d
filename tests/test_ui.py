"""The MLflow UI as a researcher meets it: `ncstudy ui`, a fresh browser, a study.

The study is written by the real tracking callback and a real fn* stopper, fed generated two-phase
trajectories (``ncstudy.forecast.synthetic``) the way Tune would feed them (no training, no Ray:
seconds). ``ncstudy ui`` serves it; a headless Chromium with a fresh profile starts from the URL
that ``ncstudy ui`` prints and must show what a person looks for -- the trial names, a chart of fn,
the study overview on the study run -- and saves screenshots under ``test-artifacts/``. The
browser test skips, saying why, only when Chromium or its driver is missing (``.ci/run`` installs
them). Stopping ``ncstudy ui`` with SIGTERM or SIGINT must leave no process behind.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ncstudy.study.signals import alive, descendants

ROOT = Path(__file__).resolve().parents[1]
STUDY = "ui_study"
CE, EPOCHS, EVERY = 30, 430, 10
#: width -> (onset epoch or None, fn decay time constant in MSE epochs, fn's floor). fn crosses fn*
#: before the onset of w128 and w256 (stopped at the forecast), only after it for w512 (stopped at
#: its onset), never for w64 (no onset: runs its budget).
TRIALS = {128: (360, 35.0, 1.25), 256: (300, 50.0, 1.25), 512: (250, 60.0, 1.25), 64: (None, 60.0, 1.6)}
FN_STAR, FN_STAR_SD, LEAD = 1.4, 0.07, 60.0


@dataclass
class Trial:
    """What the callback and the stopper read of a Tune ``Trial``."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)
    status: str = "RUNNING"

    def __str__(self) -> str:
        return f"w{self.config['model.width']}-s{self.config['seed']}"


def trajectory(width: int) -> list[dict[str, Any]]:
    """A generated two-phase run: CE, then MSE with fn falling towards fn* and NC1 to the strict
    threshold at the onset (or levelling off above it)."""
    from ncstudy.forecast.synthetic import synthetic_trajectory

    t_nc, tau, floor = TRIALS[width]
    rows = synthetic_trajectory(t_nc=t_nc or 300, fn_start=14.0, fn_end=floor, tau=tau, ce_epochs=CE,
                                epochs=EPOCHS, every=EVERY, nc1_start=0.25, collapse=t_nc is not None,
                                nc1_floor=0.03, noise=0.03, seed=width, terminal_epoch=20)
    for r in rows:
        if r["phase"] == 1 and r["feat_norm"] == r["feat_norm"]:
            r["feat_norm"] *= 1.6  # CE features are large: the log axis has to show both phases
    return rows


def build_study(uri: str, tmp: str | Path) -> dict[str, Any]:
    """Write the study into ``uri`` through MLflowStudyCallback, an OnsetStopper deciding; returns
    the experiment id, the study run id and the trial names."""
    from mlflow.tracking import MlflowClient

    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
    from ncstudy.adapters.ray_tune import OnsetStopper
    from ncstudy.forecast import Calibration, Prior

    MlflowClient(uri).create_experiment(STUDY, artifact_location=str(Path(tmp) / "artifacts"),
                                        tags={"mlflow.experimentKind": "custom_model_development"})
    group = "mlp/mnist5k"
    prior = Calibration({group: Prior(fn_star=FN_STAR, fn_star_sd=FN_STAR_SD, lead=LEAD, lead_sd=25.0,
                                      source="test prior")})
    stopper = OnsetStopper("stop_at_forecast", "fn_star", mode="sweep", budget=EPOCHS, prior=prior,
                            group_key=lambda config: group)
    cb = MLflowStudyCallback(uri, STUDY, study_params={"study.searcher": "grid"}, flush_interval_s=0.2,
                             spill_dir=str(tmp), trial_tags=lambda c: {"model": "mlp", "dataset": "mnist5k"},
                             trial_label=str)
    cb.setup(stop=stopper)
    trials = [Trial(f"t{i}", {"model.width": w, "seed": 0}) for i, w in enumerate(TRIALS)]
    for trial in trials:
        cb.on_trial_start(0, trials, trial)
        t_nc = TRIALS[trial.config["model.width"]][0]
        rows = trajectory(trial.config["model.width"])
        for i, row in enumerate(rows):
            e = row["epoch"]
            reached = t_nc is not None and e >= t_nc
            result = {**row, "t_nc": float(t_nc) if reached else math.nan,
                      "fn_star": row["feat_norm"] if reached else math.nan,
                      "collapse_epoch": float(t_nc) if reached else math.nan}
            if reached:
                result["stop_reason"] = "onset"  # the trainer's stop_at_onset
            elif i == len(rows) - 1:
                result["stop_reason"] = "budget"
            stop = stopper(trial.trial_id, result)  # writes the forecast into the result, as in Tune
            trial.last_result = result
            cb.on_trial_result(0, trials, trial, result)
            if stop or reached:
                break
        trial.status = "TERMINATED"
        stopper.on_trial_complete(0, trials, trial)
        cb.on_trial_complete(0, trials, trial)
    cb.on_experiment_end(trials)
    return {"experiment_id": cb.experiment_id, "parent_run_id": cb.parent_run_id,
            "trials": [str(t) for t in trials], "stop_reasons": {str(t): t.last_result.get("stop_reason")
                                                                 for t in trials}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return {"uri": uri, "tmp": tmp, **build_study(uri, tmp)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UiProcess:
    """`ncstudy ui` in its own session, its stdout in a file; stopped by PID."""

    def __init__(self, uri: str, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / f"ui_{self.port}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "ncstudy.cli", "ui", "--tracking-uri", uri,
                                      "--port", str(self.port)], cwd=tmp, env=env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_ready(self, timeout: float = 600.0) -> str:
        """The deep link `ncstudy ui` printed, once the server answers."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"ncstudy ui exited {self.proc.returncode}:\n{self.output()}"
            m = re.search(r"(http://127\.0\.0\.1:\d+/#/experiments/\S+)", self.output())
            if m:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                        if r.status == 200:
                            return m.group(1)
                except OSError:
                    pass
            time.sleep(0.3)
        raise AssertionError(f"ncstudy ui not ready after {timeout:.0f} s:\n{self.output()}")

    def kill(self) -> None:
        """Stop it as a user would (SIGTERM: it stops its server), SIGKILL if it does not go."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_ui_stops_its_server_and_workers(study, sig):
    ui = UiProcess(study["uri"], study["tmp"])
    try:
        url = ui.wait_ready()
        assert url.endswith(f"/#/experiments/{study['experiment_id']}/runs?workflowType=machine_learning"
                            "&viewStateShareKey=ncstudy")
        kids = descendants(ui.proc.pid)
        assert kids, "ncstudy ui started no server process"
        os.kill(ui.proc.pid, sig)  # to ncstudy ui alone, as `kill` or a supervisor sends it
        assert ui.proc.wait(60) == 0, ui.output()
        end = time.monotonic() + 30
        while alive(kids) and time.monotonic() < end:
            time.sleep(0.2)
        assert not alive(kids), f"left running after {sig.name}: {alive(kids)}"
    finally:
        ui.kill()


def test_ui_killed_outright_takes_its_server_along(study):
    """SIGKILL leaves `ncstudy ui` no chance to stop anything: the server, in a session of its own
    (out of reach of the killer's process group), must still go (the kernel tells it its parent
    died); it used to live on under PID 1 after `make test`."""
    ui = UiProcess(study["uri"], study["tmp"])
    try:
        ui.wait_ready()
        kids = descendants(ui.proc.pid)
        assert kids, "ncstudy ui started no server process"
        os.kill(ui.proc.pid, signal.SIGKILL)
        ui.proc.wait(60)
        end = time.monotonic() + 60  # the server stops on SIGTERM from the kernel; it may take a moment
        while alive(kids) and time.monotonic() < end:
            time.sleep(0.2)
        assert not alive(kids), f"left running: {alive(kids)}"
    finally:
        ui.kill()


def test_study_run_carries_the_overview_and_study_metrics(study):
    from mlflow.tracking import MlflowClient

    from ncstudy.adapters.mlflow.layout import OVERVIEW_PNG, STUDY_METRICS, SUMMARY_ARTIFACT, SWEEP_PNG

    c = MlflowClient(study["uri"])
    run = c.get_run(study["parent_run_id"])
    assert {a.path for a in c.list_artifacts(run.info.run_id)} >= {OVERVIEW_PNG, SWEEP_PNG, SUMMARY_ARTIFACT}
    m = run.data.metrics
    reasons = study["stop_reasons"]
    assert m[STUDY_METRICS["trials_finished"]] == len(TRIALS)
    assert m[STUDY_METRICS["trials_collapsed"]] == sum(r == "onset" for r in reasons.values())
    assert m[STUDY_METRICS["stopped_by_forecast"]] == sum(r in ("forecast", "no_onset_forecast", "cannot_win")
                                                          for r in reasons.values())
    assert m[STUDY_METRICS["stopped_by_forecast"]] >= 1, reasons  # the picture shows a forecast stop
    assert m[STUDY_METRICS["epochs_saved"]] > 0
    # the metric history has one point per refresh, the last at step = trials ended
    hist = c.get_metric_history(run.info.run_id, STUDY_METRICS["trials_finished"])
    assert max(h.step for h in hist) == len(TRIALS)


def _chrome():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (`apt-get install chromium chromium-driver`; "
                    ".ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1700,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    return webdriver, opts, Service(driver)


def test_fresh_browser_lands_on_the_trials(study, artifacts_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    webdriver, opts, service = _chrome()
    opts.add_argument(f"--user-data-dir={tmp_path / 'profile'}")  # a fresh profile: nothing remembered
    ui = UiProcess(study["uri"], study["tmp"])
    browser = None
    try:
        url = ui.wait_ready()
        browser = webdriver.Chrome(options=opts, service=service)
        browser.set_page_load_timeout(300)
        wait = WebDriverWait(browser, 300, poll_frequency=0.5)
        browser.get(url)

        def text() -> str:
            return browser.find_element(By.TAG_NAME, "body").text

        # The training runs (not the GenAI pages): the study run and every trial listed, no click needed.
        wait.until(lambda b: all(name in text() for name in study["trials"]) and STUDY in text())
        assert "Model training" in text() and "Sort: Run Name" in text()
        for col in ("model.width", "collapse_epoch", "feat_norm", "nc1"):  # the shared view's columns
            assert col in text()
        browser.save_screenshot(str(artifacts_dir / "mlflow_ui_runs.png"))

        # The chart view: the study's metrics on top, then fn of every trial (a scroll down).
        browser.get(url + "&compareRunsMode=CHART")
        wait.until(lambda b: "study/trials_finished" in text()
                   and b.find_elements(By.XPATH, "//*[starts-with(normalize-space(text()), 'Model metrics')]"))
        section = browser.find_element(By.XPATH, "//*[starts-with(normalize-space(text()), 'Model metrics')]")
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", section)
        wait.until(lambda b: "w128-s0 (feat_norm)" in text())  # a chart of fn, the trials in its legend
        time.sleep(3)  # the charts finish drawing (for the picture; nothing is asserted on time)
        browser.save_screenshot(str(artifacts_dir / "mlflow_ui_charts.png"))

        # The study run (a click on its name): the overview picture among its artifacts.
        browser.get(url)
        run_link = f"a[href*='/runs/{study['parent_run_id']}']"  # its name in the list (not the breadcrumb)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, run_link))
        browser.find_element(By.CSS_SELECTOR, run_link).click()
        wait.until(lambda b: "Artifacts" in text())
        browser.find_element(By.XPATH, "//*[normalize-space(text())='Artifacts']").click()
        wait.until(lambda b: b.find_elements(By.XPATH, "//*[normalize-space(text())='overview.png']"))
        browser.find_element(By.XPATH, "//*[normalize-space(text())='overview.png']").click()
        # the preview is a blob: URL; overview.png is the 1,100-pixel-wide image on the page
        wait.until(lambda b: any(i.get_attribute("naturalWidth") == "1100"
                                 for i in b.find_elements(By.TAG_NAME, "img")))
        time.sleep(1)
        browser.save_screenshot(str(artifacts_dir / "mlflow_ui_overview.png"))
    finally:
        if browser is not None:
            browser.quit()
        ui.kill()
