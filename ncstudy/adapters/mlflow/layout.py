"""The MLflow layout of a study, defined once: what is written where, under which name.

* Experiment = study name, tagged ``mlflow.experimentKind`` (:data:`EXPERIMENT_KIND`) so MLflow 3's
  UI opens it on the training runs rather than its GenAI pages.
* One study (parent) run per launch: tags :data:`ROLE_TAG` = ``study``, :data:`STUDY_TAG`; params
  ``study.*``; metrics :data:`STUDY_METRICS`; artifacts :data:`SUMMARY_ARTIFACT`, :data:`OVERVIEW_PNG`,
  :data:`SWEEP_PNG`.
* One trial (child) run per trial: tags :data:`PARENT_TAG`, :data:`ROLE_TAG` = ``trial``,
  :data:`TRIAL_TAG`, :data:`STUDY_TAG`, the trial tags below; params = the flattened trial config;
  metrics = the record keys at ``step = epoch``; artifacts :data:`TRAJECTORY_CSV` (reference log
  format) and :data:`TRAJECTORY_PNG`.

Readers (:mod:`.reader`) and writers (:mod:`.writer`, :mod:`.callback`) import these names; no
other module spells a tag.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping
from urllib.parse import quote

from ncstudy.records import (
    CLASSIFIER_WEIGHT_NORM,
    COLLAPSE_EPOCH,
    EPOCH,
    FN,
    FN_STAR,
    FORECAST_EPOCH,
    FORECAST_FIELDS,
    GRAD_NORM,
    LOSS,
    LR,
    NC1,
    P_ONSET,
    REFERENCE_COLUMNS,
    STANDARD_NC,
    STOP_REASON,
    T_NC,
    T_NC_ESTIMATE,
    T_NC_HIGH,
    T_NC_LOW,
    WEIGHT_NORM,
    finite,
    tag_text,
)

if TYPE_CHECKING:  # pragma: no cover
    from ncstudy.adapters.trials import TrialSummary

ROLE_TAG, TRIAL_TAG, STUDY_TAG = "ncstudy.role", "ncstudy.trial_id", "ncstudy.study"
PARENT_TAG = "mlflow.parentRunId"
ROLE_STUDY, ROLE_TRIAL = "study", "trial"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# Trial-run tags.
MODEL_TAG, DATASET_TAG = "model", "dataset"
STATUS_TAG = "status"  # running | completed | diverged | error | interrupted
INTERRUPTED = "interrupted"  # status and stop reason of a trial whose study was interrupted
STOP_REASON_TAG = STOP_REASON  # ncstudy.records.STOP_REASONS
T_NC_TAG, FN_STAR_TAG, THRESHOLD_TAG = T_NC, FN_STAR, "threshold"  # threshold: strict | none
# The forecast: metrics at every evaluation (written into the results by the fn* stopper), and tags
# of the finished run.
# Where the trial runs now (a retry may move it): result key -> tag.
PLACEMENT_TAGS = {"node_id": "ray.node_id", "gpu_ids": "ray.gpu_ids", "gpu_share": "ray.gpu_share"}
ANALYSIS_TAG = "ncstudy.analysis"  # on the study run: where `ncstudy analyze` put its report

TRAJECTORY_CSV, TRAJECTORY_PNG, SUMMARY_ARTIFACT = "trajectory.csv", "trajectory.png", "summary.csv"
# The study run's overview (refreshed as trials end, and at the study's end).
OVERVIEW_PNG, SWEEP_PNG = "overview.png", "sweep.png"
# Study-level metrics on the study run, at step = trials ended (MLflow's chart view groups them
# under "study").
STUDY_METRICS = {
    "trials_finished": "study/trials_finished",
    "trials_collapsed": "study/trials_collapsed",  # reached the strict onset
    "stopped_by_forecast": "study/trials_stopped_by_forecast",  # ncstudy.records.FORECAST_STOPS
    "best_collapse_epoch": "study/best_collapse_epoch",  # min of the objective collapse_epoch
    "epochs_saved": "study/epochs_saved",  # budget - epochs run, over the trials stopped early (EARLY_STOPS)
}
ANALYSIS_ARTIFACT_DIR = "analysis"

#: The metrics a trajectory is rebuilt from (``trajectory.csv`` and replay).
HISTORY_KEYS = tuple(REFERENCE_COLUMNS[1:]) + STANDARD_NC + (LOSS, GRAD_NORM, WEIGHT_NORM, CLASSIFIER_WEIGHT_NORM,
                                                            LR, *FORECAST_FIELDS)
#: Every evaluation logs it, so its history gives the steps written.
STEP_KEY = "train"

# Result keys that are bookkeeping, not science: never logged as metrics.
NOT_METRICS = {EPOCH, "timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "pid",
               "time_since_restore", "iterations_since_restore", "done", "should_checkpoint"}
MAX_KEY, MAX_PARAM = 250, 6000
# MLflow's log_batch limits: 1,000 metrics, 100 params, 100 tags, 1,000 entities in all.
MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, MAX_TAGS_PER_BATCH = 1000, 100, 100


# The MLflow UI's view of a study: MLflow 3.17's UI opens experiments on GenAI pages and shows the
# trial runs folded under their study run (its sort by start time nests children; its fold state
# cannot be shared). The study's experiment carries a shared view (an experiment tag the UI reads
# for ``?viewStateShareKey=ncstudy``): runs sorted by name, a flat list of the study run and every
# trial, columns for the searched keys and the onset, all runs in the charts.
VIEW_KEY = "ncstudy"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
RUN_NAME_ORDER = "tags.`mlflow.runName`"


def view_state(searched: Iterable[str] = ()) -> dict[str, Any]:
    """The shared view of a study's runs (the JSON of :data:`VIEW_TAG`)."""
    cols = ([f"params.`{k}`" for k in searched]
            + [f"metrics.`{m}`" for m in (COLLAPSE_EPOCH, FN, NC1)]
            + [f"tags.`{t}`" for t in (STOP_REASON_TAG, T_NC_TAG, FN_STAR_TAG)])
    return {"searchFilter": "", "orderByKey": RUN_NAME_ORDER, "orderByAsc": True, "selectedColumns": cols,
            "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True}


def runs_url(base: str, experiment_id: str, shared_view: bool = True) -> str:
    """The MLflow UI page of an experiment's training runs, every trial visible: ``workflowType``
    (the UI keeps it in localStorage ``mlflow.workflowType``, default ``genai``; the URL wins) and
    the study's shared view, or, for an experiment without one (an older ncstudy), the sort by name
    that lists the trials flat."""
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if shared_view:
        return f"{url}&viewStateShareKey={VIEW_KEY}"
    return f"{url}&orderByKey={quote(RUN_NAME_ORDER)}&orderByAsc=true"


def trial_filter() -> str:
    return f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}'"


