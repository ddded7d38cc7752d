"""Benchmark 6: how the driver's cost grows with the number of trials (issue 17).

    .venv/bin/python benchmarks/scale.py                   # N = 100, 300, 1000; writes results/scale.json
    .venv/bin/python benchmarks/scale.py --n 100 300       # a subset
    .venv/bin/python benchmarks/scale.py --one 50 --json /tmp/s.json   # one study, in this process
    .venv/bin/python benchmarks/scale.py --cluster --n 100 300  # on a 3-node cluster; results/scale_cluster.json

Each N is one study run in a fresh driver process (so peak RSS and CPU are that study's alone)
through the real path -- :func:`ncstudy.study.runner.run_study` (what ``ncstudy run`` calls), Ray
Tune (2 CPUs, reused actors, a checkpoint every 5 evaluations), the fn* stopper with policy
``stop_at_forecast`` (the default conformal forecaster, the packaged corpus prior, learning online)
and MLflow tracking to a real ``mlflow server`` on loopback (SQLite store) -- with a trainable that
replays recorded trajectories (the trajectory corpus ``analysis/corpus/runs/*.csv.gz`` when it
exists, else the 27 reference MNIST MLP-5 logs; trial ``seed`` picks one) at full speed instead of
training: only the service's own costs remain.

Measured in the driver process: CPU (``getrusage``, every thread: Tune's loop, the MLflow writer,
Ray's core worker), the CPU (thread time) inside the fn* stopper, the MLflow callback's hooks plus
its writer thread, and the progress table; apart from it, the CPU of the picture process that
draws every ``trajectory.png`` and the overview (a child of the driver, off its GIL); peak RSS
(sampled every 0.2 s) over the RSS before the study; bytes of stopper state written (its journal
files and its part of Tune's callback state, as pickled); the MLflow callback's part of Tune's
callback state (pickled); Tune's own ``experiment_state-*.json`` (every trial's state) at each save;
HTTP requests to the MLflow server (counted at ``requests.Session.request``); wall time. Nothing
here is a ratio of alternated runs: one study per N, on a shared machine, so the wall and CPU
figures carry the machine's noise (a few per cent to tens of per cent).

``--cluster``: each study runs on a private multi-node cluster on this machine
(``ray.cluster_utils.Cluster``, ``tests/ray_cluster.py``: a head node with no CPU that runs only
the driver, and two worker nodes of one CPU and one (unused) logical GPU each: the same 2 CPUs in
all), connected to as ``ncstudy run --address`` would: results and checkpoints cross node
boundaries (raylet to raylet, the GCS), which a single node never does.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, machine, write_json  # noqa: E402
from ncstudy import text  # noqa: E402

DEFAULT_N = (100, 300, 1000)
CORPUS = ROOT / "analysis" / "corpus" / "runs"
BUDGET = 600  # the reference protocol: 200 CE + 400 MSE epochs
PER_TRIAL = ("driver_cpu_s_per_trial", "service_cpu_s_per_trial", "picture_cpu_s_per_trial",
             "mlflow_requests_per_trial",
             "stopper_state_bytes_per_trial", "wall_s_per_trial", "tune_state_bytes_per_trial",
             "tracking_state_bytes_per_trial", "whole_state_bytes_per_trial_if_saved")


def reference_dir() -> Path:
    for p in (os.environ.get("NCSTUDY_REFERENCE_LOGS"), ROOT.parent / "shared" / "reference" / "rupa2026_logs",
              Path("/work/shared/reference/rupa2026_logs")):
        if p and Path(p).is_dir():
            return Path(p)
    raise SystemExit("reference logs not found; set NCSTUDY_REFERENCE_LOGS")


# -- trajectories ---------------------------------------------------------------------------------
def trajectories(limit_epoch: int = BUDGET) -> tuple[list[list[dict[str, Any]]], str]:
    """Records to replay: the corpus when it has runs, else the reference MNIST MLP-5 logs."""
    from ncstudy.runs import load_runs

    if CORPUS.is_dir() and any(CORPUS.glob("*.csv.gz")):
        trajs, source = load_runs(CORPUS), f"corpus ({CORPUS.relative_to(ROOT)})"
    else:
        # what each reference file is: the rupa2026 preset's file map
        manifest = ROOT / "ncstudy" / "analyze" / "presets" / "rupa2026_runs.csv"
        trajs = [t for t in load_runs(reference_dir(), manifest)
                 if (t.attrs.get("model"), t.attrs.get("dataset"), t.attrs.get("depth"), t.attrs.get("protocol"))
                 == ("mlp", "mnist", 5, "two-phase")]
        source = "reference MNIST MLP-5 logs"
    out = []
    for t in trajs:
        recs = [{k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                for r in t.records if float(r["epoch"]) <= limit_epoch]
        if recs:
            out.append(recs)
    return out, f"{source}, {len(out)} runs"


def replay_trainable(trajs: list[list[dict[str, Any]]]) -> Callable[..., None]:
    """A stand-in for :func:`ncstudy.study.trainable.run_trial`: reports trajectory ``seed % len``,
    record by record, with the extras run_trial adds and a (tiny) checkpoint every
    ``checkpoint_every`` evaluations; a restored trial continues after its checkpoint."""

    def replay(config: dict[str, Any], spec_json: str, data_refs: dict[str, Any]) -> None:
        import ray
        from ray import tune

        from ncstudy.study.spec import StudySpec

        spec = StudySpec.model_validate_json(spec_json)
        cfg = spec.resolve(config)
        recs = trajs[cfg.seed % len(trajs)]
        start = 0
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                start = json.loads((Path(d) / "pos.json").read_text())["next"]
        ctx = ray.get_runtime_context()
        where = {"node_id": ctx.get_node_id(), "gpu_ids": "", "gpu_share": "0"}
        t_nc = float("nan")
        for i in range(start, len(recs)):
            rec = recs[i]
            last = i == len(recs) - 1
            if rec.get("nc1", float("nan")) < 0.01 and t_nc != t_nc:
                t_nc = float(rec["epoch"])
            metrics = dict(rec, t_nc=t_nc, collapse_epoch=t_nc if t_nc == t_nc else 2.0 * cfg.total_epochs,
                           stop_reason="budget" if last else "", **where)
            if last or (i + 1) % spec.checkpoint_every == 0:
                metrics["checkpointed"] = 1
                with tempfile.TemporaryDirectory() as d:
                    (Path(d) / "pos.json").write_text(json.dumps({"next": i + 1}))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            else:
                tune.report(metrics)

    return replay


def study_dict(n: int) -> dict[str, Any]:
    """N trials (grid over ``seed``), the fn* stopper at stop_at_forecast, a tiny synthetic dataset
    that no trial reads (the replay trainable ignores it)."""
    return {
        "name": f"scale{n}",
        "base": {"device": "cpu", "threads": 1,
                 "data": {"name": "synthetic", "num_classes": 4, "dim": 8, "n_train": 40, "n_test": 20},
                 "model": {"name": "mlp", "depth": 5, "width": 16},
                 "ce_epochs": 200, "mse_epochs": 400, "eval": {"nc_every": 10, "stop_at_onset": False}},
        "space": {"seed": {"grid": list(range(n))}},
        "searcher": "grid", "scheduler": {"name": "fnstar", "fnstar": {"policy": "stop_at_forecast"}},
        "objective": {"metric": "collapse_epoch", "mode": "min"},
        "resources": {"cpu": 1}, "checkpoint_every": 5, "trial_name": "r{seed}",
    }


# -- instruments (this process only) ----------------------------------------------------------------
class Meter:
    """Thread-CPU and call counts of wrapped methods, by label."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, cls: type, name: str, label: str, after: Callable[..., None] | None = None) -> None:
        orig = cls.__dict__[name]

        def wrapped(*a: Any, **k: Any) -> Any:
            t = time.thread_time()
            try:
                out = orig(*a, **k)
            finally:
                self.cpu[label] = self.cpu.get(label, 0.0) + time.thread_time() - t
                self.calls[label] = self.calls.get(label, 0) + 1
            if after is not None:
                after(a[0], out)
            return out

        setattr(cls, name, wrapped)
        self._undo.append(lambda: setattr(cls, name, orig))

    def undo(self) -> None:
        for u in reversed(self._undo):
            u()
        self._undo.clear()


