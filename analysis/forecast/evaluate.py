"""The stopper's evaluation: search and sweep, measured on data it was not fitted to, under shift.

    .venv/bin/python analysis/forecast/evaluate.py [--jobs 2]     # rewrites results.md and results.json

It takes about 40 minutes of two cores. Each finished task is kept under ``analysis/forecast/parts/``
(ignored by git) with a fingerprint of the corpus, the code and the reference logs, so a run that is
stopped continues where it stopped when started again; ``--fresh`` recomputes everything.

Every figure comes from ncstudy's own replay engines, with a calibration that never holds the run
being replayed (nor, where said, anything of its configuration, factor level or source):

* **Search** (:func:`ncstudy.forecast.search.replay_search`): searches for the fastest collapse replayed
  over the corpus (forecasts held out by configuration, and by optimiser and by dataset) and over the
  author's reference logs (the corpus as prior plus the other reference runs), 4 trials at a time,
  200 random orders; every stopper of ``ncstudy replay --search``.
* **Sweep under shift** (:func:`ncstudy.forecast.replay.replay`, policy ``stop_at_forecast``): the corpus
  with each run's configuration held out, then with a whole level of one factor held out at a time
  (dataset, optimiser, schedule, MSE budget, CE epochs, batch size, activation, training-set size,
  corpus part); corpus -> reference logs (no reference run in the pool) and the reverse; the reference
  folder replayed as a user would without a manifest (one group, budgets inferred).
* **A study unlike the corpus**: the reference runs (group ``mlp/mnist``, which the corpus does not
  hold) replayed as a live study, one trial after another, the stopper learning from its own finished
  trials -- with the corpus as prior and with no prior -- in several orders: what it saves, and from
  which trial on.
* The stopper's cost per observation.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from ncstudy.forecast import ForecastStopper, replay  # noqa: E402
from ncstudy.forecast.replay import calibration_from_trajectories, infer_budgets  # noqa: E402
from ncstudy.forecast.search import SEARCH_STOPPERS, replay_search  # noqa: E402
from ncstudy.onset import onset_of  # noqa: E402
from ncstudy.runs import load_corpus, load_runs  # noqa: E402
from ncstudy.text import table, value  # noqa: E402

CORPUS = ROOT / "analysis" / "corpus"
REFERENCE = ROOT.parent / "shared" / "reference" / "rupa2026_logs"
REFERENCE_MANIFEST = ROOT / "ncstudy" / "analyze" / "presets" / "rupa2026_runs.csv"  # the rupa2026 preset's file map
#: factors of the corpus held out one level at a time (manifest columns)
SHIFTS = ("dataset", "optimizer", "schedule", "mse_epochs", "ce_epochs", "batch_size", "activation", "n_train",
          "part")
BASELINES = ("conformal_no_fn", "fn_star", "nc1")
REPEATS, CONCURRENT = 200, 4
ONLINE_ORDERS = 5

#: the issue's targets: (summary field, comparison, value, what it says)
SWEEP_TARGETS = [
    ("saved", ">=", 0.30, "study epochs saved vs stop-at-onset-or-budget"),
    ("n_false_stops", "==", 0, "false stops (a collapse forecast on a run that never collapses)"),
    ("false_no_onset_rate", "<=", 0.05, "collapsing runs wrongly stopped as 'no onset'"),
    ("eval_coverage_if_onset", ">=", 0.90, "stated 90 % intervals holding the true onset"),
    ("forecast_held_rate", ">=", 0.50, "collapsing runs cut at a forecast whose interval holds"),
]


def corpus_runs(corpus: Path = CORPUS):
    return load_corpus(corpus)


def reference_runs():
    """The author's 42 two-phase MLP/MNIST logs (the rest are other models or single-phase runs)."""
    runs = load_runs(REFERENCE, REFERENCE_MANIFEST)
    return [t for t in runs if t.group == "mlp/mnist" and t.attrs.get("protocol") == "two-phase"]


def _summary(res) -> dict[str, Any]:
    return res.to_dict()["summary"]


