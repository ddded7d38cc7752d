"""Collapse-onset forecasting (pure Python: numpy/scipy, no Ray/Optuna/MLflow).

* :class:`Forecast`, the :class:`Forecaster` protocol (``observe(record) -> Forecast | None``);
* forecasters :class:`FnStarCrossing`, :class:`NC1Extrapolation`, :class:`TrainLossExtrapolation`;
* :class:`Calibration` (per group: fn* mean, lead median, priors, JSON);
* :class:`ForecastStopper` / :class:`TrialMonitor` (policies ``record``, ``stop_at_forecast``,
  ``stop_at_onset``), the core of the Ray scheduler and the Optuna pruner;
* :func:`paper_insample_rule` (the paper's width-sweep rule) and :func:`replay`.

See ``docs/forecast.md``.
"""
from .calibration import (PAPER_PRIORS, Calibration, Estimate, LevelEstimate, Observation, Prior,
                          default_group_key, group_key_from, observation_from_records)
from .core import Forecast, Forecaster, MissingMetricError, TerminalGate, first_crossing
from .forecasters import FORECASTERS, FnStarCrossing, NC1Extrapolation, TrainLossExtrapolation, make_forecaster
from .insample import InSampleRun, LogLogFit, crossing_epoch, lead_statistics, loglog_fit, paper_insample_rule
from .replay import (CALIBRATION_MODES, ReplayResult, ReplaySummary, RunReplay, Trajectory,
                     calibration_from_trajectories, format_runs, format_summaries, load_reference_logs,
                     priors_from_trajectories, replay, replay_run, summarize)
from .reference import is_mnist_mlp5, reference_meta
from .stopper import POLICIES, Decision, ForecastStopper, TrialMonitor
from .synthetic import synthetic_trajectory

__all__ = [
    "PAPER_PRIORS", "Calibration", "Estimate", "LevelEstimate", "Observation", "Prior", "default_group_key",
    "group_key_from", "observation_from_records", "Forecast", "Forecaster", "MissingMetricError", "TerminalGate", "first_crossing",
    "FORECASTERS", "FnStarCrossing", "NC1Extrapolation", "TrainLossExtrapolation", "make_forecaster",
    "InSampleRun", "LogLogFit", "crossing_epoch", "lead_statistics", "loglog_fit", "paper_insample_rule",
    "CALIBRATION_MODES", "calibration_from_trajectories", "priors_from_trajectories", "ReplayResult", "ReplaySummary", "RunReplay", "Trajectory", "format_runs",
    "format_summaries", "load_reference_logs", "replay", "replay_run", "summarize", "is_mnist_mlp5",
    "reference_meta", "POLICIES", "Decision", "ForecastStopper", "TrialMonitor", "synthetic_trajectory",
]
