"""``ncstudy`` exactly as the command line runs it, held at a point a test chooses until the test
releases it: a barrier, so a test that waits for a state finds it there whatever the machine's speed.

    python tests/held_cli.py --barrier DIR [--launch N] [--hold NAME:EPOCH[:KEY=VALUE]] ...
                             [--fail EPOCH:KEY=VALUE] [--stage NAME] -- run STUDY.yaml [flags]

* ``--hold NAME:EPOCH[:KEY=VALUE]``: a trial (every trial, or the ones whose config has KEY=VALUE)
  stops right after the report of its first evaluation at or past EPOCH: it writes
  ``DIR/reached-NAME-<trial id>`` and waits for ``DIR/release-NAME``. Its driver goes on. A trial
  is held once (not again when Tune retries or resumes it).
* ``--hold NAME:EPOCH:nth=N``: only the N-th trial of this launch to report (counted in
  ``DIR/reports.jsonl``; with ``max_concurrent: 1`` the N-th trial Tune starts, whatever its
  sampled config: how a test holds a search after N-1 completed trials).
* ``--fail EPOCH:KEY=VALUE``: those trials raise an error after each report at or past EPOCH
  (every attempt: a trial that fails after Tune's retries).
* ``--stage NAME``: the driver itself waits at one point of a study, after writing
  ``DIR/reached-stage-NAME``, until ``DIR/release-stage-NAME``: ``before_ray`` (the datasets are
  loaded, Ray not started), ``ray_init`` (inside the start of Ray), ``tune_setup`` (Tune's run has
  started, its callbacks are being set up: the study's files are written, no trial has started),
  ``shutdown`` (Tune's loop has ended; the MLflow callback is about to end the study's runs).

Every report is logged to ``DIR/reports.jsonl`` as ``{"launch", "trial", "epoch", "checkpoint",
"config"}``, so a test can tell where each trial of each launch started. Everything else is the
real ``ncstudy``: the trainable is :func:`ncstudy.study.trainable.run_trial`, the driver
:func:`ncstudy.cli.main`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.05)


def _reach(barrier: Path, name: str) -> None:
    tmp = barrier / f".{name}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.replace(barrier / f"reached-{name}")


def _rule(text: str) -> tuple[str, int, tuple[str, str] | None]:
    name, epoch, *match = text.split(":")
    key_value = tuple(match[0].split("=", 1)) if match else None
    return name, int(epoch), key_value  # type: ignore[return-value]


def _matches(config: dict, match: tuple[str, str] | None, folder: Path | None = None, launch: int = 0,
             trial: str = "") -> bool:
    if match is not None and match[0] == "nth" and folder is not None:
        order: list[str] = []
        for line in (folder / "reports.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["launch"] == launch and row["trial"] not in order:
                order.append(row["trial"])
        return trial in order and order.index(trial) + 1 == int(match[1])
    return match is None or str(config.get(match[0])) == match[1]


def held_trial_fn(barrier: str, launch: int, holds: list[str], fails: list[str]):
    """``run_trial`` with the holds and failures; defined here (``__main__``), so Ray ships it to the
    trial workers by value."""
    from ncstudy.study.trainable import run_trial

    def held_trial(config: dict, spec_json: str, data_refs: dict) -> None:
        import ray.tune as tune_module

        real = tune_module.report
        trial_id = tune_module.get_context().get_trial_id()
        folder = Path(barrier)
        done: set[str] = set()

        def report(metrics: dict, *args, **kwargs) -> None:
            real(metrics, *args, **kwargs)
            epoch = int(metrics.get("epoch", 0))
            row = {"launch": launch, "trial": trial_id, "epoch": epoch,
                   "checkpoint": bool(kwargs.get("checkpoint") or (args and args[0])), "config": config}
            with (folder / "reports.jsonl").open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")
            for text in fails:
                _, at, match = _rule("fail:" + text)
                if epoch >= at and _matches(config, match):
                    raise RuntimeError(f"held_cli: this trial fails at epoch {epoch} (--fail {text})")
            for text in holds:
                name, at, match = _rule(text)
                if name in done or epoch < at or not _matches(config, match, folder, launch, trial_id):
                    continue
                done.add(name)
                if (folder / f"reached-{name}-{trial_id}").exists():  # held once already (a retry, a resume)
                    continue
                _reach(folder, f"{name}-{trial_id}")
                _wait_for(folder / f"release-{name}")

        tune_module.report = report
        try:
            run_trial(config, spec_json, data_refs)
        finally:
            tune_module.report = real

    # Tune keeps a trial's trainable by name: a launch without holds (a plain `ncstudy run --resume`)
    # must find the trials of a held one
    held_trial.__name__ = held_trial.__qualname__ = run_trial.__name__
    return held_trial


def _hold_stage(barrier: Path, stage: str, where: str, owner, attr: str) -> None:
    """Wrap ``owner.attr`` so the driver waits at ``stage`` before it runs."""
    if stage != where:
        return
    real = getattr(owner, attr)

    def held(*args, **kwargs):
        _reach(barrier, f"stage-{stage}")
        _wait_for(barrier / f"release-stage-{stage}")
        return real(*args, **kwargs)

    setattr(owner, attr, held)


def main(argv: list[str]) -> int:
    import argparse

    cut = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--barrier", required=True)
    ap.add_argument("--launch", type=int, default=1)
    ap.add_argument("--hold", action="append", default=[])
    ap.add_argument("--fail", action="append", default=[])
    ap.add_argument("--stage")
    ns = ap.parse_args(argv[:cut])
    barrier = Path(ns.barrier)
    barrier.mkdir(parents=True, exist_ok=True)

    import ncstudy.study.runner as runner
    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
    from ncstudy.cli import main as ncstudy_main
    from ncstudy.study.outcome import StudyOutcome

    trial_fn = held_trial_fn(str(barrier), ns.launch, ns.hold, ns.fail)
    real_run_study = runner.run_study
    def run_study(spec, opts, trainable=None, **kw):  # the command line's, with the held trainable
        return real_run_study(spec, opts, trial_fn, **kw)

    runner.run_study = run_study
    _hold_stage(barrier, ns.stage, "before_ray", runner, "load_datasets")
    if ns.stage == "ray_init":  # inside the start of Ray (a deferred section), before ray.init proper
        import ray

        _hold_stage(barrier, ns.stage, "ray_init", ray, "init")
    _hold_stage(barrier, ns.stage, "tune_setup", StudyOutcome, "setup")
    _hold_stage(barrier, ns.stage, "shutdown", MLflowStudyCallback, "on_experiment_end")
    return ncstudy_main(argv[cut + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
