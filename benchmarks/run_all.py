"""``make bench``: the benchmarks of the performance issue (1-5), the scale issue (6) and several studies on one
MLflow server, SQLite against PostgreSQL (7, issue 28), one table, one JSON.

    .venv/bin/python benchmarks/run_all.py                 # all seven; 1-5: 5-8 min on the 2-core box, 6 and 7 longer
    .venv/bin/python benchmarks/run_all.py --multi-trials 50   # benchmark 7 with 50 trials per driver (250 by default)
    .venv/bin/python benchmarks/run_all.py --scale-n 100 300   # benchmark 6 without its N = 1,000 study
    .venv/bin/python benchmarks/run_all.py --only 1 2      # a subset
    .venv/bin/python benchmarks/run_all.py --update-docs   # also refresh docs/performance.md's table

Order: the single-thread compute benchmarks first (1 trainer epoch, 2 metric share, 5 stopper
replay), then one local Ray instance (2 CPUs) for 4 (scheduler overhead) and 3 (tracking
overhead), then 6 (scale: one driver process per study size, each with its own local Ray and
``mlflow server``, then the smallest size again on a three-node ``ray.cluster_utils`` cluster; see
``benchmarks/scale.py``), then 7 (four driver processes at once against one ``mlflow server`` on SQLite,
then on PostgreSQL; ``benchmarks/multi_study.py``). Each benchmark writes
``benchmarks/results/<name>.json``; this script writes ``benchmarks/results/summary.json`` and
``summary.md`` (the table printed at the end). A shared time budget (``--budget-s``) only decides
whether benchmark 3 runs its optional second with/without pair; every benchmark runs its minimum.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, Deadline, machine, start_local_ray, write_json  # noqa: E402
from ncstudy.text import table, value  # noqa: E402

DOC = ROOT / "docs" / "performance.md"
TABLE_START, TABLE_END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"


def _pct(x: float | None) -> str:
    return value(x, percent=True, missing="n/a")


def _x(x: float | None, nd: int = 2) -> str:
    return value(x, fixed=nd, unit="x", missing="n/a")


def _s(x: float | None) -> str:
    return value(x, fixed=2, unit=" s", missing="n/a")


def _met(ok: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[ok]


Row = tuple[str, str, str, str, str]  # benchmark, figure, value, target, met


def rows_trainer(r: dict[str, Any]) -> list[Row]:
    q, m, s = r["ratios"], r["amortised_epoch_s_median"], r["ratio_spread"]
    sp = lambda k: f" [{s[k][0]:.2f}-{s[k][1]:.2f}]"  # noqa: E731
    return [
        ("1 trainer epoch", "paper-style loop / ncstudy (amortised epoch incl. eval)",
         _x(q["paper_over_ncstudy"]) + sp("paper_over_ncstudy"), ">= 2x",
         _met(q["paper_over_ncstudy"] >= 2.0)),
        ("1 trainer epoch", "ncstudy / bare loop (torch default Adam)",
         _x(q["ncstudy_over_bare"], 3) + sp("ncstudy_over_bare"), "<= 1.15x", _met(q["ncstudy_over_bare"] <= 1.15)),
        ("1 trainer epoch", "ncstudy / bare loop with the Trainer's optimiser",
         _x(q["ncstudy_over_bare_same_opt"], 3) + sp("ncstudy_over_bare_same_opt"), "(info)", "-"),
        ("1 trainer epoch", "paper / ncstudy: training epoch only; evaluation only",
         f"{_x(q['paper_train_epoch_over_ncstudy_train_epoch'])}; {_x(q['paper_eval_over_ncstudy_eval'])}",
         "(info)", "-"),
        ("1 trainer epoch", "amortised s/epoch (CPU time): ncstudy / paper / bare",
         f"{m['ncstudy']:.2f} / {m['paper']:.2f} / {m['bare']:.2f} s", "(scale)", "-"),
    ]


def rows_metric(r: dict[str, Any]) -> list[Row]:
    return [
        ("2 metric share", "NC metric pass / (10 x training epoch)", _pct(r["metric_share"]), "<= 10%",
         _met(r["metric_share"] <= 0.10)),
        ("2 metric share", "whole evaluation / (10 x training epoch)", _pct(r["evaluation_share"]), "(info)", "-"),
    ]


def rows_tracking(r: dict[str, Any]) -> list[Row]:
    per = r["overhead_wall_per_pair"]
    resolvable = bool(per) and (len(per) > 1 and max(per) - min(per) <= 0.02)
    wall_met = None if not resolvable else r["met"]
    hook = r["callback_share_of_study_wall"]
    lr = r["log_rates"]
    return [
        ("3 tracking", f"study wall with / without MLflow - 1 ({len(per)} pair(s): "
         + ", ".join(f"{p:+.1%}" for p in per) + ")", f"{r['overhead_wall']:+.1%}" if per else "n/a", "<= 2%",
         _met(wall_met) if wall_met is not None else "unresolved (noise > 2%)"),
        ("3 tracking", "driver's Tune loop held by the MLflow callback / study wall", _pct(hook), "(info)", "-"),
        ("3 tracking", "MLflow writer thread CPU / study CPU (2 cores x wall)",
         _pct(r.get("writer_cpu_share_of_study_cpu")), "(info)", "-"),
        ("3 tracking", "writer CPU per trial; untracked trial length; trial length where it is 2%",
         f"{_s(r.get('writer_cpu_per_trial_s'))}; {_s(r.get('untracked_trial_core_s'))}; "
         f"{_s(r.get('trial_core_s_for_2pct'))}", "(info)", "-"),
        ("3 tracking", "points/s log_batch / log_metric (SQLite)",
         f"{_x(lr['log_batch_over_log_metric'], 0)} ({lr['points_per_s']['log_batch']:.0f} vs "
         f"{lr['points_per_s']['log_metric']:.0f}/s)", "(info)", "-"),
    ]


def rows_sched(r: dict[str, Any]) -> list[Row]:
    a, b = r["ncstudy_run_setting"], r["new_actor_per_trial"]
    la, lb = a["last_report_to_finished_s"], b["last_report_to_finished_s"]
    return [
        ("4 scheduler", "trials/min, 50 trivial trials: ncstudy run (reused actors) (25); new actor per trial (25)",
         f"{a['trials_per_min']:.1f}; {b['trials_per_min']:.1f}", "(info)", "-"),
        ("4 scheduler", "reused actors / new actor per trial, trials per minute",
         _x(r["reuse_over_new_actor_trials_per_min"]), "(info)", "-"),
        ("4 scheduler", "last report -> MLflow run FINISHED, median (max): reuse; new actor",
         f"{_s(la['median'])} ({_s(la['max'])}); {_s(lb['median'])} ({_s(lb['max'])})", "(info)", "-"),
        ("4 scheduler", "driver time inside ncstudy callbacks / wall: reuse; new actor",
         f"{_pct(a['driver_share_in_callbacks'])}; {_pct(b['driver_share_in_callbacks'])}", "(info)", "-"),
    ]


def rows_stopper(r: dict[str, Any]) -> list[Row]:
    """Benchmark 5: the stopper against issue 24's targets, out of sample (search on the corpus and the
    reference logs; sweep with an optimiser held out and from the corpus to the reference logs)."""
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    return [("5 stopper replay", t["figure"], cell(t["value"]), t["target"],
             "-" if t["met"] is None else _met(t["met"])) for t in r["targets"]]


def rows_scale(r: dict[str, Any]) -> list[Row]:
    ns = [n for n in r["ns"] if "error" not in r["by_n"][str(n)]]
    out: list[Row] = [("6 scale", f"N = {n}: FAILED", r["by_n"][str(n)]["error"][-80:], "-", "NO")
                      for n in r["ns"] if n not in ns]
    for n in ns:
        b = r["by_n"][str(n)]
        out.append(("6 scale", f"N = {n}: driver CPU per trial; per result; service (stopper + MLflow) per result",
                    f"{b['driver_cpu_s_per_trial']:.3f} s; {b['driver_cpu_ms_per_result']:.2f} ms; "
                    f"{b['service_cpu_ms_per_result']:.2f} ms", "service <= 2 ms",
                    _met(b["service_cpu_ms_per_result"] <= 2.0)))
        out.append(("6 scale", f"N = {n}: peak RSS; stopper state kB/trial; MLflow requests/trial; wall s/trial",
                    f"{b['rss_peak_mb']:.0f} MB; {b['stopper_state_bytes_per_trial'] / 1e3:.1f}; "
                    f"{b['mlflow_requests_per_trial']:.1f}; {b['wall_s_per_trial']:.2f}", "(info)", "-"))
    q = r.get("ratio_max_over_min_n") or {}
    if q and len(ns) > 1:
        tag = f"N = {ns[-1]} / N = {ns[0]}"
        for key, label in (("driver_cpu_s_per_trial", "driver CPU per trial"),
                           ("mlflow_requests_per_trial", "MLflow requests per trial"),
                           ("stopper_state_bytes_per_trial", "stopper state bytes per trial")):
            out.append(("6 scale", f"{label}, {tag}", _x(q.get(key)), "<= 1.2x",
                        _met(q.get(key) is not None and q[key] <= 1.2)))
        slope = q.get("rss_peak_mb_per_1000_trials_slope")
        out.append(("6 scale", f"driver peak RSS growth per 1,000 trials ({tag})",
                    "n/a" if slope is None else f"{slope:.0f} MB", "< 500 MB",
                    _met(slope is not None and slope < 500)))
    return out


def rows_multi_study(r: dict[str, Any]) -> list[Row]:
    """Several drivers on one MLflow server, per store."""
    out: list[Row] = []
    for store, b in r["by_store"].items():
        if "error" in b:
            out.append(("7 multi-study", f"{store}: FAILED", b["error"][-80:], "-", "NO"))
            continue
        n = f"{b['drivers']} drivers x {b['trials_per_driver']} trials"
        ms = b["service_cpu_ms_per_result"]
        out.append(("7 multi-study", f"{n}, {store}: failed (retried) requests of all; requests/s the server "
                    f"sustained; service per result (each driver)",
                    f"{b['failed_requests']} of {b['requests']}; {b['requests_per_s']:.1f}/s; "
                    f"{min(ms):.2f}-{max(ms):.2f} ms", "no failed request",
                    _met(b["failed_requests"] == 0 and not b["errors"] and b["all_points_arrived"])))
    return out


def rows_scale_cluster(r: dict[str, Any]) -> list[Row]:
    """The smallest N again on a head and two worker nodes, against the single node of ``scale.json``."""
    out: list[Row] = []
    single = {}
    if (RESULTS / "scale.json").exists():
        import json

        single = json.loads((RESULTS / "scale.json").read_text()).get("by_n", {})
    for n in r["ns"]:
        b = r["by_n"][str(n)]
        if "error" in b:
            out.append(("6 scale", f"N = {n}, 3 nodes: FAILED", b["error"][-80:], "-", "NO"))
            continue
        one = single.get(str(n), {})
        vs = (f"; {b['driver_cpu_s_per_trial'] / one['driver_cpu_s_per_trial']:.2f}x one node"
              if one.get("driver_cpu_s_per_trial") else "")
        out.append(("6 scale", f"N = {n} on a head + 2 worker nodes: driver CPU per trial; service per result",
                    f"{b['driver_cpu_s_per_trial']:.3f} s; {b['service_cpu_ms_per_result']:.2f} ms{vs}",
                    "(info)", "-"))
    return out


HEAD = ("benchmark", "figure", "value", "target", "met")


def markdown(rows: list[Row]) -> str:
    return table(HEAD, rows, markdown=True)


def plain(rows: list[Row]) -> str:
    return table(HEAD, rows)


def update_docs(table: str, stamp: str) -> bool:
    if not DOC.exists():
        return False
    text = DOC.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        return False
    a, b = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    DOC.write_text(text[:a] + f"\n{stamp}\n\n{table}\n" + text[b:])
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run every benchmark of make bench")
    ap.add_argument("--only", nargs="*", type=int, default=[1, 2, 3, 4, 5, 6, 7])
    ap.add_argument("--multi-trials", type=int, default=250, help="benchmark 7's trials per driver (4 drivers)")
    ap.add_argument("--scale-n", nargs="*", type=int, default=[100, 300, 1000],
                    help="benchmark 6's study sizes (N = 1,000 takes 12-15 minutes on the 2-core box)")
    ap.add_argument("--budget-s", type=float, default=560.0,
                    help="total time; decides only benchmark 3's optional second pair")
    ap.add_argument("--update-docs", action="store_true", help=f"refresh the table in {DOC.relative_to(ROOT)}")
    ap.add_argument("--from-results", action="store_true",
                    help="run nothing: rebuild the table from benchmarks/results/*.json")
    args = ap.parse_args(argv)
    deadline = Deadline(args.budget_s)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]

    from benchmarks import (
        metric_share,
        multi_study,
        scale,
        scheduler_overhead,
        stopper_replay,
        tracking_overhead,
        trainer_epoch,
    )

    plan: list[tuple[int, str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], list[Row]]]] = [
        (1, "trainer_epoch", lambda: trainer_epoch.main(), rows_trainer),
        (2, "metric_share", lambda: metric_share.main(), rows_metric),
        (5, "stopper_replay", lambda: stopper_replay.main(), rows_stopper),
        (4, "scheduler_overhead", lambda: scheduler_overhead.main(deadline=deadline), rows_sched),
        (3, "tracking_overhead", lambda: tracking_overhead.main(deadline=deadline), rows_tracking),
        (6, "scale", lambda: scale.main(tuple(args.scale_n)), rows_scale),  # its own drivers, one per N
        (6, "scale_cluster", lambda: scale.main((min(args.scale_n),), cluster=True), rows_scale_cluster),
        (7, "multi_study", lambda: multi_study.main(trials=args.multi_trials), rows_multi_study),
    ]
    rows: list[Row] = []
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    failed: list[str] = []
    ray_started = False
    if args.from_results:
        import json

        for num, name, _, to_rows in plan:
            if num in args.only and (RESULTS / f"{name}.json").exists():
                rows += to_rows(json.loads((RESULTS / f"{name}.json").read_text()))
        rows.sort(key=lambda r: int(r[0].split()[0]))
        table_md = markdown(rows)
        print(plain(rows))
        if args.update_docs:
            old = (RESULTS / "summary.md").read_text().split("\n", 1)[0] if (RESULTS / "summary.md").exists() else ""
            print("docs updated" if update_docs(table_md, old) else f"no table markers in {DOC}")
        return 0
    try:
        for num, name, fn, to_rows in plan:
            if num not in args.only:
                continue
            if num in (6, 7) and ray_started:  # benchmarks 6 and 7 start their own drivers
                import ray

                ray.shutdown()
                ray_started = False
            if num in (3, 4) and not ray_started:
                ray_started = start_local_ray(2)  # one local instance for both
            print(f"[bench] {num} {name} ... ({deadline.left():.0f} s of budget left)", flush=True)
            t = time.perf_counter()
            try:
                res = fn()
                results[name] = res
                rows += to_rows(res)
            except Exception:  # report and go on: one broken benchmark must not hide the others
                traceback.print_exc()
                failed.append(name)
                rows.append((f"{num} {name}", "FAILED (traceback above)", "-", "-", "NO"))
            seconds[name] = time.perf_counter() - t
            print(f"[bench] {num} {name} done in {seconds[name]:.0f} s", flush=True)
    finally:
        if ray_started:
            import ray

            ray.shutdown()

    rows.sort(key=lambda r: int(r[0].split()[0]))  # table in the order
    total = time.perf_counter() - t_start
    stamp = (f"`make bench`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {os.cpu_count()} CPUs, "
             f"load average {load_start:.1f} at start / {os.getloadavg()[0]:.1f} at end, total "
             f"{total / 60:.1f} min. Ratios: medians of per-repetition ratios; [min-max] over repetitions.")
    table_md = markdown(rows)
    print()
    print(plain(rows))
    print()
    print(stamp.replace("`", ""))
    (RESULTS / "summary.md").write_text(stamp + "\n\n" + table_md + "\n")
    write_json("summary", {"rows": [dict(zip(("benchmark", "figure", "value", "target", "met"), r)) for r in rows],
                           "seconds": seconds, "total_s": total, "failed": failed, "load_avg_start": load_start,
                           "machine": machine()})
    if args.update_docs:
        print("docs updated" if update_docs(table_md, stamp) else f"no table markers in {DOC}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
