"""The statistics of ``ncstudy analyze``: per run, per group, across groups.

T_NC and fn* come from :func:`ncstudy.onset.onset_of` (never re-implemented here); the
statistics come from scipy.stats and pandas. The only formulas written out are the two effect
sizes of the Kruskal-Wallis test, which scipy does not provide:

* epsilon^2 (Tomczak & Tomczak 2014) = H / ((n^2 - 1) / (n + 1)) = H / (n - 1);
* eta^2_H = (H - k + 1) / (n - k). This is the value the paper reports as "epsilon^2 = 0.75"
  (H = 15.75, n = 21, k = 4 gives 0.750; epsilon^2 would be 0.788).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ncstudy import text
from ncstudy.deprecation import renamed_function
from ncstudy.forecast.insample import crossing_epoch, loglog_fit
from ncstudy.onset import RELAXED_NC1, STRICT_NC1, OnsetRule, onset_of
from ncstudy.records import CENSORED_STOPS, FORECAST_EPOCH, num
from ncstudy.runs import ATTR_KEYS, Run


@dataclass(frozen=True)
class ExperimentSpec:
    """One analysis over a subset of the runs, grouped by ``group_by``."""

    name: str
    title: str
    group_by: tuple[str, ...]
    x: str | None = None  # numeric sweep axis: "T_NC against x" figure (depth, width, weight_decay)
    kind: str = "sweep"  # grid | sweep | activation | custom
    order: tuple[Any, ...] | None = None  # display order of the values of a single group key
    lead_fit: str | None = None  # numeric key for the in-sample log-log fit of fn* (lead times)
    description: str = ""


@dataclass
class AnalysisOptions:
    threshold: str | None = None  # strict | relaxed-fallback; None: preset per cell, else fallback
    phase2_only: bool | None = None  # None: per run (preset / trainer config), else phase 2 only
    group_by: tuple[str, ...] | None = None
    strict: float = STRICT_NC1
    relaxed: float = RELAXED_NC1
    slow_margin: float = 0.10  # weight-decay regime "slow": mean T_NC > (1 + margin) x fastest
    ci: float = 0.95


@dataclass
class ExperimentResult:
    spec: ExperimentSpec
    runs: pd.DataFrame  # rows of the run table that belong to the experiment
    groups: pd.DataFrame
    across: dict[str, Any] = field(default_factory=dict)  # kruskal_fn, kruskal_tnc, anova_fn, anova_tnc
    effects: dict[str, Any] = field(default_factory=dict)  # architecture / dataset effects, additivity
    intervention: pd.DataFrame | None = None
    wd_regimes: pd.DataFrame | None = None
    lead: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # file names, filled by figures.make_figures


# ---------------------------------------------------------------------------------------------
# Per run
# ---------------------------------------------------------------------------------------------
def _last_finite(traj: pd.DataFrame, col: str) -> float | None:
    if col not in traj.columns:
        return None
    s = pd.to_numeric(traj[col], errors="coerce").dropna()
    return float(s.iloc[-1]) if len(s) else None


def _at_epoch(traj: pd.DataFrame, col: str, epoch: int | None) -> float | None:
    if epoch is None or col not in traj.columns:
        return None
    s = traj.loc[traj["epoch"] == epoch, col]
    return num(s.iloc[0]) if len(s) else None


def _records(traj: pd.DataFrame) -> list[dict[str, Any]]:
    cols = [c for c in ("epoch", "phase", "nc1", "feat_norm") if c in traj.columns]
    return traj[cols].to_dict("records")


def onset_table(runs: Sequence[Run], opts: AnalysisOptions) -> pd.DataFrame:
    """One row per run: attributes, the onset under its rule, test accuracy."""
    rows = []
    for r in runs:
        p2 = opts.phase2_only if opts.phase2_only is not None else (
            r.phase2_only if r.phase2_only is not None else True)
        rule = opts.threshold or r.rule or "relaxed-fallback"
        row: dict[str, Any] = {"run_id": r.run_id, "name": r.name or r.run_id}
        for k in ATTR_KEYS:
            row[k] = r.attrs.get(k)
        row.update({k: v for k, v in r.attrs.items() if k not in ATTR_KEYS})
        row.update(cell=r.cell or r.run_id, rule=rule, phase_rule="phase 2" if p2 else "any phase",
                   origin=r.origin, source=r.source, experiments=";".join(r.experiments), note=r.note,
                   stop_reason=r.tags.get("stop_reason"),
                   forecast_epoch=num(r.tags.get(FORECAST_EPOCH)))
        if r.has_log:
            tr = r.frame
            o = onset_of(_records(tr), OnsetRule(opts.strict, opts.relaxed, p2), relaxed_fallback=False)
            row.update(t_strict=o.t_strict, t_relaxed=o.t_relaxed, fn_strict=num(o.fn_strict),
                       fn_relaxed=num(o.fn_relaxed), min_nc1=num(o.min_nc1),
                       test_acc=_last_finite(tr, "test"), final_epoch=int(tr["epoch"].max()),
                       n_evals=len(tr))
        else:
            g = r.given or {}
            t = num(g.get("t_nc"))
            row["phase_rule"] = "as tabulated"
            row.update(t_strict=None, t_relaxed=None, fn_strict=None, fn_relaxed=None, min_nc1=None,
                       test_acc=num(g.get("test_acc")), final_epoch=None, n_evals=0,
                       given_t=int(t) if t is not None else None, given_fn=num(g.get("fn_star")),
                       given_threshold=g.get("threshold"))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # Choose the threshold per run. "relaxed-fallback" works per cell, as the README defines it:
    # "cells that never reach 0.01 use nc1 < 0.05".
    # A run a stopper or scheduler ended early (cannot win, no onset expected, capped, a forecast,
    # ASHA) never had the
    # chance to reach the strict threshold: it is censored there, never given the relaxed onset of a
    # run that sat above 0.01 to its budget (that would rank a run cut at NC1 0.04 as collapsing first).
    has_traj = df["origin"].isin(["log", "mlflow-artifact", "mlflow-metrics"])
    cut = df["stop_reason"].isin(CENSORED_STOPS)
    cell_strict = df[has_traj].groupby("cell")["t_strict"].apply(lambda s: s.notna().any()).to_dict()
    t_nc, fn, thr = [], [], []
    for i, row in df.iterrows():
        if not has_traj.iloc[i]:
            t, f = row.get("given_t"), row.get("given_fn")
            t_nc.append(t)
            fn.append(f if t is not None else None)
            thr.append((row.get("given_threshold") or (row["rule"] if row["rule"] != "relaxed-fallback"
                                                         else "strict")) if t is not None else None)
            continue
        use = row["rule"]
        if use == "relaxed-fallback":
            use = "strict" if cell_strict.get(row["cell"], False) or cut.iloc[i] else "relaxed"
        key = "strict" if use == "strict" else "relaxed"
        t = row[f"t_{key}"]
        t = None if t is None or (isinstance(t, float) and math.isnan(t)) else int(t)
        t_nc.append(t)
        fn.append(row[f"fn_{key}"] if t is not None else None)
        thr.append(key if t is not None else None)
    df["t_nc"] = pd.array([t if t is not None else pd.NA for t in t_nc], dtype="Int64")
    df["fn_star"] = pd.to_numeric(pd.Series(fn, index=df.index), errors="coerce")
    df["threshold"] = thr
    df["collapsed"] = df["t_nc"].notna()
    df["stopped_early"] = cut & ~df["collapsed"]  # ended by a stopper or scheduler, no onset observed
    if "given_t" in df.columns:
        df = df.drop(columns=[c for c in ("given_t", "given_fn", "given_threshold") if c in df.columns])
    df["test_acc_at_onset"] = [
        _at_epoch(r.frame, "test", None if pd.isna(t) else int(t)) if r.has_log else None
        for r, t in zip(runs, df["t_nc"])]
    return df


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------
def key_value(v: Any) -> str:
    """A group key's value as text: 6 significant digits (``5e-05``, ``128``), missing as ``none``."""
    return text.value(v, 6, missing="none")


