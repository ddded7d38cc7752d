"""Where the runs of an analysis come from.

Two sources give the same :class:`ncstudy.runs.Run` records:

* a folder of reference-format CSVs (``../shared/reference/README.md``), either generic (one run
  per file, attributes parsed from the file name; read by :func:`ncstudy.runs.load_runs`) or
  through a preset that maps the files of a known folder to models, datasets, sweeps and threshold
  rules (:mod:`ncstudy.analyze.presets`);
* an MLflow experiment written by a study (``docs/CONTRACTS.md``): one child run per trial with
  params, metrics at ``step=epoch`` and a ``trajectory.csv`` artifact, under a parent run tagged
  ``ncstudy.role=study``.

Every failure to find what an analysis needs raises :class:`~ncstudy.errors.InputError` with a
message that names the missing thing; the CLI turns it into exit status 2.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ncstudy.deprecation import moved_names, warn_renamed
from ncstudy.errors import InputError
from ncstudy.logs import REQUIRED_COLUMNS
from ncstudy.runs import ATTR_KEYS as _ATTR_KEYS
from ncstudy.runs import Run, group_of, load_runs, log_files, read_run

THRESHOLD_RULES = ("strict", "relaxed", "relaxed-fallback")


class RunInput(Run):
    """Deprecated name of :class:`ncstudy.runs.Run` (constructing it warns): ``trajectory`` is now
    ``frame``, and the group is derived from the attributes."""

    def __init__(self, run_id: str, source: str, attrs: Mapping[str, Any], trajectory: pd.DataFrame | None = None,
                 origin: str = "log", cell: str | None = None, rule: str | None = None,
                 phase2_only: bool | None = None, given: Mapping[str, Any] | None = None,
                 experiments: tuple[str, ...] = (), note: str = "", tags: Mapping[str, str] | None = None,
                 name: str | None = None) -> None:
        warn_renamed("RunInput", "ncstudy.runs.Run")
        super().__init__(run_id, group_of(attrs, run_id=run_id), attrs=attrs, source=source, frame=trajectory,
                         origin=origin, cell=cell, rule=rule, phase2_only=phase2_only, given=given,
                         experiments=experiments, note=note, tags=tags, name=name)


@dataclass
class SourceInfo:
    kind: str  # "logs" | "mlflow"
    location: str  # folder, or "<experiment> @ <tracking uri>"
    preset: str | None = None
    ignored_files: list[str] = field(default_factory=list)
    experiment_id: str | None = None
    tracking_uri: str | None = None
    parent_run_id: str | None = None
    parent_run_ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reference-format logs
# ---------------------------------------------------------------------------------------------
def read_run_log(path: Path, phase1_epochs: int | None = None) -> pd.DataFrame:
    """Deprecated: :func:`ncstudy.runs.read_run` (its ``frame``)."""
    warn_renamed("ncstudy.analyze.sources.read_run_log", "ncstudy.runs.read_run")
    return read_run(path, ce_epochs=phase1_epochs).frame


def log_folder(folder: str | Path) -> tuple[Path, list[Path]]:
    """The folder and its CSV logs; :class:`InputError` when it is not there or holds none."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"{d}: no such folder (--logs needs a folder of reference-format CSVs)")
    csvs = log_files(d)
    if not csvs:
        raise InputError(f"{d}: empty, no *.csv log files found (--logs needs a folder of "
                         f"reference-format CSVs with columns {', '.join(REQUIRED_COLUMNS)})")
    return d, csvs


def load_log_folder(folder: str | Path, phase1_epochs: int | None = None) -> tuple[list[Run], SourceInfo]:
    """A generic folder: one run per CSV (:func:`ncstudy.runs.load_runs`), attributes from the file
    name (:func:`ncstudy.runs.attrs_from_filename`); every file must be a log."""
    d, _ = log_folder(folder)
    errors: list[str] = []
    runs = load_runs(d, ce_epochs=phase1_epochs, skipped=errors)
    if errors:
        raise InputError(
            "cannot use these files as run logs:\n  " + "\n  ".join(errors) +
            "\n(remove them from the folder, or use a --preset that knows the folder's layout)")
    return runs, SourceInfo(kind="logs", location=str(d))


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------
def load_mlflow(experiment: str, tracking_uri: str | None = None) -> tuple[list[Run], SourceInfo]:
    """The trial runs of a study (:func:`ncstudy.adapters.mlflow.reader.read_study`, the reading
    replay and the priors share), those without a trajectory with their tabulated onsets; the
    analysis describes a run by :data:`ncstudy.runs.ATTR_KEYS`."""
    from ncstudy.adapters.mlflow.reader import read_study

    study = read_study(experiment, tracking_uri)
    uri = study.tracking_uri
    info = SourceInfo(kind="mlflow", location=f"{experiment} @ {uri}", experiment_id=study.experiment_id,
                      tracking_uri=uri, parent_run_ids=study.parent_run_ids)
    if study.parent_run_ids:
        info.parent_run_id = study.parent_run_ids[0]
        if len(study.parent_run_ids) > 1:
            info.warnings.append(f"{len(study.parent_run_ids)} study (parent) runs in the experiment; trials of "
                                 f"all of them are analysed, the report goes to the latest ({info.parent_run_id})")
    else:
        info.warnings.append("no study (parent) run in the experiment: report and figures are not logged "
                             "to MLflow")
    if not study.runs:
        raise InputError(f"experiment '{experiment}' at {uri} has no trial runs")
    info.warnings.extend(study.warnings)
    for r in study.runs:
        r.attrs = {k: v for k, v in r.attrs.items() if k in _ATTR_KEYS}
    return study.runs, info


# Moved to ncstudy.runs (issue 26): read from here, with a warning.
__getattr__ = moved_names(__name__, {name: "ncstudy.runs" for name in (
    "attrs_from_filename", "ATTR_KEYS", "NUMERIC_ATTRS", "PARAM_MAP", "MLP_ONLY")})
