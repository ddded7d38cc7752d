"""Putting it together: source -> run table -> experiments -> (figures, report)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ncstudy.analyze.experiments import (
    AnalysisOptions,
    ExperimentResult,
    ExperimentSpec,
    analyze_experiment,
    auto_group_keys,
    group_label,
    onset_table,
)
from ncstudy.analyze.presets import Preset, consistency, get_preset, lead_consistency
from ncstudy.analyze.sources import SourceInfo, load_log_folder, load_mlflow, log_folder
from ncstudy.errors import InputError
from ncstudy.runs import Run


@dataclass
class Analysis:
    source: SourceInfo
    options: AnalysisOptions
    table: pd.DataFrame
    experiments: dict[str, ExperimentResult]
    trajectories: dict[str, pd.DataFrame]
    preset: Preset | None = None
    consistency: pd.DataFrame | None = None
    lead_consistency: pd.DataFrame | None = None
    headline: list[dict[str, Any]] | None = None
    figures: list[str] = field(default_factory=list)


def _attr_frame(runs: Sequence[Run]) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": r.run_id, **r.attrs} for r in runs])


def _check_keys(keys: Sequence[str], columns: Sequence[str]) -> None:
    missing = [k for k in keys if k not in columns]
    if missing:
        avail = [c for c in columns if c != "run_id"]
        raise InputError(f"unknown --group-by key(s) {', '.join(missing)}; the runs have "
                                 f"{', '.join(avail) or 'no attributes'}")


def analyze_runs(runs: list[Run], info: SourceInfo, opts: AnalysisOptions,
                 preset: Preset | None = None) -> Analysis:
    if not runs:
        raise InputError(f"{info.location}: no runs to analyse")
    attrs = _attr_frame(runs)
    if preset is not None:
        specs = list(preset.experiments)
        if opts.group_by:
            _check_keys(opts.group_by, attrs.columns)
            specs.append(ExperimentSpec("custom", "Custom grouping: " + ", ".join(opts.group_by), tuple(opts.group_by),
                                        kind="custom"))
            members = {r.run_id for r in runs if r.experiments}
            for r in runs:
                if r.run_id in members:
                    r.experiments = tuple(r.experiments) + ("custom",)
    else:
        keys = tuple(opts.group_by) if opts.group_by else auto_group_keys(attrs)
        _check_keys(keys, attrs.columns)
        specs = [ExperimentSpec("study", "All runs by " + ", ".join(keys), keys, kind="custom")]
        for r, (_, row) in zip(runs, attrs.iterrows()):
            r.experiments = ("study",)
            if r.cell is None:  # relaxed fallback per group: "cells that never reach 0.01"
                r.cell = group_label(keys, [row.get(k) for k in keys])
    table = onset_table(runs, opts)
    trajectories = {r.run_id: r.frame for r in runs if r.has_log}
    experiments = {}
    for spec in specs:
        sub = table[table["experiments"].map(lambda e, n=spec.name: n in e.split(";"))]
        if sub.empty:
            continue
        experiments[spec.name] = analyze_experiment(spec, sub.reset_index(drop=True), trajectories, opts)
    a = Analysis(source=info, options=opts, table=table, experiments=experiments, trajectories=trajectories,
                 preset=preset)
    if preset is not None:
        a.consistency = consistency(preset, Path(info.location), table)
        a.lead_consistency = lead_consistency(preset, Path(info.location), experiments)
        if preset.headline is not None and all(s.name in experiments for s in preset.experiments):
            a.headline = preset.headline({"experiments": experiments, "table": table})
    return a


def analyze(*, logs: str | Path | None = None, experiment: str | None = None, tracking_uri: str | None = None,
            preset: str | None = None, options: AnalysisOptions | None = None,
            phase1_epochs: int | None = None) -> Analysis:
    """Load a source and analyse it. Exactly one of ``logs`` and ``experiment``."""
    opts = options or AnalysisOptions()
    if (logs is None) == (experiment is None):
        raise InputError("give exactly one source: --logs DIR or --experiment NAME")
    pre = get_preset(preset) if preset else None
    if logs is not None:
        if pre is not None:
            runs, info = pre.load(log_folder(logs)[0])
        else:
            runs, info = load_log_folder(logs, phase1_epochs=phase1_epochs)
    else:
        if pre is not None:
            raise InputError(f"--preset {preset} describes a log folder; it cannot be used with --experiment")
        runs, info = load_mlflow(experiment, tracking_uri)
    return analyze_runs(runs, info, opts, pre)