fmt_value = renamed_function("ncstudy.analyze.experiments.fmt_value", "ncstudy.text.value(v, 6, missing='none')",
                             key_value)


def group_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    if len(keys) == 1:
        return key_value(values[0])
    return ", ".join(f"{k}={key_value(v)}" for k, v in zip(keys, values))


def _sort_key(v: Any, order: Sequence[Any] | None) -> tuple:
    if order is not None and v in order:
        return (0, order.index(v), "")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (3, 0, "")
    if isinstance(v, (int, float, np.integer, np.floating)):
        return (1, float(v), "")
    return (2, 0, str(v))


def add_group_column(df: pd.DataFrame, keys: Sequence[str], order: Sequence[Any] | None = None) -> pd.DataFrame:
    df = df.copy()
    for k in keys:
        if k not in df.columns:
            df[k] = None
    df["group"] = [group_label(keys, [row[k] for k in keys]) for _, row in df.iterrows()]
    df["_sort"] = [tuple(_sort_key(_py(row[k]), order if len(keys) == 1 else None) for k in keys)
                   for _, row in df.iterrows()]
    return df


def _py(v: Any) -> Any:
    if v is pd.NA:
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def describe(values: Iterable[float], ci: float = 0.95) -> dict[str, float | int | None]:
    """n, mean, sample SD (ddof 1), Student-t CI of the mean, CV = SD / mean."""
    x = pd.Series(list(values), dtype=float).dropna()
    n = int(len(x))
    out: dict[str, float | int | None] = {"n": n, "mean": None, "sd": None, "ci_low": None,
                                          "ci_high": None, "cv": None}
    if n == 0:
        return out
    out["mean"] = float(x.mean())
    if n >= 2:
        out["sd"] = float(x.std(ddof=1))
        sem = float(stats.sem(x.to_numpy()))
        if sem > 0:
            lo, hi = stats.t.interval(ci, n - 1, loc=out["mean"], scale=sem)
        else:
            lo = hi = out["mean"]
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
        if out["mean"] != 0:
            out["cv"] = float(stats.variation(x.to_numpy(), ddof=1))
    return out


