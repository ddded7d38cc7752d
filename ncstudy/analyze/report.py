"""Markdown report, CSV tables and a JSON dump of an :class:`~ncstudy.analyze.pipeline.Analysis`."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ncstudy.analyze.experiments import ExperimentResult, no_onset_text
from ncstudy.deprecation import renamed_function
from ncstudy.records import CENSORED_STOPS, finite
from ncstudy.text import MISSING, mean_sd, table, value

if TYPE_CHECKING:  # pragma: no cover
    from ncstudy.analyze.pipeline import Analysis


# ---------------------------------------------------------------------------------------------
# Former formatters (deprecated: ncstudy.text formats every value and table)
# ---------------------------------------------------------------------------------------------
f3 = renamed_function("ncstudy.analyze.report.f3", "ncstudy.text.value(x, fixed=nd)",
                      lambda x, nd=3: value(x, fixed=nd, missing="–"))
fint = renamed_function("ncstudy.analyze.report.fint", "ncstudy.text.value(x, fixed=0)",
                        lambda x: value(x, fixed=0, missing="never"))
fp = renamed_function("ncstudy.analyze.report.fp", "ncstudy.text.value(p, fixed=4)",
                      lambda x: value(x, fixed=4, missing="–"))
pm = renamed_function("ncstudy.analyze.report.pm", "ncstudy.text.mean_sd",
                      lambda m, s, nd=3: mean_sd(m, s, fixed=nd, missing="–"))
md_table = renamed_function("ncstudy.analyze.report.md_table", "ncstudy.text.table(markdown=True)",
                            lambda header, rows: table(header, rows, markdown=True))


def _md(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    return table(head, rows, markdown=True)


def _n(x: Any, nd: int = 3) -> str:
    """A statistic to ``nd`` decimals."""
    return value(x, fixed=nd)


def _pct(x: Any) -> str:
    """A change already in percent, signed: ``+12.5 %``."""
    return value(x, fixed=1, sign=True, unit=" %")


def _epoch(x: Any, missing: str = "never") -> str:
    return value(x, fixed=0, missing=missing)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def groups_md(res: ExperimentResult) -> str:
    rows = []
    for _, g in res.groups.iterrows():
        ci = f"[{_n(g['fn_ci_low'])}, {_n(g['fn_ci_high'])}]" if finite(g["fn_ci_low"]) else MISSING
        rows.append([g["group"], g["N"], g["n_collapsed"], g["threshold"],
                     mean_sd(g["fn_mean"], g["fn_sd"], fixed=3), ci,
                     value(g["fn_cv"], percent=True),
                     mean_sd(g["t_nc_mean"], g["t_nc_sd"], fixed=1) if finite(g["t_nc_mean"]) else no_onset_text(g),
                     _n(g["test_acc_mean"], 4), _n(g["min_nc1_mean"], 4)])
    return _md(["group", "N", "collapsed", "threshold", "fn* mean ± SD", "95 % CI", "CV",
                     "T_NC mean ± SD", "test acc", "min nc1"], rows)


def runs_md(runs: pd.DataFrame, keys: Sequence[str]) -> str:
    rows = []
    for _, r in runs.iterrows():
        rows.append([r.get("name") or r["run_id"], r["group"], value(r.get("seed"), 6), _epoch(r["t_nc"]),
                     _n(r["fn_star"], 4),
                     r["threshold"] or "none", r["phase_rule"], _n(r["test_acc"], 4), _n(r["min_nc1"], 4),
                     r["origin"]])
    return _md(["run", "group", "seed", "T_NC", "fn*", "threshold", "onset phase", "test acc",
                     "min nc1", "from"], rows)


def across_md(res: ExperimentResult) -> str:
    out = []
    for metric, kw_key, an_key in (("fn*", "kruskal_fn", "anova_fn"), ("T_NC", "kruskal_tnc", "anova_tnc")):
        kw, an = res.across.get(kw_key, {}), res.across.get(an_key, {})
        if kw.get("H") is not None:
            out.append(f"- {metric}: Kruskal–Wallis H = {kw['H']:.2f}, df {kw['df']}, p = {_n(kw['p'], 4)}, "
                       f"n = {kw['n']}, k = {kw['k']}; η²_H = (H − k + 1)/(n − k) = {kw['eta2_H']:.3f}, "
                       f"ε² = H/((n²−1)/(n+1)) = {kw['epsilon2']:.3f}")
        elif kw:
            out.append(f"- {metric}: Kruskal–Wallis not computed ({kw.get('note', 'n/a')})")
        if an.get("F") is not None:
            out.append(f"- {metric}: one-way ANOVA F({an['df_between']}, {an['df_within']}) = {an['F']:.2f}, "
                       f"p = {_n(an['p'], 4)}")
        elif an:
            out.append(f"- {metric}: one-way ANOVA not computed ({an.get('note', 'degenerate groups')})")
    return "\n".join(out)


def effects_md(res: ExperimentResult) -> str:
    e = res.effects
    out = []
    if e.get("architecture"):
        out.append("Architecture effect on mean fn* (" + e["reference_model"] + " → other):\n")
        out.append(_md(["dataset", "from", "to", "fn* from", "fn* to", "effect"],
                            [[x["dataset"], x["from"], x["to"], _n(x["fn_from"]), _n(x["fn_to"]),
                              _pct(x["effect_pct"])] for x in e["architecture"]]))
    if e.get("dataset"):
        out.append("\nDataset effect on mean fn* (" + e["reference_dataset"] + " → other):\n")
        out.append(_md(["model", "from", "to", "fn* from", "fn* to", "effect"],
                            [[x["model"], x["from"], x["to"], _n(x["fn_from"]), _n(x["fn_to"]),
                              _pct(x["effect_pct"])] for x in e["dataset"]]))
    if e.get("additivity"):
        out.append("\nAdditive model m(A, D) ≈ m(ref, D) + m(A, ref) − m(ref, ref) against the observed cell "
                   "(and its multiplicative counterpart m(ref, D)·m(A, ref)/m(ref, ref)):\n")
        out.append(_md(["cell", "observed", "additive prediction", "deviation", "multiplicative prediction",
                             "deviation"],
                            [[f"{x['model']} / {x['dataset']}", _n(x["observed"]), _n(x["additive_prediction"]),
                              f"{value(x['deviation'], fixed=3, sign=True)} ({_pct(x['deviation_pct'])})",
                              _n(x["multiplicative_prediction"]), _pct(x["multiplicative_deviation_pct"])]
                             for x in e["additivity"]]))
    return "\n".join(out)


def wd_md(df: pd.DataFrame) -> str:
    return _md(["weight decay", "N", "collapsed", "T_NC mean ± SD", "vs fastest", "t-test vs fastest",
                     "min nc1", "regime"],
                    [[value(r["weight_decay"], 6), r["N"], r["n_collapsed"],
                      mean_sd(r["t_nc_mean"], r["t_nc_sd"], fixed=1) if finite(r["t_nc_mean"]) else no_onset_text(r),
                      _pct(r["vs_fastest_pct"]),
                      f"t = {r['t_vs_fastest']:.2f}, p = {_n(r['p_vs_fastest'], 4)}" if finite(r["t_vs_fastest"])
                      else MISSING,
                      _n(r["min_nc1_mean"], 4), r["regime"]] for _, r in df.iterrows()])


def intervention_md(df: pd.DataFrame) -> str:
    return _md(["stratum", "alpha", "metric", "n (collapsed) treated", "n (collapsed) control",
                     "treated mean", "control mean", "change", "Student t", "df", "p"],
                    [[r["stratum"], value(r["alpha"], 6), r["metric"], f"{r['n_treated']} ({r['n_treated_collapsed']})",
                      f"{r['n_control']} ({r['n_control_collapsed']})", _n(r["treated_mean"]),
                      _n(r["control_mean"]),
                      _pct(r.get("change_pct")),
                      _n(r["t"], 2), value(r["df"], 6), _n(r["p"], 4)] for _, r in df.iterrows()])


def lead_md(lead: dict[str, Any]) -> str:
    s = lead.get("summary")
    if not s:
        return "No collapsed run, no lead times."
    out = [f"Threshold: {s['threshold']}"
           + (f" (log fn* = {s['fit']['intercept']:.4f} + {s['fit']['slope']:.4f} · log {s['fit']['key']}, "
              f"r = {s['fit']['r']:.3f}, n = {s['fit']['n']})" if s.get("fit") else "")
           + ". In-sample: threshold and lead come from the same runs, so this is not a forecast.",
           "",
           f"- collapsed runs: {s['n_collapsed']}, with a per-epoch trajectory: {s['n_with_trajectory']}",
           f"- fn crossed its threshold: {s['n_cross']} of {s['n_with_trajectory']} "
           f"({s['n_cross_before_onset']} before T_NC)",
           f"- lead T_NC − crossing: mean {mean_sd(s['lead_mean'], s['lead_sd'], fixed=1)} epochs, "
           f"median {_n(s['lead_median'], 1)}"]
    if s.get("n_forecast"):
        out.append(f"- stopper's forecasts (tag forecast_epoch): {s['n_forecast']} runs, lead T_NC − forecast_epoch "
                   f"{mean_sd(s['forecast_lead_mean'], s.get('forecast_lead_sd'), fixed=1)} epochs")
    pr = lead["per_run"]
    pr = pr[pr["has_trajectory"]]
    if len(pr):
        out += ["", _md(["run", "group", "T_NC", "fn threshold", "crossing", "lead"],
                             [[r.get("name") or r["run_id"], r["group"], r["t_nc"], _n(r["fn_threshold"]),
                               _epoch(r["crossing"], "none"),
                               _epoch(r["lead"], MISSING)] for _, r in pr.iterrows()])]
    return "\n".join(out)


def build_markdown(a: "Analysis", figures: Sequence[str], command: str | None = None) -> str:
    o = a.options
    src = a.source
    t = a.table
    L = ["# ncstudy analysis report", ""]
    L.append(f"- Source: {'MLflow experiment ' if src.kind == 'mlflow' else 'log folder '}`{src.location}`"
             + (f", preset `{src.preset}`" if src.preset else ""))
    if src.parent_run_id:
        L.append(f"- Study (parent) run: `{src.parent_run_id}`")
    if command:
        L.append(f"- Command: `{command}`")
    n_traj = int(t["origin"].isin(["log", "mlflow-artifact", "mlflow-metrics"]).sum())
    L.append(f"- Runs: {len(t)} ({n_traj} with a per-epoch trajectory, {len(t) - n_traj} from tabulated values)")
    rule = (f"--threshold {o.threshold} for every cell" if o.threshold else
            ("per cell, as the preset encodes it" if a.preset else "relaxed-fallback"))
    phase = ("phase 2 only" if o.phase2_only else "any phase") if o.phase2_only is not None else (
        "per cell, as the preset encodes it" if a.preset else "phase 2 only (unless the run's config says otherwise)")
    L.append(f"- Onset rule: T_NC = first logged epoch with nc1 < {o.strict:g} (strict) or < {o.relaxed:g} "
             f"(relaxed); threshold rule: {rule}; onset phase: {phase}. fn* = feat_norm at T_NC. "
             "relaxed-fallback works per cell: a cell in which no run reaches the strict threshold uses "
             "the relaxed one; a run a stopper or scheduler ended early (stop reason "
             + ", ".join(f"`{r}`" for r in CENSORED_STOPS) + ") is censored at the strict threshold.")
    for w in src.warnings:
        L.append(f"- Warning: {w}")
    L.append("")
    if a.headline:
        L += ["## Reproduced numbers", "",
              "Computed from the logs by this analysis (ours) next to the reference README's table (paper).", "",
              _md(["quantity", "ours", "paper"], [[h["quantity"], h["ours"], h["paper"]] for h in a.headline]),
              ""]
    for name, res in a.experiments.items():
        L += [f"## {res.spec.title} (`{name}`)", ""]
        if res.spec.description:
            L += [res.spec.description, ""]
        L += ["Grouped by " + ", ".join(res.spec.group_by) + ". fn* and T_NC statistics over the runs that "
              "collapsed; SD is the sample SD (ddof = 1), the CI a 95 % Student-t interval, CV = SD / mean.", "",
              groups_md(res), ""]
        if res.notes:
            L += [f"- {n}" for n in res.notes] + [""]
        if res.across:
            L += ["### Across groups", "", across_md(res), ""]
        if res.effects:
            L += ["### Architecture and dataset effects", "", effects_md(res), ""]
        if res.wd_regimes is not None:
            L += ["### Weight-decay regimes", "",
                  f"fastest = lowest mean T_NC; slow = mean T_NC more than {100 * o.slow_margin:.0f} % above it; "
                  "no collapse = no run reached the threshold; stopped early = a stopper ended every run before "
                  "an onset could be observed.", "", wd_md(res.wd_regimes), ""]
        if res.intervention is not None:
            L += ["### Intervention against control (Student t-tests)", "", intervention_md(res.intervention), ""]
        L += ["### Lead time of the fn crossing", "", lead_md(res.lead), ""]
        figs = [f"figures/{f}" for f in res.figures]
        if figs:
            L += ["### Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figs] + [""]
        L += ["### Runs", "", runs_md(res.runs, res.spec.group_by), ""]
    if a.consistency is not None and len(a.consistency):
        c = a.consistency
        n_agree = int(c["status"].str.startswith("agrees").sum())
        n_diff = int((c["status"] == "differs").sum())
        L += ["## Consistency with the author's tables", "",
              f"{n_agree} rows agree, {n_diff} differ (T_NC equal, fn* within 1e-3; a blank T_NC in the author's "
              "table means no strict onset).", "",
              _md(["table", "row", "their T_NC", "their fn*", "run", "our T_NC", "our fn*", "status"],
                       [[r["table"], r["row"], _epoch(r["table_t_nc"], "blank"), _n(r["table_fn"], 4),
                    r["run_id"] or MISSING, _epoch(r["t_nc"]), _n(r["fn_star"], 4), r["status"]]
                        for _, r in c.iterrows()]), ""]
    lc = a.lead_consistency
    if lc is not None and len(lc):
        L += ["### fn-crossing epochs against the author's table", "",
              "The in-sample crossing (threshold from the log-log fit) for runs with a per-epoch log here; the "
              "lead statistics themselves belong to the forecaster.", "",
              _md(["table", "row", "run", "their crossing", "our crossing", "fn threshold", "status"],
                       [[r["table"], r["row"], r["run_id"], _epoch(r["their_crossing"], "none"),
                         _epoch(r["our_crossing"], "none"),
                         _n(r["fn_threshold"]), r["status"]] for _, r in lc.iterrows()]), ""]
    unused = t[t["experiments"] == ""]
    if len(unused):
        L += ["## Runs in no experiment", "",
              _md(["run", "T_NC", "fn*", "threshold", "min nc1", "note"],
                       [[r["run_id"], _epoch(r["t_nc"]), _n(r["fn_star"], 4), r["threshold"] or "none",
                         _n(r["min_nc1"], 4), r["note"]] for _, r in unused.iterrows()]), ""]
    if src.ignored_files:
        L += ["## Files not used", "", ", ".join(src.ignored_files), ""]
    L += ["Files: `runs.csv` (every run), `groups.csv` (every group of every experiment), `results.json` "
          "(everything above, machine-readable), `figures/`.", ""]
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------
def jsonable(x: Any) -> Any:
    if isinstance(x, pd.DataFrame):
        return [jsonable(r) for r in x.to_dict("records")]
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if x is None or x is pd.NA:
        return None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def results_dict(a: "Analysis", figures: Sequence[str]) -> dict[str, Any]:
    exps = {}
    for name, r in a.experiments.items():
        exps[name] = {"title": r.spec.title, "group_by": list(r.spec.group_by), "groups": r.groups,
                      "across": r.across, "effects": r.effects, "intervention": r.intervention,
                      "wd_regimes": r.wd_regimes,
                      "lead": {"summary": r.lead.get("summary"), "per_run": r.lead.get("per_run")},
                      "notes": r.notes, "runs": list(r.runs["run_id"]),
                      "figures": [f"figures/{f}" for f in r.figures]}
    src = a.source
    return jsonable({
        "source": {"kind": src.kind, "location": src.location, "preset": src.preset,
                   "tracking_uri": src.tracking_uri, "experiment_id": src.experiment_id,
                   "parent_run_id": src.parent_run_id, "warnings": src.warnings,
                   "ignored_files": src.ignored_files},
        "options": {"threshold": a.options.threshold, "phase2_only": a.options.phase2_only,
                    "group_by": list(a.options.group_by) if a.options.group_by else None,
                    "strict": a.options.strict, "relaxed": a.options.relaxed},
        "headline": a.headline, "experiments": exps, "consistency": a.consistency,
        "lead_consistency": a.lead_consistency,
        "runs": a.table.drop(columns=[], errors="ignore"),
        "figures": [f"figures/{Path(f).name}" for f in figures],
    })


def write_outputs(a: "Analysis", out: Path, figures: Sequence[str], command: str | None = None) -> dict[str, Any]:
    """report.md, results.json, runs.csv, groups.csv into ``out`` (figures are already in out/figures)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(build_markdown(a, figures, command))
    res = results_dict(a, figures)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    a.table.to_csv(out / "runs.csv", index=False)
    frames = [r.groups.assign(experiment=n) for n, r in a.experiments.items() if not r.groups.empty]
    if frames:
        pd.concat(frames, ignore_index=True).to_csv(out / "groups.csv", index=False)
    return res
