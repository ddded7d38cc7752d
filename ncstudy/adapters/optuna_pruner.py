"""``OnsetPruner``: the collapse-onset stopper in an Optuna search, in three lines.

    pruner = OnsetPruner(budget=EPOCHS)
    study = optuna.create_study(direction="minimize", pruner=pruner)

    def objective(trial):
        ...
        for epoch in range(1, EPOCHS + 1):
            ...                                                    # train one epoch
            if pruner.should_stop(trial, {"epoch": epoch, "phase": phase, **measure(model, loader)}):
                break
        return pruner.value(trial)                                 # forecast, observed onset, or censored

``should_stop`` forecasts the trial's onset from the record and decides by policy and mode (the
same core, defaults and decisions as :class:`~ncstudy.adapters.ray_tune.OnsetStopper`); ``value`` is
the collapse-time objective -- the observed onset, the forecast for a trial stopped at one, the
censored value of a search stop (it ranks after the incumbent), else ``2 x budget``. In a
*search* (the default when the study minimises: ``value`` is then the objective) the incumbent is the
earliest onset this pruner has seen or any completed trial of the study records (user attribute
``t_nc``, which the pruner sets), so workers sharing a study's storage share it too. Both methods
leave the forecast on the trial as user attributes (``t_nc_estimate``, ``t_nc_low``, ``t_nc_high``,
``p_onset``, ``stop_reason``), so the study and its dashboard show it. Trials that reach onset or
their budget teach the calibration at once. As an Optuna pruner it also answers
``trial.should_prune()`` after ``should_stop``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from ncstudy.adapters.metric_names import MetricNames
from ncstudy.adapters.stopper_core import OnsetStopperCore, adapter_settings
from ncstudy.deprecation import renamed_class
from ncstudy.forecast import Calibration
from ncstudy.forecast.settings import DEFAULT_FORECASTER, DEFAULT_POLICY, ForecasterName, Mode, Policy, StopperSettings
from ncstudy.onset import TERMINAL_ACC, OnsetRule
from ncstudy.records import EPOCH, FORECAST_FIELDS, STOP_REASON, T_NC, finite

#: A search reads the study's completed trials for their onsets at a trial's first record and every
#: this many records after (reading all trials costs O(trials) per call).
INCUMBENT_EVERY = 5


class OnsetPruner(BasePruner):
    """Stop (prune) trials at a forecast onset, at the observed onset, or as "no onset".

    Args:
        policy: ``stop_at_forecast`` (default), ``stop_at_onset`` or ``record`` (never stops).
        mode: ``search`` (stop what cannot beat the earliest onset so far) or ``sweep`` (stop only at
            a trusted forecast or the onset); default: ``search`` when the study minimises, else ``sweep``.
        forecaster: ``conformal`` (default), ``conformal_no_fn``, ``fn_star``, ``nc1``, ``train_loss``.
        budget: each trial's last epoch: an int, a parameter name, or ``params -> int`` (the conformal
            forecaster needs it).
        metrics: your record keys for ncstudy's names, e.g. ``{"nc1": "within_class_var"}``;
            ``{"phase": None}`` for a single-phase run.
        prior: ``"corpus"`` (ncstudy's trajectory corpus), ``"none"`` or a :class:`Calibration`.
        group_key: ``params -> str`` or parameter names; trials of a group share fn* (default:
            ``model``/``dataset`` parameters, else one group).
        rule, terminal_acc: the onset rule (strict 0.01, relaxed 0.05, phase 2) and terminal accuracy.
        learn: add trials that reach onset or their budget to the calibration.
        forecaster_options: e.g. ``{"alpha": 0.05, "coverage": 0.9, "tolerance": 40}``.
        min_observations: runs of a group before its own fn* replaces its prior.
        settings: a whole :class:`~ncstudy.forecast.settings.StopperSettings` in place of the
            arguments it holds (the ones above but budget, metrics and group_key; a Calibration
            ``prior`` still replaces its prior), which must then be left at their defaults.
    """

    def __init__(self, policy: Policy = DEFAULT_POLICY, forecaster: ForecasterName = DEFAULT_FORECASTER, *,
                 mode: Mode | None = None, budget: int | str | Callable[[Mapping[str, Any]], int] | None = None,
                 metrics: MetricNames | Mapping[str, str | None] | None = None, prior: str | Calibration = "corpus",
                 group_key: Callable[[Mapping[str, Any]], str] | Sequence[str] | None = None,
                 rule: OnsetRule = OnsetRule(), terminal_acc: float = TERMINAL_ACC, learn: bool = True,
                 forecaster_options: Mapping[str, Any] | None = None, min_observations: int = 3,
                 settings: StopperSettings | None = None) -> None:
        where = type(self).__name__
        settings = adapter_settings(
            where, settings, policy=policy, forecaster=forecaster, mode=mode, objective=None, rule=rule,
            prior=prior if isinstance(prior, str) else "corpus", terminal_acc=terminal_acc, learn=learn,
            min_observations=min_observations, options=dict(forecaster_options or {}))
        self.mode = settings.mode  # None: decided by the first study's direction
        self._seen: dict[str, int] = {}  # trial -> records seen (when to read the study's incumbent again)
        # the value is the objective (pruner.value): the core fills in none
        self.core = OnsetStopperCore(settings.model_copy(update={"mode": settings.mode or "sweep", "objective": None}),
                                     calibration=prior if isinstance(prior, Calibration) else None, budget=budget,
                                     metrics=metrics, group_key=group_key, where=where)

    @property
    def calibration(self) -> Calibration:
        return self.core.stopper.calibration

    def should_stop(self, trial: optuna.trial.Trial, record: Mapping[str, Any]) -> bool:
        """Record one evaluation of ``trial``; True when the policy stops it (then return
        :meth:`value`)."""
        tid, params = str(trial.number), dict(trial.params)
        stopper = self.core.stopper
        if self.mode is None:  # the study minimises the value this pruner gives: a search for the fastest collapse
            self.mode = "search" if trial.study.direction == optuna.study.StudyDirection.MINIMIZE else "sweep"
            stopper.mode = self.core.mode = self.mode
        seen = self._seen.get(tid, 0)
        self._seen[tid] = seen + 1
        if self.mode == "search" and seen % INCUMBENT_EVERY == 0:  # other workers' onsets, now and then
            for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                stopper.offer_incumbent(t.user_attrs.get(T_NC))
        result = dict(record)
        stop = self.core.observe(tid, result, params)
        budget = self.core.budget_of(params, tid)
        epoch = self.core.record(result).get(EPOCH)
        if stop or (budget is not None and finite(epoch) and float(epoch) >= budget):
            self._finish(trial, result)
        return stop

    def value(self, trial: optuna.trial.Trial) -> float:
        """The trial's collapse-time objective (see the module docs); also ends the trial's record."""
        tid = str(trial.number)
        v = self.core.value(tid, self.core.budget_of(dict(trial.params), tid) if self.core.budget else None)
        m = self.core.stopper.monitors.get(tid)
        if m is not None and m.final_reason is None:
            self._finish(trial, m.fields())
        return v

    def _finish(self, trial: optuna.trial.Trial, result: Mapping[str, Any]) -> None:
        tid = str(trial.number)
        m = self.core.stopper.monitors.get(tid)
        if m is None:
            return
        reason = self.core.stopper.complete(tid)
        for k in FORECAST_FIELDS:
            v = result.get(k)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                trial.set_user_attr(k, float(v))
        trial.set_user_attr(STOP_REASON, reason)
        if m.tracker.t_strict is not None:  # an observed onset: what other workers' incumbent reads
            trial.set_user_attr(T_NC, int(m.tracker.t_strict))

    # -- Optuna's pruner interface ----------------------------------------------------------------------
    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        """``trial.should_prune()`` after :meth:`should_stop`: whether the policy stopped the trial."""
        m = self.core.stopper.monitors.get(str(trial.number))
        return m is not None and m.stop_reason is not None


#: The former name (constructing it warns, naming :class:`OnsetPruner`).
FnStarPruner = renamed_class(OnsetPruner, "FnStarPruner")
