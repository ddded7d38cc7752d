"""``FnStarPruner``: the forecast-driven stopper as an Optuna pruner.

Where the evaluation history comes from (``source``):

* ``"user_attrs"`` (default): every evaluation is a user attribute ``fnstar.e<epoch>`` holding
  the record (``epoch``, ``phase``, ``train``, ``feat_norm``, ``nc1``, ``train_loss``; metric
  names configurable). Intermediate values stay free for the objective (and other tools).
* ``"intermediate_values"``: the intermediate value at ``step = epoch`` is the feature norm;
  the other keys, when reported, come from the same ``fnstar.e<epoch>`` user attributes.

``FnStarPruner.report(trial, record)`` writes a record the configured way; then call
``trial.should_prune()``. Optuna passes the pruner a frozen copy of the trial, so the pruner
keeps its forecasts in memory (``trial_forecast(trial.number)``, ``forecast_onset(...)``) and
learns its calibration from the study's finished trials (COMPLETE or PRUNED) whose history
reached strict onset -- which also works across processes sharing one storage.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from ncstudy.forecast import Calibration, ForecastStopper, Prior, default_group_key
from ncstudy.forecast.core import MissingMetricError
from ncstudy.forecast.stopper import TrialForecast
from ncstudy.onset import OnsetRule
from ncstudy.records import EPOCH, FN, LOSS, NC1, PHASE, TERMINAL, TRAIN, finite

SOURCES = ("user_attrs", "intermediate_values")
_KEYS = (EPOCH, PHASE, TRAIN, FN, NC1, LOSS, TERMINAL)


class FnStarPruner(BasePruner):
    """Prune (= stop) a trial by the same policies as :class:`FnStarScheduler`.

    Args:
        policy: ``record`` (never prunes; forecasts only), ``stop_at_forecast``, ``stop_at_onset``.
        forecaster: ``fn_star``, ``nc1`` or ``train_loss``.
        source: ``user_attrs`` or ``intermediate_values`` (see module docs).
        metrics: record-key renames, e.g. ``{"feat_norm": "fn"}`` (keys of :data:`_KEYS`).
        group_key: ``mapping -> str`` over the trial's params merged with its (non-fnstar) user
            attributes; default model + dataset (``"default"`` when neither is present).
    """

    def __init__(self, policy: str = "stop_at_forecast", forecaster: str = "fn_star", *,
                 source: str = "user_attrs", metrics: Mapping[str, str] | None = None,
                 calibration: Calibration | None = None, priors: Mapping[str, Prior] | None = None,
                 min_observations: int = 3, group_key: Callable[[Mapping[str, Any]], str] | None = None,
                 rule: OnsetRule = OnsetRule(), terminal_acc: float = 0.99, learn: bool = True,
                 forecaster_options: Mapping[str, Any] | None = None, attr_prefix: str = "fnstar.e") -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}")
        unknown = set(metrics or {}) - set(_KEYS)
        if unknown:
            raise ValueError(f"unknown metric key(s) {', '.join(sorted(unknown))}; known: {', '.join(_KEYS)}")
        if calibration is None:
            calibration = Calibration(priors, min_observations=min_observations)
        elif priors:
            for g, p in priors.items():
                calibration.set_prior(g, p)
        self.stopper = ForecastStopper(policy, forecaster, calibration, rule, terminal_acc, learn, forecaster_options)
        self.source, self.prefix = source, attr_prefix
        self.names = {k: k for k in _KEYS} | dict(metrics or {})
        self.group_key = group_key or default_group_key
        self._finished: set[int] = set()

    @property
    def calibration(self) -> Calibration:
        return self.stopper.calibration

    # -- reporting helper ----------------------------------------------------------------------
    def report(self, trial: optuna.trial.Trial, record: Mapping[str, Any]) -> None:
        """Store one evaluation record (with the configured metric names) on ``trial``."""
        n = self.names
        if n[EPOCH] not in record:
            raise ValueError(f"record needs '{n[EPOCH]}'")
        epoch = int(record[n[EPOCH]])
        if self.source == "intermediate_values":
            if n[FN] not in record:
                raise MissingMetricError(f"FnStarPruner: trial {trial.number} reported epoch {epoch} without "
                                         f"the feature-norm metric '{n[FN]}'")
            trial.report(float(record[n[FN]]) if finite(record[n[FN]]) else math.nan, epoch)
        clean = {k: (float(v) if finite(v) else None) for k, v in record.items()
                 if isinstance(v, (int, float)) or v is None or hasattr(v, "dtype")}
        trial.set_user_attr(f"{self.prefix}{epoch:07d}", clean)

    # -- Optuna hook ---------------------------------------------------------------------------
    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.number not in self._finished and t.number != trial.number:
                self._sync(t)
                self.stopper.complete(str(t.number))
                self._finished.add(t.number)
        m = self._sync(trial)
        return m is not None and m.stop_reason is not None

    def __call__(self, study: optuna.study.Study, trial: FrozenTrial) -> None:
        """Use as ``study.optimize(..., callbacks=[pruner])`` to finalise a trial's annotations
        (stop reason, learning) as soon as it finishes instead of at the next ``prune`` call."""
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and trial.number not in self._finished:
            self._sync(trial)
            self.stopper.complete(str(trial.number))
            self._finished.add(trial.number)

    # -- queries -------------------------------------------------------------------------------
    def trial_forecast(self, trial_number: int) -> TrialForecast | None:
        """As :meth:`FnStarScheduler.trial_forecast`: the trial's forecast and stop reason."""
        return self.stopper.state(str(trial_number))

    def forecast_onset(self, trial_number: int) -> float | None:
        """The onset a trial's stop rests on: the acted-on forecast, else the observed strict
        T_NC, else the latest forecast; None when there is none. Return it from the objective
        instead of raising ``TrialPruned`` when the objective is collapse time."""
        m = self.stopper.monitors.get(str(trial_number))
        if m is None:
            return None
        if m.stop_reason == "onset" and m.tracker.t_strict is not None:
            return float(m.tracker.t_strict)
        fc = m.acted or m.latest
        return None if fc is None else float(fc.onset)

    # -- internals -----------------------------------------------------------------------------
    def _history(self, trial: FrozenTrial) -> list[dict[str, Any]]:
        n = self.names
        inv = {v: k for k, v in n.items()}
        by_epoch: dict[int, dict[str, Any]] = {}
        for key, val in trial.user_attrs.items():
            if key.startswith(self.prefix) and isinstance(val, Mapping):
                rec = {inv[k]: v for k, v in val.items() if k in inv}
                if finite(rec.get(EPOCH)):
                    by_epoch[int(rec[EPOCH])] = rec
        if self.source == "intermediate_values":
            for step, v in trial.intermediate_values.items():
                by_epoch.setdefault(int(step), {EPOCH: int(step)})[FN] = v
        elif by_epoch and any(FN not in r for r in by_epoch.values()):
            e = min(e for e, r in by_epoch.items() if FN not in r)
            raise MissingMetricError(f"FnStarPruner: trial {trial.number} reported epoch {e} without the feature-norm "
                           f"metric '{n[FN]}'")
        return [by_epoch[e] for e in sorted(by_epoch)]

    def _group(self, trial: FrozenTrial) -> str:
        ctx = dict(trial.params)
        ctx.update({k: v for k, v in trial.user_attrs.items() if not k.startswith(self.prefix)})
        return self.group_key(ctx)

    def _sync(self, trial: FrozenTrial):
        hist = self._history(trial)
        if not hist:
            return self.stopper.monitors.get(str(trial.number))
        m = self.stopper.monitor(str(trial.number), self._group(trial))
        for rec in hist:
            if m.last_epoch is None or rec[EPOCH] > m.last_epoch:
                self.stopper.observe(str(trial.number), rec, m.group)
        return m
