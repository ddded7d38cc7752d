"""Benchmark 5: the forecast stopper, replayed out of sample against issue 13's targets.

    .venv/bin/python benchmarks/stopper_replay.py      # ~4-6 min on 2 cores; prints the table, writes the JSON

A fast subset of the forecaster evaluation (``analysis/forecast/evaluate.py``, whose written report is
``analysis/forecast/README.md``): the default forecaster (``conformal``) at its defaults, policy
``stop_at_forecast``,

* leave-one-group-out over the trajectory corpus (``analysis/corpus``: each configuration's two seeds
  held out together, the rest of the corpus as calibration), and
* leave-one-out over the reference MLP/MNIST two-phase logs (``../shared/reference/rupa2026_logs``),
  the corpus as prior -- what ``ncstudy replay LOGS --group mlp/mnist`` does at its defaults;

plus the paper's ``fn_star`` crossing rule on the reference logs for comparison, and the forecaster's
CPU cost per observation. Scored by :func:`ncstudy.forecast.replay.summarize` (strict onset only; a
collapse forecast acted on in a run that never collapses is a false stop, never "saved").
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

OUT = ROOT / "benchmarks" / "results" / "stopper_replay.json"
TASKS = [("corpus", "conformal"), ("reference", "conformal"), ("reference", "fn_star")]


def main(jobs: int = 2) -> dict:
    t0 = time.time()
    corpus = str(evaluate.CORPUS)
    results: dict = {"corpus": {}, "reference": {}}
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        for kind, forecaster, out in ex.map(evaluate._task, [(k, corpus, f, {}) for k, f in TASKS]):
            results[kind][forecaster] = out
    targets = []
    for key, op, val, text in evaluate.TARGETS:
        row = {"figure": text, "target": f"{op} {val:g}", "field": key}
        for kind in ("corpus", "reference"):
            v = results[kind]["conformal"]["summary"].get(key)
            row[kind] = v
            row[f"{kind}_met"] = evaluate.check(v, op, val)
        targets.append(row)
    out = {
        "description": "conformal forecaster out of sample: corpus leave-one-group-out, reference leave-one-out",
        "n_corpus": len(evaluate.corpus_runs(evaluate.CORPUS)),
        "n_reference": len(evaluate.reference_runs()),
        "results": results,
        "targets": targets,
        "cost": evaluate.cost_per_observation(evaluate.CORPUS),
        "seconds": None,
    }
    out["seconds"] = round(time.time() - t0, 2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, default=float) + "\n")
    return out


if __name__ == "__main__":
    res = main()
    for t in res["targets"]:
        print(f"{t['figure']:75s} {t['target']:>7s}  corpus {t['corpus']!s:>8.8s} {t['corpus_met']!s:5s}"
              f"  reference {t['reference']!s:>8.8s} {t['reference_met']}")
    print(f"cost: {res['cost']['ms_per_observation']:.2f} ms per observation")
    print(f"wrote {OUT} in {res['seconds']} s")
