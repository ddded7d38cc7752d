"""A typed view of one Tune trial: the summary the progress table, ``summary.csv`` and a trial's
end tags are all made from (one computation, not one per consumer)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

from ncstudy.forecast.stopper import TrialForecast
from ncstudy.records import EPOCH, FN, FN_STAR, NC1, PHASE, STOP_REASON, T_NC, TEST, num


class TrialLike(Protocol):  # what is read of a ``ray.tune.experiment.Trial``
    trial_id: str
    status: str
    last_result: dict[str, Any]
    config: dict[str, Any]


#: ``trial_id -> TrialForecast | None``: what a stopper knows of a trial (e.g. ``FnStarScheduler.trial_forecast``).
ForecastLookup = Callable[[str], "TrialForecast | None"]


@dataclass(frozen=True)
class TrialSummary:
    trial: str  # readable name
    trial_id: str
    status: str  # Tune's: PENDING, RUNNING, TERMINATED, ERROR
    epochs_run: int | None  # last evaluated epoch
    phase: int | None
    t_nc: float | None  # observed strict onset
    fn_star: float | None
    stop_reason: str | None  # None while running
    forecast_onset: float | None
    final_nc1: float | None
    final_feat_norm: float | None
    test: float | None

    @classmethod
    def of(cls, trial: TrialLike, name: str, forecast: TrialForecast | None = None) -> "TrialSummary":
        r = trial.last_result or {}
        reason = (forecast.stop_reason if forecast is not None else None) or r.get(STOP_REASON) or None
        epoch, phase = num(r.get(EPOCH)), num(r.get(PHASE))
        return cls(name, trial.trial_id, trial.status, None if epoch is None else int(epoch),
                   None if phase is None else int(phase), num(r.get(T_NC)), num(r.get(FN_STAR)), reason,
                   None if forecast is None else forecast.onset, num(r.get(NC1)), num(r.get(FN)), num(r.get(TEST)))

    def row(self) -> dict[str, Any]:
        """The ``summary.csv`` row (also what the progress table shows)."""
        d = asdict(self)
        d["stop_reason"] = d["stop_reason"] or ""
        return d