class RssPeak:
    """The largest resident set of this process, sampled every ``every_s``."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self._t = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> "RssPeak":
        self.start = self.peak = self.now()
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.end = self.now()
        self.peak = max(self.peak, self.end)


def measure(n: int, work: Path, tracking_uri: str, num_cpus: int = 2, baseline_state: bool = False,
            progress_interval_s: float = 10.0, trajs: list | None = None,
            check_restore: bool = False, cluster: bool = False) -> dict[str, Any]:
    """Run one N-trial study in this process (Ray must not be running here yet) and measure it.
    ``cluster``: on a head with no CPU and two one-CPU worker nodes (``tests/ray_cluster.py``)
    instead of one local node with ``num_cpus``.
    ``baseline_state``: the stopper saves its whole state at every save (what it did before issue 17).
    ``check_restore``: also write ``<work>/saved_state.json``, the stopper's whole state
    (:meth:`~ncstudy.forecast.stopper.ForecastStopper.to_dict`) as of its last save, for a test to
    compare with a restore from the experiment folder."""
    import ray
    import requests
    from ray import cloudpickle
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController

    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
    from ncstudy.adapters.ray_tune import OnsetStopper
    from ncstudy.study import runner
    from ncstudy.study.progress import ProgressTable
    from ncstudy.study.spec import StudySpec

    if __name__ != "__main__":  # workers need not import benchmarks/ (__main__ travels by value anyway)
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if trajs is None:
        trajs, source = trajectories()
    else:
        source = f"given, {len(trajs)} runs"
    spec = StudySpec.model_validate(study_dict(n))
    meter = Meter()
    holder: dict[str, Any] = {}
    stats = {"stopper_state_bytes": 0, "stopper_saves": 0, "whole_state_bytes": 0, "tracking_state_bytes": 0,
             "tune_state_bytes": 0, "tune_saves": 0, "mlflow_requests": 0, "results": 0}
    requests_by: dict[str, int] = {}

    def count_state(stopper: Any, state: Any) -> None:
        stats["stopper_saves"] += 1
        stats["stopper_state_bytes"] += len(pickle.dumps(state))
        # what the save would have cost before issue 17: the whole state (every trial's records) each time
        stats["whole_state_bytes"] += len(pickle.dumps(stopper.core.stopper.to_dict()))
        if check_restore:
            holder["saved_state"] = json.dumps(stopper.core.stopper.to_dict())

    def count_tracking_state(cb: Any, state: Any) -> None:
        stats["tracking_state_bytes"] += len(pickle.dumps(state))

    def count_tune(ctrl: Any, _: Any) -> None:
        d = Path(ctrl._storage.experiment_driver_staging_path)
        stats["tune_saves"] += 1
        p = d / ctrl.experiment_state_file_name  # the trials' states (the callbacks' are counted apart)
        stats["tune_state_bytes"] += p.stat().st_size if p.exists() else 0

    def count_call(stopper: Any, _: Any) -> None:
        stats["results"] += 1

    for name in ("__call__", "on_trial_start", "on_trial_restore", "on_trial_complete", "on_trial_error",
                 "on_experiment_end"):
        meter.wrap(OnsetStopper, name, "stopper", count_call if name == "__call__" else None)
    meter.wrap(OnsetStopper, "get_state", "stopper", count_state)
    for name in ("setup", "on_trial_start", "on_trial_restore", "on_trial_result", "on_trial_complete",
                 "on_trial_error", "on_experiment_end"):
        meter.wrap(MLflowStudyCallback, name, "tracking_hooks",
                   (lambda cb, _: holder.setdefault("tracking", cb)) if name == "setup" else None)
    meter.wrap(MLflowStudyCallback, "get_state", "tracking_hooks", count_tracking_state)
    for name in ("on_trial_result", "on_trial_complete", "on_trial_error", "on_experiment_end"):
        meter.wrap(ProgressTable, name, "progress")
    meter.wrap(TuneController, "save_to_dir", "tune_save", count_tune)
    meter.wrap(CallbackList, "save_to_dir", "callback_save")

    orig_request = requests.Session.request

    def request(self: Any, method: str, url: str, *a: Any, **k: Any) -> Any:
        if str(url).startswith(tracking_uri):
            stats["mlflow_requests"] += 1
            path = str(url)[len(tracking_uri):].split("?")[0]
            if "/mlflow-artifacts/artifacts/" in path:  # one key per artifact name, not per run
                path = "/mlflow-artifacts/artifacts/.../" + path.rsplit("/", 1)[-1]
            key = f"{method.upper()} {path}"
            requests_by[key] = requests_by.get(key, 0) + 1
        return orig_request(self, method, url, *a, **k)

    requests.Session.request = request  # type: ignore[method-assign]
    orig_build = runner.build_stopper

    def build_stopper(s: StudySpec) -> Any:
        st = holder["stopper"] = orig_build(s)
        if baseline_state and st is not None:
            st._attach = lambda trial: None  # never attached: the whole state at every save
        return st

    runner.build_stopper = build_stopper  # type: ignore[assignment]
    import ncstudy.data  # noqa: F401  -- imports run_study makes anyway, before the RSS baseline
    import ncstudy.plots  # noqa: F401
    import ncstudy.study.trainable  # noqa: F401

    local_cluster = None
    if cluster:  # started last, right before the try that shuts it down
        sys.path.insert(0, str(ROOT / "tests"))
        from ray_cluster import LocalCluster

        local_cluster = LocalCluster()
    try:
        if local_cluster is not None:
            ray.init(address=local_cluster.address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        opts = runner.RunOptions(tracking_uri=tracking_uri, storage=str(work / "res"),
                                 num_cpus=None if cluster else num_cpus,
                                 address=local_cluster.address if local_cluster else None,
                                 progress_interval_s=progress_interval_s, study_file=f"scale{n}.yaml")
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with RssPeak() as rss:
            status = runner.run_study(spec, opts, trainable=replay_trainable(trajs))
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        runner.build_stopper = orig_build  # type: ignore[assignment]
        requests.Session.request = orig_request  # type: ignore[method-assign]
        meter.undo()
        if local_cluster is not None:
            local_cluster.shutdown()  # ray.shutdown() first, then the cluster's processes
        else:
            ray.shutdown()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if check_restore and "saved_state" in holder:
        (work / "saved_state.json").write_text(holder["saved_state"])
    stopper, tracking = holder.get("stopper"), holder.get("tracking")
    writer_cpu = float(getattr(getattr(tracking, "writer", None), "cpu_s", 0.0) or 0.0)
    picture_cpu = float(getattr(getattr(tracking, "writer", None), "picture_cpu_s", 0.0) or 0.0)
    if stopper is not None:
        stats["stopper_state_bytes"] += stopper.core.bytes_written
    reasons: dict[str, int] = {}
    for m in (stopper.core.stopper.monitors.values() if stopper is not None else []):
        r = m.final_reason or m.stop_reason or "running"
        reasons[r] = reasons.get(r, 0) + 1
    service = meter.cpu.get("stopper", 0.0) + meter.cpu.get("tracking_hooks", 0.0) + writer_cpu
    results = max(stats["results"], 1)
    out = {
        "n": n, "status": status, "source": source, "wall_s": wall, "driver_cpu_s": cpu,
        "results": stats["results"], "stop_reasons": reasons,
        "cpu_s": {"stopper": meter.cpu.get("stopper", 0.0), "tracking_hooks": meter.cpu.get("tracking_hooks", 0.0),
                  "tracking_writer": writer_cpu, "pictures": picture_cpu, "progress": meter.cpu.get("progress", 0.0),
                  "tune_save": meter.cpu.get("tune_save", 0.0)},
        "calls": meter.calls,
        "rss_start_mb": rss.start / 2**20, "rss_peak_mb": rss.peak / 2**20, "rss_end_mb": rss.end / 2**20,
        "rss_growth_mb": (rss.peak - rss.start) / 2**20,
        "stopper_state_bytes": stats["stopper_state_bytes"], "stopper_saves": stats["stopper_saves"],
        "whole_state_bytes_if_saved": stats["whole_state_bytes"],
        "stopper_journal_bytes": stopper.core.bytes_written if stopper is not None else 0,
        "stopper_segments": stopper.core.segments if stopper is not None else 0,
        "tune_state_bytes": stats["tune_state_bytes"], "tune_saves": stats["tune_saves"],
        "tracking_state_bytes": stats["tracking_state_bytes"],
        "tracking_writer_overview_cpu_s": _seconds(getattr(getattr(tracking, "writer", None), "overview_cpu_s", 0)),
        "tracking_writer_plot_cpu_s": _seconds(getattr(getattr(tracking, "writer", None), "plot_cpu_s", 0)),
        "mlflow_requests": stats["mlflow_requests"], "mlflow_requests_by_endpoint": requests_by,
        "calibration_runs": stopper.calibration.n_runs() if stopper is not None else 0,
        "calibration_commits": stopper.core.stopper.commits if stopper is not None else 0,
        "baseline_state": baseline_state, "nodes": "head (0 CPU) + 2 workers (1 CPU)" if cluster else "1 (2 CPUs)",
    }
    out.update({
        "driver_cpu_s_per_trial": cpu / n, "driver_cpu_ms_per_result": 1e3 * cpu / results,
        "service_cpu_s_per_trial": service / n, "service_cpu_ms_per_result": 1e3 * service / results,
        "stopper_cpu_ms_per_result": 1e3 * meter.cpu.get("stopper", 0.0) / results,
        "tracking_cpu_ms_per_result": 1e3 * (meter.cpu.get("tracking_hooks", 0.0) + writer_cpu) / results,
        "picture_cpu_s_per_trial": picture_cpu / n, "picture_cpu_ms_per_result": 1e3 * picture_cpu / results,
        "mlflow_requests_per_trial": stats["mlflow_requests"] / n,
        "stopper_state_bytes_per_trial": stats["stopper_state_bytes"] / n,
        "whole_state_bytes_per_trial_if_saved": stats["whole_state_bytes"] / n,
        "tune_state_bytes_per_trial": stats["tune_state_bytes"] / n,
        "tracking_state_bytes_per_trial": stats["tracking_state_bytes"] / n,
        "wall_s_per_trial": wall / n, "results_per_trial": stats["results"] / n,
        "rss_growth_mb_per_1000_trials": 1000 * (rss.peak - rss.start) / 2**20 / n,
    })
    return out


def _seconds(x: Any) -> float:
    """A CPU-seconds figure the writer keeps as a number or a list of them."""
    try:
        return float(sum(x)) if isinstance(x, (list, tuple)) else float(x or 0.0)
    except (TypeError, ValueError):
        return float("nan")


# -- the parent: one child process per N, one MLflow server per N ------------------------------------
def run_one(n: int, work: Path, timeout_s: float, baseline_state: bool = False,
            check_restore: bool = False, cluster: bool = False) -> dict[str, Any]:
    """One study of ``n`` trials in a child driver process with its own ``mlflow server`` (stopped
    by PID); the study's folders stay under ``work`` (``res/scale<n>``, ``mlflow``, ``driver.log``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from mlflow_server import MlflowServer

    from ncstudy.adapters.mlflow.server import spawn

    work.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(work / "mlflow").start(timeout=600.0)  # a loaded machine can take minutes
    try:
        out = work / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(n), "--json", str(out),
               "--work", str(work), "--tracking-uri", server.uri] + (["--baseline-state"] if baseline_state else []) \
            + (["--check-restore"] if check_restore else []) + (["--cluster"] if cluster else [])
        with (work / "driver.log").open("w") as log:
            # its own session, and a SIGTERM from the kernel should this process die first
            p = spawn(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)
            try:
                rc = p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
                return {"n": n, "error": f"timed out after {timeout_s:.0f} s"}
        if rc != 0 or not out.exists():
            return {"n": n, "error": f"driver exited {rc}: {(work / 'driver.log').read_text()[-2000:]}"}
        res = json.loads(out.read_text())
        res["mlflow_server_log_requests"] = sum(1 for line in server.log_tail(10**9).splitlines()
                                                if '" 200' in line or "HTTP/1.1" in line)
        return res
    finally:
        server.stop()


