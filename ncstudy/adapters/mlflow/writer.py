"""The durable MLflow writer of a study: a queue per trial, one writer thread, backoff and spill.

Every MLflow write of a study runs on one thread. Tune calls the callback's hooks from its control
loop, and a function trainable waits for the driver to take each report, so a write made inside a
hook would hold up every trial (MLflow's SQLite store costs ~1 ms per metric point, a run's
artifacts ~0.2 s). Hooks only queue (:meth:`StudyWriter.add_trial`, :meth:`queue`, :meth:`end_trial`);
the writer sends the queue every ``flush_interval_s`` and at each trial's end, then finishes ended
trials (end tags, trajectory artifacts, final status). Pictures are drawn in a child process
(:class:`~.pictures.PictureProcess`), so matplotlib never holds the driver's GIL.

Queued points leave the queue only once written, and :meth:`get_state` copies the queue under a
lock: Tune saves it in the same snapshot as the trial checkpoints, so a restored trial and the
restored queue agree on what is still to be written. Re-sending a written point is a no-op (same
key, value, timestamp and step). When MLflow is unreachable, writes stay queued and are retried
with exponential backoff; past ``max_outage_s`` the queue is spilled to a local JSONL file and the
next hook raises :class:`TrackingUnavailable`.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ncstudy.errors import TrackingUnavailable
from ncstudy.records import FORECAST_FIELDS, num

from .layout import (
    HISTORY_KEYS,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAGS_PER_BATCH,
    T_NC_TAG,
    TRAJECTORY_CSV,
    TRAJECTORY_PNG,
)
from .pictures import PictureProcess
from .reader import StudyReader, connect

log = logging.getLogger(__name__)

# Longest wait between two tries while MLflow is down: a refused connection costs nothing, and
# the queue is written soon after the server is back.
MAX_RETRY_DELAY_S = 10.0


@dataclass
class TrialQueue:
    """What is still to be written for one trial run."""

    run_id: str | None  # None until MLflow could be reached
    run_name: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    last_step: int = -1
    pending: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ts, step
    end: dict[str, Any] | None = None  # {"tags", "failed", "killed", "plot"} once the trial ended
    finished: bool = False
    pending_tags: dict[str, str] = field(default_factory=dict)
    params_sent: bool = False  # the params ride with the run's first log_batch
    end_tags_sent: bool = False  # the end tags ride with its last metrics
    artifact_uri: str | None = None  # from create_run: the upload needs no runs/get (None: look it up)

    def copy(self) -> "TrialQueue":
        return TrialQueue(self.run_id, self.run_name, dict(self.tags), dict(self.params), self.last_step,
                          list(self.pending), None if self.end is None else dict(self.end), self.finished,
                          dict(self.pending_tags), self.params_sent, self.end_tags_sent, self.artifact_uri)

    def to_state(self) -> dict[str, Any]:
        return dict(self.copy().__dict__)

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "TrialQueue":
        s = dict(s)
        s["pending"] = [tuple(p) for p in s.get("pending", [])]
        return cls(**s)


#: ``(rows, path, plot) -> path``: draws a trial's trajectory picture (``ncstudy.plots``); ``plot``
#: is what the callback worked out on the driver (name, fn* band, searched keys, onset, ...).
Plotter = Callable[[list[dict[str, Any]], Path, dict[str, Any]], Path]
#: ``(trials, folder) -> (artifact paths, study metrics)``: the study overview from the ended trials'
#: ``(rows, plot)``.
OverviewPlotter = Callable[[list[tuple[list[dict[str, Any]], dict[str, Any]]], Path],
                           tuple[list[Path], dict[str, float]]]

#: Least seconds between two overview refreshes while trials finish; the study's end always draws
#: the last one. An overview of N trials costs O(N) to draw, so the gap also grows to
#: OVERVIEW_GAP_FACTOR x the last one's drawing CPU: refreshing stays under a tenth of one core.
OVERVIEW_INTERVAL_S = 30.0
OVERVIEW_GAP_FACTOR = 10.0
#: The columns of a trial's rows kept for the study overview once its own artifacts are written.
OVERVIEW_KEYS = ("epoch", "phase", "train", "feat_norm", "nc1", *FORECAST_FIELDS)


class StudyWriter:
    """The queue and writer thread of one study's MLflow runs (see the module docs)."""

    _RUNTIME = ("_client", "_lock", "_cond", "_wake", "_thread", "_stopping", "_error", "_started", "_passes",
                "cpu_s", "_rows", "_ended_rows", "_view_sent", "_overview_due", "_overview_at", "_overview_gap",
                "overview_cpu_s", "plot_cpu_s", "picture_cpu_s", "pictures")

    def __init__(self, tracking_uri: str, study_name: str, flush_interval_s: float = 5.0,
                 max_outage_s: float = 600.0, spill_dir: str | None = None, plotter: Plotter | None = None,
                 overview: OverviewPlotter | None = None) -> None:
        self.tracking_uri, self.study_name = tracking_uri, study_name
        self.flush_interval_s, self.max_outage_s, self.spill_dir = flush_interval_s, max_outage_s, spill_dir
        self.plotter = plotter
        self.overview = overview
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.trials: dict[str, TrialQueue] = {}
        self.unsure: set[str] = set()  # trials whose run may exist although we hold no run id
        self.gave_up: str | None = None  # the TrackingUnavailable message, once raised
        self.down_since: float | None = None
        self.backoff_until = 0.0
        self.delay = 0.5
        self._init_runtime()

    def _init_runtime(self) -> None:
        """What lives only in this process: the client, the thread and its signals."""
        self._client = None
        self._lock = threading.RLock()  # guards self.trials and the outage fields
        self._cond = threading.Condition()  # notified after each writer pass
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._started = self._passes = 0  # passes begun / completed
        self.cpu_s = 0.0  # CPU time the writer thread spent (benchmarks/tracking_overhead.py)
        # trial -> step -> history row, for trials whose every point went through this process:
        # their trajectory artifacts need no read-back (19 requests a trial). Others read MLflow.
        self._rows: dict[str, dict[int, dict[str, Any]]] = {}
        # trial -> its rows (OVERVIEW_KEYS) once ended, for the study overview
        self._ended_rows: dict[str, list[dict[str, Any]]] = {}
        self._overview_due = False  # a trial finished since the last overview
        self._overview_at = -math.inf  # time.monotonic() of the last overview
        self._overview_gap = OVERVIEW_INTERVAL_S  # seconds until the next one may be drawn
        self.overview_cpu_s = 0.0  # writer CPU time spent on the overview (drawing and sending)
        self.plot_cpu_s: list[float] = []  # CPU time of each trajectory.png (in the picture process)
        self.picture_cpu_s = 0.0  # CPU time of every picture, trials' and overview's (picture process)
        self.pictures = PictureProcess()  # draws them off the driver's GIL

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the callback that holds the writer
        d = {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}
        with self._lock:
            d["trials"] = {t: s.copy() for t, s in self.trials.items()}
            d["unsure"] = set(self.unsure)
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._init_runtime()

    @property
    def client(self):
        if self._client is None:
            self._client = connect(self.tracking_uri, must_exist=False)
        return self._client

    @property
    def reader(self) -> StudyReader:
        return StudyReader(self.tracking_uri, client=self.client)

    # -- state saved by Tune -------------------------------------------------------------------
    #: Version of :meth:`get_state`'s plain dict (Tune saves it; a newer ncstudy must read it).
    STATE_VERSION = 1

    def get_state(self) -> dict[str, Any]:
        with self._lock:  # a consistent copy: the thread may be sending part of the queue
            return {"version": self.STATE_VERSION, "parent_run_id": self.parent_run_id,
                    "experiment_id": self.experiment_id, "tracking_uri": self.tracking_uri,
                    "trials": {t: s.to_state() for t, s in self.trials.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        if int(state.get("version", 0)) > self.STATE_VERSION:
            raise ValueError(f"MLflow writer state version {state.get('version')} is newer than this ncstudy's "
                             f"({self.STATE_VERSION})")
        self.parent_run_id = state.get("parent_run_id")
        self.experiment_id = state.get("experiment_id")
        self.trials = {t: TrialQueue.from_state(s) for t, s in state.get("trials", {}).items()}

    def resync(self) -> None:
        """Bring restored trial state up to what MLflow holds.

        Tune saves callback state every few seconds, so after a killed driver the state can be
        older than MLflow: runs created and steps written after the save. Without this, a restored
        trial that re-reports those steps (from its last checkpoint) would log them twice, and a
        trial whose run was created after the save would get a second run. Queued points are kept:
        re-sending one that was written is a no-op.
        """
        from mlflow.entities import RunStatus

        from .layout import STATUS_TAG

        for tid, s in self.trials.items():
            if s.run_id is None:
                found = self._find_run(tid)
                if found is not None:
                    self._adopt(s, found)
                continue
            s.last_step = max(s.last_step, self.reader.last_step(s.run_id))
            if s.end is None:  # continues now: its run was ended KILLED when the study was interrupted
                self.client.update_run(s.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                self.client.set_tag(s.run_id, STATUS_TAG, "running")

    # -- what the hooks call (driver thread: queue only) ---------------------------------------
    def add_trial(self, trial_id: str, run_name: str, tags: dict[str, str], params: dict[str, str],
                  whole_history: bool) -> TrialQueue:
        """The trial's queue, created on first sight. ``whole_history``: every point of the trial
        will pass through this process (a new study run), so its rows are kept for the artifacts;
        otherwise the writer first looks the run up (state older than MLflow)."""
        with self._lock:
            if trial_id in self.trials:
                return self.trials[trial_id]
            q = self.trials[trial_id] = TrialQueue(None, run_name, tags, params)
            if whole_history:
                self._rows[trial_id] = {}
            else:
                self.unsure.add(trial_id)
            return q

    def queue(self, trial_id: str, step: int | None, metrics: dict[str, float], placement: dict[str, str]) -> None:
        """Queue one evaluation's metrics (a step not after the last one queued is dropped: a
        retried trial re-reports epochs it already logged) and any changed placement tags."""
        ts = int(time.time() * 1000)
        with self._lock:
            q = self.trials[trial_id]
            moved = {k: v for k, v in placement.items() if q.tags.get(k) != v}
            if moved:
                q.tags.update(moved)
                q.pending_tags.update(moved)
            if step is None or step <= q.last_step:
                return
            q.pending.extend((k, v, ts, step) for k, v in metrics.items())
            q.last_step = step
            if trial_id in self._rows:
                self._rows[trial_id][step] = {"epoch": step, **{k: metrics[k] for k in HISTORY_KEYS if k in metrics}}

    def end_trial(self, trial_id: str, tags: dict[str, str], failed: bool, plot: dict[str, Any] | None = None,
                  killed: bool = False) -> bool:
        """Mark a trial ended (False when it already was); the thread writes its end soon. The run
        ends FAILED when ``failed``, KILLED when ``killed`` (the study was interrupted), else FINISHED."""
        with self._lock:
            q = self.trials[trial_id]
            if q.end is not None:
                return False
            q.end = {"tags": tags, "failed": failed, "killed": killed, "plot": dict(plot or {})}
        self._wake.set()
        return True

    def wake(self) -> None:
        self._wake.set()

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="ncstudy-mlflow-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Send everything queued and finish every ended trial (or give up past the outage limit)."""
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None

    def raise_if_failed(self) -> None:
        """Surface on the driver thread what the writer could not do."""
        if self.gave_up:
            raise TrackingUnavailable(self.gave_up)
        if self._error is not None:
            raise self._error

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wake the writer and wait until it has made a full pass over the queue (True), or for
        ``timeout`` seconds. A pass in an outage writes nothing; see :meth:`pending_points`."""
        with self._cond:
            target = self._started + 1  # the first pass to begin after this call
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._passes >= target or self._thread is None
                                       or not self._thread.is_alive(), timeout)

    def pending_points(self) -> int:
        with self._lock:
            return sum(len(s.pending) for s in self.trials.values())

    def _loop(self) -> None:
        t0 = time.thread_time()
        try:
            while True:
                now = time.monotonic()
                wait = self.backoff_until - now if now < self.backoff_until else (
                    0.0 if self._stopping else self.flush_interval_s)
                if wait > 0:
                    self._wake.wait(wait)
                self._wake.clear()
                with self._cond:
                    self._started += 1
                if time.monotonic() >= self.backoff_until:
                    try:
                        self._write_all()
                    except Exception as e:
                        if not is_connection_error(e):
                            raise
                        if not self._note_outage(e):
                            return  # gave up: the queue is spilled, the driver raises
                with self._cond:
                    self._passes += 1
                    self._cond.notify_all()
                if self._stopping and self.down_since is None and self._all_written():
                    return
        except BaseException as e:  # a bug, not an outage: the driver raises it at its next hook
            self._error = e
            log.exception("MLflow writer stopped")
        finally:
            self.cpu_s += time.thread_time() - t0
            with self._cond:
                self._cond.notify_all()

    def _all_written(self) -> bool:
        with self._lock:
            return all(s.run_id is not None and not s.pending and not s.pending_tags
                       and (s.end is None or s.finished) for s in self.trials.values())

    def _write_all(self) -> None:
        """One pass: runs, tags and metrics of every trial, then the finish of ended trials, then
        (when one finished) the study overview. The lock is held only to read and commit the queue,
        never across a request. Requests per trial: ``create_run`` (with its tags), one
        ``log_batch`` per 1,000 points (the first also carries the params, the last the end tags),
        one upload of ``trajectory.csv`` + ``trajectory.png``, the final status."""

        with self._lock:
            todo = list(self.trials.items())
        for tid, s in todo:
            if s.run_id is None:
                with self._lock:
                    unsure = tid in self.unsure
                    self.unsure.add(tid)  # a create that fails (a timeout) may still have happened
                found = self._find_run(tid) if unsure else None
                with self._lock:
                    if found is not None:
                        self._adopt(s, found)
                    name, tags = s.run_name, dict(s.tags)
                if found is None:
                    info = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info
                    with self._lock:
                        s.run_id, s.artifact_uri = info.run_id, info.artifact_uri
                        s.params_sent = False
                with self._lock:
                    self.unsure.discard(tid)
            while True:
                with self._lock:  # the driver only appends: the head of the queue is stable
                    params = [] if s.params_sent else list(s.params.items())
                    extra = [] if len(params) <= MAX_PARAMS_PER_BATCH else params[MAX_PARAMS_PER_BATCH:]
                    params = params[:MAX_PARAMS_PER_BATCH]
                    tags = dict(s.pending_tags)
                    room = MAX_METRICS_PER_BATCH - len(params) - len(tags)
                    chunk = s.pending[:room]
                    last = len(chunk) == len(s.pending)
                    end_tags = (dict(s.end["tags"]) if last and s.end is not None and not s.end_tags_sent
                                and len(tags) + len(s.end["tags"]) <= MAX_TAGS_PER_BATCH
                                and len(chunk) + len(params) + len(tags) + len(s.end["tags"]) <= MAX_METRICS_PER_BATCH
                                else {})
                # Params alone wait for the first metrics (or the end): one request fewer a trial.
                if not (chunk or tags or end_tags or (params and s.end is not None)):
                    break
                if extra:  # more params than one batch takes (a very wide config): the rest alone
                    self.log_params(s.run_id, dict(extra))
                self.log_batch(s.run_id, chunk, params, {**tags, **end_tags})
                with self._lock:
                    del s.pending[:len(chunk)]
                    s.params_sent = True
                    for k, v in tags.items():
                        if s.pending_tags.get(k) == v:
                            del s.pending_tags[k]
                    if end_tags:
                        s.end_tags_sent = True
            with self._lock:
                end = None if s.end is None or s.finished or s.pending else dict(s.end)
                tags_sent = s.end_tags_sent
                rows = self._rows.get(tid)
                rows = None if rows is None else [rows[k] for k in sorted(rows)]
            if end is not None:
                rows = self._finish(s.run_id, end, rows, tags_sent, s.artifact_uri)
                with self._lock:
                    s.finished = True
                    self._rows.pop(tid, None)
                    self._ended_rows[tid] = [{k: r[k] for k in OVERVIEW_KEYS if k in r} for r in rows or []]
                    self._overview_due = True
        with self._lock:
            self.down_since, self.delay = None, 0.5
        if self._overview_due and time.monotonic() - self._overview_at >= self._overview_gap:
            try:
                self.write_overview()
            except Exception:
                self._overview_due = True  # an outage: drawn again at the next pass
                raise

    # -- the study run -------------------------------------------------------------------------
    def write_view(self, searched: list[str] = ()) -> None:
        """The experiment's shared UI view (:func:`~.layout.view_state`), with a column per searched
        key; sent when it changed."""
        from .layout import VIEW_TAG, view_state

        keys = list(dict.fromkeys(searched))
        text = json.dumps(view_state(keys))
        if text != getattr(self, "_view_sent", None) and self.experiment_id is not None:
            self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, text)
            self._view_sent = text

    def write_overview(self, read_missing: bool = False) -> bool:
        """Draw the study overview of the ended trials and send it to the study run: its pictures,
        ``summary.csv`` of the ended trials and the study metrics (at ``step`` = trials ended).
        ``read_missing``: trials ended in an earlier launch are read back from MLflow (the study's
        end). False when there is nothing to show (no overview plotter, no ended trial)."""
        from mlflow.entities import Metric

        if self.overview is None or self.parent_run_id is None:
            return False
        t0 = time.thread_time()
        with self._lock:
            self._overview_due = False
            self._overview_at = time.monotonic()
            ended = [(tid, s.run_id, dict(s.end.get("plot") or {})) for tid, s in self.trials.items()
                     if s.end is not None and s.finished and s.run_id is not None]
            have = {tid: list(self._ended_rows.get(tid, [])) for tid, _, _ in ended}
        trials = []
        for tid, run_id, plot in ended:
            rows = have[tid]
            if not rows and read_missing:
                rows = self.reader.history(run_id, OVERVIEW_KEYS[1:])
                with self._lock:
                    self._ended_rows[tid] = rows
            trials.append((rows, plot))
        if not trials:
            return False
        self.write_view([k for _, plot in trials for k in (plot.get("keys") or {})])
        with tempfile.TemporaryDirectory() as d:
            (paths, metrics), cpu = self.pictures.run(self.overview, trials, Path(d))
            self.overview_cpu_s += cpu
            self.picture_cpu_s += cpu
            self._overview_gap = max(OVERVIEW_INTERVAL_S, OVERVIEW_GAP_FACTOR * cpu)
            ts = int(time.time() * 1000)
            self.client.log_batch(self.parent_run_id, metrics=[Metric(k, v, ts, len(trials))
                                                               for k, v in metrics.items() if math.isfinite(v)])
            self.client.log_artifacts(self.parent_run_id, d)
            for p in paths:
                p.unlink(missing_ok=True)
        self.overview_cpu_s += time.thread_time() - t0
        return True

    def _note_outage(self, e: Exception) -> bool:
        """Back off after a failed request; False once past ``max_outage_s`` (queue spilled)."""
        now = time.monotonic()
        with self._lock:
            self.down_since = self.down_since or now
            n = self.pending_points()
            if now - self.down_since > self.max_outage_s:
                if self.gave_up is None:  # spill once
                    path = self.spill()
                    for s in self.trials.values():
                        s.pending = []
                    self.gave_up = (
                        f"MLflow at {self.tracking_uri} unreachable for over {self.max_outage_s:g} s; the "
                        f"{n} metric points not written are saved in {path}. Once the server is back, "
                        f"`ncstudy run ... --resume` (same --storage) continues the study and writes them.")
                    log.error("%s (%s)", self.gave_up, type(e).__name__)
                return False
            log.warning("MLflow unreachable (%s); %d metric points queued, retry in %.1f s",
                        type(e).__name__, n, self.delay)
            self.backoff_until = now + self.delay
            self.delay = min(self.delay * 2, MAX_RETRY_DELAY_S)
            return True

    def blocking(self, fn, *args, **kwargs):
        """For steps the study cannot go on without (set-up, the study run's end): on the driver,
        retried with backoff up to ``max_outage_s``."""
        while True:
            try:
                out = fn(*args, **kwargs)
                with self._lock:
                    self.down_since, self.delay = None, 0.5
                return out
            except Exception as e:
                if not is_connection_error(e):
                    raise
                if not self._note_outage(e):
                    raise TrackingUnavailable(self.gave_up) from e
                time.sleep(max(0.0, self.backoff_until - time.monotonic()))

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

    # -- requests ------------------------------------------------------------------------------
    def _find_run(self, trial_id: str) -> tuple[str, int] | None:
        run = self.reader.find_trial_run(self.experiment_id, self.parent_run_id, trial_id)
        return None if run is None else (run.info.run_id, self.reader.last_step(run.info.run_id))

    @staticmethod
    def _adopt(s: TrialQueue, found: tuple[str, int]) -> None:
        """Continue an existing run: what it already holds is not queued or logged again."""
        s.run_id, written = found
        s.pending = [p for p in s.pending if p[3] > written]
        s.last_step = max(s.last_step, written)

    def log_batch(self, run_id: str, metrics: list[tuple[str, float, int, int]], params: list[tuple[str, str]],
                  tags: dict[str, str]) -> None:
        """One ``log_batch`` of plain ``(key, value, timestamp, step)`` points, params and tags. To an
        MLflow server the JSON body is built here: MLflowClient goes Metric -> protobuf -> JSON
        text -> dict -> JSON, ~25 us of CPU a point, the writer's largest cost in a large study.
        Same endpoint, credentials, retries and error checks (MLflow's ``http_request`` and
        ``verify_rest_response``); other stores go through the client."""
        from mlflow.store.tracking.rest_store import RestStore

        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if not isinstance(store, RestStore):
            from mlflow.entities import Metric, Param, RunTag

            self.client.log_batch(run_id, metrics=[Metric(k, v, ts, st) for k, v, ts, st in metrics],
                                  params=[Param(k, v) for k, v in params],
                                  tags=[RunTag(k, v) for k, v in tags.items()])
            return
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/runs/log-batch"
        body = {"run_id": run_id,
                "metrics": [{"key": k, "value": v, "timestamp": ts, "step": st} for k, v, ts, st in metrics],
                "params": [{"key": k, "value": v} for k, v in params],
                "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        verify_rest_response(http_request(store.get_host_creds(), endpoint, "POST", json=body), endpoint)

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def _finish(self, run_id: str, end: dict[str, Any], rows: list[dict[str, Any]] | None,
                tags_sent: bool = False, artifact_uri: str | None = None) -> list[dict[str, Any]] | None:
        """End tags (unless they went with the last metrics), trajectory artifacts (one upload),
        final status: idempotent, so a retry is harmless. ``rows``: the run's history when this
        process saw all of it, else None (read from MLflow). ``artifact_uri``: the run's, when
        known (from create_run), so the upload does not look the run up. Returns the rows."""
        from mlflow.entities import RunStatus, RunTag

        from ncstudy.logs import write_log

        if not tags_sent:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in end["tags"].items()])
        if rows is None:
            rows = self.reader.history(run_id)
        if rows:
            with tempfile.TemporaryDirectory() as d:
                write_log(rows, Path(d) / TRAJECTORY_CSV)
                if self.plotter is not None:
                    plot = {"t_nc": num(end["tags"].get(T_NC_TAG)), **end.get("plot", {})}
                    _, cpu = self.pictures.run(self.plotter, rows, Path(d) / TRAJECTORY_PNG, plot)
                    self.plot_cpu_s.append(cpu)
                    self.picture_cpu_s += cpu
                if artifact_uri:
                    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

                    get_artifact_repository(artifact_uri, tracking_uri=self.tracking_uri).log_artifacts(d)
                else:
                    self.client.log_artifacts(run_id, d)
        status = RunStatus.FAILED if end["failed"] else RunStatus.KILLED if end.get("killed") else RunStatus.FINISHED
        self.client.set_terminated(run_id, RunStatus.to_string(status))
        return rows


def is_connection_error(e: Exception) -> bool:
    """An outage (refused, timed out, 502/503), as opposed to a request MLflow rejected."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    text = str(e)
    return isinstance(e, MlflowException) and any(
        s in text for s in ("Max retries exceeded", "Connection refused", "Failed to establish",
                            "API request to", "503", "502"))


def log_analysis(tracking_uri: str, run_id: str, root: Path, files: list[Path]) -> None:
    """Log ``ncstudy analyze``'s report and figures on a study run, under ``analysis/``, and tag
    the run with where the report is."""
    from .layout import ANALYSIS_ARTIFACT_DIR, ANALYSIS_TAG

    client = connect(tracking_uri)
    for f in files:
        sub = f.parent.relative_to(root).as_posix()
        client.log_artifact(run_id, str(f), artifact_path=ANALYSIS_ARTIFACT_DIR if sub == "."
                            else f"{ANALYSIS_ARTIFACT_DIR}/{sub}")
    client.set_tag(run_id, ANALYSIS_TAG, f"{ANALYSIS_ARTIFACT_DIR}/report.md")
