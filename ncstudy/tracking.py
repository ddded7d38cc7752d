"""MLflow tracking for studies: a Ray Tune callback that logs from the driver.

Why a callback of our own rather than Ray's ``MLflowLoggerCallback``: it nests trial runs under one
study run, survives ``--resume`` and retries without a second run or a duplicated step (the
trial→run map and last logged step are part of Tune's saved callback state, and are recovered
from MLflow tags when that state is older), batches writes with ``log_batch``, and keeps what it
could not write when the tracking server is down instead of dropping it.

Every MLflow write runs on one writer thread. Tune calls the hooks from its control loop and a
function trainable waits for the driver to take each report, so a write made inside a hook holds
up every trial (MLflow's SQLite store costs ~1 ms per metric point, a run's artifacts ~0.2 s).
The hooks only queue; the writer sends the queue every ``flush_interval_s`` and at each trial's
end, then finishes ended trials (end tags, ``trajectory.csv``/``.png``, final status).
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ray.tune import Callback

from ncstudy.logs import REFERENCE_COLUMNS, write_log

log = logging.getLogger(__name__)

ROLE_TAG, TRIAL_TAG, STUDY_TAG = "ncstudy.role", "ncstudy.trial_id", "ncstudy.study"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's HTTP client retries a refused connection for minutes (7 retries, exponential backoff) and
# waits up to 120 s for an answer. The driver would be stuck in that call, and Tune's function
# trainables wait for the driver to take each result: the whole study would stall while MLflow is
# down. This callback queues and retries on its own, so each request fails fast (unless the user
# set these variables).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
# Longest wait between two tries while MLflow is down: a refused connection costs nothing, and
# the queue is written soon after the server is back.
MAX_RETRY_DELAY_S = 10.0
# Without it MLflow 3's UI opens a study on its GenAI tracing pages instead of the runs table.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
MAX_KEY, MAX_PARAM = 250, 6000
MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH = 1000, 100
# Result keys that are bookkeeping, not science.
_SKIP = {"epoch", "timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "pid",
         "time_since_restore", "iterations_since_restore", "done", "should_checkpoint"}

# Result keys (set by the trainable) -> run tags: where the trial runs now (a retry may move it).
PLACEMENT_TAGS = {"node_id": "ray.node_id", "gpu_ids": "ray.gpu_ids"}

# (trial_id) -> {"metrics": {...}, "tags": {...}}: e.g. the forecaster scheduler's view of a trial.
Annotator = Callable[[str], dict[str, dict[str, Any]]]


def finite_metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if k in _SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k[:MAX_KEY]] = float(v)
    return out


def truncate_params(params: dict[str, Any]) -> dict[str, str]:
    return {k[:MAX_KEY]: str(v)[:MAX_PARAM] for k, v in params.items()}


HISTORY_KEYS = tuple(REFERENCE_COLUMNS[1:]) + ("nc1_papyan", "equinorm_means", "equinorm_weights", "etf_distance",
                                          "self_duality", "nc4", "train_loss", "lr", "forecast_onset")


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable past the configured limit."""


@dataclass
class _TrialLog:
    run_id: str | None  # None until MLflow could be reached
    run_name: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    last_step: int = -1
    pending: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ts, step
    end: dict[str, Any] | None = None  # {"tags": ..., "failed": bool} once the trial ended
    finished: bool = False
    pending_tags: dict[str, str] = field(default_factory=dict)