def ratios(by_n: dict[int, dict[str, Any]]) -> dict[str, float]:
    ok = {n: r for n, r in by_n.items() if "error" not in r}
    if len(ok) < 2:
        return {}
    lo, hi = ok[min(ok)], ok[max(ok)]
    out = {"rss_peak_mb_per_1000_trials_slope": 1000 * (hi["rss_peak_mb"] - lo["rss_peak_mb"]) / (hi["n"] - lo["n"])}
    for k in PER_TRIAL + ("service_cpu_ms_per_result", "driver_cpu_ms_per_result"):
        if lo.get(k):
            out[k] = hi[k] / lo[k]
    return out


def main(ns: tuple[int, ...] = DEFAULT_N, timeout_s: float = 3600.0, baseline_ns: tuple[int, ...] = (),
         keep: bool = False, cluster: bool = False) -> dict[str, Any]:
    """Each N in its own driver process; writes ``results/scale.json`` (``scale_cluster.json`` with
    ``cluster``)."""
    t0 = time.time()
    by_n: dict[int, dict[str, Any]] = {}
    base: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ncstudy_scale_") as tmp:
        for n in ns:
            print(f"[scale] N={n} ...", flush=True)
            try:
                by_n[n] = run_one(n, Path(tmp) / f"n{n}", timeout_s, cluster=cluster)
            except Exception as e:  # report and go on with the next N
                by_n[n] = {"n": n, "error": f"{type(e).__name__}: {e}"}
            print(f"[scale] N={n}: {summary_line(by_n[n])}", flush=True)
        for n in baseline_ns:
            print(f"[scale] N={n}, whole stopper state at every save (before issue 17) ...", flush=True)
            base[n] = run_one(n, Path(tmp) / f"b{n}", timeout_s, baseline_state=True)
            print(f"[scale] N={n} baseline: {summary_line(base[n])}", flush=True)
        if keep:
            import shutil

            shutil.copytree(tmp, RESULTS / "scale_work", dirs_exist_ok=True)
    res = {"description": "driver cost per trial at N trials (issue 17): real run_study + Tune + fn* stopper "
                          "(stop_at_forecast) + MLflow server on loopback, replayed trajectories",
           "ns": list(ns), "by_n": {str(n): r for n, r in by_n.items()}, "ratio_max_over_min_n": ratios(by_n),
           "baseline_whole_state": {str(n): r for n, r in base.items()},
           "targets": {"per_trial_ratio_max": 1.2, "rss_growth_mb_per_1000_max": 500,
                       "service_cpu_ms_per_result_max": 2.0},
           "machine": machine(), "seconds": time.time() - t0}
    res["cluster"] = cluster
    write_json("scale_cluster" if cluster else "scale", res)
    return res


