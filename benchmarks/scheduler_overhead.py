"""Benchmark 4: Tune/Ray overhead per trial, with ncstudy's callbacks, on the local instance.

50 trivial trials (a function trainable that only reports 5 results through ``tune.report``) on
one local Ray instance with 2 CPUs, 1 CPU per trial, configured as ``ncstudy run`` configures
Tune (FIFO scheduler, basic variant generator, failure and checkpoint config, trial names) and
with ncstudy's callbacks (``MLflowStudyCallback`` on a local SQLite store, ``ProgressTable``).
The 50 are split between two settings, alternated in four chunks (A 13, B 13, B 12, A 12):

* A: actors as ``ncstudy run`` has them (the study file's ``reuse_actors: true``, the default):
  Tune hands a finished trial's actor to the next trial;
* B: ``reuse_actors: false`` (Tune's own default): a new worker process per trial.

Figures: trials per minute for each (and their ratio); time from a trial's last
``tune.report`` (wall clock stamped in the result) to the end time MLflow records when the run
is set FINISHED (median and max); the share of the driver's time spent inside ncstudy's callback
hooks.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Deadline, HookTimer, machine, median, quiet_tune, start_local_ray, write_json  # noqa: E402

REPORTS = 5
CHUNKS = (("A", 13), ("B", 13), ("B", 12), ("A", 12))


def trivial_trainable(config: dict[str, Any]) -> None:
    import time as _time

    from ray import tune

    for e in range(1, REPORTS + 1):
        tune.report({"epoch": 10 * e, "phase": 1, "train": 0.1 * e, "test": 0.1 * e, "nc1": 1.0 / e,
                     "feat_norm": 1.0 + 0.01 * e, "train_loss": 1.0 / e, "report_wall": _time.time()})


def spec_for(name: str, n: int):
    from ncstudy.study.spec import StudySpec

    return StudySpec.model_validate({"name": name, "space": {"seed": {"grid": list(range(n))}},
                                     "objective": {"metric": "nc1", "mode": "min"}})


def run_chunk(name: str, n: int, reuse: bool, uri: str, storage: str) -> dict[str, Any]:
    from ray import tune

    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
    from ncstudy.study.progress import ProgressTable
    from ncstudy.study.runner import (
        _dirname_creator,
        build_scheduler,
        build_search_alg,
        trial_namer,
        trial_params,
        trial_tags,
        tune_domain,
    )

    spec = spec_for(name, n)
    tracking = MLflowStudyCallback(uri, spec.name, study_params={"study.num_trials": n},
                                   trial_params=trial_params(spec), trial_tags=trial_tags(spec),
                                   trial_label=trial_namer(spec), spill_dir=storage)
    progress = ProgressTable(trial_namer(spec), interval_s=3600, quiet=True, stream=io.StringIO())
    tuner = tune.Tuner(
        tune.with_resources(trivial_trainable, {"cpu": 1}),
        param_space={k: tune_domain(p) for k, p in spec.space.items()},
        tune_config=tune.TuneConfig(metric="nc1", mode="min", search_alg=build_search_alg(spec, None),
                                    scheduler=build_scheduler(spec), num_samples=1, reuse_actors=reuse,
                                    trial_name_creator=trial_namer(spec),
                                    trial_dirname_creator=_dirname_creator),
        run_config=tune.RunConfig(name=spec.name, storage_path=storage, verbose=0, callbacks=[tracking, progress],
                                  failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints)))
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        grid = tuner.fit()
    wall = time.perf_counter() - t
    last_report = {r.metrics["trial_id"]: r.metrics["report_wall"] for r in grid if r.metrics}
    return {"wall": wall, "errors": len(grid.errors), "last_report": last_report,
            "experiment": spec.name}


def finish_latencies(uri: str, experiment: str, last_report: dict[str, float]) -> list[float]:
    """Seconds from each trial's last report to MLflow's end time of its run (FINISHED runs)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    out = []
    for run in c.search_runs([exp.experiment_id], filter_string="tags.`ncstudy.role` = 'trial'", max_results=1000):
        tid = run.data.tags.get("ncstudy.trial_id")
        if run.info.status == "FINISHED" and run.info.end_time and tid in last_report:
            out.append(run.info.end_time / 1000.0 - last_report[tid])
    return out


