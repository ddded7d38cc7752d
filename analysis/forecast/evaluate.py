"""The forecaster evaluation: every figure of ``analysis/forecast/README.md``, measured out of sample.

    .venv/bin/python analysis/forecast/evaluate.py            # ~15 min on 2 cores; writes results.md/.json

* **Corpus, leave-one-group-out**: each run of ``analysis/corpus`` is replayed with a calibration
  that holds every other run of the corpus except those of its own configuration (its other seed):
  the forecaster never sees the run, nor its twin.
* **Reference logs, leave-one-out**: the author's two-phase MLP/MNIST logs in
  ``../shared/reference/rupa2026_logs``, each replayed with the corpus plus the *other* reference runs
  as calibration (exactly what ``ncstudy replay LOGS --group mlp/mnist`` does at its defaults).
  Nothing of the forecaster was tuned on these logs.
* For ``conformal`` (the default), ``conformal_no_fn`` (does fn* add anything beyond NC1?), and the
  baselines ``fn_star`` (the paper's crossing rule) and ``nc1`` (log-linear NC1 extrapolation), at
  their defaults, policy ``stop_at_forecast``; scored by :func:`ncstudy.forecast.replay.summarize`
  (strict onset only; a collapse forecast acted on in a run that never collapses is a false stop).
* The targets of issue 13, met or missed, and fn* per (model, dataset) of the corpus (mean, SD, CV),
  the project's own test of the paper's CV < 8 % claim; the forecaster's cost per observation.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from ncstudy.forecast import load_logs, read_manifest, replay  # noqa: E402
from ncstudy.forecast.replay import calibration_from_trajectories, format_summaries  # noqa: E402

CORPUS = ROOT / "analysis" / "corpus"
REFERENCE = ROOT.parent / "shared" / "reference" / "rupa2026_logs"
REFERENCE_MANIFEST = ROOT / "analysis" / "rupa2026" / "runs.csv"
FORECASTERS = ("conformal", "conformal_no_fn", "fn_star", "nc1")

#: issue 13's targets: (summary field, comparison, value, what it says)
TARGETS = [
    ("mae", "<=", 20.0, "collapsing runs: MAE of the reported T_NC (epochs)"),
    ("interval_coverage", ">=", 0.90, "collapsing runs stopped at a forecast: true onset inside the interval"),
    ("forecast_stop_rate", ">=", 0.70, "collapsing runs stopped by a forecast before their onset"),
    ("n_false_stops", "==", 0, "censored runs: false stops"),
    ("censored_saved", ">=", 0.50, "censored runs: share of their epochs saved by no-onset stops"),
    ("false_no_onset_rate", "<=", 0.05, "collapsing runs wrongly stopped as no onset"),
    ("saved", ">=", 0.30, "study: epochs saved vs stop-at-onset-or-budget"),
    ("spearman", ">=", 0.90, "study: Spearman of reported vs true T_NC (collapsing runs)"),
]


#: option variants of the default forecaster, scored on the corpus only (how the defaults were chosen)
VARIANTS = {"confirm 1 (decide at the first evaluation)": {"confirm": 1},
            "k 10 analogs": {"k": 10}, "k 25 analogs": {"k": 25},
            "noisy features down-weighted": {"weights": {"noise": 0.25, "rate_old": 0.5, "grad_rate": 0.5,
                                                         "weight_rate": 0.5, "loss_rate": 0.5}}}


def corpus_runs(corpus: Path):
    return load_logs([corpus / "runs"], read_manifest(corpus / "manifest.csv"))


def reference_runs():
    runs = load_logs([REFERENCE], read_manifest(REFERENCE_MANIFEST))
    return [t for t in runs if t.group == "mlp/mnist" and t.meta.get("protocol") == "two-phase"]


def _task(args):
    kind, corpus, forecaster, options = args
    options = dict(options)
    label = options.pop("label", None)
    t0 = time.process_time()
    if kind == "corpus":
        res = replay(corpus_runs(Path(corpus)), forecaster, "leave-one-group-out", holdout_by="config",
                     forecaster_options=options)
    else:
        prior = calibration_from_trajectories(corpus_runs(Path(corpus)))
        res = replay(reference_runs(), forecaster, "leave-one-out", prior=prior, forecaster_options=options)
    out = res.to_dict()
    out["cpu_s"] = time.process_time() - t0
    if label:
        out["label"] = label
    return kind, forecaster, out


def check(value, op: str, target: float) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return {"<=": value <= target, ">=": value >= target, "==": value == target}[op]


def fn_star_table(corpus: Path) -> list[dict]:
    """fn* (fn at the strict onset) per (model, dataset), and per activation within it."""
    import pandas as pd

    m = pd.read_csv(corpus / "manifest.csv")
    m = m[m["t_nc"].notna()]
    rows = []
    for keys, sub in [*m.groupby("group"), *m.groupby(["group", "activation"])]:
        v = sub["fn_star"].astype(float)
        mean = float(v.mean())
        sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        rows.append({"pair": keys if isinstance(keys, str) else " / ".join(keys), "n": int(len(v)), "mean": mean,
                     "sd": sd, "cv": sd / mean if mean else math.nan, "min": float(v.min()), "max": float(v.max())})
    return rows


def cost_per_observation(corpus: Path) -> dict:
    """CPU ms per observation of the conformal forecaster over the reference runs (pool built once)."""
    from ncstudy.forecast.forecasters import ConformalOnset

    t0 = time.process_time()
    cal = calibration_from_trajectories(corpus_runs(corpus))
    cal.analog_pool()  # built once per calibration change; timed apart from the observations
    build = time.process_time() - t0
    n, t = 0, 0.0
    for traj in reference_runs():
        f = ConformalOnset(cal, traj.group, float(traj.records[-1]["epoch"]))
        t0 = time.process_time()
        for r in traj.records:
            f.observe(r)
            n += 1
        t += time.process_time() - t0
    return {"ms_per_observation": 1000 * t / n, "observations": n, "pool_build_s": build,
            "pool_runs": cal.n_runs()}


def markdown(results: dict) -> str:
    out = ["# Forecaster evaluation: results", "",
           "Generated by `.venv/bin/python analysis/forecast/evaluate.py` "
           f"({results['date']}; {results['n_corpus']} corpus runs, {results['n_reference']} reference runs). "
           "Read `README.md` beside this file for what the numbers mean.", ""]
    for kind, title in (("corpus", "Corpus, leave-one-group-out (holdout = configuration, both seeds)"),
                        ("reference", "Reference logs (MLP/MNIST two-phase), leave-one-out, corpus as prior")):
        from ncstudy.forecast.replay import ReplaySummary

        sums = [ReplaySummary(**results[kind][f]["summary"]) for f in FORECASTERS if f in results[kind]]
        out += [f"## {title}", "", format_summaries(sums, markdown=True), ""]
    out += ["## Targets (conformal, at its defaults)", "",
            "| target | corpus | reference | |", "|---|---|---|---|"]
    for key, op, val, text in TARGETS:
        cells = []
        for kind in ("corpus", "reference"):
            sm = results[kind]["conformal"]["summary"]
            v = sm.get(key)
            ok = check(v, op, val)
            cell = ("-" if v is None else f"{v:.3g}") + ("" if ok is None else " ✓" if ok else " ✗")
            if key in ("mae", "spearman") and not sm["n_forecast_stops"]:
                cell += " (trivial: no forecast stop, every collapsing run ran to its onset)"
            cells.append(cell)
        out.append(f"| {text} {op} {val:g} | {cells[0]} | {cells[1]} | |")
    out += ["", "## fn* per (model, dataset) in the corpus (runs that reach NC1 < 0.01)", "",
            "| pair | runs | mean | SD | CV | min | max |", "|---|---|---|---|---|---|---|"]
    for r in results["fn_star"]:
        out.append(f"| {r['pair']} | {r['n']} | {r['mean']:.3f} | {r['sd']:.3f} | {100 * r['cv']:.0f} % | "
                   f"{r['min']:.3f} | {r['max']:.3f} |")
    out += ["", "## Diagnostics per evaluation (conformal)", "",
            "| | corpus | reference |", "|---|---|---|"]
    diag = [("intervals stated before onset with a finite upper end", "evaluations", "{:.0f}"),
            ("... share holding the true onset", "eval_interval_coverage", "{:.3f}"),
            ("'when, if it collapses' 90 % intervals stated before onset", "evaluations_if_onset", "{:.0f}"),
            ("... share holding the true onset (nominal 0.90)", "eval_coverage_if_onset", "{:.3f}"),
            ("trusted evaluations with a p_onset", "p_onset_evaluations", "{:.0f}"),
            ("Brier score of p_onset", "p_onset_brier", "{:.3f}"),
            ("Brier score of the constant forecast (base rate)", "p_onset_brier_base", "{:.3f}")]
    for text, key, fmt in diag:
        cells = [results[k]["conformal"]["summary"].get(key) for k in ("corpus", "reference")]
        out.append(f"| {text} | " + " | ".join("-" if v is None else fmt.format(v) for v in cells) + " |")
    if results.get("variants"):
        from ncstudy.forecast.replay import ReplaySummary

        sums = []
        for label, r in results["variants"].items():
            sm = ReplaySummary(**r["summary"])
            sm.forecaster = label
            sums.append(sm)
        out += ["", "## Option variants on the corpus (leave-one-group-out)", "",
                format_summaries([ReplaySummary(**results["corpus"]["conformal"]["summary"]), *sums],
                                 markdown=True)]
    c = results["cost"]
    out += ["", "## Cost", "",
            f"Conformal forecaster: {c['ms_per_observation']:.2f} ms CPU per observation over "
            f"{c['observations']} observations (pool of {c['pool_runs']} runs); building the pool "
            f"(when the calibration changes): {c['pool_build_s']:.2f} s CPU.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--forecasters", default=",".join(FORECASTERS))
    ap.add_argument("--only", choices=("corpus", "reference"), help="one of the two evaluations")
    ap.add_argument("--options", default="{}", help="forecaster options as JSON (exploration only)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    forecasters = [f for f in a.forecasters.split(",") if f]
    options = json.loads(a.options)
    kinds = [a.only] if a.only else ["corpus", "reference"]
    full = not (a.only or options or set(forecasters) != set(FORECASTERS))
    tasks = [(k, str(a.corpus), f, options) for k in kinds for f in forecasters]
    if full:
        tasks += [("corpus", str(a.corpus), "conformal", dict(opt, label=label)) for label, opt in VARIANTS.items()]
    results: dict = {k: {} for k in ("corpus", "reference", "variants")}
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        for kind, forecaster, out in ex.map(_task, tasks):
            label = out.pop("label", None)
            if label:
                results["variants"][label] = out
                continue
            results[kind][forecaster] = out
            s = out["summary"]
            print(f"{kind:9s} {forecaster:16s} forecast stops {s['n_forecast_stops']}/{s['n_collapsing']}, "
                  f"false stops {s['n_false_stops']}, no-onset {s['n_no_onset_stops']}/{s['n_censored']} "
                  f"(false {s['n_false_no_onset']}), saved {s['saved']}, mae {s['mae']}, "
                  f"coverage {s['interval_coverage']}, spearman {s['spearman']} [{out['cpu_s']:.0f} s]",
                  flush=True)
    if not full:
        return 0  # an exploration: nothing written
    results.update(date=time.strftime("%Y-%m-%d"), n_corpus=len(corpus_runs(a.corpus)),
                   n_reference=len(reference_runs()), fn_star=fn_star_table(a.corpus),
                   cost=cost_per_observation(a.corpus))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (a.out / "results.md").write_text(markdown(results))
    print(f"wrote {a.out / 'results.md'} and results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
