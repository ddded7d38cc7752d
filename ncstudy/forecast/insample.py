"""The paper's in-sample fn* rule on its width sweep (reproduces ``prediction_analysis.csv``).

Threshold of width w = exp(a + b log w), (a, b) from a least-squares fit of log fn* on log width
(over the per-width means of the sweep's fn*, or over all runs with ``fit_on="runs"``); crossing
of a run = first evaluation with a finite fn <= its width's threshold (any phase unless
``phases`` is given: fn is NaN before terminal, so in the reference logs this is a phase-2
epoch); T_NC from :func:`ncstudy.onset.onset_of`. It is in-sample by construction: thresholds
and lead come from the same runs.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from scipy import stats

from ncstudy.onset import OnsetRule, onset_of
from ncstudy.records import EPOCH, FN, finite

from .protocol import first_crossing, phase_of


@dataclass(frozen=True)
class LogLogFit:
    """``log fn* = a + b log x``: the fit, its correlation ``r`` and the number of pairs ``n``."""

    a: float
    b: float
    r: float = float("nan")
    n: int = 0

    def __call__(self, width: float) -> float:
        return math.exp(self.a + self.b * math.log(width))


def loglog_fit(sweep: Iterable[tuple[float, float]], fit_on: str = "means") -> LogLogFit:
    """Fit log fn* = a + b log width over ``(width, fn*)`` pairs (``fit_on`` = "means" fits the
    per-width means, "runs" every pair)."""
    pairs = [(float(w), float(f)) for w, f in sweep if finite(w) and finite(f)]
    if fit_on == "means":
        by: dict[float, list[float]] = {}
        for w, f in pairs:
            by.setdefault(w, []).append(f)
        pairs = [(w, statistics.fmean(fs)) for w, fs in sorted(by.items())]
    elif fit_on != "runs":
        raise ValueError("fit_on must be 'means' or 'runs'")
    if len({w for w, _ in pairs}) < 2:
        raise ValueError("need fn* at two or more widths for a log-log fit")
    lr = stats.linregress([math.log(w) for w, _ in pairs], [math.log(f) for _, f in pairs])
    return LogLogFit(float(lr.intercept), float(lr.slope), float(lr.rvalue), len(pairs))


def crossing_epoch(records: Iterable[Mapping[str, Any]], threshold: float,
                   phases: Sequence[int] | None = None) -> int | None:
    """The crossing rule (:func:`~ncstudy.forecast.protocol.first_crossing`) over logged records, in the
    given order: every record with a finite fn counts (the reference logs leave fn empty before
    terminal)."""
    points = [(int(r[EPOCH]), phase_of(r), float(r[FN])) for r in records if finite(r.get(FN))]
    c = first_crossing(points, threshold, phases)
    return None if c is None else c[0]


@dataclass(frozen=True)
class InSampleRun:
    run_id: str
    width: float
    threshold: float
    crossing: int | None
    t_nc: int | None
    gap: int | None  # t_nc - crossing


def paper_insample_rule(sweep: Iterable[tuple[float, float]],
                        runs: Mapping[str, tuple[float, Sequence[Mapping[str, Any]]]],
                        fit_on: str = "means", phases: Sequence[int] | None = None,
                        rule: OnsetRule = OnsetRule()) -> dict[str, InSampleRun]:
    """Apply the paper's rule. ``sweep``: ``(width, fn*)`` of every run of the sweep (including
    runs without a per-run log); ``runs``: ``run_id -> (width, records)`` for the runs to score."""
    fit = loglog_fit(sweep, fit_on)
    out = {}
    for rid, (width, records) in runs.items():
        rows = sorted(records, key=lambda r: float(r[EPOCH]))
        thr = fit(width)
        c = crossing_epoch(rows, thr, phases)
        t = onset_of(rows, rule).t_nc
        out[rid] = InSampleRun(rid, float(width), thr, c, t, None if c is None or t is None else t - c)
    return out


def lead_statistics(pairs: Iterable[tuple[float, float]], lead: float | None = None) -> dict[str, float]:
    """Gap statistics over ``(crossing, t_nc)`` pairs: n, gap mean, SD (ddof 1), the lead used
    (default: the gap mean) and the MAE of ``T_NC = crossing + lead``."""
    pairs = [(float(c), float(t)) for c, t in pairs]
    gaps = [t - c for c, t in pairs]
    if not gaps:
        raise ValueError("no crossing/onset pairs")
    mean = statistics.fmean(gaps)
    sd = statistics.stdev(gaps) if len(gaps) > 1 else float("nan")
    use = mean if lead is None else float(lead)
    mae = statistics.fmean(abs(c + use - t) for c, t in pairs)
    return {"n": len(gaps), "gap_mean": mean, "gap_sd": sd, "lead": use, "mae": mae}
