"""``FnStarScheduler``: a Ray Tune ``FIFOScheduler`` that forecasts collapse onset per trial and,
by policy, stops trials at the forecast or at the onset.

Tune contract (checked against ``ray/tune/execution/tune_controller.py``, Ray 2.60):

* ``on_trial_result`` receives a *flattened copy* of the reported result and returns CONTINUE or
  STOP; ``search_alg.on_trial_result`` is not called for a result that is answered with STOP.
* A STOP leads to ``stop_trial``, which calls ``scheduler.on_trial_complete(trial,
  flatten(trial.last_result))`` and then ``search_alg.on_trial_complete(trial_id,
  flatten(trial.last_result))`` -- a *new* flattened copy of ``trial.last_result``. So the
  scheduler makes the searcher see the forecast onset by writing the objective into
  ``trial.last_result`` inside ``on_trial_complete`` (callbacks' ``on_trial_complete``, e.g. the
  MLflow callback, run after that and see it too).
* The result that ends a trial naturally (``done``) is not passed to ``on_trial_result``; it
  arrives in ``on_trial_complete``.
* Tune never calls ``TrialScheduler.save/restore`` and pickles the scheduler only as configured
  at the start (``tuner.pkl``). The scheduler therefore keeps a JSON sidecar
  (``fnstar_scheduler_state.json``) in the experiment's driver staging directory, which Tune
  uploads with its experiment state and downloads again before re-adding trials on resume; the
  first hook after a resume reloads it (calibration + per-trial histories).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ncstudy.forecast import Calibration, ForecastStopper, Prior, default_group_key, group_key_from
from ncstudy.forecast.core import MissingMetricError
from ncstudy.forecast.stopper import TrialForecast
from ncstudy.onset import OnsetRule
from ncstudy.records import EPOCH, FN, LOSS, NC1, PHASE, TERMINAL, TRAIN, finite

logger = logging.getLogger(__name__)

SIDECAR_NAME = "fnstar_scheduler_state.json"


class MetricNames(BaseModel):
    """Names of the reported metrics the scheduler reads (only ``feat_norm`` is required)."""

    model_config = ConfigDict(extra="forbid")
    feat_norm: str = Field("feat_norm", description="mean feature norm fn (NaN before terminal is fine)")
    epoch: str = Field("epoch", description="global epoch; 'training_iteration' is used when absent")
    phase: str = Field("phase", description="1 = CE, 2 = MSE (optional)")
    nc1: str = Field("nc1", description="NC1 (optional; needed for onset and stop_at_onset)")
    train: str = Field("train", description="training accuracy (optional; terminal >= 0.99)")
    train_loss: str = Field("train_loss", description="training loss (optional; train_loss forecaster)")
    terminal: str = Field("terminal", description="explicit terminal flag 0/1 (optional)")


class FnStarScheduler(FIFOScheduler):
    """Forecast collapse onset for every trial; stop by ``policy``.

    Args:
        policy: ``record`` (forecast only), ``stop_at_forecast`` (STOP at the first trusted
            forecast, or at strict onset if that comes first), ``stop_at_onset``.
        forecaster: ``fn_star`` (default), ``conformal``, ``conformal_no_fn``, ``nc1`` or ``train_loss``.
        budget: each trial's full budget in epochs (an int, or ``config -> int``); the conformal
            forecaster needs it.
        metrics: :class:`MetricNames` or a dict overriding some names.
        calibration: a :class:`~ncstudy.forecast.Calibration` to start from (priors,
            observations); else one is built from ``priors`` / ``min_observations``.
        group_key: callable ``config -> str`` or a list of dotted config keys; default
            ``model.name``/``model`` + ``data.name``/``dataset``.
        objective: name of the searcher's collapse-time metric (e.g. ``"t_nc"``); when set,
            a trial stopped at a forecast ends with ``objective = forecast onset`` and one stopped
            at onset with the observed T_NC, so a searcher (e.g. Optuna TPE) is not misled.
        learn: add each trial that reaches strict onset to its group's calibration.
        state_path: sidecar path; default ``<experiment driver dir>/fnstar_scheduler_state.json``.
        forecaster_options: keyword options of the forecaster (``margin``, ``confirm``,
            ``phases``, ``window``, ``r2_min``, ...).
    """

    _supports_buffered_results = False  # decide on every single result

    def __init__(self, policy: str = "record", forecaster: str = "fn_star", *,
                 metrics: MetricNames | Mapping[str, str] | None = None, calibration: Calibration | None = None,
                 priors: Mapping[str, Prior] | None = None, min_observations: int = 3,
                 group_key: Callable[[Mapping[str, Any]], str] | Sequence[str] | None = None,
                 objective: str | None = None, rule: OnsetRule = OnsetRule(), terminal_acc: float = 0.99,
                 learn: bool = True, state_path: str | os.PathLike | None = None,
                 forecaster_options: Mapping[str, Any] | None = None, save_interval_s: float = 2.0,
                 budget: int | Callable[[Mapping[str, Any]], int] | None = None) -> None:
        super().__init__()
        self.budget = budget
        if calibration is None:
            calibration = Calibration(priors, min_observations=min_observations)
        elif priors:
            for g, p in priors.items():
                calibration.set_prior(g, p)
        self.metrics = metrics if isinstance(metrics, MetricNames) else MetricNames(**dict(metrics or {}))
        self.stopper = ForecastStopper(policy, forecaster, calibration, rule, terminal_acc, learn, forecaster_options)
        if group_key is None:
            self.group_key: Callable[[Mapping[str, Any]], str] = default_group_key
        elif callable(group_key):
            self.group_key = group_key
        else:
            self.group_key = group_key_from(list(group_key))
        self.objective = objective
        self.state_path: Path | None = Path(state_path) if state_path is not None else None
        self.save_interval_s = float(save_interval_s)
        self._loaded = False
        self._last_save = 0.0
        self._search_metric: str | None = None
        self._search_mode: str | None = None

    # -- properties ----------------------------------------------------------------------------
    @property
    def policy(self) -> str:
        return self.stopper.policy

    @property
    def calibration(self) -> Calibration:
        return self.stopper.calibration

    # -- Tune hooks ----------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        """Remember the searcher's metric/mode (the scheduler does not rank trials itself)."""
        self._search_metric, self._search_mode = metric, mode
        return super().set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._ensure_loaded(trial)
        self.stopper.monitor(trial.trial_id, self.group_key(trial.config or {}), self._budget(trial))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._ensure_loaded(trial)
        record = self._record(trial, result)
        group = self.group_key(trial.config or {})
        before = len(self.stopper.calibration.observations(group))
        decision = self.stopper.observe(trial.trial_id, record, group, self._budget(trial))
        learnt = len(self.stopper.calibration.observations(group)) != before
        self._save(force=decision.stop or learnt)
        return TrialScheduler.STOP if decision.stop else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._ensure_loaded(trial)
        m = self.stopper.monitor(trial.trial_id, self.group_key(trial.config or {}), self._budget(trial))
        # the final ("done") result never went through on_trial_result
        if result and self.metrics.feat_norm in result and m.stop_reason is None:
            rec = self._record(trial, result)
            if finite(rec.get(EPOCH)) and (m.last_epoch is None or int(float(rec[EPOCH])) > m.last_epoch):
                self.stopper.observe(trial.trial_id, rec, m.group)
        reported = result.get("stop_reason") if result else None  # e.g. the trainer's "diverged"
        self.stopper.complete(trial.trial_id, reported if isinstance(reported, str) and reported else None)
        if self.objective:
            value = self._objective_value(trial.trial_id)
            if value is not None:
                _set_path(trial.last_result, self.objective, value)
                if isinstance(result, dict):
                    result[self.objective] = value
        self._save(force=True)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._ensure_loaded(trial)
        self.stopper.complete(trial.trial_id, "error")
        self._save(force=True)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._save(force=True)

    def debug_string(self) -> str:
        reasons: dict[str, int] = {}
        for m in self.stopper.monitors.values():
            r = m.final_reason or m.stop_reason or "running"
            reasons[r] = reasons.get(r, 0) + 1
        cal = "; ".join(self.calibration.estimate(g).describe() for g in self.calibration.groups()) or "empty"
        return (f"FnStarScheduler(policy={self.policy}, forecaster={self.stopper.forecaster}): "
                f"trials {reasons}; calibration: {cal}")

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.stopper.to_dict()))

    def restore(self, checkpoint_path: str) -> None:
        self.stopper.load_dict(json.loads(Path(checkpoint_path).read_text()))
        self._loaded = True

    # -- public query API (MLflow callback, progress table) --------------------------------------
    def trial_forecast(self, trial_id: str) -> TrialForecast | None:
        """What the scheduler knows of a trial: its forecast and stop reason (None if never seen)."""
        return self.stopper.state(trial_id)

    # -- internals -----------------------------------------------------------------------------
    def _budget(self, trial) -> int | None:
        """The trial's full budget in epochs (the conformal forecaster needs it)."""
        if callable(self.budget):
            return int(self.budget(trial.config or {}))
        return None if self.budget is None else int(self.budget)

    def _objective_value(self, trial_id: str) -> float | None:
        """The collapse-time objective of a trial this scheduler stopped (None otherwise: then the
        trial's own report stands)."""
        m = self.stopper.monitors.get(str(trial_id))
        if m is None:
            return None
        if m.stop_reason == "forecast" and m.acted is not None:
            return float(m.acted.onset)
        if m.stop_reason == "onset" and m.tracker.t_strict is not None:
            return float(m.tracker.t_strict)
        return None

    def _record(self, trial, result: Mapping[str, Any]) -> dict[str, Any]:
        n = self.metrics
        if n.feat_norm not in result:
            keys = sorted(k for k in result if not k.startswith(("config/", "_")))
            raise MissingMetricError(
                f"FnStarScheduler: trial {trial.trial_id} reported a result without the feature-norm "
                f"metric '{n.feat_norm}' (reported keys: {', '.join(keys)}). Report it at every "
                f"evaluation (NaN while undefined) or set metrics={{'feat_norm': '<your key>'}}.")
        epoch = result.get(n.epoch)
        if not finite(epoch):
            epoch = result.get("training_iteration")
        rec = {EPOCH: epoch, FN: result.get(n.feat_norm), PHASE: result.get(n.phase), NC1: result.get(n.nc1),
               TRAIN: result.get(n.train), LOSS: result.get(n.train_loss), TERMINAL: result.get(n.terminal)}
        return {k: v for k, v in rec.items() if v is not None}

    def _sidecar(self, trial) -> Path | None:
        if self.state_path is None:
            base = getattr(trial, "local_experiment_path", None)
            if base:
                self.state_path = Path(base) / SIDECAR_NAME
        return self.state_path

    def _ensure_loaded(self, trial) -> None:
        if self._loaded:
            return
        self._loaded = True
        p = self._sidecar(trial)
        if p is not None and p.is_file():
            try:
                self.stopper.load_dict(json.loads(p.read_text()))
                logger.info("FnStarScheduler: restored %d trials from %s", len(self.stopper.monitors), p)
            except (ValueError, KeyError) as e:
                raise ValueError(f"FnStarScheduler: cannot read its state file {p}: {e}") from e

    def _save(self, force: bool = False) -> None:
        if self.state_path is None:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.save_interval_s:
            return
        self._last_save = now
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.stopper.to_dict()))
        tmp.replace(self.state_path)


def _set_path(d: dict, dotted: str, value: Any) -> None:
    """Set ``d[a][b] = value`` for ``"a/b"`` (Tune's flattening delimiter), or ``d[key]``."""
    if dotted in d or "/" not in dotted:
        d[dotted] = value
        return
    parts = dotted.split("/")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = cur[p] = {}
        cur = nxt
    cur[parts[-1]] = value
