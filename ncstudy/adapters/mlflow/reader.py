"""The one reader of studies in MLflow: experiments, study runs, trial runs and their trajectories.

``ncstudy analyze``, ``ncstudy replay``, the scheduler's priors from a previous study and the
tracking callback's resync all read through it, so retries, timeouts and tag names live here once.
Reading never creates anything: a ``sqlite:///`` path that does not exist is an
:class:`~ncstudy.errors.InputError`, not a new empty store.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ncstudy.errors import InputError, LogFormatError, TrackingUnavailable
from ncstudy.logs import infer_phase
from ncstudy.records import EPOCH, PHASE, REFERENCE_COLUMNS, num
from ncstudy.runs import Run, attrs_from_params, group_of, numeric_log

from .layout import (
    DATASET_TAG,
    FN_STAR_TAG,
    HISTORY_KEYS,
    MODEL_TAG,
    PARENT_TAG,
    ROLE_STUDY,
    ROLE_TAG,
    STEP_KEY,
    T_NC_TAG,
    THRESHOLD_TAG,
    TRAJECTORY_CSV,
    TRIAL_TAG,
    VIEW_TAG,
    study_filter,
    trial_filter,
)

# MLflow's HTTP client retries a refused connection for minutes (7 retries, exponential backoff) and
# waits up to 120 s for an answer. ncstudy retries on its own where it must (the writer queues and
# backs off), so every request fails fast -- unless the user set these variables.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
SCHEMES = ("sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql")
PROBE_TIMEOUT_S = 5.0  # one health check of a tracking server before a command relies on it


def default_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other schemes or in-memory stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):]
    return None if rest in ("", ":memory:") else Path(rest)


def check_uri(uri: str) -> None:
    """A tracking URI ncstudy can use: a known scheme (MLflow 3 refuses plain ``./mlruns`` folders)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme not in SCHEMES:
        raise InputError(f"tracking URI {uri!r}: use sqlite:///PATH (local) or http://HOST:PORT (an MLflow "
                         f"server); MLflow 3 refuses plain folders such as ./mlruns")


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe_server(uri: str) -> None:
    """One health check of the MLflow server at ``uri`` (:data:`PROBE_TIMEOUT_S`); a server that
    does not answer, or answers with an error, raises :class:`TrackingUnavailable` (exit status 3)."""
    import requests

    try:
        r = requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S)
    except requests.exceptions.RequestException as e:
        raise TrackingUnavailable(f"MLflow server at {uri} does not answer ({type(e).__name__}); start it "
                                  f"(`mlflow server --host ... --port ...`) or check --tracking-uri") from None
    if r.status_code >= 500:
        raise TrackingUnavailable(f"MLflow server at {uri} answered {r.status_code} to a health check")


def connect(uri: str | None = None, *, must_exist: bool = True, probe: bool = False):
    """An ``MlflowClient`` with fail-fast HTTP settings. ``must_exist``: a SQLite store that is not
    there is an :class:`InputError` (readers never create one). ``probe``: a tracking server is
    health-checked first (:func:`probe_server`: exit status 3 within seconds when it is down)."""
    from mlflow.tracking import MlflowClient

    uri = uri or default_uri()
    check_uri(uri)
    db = sqlite_path(uri)
    if must_exist and db is not None and not db.is_file():
        raise InputError(f"no MLflow store at {db} (tracking URI {uri}); run a study first, or pass "
                         f"--tracking-uri with the store it used")
    if probe and is_server(uri):
        probe_server(uri)
    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)
    return MlflowClient(tracking_uri=uri)


@dataclass
class TrialRun:
    """One trial run of a study as MLflow holds it."""

    run_id: str
    name: str
    trial_id: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    status: str
    start_time: int
    trajectory: pd.DataFrame | None = None  # reference-log columns first, then the extras logged
    origin: str = "mlflow-tags"  # mlflow-artifact | mlflow-metrics | mlflow-tags (no trajectory)
    warnings: list[str] = field(default_factory=list)


