"""The metric vocabulary: what one evaluation record holds, under one name each.

Every layer speaks it -- the trainer's records, :class:`~ncstudy.metrics.NCAccumulator`, the
forecasters, both adapters, replay, the MLflow layout and the reference log format -- so a key
means the same thing everywhere. :data:`ALIASES` maps names other tools use (``fn``,
``train_acc``, ``loss``) to it; :func:`canonical` applies them.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

# -- the reference-log columns (../shared/reference/README.md), in file order ------------------
EPOCH = "epoch"  # global epoch (phase-2 epochs continue the count)
PHASE = "phase"  # 1 = cross-entropy, 2 = MSE on one-hot targets
TRAIN = "train"  # training accuracy
TEST = "test"  # test accuracy
NC1, NC2, NC3 = "nc1", "nc2", "nc3"  # paper forms
FN = "feat_norm"  # fn: mean L2 norm of the uncentred penultimate feature
REFERENCE_COLUMNS = [EPOCH, PHASE, TRAIN, TEST, NC1, NC2, NC3, FN]

# -- what ncstudy adds -------------------------------------------------------------------------
STANDARD_NC = ("nc1_papyan", "equinorm_means", "equinorm_weights", "etf_distance", "self_duality", "nc4")
LOSS = "train_loss"  # mean training loss of the epoch (CE in phase 1, MSE in phase 2)
GRAD_NORM = "grad_norm"  # mean over the epoch's steps of the total gradient L2 norm
WEIGHT_NORM = "weight_norm"  # L2 norm of all parameters
CLASSIFIER_WEIGHT_NORM = "classifier_weight_norm"  # Frobenius norm of the classifier's weight
OPTIMISATION = (LOSS, GRAD_NORM, WEIGHT_NORM, CLASSIFIER_WEIGHT_NORM)
LR = "lr"
TERMINAL = "terminal"  # 0/1: train accuracy has reached the terminal level (never unset)
ELAPSED = "elapsed_s"
T_NC = "t_nc"  # strict onset epoch once reached (NaN before)
FN_STAR = "fn_star"  # fn at T_NC
COLLAPSE_EPOCH = "collapse_epoch"  # the collapse-time objective (see ncstudy.study.trainable)
STOP_REASON = "stop_reason"
# What a stopper writes into every result of a trial it follows (Ray Tune) or onto the trial (Optuna):
T_NC_ESTIMATE = "t_nc_estimate"  # the onset: the acted-on or latest forecast, or the observed T_NC once reached
T_NC_LOW, T_NC_HIGH = "t_nc_low", "t_nc_high"  # the stated interval
P_ONSET = "p_onset"  # P(onset <= budget)
FORECAST_EPOCH = "forecast_epoch"  # when the forecast of an onset acted on was made (lead = T_NC - this)
FORECAST_FIELDS = (T_NC_ESTIMATE, T_NC_LOW, T_NC_HIGH, P_ONSET, FORECAST_EPOCH)
STOP_REASONS = ("onset", "forecast", "no_onset_forecast", "cannot_win", "capped", "budget", "diverged", "error",
                "interrupted", "scheduler")
#: A trial that Tune ended (a scheduler: ASHA, median stopping, PBT) with no reason of its own.
SCHEDULER_STOP = "scheduler"
#: The stopper's stops on a forecast (a collapse forecast, "no onset within the budget", "cannot beat
#: the best so far"), and all its stops before a trial's onset or budget (capping needs no forecast).
FORECAST_STOPS = ("forecast", "no_onset_forecast", "cannot_win")
EARLY_STOPS = (*FORECAST_STOPS, "capped")
#: Every end before a trial's onset or budget, the stopper's and the scheduler's: its onset is
#: unknown (censored), never "did not collapse".
CENSORED_STOPS = (*EARLY_STOPS, SCHEDULER_STOP)

#: Numeric metrics a study's trials report at every evaluation (what ``objective.metric`` can be):
#: the record, the collapse-time objective, and what Tune adds itself.
TRIAL_METRICS = (*REFERENCE_COLUMNS, *STANDARD_NC, *OPTIMISATION, LR, ELAPSED, TERMINAL, T_NC, FN_STAR,
                 COLLAPSE_EPOCH, *FORECAST_FIELDS, "training_iteration", "time_total_s", "time_this_iter_s")

#: NC metrics of :class:`~ncstudy.metrics.NCAccumulator` and of every record (NaN until terminal).
NC_KEYS = (NC1, NC2, NC3, FN) + STANDARD_NC

#: Names other tools give to the same quantities.
ALIASES: dict[str, str] = {"fn": FN, "feature_norm": FN, "train_acc": TRAIN, "train_accuracy": TRAIN,
                           "test_acc": TEST, "test_accuracy": TEST, "loss": LOSS, "gradient_norm": GRAD_NORM}


def canonical(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with aliased keys renamed (a canonical key already present wins)."""
    out = dict(record)
    for alias, key in ALIASES.items():
        if alias in out:
            v = out.pop(alias)
            out.setdefault(key, v)
    return out


def finite(x: object) -> bool:
    """True for a real, finite number (numpy scalars and numeric strings included; bools and None not)."""
    if isinstance(x, bool) or x is None:
        return False
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def num(x: object) -> float | None:
    """``float(x)`` when finite, else None."""
    return float(x) if finite(x) else None  # type: ignore[arg-type]


def tag_text(x: object) -> str:
    """A number as MLflow tag text: integers without ``.0``, "" for missing or non-finite."""
    if isinstance(x, str):
        return x
    v = num(x)
    if v is None:
        return ""
    return str(int(v)) if v.is_integer() else repr(v)


def end_reason(stop_reason: str | None, failed: bool = False, epochs_run: float | None = None,
               budget: float | None = None) -> str:
    """Why a trial ended: the reason its last result gives (a study's trials give one as they end:
    ``budget``, ``onset``, ``diverged``, or the stopper's), else ``error`` when it failed, else
    ``scheduler`` when it ended before its budget (Tune's scheduler ended it: ASHA, median
    stopping), else ``budget`` (it ran its budget, or neither is known)."""
    if stop_reason:
        return stop_reason
    if failed:
        return "error"
    if epochs_run is not None and budget is not None and epochs_run < budget:
        return SCHEDULER_STOP
    return "budget"
