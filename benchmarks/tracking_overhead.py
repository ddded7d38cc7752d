"""Benchmark 3: what MLflow tracking costs a study.

* Study wall time with and without the MLflow callback: ``ncstudy.study.runner.run_study`` on
  one local Ray instance (2 CPUs, started once), the same 8-trial synthetic study
  (``tests/study_helpers.py``'s collapsing recipe: MLP width 16/32/48/64 x seeds 0/1, 10 CE + 30
  MSE epochs, an evaluation every 5, a checkpoint every 2 evaluations), same seeds, once with
  ``RunOptions(tracking=True)`` and once with ``tracking=False``, alternated (ABBA when there
  are two pairs), after a 1-trial tracked warm-up study. The MLflow SQLite store exists before the
  first study (creating its schema, a one-off ~4 s per store, is reported apart).
* Time inside the callback's hooks during the tracked studies (:class:`HookTimer`): the time the
  driver's Tune loop, and so every trial waiting on it, is held by tracking; and the CPU time of
  the callback's writer thread, which sends everything to MLflow (``writer_cpu_s``): what
  tracking takes from the trials on a machine whose cores they fill. Both are less noisy than
  the difference of two study wall times on a shared machine.
* Metric points per second into SQLite with ``log_batch`` (1,000 points a call, as the callback
  sends them) against one ``log_metric`` call per value, alternated.
* MLflow requests per trial (:class:`RequestCounter`): every ``MlflowClient`` call the tracked
  studies make, attributed to a trial run (its creation, params, metrics, tags, artifacts, status,
  read-backs) or to the study run; ~14 ms a request on SQLite.

Target: <= 2 % overhead.
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
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.common import (  # noqa: E402
    Deadline,
    HookTimer,
    interleave,
    machine,
    median,
    paired_ratios,
    quiet_tune,
    spread,
    start_local_ray,
    write_json,
)

TARGET_OVERHEAD = 0.02
TRIALS = 8  # the study of study_spec()
CPUS = 2  # of the local Ray instance: 2 trials at a time


def study_spec(name: str, warmup: bool = False):
    from study_helpers import synthetic_study

    from ncstudy.study.spec import StudySpec

    if warmup:
        return StudySpec.model_validate(synthetic_study(name, mse_epochs=5, widths=(16,), seeds=(0,)))
    return StudySpec.model_validate(synthetic_study(name, mse_epochs=30, widths=(16, 32, 48, 64), seeds=(0, 1)))


def run_one(name: str, tracking: bool, uri: str, storage: str, warmup: bool = False) -> tuple[float, int]:
    from ncstudy.study.runner import RunOptions, run_study

    spec = study_spec(name, warmup)
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = run_study(spec, RunOptions(tracking_uri=uri, storage=storage, progress_interval_s=3600,
                                        quiet=True, tracking=tracking))
    return time.perf_counter() - t, rc


#: The ``MlflowClient`` calls that are requests to the tracking store (reads and writes).
CLIENT_CALLS = ("create_run", "log_batch", "log_metric", "log_param", "set_tag", "set_terminated", "update_run",
                "log_artifact", "log_artifacts", "get_run", "get_metric_history", "search_runs",
                "get_experiment_by_name", "create_experiment", "list_artifacts", "download_artifacts")


class RequestCounter:
    """Counts ``MlflowClient`` calls while the ``with`` block runs (the class is patched), per run:
    a trial run's requests are those naming its run id, and its ``create_run`` (tagged with a parent)."""

    def __init__(self) -> None:
        self.by_run: dict[str, dict[str, int]] = {}
        self.other: dict[str, int] = {}
        self._orig: dict[str, Any] = {}
        self.trial_runs: set[str] = set()

    def __enter__(self) -> "RequestCounter":
        import functools

        from mlflow.tracking import MlflowClient

        from ncstudy.adapters.mlflow.layout import PARENT_TAG

        for n in CLIENT_CALLS:
            orig = getattr(MlflowClient, n)
            self._orig[n] = orig

            @functools.wraps(orig)
            def wrapper(client: Any, *a: Any, _orig: Any = orig, _n: str = n, **k: Any) -> Any:
                out = _orig(client, *a, **k)
                run_id = k.get("run_id", a[0] if a and isinstance(a[0], str) else None)
                if _n == "create_run":
                    run_id = out.info.run_id
                    if PARENT_TAG in (k.get("tags") or {}):
                        self.trial_runs.add(run_id)
                bucket = self.by_run.setdefault(run_id, {}) if run_id and len(run_id) == 32 else self.other
                bucket[_n] = bucket.get(_n, 0) + 1
                return out

            setattr(MlflowClient, n, wrapper)
        return self

    def __exit__(self, *exc: Any) -> None:
        from mlflow.tracking import MlflowClient

        for n, orig in self._orig.items():
            setattr(MlflowClient, n, orig)

    def reset(self) -> None:
        self.by_run, self.other, self.trial_runs = {}, {}, set()

    def per_trial(self) -> dict[str, Any]:
        """Requests per trial run (mean, and by call), and the rest (study run, experiment look-ups)."""
        runs = [self.by_run.get(r, {}) for r in self.trial_runs]
        calls: dict[str, int] = {}
        for r in runs:
            for k, v in r.items():
                calls[k] = calls.get(k, 0) + v
        n = max(1, len(runs))
        rest = sum(sum(v.values()) for r, v in self.by_run.items() if r not in self.trial_runs)
        return {"trials": len(runs), "requests_per_trial": sum(calls.values()) / n,
                "by_call_per_trial": {k: v / n for k, v in sorted(calls.items())},
                "study_requests": rest + sum(self.other.values())}


