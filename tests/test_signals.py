"""SIGINT, SIGTERM and SIGHUP at start-up, mid-study and during shutdown, sent to a real `ncstudy run`
(to its process group, as Ctrl-C, `timeout` or a closed terminal send them, or to its PID alone,
as `kill`, Kubernetes or Docker do): a clean stop with exit status 128 + n, the study's MLflow runs
KILLED, the resume command printed, `--resume` exact (each trial continues after its last
checkpoint, finished trials are not run again), and no process or temp folder left behind. A second
signal stops at once and still leaves a study `--resume` completes.

Every state a signal is sent in is held by a barrier the test releases (tests/held_cli.py), never
found by timing, so the tests pass on a machine of any speed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from study_helpers import ROOT, child_runs, kill_group, steps, synthetic_study, write_study

from ncstudy.study.signals import alive, descendants

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class Launch:
    """One `ncstudy run` through tests/held_cli.py, in its own session; everything it started is
    noted before a signal is sent, and checked to be gone after it exits."""

    def __init__(self, tmp: Path, study: Path, uri: str, *held: str, launch: int = 1, extra: tuple = ()) -> None:
        self.barrier = tmp / "barrier"
        for stale in self.barrier.glob("*-stage-*"):  # an earlier launch's stage barrier
            stale.unlink()
        self.log = tmp / f"launch{launch}.log"
        cmd = [sys.executable, str(ROOT / "tests" / "held_cli.py"), "--barrier", str(self.barrier),
               "--launch", str(launch), *held, "--", "run", str(study), "--tracking-uri", uri,
               "--storage", str(tmp / "res"), "--num-cpus", "2", "--progress-interval", "0",
               "--tracking-flush-interval", "0.2", *extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started: dict[int, str] = {}

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def reached(self, pattern: str, count: int = 1) -> list[Path]:
        """Wait until ``count`` barrier files ``reached-<pattern>`` exist (a held state: it stays)."""
        while True:
            found = sorted(self.barrier.glob(f"reached-{pattern}"))
            if len(found) >= count:
                return found
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {pattern}:\n{self.output()[-4000:]}"
            time.sleep(0.1)

    def release(self, name: str) -> None:
        (self.barrier / f"release-{name}").write_text("")

    def send(self, sig: int, group: bool) -> None:
        assert self.proc.poll() is None, f"already exited {self.proc.returncode}:\n{self.output()[-4000:]}"
        self.started.update(descendants(self.proc.pid))
        (os.killpg if group else os.kill)(self.proc.pid, sig)

    def wait(self, timeout: float = 600) -> int:
        rc = self.proc.wait(timeout=timeout)
        # nothing the driver started outlives it: no process, no private Ray temp folder
        assert not alive(self.started), f"left running: {sorted(alive(self.started))}"
        assert not (Path(tempfile.gettempdir()) / f"ncstudy_ray_{self.proc.pid}").exists()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc)
        for pid in alive(self.started):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launches():
    made: list[Launch] = []
    yield made
    for lc in made:
        lc.kill()


def study_file(tmp: Path, name: str, **over) -> Path:
    """Two trials (w16, w32) of 30 epochs, an evaluation every 5, a checkpoint every 2nd."""
    return write_study(tmp, synthetic_study(name, mse_epochs=20, widths=(16, 32), **over))


def reports(tmp: Path) -> list[dict]:
    f = tmp / "barrier" / "reports.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def assert_study_complete(uri: str, name: str, n_trials: int = 2, last: int = 30) -> None:
    client, parents, children = child_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info.status for p in parents]
    assert len(children) == n_trials, sorted(c.info.run_name for c in children)
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["status"] == "completed", (c.info.run_name, c.data.tags)
        assert steps(client, c.info.run_id) == list(range(5, last + 1, 5)), c.info.run_name


# -- start-up ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_before_ray_starts_stops_at_once_writing_nothing(tmp_path, sig, launches):
    study = study_file(tmp_path, "sig_startup")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lc = Launch(tmp_path, study, uri, "--stage", "before_ray")
    launches.append(lc)
    lc.reached("stage-before_ray")
    lc.send(sig, group=True)
    assert lc.wait() == EXIT[sig], lc.output()
    assert f"stopped by {sig.name} before anything was written" in lc.output()
    assert "Traceback" not in lc.output()
    assert not (tmp_path / "res").exists() and not (tmp_path / "mlflow.db").exists()


def test_sighup_while_ray_starts_waits_for_it_then_stops_it(tmp_path, launches):
    """A signal during `ray.init` (which, interrupted, crashed or left Ray running) is acted on once
    Ray is up: Ray is shut down, its processes and temp folder are gone, nothing was written."""
    study = study_file(tmp_path, "sig_ray_init")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lc = Launch(tmp_path, study, uri, "--stage", "ray_init")
    launches.append(lc)
    lc.reached("stage-ray_init")
    lc.send(signal.SIGHUP, group=True)
    lc.release("stage-ray_init")
    assert lc.wait() == 129, lc.output()
    assert "Traceback" not in lc.output() and "logging.cc" not in lc.output()
    assert not (tmp_path / "res" / "sig_ray_init").exists()


def w16_finished(uri: str, name: str) -> bool:
    _, _, ch = child_runs(uri, name)
    return any(c.info.run_name == "w16-s0" and c.info.status == "FINISHED" for c in ch)


def stop_mid_study(lc: Launch, uri: str, name: str, hold: str, sig: int, group: bool) -> None:
    """w32 held (barrier ``hold``) right after its checkpoint, w16 finished: send ``sig``."""
    lc.reached(f"{hold}-*")
    while not w16_finished(uri, name):  # w32 is held, so this state, once reached, stays
        assert lc.proc.poll() is None, lc.output()[-3000:]
        time.sleep(0.2)
    lc.send(sig, group=group)


def assert_interrupted(lc: Launch, uri: str, name: str, status: int) -> None:
    """A clean stop: the exit status, the summary and resume command, w32's run KILLED."""
    assert lc.wait() == status, lc.output()
    out = lc.output()
    assert "1 complete, 1 interrupted" in out and "Resume with:" in out and "--resume" in out, out[-3000:]
    assert "Traceback" not in out
    _, parents, children = child_runs(uri, name)
    assert [p.info.status for p in parents] == ["KILLED"]
    by = {c.info.run_name: c for c in children}
    assert by["w32-s0"].info.status == "KILLED" and by["w32-s0"].data.tags["status"] == "interrupted"
    assert by["w16-s0"].info.status == "FINISHED"


