"""Deprecated (issue 26): logged runs are :class:`ncstudy.runs.Run`, loaded by :func:`ncstudy.runs.load_runs`.

``Trajectory`` and ``load_logs`` still work, with a :class:`DeprecationWarning` naming their
replacements; the helpers that moved (``read_manifest``, ``load_corpus``, ``group_of``,
``frame_records``, ``log_stem``, ``GROUP_BY``, ``LOG_SUFFIXES``) are found in :mod:`ncstudy.runs`,
with a warning, when read from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from ncstudy.deprecation import moved_names, warn_renamed
from ncstudy.runs import Run, load_runs


class Trajectory(Run):
    """Deprecated name of :class:`ncstudy.runs.Run` (constructing it warns): ``meta`` is now ``attrs``."""

    def __init__(self, run_id: str, group: str, records: Iterable[Mapping[str, Any]],
                 meta: Mapping[str, Any] | None = None, source: str = "") -> None:
        warn_renamed("Trajectory", "ncstudy.runs.Run")
        super().__init__(run_id, group, records, meta, source)


def load_logs(paths: Iterable[str | Path], manifest: Mapping[str, Mapping[str, Any]] | None = None,
              group: str | None = None, group_by: str = "model-dataset", ce_epochs: int | None = None,
              skipped: list[str] | None = None) -> list[Run]:
    """Deprecated: :func:`ncstudy.runs.load_runs` (the same arguments; ``group`` and later by keyword)."""
    warn_renamed("ncstudy.forecast.trajectories.load_logs", "ncstudy.runs.load_runs")
    return load_runs(paths, manifest, group=group, group_by=group_by, ce_epochs=ce_epochs, skipped=skipped)


__getattr__ = moved_names(__name__, {name: "ncstudy.runs" for name in (
    "GROUP_BY", "LOG_SUFFIXES", "frame_records", "group_of", "load_corpus", "log_stem", "read_manifest")})
