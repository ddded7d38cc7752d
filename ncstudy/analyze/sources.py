"""Where the runs of an analysis come from.

Two sources give the same :class:`RunInput` records:

* a folder of reference-format CSVs (``../shared/reference/README.md``), either generic (one run
  per file, attributes parsed from the file name) or through a preset that maps the files of a
  known folder to models, datasets, sweeps and threshold rules (:mod:`ncstudy.analyze.presets`);
* an MLflow experiment written by a study (``docs/CONTRACTS.md``): one child run per trial with
  params, metrics at ``step=epoch`` and a ``trajectory.csv`` artifact, under a parent run tagged
  ``ncstudy.role=study``.

Every failure to find what an analysis needs raises :class:`~ncstudy.errors.InputError` with a
message that names the missing thing; the CLI turns it into exit status 2.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ncstudy.errors import InputError, LogFormatError
from ncstudy.logs import REFERENCE_COLUMNS, REQUIRED_COLUMNS, read_log
from ncstudy.records import num

# Run attributes the analysis knows how to group by, in display order.
ATTR_KEYS = ("model", "dataset", "depth", "width", "activation", "weight_decay", "lr", "seed",
             "intervention_alpha")
NUMERIC_ATTRS = {"depth", "width", "weight_decay", "lr", "seed", "intervention_alpha"}
THRESHOLD_RULES = ("strict", "relaxed", "relaxed-fallback")


@dataclass
class RunInput:
    """One run to analyse: its attributes and either a trajectory or tabulated onset values."""

    run_id: str
    source: str  # file path, "<table>.csv row ...", or "mlflow:<run id>"
    attrs: dict[str, Any]
    trajectory: pd.DataFrame | None = None
    origin: str = "log"  # log | table | mlflow-artifact | mlflow-metrics | mlflow-tags
    cell: str | None = None  # unit of the relaxed fallback ("cells that never reach 0.01 ...")
    rule: str | None = None  # strict | relaxed | relaxed-fallback; None = the analysis default
    phase2_only: bool | None = None  # None = the analysis default
    given: dict[str, Any] | None = None  # t_nc, fn_star, test_acc, threshold (no trajectory)
    experiments: tuple[str, ...] = ()
    note: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    name: str | None = None  # display name (MLflow run name); default run_id


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
def _numeric_log(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Coerce the metric columns to numbers; a log without usable epochs is an input error."""
    if df.empty:
        raise InputError(f"{path}: no rows (a log needs one row per evaluation)")
    df = df.copy()
    for c in df.columns:
        if c in REFERENCE_COLUMNS or df[c].dtype == object:
            converted = pd.to_numeric(df[c], errors="coerce")
            if c in REFERENCE_COLUMNS or converted.notna().sum() == df[c].notna().sum():
                df[c] = converted
    if df["epoch"].isna().any():
        raise InputError(f"{path}: column epoch has missing or non-numeric values")
    return df.sort_values("epoch").reset_index(drop=True)


def read_run_log(path: Path, phase1_epochs: int | None = None) -> pd.DataFrame:
    try:
        df = read_log(path, REQUIRED_COLUMNS, phase1_epochs=phase1_epochs)
    except LogFormatError as e:
        raise InputError(str(e)) from None
    return _numeric_log(df, path)


_TOKEN_RULES = [
    (re.compile(r"^s(\d+)$"), "seed", int),
    (re.compile(r"^seed(\d+)$"), "seed", int),
    (re.compile(r"^depth(\d+)$"), "depth", int),
    (re.compile(r"^width(\d+)$"), "width", int),
    (re.compile(r"^wd([0-9.ep+-]+)$"), "weight_decay", lambda s: float(s.replace("p", "."))),
    (re.compile(r"^lr([0-9.ep+-]+)$"), "lr", lambda s: float(s.replace("p", "."))),
    (re.compile(r"^alpha([0-9.p]+)$"), "intervention_alpha", lambda s: float(s.replace("p", "."))),
    (re.compile(r"^act([A-Za-z_]+)$"), "activation", str.lower),
]


def attrs_from_filename(stem: str) -> dict[str, Any]:
    """Attributes a file name spells out: ``width128_s0`` -> width 128, seed 0, group ``width128``.

    Tokens are separated by ``_``: ``s<N>``/``seed<N>``, ``depth<N>``, ``width<N>``, ``wd<x>``,
    ``lr<x>``, ``alpha<x>`` (``p`` may stand for the decimal point: ``wd0p0005``) and
    ``act<Name>``. ``group`` is the name without its seed token.
    """
    attrs: dict[str, Any] = {}
    rest = []
    for tok in stem.split("_"):
        is_seed = False
        for rx, key, conv in _TOKEN_RULES:
            m = rx.match(tok)
            if m:
                try:
                    attrs[key] = conv(m.group(1))
                except ValueError:
                    continue
                is_seed = key == "seed"
                break
        if not is_seed:
            rest.append(tok)
    attrs["group"] = "_".join(rest) or stem
    return attrs


def log_folder(folder: str | Path) -> tuple[Path, list[Path]]:
    """The folder and its CSV logs; :class:`InputError` when it is not there or holds none."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"{d}: no such folder (--logs needs a folder of reference-format CSVs)")
    csvs = sorted(p for p in d.glob("*.csv") if p.is_file())
    if not csvs:
        raise InputError(f"{d}: empty, no *.csv log files found (--logs needs a folder of "
                         f"reference-format CSVs with columns {', '.join(REQUIRED_COLUMNS)})")
    return d, csvs


def load_log_folder(folder: str | Path, phase1_epochs: int | None = None) -> tuple[list[RunInput], SourceInfo]:
    """A generic folder: one run per CSV, attributes from the file name (:func:`attrs_from_filename`)."""
    d, csvs = log_folder(folder)
    runs, errors = [], []
    for p in csvs:
        try:
            traj = read_run_log(p, phase1_epochs)
        except InputError as e:
            errors.append(str(e))
            continue
        runs.append(RunInput(run_id=p.stem, source=str(p), attrs=attrs_from_filename(p.stem),
                             trajectory=traj, origin="log"))
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


def load_mlflow(experiment: str, tracking_uri: str | None = None) -> tuple[list[RunInput], SourceInfo]:
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
        traj = None if t.trajectory is None else _numeric_log(t.trajectory, Path(f"mlflow:{t.run_id}"))
        given = None
        if traj is None:
            tn = num(tags.get(T_NC_TAG))
            given = {"t_nc": tn, "fn_star": num(tags.get(FN_STAR_TAG)), "test_acc": t.metrics.get("test"),
                     "threshold": tags.get(THRESHOLD_TAG) if tn is not None else None}
        p2 = params.get("eval.onset_phase2_only")
        runs.append(RunInput(
            run_id=t.run_id, source=f"mlflow:{t.run_id}", attrs=attrs, trajectory=traj, origin=t.origin,
            phase2_only=None if p2 is None else str(p2).lower() == "true", given=given, name=t.name,
            tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")}))
    return runs, info