def log_rates(uri: str, reps: int, batch_points: int = 2000, single_points: int = 100) -> dict[str, Any]:
    """Points/s into the store: log_batch (chunks of 1,000) vs one log_metric per point."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from ncstudy.adapters.mlflow.layout import MAX_METRICS_PER_BATCH

    c = MlflowClient(uri)
    exp = c.create_experiment(f"log_rates_{time.time_ns()}")
    run = c.create_run(exp).info.run_id
    step = {"batch": 0, "single": 0}

    def batch() -> None:
        ts = int(time.time() * 1000)
        pts = [Metric(f"m{i % 20}", float(i), ts, step["batch"] + i // 20) for i in range(batch_points)]
        step["batch"] += batch_points // 20
        for i in range(0, len(pts), MAX_METRICS_PER_BATCH):
            c.log_batch(run, metrics=pts[i:i + MAX_METRICS_PER_BATCH])

    def single() -> None:
        for i in range(single_points):
            c.log_metric(run, f"s{i % 20}", float(i), step=step["single"] + i // 20)
        step["single"] += single_points // 20

    batch(), single()  # warm-up
    t = interleave({"log_batch": batch, "log_metric": single}, reps)["wall"]
    rate_b = [batch_points / s for s in t["log_batch"]]
    rate_s = [single_points / s for s in t["log_metric"]]
    r = paired_ratios(rate_b, rate_s)
    return {"points_per_call_batch": MAX_METRICS_PER_BATCH, "batch_points": batch_points,
            "single_points": single_points, "seconds": t,
            "points_per_s": {"log_batch": median(rate_b), "log_metric": median(rate_s)},
            "log_batch_over_log_metric": median(r), "spread": spread(r)}


def main(argv: list[str] | None = None, deadline: Deadline | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4, help="with/without pairs (after the first, only if time allows)")
    ap.add_argument("--rate-reps", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args([] if argv is None else argv)
    deadline = deadline or Deadline(None)
    quiet_tune()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ncstudy_bench_tracking_"))
    uri, storage = f"sqlite:///{work / 'mlflow.db'}", str(work / "results")
    started = start_local_ray(CPUS)
    from mlflow.tracking import MlflowClient

    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback

    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        MlflowClient(uri).search_experiments()  # creates the schema: a one-off per store
    schema_s = time.perf_counter() - t0
    # Warm-up: a 1-trial tracked study, so neither side pays the driver's first imports (Tune,
    # MLflow, matplotlib) or Ray's first worker start-ups.
    warmup_s, _ = run_one("bench_tracking_warmup", True, uri, storage, warmup=True)

    walls: dict[str, list[float]] = {"with": [], "without": []}
    hook_s: list[float] = []
    writer_cpu: list[float] = []
    end_hook = MLflowStudyCallback.on_experiment_end

    def on_experiment_end(self, *a: Any, **k: Any) -> None:  # the writer is joined in there
        try:
            end_hook(self, *a, **k)
        finally:
            writer_cpu.append(self.writer.cpu_s)
    hooks: list[dict[str, float]] = []
    requests: list[dict[str, Any]] = []
    rcs: list[int] = []
    order: list[str] = []
    MLflowStudyCallback.on_experiment_end = on_experiment_end
    try:
        with HookTimer(MLflowStudyCallback) as timer, RequestCounter() as counter:
            for p in range(args.pairs):
                pair_est = sum(walls["with"][-1:] + walls["without"][-1:])
                if p > 0 and not deadline.allows(pair_est * 1.3 + 60):
                    break
                for mode in (("with", "without") if p % 2 == 0 else ("without", "with")):
                    timer.reset()
                    counter.reset()
                    wall, rc = run_one(f"bench_tracking_{mode}_{p}", mode == "with", uri, storage)
                    walls[mode].append(wall)
                    rcs.append(rc)
                    order.append(mode)
                    if mode == "with":
                        hook_s.append(timer.total)
                        hooks.append({k: round(v, 4) for k, v in timer.seconds.items() if v})
                        requests.append(counter.per_trial())
        rates = log_rates(uri, args.rate_reps)
    finally:
        MLflowStudyCallback.on_experiment_end = end_hook
        if started:
            import ray

            ray.shutdown()

    over = [w / wo - 1.0 for w, wo in zip(walls["with"], walls["without"])]
    hook_share = [h / w for h, w in zip(hook_s, walls["with"])]
    cpu_share = [c / (CPUS * w) for c, w in zip(writer_cpu, walls["with"])]
    # A fixed cost per trial: what it is, and the trial length (one core busy) at which it is 2 %.
    per_trial = median([c / TRIALS for c in writer_cpu]) if writer_cpu else None
    trial_s = median([CPUS * w / TRIALS for w in walls["without"]]) if walls["without"] else None
    out: dict[str, Any] = {
        "benchmark": "tracking_overhead",
        "config": {"trials": TRIALS, "study": "synthetic MLP w16/32/48/64 x seeds 0/1, 10 CE + 30 MSE epochs, "
                   "eval every 5, checkpoint every 2 evals", "ray_cpus": CPUS, "resources_per_trial": {"cpu": 1},
                   "tracking_store": "sqlite (local file)", "order": order, **machine()},
        "study_wall_s": walls,
        "return_codes": rcs,
        "overhead_wall": median(over) if over else None,
        "overhead_wall_per_pair": over,
        "callback_hook_s": hook_s,
        "callback_hooks_by_name_s": hooks,
        "callback_share_of_study_wall": median(hook_share) if hook_share else None,
        "writer_cpu_s": writer_cpu,
        "writer_cpu_share_of_study_cpu": median(cpu_share) if cpu_share else None,
        "writer_cpu_per_trial_s": per_trial,
        "untracked_trial_core_s": trial_s,
        "trial_core_s_for_2pct": per_trial / TARGET_OVERHEAD if per_trial is not None else None,
        "mlflow_requests": requests,
        "requests_per_trial": median([r["requests_per_trial"] for r in requests]) if requests else None,
        "schema_creation_s": schema_s,
        "warmup_study_s": warmup_s,
        "log_rates": rates,
        "target_overhead_le": TARGET_OVERHEAD,
        "met": bool(over) and median(over) <= TARGET_OVERHEAD,
    }
    write_json("tracking_overhead", out)
    if argv is not None:
        print_summary(out)
    return out


def print_summary(r: dict[str, Any]) -> None:
    w = r["study_wall_s"]
    print(f"study of 8 trials: with MLflow {w['with']} s, without {w['without']} s -> overhead "
          f"{r['overhead_wall']:+.1%} (target <= {TARGET_OVERHEAD:.0%}); time in callback hooks "
          f"{r['callback_share_of_study_wall']:.1%} of the study; writer thread CPU "
          f"{r['writer_cpu_share_of_study_cpu']:.1%} of the study's 2-core CPU time, "
          f"{r['writer_cpu_per_trial_s']:.2f} s per trial (trials of {r['untracked_trial_core_s']:.1f} core-s; "
          f"2 % from {r['trial_core_s_for_2pct']:.0f} core-s)")
    if r.get("requests_per_trial") is not None:
        q = r["mlflow_requests"][0]
        calls = ", ".join(f"{k} {v:g}" for k, v in q["by_call_per_trial"].items())
        print(f"MLflow requests per trial: {r['requests_per_trial']:g} ({calls}); study run and look-ups: "
              f"{q['study_requests']} per study")
    lr = r["log_rates"]
    print(f"log_batch {lr['points_per_s']['log_batch']:.0f} points/s vs log_metric "
          f"{lr['points_per_s']['log_metric']:.0f} points/s: {lr['log_batch_over_log_metric']:.0f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
