"""``MLflowStudyCallback``: a Ray Tune callback that tracks a study in MLflow from the driver.

Why a callback of our own rather than Ray's ``MLflowLoggerCallback``: it nests trial runs under one
study run, survives ``--resume`` and retries without a second run or a duplicated step (the
trial->run map and last logged step are part of Tune's saved callback state, and are recovered
from MLflow tags when that state is older), batches writes with ``log_batch``, and keeps what it
could not write when the tracking server is down instead of dropping it. The hooks only queue;
:class:`~ncstudy.adapters.mlflow.writer.StudyWriter` does every request on its own thread. The
layout is :mod:`ncstudy.adapters.mlflow.layout`.
"""
from __future__ import annotations

import functools
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from ncstudy.adapters.trials import TrialSummary
from ncstudy.records import COLLAPSE_EPOCH, EPOCH, end_reason, num

from .layout import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    INTERRUPTED,
    PARENT_TAG,
    PLACEMENT_TAGS,
    ROLE_STUDY,
    ROLE_TAG,
    ROLE_TRIAL,
    STATUS_TAG,
    STUDY_TAG,
    SUMMARY_ARTIFACT,
    TRIAL_TAG,
    end_tags,
    finite_metrics,
    forecast_tags,
    truncate_params,
)
from .pictures import draw_overview, draw_trajectory
from .writer import StudyWriter, TrackingUnavailable

__all__ = ["MLflowStudyCallback", "TrackingUnavailable"]


