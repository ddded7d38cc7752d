"""Benchmark 7: several studies at once writing to one MLflow server, SQLite against PostgreSQL (issue 28).

    .venv/bin/python benchmarks/multi_study.py                       # 4 drivers x 250 trials; results/multi_study.json
    .venv/bin/python benchmarks/multi_study.py --drivers 2 --trials 20 --json /tmp/m.json   # a smoke run

For each store -- an ``mlflow server`` (4 workers, MLflow's default, as the cluster head runs it)
whose backend store is a SQLite file, then one whose store is a PostgreSQL database
(``tests/postgres.py``: a real PostgreSQL in a temporary folder) -- four driver processes start
together (a barrier file), each with its own experiment, and each tracks 250 trials through ncstudy's
real tracking service: :class:`~ncstudy.adapters.mlflow.callback.MLflowStudyCallback` and its writer
thread (flush every 5 s and at each trial's end, a ``trajectory.csv``/``.png`` per trial, the study's
overview), fed by two trials at a time replaying recorded trajectories (``benchmarks/scale.py``'s
corpus) at full speed. No Ray here: Tune's own cost per trial is benchmark 6's; this one loads the
store, with four drivers' writers as fast as they go.

Per store: HTTP requests to the server (counted at ``requests.Session.request`` in every driver;
requests elsewhere, such as MLflow's telemetry fetch, are not counted),
those that failed (an exception, or an answer >= 500: the writer retries them), the requests per
second the server sustained (all drivers' requests over the span from the first start to the last
end), each driver's wall time, and its service cost per result (CPU of the callback's hooks plus its
writer thread, per reported result), and whether every metric point arrived (read back per run).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.common import machine, write_json  # noqa: E402

DRIVERS, TRIALS, LIVE = 4, 250, 2  # drivers, trials each, trials reporting at a time per driver
SERVER_WORKERS = 4


class FakeTrial:
    """What the callback reads of a Tune ``Trial``."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id, self.config, self.last_result, self.status = trial_id, config, {}, "RUNNING"

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def driver(uri: str, name: str, trials: int, go: Path, out: Path) -> None:
    """One study's tracking: ``trials`` trials, ``LIVE`` at a time, each replaying one trajectory."""
    import requests

    from benchmarks.scale import trajectories
    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
    from ncstudy.study.runner import QUIET_TUNE_ENV

    for k, v in QUIET_TUNE_ENV.items():  # as `ncstudy run` sets them (no runs/get per trial for a "View run" line)
        os.environ.setdefault(k, v)
    trajs, source = trajectories()
    stats: dict[str, Any] = {"requests": 0, "failed": 0, "by_status": {}, "failed_urls": []}
    lock = threading.Lock()
    orig = requests.Session.request

    def request(self: Any, method: str, url: str, *a: Any, **k: Any) -> Any:
        if not str(url).startswith(uri):  # not the server's (MLflow's telemetry config fetch, say)
            return orig(self, method, url, *a, **k)
        try:
            r = orig(self, method, url, *a, **k)
        except Exception as e:
            with lock:
                stats["requests"] += 1
                stats["failed"] += 1
                key = type(e).__name__
                stats["by_status"][key] = stats["by_status"].get(key, 0) + 1
                stats["failed_urls"].append(f"{method} {url}: {key}")
            raise
        with lock:
            stats["requests"] += 1
            stats["failed"] += r.status_code >= 500
            if r.status_code >= 500:
                stats["failed_urls"].append(f"{method} {url}: {r.status_code}")
            stats["by_status"][str(r.status_code)] = stats["by_status"].get(str(r.status_code), 0) + 1
        return r

    requests.Session.request = request  # type: ignore[method-assign]
    cb = MLflowStudyCallback(uri, name, study_params={"study.searcher": "grid"}, planned_trials=trials,
                             trial_params=lambda c: dict(c), spill_dir=str(out.parent))
    while not go.exists():
        time.sleep(0.01)
    t0, ru0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    hook_cpu, results, points = 0.0, 0, 0
    cb.setup()
    queue = [FakeTrial(f"{name}_{i:05d}", {"seed": i}) for i in range(trials)]
    live: list[tuple[FakeTrial, list[dict[str, Any]], int]] = []
    all_trials: list[FakeTrial] = []
    while queue or live:
        while queue and len(live) < LIVE:
            t = queue.pop(0)
            all_trials.append(t)
            c = time.thread_time()
            cb.on_trial_start(0, all_trials, t)
            hook_cpu += time.thread_time() - c
            live.append((t, trajs[int(t.config["seed"]) % len(trajs)], 0))
        nxt = []
        for t, recs, i in live:  # one result of each live trial, in turn (as Tune's loop hands them on)
            rec = recs[i]
            last = i == len(recs) - 1
            t.last_result = dict(rec, t_nc=float("nan"), collapse_epoch=1200.0, stop_reason="budget" if last else "")
            c = time.thread_time()
            cb.on_trial_result(0, all_trials, t, t.last_result)
            if last:
                t.status = "TERMINATED"
                cb.on_trial_complete(0, all_trials, t)
            hook_cpu += time.thread_time() - c
            results += 1
            points += sum(1 for v in rec.values() if isinstance(v, (int, float)))
            if not last:
                nxt.append((t, recs, i + 1))
        live = nxt
    c = time.thread_time()
    cb.on_experiment_end(all_trials)
    hook_cpu += time.thread_time() - c
    t1, ru1 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    requests.Session.request = orig  # type: ignore[method-assign]
    writer = cb.writer
    # every metric point arrived: the histories of 10 runs, read back (the writer sends finite values)
    import math

    from mlflow.tracking import MlflowClient

    from ncstudy.adapters.mlflow.layout import ROLE_TAG, TRIAL_TAG

    client = MlflowClient(uri)
    runs = client.search_runs([cb.experiment_id], max_results=5000)
    trial_runs = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    finished = sum(r.info.status == "FINISHED" for r in trial_runs)
    steps = want = 0
    for r in trial_runs[:10]:
        seed = int(r.data.tags[TRIAL_TAG].rsplit("_", 1)[1])
        steps += len(client.get_metric_history(r.info.run_id, "nc1"))
        want += sum(1 for rec in trajs[seed % len(trajs)] if math.isfinite(rec.get("nc1", math.nan)))
    service = hook_cpu + float(writer.cpu_s)
    out.write_text(json.dumps({
        "name": name, "trials": trials, "results": results, "points": points, "source": source,
        "start": t0, "end": t1, "wall_s": t1 - t0,
        "driver_cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "hook_cpu_s": hook_cpu, "writer_cpu_s": float(writer.cpu_s),
        "service_cpu_ms_per_result": 1e3 * service / max(results, 1),
        "requests": stats["requests"], "failed_requests": stats["failed"], "by_status": stats["by_status"],
        "failed_urls": stats["failed_urls"][:20],
        "trial_runs": len(trial_runs), "trial_runs_finished": finished,
        "nc1_points_first_10_runs": steps, "nc1_points_expected_first_10_runs": want,
    }))