def finish_with_a_signal_in_shutdown(tmp: Path, study: Path, uri: str, name: str, launches: list, sig: int,
                                     group: bool) -> None:
    """Launch 3 (``--resume``) runs the study to its end; ``sig`` while its driver shuts down changes
    nothing: exit 0, the study complete."""
    lc3 = Launch(tmp, study, uri, "--stage", "shutdown", launch=3, extra=("--resume",))
    launches.append(lc3)
    lc3.reached("stage-shutdown")
    lc3.send(sig, group=group)
    lc3.release("stage-shutdown")
    assert lc3.wait() == 0, lc3.output()
    assert_study_complete(uri, name)


def first_epochs(tmp: Path, launch: int) -> dict[int, int]:
    """Width -> the first epoch each trial reported in ``launch``."""
    out: dict[int, int] = {}
    for r in reports(tmp):
        if r["launch"] == launch:
            w = int(r["config"]["model.width"])
            out[w] = min(out.get(w, r["epoch"]), r["epoch"])
    return out


def test_sigterm_before_the_first_trial_then_sigint_mid_study_then_resume_exactly(tmp_path, launches):
    """Launch 1: the study's files are written and Tune's run has started, no trial yet: SIGTERM
    (to the PID) stops it, exit 143, the study run KILLED. Launch 2 (`--resume`) runs every planned
    trial -- it used to run one of three and exit 0 -- in the same study run, until SIGINT (to the
    process group, as Ctrl-C) stops it cleanly while w16 has finished and w32 is held after its
    checkpoint at epoch 20: exit 130. Launch 3 (`--resume`) runs w32 from epoch 25 (not from
    scratch), does not run w16 again, and a SIGINT during its shutdown (every trial done) changes
    nothing: exit 0, every step in MLflow once."""
    name = "sig_chain_a"
    study = study_file(tmp_path, name)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lc = Launch(tmp_path, study, uri, "--stage", "tune_setup")
    launches.append(lc)
    lc.reached("stage-tune_setup")
    assert (tmp_path / "res" / name / "ncstudy_study.json").is_file()
    lc.send(signal.SIGTERM, group=False)
    lc.release("stage-tune_setup")
    assert lc.wait() == 143, lc.output()
    assert "--resume" in lc.output() and "Traceback" not in lc.output(), lc.output()[-3000:]
    _, parents, children = child_runs(uri, name)
    assert [p.info.status for p in parents] == ["KILLED"] and children == []

    lc2 = Launch(tmp_path, study, uri, "--hold", "mid:20:model.width=32", launch=2, extra=("--resume",))
    launches.append(lc2)
    stop_mid_study(lc2, uri, name, "mid", signal.SIGINT, group=True)
    assert_interrupted(lc2, uri, name, 130)

    finish_with_a_signal_in_shutdown(tmp_path, study, uri, name, launches, signal.SIGINT, group=True)
    assert first_epochs(tmp_path, 3) == {32: 25}  # w32 after its checkpoint at 20; w16 not again