def searched_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's searched keys (Tune's config holds only those) as the pictures label them."""
    from ncstudy.config import flatten

    out: dict[str, Any] = {}
    for k, v in flatten(config).items():
        out[k] = v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v)
    return out


class MLflowStudyCallback(Callback):
    """One experiment per study, one parent run per launch, one child run per trial.

    Writes never block the study: the hooks queue them on :attr:`writer`, which sends them from its
    own thread, retries through an outage and, past ``max_outage_s``, spills the queue to a local
    JSONL file and fails the study with :class:`TrackingUnavailable` at the next hook.
    """

    def __init__(
        self,
        tracking_uri: str,
        study_name: str,
        study_params: dict[str, Any] | None = None,
        trial_params: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        trial_tags: Callable[[dict[str, Any]], dict[str, str]] | None = None,
        trial_label: Callable[[Any], str] | None = None,
        flush_interval_s: float = 5.0,
        max_outage_s: float = 600.0,
        spill_dir: str | None = None,
        planned_trials: int | None = None,
    ) -> None:
        self.study_name = study_name
        self.study_params = study_params or {}
        self.trial_params = trial_params
        self.trial_tags = trial_tags
        self.trial_label = trial_label
        self.planned_trials = planned_trials  # fewer trials than planned at the end: the study run ends KILLED
        self.writer = StudyWriter(tracking_uri, study_name, flush_interval_s, max_outage_s, spill_dir,
                                  plotter=draw_trajectory, overview=functools.partial(draw_overview, study_name))
        self._stopper: Any = None  # the fn* stopper Tune hands setup(): each group's fn* and its spread
        self._observed: dict[str, dict[str, float]] = {}  # group -> trial -> observed fn* (no stopper)
        self._resync = False
        self._new_parent = False  # the parent run was created by this launch: no trial run exists yet

    # -- views the runner and tests use ---------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        return self.writer.tracking_uri

    @tracking_uri.setter
    def tracking_uri(self, uri: str) -> None:  # a resume that names a moved server
        self.writer.tracking_uri = uri

    @property
    def parent_run_id(self) -> str | None:
        return self.writer.parent_run_id

    @property
    def experiment_id(self) -> str | None:
        return self.writer.experiment_id

    @property
    def trials(self):
        return self.writer.trials

    def flush(self, timeout: float | None = 60.0) -> bool:
        return self.writer.flush(timeout)

    def pending_points(self) -> int:
        return self.writer.pending_points()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the callback: the stopper is its own
        d = dict(self.__dict__)
        d["_stopper"] = None
        return d

    # -- Tune's saved state ---------------------------------------------------------------------
    STATE_VERSION = StudyWriter.STATE_VERSION

    def get_state(self) -> dict[str, Any]:
        return self.writer.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.writer.set_state(state)
        self._resync = True  # the saved state may be older than MLflow: checked in setup()

    # -- Tune hooks (driver thread: queue only) ---------------------------------------------------
    def setup(self, **info: Any) -> None:
        from mlflow.entities import RunStatus

        stop = info.get("stop")
        self._stopper = stop if hasattr(stop, "calibration") and hasattr(stop, "core") else None
        w = self.writer
        c = w.client
        if w.experiment_id is None:
            exp = w.blocking(c.get_experiment_by_name, self.study_name)
            w.experiment_id = exp.experiment_id if exp else w.blocking(
                c.create_experiment, self.study_name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        w.blocking(w.write_view)  # the UI's view of the study: every trial listed, from the start
        if w.parent_run_id is None:
            run = w.blocking(c.create_run, w.experiment_id, run_name=self.study_name,
                             tags={ROLE_TAG: ROLE_STUDY, STUDY_TAG: self.study_name})
            w.parent_run_id = run.info.run_id
            self._new_parent = True
            w.blocking(w.log_params, w.parent_run_id, truncate_params(self.study_params))
        else:  # resumed launch: the same parent run continues
            self._new_parent = False
            w.blocking(c.update_run, w.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if self._resync:
            w.blocking(w.resync)
            self._resync = False
        w.start()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # an outage past max_outage_s stops the study even while no trial reports (a long epoch)
        self.writer.raise_if_failed()

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.writer.raise_if_failed()
        self._ensure_run(trial)
        self.writer.wake()  # the run appears in the UI now, not at the next interval

    def on_trial_restore(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.writer.raise_if_failed()
        self._ensure_run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any) -> None:
        self.writer.raise_if_failed()
        self._ensure_run(trial)
        placement = {t: str(result[k]) for k, t in PLACEMENT_TAGS.items() if result.get(k) is not None}
        step = None if result.get(EPOCH) is None else int(result[EPOCH])
        metrics = finite_metrics(result) if step is not None else {}
        self.writer.queue(trial.trial_id, step, metrics, placement)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.writer.raise_if_failed()
        self.writer.wake()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trial, failed=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        try:
            self._end_study(trials)
        finally:
            self.writer.pictures.close()

    def _end_study(self, trials: list) -> None:
        import pandas as pd
        from mlflow.entities import RunStatus

        w = self.writer
        # Trials that started but did not end (an interrupted study: Tune never calls
        # on_trial_complete for them): their runs end KILLED; --resume reopens them.
        interrupted = 0
        for t in trials:
            q = w.trials.get(t.trial_id)
            if q is not None and q.end is None:
                s = self.summary(t)
                w.end_trial(t.trial_id, end_tags(INTERRUPTED, INTERRUPTED, s.t_nc, s.fn_star), failed=False,
                            plot=self._plot_info(t, s, INTERRUPTED), killed=True)
                interrupted += 1
            elif q is None:  # never started: no run
                interrupted += 1
        if self.planned_trials is not None:  # planned trials Tune never created (stopped before they were)
            interrupted += max(0, self.planned_trials - len(trials))
        w.stop()  # sends everything queued, finishes every ended trial (or gives up)
        w.raise_if_failed()
        w.blocking(w.write_overview, True)  # the last overview, with every ended trial
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / SUMMARY_ARTIFACT
            pd.DataFrame([self.summary(t).row() for t in trials]).to_csv(p, index=False)
            w.blocking(w.client.log_artifact, w.parent_run_id, str(p))
        failed = any(q.end is not None and q.end.get("failed") for q in w.trials.values())
        status = RunStatus.FAILED if failed else RunStatus.KILLED if interrupted else RunStatus.FINISHED
        w.blocking(w.client.set_terminated, w.parent_run_id, RunStatus.to_string(status))

    # -- helpers ----------------------------------------------------------------------------------
    def _name(self, trial) -> str:
        q = self.writer.trials.get(trial.trial_id)
        if q is not None and q.run_name:
            return q.run_name
        return self.trial_label(trial) if self.trial_label else str(trial)

    def summary(self, trial) -> TrialSummary:
        return TrialSummary.of(trial, self._name(trial))

    def _ensure_run(self, trial) -> None:
        """The trial's queue, created on first sight; its run is created (or, on a resumed launch,
        looked up first) by the writer."""
        if trial.trial_id in self.writer.trials:
            return
        cfg = dict(trial.config)
        tags = {PARENT_TAG: self.writer.parent_run_id, ROLE_TAG: ROLE_TRIAL, TRIAL_TAG: trial.trial_id,
                STUDY_TAG: self.study_name, STATUS_TAG: "running", **(self.trial_tags(cfg) if self.trial_tags else {})}
        self.writer.add_trial(trial.trial_id, self._name(trial), {k: str(v) for k, v in tags.items()},
                              truncate_params(self.trial_params(cfg) if self.trial_params else cfg),
                              whole_history=self._new_parent)

    def _end(self, trial, failed: bool) -> None:
        self.writer.raise_if_failed()
        self._ensure_run(trial)
        s = self.summary(trial)
        stop = end_reason(s.stop_reason, failed, s.epochs_run, self._budget(dict(trial.config), trial.trial_id))
        status = "error" if failed else ("diverged" if stop == "diverged" else "completed")
        tags = end_tags(status, stop, s.t_nc, s.fn_star, forecast_tags(s))
        self.writer.end_trial(trial.trial_id, tags, failed or stop == "diverged", self._plot_info(trial, s, stop))

    # -- what the pictures need, worked out on the driver (the stopper lives here) ------------------
    def _plot_info(self, trial, s: TrialSummary, stop_reason: str) -> dict[str, Any]:
        """What the trial's picture and the study overview show of it, as plain data (it is saved
        with the writer's queue): name, group and its fn* band, searched keys, onset, forecast
        stop, objective, budget, its summary row."""
        cfg = dict(trial.config or {})
        group = self._group(cfg)
        if s.fn_star is not None:
            self._observed.setdefault(group, {})[trial.trial_id] = s.fn_star
        rule = getattr(getattr(getattr(self._stopper, "core", None), "stopper", None), "rule", None)
        last = trial.last_result or {}
        return {"title": s.trial, "group": group, "keys": searched_keys(cfg), "band": self._band(group),
                "t_nc": s.t_nc, "fn_star": s.fn_star, "stop_reason": stop_reason,
                "collapse_epoch": num(last.get(COLLAPSE_EPOCH)), "budget": self._budget(cfg, trial.trial_id),
                "epochs_run": s.epochs_run, "summary": s.row(),
                **({"strict": rule.strict, "relaxed": rule.relaxed} if rule is not None else {})}

    def _group(self, cfg: dict[str, Any]) -> str:
        core = getattr(self._stopper, "core", None)
        if core is not None:
            try:
                return str(core.group_key(cfg))
            except Exception:  # noqa: BLE001 - a picture is no reason to fail a study
                pass
        from ncstudy.forecast import default_group_key

        tags = self.trial_tags(cfg) if self.trial_tags else {}
        return default_group_key({**(self.trial_params(cfg) if self.trial_params else cfg), **tags})

    def _band(self, group: str) -> dict[str, Any] | None:
        """The group's fn* and its spread (+-2 SD): the stopper's calibration (its observed runs, else
        its prior) when a fn* stopper runs, else the fn* observed in this study's trials."""
        cal = getattr(self._stopper, "calibration", None)
        value, sd, source = None, None, ""
        if cal is not None:
            est = cal.estimate(group)
            if est.fn_star is not None:
                value = est.fn_star
                vals = [o.fn_star for o in cal.observations(group)]
                prior = cal.priors.get(group)
                if est.fn_star_source.startswith("observed"):
                    sd = statistics.stdev(vals) if len(vals) >= 2 else None
                    source = f"mean of {len(vals)} run(s)" + (" \u00b12 SD" if sd else "")
                else:
                    sd = prior.fn_star_sd if prior is not None else None
                    src = prior.source if prior is not None else "prior"
                    source = ("paper prior" if src.startswith("paper") else src) + (" \u00b12 SD" if sd else "")
        if value is None:
            vals = list(self._observed.get(group, {}).values())
            if not vals:
                return None
            value = statistics.fmean(vals)
            sd = statistics.stdev(vals) if len(vals) >= 2 else None
            source = f"{len(vals)} trial(s) of this study" + (" \u00b12 SD" if sd else "")
        lo, hi = (value - 2 * sd, value + 2 * sd) if sd else (None, None)
        return {"value": value, "low": lo if lo is None or lo > 0 else value / 2, "high": hi, "source": source}

    def _budget(self, cfg: dict[str, Any], trial_id: str) -> float | None:
        core = getattr(self._stopper, "core", None)
        if core is not None:
            try:
                b = core.budget_of(cfg, trial_id)
                if b is not None:
                    return float(b)
            except Exception:  # noqa: BLE001
                pass
        params = self.trial_params(cfg) if self.trial_params else cfg
        ce, mse = num(params.get("ce_epochs")), num(params.get("mse_epochs"))
        return None if ce is None or mse is None else ce + mse
