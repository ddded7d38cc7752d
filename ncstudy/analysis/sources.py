"""Where the runs of an analysis come from.

Two sources give the same :class:`RunInput` records:

* a folder of reference-format CSVs (``../shared/reference/README.md``), either generic (one run
  per file, attributes parsed from the file name) or through a preset that maps the files of a
  known folder to models, datasets, sweeps and threshold rules (:mod:`ncstudy.analysis.presets`);
* an MLflow experiment written by a study (``docs/CONTRACTS.md``): one child run per trial with
  params, metrics at ``step=epoch`` and a ``trajectory.csv`` artifact, under a parent run tagged
  ``ncstudy.role=study``.

Every failure to find what an analysis needs raises :class:`AnalysisInputError` with a message that
names the missing thing; the CLI turns it into exit status 2.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ncstudy.logs import REFERENCE_COLUMNS, REQUIRED_COLUMNS, LogFormatError, read_log

if TYPE_CHECKING:  # pragma: no cover
    from ncstudy.analysis.presets import Preset

# Run attributes the analysis knows how to group by, in display order.
ATTR_KEYS = ("model", "dataset", "depth", "width", "activation", "weight_decay", "lr", "seed",
             "intervention_alpha")
NUMERIC_ATTRS = {"depth", "width", "weight_decay", "lr", "seed", "intervention_alpha"}
THRESHOLD_RULES = ("strict", "relaxed", "relaxed-fallback")


class AnalysisInputError(ValueError):
    """Input an analysis cannot use; the message names what is missing (CLI exit status 2)."""


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
        raise AnalysisInputError(f"{path}: no rows (a log needs one row per evaluation)")
    df = df.copy()
    for c in df.columns:
        if c in REFERENCE_COLUMNS or df[c].dtype == object:
            converted = pd.to_numeric(df[c], errors="coerce")
            if c in REFERENCE_COLUMNS or converted.notna().sum() == df[c].notna().sum():
                df[c] = converted
    if df["epoch"].isna().any():
        raise AnalysisInputError(f"{path}: column epoch has missing or non-numeric values")
    return df.sort_values("epoch").reset_index(drop=True)


def read_run_log(path: Path, phase1_epochs: int | None = None) -> pd.DataFrame:
    try:
        df = read_log(path, REQUIRED_COLUMNS, phase1_epochs=phase1_epochs)
    except LogFormatError as e:
        raise AnalysisInputError(str(e)) from None
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


def load_log_folder(folder: str | Path, preset: "Preset | None" = None,
                    phase1_epochs: int | None = None) -> tuple[list[RunInput], SourceInfo]:
    d = Path(folder)
    if not d.is_dir():
        raise AnalysisInputError(f"{d}: no such folder (--logs needs a folder of reference-format CSVs)")
    csvs = sorted(p for p in d.glob("*.csv") if p.is_file())
    if not csvs:
        raise AnalysisInputError(f"{d}: empty, no *.csv log files found (--logs needs a folder of "
                                 f"reference-format CSVs with columns {', '.join(REQUIRED_COLUMNS)})")
    if preset is not None:
        return preset.load(d)
    runs, errors = [], []
    for p in csvs:
        try:
            traj = read_run_log(p, phase1_epochs)
        except AnalysisInputError as e:
            errors.append(str(e))
            continue
        runs.append(RunInput(run_id=p.stem, source=str(p), attrs=attrs_from_filename(p.stem),
                             trajectory=traj, origin="log"))
    if errors:
        raise AnalysisInputError(
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


def _tag_float(v: str | None) -> float | None:
    try:
        x = float(v) if v not in (None, "") else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def _search_all(client, experiment_id: str, filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def _history_frame(client, run) -> pd.DataFrame | None:
    keys = [k for k in REFERENCE_COLUMNS[1:] if k in run.data.metrics]
    if "nc1" not in keys or "feat_norm" not in keys:
        return None
    by_step: dict[int, dict[str, float]] = {}
    for k in keys:
        for m in client.get_metric_history(run.info.run_id, k):
            by_step.setdefault(int(m.step), {"epoch": int(m.step)})[k] = m.value
    if not by_step:
        return None
    df = pd.DataFrame([by_step[s] for s in sorted(by_step)])
    for c in REFERENCE_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    return df[REFERENCE_COLUMNS]


@contextlib.contextmanager
def _quiet_downloads():
    """No per-file progress bars while we fetch artifacts; an unreachable server fails in seconds."""
    settings = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    for k, v in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
        if k not in os.environ:  # the user's own settings win
            settings[k] = v
    old = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_mlflow(experiment: str, tracking_uri: str | None = None) -> tuple[list[RunInput], SourceInfo]:
    with _quiet_downloads():
        return _load_mlflow(experiment, tracking_uri)


def _load_mlflow(experiment: str, tracking_uri: str | None = None) -> tuple[list[RunInput], SourceInfo]:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
    except MlflowException as e:
        raise AnalysisInputError(f"cannot read MLflow tracking URI {uri}: {e.message}") from None
    except Exception as e:  # noqa: BLE001 - unreachable server, unusable database path, ...
        raise AnalysisInputError(f"cannot read MLflow tracking URI {uri}: {type(e).__name__}: {e}") from None
    if exp is None:
        try:
            names = sorted(e.name for e in client.search_experiments())
        except Exception:  # noqa: BLE001 - the listing is only a hint
            names = []
        listing = f"; experiments there: {', '.join(names)}" if names else ""
        raise AnalysisInputError(f"unknown experiment '{experiment}' at tracking URI {uri}{listing}")
    info = SourceInfo(kind="mlflow", location=f"{experiment} @ {uri}", experiment_id=exp.experiment_id,
                      tracking_uri=uri)
    parents = _search_all(client, exp.experiment_id, "tags.`ncstudy.role` = 'study'")
    parents.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    info.parent_run_ids = [r.info.run_id for r in parents]
    if parents:
        info.parent_run_id = parents[0].info.run_id
        if len(parents) > 1:
            info.warnings.append(f"{len(parents)} study (parent) runs in the experiment; trials of all "
                                 f"of them are analysed, the report goes to the latest ({info.parent_run_id})")
    else:
        info.warnings.append("no parent run tagged ncstudy.role=study: report and figures are not logged "
                             "to MLflow")
    children = _search_all(client, exp.experiment_id, "tags.`ncstudy.role` = 'trial'")
    if not children:
        children = [r for r in _search_all(client, exp.experiment_id, "")
                    if "mlflow.parentRunId" in r.data.tags and r.data.tags.get("ncstudy.role") != "study"]
    if not children:
        raise AnalysisInputError(f"experiment '{experiment}' at {uri} has no trial runs "
                                 f"(child runs tagged ncstudy.role=trial)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="ncstudy-analyze-") as tmp:
        for r in sorted(children, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
            rid = r.info.run_id
            params, tags = r.data.params, r.data.tags
            attrs: dict[str, Any] = {}
            for p, a in PARAM_MAP.items():
                if p in params:
                    attrs[a] = _convert(a, params[p])
            attrs.setdefault("model", _convert("model", tags.get("model")))
            attrs.setdefault("dataset", _convert("dataset", tags.get("dataset")))
            if attrs.get("model") not in (None, "mlp"):
                for k in MLP_ONLY:  # MLP-only fields of the flattened config mean nothing here
                    attrs[k] = None
            traj, origin = None, "mlflow-tags"
            try:
                names = {a.path for a in client.list_artifacts(rid)}
            except Exception:  # noqa: BLE001 - fall back to metric histories
                names = set()
            if "trajectory.csv" in names:
                local = client.download_artifacts(rid, "trajectory.csv", str(Path(tmp) / rid))
                try:
                    traj, origin = read_run_log(Path(local)), "mlflow-artifact"
                except AnalysisInputError as e:
                    info.warnings.append(f"run {rid}: trajectory.csv unusable ({e}); using metric histories")
            if traj is None:
                traj = _history_frame(client, r)
                origin = "mlflow-metrics" if traj is not None else "mlflow-tags"
            given = None
            if traj is None:
                t = _tag_float(tags.get("t_nc"))
                given = {"t_nc": t, "fn_star": _tag_float(tags.get("fn_star")),
                         "test_acc": r.data.metrics.get("test"),
                         "threshold": tags.get("threshold") if t is not None else None}
            p2 = params.get("eval.onset_phase2_only")
            runs.append(RunInput(
                run_id=rid, source=f"mlflow:{rid}", attrs=attrs, trajectory=traj, origin=origin,
                phase2_only=None if p2 is None else str(p2).lower() == "true", given=given,
                name=r.info.run_name or rid[:8],
                tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")}))
    return runs, info