# -- tasks (each runs in its own process) ----------------------------------------------------------
def _task(spec: tuple) -> tuple[str, dict[str, Any]]:
    kind, name, arg, where = spec
    t0 = time.process_time()
    corpus = corpus_runs(Path(where))
    if kind == "sweep":
        forecaster, split = arg
        if split == "corpus->reference":
            res = replay(reference_runs(), forecaster, "prior", prior=calibration_from_trajectories(corpus))
        elif split == "reference->corpus":
            res = replay(corpus, forecaster, "prior", prior=calibration_from_trajectories(reference_runs()))
        elif split == "reference, no manifest":
            trajs = load_runs(REFERENCE)
            res = replay(trajs, forecaster, "leave-one-out", prior=calibration_from_trajectories(corpus))
        else:
            res = replay(corpus, forecaster, "leave-one-group-out", holdout_by=split)
        out: dict[str, Any] = {"summary": _summary(res), "runs": [r for r in res.to_dict()["runs"]]}
    elif kind == "search":
        if arg == "reference":
            sums = replay_search(reference_runs(), repeats=REPEATS, concurrent=CONCURRENT,
                                 prior=calibration_from_trajectories(corpus))
        else:
            sums = replay_search(corpus, repeats=REPEATS, concurrent=CONCURRENT, calibration="leave-one-group-out",
                                 holdout_by=arg)
        out = {"stoppers": {s.stopper: s.to_dict() for s in sums}}
    elif kind == "online":
        prior, mode = arg
        out = online_study(reference_runs(), calibration_from_trajectories(corpus) if prior == "corpus" else None,
                           mode)
    else:
        out = cost_per_observation(corpus)
    out["cpu_s"] = time.process_time() - t0
    return name, out


def _kept_or_run(spec: tuple, parts: Path, stamp: str, fresh: bool) -> tuple[str, dict[str, Any]]:
    """A task's result from its part file when it was computed from the same inputs, else computed
    and kept (written whole, then renamed: a stopped run leaves no half part)."""
    f = parts / (hashlib.sha256(repr(spec[:3]).encode()).hexdigest()[:16] + ".json")
    if not fresh and f.exists():
        kept = json.loads(f.read_text())
        if kept.get("fingerprint") == stamp:
            return kept["name"], kept["out"]
    name, out = _task(spec)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": stamp, "name": name, "out": out}, default=float))
    tmp.replace(f)
    return name, out