def test_sigterm_mid_study_then_a_second_sighup_then_sigterm_in_shutdown(tmp_path, launches):
    """Launch 1: SIGTERM (to the PID, as `kill` or Kubernetes send it) with w16 finished and w32 held
    after its checkpoint at epoch 20: a clean stop, exit 143. Launch 2 (`--resume`): w32 goes on
    from epoch 25 and is held again; SIGHUP (to the process group, as a closed terminal sends it)
    stops the study cleanly, and a second SIGHUP while the driver shuts down stops it at once (no
    MLflow flush, no Tune clean-up), still leaving nothing running: exit 129. Launch 3 (`--resume`)
    completes the study exactly; a SIGTERM during its shutdown changes nothing (exit 0)."""
    name = "sig_chain_b"
    study = study_file(tmp_path, name)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lc = Launch(tmp_path, study, uri, "--hold", "mid:20:model.width=32")
    launches.append(lc)
    stop_mid_study(lc, uri, name, "mid", signal.SIGTERM, group=False)
    assert_interrupted(lc, uri, name, 143)

    lc2 = Launch(tmp_path, study, uri, "--hold", "again:25:model.width=32", "--stage", "shutdown", launch=2,
                 extra=("--resume",))
    launches.append(lc2)
    lc2.reached("again-*")
    assert first_epochs(tmp_path, 2) == {32: 25}  # from its checkpoint, not from scratch; w16 not again
    lc2.send(signal.SIGHUP, group=True)
    lc2.reached("stage-shutdown")
    lc2.send(signal.SIGHUP, group=True)
    assert lc2.wait() == 129, lc2.output()
    assert "received again: stopping at once" in lc2.output() and "--resume" in lc2.output()

    finish_with_a_signal_in_shutdown(tmp_path, study, uri, name, launches, signal.SIGTERM, group=False)
    assert not [r for r in reports(tmp_path) if r["launch"] > 1 and r["config"]["model.width"] == 16]


def test_sigterm_stops_a_train_run_with_its_log_written(tmp_path):
    """`ncstudy train` follows the same contract: SIGTERM mid-run exits 143 after the evaluations
    so far are in its log (rewritten at every evaluation)."""
    import yaml

    cfg = dict(synthetic_study("x")["base"], mse_epochs=100000)  # far longer than the test waits
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    log, out = tmp_path / "train.log", tmp_path / "run.csv"
    p = subprocess.Popen([sys.executable, "-m", "ncstudy.cli", "train", str(tmp_path / "c.yaml"), "--out", str(out)],
                         cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        while not out.exists():  # the run goes on for hours: this state holds
            assert p.poll() is None, log.read_text()
            time.sleep(0.1)
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=120) == 143, log.read_text()
    finally:
        kill_group(p)
    assert "ncstudy train: stopped by SIGTERM" in log.read_text() and "Traceback" not in log.read_text()
    assert out.read_text().startswith("epoch,phase")
