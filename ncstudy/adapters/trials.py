"""A typed view of one Tune trial: the summary the progress table, ``summary.csv`` and a trial's
end tags are all made from (one computation, not one per consumer). The forecast comes from the
trial's own results (a stopper writes it there)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ncstudy.records import (
    EPOCH,
    FN,
    FN_STAR,
    FORECAST_EPOCH,
    NC1,
    P_ONSET,
    PHASE,
    STOP_REASON,
    T_NC,
    T_NC_ESTIMATE,
    T_NC_HIGH,
    T_NC_LOW,
    TEST,
    num,
)


class TrialLike(Protocol):  # what is read of a ``ray.tune.experiment.Trial``
    trial_id: str
    status: str
    last_result: dict[str, Any]
    config: dict[str, Any]


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
    t_nc_estimate: float | None  # forecast (or observed) onset
    t_nc_low: float | None
    t_nc_high: float | None
    p_onset: float | None
    forecast_epoch: float | None  # when the onset forecast acted on was made
    final_nc1: float | None
    final_feat_norm: float | None
    test: float | None

    @classmethod
    def of(cls, trial: TrialLike, name: str) -> "TrialSummary":
        r = trial.last_result or {}
        reason = r.get(STOP_REASON) or None
        epoch, phase = num(r.get(EPOCH)), num(r.get(PHASE))
        return cls(name, trial.trial_id, trial.status, None if epoch is None else int(epoch),
                   None if phase is None else int(phase), num(r.get(T_NC)), num(r.get(FN_STAR)),
                   reason if isinstance(reason, str) else None, num(r.get(T_NC_ESTIMATE)), num(r.get(T_NC_LOW)),
                   num(r.get(T_NC_HIGH)), num(r.get(P_ONSET)), num(r.get(FORECAST_EPOCH)),
                   num(r.get(NC1)), num(r.get(FN)), num(r.get(TEST)))

    @property
    def forecast(self) -> str:
        """The stopper's forecast where one was made: the one a stop rests on (a collapse forecast
        and its interval, "no onset", or the bound a search stop put on the onset), else, while the
        trial runs before its onset, the latest forecast; "" otherwise (the observed T_NC is its own
        column)."""
        r, est, lo, hi = self.stop_reason, self.t_nc_estimate, self.t_nc_low, self.t_nc_high
        if r == "forecast" and est is not None:
            return f"{est:g}" + (f" [{lo:g}, {hi:g}]" if lo is not None and hi is not None else "")
        if r == "no_onset_forecast":
            return "no onset" + (f" (p {self.p_onset:.2f})" if self.p_onset is not None else "")
        if r in ("cannot_win", "capped") and lo is not None:
            return f"> {lo - 1:g}"
        if r is None and self.t_nc is None and est is not None:
            return f"{est:g}"
        return ""

    def row(self) -> dict[str, Any]:
        """The ``summary.csv`` row (also what the progress table shows)."""
        d = asdict(self)
        d["stop_reason"] = d["stop_reason"] or ""
        d["forecast"] = self.forecast
        return d