class MLflowStudyCallback(Callback):
    """One experiment per study, one parent run per launch, one child run per trial.

    Writes never block the study: they are queued by the hooks and sent by the writer thread.
    When MLflow is unreachable they stay queued (trials keep training) and are retried with
    exponential backoff; past ``max_outage_s`` the queue is spilled to a local JSONL file and the
    next hook fails the study with :class:`TrackingUnavailable`.

    Queued points leave the queue only once written, and Tune saves the queue (``get_state``) in
    the same experiment snapshot as the trials' checkpoints: a restored trial and the restored
    queue agree on what is still to be written. Re-sending a written point is a no-op (same key,
    value, timestamp and step).
    """

    def __init__(
        self,
        tracking_uri: str,
        study_name: str,
        study_params: dict[str, Any] | None = None,
        trial_params: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        trial_tags: Callable[[dict[str, Any]], dict[str, str]] | None = None,
        trial_label: Callable[[Any], str] | None = None,
        annotator: Annotator | None = None,
        flush_interval_s: float = 5.0,
        max_outage_s: float = 600.0,
        spill_dir: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.study_params = study_params or {}
        self.trial_params = trial_params
        self.trial_tags = trial_tags
        self.trial_label = trial_label
        self.annotator = annotator
        self.flush_interval_s = flush_interval_s
        self.max_outage_s = max_outage_s
        self.spill_dir = spill_dir
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.trials: dict[str, _TrialLog] = {}
        self._down_since: float | None = None
        self._backoff_until = 0.0
        self._delay = 0.5
        self._resync = False
        self._unsure: set[str] = set()  # trials whose run may exist although we hold no run id
        self._gave_up: str | None = None  # the TrackingUnavailable message, once raised
        self._new_parent = False  # the parent run was created by this launch: no child run exists yet
        self._init_runtime()

    # ---- plumbing -----------------------------------------------------------------------
    _RUNTIME = ("_client", "_lock", "_cond", "_wake", "_writer", "_stopping", "_writer_error", "_started", "_passes",
                "writer_cpu_s", "_rows")

    def _init_runtime(self) -> None:
        """What lives only in this process: the client, the writer thread and its signals."""
        self._client = None
        self._lock = threading.RLock()  # guards self.trials and the outage fields
        self._cond = threading.Condition()  # notified after each writer pass
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._stopping = False
        self._writer_error: BaseException | None = None
        self._started = self._passes = 0  # writer passes begun / completed
        self.writer_cpu_s = 0.0  # CPU time the writer thread spent (benchmarks/tracking_overhead.py)
        # trial -> step -> history row, for trials whose every point went through this process:
        # their trajectory artifacts need no read-back (19 requests a trial). Others read MLflow.
        self._rows: dict[str, dict[int, dict[str, Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles run_config callbacks
        d = {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}
        with self._lock:
            d["trials"] = {t: _TrialLog(**_copy_fields(s)) for t, s in self.trials.items()}
            d["_unsure"] = set(self._unsure)
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self.__dict__.setdefault("_resync", False)
        self.__dict__.setdefault("_unsure", set())
        self.__dict__.setdefault("_gave_up", None)
        self.__dict__.setdefault("_new_parent", False)
        self._init_runtime()

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            for k, v in HTTP_ENV.items():
                os.environ.setdefault(k, v)

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def get_state(self) -> dict[str, Any]:
        with self._lock:  # a consistent copy: the writer may be sending part of the queue
            return {"parent_run_id": self.parent_run_id, "experiment_id": self.experiment_id,
                    "trials": {t: _copy_fields(s) for t, s in self.trials.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.parent_run_id = state.get("parent_run_id")
        self.experiment_id = state.get("experiment_id")
        self.trials = {}
        for t, s in state.get("trials", {}).items():
            s = dict(s)
            s["pending"] = [tuple(p) for p in s.get("pending", [])]
            self.trials[t] = _TrialLog(**s)
        self._resync = True  # the saved state may be older than MLflow: checked in setup()

    # ---- Tune hooks (driver thread: queue only) -------------------------------------------
    def setup(self, **info: Any) -> None:
        from mlflow.entities import RunStatus

        c = self.client
        if self.experiment_id is None:
            exp = self._blocking(c.get_experiment_by_name, self.study_name)
            self.experiment_id = exp.experiment_id if exp else self._blocking(
                c.create_experiment, self.study_name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        if self.parent_run_id is None:
            run = self._blocking(c.create_run, self.experiment_id, run_name=self.study_name,
                                 tags={ROLE_TAG: "study", STUDY_TAG: self.study_name})
            self.parent_run_id = run.info.run_id
            self._new_parent = True
            self._blocking(self._log_params, self.parent_run_id, truncate_params(self.study_params))
        else:  # resumed launch: the same parent run continues
            self._new_parent = False
            self._blocking(c.update_run, self.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if self._resync:
            self._blocking(self._resync_trials)
            self._resync = False
        self._start_writer()

    def _resync_trials(self) -> None:
        """Bring restored trial state up to what MLflow holds.

        Tune saves callback state every few seconds, so after a killed driver the state can be
        older than MLflow: runs created and steps written after the save. Without this, a restored
        trial that re-reports those steps (from its last checkpoint) would log them twice, and a
        trial whose run was created after the save would get a second run. Queued points are kept:
        re-sending one that was written is a no-op (same key, value, timestamp and step).
        """
        for tid, s in self.trials.items():
            if s.run_id is None:
                found = self._find_run(tid)
                if found is not None:
                    self._adopt(s, found)
                continue
            s.last_step = max(s.last_step, self._last_step(s.run_id))

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._raise_if_failed()
        self._ensure_run(trial)
        self._wake.set()  # the run appears in the UI now, not at the next interval

    def on_trial_restore(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._raise_if_failed()
        self._ensure_run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any) -> None:
        self._raise_if_failed()
        state = self._ensure_run(trial)
        placement = {t: str(result[k]) for k, t in PLACEMENT_TAGS.items() if result.get(k) is not None}
        step = None if result.get("epoch") is None else int(result["epoch"])
        metrics = finite_metrics(result) if step is not None else {}
        if metrics and self.annotator is not None:
            metrics.update(finite_metrics(self.annotator(trial.trial_id).get("metrics", {})))
        ts = int(time.time() * 1000)
        with self._lock:
            moved = {k: v for k, v in placement.items() if state.tags.get(k) != v}
            if moved:
                state.tags.update(moved)
                state.pending_tags.update(moved)
            if step is None or step <= state.last_step:
                return  # a retried trial re-reports epochs it already logged: keep the first
            state.pending.extend((k, v, ts, step) for k, v in metrics.items())
            state.last_step = step
            if trial.trial_id in self._rows:
                self._rows[trial.trial_id][step] = {"epoch": step, **{
                    k: metrics[k] for k in HISTORY_KEYS if k in metrics}}

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._raise_if_failed()
        self._wake.set()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trial, failed=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        import pandas as pd
        from mlflow.entities import RunStatus

        self._stop_writer()  # sends everything queued, finishes every ended trial (or gives up)
        self._raise_if_failed()
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "summary.csv"
            pd.DataFrame([self.summary_row(t) for t in trials]).to_csv(p, index=False)
            self._blocking(self.client.log_artifact, self.parent_run_id, str(p))
        ok = all(t.status == "TERMINATED" for t in trials)
        self._blocking(self.client.set_terminated, self.parent_run_id,
                       RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))

    # ---- the writer thread --------------------------------------------------------------
    def _start_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._stopping = False
            self._writer = threading.Thread(target=self._write_loop, name="ncstudy-mlflow-writer", daemon=True)
            self._writer.start()

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._stopping = True
            self._wake.set()
            self._writer.join()
            self._writer = None

    def _raise_if_failed(self) -> None:
        """Surface on the driver thread what the writer could not do."""
        if self._gave_up:
            raise TrackingUnavailable(self._gave_up)
        if self._writer_error is not None:
            raise self._writer_error

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wake the writer and wait until it has made a full pass over the queue (True), or for
        ``timeout`` seconds. A pass in an outage writes nothing; see :meth:`pending_points`."""
        with self._cond:
            target = self._started + 1  # the first pass to begin after this call
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._passes >= target or self._writer is None
                                       or not self._writer.is_alive(), timeout)

    def pending_points(self) -> int:
        with self._lock:
            return sum(len(s.pending) for s in self.trials.values())

    def _write_loop(self) -> None:
        t0 = time.thread_time()
        try:
            while True:
                now = time.monotonic()
                wait = self._backoff_until - now if now < self._backoff_until else (
                    0.0 if self._stopping else self.flush_interval_s)
                if wait > 0:
                    self._wake.wait(wait)
                self._wake.clear()
                with self._cond:
                    self._started += 1
                if time.monotonic() >= self._backoff_until:
                    try:
                        self._write_all()
                    except Exception as e:
                        if not _is_connection_error(e):
                            raise
                        if not self._note_outage(e):
                            return  # gave up: the queue is spilled, the driver raises
                with self._cond:
                    self._passes += 1
                    self._cond.notify_all()
                if self._stopping and self._down_since is None and self._all_written():
                    return
        except BaseException as e:  # a bug, not an outage: the driver raises it at its next hook
            self._writer_error = e
            log.exception("MLflow writer stopped")
        finally:
            self.writer_cpu_s += time.thread_time() - t0
            with self._cond:
                self._cond.notify_all()

    def _all_written(self) -> bool:
        with self._lock:
            return all(s.run_id is not None and not s.pending and not s.pending_tags
                       and (s.end is None or s.finished) for s in self.trials.values())

    def _write_all(self) -> None:
        """One pass: runs, tags and metrics of every trial, then the finish of ended trials.
        The lock is held only to read and commit the queue, never across a request."""
        from mlflow.entities import Metric, RunTag

        with self._lock:
            todo = list(self.trials.items())
        for tid, s in todo:
            if s.run_id is None:
                with self._lock:
                    unsure = tid in self._unsure
                    self._unsure.add(tid)  # a create that fails (a timeout) may still have happened
                found = self._find_run(tid) if unsure else None
                with self._lock:
                    if found is not None:
                        self._adopt(s, found)
                    name, tags, params = s.run_name, dict(s.tags), dict(s.params)
                if found is None:
                    run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
                    with self._lock:
                        s.run_id = run_id
                self._log_params(s.run_id, params)  # idempotent: same values
                with self._lock:
                    self._unsure.discard(tid)
            with self._lock:
                tags = dict(s.pending_tags)
            if tags:
                self.client.log_batch(s.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
                with self._lock:
                    for k, v in tags.items():
                        if s.pending_tags.get(k) == v:
                            del s.pending_tags[k]
            while True:
                with self._lock:  # the driver only appends: the head of the queue is stable
                    chunk = s.pending[:MAX_METRICS_PER_BATCH]
                if not chunk:
                    break
                self.client.log_batch(s.run_id, metrics=[Metric(k, v, ts, st) for k, v, ts, st in chunk])
                with self._lock:
                    del s.pending[:len(chunk)]
            with self._lock:
                end = None if s.end is None or s.finished or s.pending else dict(s.end)
                rows = self._rows.get(tid)
                rows = None if rows is None else [rows[k] for k in sorted(rows)]
            if end is not None:
                self._finish(s.run_id, s.run_name, end, rows)
                with self._lock:
                    s.finished = True
                    self._rows.pop(tid, None)
        with self._lock:
            self._down_since, self._delay = None, 0.5

    def _note_outage(self, e: Exception) -> bool:
        """Back off after a failed request; False once past ``max_outage_s`` (queue spilled)."""
        now = time.monotonic()
        with self._lock:
            self._down_since = self._down_since or now
            n = self.pending_points()
            if now - self._down_since > self.max_outage_s:
                if self._gave_up is None:  # spill once
                    path = self.spill()
                    for s in self.trials.values():
                        s.pending = []
                    self._gave_up = (
                        f"MLflow at {self.tracking_uri} unreachable for over {self.max_outage_s:g} s; the "
                        f"{n} metric points not written are saved in {path}. Once the server is back, "
                        f"`ncstudy run ... --resume` (same --storage) continues the study and writes them.")
                    log.error("%s (%s)", self._gave_up, type(e).__name__)
                return False
            log.warning("MLflow unreachable (%s); %d metric points queued, retry in %.1f s",
                        type(e).__name__, n, self._delay)
            self._backoff_until = now + self._delay
            self._delay = min(self._delay * 2, MAX_RETRY_DELAY_S)
            return True

    def _blocking(self, fn, *args, **kwargs):
        """For steps the study cannot go on without (set-up, the study run's end): on the driver,
        retried with backoff up to ``max_outage_s``."""
        while True:
            try:
                out = fn(*args, **kwargs)
                with self._lock:
                    self._down_since, self._delay = None, 0.5
                return out
            except Exception as e:
                if not _is_connection_error(e):
                    raise
                if not self._note_outage(e):
                    raise TrackingUnavailable(self._gave_up) from e
                time.sleep(max(0.0, self._backoff_until - time.monotonic()))

    def spill(self) -> Path:
        """Write every queued metric to a local JSONL file, so nothing is lost."""
        d = Path(self.spill_dir or ".")
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"unsent_metrics_{self.study_name}.jsonl"
        with self._lock, path.open("a") as f:
            for tid, s in self.trials.items():
                for k, v, ts, step in s.pending:
                    f.write(json.dumps({"trial_id": tid, "run_id": s.run_id, "run_name": s.run_name,
                                        "key": k, "value": v, "timestamp": ts, "step": step}) + "\n")
        return path

    # ---- helpers ------------------------------------------------------------------------
    def _ensure_run(self, trial) -> _TrialLog:
        """The trial's queue, created on first sight; its run is created (or, on a resumed launch,
        looked up first) by the writer."""
        tid = trial.trial_id
        with self._lock:
            if tid in self.trials:
                return self.trials[tid]
        cfg = dict(trial.config)
        name = self.trial_label(trial) if self.trial_label else str(trial)
        tags = {PARENT_TAG: self.parent_run_id, ROLE_TAG: "trial", TRIAL_TAG: tid, STUDY_TAG: self.study_name,
                "status": "running", **(self.trial_tags(cfg) if self.trial_tags else {})}
        state = _TrialLog(None, name, {k: str(v) for k, v in tags.items()},
                          truncate_params(self.trial_params(cfg) if self.trial_params else cfg))
        with self._lock:
            if tid in self.trials:
                return self.trials[tid]
            if self._new_parent:  # a new study run: this trial's whole history passes through here
                self._rows[tid] = {}
            else:  # state older than MLflow (driver killed between saves): the writer looks it up
                self._unsure.add(tid)
            self.trials[tid] = state
            return state

    def _find_run(self, trial_id: str) -> tuple[str, int] | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
            max_results=1)
        if not runs:
            return None
        run = runs[0]
        return run.info.run_id, self._last_step(run.info.run_id)

    @staticmethod
    def _adopt(s: _TrialLog, found: tuple[str, int]) -> None:
        """Continue an existing run: what it already holds is not queued or logged again."""
        s.run_id, written = found
        s.pending = [p for p in s.pending if p[3] > written]
        s.last_step = max(s.last_step, written)

    def _last_step(self, run_id: str) -> int:
        """Last evaluation written (every evaluation logs ``train``), -1 for none."""
        return max((m.step for m in self.client.get_metric_history(run_id, "train")), default=-1)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def summary_row(self, trial) -> dict[str, Any]:
        r = trial.last_result or {}
        tags = (self.annotator(trial.trial_id) if self.annotator else {}).get("tags", {})
        s = self.trials.get(trial.trial_id)
        return {"trial": s.run_name if s else str(trial), "trial_id": trial.trial_id, "status": trial.status,
                "epochs_run": r.get("epoch"), "t_nc": r.get("t_nc"), "fn_star": r.get("fn_star"),
                "stop_reason": tags.get("stop_reason") or r.get("stop_reason") or "",
                "forecast_onset": tags.get("forecast_onset", ""),
                "final_nc1": r.get("nc1"), "final_feat_norm": r.get("feat_norm"), "test": r.get("test")}

    def _end(self, trial, failed: bool) -> None:
        self._raise_if_failed()
        s = self._ensure_run(trial)
        if s.end is not None:
            return
        row = self.summary_row(trial)
        r = trial.last_result or {}
        stop = row["stop_reason"] or ("error" if failed else "budget")
        tags = {"status": "error" if failed else ("diverged" if stop == "diverged" else "completed"),
                "stop_reason": stop, "t_nc": _tag(r.get("t_nc")), "fn_star": _tag(r.get("fn_star")),
                "threshold": "strict" if _finite(r.get("t_nc")) else "none"}
        if self.annotator:
            extra = {k: _tag(v) for k, v in self.annotator(trial.trial_id).get("tags", {}).items()}
            tags.update({k: v for k, v in extra.items() if v != ""})
        with self._lock:
            s.end = {"tags": tags, "failed": failed}
        self._wake.set()

    def _finish(self, run_id: str, name: str, end: dict[str, Any], rows: list[dict[str, Any]] | None) -> None:
        """End tags, trajectory artifacts, final status: idempotent, so a retry is harmless.
        ``rows``: the run's history when this process saw all of it, else None (read from MLflow)."""
        from mlflow.entities import RunStatus, RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in end["tags"].items()])
        if rows is None:
            rows = self.history(run_id)
        if rows:
            from ncstudy.plots import plot_trajectory

            with tempfile.TemporaryDirectory() as d:
                csv = write_log(rows, Path(d) / "trajectory.csv")
                png = plot_trajectory(rows, Path(d) / "trajectory.png", t_nc=_num(end["tags"].get("t_nc")),
                                      title=name)
                self.client.log_artifact(run_id, str(csv))
                self.client.log_artifact(run_id, str(png))
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if end["failed"]
                                                               else RunStatus.FINISHED))

    def history(self, run_id: str, keys: Sequence[str] = HISTORY_KEYS) -> list[dict[str, Any]]:
        """A run's evaluations rebuilt from MLflow itself, the source of truth after restores."""
        by_step: dict[int, dict[str, Any]] = {}
        for k in keys:
            for m in self.client.get_metric_history(run_id, k):
                by_step.setdefault(m.step, {"epoch": m.step})[k] = m.value
        return [by_step[s] for s in sorted(by_step)]


def _copy_fields(s: _TrialLog) -> dict[str, Any]:
    d = dict(s.__dict__)
    d.update(tags=dict(s.tags), params=dict(s.params), pending=list(s.pending), pending_tags=dict(s.pending_tags),
             end=None if s.end is None else dict(s.end))
    return d


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _tag(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _num(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _is_connection_error(e: Exception) -> bool:
    import requests

    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    from mlflow.exceptions import MlflowException

    text = str(e)
    return isinstance(e, MlflowException) and any(
        s in text for s in ("Max retries exceeded", "Connection refused", "Failed to establish",
                            "API request to", "503", "502"))