def no_onset_text(g: Any) -> str:
    """What a group's T_NC reads when none of its runs collapsed: ``never`` when they ran to their
    budgets, ``stopped early`` when a stopper (or scheduler) ended them before they could (no onset observed)."""
    return "stopped early" if g["n_cut"] and g["n_cut"] == g["N"] else "never"


def group_stats(df: pd.DataFrame, keys: Sequence[str], order: Sequence[Any] | None = None,
                ci: float = 0.95) -> pd.DataFrame:
    d = add_group_column(df, keys, order)
    rows = []
    for label, g in d.groupby("group", sort=False):
        first = g.iloc[0]
        col = g[g["collapsed"]]
        fn = describe(col["fn_star"], ci)
        tn = describe(col["t_nc"].astype(float), ci)
        thr = col["threshold"].value_counts()
        rows.append({
            "group": label, **{k: _py(first[k]) for k in keys}, "_sort": first["_sort"],
            "N": len(g), "n_collapsed": int(len(col)),
            "n_cut": int(g["stopped_early"].sum()),
            "threshold": ", ".join(f"{t}" if c == len(col) else f"{t} x{c}" for t, c in thr.items()) or "none",
            "fn_mean": fn["mean"], "fn_sd": fn["sd"], "fn_ci_low": fn["ci_low"], "fn_ci_high": fn["ci_high"],
            "fn_cv": fn["cv"], "t_nc_mean": tn["mean"], "t_nc_sd": tn["sd"],
            "test_acc_mean": _mean(g["test_acc"]), "min_nc1_mean": _mean(g["min_nc1"]),
            "seeds": ",".join(key_value(_py(s)) for s in g["seed"]) if "seed" in g else "",
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values("_sort", kind="stable").drop(columns="_sort").reset_index(drop=True)


def _mean(s: pd.Series) -> float | None:
    x = pd.to_numeric(s, errors="coerce").dropna()
    return float(x.mean()) if len(x) else None


# ---------------------------------------------------------------------------------------------
# Across groups
# ---------------------------------------------------------------------------------------------
def kruskal(samples: dict[str, Sequence[float]]) -> dict[str, Any]:
    groups = {k: [float(v) for v in vs] for k, vs in samples.items() if len(vs) > 0}
    k = len(groups)
    n = sum(len(v) for v in groups.values())
    out: dict[str, Any] = {"test": "Kruskal-Wallis", "k": k, "n": n, "H": None, "df": k - 1, "p": None,
                           "epsilon2": None, "eta2_H": None, "groups": list(groups)}
    if k < 2 or n <= k:
        out["note"] = "needs at least two groups and more runs than groups"
        return out
    try:
        h, p = stats.kruskal(*groups.values())
    except ValueError as e:  # e.g. all values identical
        out["note"] = str(e)
        return out
    out.update(H=float(h), p=float(p),
               epsilon2=float(h / ((n ** 2 - 1) / (n + 1))),  # Tomczak & Tomczak (2014)
               eta2_H=float((h - k + 1) / (n - k)))  # the paper's "epsilon^2"
    return out


def anova(samples: dict[str, Sequence[float]]) -> dict[str, Any]:
    groups = {k: [float(v) for v in vs] for k, vs in samples.items() if len(vs) > 0}
    k = len(groups)
    n = sum(len(v) for v in groups.values())
    out: dict[str, Any] = {"test": "one-way ANOVA", "k": k, "n": n, "F": None, "df_between": k - 1,
                           "df_within": n - k, "p": None}
    if k < 2 or n <= k:
        out["note"] = "needs at least two groups and more runs than groups"
        return out
    with warnings.catch_warnings():  # groups of identical values (e.g. T_NC 660 x3): F may be inf
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.f_oneway(*groups.values())
    f, p = float(res.statistic), float(res.pvalue)
    out.update(F=f if math.isfinite(f) else None, p=p if math.isfinite(p) else None)
    return out


def student_t(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """scipy.stats.ttest_ind with equal variances; (None, None) when undefined (zero variance)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(list(x), list(y), equal_var=True)
    t, p = float(res.statistic), float(res.pvalue)
    return (t if math.isfinite(t) else None), (p if math.isfinite(p) else None)


def _samples(df: pd.DataFrame, col: str) -> dict[str, list[float]]:
    c = df[df["collapsed"]]
    return {g: pd.to_numeric(s[col], errors="coerce").dropna().tolist() for g, s in c.groupby("group", sort=False)}


def _reference(levels: Sequence[Any], preferred: str) -> Any:
    return preferred if preferred in levels else sorted(levels, key=str)[0]


def grid_effects(df: pd.DataFrame) -> dict[str, Any]:
    """Architecture and dataset effects on mean fn* (in %), and the additive-model check.

    Cell means m(model, dataset) over collapsed runs. Effects are relative to the reference model
    (mlp) and dataset (mnist). Additive model: m(A, D) ~ m(ref, D) + m(A, ref) - m(ref, ref);
    its multiplicative (log-additive) counterpart m(ref, D) * m(A, ref) / m(ref, ref) is given too.
    """
    c = df[df["collapsed"] & df["model"].notna() & df["dataset"].notna()]
    models = sorted(c["model"].unique(), key=str)
    datasets = sorted(c["dataset"].unique(), key=str)
    if len(models) < 2 and len(datasets) < 2:
        return {}
    means = c.pivot_table(index="model", columns="dataset", values="fn_star", aggfunc="mean")
    ref_m, ref_d = _reference(models, "mlp"), _reference(datasets, "mnist")

    def cell(m: Any, d: Any) -> float:
        return means.at[m, d] if m in means.index and d in means.columns else np.nan

    def effect(a: float, b: float, **where: Any) -> dict[str, Any] | None:
        """fn* change from cell a to cell b, in % (None when either cell is empty)."""
        if pd.isna(a) or pd.isna(b):
            return None
        return {**where, "fn_from": float(a), "fn_to": float(b), "effect_pct": float((b / a - 1) * 100)}

    arch = [e for m in models if m != ref_m for d in datasets
            if (e := effect(cell(ref_m, d), cell(m, d), dataset=d, **{"from": ref_m, "to": m}))]
    data = [e for d in datasets if d != ref_d for m in models
            if (e := effect(cell(m, ref_d), cell(m, d), model=m, **{"from": ref_d, "to": d}))]
    add = []
    for m in models:
        for d in datasets:
            if m == ref_m or d == ref_d:
                continue
            base, row, colv, obs = cell(ref_m, ref_d), cell(ref_m, d), cell(m, ref_d), cell(m, d)
            if any(pd.isna(v) for v in (base, row, colv, obs)):
                continue
            pred = row + colv - base
            mult = row * colv / base
            add.append({"model": m, "dataset": d, "observed": float(obs), "additive_prediction": float(pred),
                        "deviation": float(obs - pred), "deviation_pct": float((obs / pred - 1) * 100),
                        "multiplicative_prediction": float(mult),
                        "multiplicative_deviation_pct": float((obs / mult - 1) * 100)})
    return {"reference_model": ref_m, "reference_dataset": ref_d,
            "cell_means": {f"{m}/{d}": float(means.at[m, d]) for m in means.index for d in means.columns
                           if pd.notna(means.at[m, d])},
            "architecture": arch, "dataset": data, "additivity": add}


def intervention_tests(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame | None:
    """Student t-tests (equal variances) of T_NC and fn* of each alpha against the control.

    Control = runs without ``intervention_alpha``; strata = the other grouping keys.
    """
    if "intervention_alpha" not in df.columns:
        return None
    alpha = pd.to_numeric(df["intervention_alpha"], errors="coerce")
    if not (alpha.notna().any() and alpha.isna().any()):
        return None
    strata_keys = [k for k in keys if k not in ("intervention_alpha", "seed") and k in df.columns]
    d = df.assign(_alpha=alpha)
    d["_stratum"] = [", ".join(f"{k}={key_value(_py(row[k]))}" for k in strata_keys) if strata_keys else "all"
                     for _, row in d.iterrows()]
    rows = []
    for stratum, s in d.groupby("_stratum", sort=False):
        ctrl = s[s["_alpha"].isna()]
        for a, t in s[s["_alpha"].notna()].groupby("_alpha"):
            for metric, col in (("T_NC", "t_nc"), ("fn*", "fn_star")):
                x = pd.to_numeric(t.loc[t["collapsed"], col], errors="coerce").dropna().astype(float)
                y = pd.to_numeric(ctrl.loc[ctrl["collapsed"], col], errors="coerce").dropna().astype(float)
                row = {"stratum": stratum, "alpha": float(a), "metric": metric, "n_treated": len(t),
                       "n_treated_collapsed": len(x), "n_control": len(ctrl), "n_control_collapsed": len(y),
                       "treated_mean": float(x.mean()) if len(x) else None,
                       "control_mean": float(y.mean()) if len(y) else None, "t": None, "df": None, "p": None}
                if len(x) >= 2 and len(y) >= 2:
                    t_, p_ = student_t(x, y)
                    row.update(t=t_, df=int(len(x) + len(y) - 2), p=p_)
                if row["treated_mean"] is not None and row["control_mean"]:
                    row["change_pct"] = (row["treated_mean"] / row["control_mean"] - 1) * 100
                rows.append(row)
    return pd.DataFrame(rows) if rows else None


def wd_regimes(groups: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str], margin: float) -> pd.DataFrame | None:
    """Weight-decay levels labelled fastest / slow / near-fastest / partial / no collapse.

    Per stratum of the other keys: "no collapse" when no run collapsed ("stopped early" when a
    stopper ended every run of the level before an onset could be observed); "fastest" = lowest mean
    T_NC; "slow" when the mean T_NC exceeds the fastest by more than ``margin``; Student t-test of
    T_NC against the fastest level.
    """
    if "weight_decay" not in keys or groups.empty:
        return None
    other = [k for k in keys if k != "weight_decay"]
    g = groups.copy()
    g["_stratum"] = [group_label(other, [row[k] for k in other]) if other else "all" for _, row in g.iterrows()]
    out = []
    for _, s in g.groupby("_stratum", sort=False):
        if s["weight_decay"].nunique() < 2:
            continue
        col = s[s["n_collapsed"] > 0]
        fastest = col.loc[col["t_nc_mean"].idxmin()] if len(col) else None
        for _, row in s.iterrows():
            t_run = runs[(runs["group"] == row["group"]) & runs["collapsed"]]["t_nc"].astype(float)
            rec = {"group": row["group"], "weight_decay": row["weight_decay"], "N": row["N"],
                   "n_collapsed": row["n_collapsed"], "n_cut": row["n_cut"], "t_nc_mean": row["t_nc_mean"],
                   "t_nc_sd": row["t_nc_sd"], "min_nc1_mean": row["min_nc1_mean"], "vs_fastest_pct": None,
                   "t_vs_fastest": None, "p_vs_fastest": None}
            if row["n_collapsed"] == 0:
                rec["regime"] = "no collapse" if no_onset_text(row) == "never" else "stopped early"
            elif fastest is not None and row["group"] == fastest["group"]:
                rec["regime"] = "fastest"
            else:
                pct = (row["t_nc_mean"] / fastest["t_nc_mean"] - 1) * 100
                rec["vs_fastest_pct"] = float(pct)
                rec["regime"] = "slow" if pct > margin * 100 else "near-fastest"
                f_run = runs[(runs["group"] == fastest["group"]) & runs["collapsed"]]["t_nc"].astype(float)
                if len(t_run) >= 2 and len(f_run) >= 2:
                    rec["t_vs_fastest"], rec["p_vs_fastest"] = student_t(t_run, f_run)
            if 0 < row["n_collapsed"] < row["N"]:
                rec["regime"] += f" (partial: {row['n_collapsed']}/{row['N']})"
            out.append(rec)
    return pd.DataFrame(out) if out else None


# ---------------------------------------------------------------------------------------------
# Lead times: fn crossing its threshold vs T_NC
# ---------------------------------------------------------------------------------------------
def fn_crossing(traj: pd.DataFrame, threshold: float, phase2_only: bool) -> int | None:
    """The forecaster's crossing rule (:func:`ncstudy.forecast.crossing_epoch`) on a logged
    trajectory: first epoch with fn <= ``threshold`` (phase 2 only under a phase-2 rule)."""
    return crossing_epoch(_records(traj), threshold, (2,) if phase2_only else None)


def lead_times(runs: pd.DataFrame, trajectories: dict[str, pd.DataFrame], fit_key: str | None) -> dict[str, Any]:
    """In-sample lead of the fn crossing over T_NC, for runs with a trajectory and an onset.

    Threshold per run: a log-log least-squares fit of fn* on ``fit_key`` (scipy.stats.linregress
    over the collapsed runs) when that key has >= 2 positive levels, else the mean fn* of the run's
    group. Lead = T_NC - crossing epoch (positive: fn crossed before onset). In-sample: threshold
    and lead come from the same runs.
    """
    col = runs[runs["collapsed"]]
    if col.empty:
        return {}
    fit = None
    if fit_key and fit_key in col.columns:
        x = pd.to_numeric(col[fit_key], errors="coerce")
        ok = x.notna() & (x > 0) & col["fn_star"].notna()
        if x[ok].nunique() >= 2:
            f = loglog_fit(zip(x[ok].astype(float), col.loc[ok, "fn_star"].astype(float)), fit_on="runs")
            fit = {"key": fit_key, "slope": f.b, "intercept": f.a, "r": f.r, "n": f.n}
    group_mean = col.groupby("group")["fn_star"].mean().to_dict()
    per_run = []
    for _, r in col.iterrows():
        traj = trajectories.get(r["run_id"])
        if fit is not None:
            xv = num(r[fit_key])
            thr = math.exp(fit["intercept"] + fit["slope"] * math.log(xv)) if xv and xv > 0 else None
        else:
            thr = group_mean.get(r["group"])
        cross = (fn_crossing(traj, thr, r["phase_rule"] == "phase 2")
                 if traj is not None and thr is not None else None)
        fc = r.get(FORECAST_EPOCH)
        per_run.append({"run_id": r["run_id"], "name": r.get("name", r["run_id"]), "group": r["group"],
                        "t_nc": int(r["t_nc"]),
                        "fn_threshold": thr, "crossing": cross, "has_trajectory": traj is not None,
                        "lead": int(r["t_nc"]) - cross if cross is not None else None,
                        "forecast_epoch": fc if fc is not None and not pd.isna(fc) else None,
                        "forecast_lead": (int(r["t_nc"]) - fc) if fc is not None and not pd.isna(fc) else None})
    pr = pd.DataFrame(per_run)
    with_traj = pr[pr["has_trajectory"]]
    leads = pd.to_numeric(with_traj["lead"], errors="coerce").dropna()
    summary = {"threshold": "log-log fit of fn* on " + fit_key if fit else "group mean fn*",
               "fit": fit, "n_collapsed": int(len(pr)), "n_with_trajectory": int(len(with_traj)),
               "n_cross": int(len(leads)), "n_cross_before_onset": int((leads > 0).sum()),
               "lead_mean": float(leads.mean()) if len(leads) else None,
               "lead_sd": float(leads.std(ddof=1)) if len(leads) >= 2 else None,
               "lead_median": float(leads.median()) if len(leads) else None}
    fl = pd.to_numeric(pr["forecast_lead"], errors="coerce").dropna()
    if len(fl):
        summary.update(n_forecast=int(len(fl)), forecast_lead_mean=float(fl.mean()),
                       forecast_lead_sd=float(fl.std(ddof=1)) if len(fl) >= 2 else None)
    return {"summary": summary, "per_run": pr}


# ---------------------------------------------------------------------------------------------
# One experiment
# ---------------------------------------------------------------------------------------------
def analyze_experiment(spec: ExperimentSpec, table: pd.DataFrame, trajectories: dict[str, pd.DataFrame],
                       opts: AnalysisOptions) -> ExperimentResult:
    keys = list(spec.group_by)
    order = list(spec.order) if spec.order else None
    runs = add_group_column(table, keys, order)
    runs = runs.sort_values("_sort", kind="stable").drop(columns="_sort").reset_index(drop=True)
    groups = group_stats(runs, keys, order, opts.ci)
    res = ExperimentResult(spec=spec, runs=runs, groups=groups)
    if len(groups) >= 2:
        res.across = {"kruskal_fn": kruskal(_samples(runs, "fn_star")),
                      "anova_fn": anova(_samples(runs, "fn_star")),
                      "kruskal_tnc": kruskal(_samples(runs, "t_nc")),
                      "anova_tnc": anova(_samples(runs, "t_nc"))}
    if "model" in keys or "dataset" in keys:
        eff = grid_effects(runs)
        if eff:
            res.effects = eff
    res.intervention = intervention_tests(runs, keys)
    res.wd_regimes = wd_regimes(groups, runs, keys, opts.slow_margin)
    # The in-sample fit of fn* on width (the paper's) when width is what the runs are grouped by.
    fit_key = spec.lead_fit or ("width" if keys == ["width"] else None)
    res.lead = lead_times(runs, trajectories, fit_key)
    never = groups[groups["n_collapsed"] == 0]
    for _, g in never.iterrows():
        cut = f"; {g['n_cut']} of {g['N']} ended early by a stopper or scheduler" if g["n_cut"] else ""
        res.notes.append(f"{g['group']}: no run reached the threshold (mean min nc1 "
                         f"{key_value(g['min_nc1_mean']) if g['min_nc1_mean'] is not None else 'n/a'}{cut})")
    return res


def auto_group_keys(table: pd.DataFrame) -> tuple[str, ...]:
    """Grouping keys for a source without a preset: the attributes that vary across runs."""
    cand = [k for k in ("model", "dataset", "depth", "width", "activation", "weight_decay", "lr",
                        "intervention_alpha") if k in table.columns]
    vary = [k for k in cand if table[k].map(key_value).nunique() > 1]
    if vary:
        return tuple(vary)
    if "group" in table.columns and table["group"].nunique() > 1:
        return ("group",)
    return ("model",) if "model" in table.columns else ("run_id",)