def summary_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + r["error"][-300:]
    return (f"{r['wall_s']:.0f} s, driver CPU {r['driver_cpu_s_per_trial']:.3f} s/trial "
            f"({r['driver_cpu_ms_per_result']:.2f} ms/result), service {r['service_cpu_ms_per_result']:.2f} ms/result, "
            f"pictures {r['picture_cpu_s_per_trial']:.2f} s/trial, "
            f"RSS +{r['rss_growth_mb']:.0f} MB, stopper state {r['stopper_state_bytes_per_trial'] / 1e3:.1f} kB/trial, "
            f"Tune state {r['tune_state_bytes_per_trial'] / 1e3:.1f} kB/trial, "
            f"MLflow {r['mlflow_requests_per_trial']:.1f} req/trial, stops {r['stop_reasons']}")


def table(res: dict[str, Any]) -> str:
    """Markdown: one column per N, the ratio last."""
    ns = [n for n in res["ns"] if "error" not in res["by_n"][str(n)]]
    rat = res.get("ratio_max_over_min_n", {})
    rows = [
        ("trials run (results per trial)", lambda r: f"{r['n']} ({r['results_per_trial']:.1f})", None),
        ("driver CPU per trial", lambda r: f"{r['driver_cpu_s_per_trial']:.3f} s", "driver_cpu_s_per_trial"),
        ("driver CPU per result", lambda r: f"{r['driver_cpu_ms_per_result']:.2f} ms", "driver_cpu_ms_per_result"),
        ("service CPU per result (stopper + MLflow hooks + writer)",
         lambda r: f"{r['service_cpu_ms_per_result']:.2f} ms ({r['stopper_cpu_ms_per_result']:.2f} + "
                   f"{r['tracking_cpu_ms_per_result']:.2f})", "service_cpu_ms_per_result"),
        ("pictures, in their own process: CPU per trial (per result)",
         lambda r: f"{r.get('picture_cpu_s_per_trial', math.nan):.2f} s "
                   f"({r.get('picture_cpu_ms_per_result', math.nan):.2f} ms)",
         "picture_cpu_s_per_trial"),
        ("peak driver RSS (growth over the study)", lambda r: f"{r['rss_peak_mb']:.0f} MB (+{r['rss_growth_mb']:.0f})",
         None),
        ("stopper state written, total (per trial)",
         lambda r: f"{r['stopper_state_bytes'] / 1e6:.2f} MB ({r['stopper_state_bytes_per_trial'] / 1e3:.1f} kB)",
         "stopper_state_bytes_per_trial"),
        ("... the whole state at each save instead (before issue 17), total (per trial)",
         lambda r: f"{r['whole_state_bytes_if_saved'] / 1e6:.2f} MB "
                   f"({r['whole_state_bytes_per_trial_if_saved'] / 1e3:.1f} kB)",
         "whole_state_bytes_per_trial_if_saved"),
        ("Tune's experiment_state (every trial's state) written, total (per trial)",
         lambda r: f"{r['tune_state_bytes'] / 1e6:.1f} MB ({r['tune_state_bytes_per_trial'] / 1e3:.0f} kB)",
         "tune_state_bytes_per_trial"),
        ("MLflow callback state written, total (per trial)",
         lambda r: f"{r['tracking_state_bytes'] / 1e6:.1f} MB ({r['tracking_state_bytes_per_trial'] / 1e3:.0f} kB)",
         "tracking_state_bytes_per_trial"),
        ("MLflow requests per trial", lambda r: f"{r['mlflow_requests_per_trial']:.1f}", "mlflow_requests_per_trial"),
        ("wall time per trial", lambda r: f"{r['wall_s_per_trial']:.2f} s", "wall_s_per_trial"),
        ("stop reasons", lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r["stop_reasons"].items())), None),
    ]
    ratio = len(ns) > 1  # a ratio column only when there are two sizes to compare
    head = ["figure", *(f"N = {n}" for n in ns)] + ([f"N = {ns[-1]} / N = {ns[0]}"] if ratio else [])
    cells = [[label, *(fmt(res["by_n"][str(n)]) for n in ns)]
             + ([text.value(rat.get(key), fixed=2, unit="x")] if ratio else []) for label, fmt, key in rows]
    return text.table(head, cells, markdown=True)


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", nargs="*", type=int, default=list(DEFAULT_N))
    ap.add_argument("--baseline", nargs="*", type=int, default=[],
                    help="also run these N with the whole stopper state at every save (before issue 17)")
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="per study")
    ap.add_argument("--cluster", action="store_true",
                    help="each study on a head (no CPU) and two one-CPU worker nodes (ray.cluster_utils); "
                         "writes results/scale_cluster.json")
    ap.add_argument("--keep", action="store_true", help="copy the studies' folders to benchmarks/results/scale_work")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--tracking-uri", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-state", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check-restore", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        res = measure(args.one, Path(args.work), args.tracking_uri, baseline_state=args.baseline_state,
                      check_restore=args.check_restore, cluster=args.cluster)
        Path(args.json).write_text(json.dumps(res, indent=1))
        return 0
    from ncstudy.errors import Interrupted
    from ncstudy.study.signals import StopSignals

    # SIGTERM, SIGHUP, Ctrl-C: the `finally`s run, so every MLflow server and driver started is stopped
    try:
        with StopSignals():
            res = main(tuple(args.n), args.timeout_s, tuple(args.baseline), args.keep, args.cluster)
    except Interrupted as e:
        print(f"[scale] stopped by {e}", file=sys.stderr)
        return e.exit_status
    print(table(res))
    print(json.dumps(res["ratio_max_over_min_n"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
