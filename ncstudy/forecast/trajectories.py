"""Logged trajectories for replay and calibration: one run's records, its group and metadata.

Logs are reference-format CSVs (:mod:`ncstudy.logs`; ``.csv.gz`` too). What a file *is* -- model,
dataset, seed, protocol -- comes from a **manifest**: a CSV with a ``file`` column (the log's file
name) and one column per attribute (``model``, ``dataset``, ``depth``, ``width``, ``activation``,
``weight_decay``, ``lr``, ``seed``, ``ce_epochs``, ``budget``, ...). ncstudy's trajectory corpus
carries one (``analysis/corpus/manifest.csv``), and so does the ``rupa2026`` preset for the
author's logs (``ncstudy/analyze/presets/rupa2026_runs.csv``, shipped with the package). Without a
manifest a log's group is ``--group`` or ``default``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ncstudy.errors import InputError, LogFormatError
from ncstudy.logs import read_log
from ncstudy.records import EPOCH, PHASE, finite

GROUP_BY = ("model-dataset", "cell", "file", "all")
LOG_SUFFIXES = (".csv", ".csv.gz")


@dataclass
class Trajectory:
    """One run: its evaluation records in epoch order, its calibration group and metadata
    (``meta['budget']``, when known, is the run's full epoch budget)."""

    run_id: str
    group: str
    records: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def budget(self) -> int | None:
        b = self.meta.get("budget")
        return int(float(b)) if finite(b) else None


def frame_records(df: pd.DataFrame, ce_epochs: int | None = None) -> list[dict[str, Any]]:
    """Rows of a :func:`ncstudy.logs.read_log` frame as records; without a ``phase`` column and
    with ``ce_epochs`` given, phase = 1 up to ``ce_epochs`` and 2 after."""
    recs = []
    for row in df.to_dict("records"):
        r = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        r[EPOCH] = int(r[EPOCH])
        if PHASE not in df.columns and ce_epochs is not None:
            r[PHASE] = 1 if r[EPOCH] <= ce_epochs else 2
        recs.append(r)
    return recs


def group_of(meta: Mapping[str, Any], group_by: str = "model-dataset") -> str:
    """``model/dataset`` (``default`` when neither is known), or per ``cell``, ``file`` or ``all``."""
    if group_by not in GROUP_BY:
        raise InputError(f"group_by must be one of {', '.join(GROUP_BY)}")
    if group_by == "all":
        return "all"
    if group_by == "file":
        return str(meta.get("run_id"))
    model, data = _text(meta.get("model")), _text(meta.get("dataset"))
    base = f"{model or '?'}/{data or '?'}" if (model or data) else "default"
    if group_by == "cell":
        return f"{base}/{meta.get('cell') or meta.get('run_id')}"
    return base


def _text(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else str(v)


def log_stem(path: str | Path) -> str:
    name = Path(path).name
    for suf in LOG_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def read_manifest(path: str | Path) -> dict[str, dict[str, Any]]:
    """``log stem -> attributes`` from a manifest CSV (see the module docs)."""
    p = Path(path)
    try:
        df = pd.read_csv(p)
    except FileNotFoundError:
        raise InputError(f"{p}: manifest not found") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a readable manifest CSV ({type(e).__name__}: {e})") from None
    if "file" not in df.columns:
        raise InputError(f"{p}: a manifest needs a 'file' column (the log's file name) and attribute columns")
    out = {}
    for row in df.to_dict("records"):
        attrs = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items() if k != "file"}
        out[log_stem(row["file"])] = attrs
    return out


def _log_files(p: Path) -> list[Path]:
    return sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(LOG_SUFFIXES))


def load_logs(paths: Iterable[str | Path], manifest: Mapping[str, Mapping[str, Any]] | None = None,
              group: str | None = None, group_by: str = "model-dataset", ce_epochs: int | None = None,
              skipped: list[str] | None = None) -> list[Trajectory]:
    """Reference-format logs (files, or folders: every ``*.csv``/``*.csv.gz`` that has the log
    columns; others, such as summary tables, are skipped and listed in ``skipped``). A file named
    explicitly that is not a log raises :class:`LogFormatError`. ``group`` puts every run in one group."""
    out: list[Trajectory] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_dir():
            for f in _log_files(p):
                try:
                    df = read_log(f)
                except LogFormatError as e:
                    if skipped is not None:
                        skipped.append(str(e))
                    continue
                out.append(_trajectory(f, df, manifest, group, group_by, ce_epochs))
        else:
            out.append(_trajectory(p, read_log(p), manifest, group, group_by, ce_epochs))
    ids = [t.run_id for t in out]
    dup = {i for i in ids if ids.count(i) > 1}
    for t in out:  # same file name in two folders: keep run ids unique
        if t.run_id in dup:
            t.run_id = t.source
    return out


def _trajectory(path: Path, df: pd.DataFrame, manifest, group, group_by, ce_epochs) -> Trajectory:
    stem = log_stem(path)
    meta: dict[str, Any] = {"run_id": stem, "file": path.name, **dict((manifest or {}).get(stem, {}))}
    ce = ce_epochs if ce_epochs is not None else (int(meta["ce_epochs"]) if finite(meta.get("ce_epochs")) else None)
    return Trajectory(stem, group or group_of(meta, group_by), frame_records(df, ce), meta, str(path))


def load_corpus(folder: str | Path, group_by: str = "model-dataset") -> list[Trajectory]:
    """ncstudy's trajectory corpus (``analysis/corpus``): ``manifest.csv`` + ``runs/*.csv.gz``."""
    d = Path(folder)
    manifest = read_manifest(d / "manifest.csv")
    return load_logs([d / "runs"], manifest, group_by=group_by)