def run_store(store: str, work: Path, drivers: int, trials: int, timeout_s: float) -> dict[str, Any]:
    """Start the server on ``store`` (sqlite | postgresql), run the drivers together, stop everything."""
    from mlflow_server import MlflowServer

    from ncstudy.adapters.mlflow.server import spawn

    pg = None
    work.mkdir(parents=True, exist_ok=True)
    try:
        if store == "postgresql":
            from postgres import Postgres, missing_reason

            why = missing_reason()
            if why:
                return {"store": store, "error": why}
            pg = Postgres().start()
            uri = pg.create_database("mlflow")
        else:
            uri = f"sqlite:///{work / 'mlflow.db'}"
        server = MlflowServer(work / "server", backend_store_uri=uri, workers=SERVER_WORKERS).start(timeout=600)
        try:
            go = work / "go"
            procs = []
            for d in range(drivers):
                cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", server.uri, f"{store}{d}",
                       str(trials), str(go), str(work / f"driver{d}.json")]
                with (work / f"driver{d}.log").open("w") as log:
                    procs.append(spawn(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(1.0)
            go.write_text("")  # all at once (each driver waits for it after its imports)
            deadline = time.monotonic() + timeout_s
            errors = []
            for d, p in enumerate(procs):
                try:
                    rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
                    p.wait()
                    rc = "timeout"
                if rc != 0:
                    errors.append(f"driver {d}: {rc}: {(work / f'driver{d}.log').read_text()[-1500:]}")
            by_driver = [json.loads((work / f"driver{d}.json").read_text())
                         for d in range(drivers) if (work / f"driver{d}.json").exists()]
        finally:
            server.stop()
    finally:
        if pg is not None:
            pg.remove()
    if not by_driver:
        return {"store": store, "error": "; ".join(errors) or "no driver result"}
    span = max(r["end"] for r in by_driver) - min(r["start"] for r in by_driver)
    total = sum(r["requests"] for r in by_driver)
    return {
        "store": store, "server_workers": SERVER_WORKERS, "drivers": drivers, "trials_per_driver": trials,
        "errors": errors, "span_s": span, "requests": total,
        "failed_requests": sum(r["failed_requests"] for r in by_driver),
        "requests_per_s": total / span if span > 0 else float("nan"),
        "results_per_s": sum(r["results"] for r in by_driver) / span if span > 0 else float("nan"),
        "service_cpu_ms_per_result": [round(r["service_cpu_ms_per_result"], 3) for r in by_driver],
        "driver_wall_s": [round(r["wall_s"], 1) for r in by_driver],
        "trial_runs_finished": sum(r["trial_runs_finished"] for r in by_driver),
        "all_points_arrived": all(r["nc1_points_first_10_runs"] == r["nc1_points_expected_first_10_runs"]
                                  for r in by_driver),
        "by_driver": by_driver,
    }


def main(drivers: int = DRIVERS, trials: int = TRIALS, timeout_s: float = 3600.0,
         stores: tuple[str, ...] = ("sqlite", "postgresql"), json_name: str | None = "multi_study") -> dict[str, Any]:
    t0 = time.time()
    load = os.getloadavg()[0]
    by_store = {}
    with tempfile.TemporaryDirectory(prefix="ncstudy_multi_") as tmp:
        for store in stores:
            print(f"[multi_study] {drivers} drivers x {trials} trials on {store} ...", flush=True)
            by_store[store] = run_store(store, Path(tmp) / store, drivers, trials, timeout_s)
            r = by_store[store]
            print(f"[multi_study] {store}: " + (r["error"][-300:] if "error" in r else
                  f"{r['requests']} requests, {r['failed_requests']} failed, {r['requests_per_s']:.1f}/s, "
                  f"service {r['service_cpu_ms_per_result']} ms/result, wall {r['driver_wall_s']} s"), flush=True)
    res = {"description": "several studies at once writing to one MLflow server (4 workers): ncstudy's tracking "
                          "callback + writer per driver, replayed trajectories, SQLite vs PostgreSQL store",
           "by_store": by_store, "load_avg_start": load, "load_avg_end": os.getloadavg()[0],
           "machine": machine(), "seconds": time.time() - t0}
    if json_name:
        write_json(json_name, res)
    return res


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        uri, name, n, go, out = sys.argv[2:7]
        driver(uri, name, int(n), Path(go), Path(out))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--drivers", type=int, default=DRIVERS)
    ap.add_argument("--trials", type=int, default=TRIALS)
    ap.add_argument("--stores", nargs="*", default=["sqlite", "postgresql"])
    ap.add_argument("--json", help="write the result here instead of benchmarks/results/multi_study.json")
    a = ap.parse_args()
    r = main(a.drivers, a.trials, stores=tuple(a.stores), json_name=None if a.json else "multi_study")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
