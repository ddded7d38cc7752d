"""Presets: how the files of a known log folder map to runs, cells, rules and experiments.

This package is the machinery; a preset itself is a Python module that defines ``PRESET`` (a
:class:`Preset`). Named presets ship inside this package (``--preset rupa2026`` is
:mod:`ncstudy.analyze.presets.rupa2026`, the author's released logs,
``../shared/reference/rupa2026_logs``, with the table of what each file is beside it), so they work
from an installed wheel; ``--preset path/to/preset.py`` loads any other file. No result is stored
in a preset: T_NC and fn* are computed from the logs by :mod:`ncstudy.onset`;
only for runs whose per-epoch log is not in the folder are tabulated values used, and those rows
are listed explicitly (:class:`TableRow`).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pandas as pd

from ncstudy.analyze.experiments import ExperimentSpec
from ncstudy.analyze.sources import SourceInfo
from ncstudy.errors import InputError
from ncstudy.records import num
from ncstudy.runs import Run, group_of, read_run

#: Where named presets live: the modules of this package (``ncstudy/analyze/presets/<name>.py``).
PRESETS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class FileRun:
    """One per-epoch log file = one run."""

    file: str
    attrs: dict[str, Any]
    cell: str
    rule: str  # strict | relaxed | relaxed-fallback
    experiments: tuple[str, ...]
    phase2_only: bool = True
    phase1_epochs: int | None = None  # infer the phase of a file without a phase column
    optional: bool = False  # exploratory files: used when present
    note: str = ""


@dataclass(frozen=True)
class TableRow:
    """A run without a per-epoch log in the folder: T_NC and fn* from the author's table."""

    file: str
    match: dict[str, Any]  # column -> value selecting exactly one row
    attrs: dict[str, Any]
    cell: str
    rule: str
    experiments: tuple[str, ...]
    t_col: str = "T_NC"
    fn_col: str = "fn"
    test_col: str | None = "test_acc"
    note: str = ""


@dataclass(frozen=True)
class Check:
    """Compare the onsets computed from the logs with one of the author's summary tables."""

    file: str
    keys: dict[str, str]  # table column -> run attribute (blank cells are not keys)
    fixed: dict[str, Any] = field(default_factory=dict)  # run attributes every match must have
    domain: tuple[str, ...] | None = None  # experiments whose runs may match (None: all runs)
    t_col: str = "T_NC"
    fn_col: str = "fn"


@dataclass(frozen=True)
class LeadCheck:
    """Compare the in-sample fn-crossing epochs of an experiment with the author's table.

    Runs with a per-epoch log that are absent from the table must not cross.
    """

    file: str
    experiment: str
    keys: dict[str, str]  # table column -> run attribute
    cross_col: str = "ep_cross"


@dataclass
class Preset:
    name: str
    description: str
    files: list[FileRun]
    table_rows: list[TableRow]
    experiments: list[ExperimentSpec]
    checks: list[Check]
    headline: Callable[[dict], list[dict[str, Any]]] | None = None
    lead_checks: list[LeadCheck] = field(default_factory=list)
    extra_files: tuple[str, ...] = ()  # known files that are neither runs nor checks

    def load(self, folder: Path) -> tuple[list[Run], SourceInfo]:
        missing = [f.file for f in self.files if not f.optional and not (folder / f.file).is_file()]
        missing += sorted({t.file for t in self.table_rows if not (folder / t.file).is_file()})
        if missing:
            raise InputError(f"{folder}: preset {self.name} needs file(s) missing from the folder: "
                                     f"{', '.join(missing)}")
        runs, errors = [], []
        for f in self.files:
            p = folder / f.file
            if not p.is_file():
                continue
            try:
                run = read_run(p, f.attrs, ce_epochs=f.phase1_epochs)
            except InputError as e:
                errors.append(str(e))
                continue
            note = f.note
            if f.phase1_epochs is not None and "phase" not in pd.read_csv(p, nrows=0).columns:
                note = (note + "; " if note else "") + f"no phase column: epochs > {f.phase1_epochs} taken as phase 2"
            run.cell, run.rule, run.phase2_only, run.experiments, run.note = (
                f.cell, f.rule, f.phase2_only, f.experiments, note)
            runs.append(run)
        for t in self.table_rows:
            p = folder / t.file
            tab = pd.read_csv(p)
            need = [c for c in [*t.match, t.t_col, t.fn_col] + ([t.test_col] if t.test_col else [])
                    if c not in tab.columns]
            if need:
                errors.append(f"{p}: missing required column(s) {', '.join(need)}")
                continue
            sel = tab
            for c, v in t.match.items():
                sel = sel[sel[c] == v]
            if len(sel) != 1:
                errors.append(f"{p}: expected one row with {t.match}, found {len(sel)}")
                continue
            row = sel.iloc[0]
            rid = f"{p.stem}[" + ",".join(f"{c}={v}" for c, v in t.match.items()) + "]"
            runs.append(Run(
                rid, group_of(t.attrs, run_id=rid), attrs=t.attrs,
                source=f"{p} row " + ", ".join(f"{c}={v}" for c, v in t.match.items()), origin="table",
                cell=t.cell, rule=t.rule,
                given={"t_nc": row[t.t_col], "fn_star": row[t.fn_col],
                       "test_acc": row[t.test_col] if t.test_col else None, "threshold": t.rule},
                experiments=t.experiments, note=t.note))
        if errors:
            raise InputError(f"preset {self.name}: unusable file(s):\n  " + "\n  ".join(errors))
        known = {f.file for f in self.files} | {t.file for t in self.table_rows} | {c.file for c in self.checks}
        known |= {c.file for c in self.lead_checks} | set(self.extra_files)
        ignored = sorted(p.name for p in folder.glob("*.csv") if p.name not in known)
        return runs, SourceInfo(kind="logs", location=str(folder), preset=self.name, ignored_files=ignored)


