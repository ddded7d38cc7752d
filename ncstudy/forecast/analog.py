"""Analog forecasting with a distribution-free recalibration: the core of :class:`ConformalOnset`.

**Pool.** Completed runs of the calibration -- those that reached the strict onset and those that
ran to their budget without it (censored) -- each with its states (:mod:`.state`) before onset.
The outcome of a state at epoch ``t`` is its remaining time as a fraction of the remaining budget,
``rho = (T_NC - t) / (budget - t)``: in (0, 1] when the run collapsed, ``inf`` when it did not.
So "onset before the budget" is ``rho <= 1`` for every run, whatever its length.

**Analogs.** For a query state every pool run contributes its closest state (partial distance:
the weighted mean squared difference of robustly scaled features over the features both states
have; runs of another group pay a penalty). The forecast has two parts, each recalibrated on the
pool itself with leave-one-run-out predictions (split-conformal in spirit; a run is never its own
analog):

* **whether**: the fraction of collapsed runs among the ``k`` nearest runs, mapped to a calibrated
  ``P(onset <= budget)`` by isotonic regression of the held-out outcomes on it (each block's rate
  by Laplace's rule, so no probability is 0 or 1 on finite data);
* **when, given onset**: the ``k`` nearest *collapsed* runs give a point forecast ``m``, the
  median of their ``rho``; its error is measured on the pool itself as the held-out log ratios
  ``log(rho / m_{-run})`` of the pool's collapsed states, kept in bins of ``m`` (Mondrian
  split-conformal: a state near its onset is judged by the errors made near onset, not by those made
  far from it). The conditional quantile at ``level`` is ``m`` times the exponential of the bin's
  conformal ``level``-quantile (the ``ceil(level (n + 1))``-th of its ``n`` ratios), so it holds at
  its stated level whatever the law of the trajectories, as long as a new run is exchangeable with
  the pool's; an interval is narrow where the pool's forecasts were accurate.

Unconditional quantiles follow: ``q(level) = q_onset(level / P)`` for ``level < P``, beyond the
budget (``inf``) otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .state import FEATURES, State, approach


@dataclass(frozen=True)
class PoolRun:
    run_id: str
    group: str
    t_nc: float | None  # strict onset epoch; None: censored (no onset within the budget)
    budget: float
    states: tuple[State, ...]
    cluster: str = ""  # runs of one configuration (seeds of it): held out together ("": the run alone)


def isotonic(x: np.ndarray, y: np.ndarray, prior: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of ``y`` (0/1) on ``x`` (pool-adjacent-violators), as the
    step function ``(block upper x, block rate)``; each block's rate is shrunk by ``prior``
    observations towards 1/2 (Laplace's rule for the default 2)."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order].astype(float)
    blocks: list[list[float]] = []  # [sum, count, last x]
    for xv, yv in zip(xs, ys):
        blocks.append([yv, 1.0, xv])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s2, n2, x2 = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += n2
            blocks[-1][2] = x2
    ux = np.array([b[2] for b in blocks])
    rate = np.array([(b[0] + prior / 2) / (b[1] + prior) for b in blocks])
    return ux, rate


def conformal_quantile(sorted_scores: np.ndarray, level: float) -> float:
    """The split-conformal ``level``-quantile of ``n`` exchangeable scores, conservative on its side:
    an upper level (>= 1/2) takes the ``ceil(level (n + 1))``-th smallest (``+inf`` past the n-th), a
    lower one the ``floor(level (n + 1))``-th (``-inf`` before the first)."""
    n = len(sorted_scores)
    if n == 0:
        return math.inf if level >= 0.5 else -math.inf
    j = math.ceil(level * (n + 1)) if level >= 0.5 else math.floor(level * (n + 1))
    if j > n:
        return math.inf
    if j < 1:
        return -math.inf
    return float(sorted_scores[j - 1])


@dataclass(frozen=True)
class Predictive:
    """A calibrated predictive distribution of ``rho`` (see the module docs)."""

    p_onset: float  # calibrated P(onset <= budget)
    rho_c: np.ndarray  # the collapsed analogs' outcomes, sorted
    median: float  # m: the point forecast of rho given onset (median of rho_c)
    residuals: np.ndarray  # the held-out log(rho / m) of the pool's collapsed states near m, sorted
    distance: float  # mean distance of the analogs (how far the pool is from this state)
    n_collapsed: int  # collapsed runs among the k nearest
    frac: float = math.nan  # n_collapsed / k: the score the run-level decisions threshold

    def onset_quantile(self, level: float) -> float:
        """Calibrated ``level``-quantile of ``rho`` given onset within the budget (at most 1)."""
        if len(self.rho_c) == 0 or not self.median > 0:
            return math.inf
        r = conformal_quantile(self.residuals, level)
        return min(1.0, self.median * math.exp(r)) if r < math.inf else 1.0

    def quantile(self, level: float) -> float:
        """Calibrated unconditional ``level``-quantile of ``rho`` (``inf``: beyond the budget)."""
        if level >= self.p_onset:
            return math.inf
        return self.onset_quantile(level / self.p_onset)

    def cdf(self, r: float) -> float:
        """Calibrated P(rho <= r), conservative on the high side: the conformal bound
        ``(#ratios <= log(r / m) + 1) / (n + 1)`` of the timing, times ``p_onset``; ``p_onset`` from
        ``r = 1`` (the budget) on, 0 for ``r <= 0``."""
        if r <= 0:
            return 0.0
        if r >= 1.0 or len(self.rho_c) == 0 or not self.median > 0:
            return self.p_onset
        n = len(self.residuals)
        below = int(np.searchsorted(self.residuals, math.log(r / self.median), side="right"))
        return self.p_onset * min(1.0, (below + 1) / (n + 1))


@dataclass(frozen=True)
class EpochDistribution:
    """A :class:`Predictive` of one state (made at epoch ``t`` with ``remaining`` epochs of budget
    left) in global epochs: the :class:`~ncstudy.forecast.protocol.OnsetDistribution` a forecast carries."""

    predictive: Predictive
    t: float
    remaining: float

    def cdf(self, epoch: float) -> float:
        return self.predictive.cdf((epoch - self.t) / self.remaining)

    def quantile(self, level: float) -> float:
        q = self.predictive.quantile(level)
        return self.t + q * self.remaining if math.isfinite(q) else math.inf


class AnalogPool:
    """The states of a calibration's completed runs, searchable by analog (see the module docs)."""

    def __init__(self, runs: Sequence[PoolRun], features: Sequence[str] = FEATURES,
                 weights: Mapping[str, float] | None = None, k: int = 15, group_penalty: float = 0.5,
                 max_pit_states: int = 12, min_bin: int = 60) -> None:
        self.features = tuple(features)
        w = dict(weights or {})
        self.w = np.array([float(w.get(f, 1.0)) for f in self.features])
        self.k, self.group_penalty, self.max_pit_states = int(k), float(group_penalty), int(max_pit_states)
        self.min_bin = int(min_bin)
        rows, run_of, rho, rem, shape = [], [], [], [], []
        self.runs = [r for r in runs
                     if any(s.epoch < (r.t_nc if r.t_nc is not None else math.inf) for s in r.states)]
        for i, r in enumerate(self.runs):
            for s in r.states:
                if r.t_nc is not None and s.epoch >= r.t_nc:
                    continue
                rows.append([s.features.get(f, math.nan) for f in self.features])
                run_of.append(i)
                rho.append(math.inf if r.t_nc is None else (r.t_nc - s.epoch) / max(r.budget - s.epoch, 1.0))
                rem.append(s.remaining)
                shape.append((s.features.get("level", math.nan), s.features.get("rate", math.nan), s.length))
        self.X = np.array(rows, dtype=float).reshape(len(rows), len(self.features))
        self.run_of = np.array(run_of, dtype=int)
        self.rho = np.array(rho, dtype=float)
        self.remaining = np.array(rem, dtype=float)
        self.shape = shape  # per row: (level, rate, L), what State.approach reads
        self.group_of_run = np.array([r.group for r in self.runs], dtype=object)
        clusters: dict[str, list[int]] = {}
        for i, r in enumerate(self.runs):
            clusters.setdefault(r.cluster or f"run:{r.run_id}", []).append(i)
        #: per run, the runs held out with it when it is predicted (its configuration's seeds)
        self.cluster_of_run = [np.array(clusters[r.cluster or f"run:{r.run_id}"]) for r in self.runs]
        self.n_runs = len(self.runs)
        self.starts = np.flatnonzero(np.r_[True, np.diff(self.run_of) != 0]) if len(rows) else np.array([], int)
        self.collapsed_run = np.array([r.t_nc is not None for r in self.runs], dtype=bool)
        self.scale = self._robust_scale()
        self.Xs = self.X / self.scale
        # for the distances: the scaled states' squares, the states (unknown features as 0) and which
        # features are known, side by side: one matrix product per batch of queries
        known = np.isfinite(self.Xs)
        z = np.where(known, self.Xs, 0.0)
        self._M = np.hstack([z * z, z, known.astype(float)])
        self._n_collapsed = int(self.collapsed_run.sum())
        self._bounds = (self.starts.tolist(), self.starts[1:].tolist() + [len(rows)])  # each run's rows
        self._cal: tuple | None = None
        self._held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None  # per run: (frac, m, distance)
        self._thresholds: dict[tuple, Thresholds] = {}

    def _robust_scale(self) -> np.ndarray:
        out = np.ones(len(self.features))
        for j in range(len(self.features)):
            col = self.X[:, j]
            col = col[np.isfinite(col)]
            if len(col) >= 5:
                q75, q25 = np.percentile(col, [75, 25])
                s = (q75 - q25) / 1.349
                out[j] = s if s > 1e-9 else (float(col.std()) or 1.0)
        return out

    @property
    def n_collapsed(self) -> int:
        return self._n_collapsed

    # ------------------------------------------------------------------------------------------
    def _distances(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For ``m`` (scaled) queries, rows of ``xs``: ``(raw, d)``, per query the distance of each
        pool run's closest state (``m x runs``) and of every pool state (``m x states``). The
        distance is the weighted RMS over the features both the state and the query know (inf when
        they share none); one matrix product for all the queries."""
        q = np.isfinite(xs)
        wq = np.where(q, self.w, 0.0)
        x = np.where(q, xs, 0.0)
        f = xs.shape[1]
        v = np.empty((3 * f, 2 * len(xs)))
        v[:f, 0::2], v[f:2 * f, 0::2], v[2 * f:, 0::2] = wq.T, (-2.0 * wq * x).T, (wq * x * x).T
        v[:2 * f, 1::2], v[2 * f:, 1::2] = 0.0, wq.T
        nd = self._M @ v  # states x (num, den) per query
        num, den = nd[:, 0::2].T, nd[:, 1::2].T
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.sqrt(np.maximum(num, 0.0) / den)
        d[~(den > 0)] = np.inf
        return np.minimum.reduceat(d, self.starts, axis=1), d

    def _closest_rows(self, runs: np.ndarray, d: np.ndarray) -> list[int]:
        """The row of each of ``runs``' closest state to one query (its first, on a tie)."""
        starts, ends = self._bounds
        return [starts[r] + int(d[starts[r]:ends[r]].argmin()) for r in runs.tolist()]

    def _scaled(self, x: Mapping[str, float] | np.ndarray) -> np.ndarray:
        return (np.array([x.get(f, math.nan) for f in self.features], float) if isinstance(x, Mapping)
                else np.asarray(x, float)) / self.scale

    def analogs(self, x: Mapping[str, float] | np.ndarray, group: str | None = None,
                exclude_run: int | np.ndarray | None = None) -> tuple[int, int, np.ndarray, float]:
        """For a query state: ``(k used, collapsed among the k nearest runs, outcomes of the k
        nearest collapsed runs (sorted), mean distance of the k nearest runs)``; ``exclude_run``: a
        pool run (or runs) that may not be an analog."""
        return self._analogs_many(self._scaled(x)[None, :], group, exclude_run)[0]

    def _analogs_many(self, xs: np.ndarray, group: str | None,
                      exclude_run: int | np.ndarray | None) -> list[tuple[int, int, np.ndarray, float]]:
        """:meth:`analogs` of several scaled queries (rows of ``xs``) of one group."""
        raws, ds = self._distances(xs)
        penalty = self.group_penalty * (self.group_of_run != group) if group is not None and self.group_penalty \
            else 0.0
        out = []
        for raw, d in zip(raws, ds):
            best = raw + penalty
            if exclude_run is not None:
                best[exclude_run] = np.inf
            ok = np.isfinite(best)
            k = min(self.k, int(ok.sum()))
            if k == 0:
                out.append((0, 0, np.array([]), math.inf))
                continue
            idx = np.argpartition(best, k - 1)[:k]
            m = int(self.collapsed_run[idx].sum())
            cand = np.flatnonzero(ok & self.collapsed_run)
            kc = min(self.k, len(cand))
            rho_c = np.array([])
            if kc:
                near = cand[np.argpartition(best[cand], kc - 1)[:kc]]
                rho_c = np.sort(self.rho[self._closest_rows(near, d)])
            out.append((k, m, rho_c, float(best[idx].mean())))
        return out

    def predictive(self, x: Mapping[str, float], group: str | None = None) -> Predictive | None:
        if self.n_runs == 0:
            return None
        k, m, rho_c, dist = self.analogs(x, group)
        if k == 0:
            return None
        iso_x, iso_y, bin_edges, bins = self.calibration()
        med = _median_sorted(rho_c) if len(rho_c) else math.nan
        res = bins[_bin_of(bin_edges, math.log(med))] if med > 0 else np.array([])
        return Predictive(_iso_at(iso_x, iso_y, m / k), rho_c, med, res, dist, m, m / k)

    # ------------------------------------------------------------------------------------------
    def held_out(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per pool run, each of its states predicted with its cluster (its configuration's runs)
        held out of the pool: ``(frac, m)``, the share of collapsed runs among the ``k`` nearest
        and the median outcome of the nearest collapsed ones (NaN when there are none). Cached."""
        if self._held is None:
            out = []
            starts, ends = self._bounds
            for i in range(self.n_runs):
                preds = self._analogs_many(self.Xs[starts[i]:ends[i]], self.group_of_run[i], self.cluster_of_run[i])
                out.append((np.array([m / k if k else math.nan for k, m, _, _ in preds]),
                            np.array([_median_sorted(c) if len(c) else math.nan for _, _, c, _ in preds]),
                            np.array([d for _, _, _, d in preds])))
            self._held = out
        return self._held

    def calibration(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """``(iso_x, iso_y, bin_edges, bins)``: the isotonic map of P(onset), and the held-out log
        ratios ``log(rho / m)`` binned by ``log m`` (upper edges; each bin at least ``min_bin``
        ratios, sorted), from the held-out predictions (:meth:`held_out`) of up to
        ``max_pit_states`` evenly spaced states of every pool run (cached)."""
        if self._cal is None:
            frac, collapsed, pairs = [], [], []
            starts, _ = self._bounds
            for i, (f, med, _) in enumerate(self.held_out()):
                idx = np.arange(len(f))
                if len(idx) > self.max_pit_states:
                    idx = idx[np.linspace(0, len(idx) - 1, self.max_pit_states).round().astype(int)]
                for j in idx:
                    if not np.isfinite(f[j]):
                        continue
                    frac.append(f[j])
                    collapsed.append(bool(self.collapsed_run[i]))
                    r = starts[i] + j
                    if self.collapsed_run[i] and med[j] > 0 and self.rho[r] > 0:
                        pairs.append((math.log(med[j]), math.log(self.rho[r] / med[j])))
            frac_a, coll_a = np.array(frac), np.array(collapsed, bool)
            iso_x, iso_y = isotonic(frac_a, coll_a) if len(frac_a) else (np.array([1.0]), np.array([0.5]))
            self._cal = (iso_x, iso_y, *_mondrian_bins(pairs, self.min_bin))
        return self._cal

    def thresholds(self, settings: Any) -> "Thresholds":
        """The run-level decision thresholds for a forecaster's settings (module docs, "Decisions").

        Each pool run is replayed through the decision rules on its held-out predictions: a rule
        fires at the first state where its predicate has held at ``confirm`` consecutive states, from
        the ``min_points``-th on, at a state no further from its analogs than the ``guard`` quantile
        of the pool's held-out distances. "No onset" (``frac <= tau``, with NC1 at least
        ``no_onset_margin`` times the strict threshold) fires on a collapsing run iff
        ``tau`` reaches the run's critical value; ``no_onset`` is the largest threshold that fires on
        at most ``alpha (n + 1) - 1`` of the pool's ``n`` collapsing runs -- split-conformal: on a
        new run exchangeable with the pool's, P(wrong "no onset") <= ``alpha``. "Onset" (NC1 on
        course to cross within the horizon, ``State.approach >= tau``, and the ``coverage``
        interval given onset at most ``tolerance`` epochs wide) likewise over the censored runs at
        ``forecast_alpha`` (None: never). ``-inf`` / ``inf``: too few runs for that guarantee, never decided.
        Cached per settings."""
        s = settings
        key = (s.alpha, s.forecast_alpha, s.confirm, s.min_points, s.coverage, s.tolerance, s.guard, s.no_onset_margin)
        if key not in self._thresholds:
            _, _, edges, bins = self.calibration()
            a = (1.0 - s.coverage) / 2
            starts, _ = self._bounds
            held = self.held_out()
            dists = np.sort(np.concatenate([d for _, _, d in held])) if held else np.array([])
            d_max = conformal_quantile(dists[np.isfinite(dists)], s.guard) if s.guard < 1 else math.inf
            crit_no, crit_on = [], []
            level_min = math.log(s.no_onset_margin)
            for i, (f, med, dist) in enumerate(held):
                rows = starts[i] + np.arange(len(f))
                near = dist <= d_max
                if self.collapsed_run[i]:
                    far = np.array([self.shape[r][0] >= level_min for r in rows])  # not near the threshold
                    crit_no.append(_critical(np.where(near & far, f, math.inf), s.confirm, s.min_points, low=True))
                elif s.forecast_alpha is not None:
                    width = np.array([_width_if(m, edges, bins, a) for m in med]) * self.remaining[rows]
                    score = np.array([approach(*self.shape[r], s.horizon) for r in rows])
                    crit_on.append(_critical(np.where(near & (width <= s.tolerance), score, -math.inf), s.confirm,
                                             s.min_points, low=False))
            onset = _conformal_cut(crit_on, s.forecast_alpha, low=False) if s.forecast_alpha is not None else math.inf
            self._thresholds[key] = Thresholds(_conformal_cut(crit_no, s.alpha, low=True), onset, d_max, level_min)
        return self._thresholds[key]


@dataclass(frozen=True)
class Thresholds:
    """A pool's run-level decision thresholds (:meth:`AnalogPool.thresholds`)."""

    no_onset: float  # "no onset" when the share of collapsed analogs is at most this
    onset: float  # a collapse forecast when State.approach is at least this (inf: never)
    distance: float  # ... and only at states at most this far from their analogs
    level: float = -math.inf  # ... and "no onset" only where log(NC1 / strict) is at least this


def _width_if(med: float, edges: np.ndarray, bins: list[np.ndarray], a: float) -> float:
    """Width, as a fraction of the remaining budget, of the calibrated interval given onset."""
    if not med > 0:
        return math.inf
    res = bins[_bin_of(edges, math.log(med))]
    lo, hi = conformal_quantile(res, a), conformal_quantile(res, 1 - a)
    if not math.isfinite(hi):
        return math.inf
    return min(1.0, med * math.exp(hi)) - min(1.0, med * math.exp(lo)) if math.isfinite(lo) else math.inf


def _critical(score: np.ndarray, confirm: int, min_points: int, low: bool) -> float:
    """The threshold at which a decision rule starts to fire on one run: the predicate
    ``score <= tau`` (``low``) or ``score >= tau`` held at ``confirm`` consecutive states from the
    ``min_points``-th on. ``inf`` / ``-inf`` when it can never fire (too few states)."""
    s = np.where(np.isfinite(score), score, math.inf if low else -math.inf)[max(min_points - 1, 0):]
    if len(s) < confirm:
        return math.inf if low else -math.inf
    windows = np.lib.stride_tricks.sliding_window_view(s, confirm)
    return float(windows.max(axis=1).min()) if low else float(windows.min(axis=1).max())


def _conformal_cut(critical: Sequence[float], alpha: float, low: bool) -> float:
    """The run-level threshold (see :meth:`AnalogPool.thresholds`): just short of the ``j``-th
    smallest (``low``; largest otherwise) critical value, ``j = floor(alpha (n + 1))``, so the rule
    fires on at most ``j - 1`` of the ``n`` runs and, on a new exchangeable run, with probability
    at most ``j / (n + 1) <= alpha``."""
    j = math.floor(alpha * (len(critical) + 1))
    if j < 1:
        return -math.inf if low else math.inf
    c = np.sort(np.array(critical, dtype=float))
    return float(np.nextafter(c[j - 1], -math.inf)) if low else float(np.nextafter(c[::-1][j - 1], math.inf))


def _mondrian_bins(pairs: Sequence[tuple[float, float]], min_bin: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Bins of consecutive ``(log m, ratio)`` pairs by ``log m``, each at least ``min_bin`` pairs
    (the last absorbs a remainder); returns the upper edges (the last is ``inf``) and each bin's
    sorted ratios."""
    if not pairs:
        return np.array([math.inf]), [np.array([])]
    a = np.array(sorted(pairs))
    n_bins = max(1, len(a) // max(min_bin, 1))
    cuts = [round(i * len(a) / n_bins) for i in range(n_bins + 1)]
    edges, bins = [], []
    for b in range(n_bins):
        chunk = a[cuts[b]:cuts[b + 1]]
        edges.append(math.inf if b == n_bins - 1 else float((chunk[-1, 0] + a[cuts[b + 1], 0]) / 2))
        bins.append(np.sort(chunk[:, 1]))
    return np.array(edges), bins


def _median_sorted(a: np.ndarray) -> float:
    """The median of a sorted array (``np.median`` without its sort)."""
    n = len(a)
    return float(a[n // 2]) if n % 2 else float((a[n // 2 - 1] + a[n // 2]) / 2)


def _bin_of(edges: np.ndarray, x: float) -> int:
    return min(int(np.searchsorted(edges, x, side="left")), len(edges) - 1)


def _iso_at(ux: np.ndarray, rate: np.ndarray, x: float) -> float:
    """The isotonic step function at ``x`` (the block whose range holds it)."""
    i = min(int(np.searchsorted(ux, x, side="left")), len(ux) - 1)
    return float(rate[i])