def online_study(trajs, prior, mode: str, orders: int = ONLINE_ORDERS, seed: int = 0) -> dict[str, Any]:
    """The runs as one live study, a trial at a time in random orders, the stopper learning from its
    own finished trials (as ``ncstudy run`` does): per position in the order, what each trial cost
    and whether the stopper stopped it early, and rightly."""
    budgets = infer_budgets(trajs)
    truth = {t.run_id: onset_of(t.records, relaxed_fallback=False).t_strict for t in trajs}
    rng = np.random.default_rng(seed)
    per_order = []
    for _ in range(orders):
        cal = prior.merged(prior) if prior is not None else None  # a copy: each order learns on its own
        s = ForecastStopper("stop_at_forecast", "conformal", cal, mode=mode, learn=True)
        rows = []
        for i in rng.permutation(len(trajs)):
            t = trajs[i]
            b, tnc = budgets[t.run_id], truth[t.run_id]
            reason, epoch = None, None
            for rec in t.records:
                d = s.observe(t.run_id, rec, "mlp/mnist", b)
                epoch = int(rec["epoch"])
                if d.stop:
                    reason = d.reason
                    break
            reason = s.complete(t.run_id, reason)
            base = tnc if tnc is not None else b
            early = reason not in ("onset", "budget")
            wrong = (reason == "no_onset_forecast" and tnc is not None) or (reason == "forecast" and tnc is None)
            rows.append({"run": t.run_id, "reason": reason, "epochs": epoch, "baseline": base, "early": early,
                         "wrong": wrong, "saved": (base - epoch) if early and not wrong else 0})
        per_order.append(rows)
    n = len(trajs)
    first = [next((k for k, r in enumerate(rows) if r["early"]), None) for rows in per_order]
    return {"orders": per_order, "n_runs": n,
            "first_early_stop": first,
            "saved": float(np.mean([sum(r["saved"] for r in rows) / sum(r["baseline"] for r in rows)
                                    for rows in per_order])),
            "run_fraction": float(np.mean([sum(r["epochs"] for r in rows) / sum(r["baseline"] for r in rows)
                                           for rows in per_order])),
            "wrong": int(sum(r["wrong"] for rows in per_order for r in rows)),
            "saved_by_half": [float(np.mean([sum(r["saved"] for r in rows[a:b]) / sum(r["baseline"] for r in rows[a:b])
                                             for rows in per_order])) for a, b in ((0, n // 2), (n // 2, n))]}


def cost_per_observation(corpus) -> dict[str, Any]:
    """CPU ms per observation of the default forecaster over the reference runs, the corpus as pool
    (the pool and its calibration built once, timed apart)."""
    from ncstudy.forecast.forecasters import ConformalOnset

    t0 = time.process_time()
    cal = calibration_from_trajectories(corpus)
    f0 = ConformalOnset(cal, "mlp/mnist", 600.0)
    f0.pool().thresholds(f0.settings)
    build = time.process_time() - t0
    n, t = 0, 0.0
    for traj in reference_runs():
        f = ConformalOnset(cal, traj.group, float(traj.records[-1]["epoch"]))
        t0 = time.process_time()
        for r in traj.records:
            f.observe(r)
            n += 1
        t += time.process_time() - t0
    return {"ms_per_observation": 1000 * t / n, "observations": n, "pool_build_s": build, "pool_runs": cal.n_runs()}


def fingerprint(corpus: Path) -> str:
    """What a task's result depends on: the corpus, the reference logs and the code of ncstudy's
    forecaster and of this script."""
    h = hashlib.sha256()
    files = [*sorted(Path(corpus).rglob("*.csv")), *sorted(Path(corpus).rglob("*.jsonl")),
             *sorted(REFERENCE.rglob("*")), REFERENCE_MANIFEST, Path(__file__),
             *sorted((ROOT / "ncstudy" / "forecast").rglob("*.py")), ROOT / "ncstudy" / "onset.py"]
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(ROOT.parent) if f.is_relative_to(ROOT.parent) else f).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


# -- report ----------------------------------------------------------------------------------------
def check(value, op: str, target: float) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return {"<=": value <= target, ">=": value >= target, "==": value == target}[op]


def markdown(r: dict[str, Any]) -> str:
    out = ["# Stopper evaluation: results", "",
           f"Generated by `.venv/bin/python analysis/forecast/evaluate.py` ({r['date']}; {r['n_corpus']} corpus runs, "
           f"{r['n_reference']} reference runs). `README.md` beside this file says what the numbers mean.", ""]
    out += ["## Search: speedup against stop-at-onset-or-budget, and how often the best is still found", "",
            f"{CONCURRENT} trials at a time, {REPEATS} random orders per set.", ""]
    for name, res in r["search"].items():
        st = res["stoppers"]
        cap = st["capping"]["speedup"]
        rows = [[s, value(st[s]["speedup"], fixed=2, unit="x"), value(st[s]["speedup"] / cap, fixed=2, unit="x"),
                 value(st[s]["found_best"], percent=True),
                 ", ".join(f"{k} {value(v, fixed=1)}" for k, v in st[s]["stops"].items())] for s in SEARCH_STOPPERS]
        out += [f"### {name}", "", table(["stopper", "speedup", "vs capping", "found_best",
                                          "how runs ended (mean per search)"], rows, markdown=True), ""]
    out += ["## Sweep under shift (conformal at its defaults, policy stop_at_forecast)", ""]
    rows = []
    for split, res in r["sweep"]["conformal"].items():
        s = res["summary"]
        rows.append([split, s["n_runs"], s["n_collapsing"], value(s["saved"], percent=True), s["n_false_stops"],
                     f"{s['n_false_no_onset']} ({value(s['false_no_onset_rate'], percent=True)})",
                     f"{s['n_no_onset_stops']} of {s['n_censored']}",
                     f"{s['n_forecast_stops']} ({s['n_forecast_stops_held']})",
                     value(s["eval_coverage_if_onset"], percent=True)])
    out.append(table(["held out", "runs", "collapsing", "saved", "false stops", "wrong 'no onset'", "no-onset stops",
                      "forecast stops (interval held)", "90 % intervals holding"], rows, markdown=True))
    rows = []
    for key, op, val, text in SWEEP_TARGETS:
        cells = [f"{text} {op} {val:g}"]
        for res in r["sweep"]["conformal"].values():
            v = res["summary"].get(key)
            ok = check(v, op, val)
            cells.append(value(v, 3) + ("" if ok is None else " ✓" if ok else " ✗"))
        rows.append(cells)
    out += ["", "### Targets, per shift", "", table(["target", *r["sweep"]["conformal"]], rows, markdown=True)]
    rows = []
    for f in ("conformal", *BASELINES):
        s = r["sweep"][f]["config"]["summary"]
        rows.append([f, value(s["saved"], percent=True), s["n_false_stops"], s["n_false_no_onset"],
                     s["n_forecast_stops"], value(s["mae"], 3)])
    out += ["", "## Baselines, corpus with each configuration held out", "",
            table(["forecaster", "saved", "false stops", "wrong 'no onset'", "forecast stops", "MAE of reported T_NC"],
                  rows, markdown=True)]
    rows = []
    for name, o in r["online"].items():
        prior, mode = name.split("/")
        first = ", ".join("-" if f is None else str(f + 1) for f in o["first_early_stop"])
        rows.append([prior, mode, value(o["saved"], percent=True),
                     f"{value(o['saved_by_half'][0], percent=True)} / {value(o['saved_by_half'][1], percent=True)}",
                     o["wrong"], first])
    out += ["", "## A study unlike the corpus: the reference runs as a live study", "",
            f"{r['n_reference']} runs of group mlp/mnist (not in the corpus), one trial at a time, "
            f"{ONLINE_ORDERS} random orders; the stopper learns from its own finished trials.", "",
            table(["prior", "mode", "saved", "saved, first half / second half", "wrong stops",
                   "first early stop at trial"], rows, markdown=True)]
    c = r["cost"]
    out += ["", "## Cost", "",
            f"Conformal forecaster: {c['ms_per_observation']:.2f} ms CPU per observation over {c['observations']} "
            f"observations (pool of {c['pool_runs']} runs); building the pool and its calibration (when the "
            f"calibration changes): {c['pool_build_s']:.1f} s CPU.", ""]
    return "\n".join(out)


def tasks() -> list[tuple]:
    out: list[tuple] = [("search", f"corpus, forecasts held out by {k}", k) for k in ("config", "optimizer", "dataset")]
    out.append(("search", "reference logs, corpus as prior", "reference"))
    splits = ["config", *SHIFTS, "corpus->reference", "reference->corpus", "reference, no manifest"]
    out += [("sweep", f"conformal|{s}", ("conformal", s)) for s in splits]
    out += [("sweep", f"{f}|config", (f, "config")) for f in BASELINES]
    out += [("online", f"{p}/{m}", (p, m)) for p in ("corpus", "none") for m in ("sweep", "search")]
    out.append(("cost", "cost", None))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="run the tasks whose name contains this (exploration: nothing written)")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="the corpus folder (default analysis/corpus)")
    ap.add_argument("--fresh", action="store_true", help="recompute every task (default: reuse finished parts)")
    a = ap.parse_args(argv)
    todo = [(*t, str(a.corpus)) for t in tasks() if not a.only or a.only in t[1]]
    results: dict[str, Any] = {"search": {}, "sweep": {}, "online": {}}
    parts = a.out / "parts"
    parts.mkdir(exist_ok=True)
    work = functools.partial(_kept_or_run, parts=parts, stamp=fingerprint(a.corpus), fresh=a.fresh)
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        for (kind, *_), (name, out) in zip(todo, ex.map(work, todo)):
            if kind == "sweep":
                f, split = name.split("|")
                results["sweep"].setdefault(f, {})[split] = out
                s = out["summary"]
                print(f"sweep {f:16s} {split:24s} saved {s['saved']}, false stops {s['n_false_stops']}, "
                      f"wrong no-onset {s['n_false_no_onset']}/{s['n_collapsing']} [{out['cpu_s']:.0f} s]", flush=True)
            elif kind == "search":
                results["search"][name] = out
                st = out["stoppers"]
                print(f"search {name}: " + ", ".join(f"{k} {v['speedup']:.2f}x/{v['found_best']}" for k, v in
                                                     st.items()) + f" [{out['cpu_s']:.0f} s]", flush=True)
            elif kind == "online":
                results["online"][name] = out
                print(f"online {name}: saved {out['saved']:.3f}, wrong {out['wrong']}, first {out['first_early_stop']}",
                      flush=True)
            else:
                results["cost"] = out
    if a.only:
        return 0
    results.update(date=time.strftime("%Y-%m-%d"), n_corpus=len(corpus_runs(a.corpus)),
                   n_reference=len(reference_runs()))
    (a.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (a.out / "results.md").write_text(markdown(results))
    print(f"wrote {a.out / 'results.md'} and results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
