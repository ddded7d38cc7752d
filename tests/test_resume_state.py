"""What a study saves beside Tune's experiment state outlives the code that saved it: a study whose
first launch ran with another module layout (tests/old_layout_cli.py: every ncstudy class and
function it pickled lives in modules this ncstudy does not have) resumes exactly, and state that a
newer ncstudy wrote is refused before anything starts (exit 2, what to do)."""
from __future__ import annotations

import json
import pickle
import signal
import sys

import pytest
from study_helpers import ROOT, child_runs, reached, spawn_cli, steps, synthetic_study, write_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_a_study_saved_by_another_module_layout_resumes_exactly(tmp_path):
    import subprocess

    name = "moved_modules"
    data = synthetic_study(name, mse_epochs=20, widths=(16, 32),
                           scheduler={"name": "fnstar", "fnstar": {"policy": "record", "prior": "none"}})
    study = write_study(tmp_path, data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", str(study), "--tracking-uri", uri, "--storage", str(tmp_path / "res"), "--num-cpus", "2",
            "--progress-interval", "0", "--tracking-flush-interval", "0.2"]
    barrier = tmp_path / "barrier"
    log = tmp_path / "first.log"
    first = subprocess.Popen([sys.executable, str(ROOT / "tests" / "old_layout_cli.py"), "--barrier", str(barrier),
                              "--hold", "h:10", "--", *args], cwd=tmp_path, stdout=log.open("w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        reached(barrier, "h-*", first, count=2, log=log)
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=300) == 130, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    exp = tmp_path / "res" / name
    assert b"ncstudy_v0" in (exp / "tuner.pkl").read_bytes()  # the first launch did pickle the old layout

    # state written by a newer ncstudy: refused, nothing started, what to do said
    study_json = exp / "ncstudy_study.json"
    saved = study_json.read_text()
    study_json.write_text(json.dumps(dict(json.loads(saved), version=99)))
    p = spawn_cli([*args, "--resume"], tmp_path, tmp_path / "newer_study.log")
    assert p.wait(timeout=300) == 2
    out = (tmp_path / "newer_study.log").read_text()
    assert "written by a newer ncstudy" in out and "ncstudy version that started it" in out, out[-2000:]
    study_json.write_text(saved)

    cb = sorted(exp.glob("callback-states-*.pkl"))[-1]
    states = pickle.loads(cb.read_bytes())
    raw = cb.read_bytes()
    outcome = next(i for i, s in states.items() if isinstance(s, dict) and "ended" in s)
    cb.write_bytes(pickle.dumps({**states, outcome: {**states[outcome], "version": 99}}))
    p = spawn_cli([*args, "--resume"], tmp_path, tmp_path / "newer_state.log")
    assert p.wait(timeout=300) == 2
    out = (tmp_path / "newer_state.log").read_text()
    assert "StudyOutcome's saved state" in out and "newer ncstudy" in out and "Traceback" not in out, out[-2000:]
    cb.write_bytes(raw)

    p = spawn_cli([*args, "--resume"], tmp_path, tmp_path / "resume.log")
    assert p.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    client, parents, children = child_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    for c in children:
        assert c.info.status == "FINISHED", c.info.run_name
        assert steps(client, c.info.run_id) == list(range(5, 31, 5)), c.info.run_name
    rows = [json.loads(line) for line in (barrier / "reports.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in rows} <= {5, 10}  # the first launch stopped at the hold
