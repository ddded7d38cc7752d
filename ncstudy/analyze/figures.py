"""Figures of ``ncstudy analyze`` (PNG), drawn with the one figure stack (:mod:`ncstudy.figure`:
matplotlib's object API, no pyplot, no backend set at import)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib import colormaps

from ncstudy import text
from ncstudy.analyze.experiments import ExperimentResult
from ncstudy.figure import heading, log_axis, new_figure, save, value_ticks, wrap
from ncstudy.records import finite

if TYPE_CHECKING:  # pragma: no cover
    from ncstudy.analyze.pipeline import Analysis

DPI = 110
SWEEP_KEYS = ("depth", "width", "weight_decay")
LOG_X = {"width", "weight_decay", "lr"}
MAX_GROUPS_PER_FIGURE = 12


def trajectories(res: ExperimentResult, trajs: dict[str, pd.DataFrame], out: Path, strict: float,
                 relaxed: float) -> list[str]:
    """fn and nc1 against epoch, one column per group; T_NC and fn-crossing markers."""
    runs = res.runs
    runs = runs[runs["run_id"].isin(trajs)]
    if runs.empty:
        return []
    lead = res.lead.get("per_run")
    cross = {} if lead is None else {r["run_id"]: (r["crossing"], r["fn_threshold"]) for _, r in lead.iterrows()}
    groups = list(dict.fromkeys(res.groups["group"]))
    groups = [g for g in groups if g in set(runs["group"])]
    files = []
    for part in range(0, len(groups), MAX_GROUPS_PER_FIGURE):
        chunk = groups[part:part + MAX_GROUPS_PER_FIGURE]
        ncol = min(len(chunk), 4)
        nrow = math.ceil(len(chunk) / ncol)
        fig = new_figure(3.4 * ncol, 5.2 * nrow, DPI, fit=True)
        axes = fig.subplots(2 * nrow, ncol, squeeze=False)
        for i, g in enumerate(chunk):
            ax_fn, ax_nc = axes[2 * (i // ncol), i % ncol], axes[2 * (i // ncol) + 1, i % ncol]
            sub = runs[runs["group"] == g]
            colors = colormaps["viridis"](np.linspace(0, 0.85, max(len(sub), 1)))
            seeds = [text.value(s, 6, missing="") for s in sub["seed"]] if "seed" in sub else []
            by_seed = len(set(seeds)) == len(sub) and "" not in seeds
            thresholds = set()
            for c, (_, r) in zip(colors, sub.iterrows()):
                t = trajs[r["run_id"]]
                lab = f"seed {text.value(r['seed'], 6)}" if by_seed else str(r["run_id"])
                ax_fn.plot(t["epoch"], t["feat_norm"], color=c, lw=1.2, label=lab)
                ax_nc.plot(t["epoch"], t["nc1"], color=c, lw=1.2)
                if finite(r["t_nc"]):
                    tn = int(r["t_nc"])
                    ax_fn.axvline(tn, color=c, ls=":", lw=1)
                    ax_nc.axvline(tn, color=c, ls=":", lw=1)
                    y = t.loc[t["epoch"] == tn, "nc1"]
                    if len(y):
                        ax_nc.plot([tn], [y.iloc[0]], marker="o", color=c, ms=6, mec="k")
                    thresholds.add(r["threshold"])
                ce, thr = cross.get(r["run_id"], (None, None))
                if finite(thr):
                    ax_fn.axhline(float(thr), color=c, ls="--", lw=0.8, alpha=0.6)
                if finite(ce):
                    y = t.loc[t["epoch"] == int(ce), "feat_norm"]
                    if len(y):
                        ax_fn.plot([int(ce)], [y.iloc[0]], marker="x", color="crimson", ms=8, mew=2)
            ax_nc.axhline(strict, color="k", ls="--", lw=0.8)
            if "relaxed" in thresholds:
                ax_nc.axhline(relaxed, color="grey", ls="--", lw=0.8)
            for ax in (ax_fn, ax_nc):
                log_axis(ax, labelsize=7)
                ax.tick_params(axis="x", labelsize=7)
            ax_fn.set_title(wrap(g, 3.0, 9), fontsize=9)
            ax_fn.set_ylabel("fn")
            ax_nc.set_ylabel("NC1")
            ax_nc.set_xlabel("epoch")
            if len(sub) > 6:  # a long legend hides the lines: under the panel, in two columns
                ax_nc.legend(*ax_fn.get_legend_handles_labels(), fontsize=6, ncol=2, loc="upper center",
                             bbox_to_anchor=(0.5, -0.22), frameon=False)
            else:
                ax_fn.legend(fontsize=6 if len(sub) > 4 else 7, loc="best", framealpha=0.7)
        for j in range(len(chunk), nrow * ncol):
            axes[2 * (j // ncol), j % ncol].axis("off")
            axes[2 * (j // ncol) + 1, j % ncol].axis("off")
        heading(fig, f"{res.spec.title}: fn and NC1 (dotted: T_NC, o: onset, x: fn crossing, dashed: thresholds)",
                9)
        suffix = "" if part == 0 else f"_{part // MAX_GROUPS_PER_FIGURE + 1}"
        files.append(str(save(fig, out / f"trajectories_{res.spec.name}{suffix}.png")))
    return files


def fn_star_by_group(res: ExperimentResult, out: Path) -> str | None:
    g = res.groups
    if g.empty:
        return None
    runs = res.runs
    fig = new_figure(max(4.5, 1.3 * len(g) + 2), 4, DPI, fit=True)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for i, (_, row) in enumerate(g.iterrows()):
        vals = runs[(runs["group"] == row["group"]) & runs["collapsed"]]["fn_star"].astype(float)
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(vals)), vals, s=18, color="tab:blue", alpha=0.6, zorder=2)
        if finite(row["fn_mean"]):
            lo, hi = row["fn_ci_low"], row["fn_ci_high"]
            if finite(lo):
                ax.errorbar([i + 0.25], [row["fn_mean"]], yerr=[[row["fn_mean"] - lo], [hi - row["fn_mean"]]],
                            fmt="s", color="k", capsize=4, zorder=3)
            else:
                ax.plot([i + 0.25], [row["fn_mean"]], "s", color="k")
        else:
            ax.text(i, 0.5, "no collapse", transform=ax.get_xaxis_transform(), ha="center", fontsize=8,
                    color="crimson")
    keys = list(res.spec.group_by)
    short = [" / ".join(text.value(row[k], 6, missing="none") for k in keys) for _, row in g.iterrows()]
    ax.tick_params(axis="x", labelsize=8)
    value_ticks(ax, range(len(g)), [f"{lab}\n(n={n})" for lab, n in zip(short, g["n_collapsed"])])
    ax.set_xlabel(" / ".join(keys))
    ax.set_ylabel("fn* (feature norm at T_NC)")
    heading(fig, f"{res.spec.title}: fn* per run, mean and 95 % Student-t CI", 9)
    return str(save(fig, out / f"fn_star_{res.spec.name}.png"))


def tnc_vs(res: ExperimentResult, key: str, out: Path) -> str | None:
    runs = res.runs
    x = pd.to_numeric(runs[key], errors="coerce") if key in runs.columns else pd.Series(dtype=float)
    if x.dropna().nunique() < 2:
        return None
    others = [k for k in res.spec.group_by if k != key]
    runs = runs.assign(_x=x)
    runs["_line"] = [", ".join(f"{k}={text.value(r[k], 6)}" for k in others) for _, r in runs.iterrows()]
    fig = new_figure(5.5, 4, DPI, fit=True)
    ax = fig.subplots()
    top = pd.to_numeric(runs["t_nc"], errors="coerce").max()
    top = 1.1 * top if finite(top) else 1.0
    for line, sub in runs.groupby("_line", sort=False):
        col = sub[sub["collapsed"]]
        ax.scatter(col["_x"], col["t_nc"].astype(float), s=16, alpha=0.5)
        m = col.groupby("_x")["t_nc"].agg(lambda s: s.astype(float).mean())
        sd = col.groupby("_x")["t_nc"].agg(lambda s: s.astype(float).std(ddof=1))
        ax.errorbar(m.index, m.values, yerr=sd.reindex(m.index).fillna(0).values, fmt="o-", capsize=4,
                    label=line or None)
        never = sorted(set(sub["_x"].dropna()) - set(col["_x"].dropna()))
        for xv in never:
            cut = sub.loc[sub["_x"] == xv, "stopped_early"].all()
            ax.scatter([xv], [top], marker="v", color="crimson", s=50, zorder=3)
            ax.annotate("stopped early" if cut else "no collapse", (xv, top), textcoords="offset points",
                        xytext=(0, -8), ha="center", va="top", fontsize=8, color="crimson")  # under it: inside
    log = key in LOG_X
    if log:
        log_axis(ax, "x", minor_labels=False)
    value_ticks(ax, runs["_x"].dropna().unique(), log=log)  # ticks at the values run
    if runs["_x"].nunique() > runs.loc[runs["collapsed"], "_x"].nunique():  # room for the notes
        ax.set_ylim(top=top * 1.04)
    ax.set_xlabel(key.replace("_", " "))
    ax.set_ylabel("T_NC (epochs)")
    heading(fig, f"{res.spec.title}: T_NC against {key.replace('_', ' ')} (mean \u00b1 SD)", 9)
    if any(ax.get_legend_handles_labels()[1]):
        ax.legend(fontsize=7)
    return str(save(fig, out / f"tnc_vs_{key}_{res.spec.name}.png"))


def activation_comparison(res: ExperimentResult, out: Path) -> str | None:
    g = res.groups
    if "activation" not in res.spec.group_by or g["activation"].nunique() < 2:
        return None
    runs = res.runs
    fig = new_figure(9, 3.8, DPI, fit=True)
    a1, a2 = fig.subplots(1, 2)
    for ax, col, mean, sd, lab in ((a1, "t_nc", "t_nc_mean", "t_nc_sd", "T_NC (epochs)"),
                                   (a2, "fn_star", "fn_mean", "fn_sd", "fn*")):
        for i, (_, row) in enumerate(g.iterrows()):
            hatch = "//" if "relaxed" in str(row["threshold"]) else None
            if finite(row[mean]):
                ax.bar(i, row[mean], yerr=row[sd] if finite(row[sd]) else 0, capsize=4, color="tab:orange",
                       alpha=0.6, hatch=hatch, edgecolor="k")
            vals = runs[(runs["group"] == row["group"]) & runs["collapsed"]][col].astype(float)
            ax.scatter(np.full(len(vals), i), vals, color="k", s=12, zorder=3)
        ax.tick_params(axis="x", labelsize=8)
        value_ticks(ax, range(len(g)), [f"{lab_}\n({t})" for lab_, t in zip(g["group"], g["threshold"])])
        ax.set_ylabel(lab)
    heading(fig, f"{res.spec.title}: activation comparison (hatched: relaxed threshold)", 9)
    return str(save(fig, out / f"activation_{res.spec.name}.png"))


def make_figures(a: "Analysis", out: Path) -> list[str]:
    """Every figure of every experiment into ``out``; each experiment's ``figures`` lists its own."""
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for res in a.experiments.values():
        mine = trajectories(res, a.trajectories, out, a.options.strict, a.options.relaxed)
        mine.append(fn_star_by_group(res, out))
        keys = [res.spec.x] if res.spec.x else [k for k in SWEEP_KEYS if k in res.spec.group_by]
        mine += [tnc_vs(res, k, out) for k in keys]
        mine.append(activation_comparison(res, out))
        res.figures = [Path(f).name for f in mine if f]
        files += [f for f in mine if f]
    return files
