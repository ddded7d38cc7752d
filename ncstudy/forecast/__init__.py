"""Collapse-onset forecasting (pure Python: numpy/scipy, no Ray/Optuna/MLflow).

* :class:`Forecast`, the :class:`Forecaster` protocol (``observe(record) -> Forecast | None``);
* forecasters :class:`FnStarCrossing`, :class:`NC1Extrapolation`, :class:`TrainLossExtrapolation`;
* :class:`Calibration` (per group: fn* mean, lead median, priors, JSON);
* :class:`ForecastStopper` / :class:`TrialMonitor` (policies ``record``, ``stop_at_forecast``,
  ``stop_at_onset``; modes ``search`` and ``sweep``), the core of the Ray stopper and the Optuna pruner;
* :mod:`.settings`: the stopper's and each forecaster's settings, defined once;
* :func:`paper_insample_rule` (the paper's width-sweep rule) and :func:`replay`.

See ``docs/forecast.md``.
"""
from .calibration import (
                          PAPER_PRIORS,
                          Calibration,
                          Estimate,
                          LevelEstimate,
                          Observation,
                          Prior,
                          default_group_key,
                          group_key_from,
                          observation_from_records,
)
from .forecasters import FORECASTERS, FnStarCrossing, NC1Extrapolation, TrainLossExtrapolation, make_forecaster
from .insample import InSampleRun, LogLogFit, crossing_epoch, lead_statistics, loglog_fit, paper_insample_rule
from .protocol import Forecast, Forecaster, MissingMetricError, TerminalGate, first_crossing
from .replay import (
                          CALIBRATION_MODES,
                          ReplayResult,
                          ReplaySummary,
                          RunReplay,
                          calibration_from_trajectories,
                          format_runs,
                          format_summaries,
                          priors_from_trajectories,
                          replay,
                          replay_run,
                          summarize,
)
from .settings import (
                          FORECASTER_SETTINGS,
                          MODES,
                          POLICIES,
                          ConformalSettings,
                          ExtrapolationSettings,
                          FnStarSettings,
                          StopperSettings,
                          default_mode,
)
from .stopper import (
                          CANNOT_WIN_STOP,
                          CAPPED_STOP,
                          FORECAST_STOP,
                          NO_ONSET_STOP,
                          ONSET_STOP,
                          Decision,
                          ForecastStopper,
                          TrialForecast,
                          TrialMonitor,
)
from .synthetic import synthetic_trajectory

__all__ = [
    "PAPER_PRIORS", "Calibration", "Estimate", "LevelEstimate", "Observation", "Prior", "default_group_key",
    "group_key_from", "observation_from_records", "Forecast", "Forecaster", "MissingMetricError", "TerminalGate",
    "first_crossing",
    "FORECASTERS", "FnStarCrossing", "NC1Extrapolation", "TrainLossExtrapolation", "make_forecaster",
    "InSampleRun", "LogLogFit", "crossing_epoch", "lead_statistics", "loglog_fit", "paper_insample_rule",
    "CALIBRATION_MODES", "calibration_from_trajectories", "priors_from_trajectories", "ReplayResult",
    "ReplaySummary", "RunReplay", "format_runs", "format_summaries", "replay", "replay_run", "summarize",
    "FORECASTER_SETTINGS", "MODES", "POLICIES", "ConformalSettings", "ExtrapolationSettings", "FnStarSettings",
    "StopperSettings", "default_mode", "CANNOT_WIN_STOP", "CAPPED_STOP", "FORECAST_STOP", "NO_ONSET_STOP", "ONSET_STOP",
    "Decision", "ForecastStopper", "TrialForecast", "TrialMonitor", "synthetic_trajectory",
]

# Names that moved to ncstudy.runs (issue 26): read from here, with a warning naming the new one.
_MOVED = {"Trajectory": "ncstudy.runs.Run", "load_logs": "ncstudy.runs.load_runs",
          "load_corpus": "ncstudy.runs.load_corpus", "read_manifest": "ncstudy.runs.read_manifest"}


def __getattr__(name: str) -> object:
    new = _MOVED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    from ncstudy.deprecation import warn_renamed

    warn_renamed(f"ncstudy.forecast.{name}", new)
    home = "ncstudy.forecast.trajectories" if name in ("Trajectory", "load_logs") else "ncstudy.runs"
    return getattr(importlib.import_module(home), name)
