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
from ncstudy.records import num
from ncstudy.runs import Run, group_of, load_runs, log_files, numeric_log, read_run

# Run attributes the analysis knows how to group by, in display order.
ATTR_KEYS = ("model", "dataset", "depth", "width", "activation", "weight_decay", "lr", "seed",
             "intervention_alpha")
NUMERIC_ATTRS = {"depth", "width", "weight_decay", "lr", "seed", "intervention_alpha"}
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
# Flattened-config params (CONTRACTS.md) -> analysis attributes.
PARAM_MAP = {
    "model.name": "model", "data.name": "dataset", "model.depth": "depth", "model.width": "width",
    "model.activation": "activation", "optimizer.weight_decay": "weight_decay",
    "optimizer.lr": "lr", "seed": "seed", "intervention_alpha": "intervention_alpha",
}
MLP_ONLY = ("depth", "width", "activation")


def _convert(key: str, value: Any) -> Any:
    if value is None:
        return None
    s = str(value).strip()
    if s in ("", "None", "none", "null", "nan", "NaN"):
        return None
    if key in NUMERIC_ATTRS:
        try:
            x = float(s)
        except ValueError:
            return s
        return int(x) if key in ("depth", "width", "seed") and x.is_integer() else x
    return s


def load_mlflow(experiment: str, tracking_uri: str | None = None) -> tuple[list[Run], SourceInfo]:
    """The trial runs of a study (read through :class:`~ncstudy.adapters.mlflow.reader.StudyReader`)."""
    from ncstudy.adapters.mlflow.layout import FN_STAR_TAG, T_NC_TAG, THRESHOLD_TAG
    from ncstudy.adapters.mlflow.reader import StudyReader

    reader = StudyReader(tracking_uri)
    exp = reader.experiment(experiment)
    uri = reader.uri
    info = SourceInfo(kind="mlflow", location=f"{experiment} @ {uri}", experiment_id=exp.experiment_id,
                      tracking_uri=uri)
    parents = reader.study_runs(exp.experiment_id)
    info.parent_run_ids = [r.info.run_id for r in parents]
    if parents:
        info.parent_run_id = parents[0].info.run_id
        if len(parents) > 1:
            info.warnings.append(f"{len(parents)} study (parent) runs in the experiment; trials of all "
                                 f"of them are analysed, the report goes to the latest ({info.parent_run_id})")
    else:
        info.warnings.append("no study (parent) run in the experiment: report and figures are not logged "
                             "to MLflow")
    trials = reader.trials(exp.experiment_id)
    if not trials:
        raise InputError(f"experiment '{experiment}' at {uri} has no trial runs")
    runs = []
    for t in trials:
        params, tags = t.params, t.tags
        attrs: dict[str, Any] = {}
        for p, a in PARAM_MAP.items():
            if p in params:
                attrs[a] = _convert(a, params[p])
        attrs.setdefault("model", _convert("model", tags.get("model")))
        attrs.setdefault("dataset", _convert("dataset", tags.get("dataset")))
        if attrs.get("model") not in (None, "mlp"):
            for k in MLP_ONLY:  # MLP-only fields of the flattened config mean nothing here
                attrs[k] = None
        info.warnings.extend(t.warnings)
        traj = None if t.trajectory is None else numeric_log(t.trajectory, f"mlflow:{t.run_id}")
        given = None
        if traj is None:
            tn = num(tags.get(T_NC_TAG))
            given = {"t_nc": tn, "fn_star": num(tags.get(FN_STAR_TAG)), "test_acc": t.metrics.get("test"),
                     "threshold": tags.get(THRESHOLD_TAG) if tn is not None else None}
        p2 = params.get("eval.onset_phase2_only")
        runs.append(Run(
            t.run_id, group_of(attrs, run_id=t.run_id), attrs=attrs, source=f"mlflow:{t.run_id}", frame=traj,
            origin=t.origin,
            phase2_only=None if p2 is None else str(p2).lower() == "true", given=given, name=t.name,
            tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")}))
    return runs, info


# Moved to ncstudy.runs (issue 26): read from here, with a warning.
__getattr__ = moved_names(__name__, {"attrs_from_filename": "ncstudy.runs"})
