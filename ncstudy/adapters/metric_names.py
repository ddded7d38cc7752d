"""Which result keys the stopper reads (:class:`MetricNames`): ncstudy's record names by default
(:mod:`ncstudy.records`, with their aliases), or the caller's own, mapped with ``metrics=``."""
from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from ncstudy.records import EPOCH, FN, GRAD_NORM, LOSS, NC1, PHASE, TERMINAL, TRAIN, WEIGHT_NORM


class MetricNames(BaseModel):
    """The result keys the stopper reads; ``None`` means "not reported" (e.g. ``phase: None`` for a
    single-phase run). Defaults: ncstudy's names (and their aliases, e.g. ``fn``, ``train_acc``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    epoch: str | None = EPOCH
    phase: str | None = PHASE
    train: str | None = TRAIN
    feat_norm: str | None = FN
    nc1: str | None = NC1
    train_loss: str | None = LOSS
    grad_norm: str | None = GRAD_NORM
    weight_norm: str | None = WEIGHT_NORM
    terminal: str | None = TERMINAL

    @classmethod
    def of(cls, metrics: "MetricNames | Mapping[str, str | None] | None", where: str) -> "MetricNames":
        if isinstance(metrics, MetricNames):
            return metrics
        try:
            return cls(**dict(metrics or {}))
        except ValidationError as e:
            bad = [".".join(map(str, x["loc"])) for x in e.errors()]
            raise ValueError(f"{where}: metrics: unknown or invalid key(s) {', '.join(bad)}; the keys are "
                             f"{', '.join(cls.model_fields)} (ncstudy's record names), each mapped to your "
                             f"result key or None") from None