class StudyReader:
    """Reads one tracking store. ``client`` lets a writer share its own connection; without one, a
    tracking server is health-checked first (:class:`TrackingUnavailable` when it does not answer)."""

    def __init__(self, uri: str | None = None, client: Any = None, must_exist: bool = True) -> None:
        self.uri = uri or default_uri()
        self.client = client if client is not None else connect(self.uri, must_exist=must_exist, probe=True)

    # -- experiments and runs ------------------------------------------------------------------
    def experiment(self, name: str):
        """The experiment of study ``name``; :class:`InputError` naming the ones there when missing."""
        from mlflow.exceptions import MlflowException

        try:
            exp = self.client.get_experiment_by_name(name)
        except MlflowException as e:
            if is_server(self.uri) and "API request" in e.message:  # MLflow's words for a failed request
                raise TrackingUnavailable(f"MLflow server at {self.uri} did not answer: {e.message}") from None
            raise InputError(f"cannot read MLflow tracking URI {self.uri}: {e.message}") from None
        except OSError as e:  # requests' connection errors are OSErrors
            if is_server(self.uri):
                raise TrackingUnavailable(f"MLflow server at {self.uri} did not answer: {type(e).__name__}") from None
            raise InputError(f"cannot read MLflow tracking URI {self.uri}: {type(e).__name__}: {e}") from None
        except Exception as e:  # noqa: BLE001 - unusable database path, ...
            raise InputError(f"cannot read MLflow tracking URI {self.uri}: {type(e).__name__}: {e}") from None
        if exp is None or getattr(exp, "lifecycle_stage", "active") != "active":
            try:
                names = sorted(e.name for e in self.client.search_experiments())
            except Exception:  # noqa: BLE001 - the listing is only a hint
                names = []
            listing = f"; experiments there: {', '.join(names)}" if names else ""
            what = "deleted" if exp is not None else "unknown"
            raise InputError(f"{what} experiment '{name}' at tracking URI {self.uri}{listing}")
        return exp

    def search(self, experiment_id: str, filter_string: str = "") -> list:
        out, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            out.extend(page)
            token = getattr(page, "token", None)
            if not token:
                return out

    def study_runs(self, experiment_id: str) -> list:
        """Study (parent) runs, the latest first."""
        runs = self.search(experiment_id, study_filter())
        return sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)

    def studies(self) -> list[tuple[str, str, bool]]:
        """``(study name, experiment id, has ncstudy's shared UI view)`` of every experiment holding
        a study run, the one whose latest study run started last first."""
        exps = {e.experiment_id: e for e in self.client.search_experiments()}
        if not exps:
            return []
        runs = self.client.search_runs(list(exps), filter_string=study_filter(),
                                       order_by=["attributes.start_time DESC"], max_results=1000)
        out: list[tuple[str, str, bool]] = []
        for r in runs:
            e = exps.get(r.info.experiment_id)
            if e is not None and all(e.experiment_id != x[1] for x in out):
                out.append((e.name, e.experiment_id, VIEW_TAG in (e.tags or {})))
        return out

    def trial_runs(self, experiment_id: str) -> list:
        """Trial runs in start order; runs nested under a parent without ncstudy's role tag count too."""
        runs = self.search(experiment_id, trial_filter())
        if not runs:
            runs = [r for r in self.search(experiment_id)
                    if PARENT_TAG in r.data.tags and r.data.tags.get(ROLE_TAG) != ROLE_STUDY]
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def find_trial_run(self, experiment_id: str, parent_run_id: str, trial_id: str):
        runs = self.client.search_runs(
            [experiment_id], max_results=1,
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{parent_run_id}'")
        return runs[0] if runs else None

    # -- histories -----------------------------------------------------------------------------
    def history(self, run_id: str, keys: Iterable[str] = HISTORY_KEYS) -> list[dict[str, Any]]:
        """A run's evaluations rebuilt from its metric histories (one row per step = epoch)."""
        by_step: dict[int, dict[str, Any]] = {}
        for k in keys:
            for m in self.client.get_metric_history(run_id, k):
                by_step.setdefault(int(m.step), {EPOCH: int(m.step)})[k] = m.value
        return [by_step[s] for s in sorted(by_step)]

    def last_step(self, run_id: str) -> int:
        """Last evaluation written (every evaluation logs :data:`STEP_KEY`), -1 for none."""
        return max((int(m.step) for m in self.client.get_metric_history(run_id, STEP_KEY)), default=-1)

    def trajectory(self, run, tmp: str | Path) -> tuple[pd.DataFrame | None, str, list[str]]:
        """``(frame, origin, warnings)``: the ``trajectory.csv`` artifact when it is there and
        readable, else the metric histories (when they hold nc1 and fn), else None."""
        from ncstudy.logs import read_log

        warnings: list[str] = []
        rid = run.info.run_id
        try:
            names = {a.path for a in self.client.list_artifacts(rid)}
        except Exception:  # noqa: BLE001 - fall back to metric histories
            names = set()
        if TRAJECTORY_CSV in names:
            local = self.client.download_artifacts(rid, TRAJECTORY_CSV, str(Path(tmp) / rid))
            try:
                return read_log(local), "mlflow-artifact", warnings
            except LogFormatError as e:
                warnings.append(f"run {rid}: {TRAJECTORY_CSV} unusable ({e}); using metric histories")
        if "nc1" in run.data.metrics and "feat_norm" in run.data.metrics:
            rows = self.history(rid)
            if rows:
                df = pd.DataFrame(rows)
                for c in REFERENCE_COLUMNS:
                    if c not in df.columns:
                        df[c] = float("nan")
                return df[REFERENCE_COLUMNS + [c for c in df.columns if c not in REFERENCE_COLUMNS]], \
                    "mlflow-metrics", warnings
        return None, "mlflow-tags", warnings

    def trials(self, experiment_id: str, with_trajectories: bool = True) -> list[TrialRun]:
        """Every trial run of an experiment, with its trajectory when ``with_trajectories``."""
        out = []
        with _quiet_downloads(), tempfile.TemporaryDirectory(prefix="ncstudy-read-") as tmp:
            for r in self.trial_runs(experiment_id):
                traj, origin, warns = self.trajectory(r, tmp) if with_trajectories else (None, "mlflow-tags", [])
                out.append(TrialRun(
                    run_id=r.info.run_id, name=r.info.run_name or r.info.run_id[:8],
                    trial_id=r.data.tags.get(TRIAL_TAG) or r.info.run_name or r.info.run_id,
                    params=dict(r.data.params), tags=dict(r.data.tags), metrics=dict(r.data.metrics),
                    status=r.info.status, start_time=r.info.start_time or 0, trajectory=traj, origin=origin,
                    warnings=warns))
        return out


class _quiet_downloads:
    """No per-file progress bars while trajectories are fetched."""

    KEY = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"

    def __enter__(self) -> None:
        self.old = os.environ.get(self.KEY)
        os.environ[self.KEY] = "false"

    def __exit__(self, *exc: object) -> None:
        if self.old is None:
            os.environ.pop(self.KEY, None)
        else:
            os.environ[self.KEY] = self.old


@dataclass
class StudyRuns:
    """A study's trial runs as :class:`~ncstudy.runs.Run` (:func:`read_study`), with where they came from."""

    experiment: str
    experiment_id: str
    tracking_uri: str
    runs: list[Run]  # every trial run, in start order; those without a trajectory have ``given`` onsets
    parent_run_ids: list[str] = field(default_factory=list)  # study (parent) runs, the latest first
    warnings: list[str] = field(default_factory=list)  # trajectories that could not be read as logged

    @property
    def with_logs(self) -> list[Run]:
        """The runs with a trajectory (what replay and the priors take)."""
        return [r for r in self.runs if r.has_log]


def trial_run(t: TrialRun, ce_epochs: int | None = None) -> Run:
    """One trial run as a :class:`~ncstudy.runs.Run`: the one reading of a study's trials.

    * ``run_id`` = the MLflow run id (``source`` = ``mlflow:<run id>``), ``name`` = the run name;
    * ``attrs`` = :func:`ncstudy.runs.attrs_from_params` of the params (``model``, ``dataset``,
      ``depth``, ``width``, ``activation``, ``weight_decay``, ``lr``, ``seed``, ``intervention_alpha``,
      ``ce_epochs``, ``mse_epochs``, ``budget``, the other params by their dotted names), ``model``
      and ``dataset`` from the tags when the params lack them, plus ``trial_id``;
    * ``group`` by :func:`ncstudy.runs.group_of`; ``frame`` the trajectory (numbers, in epoch order;
      phases from ``ce_epochs``, default the param, when it has no ``phase`` column);
    * without a trajectory, ``given`` = the ``t_nc``/``fn_star``/``threshold`` tags and the last
      ``test`` metric; ``phase2_only`` from the param ``eval.onset_phase2_only``; ``tags`` without
      MLflow's own (``mlflow.*``).
    """
    attrs = attrs_from_params(t.params, {"model": t.tags.get(MODEL_TAG), "dataset": t.tags.get(DATASET_TAG)})
    attrs["trial_id"] = t.trial_id
    source = f"mlflow:{t.run_id}"
    frame, given = None, None
    if t.trajectory is not None:
        frame = numeric_log(t.trajectory, source)
        ce = ce_epochs if ce_epochs is not None else attrs.get("ce_epochs")
        if PHASE not in frame.columns and isinstance(ce, int):
            frame = infer_phase(frame, ce)
    else:
        tn = num(t.tags.get(T_NC_TAG))
        given = {"t_nc": tn, "fn_star": num(t.tags.get(FN_STAR_TAG)), "test_acc": t.metrics.get("test"),
                 "threshold": t.tags.get(THRESHOLD_TAG) if tn is not None else None}
    p2 = t.params.get("eval.onset_phase2_only")
    return Run(t.run_id, group_of(attrs, run_id=t.run_id), attrs=attrs, source=source, frame=frame, name=t.name,
               origin=t.origin, phase2_only=None if p2 is None else str(p2).lower() == "true", given=given,
               tags={k: v for k, v in t.tags.items() if not k.startswith("mlflow.")})


def read_study(experiment: str, tracking_uri: str | None = None, ce_epochs: int | None = None) -> StudyRuns:
    """Every trial run of study ``experiment`` as a :class:`~ncstudy.runs.Run` (:func:`trial_run`):
    what ``ncstudy analyze --experiment``, ``ncstudy replay --experiment`` and a study's priors from
    a previous experiment (``fnstar.prior_experiment``) read. :class:`InputError` for an unknown
    experiment; no trial runs is an empty list."""
    reader = StudyReader(tracking_uri)
    exp = reader.experiment(experiment)
    parents = [r.info.run_id for r in reader.study_runs(exp.experiment_id)]
    trials = reader.trials(exp.experiment_id)
    return StudyRuns(experiment, exp.experiment_id, reader.uri, [trial_run(t, ce_epochs) for t in trials],
                     parents, [w for t in trials for w in t.warnings])


def mlflow_trajectories(experiment: str, tracking_uri: str | None = None, ce_epochs: int | None = None) -> list[Run]:
    """The trial runs of a study with a trajectory (:func:`read_study`), as replay and the priors
    take them: named by their trial id (as the stopper and the progress table name them);
    :class:`InputError` when there is none."""
    study = read_study(experiment, tracking_uri, ce_epochs)
    out = study.with_logs
    for r in out:
        r.run_id = r.attrs["trial_id"]
    if not out:
        raise InputError(f"MLflow experiment {experiment!r} at {study.tracking_uri} has no trial runs with a "
                         f"trajectory")
    return out