def _kv(col: str, v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{col}={v}"


def consistency(preset: Preset, folder: Path, table: pd.DataFrame, tol_fn: float = 1e-3) -> pd.DataFrame:
    """Row by row: the author's tabulated T_NC / fn* against ours for the same run."""
    out = []
    for c in preset.checks:
        p = folder / c.file
        if not p.is_file():
            continue
        tab = pd.read_csv(p)
        for _, row in tab.iterrows():
            cand = table
            if c.domain is not None:
                cand = cand[cand["experiments"].map(lambda e: bool(set(e.split(";")) & set(c.domain)))]
            for a, v in c.fixed.items():
                cand = cand[cand[a] == v]
            key_desc = []
            for col, attr in c.keys.items():
                v = row.get(col)
                if pd.isna(v):
                    continue
                key_desc.append(_kv(col, v))
                if isinstance(v, str):
                    cand = cand[cand[attr].map(lambda x: str(x).lower() == v.lower())]
                else:
                    cand = cand[pd.to_numeric(cand[attr], errors="coerce").sub(float(v)).abs() < 1e-12]
            rec = {"table": c.file, "row": ", ".join(key_desc), "table_t_nc": num(row.get(c.t_col)),
                   "table_fn": num(row.get(c.fn_col)), "run_id": None, "t_nc": None, "fn_star": None}
            if len(cand) != 1:
                rec["status"] = "no log in folder" if len(cand) == 0 else f"ambiguous ({len(cand)} runs)"
                out.append(rec)
                continue
            r = cand.iloc[0]
            rec.update(run_id=r["run_id"], t_nc=None if pd.isna(r["t_nc"]) else int(r["t_nc"]),
                       fn_star=None if pd.isna(r["fn_star"]) else float(r["fn_star"]))
            if r["origin"] == "table" and str(r["source"]).startswith(str(p)):
                rec["status"] = "source of the run"
            elif rec["table_t_nc"] is None:
                # A blank T_NC in the author's tables means "no strict onset".
                rec["status"] = "agrees" if pd.isna(r["t_strict"]) else "differs"
                if rec["status"] == "agrees" and rec["t_nc"] is not None:
                    rec["status"] = "agrees (blank = no strict onset; ours relaxed)"
            else:
                same_t = rec["t_nc"] is not None and rec["t_nc"] == int(rec["table_t_nc"])
                same_fn = (rec["fn_star"] is not None and rec["table_fn"] is not None
                           and abs(rec["fn_star"] - rec["table_fn"]) <= tol_fn)
                rec["status"] = "agrees" if same_t and same_fn else "differs"
            out.append(rec)
    return pd.DataFrame(out)


def lead_consistency(preset: Preset, folder: Path, experiments: dict) -> pd.DataFrame:
    """The author's fn-crossing epochs against ours, for runs with a per-epoch log."""
    out = []
    for c in preset.lead_checks:
        p = folder / c.file
        res = experiments.get(c.experiment)
        if not p.is_file() or res is None or not res.lead:
            continue
        tab = pd.read_csv(p)
        per = res.lead["per_run"].merge(res.runs[["run_id", *c.keys.values()]], on="run_id")
        for _, r in per.iterrows():
            sel = tab
            for col, attr in c.keys.items():
                sel = sel[pd.to_numeric(sel[col], errors="coerce").sub(float(r[attr])).abs() < 1e-12]
            theirs = float(sel.iloc[0][c.cross_col]) if len(sel) == 1 else None
            ours = None if pd.isna(r["crossing"]) else int(r["crossing"])
            if not r["has_trajectory"]:
                status = "no log in folder"
            elif theirs is None:
                status = "agrees (no crossing)" if ours is None else "differs"
            else:
                status = "agrees" if ours == int(theirs) else "differs"
            out.append({"table": c.file, "row": ", ".join(_kv(col, r[a]) for col, a in c.keys.items()),
                        "run_id": r["run_id"], "their_crossing": theirs, "our_crossing": ours,
                        "fn_threshold": r["fn_threshold"], "status": status})
    return pd.DataFrame(out)


def known_presets() -> list[str]:
    """The names ``--preset NAME`` accepts: the preset modules shipped in this package."""
    return sorted(m.name for m in pkgutil.iter_modules([str(PRESETS)]) if not m.name.startswith("_"))


def load_preset_module(name: str) -> ModuleType:
    """The module of a preset: by name (a module of this package, e.g. ``rupa2026``) or by the
    path of a preset file (``*.py``)."""
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise InputError(f"preset file {name} not found; give the path of a preset file (a Python file that "
                             "defines PRESET) or the name of a shipped preset: " + ", ".join(known_presets()))
        spec = importlib.util.spec_from_file_location(f"ncstudy_preset_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    known = known_presets()
    if name not in known:
        raise InputError(f"unknown preset '{name}'" + (f"; known presets: {', '.join(known)}" if known else "")
                         + "; or give the path of a preset file (a Python file that defines PRESET)")
    return importlib.import_module(f"{__name__}.{name}")


def get_preset(name: str) -> Preset:
    """The ``PRESET`` of :func:`load_preset_module`."""
    module = load_preset_module(name)
    preset = getattr(module, "PRESET", None)
    if not isinstance(preset, Preset):
        raise InputError(f"{module.__file__}: defines no PRESET (a ncstudy.analyze.presets.Preset)")
    return preset
