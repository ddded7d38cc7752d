"""Benchmark 5: the stopper out of sample, against issue 24's targets.

    .venv/bin/python benchmarks/stopper_replay.py      # ~6-10 min on 2 cores; prints the table, writes the JSON

A fast subset of the stopper evaluation (``analysis/forecast/evaluate.py``, whose written report is
``analysis/forecast/README.md``), the default settings throughout:

* **search** (``ncstudy replay --search``): the corpus with each run's forecasts made without its
  configuration, and the author's reference logs with the corpus as prior; 4 trials at a time, 200
  random orders: the search mode's speedup against stop-at-onset-or-budget and against capping alone,
  and how often the search still finds the best run;
* **sweep under shift** (policy ``stop_at_forecast``): the corpus with a whole optimiser held out at a
  time, and corpus -> reference logs (no reference run in the pool): epochs saved, false stops, wrong
  "no onset" stops;
* the conformal forecaster's CPU cost per observation.

Writes ``benchmarks/results/stopper_replay.json``.
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.forecast import evaluate  # noqa: E402
from ncstudy import text  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "stopper_replay.json"
TASKS = [("search", "corpus", "config"), ("search", "reference", "reference"),
         ("sweep", "conformal|optimizer", ("conformal", "optimizer")),
         ("sweep", "conformal|corpus->reference", ("conformal", "corpus->reference")), ("cost", "cost", None)]


def targets(res: dict) -> list[dict]:
    out = []
    for name in ("corpus", "reference"):
        st = res[name]["stoppers"]
        s, cap = st["search"], st["capping"]
        out += [{"figure": f"search, {name}: speedup vs stop-at-onset-or-budget", "target": ">= 3x",
                 "value": round(s["speedup"], 2), "met": s["speedup"] >= 3.0},
                {"figure": f"search, {name}: speedup vs capping alone", "target": ">= 1.2x",
                 "value": round(s["speedup"] / cap["speedup"], 2), "met": s["speedup"] / cap["speedup"] >= 1.2},
                {"figure": f"search, {name}: found_best", "target": ">= 95 %", "value": s["found_best"],
                 "met": s["found_best"] >= 0.95}]
    for split in ("optimizer", "corpus->reference"):
        s = res[f"conformal|{split}"]["summary"]
        for key, op, val, what in evaluate.SWEEP_TARGETS[:3]:
            v = s[key]
            out.append({"figure": f"sweep, {split} held out: {what}", "target": f"{op} {text.value(val)}", "value": v,
                        "met": evaluate.check(v, op, val)})
    ms = res["cost"]["ms_per_observation"]
    out.append({"figure": "conformal forecaster CPU per observation", "target": "<= 1 ms", "value": round(ms, 3),
                "met": ms <= 1.0})
    return out


def main(jobs: int = 2) -> dict:
    t0 = time.time()
    specs = [(*t, str(evaluate.CORPUS)) for t in TASKS]
    results: dict = {}
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        for name, out in ex.map(evaluate._task, specs):
            results[name] = out
    out = {"description": "the stopper out of sample: search (corpus, reference logs) and sweep under shift",
           "n_corpus": len(evaluate.corpus_runs()), "n_reference": len(evaluate.reference_runs()),
           "results": {k: {kk: vv for kk, vv in v.items() if kk != "runs"} for k, v in results.items()},
           "targets": targets(results), "cost": results["cost"], "seconds": round(time.time() - t0, 2)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, default=float) + "\n")
    return out


if __name__ == "__main__":
    res = main()
    print(text.table(["figure", "target", "value", "met"],
                     [[t["figure"], t["target"], text.value(t["value"]), t["met"]] for t in res["targets"]]))
    print(f"wrote {OUT} in {res['seconds']} s")