def main(argv: list[str] | None = None, deadline: Deadline | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args([] if argv is None else argv)
    quiet_tune()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ncstudy_bench_sched_"))
    uri, storage = f"sqlite:///{work / 'mlflow.db'}", str(work / "results")
    started = start_local_ray(2)
    from mlflow.tracking import MlflowClient

    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
    from ncstudy.study.progress import ProgressTable

    with contextlib.redirect_stderr(io.StringIO()):
        MlflowClient(uri).search_experiments()  # schema: a one-off per store, not a per-trial cost
    per: dict[str, dict[str, Any]] = {k: {"trials": 0, "wall": 0.0, "hook_s": 0.0, "latency": [], "errors": 0,
                                          "chunks": []} for k in ("A", "B")}
    try:
        with HookTimer(MLflowStudyCallback) as mt, HookTimer(ProgressTable) as pt:
            for i, (setting, n) in enumerate(CHUNKS):
                mt.reset(), pt.reset()
                r = run_chunk(f"bench_sched_{setting}_{i}_{time.time_ns()}", n, setting == "A", uri, storage)
                p = per[setting]
                p["trials"] += n
                p["wall"] += r["wall"]
                p["hook_s"] += mt.total + pt.total
                p["errors"] += r["errors"]
                p["latency"] += finish_latencies(uri, r["experiment"], r["last_report"])
                p["chunks"].append({"trials": n, "wall_s": r["wall"], "hook_s": mt.total + pt.total})
    finally:
        if started:
            import ray

            ray.shutdown()

    def summary(p: dict[str, Any]) -> dict[str, Any]:
        return {"trials": p["trials"], "wall_s": p["wall"], "trials_per_min": 60.0 * p["trials"] / p["wall"],
                "driver_share_in_callbacks": p["hook_s"] / p["wall"], "errors": p["errors"],
                "last_report_to_finished_s": {"median": median(p["latency"]),
                                              "max": max(p["latency"]) if p["latency"] else None,
                                              "n": len(p["latency"])},
                "chunks": p["chunks"]}

    a, b = summary(per["A"]), summary(per["B"])
    out: dict[str, Any] = {
        "benchmark": "scheduler_overhead",
        "config": {"trials": sum(n for _, n in CHUNKS), "reports_per_trial": REPORTS, "ray_cpus": 2,
                   "resources_per_trial": {"cpu": 1}, "chunks": [list(c) for c in CHUNKS],
                   "tracking_store": "sqlite (local file)", **machine()},
        "ncstudy_run_setting": a,
        "new_actor_per_trial": b,
        "reuse_over_new_actor_trials_per_min": a["trials_per_min"] / b["trials_per_min"],
        "trials_per_min_all": 60.0 * (a["trials"] + b["trials"]) / (a["wall_s"] + b["wall_s"]),
    }
    write_json("scheduler_overhead", out)
    if argv is not None:
        print_summary(out)
    return out


def print_summary(r: dict[str, Any]) -> None:
    for label, key in (("ncstudy run (reuse_actors)", "ncstudy_run_setting"),
                       ("new actor per trial", "new_actor_per_trial")):
        s = r[key]
        lat = s["last_report_to_finished_s"]
        print(f"{label}: {s['trials_per_min']:.1f} trials/min ({s['trials']} trials), last report -> "
              f"MLflow FINISHED median {lat['median']:.2f}s max {lat['max']:.2f}s, driver in callbacks "
              f"{s['driver_share_in_callbacks']:.1%}")
    print(f"reuse/new-actor trials per minute: {r['reuse_over_new_actor_trials_per_min']:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