def study_filter() -> str:
    return f"tags.`{ROLE_TAG}` = '{ROLE_STUDY}'"


def finite_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The loggable metrics of a result: finite numbers, bookkeeping keys left out, keys cut to size."""
    return {k[:MAX_KEY]: float(v) for k, v in result.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and finite(v)}


def truncate_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {k[:MAX_KEY]: str(v)[:MAX_PARAM] for k, v in params.items()}


def end_tags(status: str, stop_reason: str, t_nc: Any, fn_star: Any,
             forecast: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A finished trial's tags: status, stop reason, onset (``threshold`` strict or none) and the
    forecast tags that are known (empty ones are left out)."""
    tags = {STATUS_TAG: status, STOP_REASON_TAG: stop_reason, T_NC_TAG: tag_text(t_nc),
            FN_STAR_TAG: tag_text(fn_star), THRESHOLD_TAG: "strict" if finite(t_nc) else "none"}
    for k, v in (forecast or {}).items():
        text = tag_text(v)
        if text != "":
            tags[k] = text
    return tags


def forecast_tags(s: "TrialSummary") -> dict[str, Any]:
    """The forecast as tags of a finished trial run (what is unknown is left out)."""
    return {T_NC_ESTIMATE: s.t_nc_estimate, T_NC_LOW: s.t_nc_low, T_NC_HIGH: s.t_nc_high, P_ONSET: s.p_onset,
            FORECAST_EPOCH: s.forecast_epoch}
