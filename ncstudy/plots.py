"""The figures of a study, drawn by one set of helpers so that a trial looks the same alone and
among the others:

* :func:`plot_trajectory` -- one trial (``trajectory.png`` of a trial run): fn on a log axis with
  its group's fn* as a band, where fn crosses fn*, the forecast with its interval, the onset, the
  CE->MSE switch, and NC1 (log) with the strict and relaxed thresholds labelled;
* :func:`plot_overview` -- every trial of a study (``overview.png`` of the study run): fn and NC1
  against epoch, coloured by a searched key, each group's fn* band, onsets and forecasts marked;
* :func:`plot_sweep` -- T_NC and fn* against each searched key (``sweep.png``): the paper's sweep
  plots for any study.

What is drawn comes in as plain data (:class:`TrialView`, :class:`Band`; the forecast is the one
:class:`ncstudy.forecast.Forecast`, read back from a result row); the caller (the MLflow writer)
works out fn*, the crossing and the forecast. Drawn with the one figure stack, :mod:`ncstudy.figure`
(matplotlib's object API: no pyplot, no global figure registry), so the MLflow writer can draw on
its background thread; fixed margins and plain tick labels keep a trajectory picture cheap
(``tight_layout`` and mathtext cost as much as the drawing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ncstudy import text
from ncstudy.deprecation import renamed_function
from ncstudy.figure import heading, log_axis, new_figure, save, value_ticks, wrap
from ncstudy.forecast import protocol
from ncstudy.onset import RELAXED_NC1, STRICT_NC1
from ncstudy.records import (
    CENSORED_STOPS,
    EARLY_STOPS,
    EPOCH,
    FN,
    FORECAST_EPOCH,
    NC1,
    P_ONSET,
    PHASE,
    T_NC_ESTIMATE,
    num,
)

FN_COLOUR, NC1_COLOUR, BAND_COLOUR = "tab:blue", "tab:red", "tab:orange"
CROSS_COLOUR, FORECAST_COLOUR, ONSET_COLOUR = "tab:green", "tab:purple", "black"


@dataclass(frozen=True)
class Band:
    """fn* of a group: the value and its spread (``low``..``high``; none known: a line)."""

    value: float
    low: float | None = None
    high: float | None = None
    source: str = ""  # e.g. "3 trials of this study", "paper prior"

    def label(self) -> str:
        spread = "" if self.low is None or self.high is None else f" [{_text(self.low)}, {_text(self.high)}]"
        return f"fn* {_text(self.value)}{spread}" + (f" ({self.source})" if self.source else "")

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Band | None":
        if not d or num(d.get("value")) is None:
            return None
        return cls(float(d["value"]), num(d.get("low")), num(d.get("high")), str(d.get("source") or ""))


def forecast_label(fc: protocol.Forecast) -> str:
    """What a picture's legend says of a forecast: ``forecast @ 140: onset 202 [180, 230]``."""
    at = f"forecast @ {text.value(fc.made_at)}"
    if not math.isfinite(fc.onset):
        p = "" if fc.p_onset is None else f", P(onset) {text.value(fc.p_onset, fixed=2)}"
        return f"{at}: no onset within budget{p}"
    iv = (f" [{text.value(fc.low, fixed=0)}, {text.value(fc.high, fixed=0)}]"
          if math.isfinite(fc.low) and math.isfinite(fc.high) else "")
    return f"{at}: onset {text.value(fc.onset, fixed=0)}{iv}"


# The pictures' former copy, Forecast(made_at, onset, low, high, p_onset) with None for "none": it
# builds the one Forecast now (onset None: no onset within the budget, inf), with a warning.
Forecast = renamed_function(
    "ncstudy.plots.Forecast", "ncstudy.forecast.Forecast",
    lambda made_at, onset, low, high, p_onset=None: protocol.Forecast(
        onset=math.inf if onset is None else onset, low=math.nan if low is None else low,
        high=math.nan if high is None else high, made_at=made_at, signal="", p_onset=p_onset,
        decision=protocol.NO_ONSET if onset is None else protocol.ONSET))


@dataclass(frozen=True)
class TrialView:
    """What the pictures show of one trial."""

    name: str
    rows: Sequence[Mapping[str, Any]]  # evaluation records: epoch, phase, feat_norm, nc1, forecast fields
    t_nc: float | None = None  # observed strict onset
    band: Band | None = None  # its group's fn*
    crossing: float | None = None  # first phase-2 epoch with fn <= fn*
    stop_reason: str | None = None
    group: str = ""
    keys: Mapping[str, Any] = field(default_factory=dict)  # searched key -> value
    fn_star: float | None = None  # observed fn at T_NC
    collapse_epoch: float | None = None  # the objective (a forecast-stopped trial: its forecast)

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """Epochs and finite values of ``key`` (non-positive values dropped: log axes)."""
        xs, ys = [], []
        for r in self.rows:
            e, v = num(r.get(EPOCH)), num(r.get(key))
            if e is not None and v is not None and v > 0:
                xs.append(e)
                ys.append(v)
        return xs, ys

    def switch(self) -> float | None:
        """The CE->MSE switch: midway between the last phase-1 and first phase-2 evaluation."""
        last1 = first2 = None
        for r in self.rows:
            e, p = num(r.get(EPOCH)), num(r.get(PHASE))
            if e is None or p is None:
                continue
            if p == 1:
                last1 = e
            elif first2 is None:
                first2 = e
        if first2 is None:
            return None
        return first2 if last1 is None else (last1 + first2) / 2 if first2 - last1 > 1 else last1

    def forecast(self) -> protocol.Forecast | None:
        """The forecast to show: the one acted on (its row at ``forecast_epoch``), else the last one
        made before the onset (or the end)."""
        made = None
        for r in reversed(self.rows):
            made = num(r.get(FORECAST_EPOCH))
            if made is not None:
                break
        chosen = None
        for r in self.rows:
            e = num(r.get(EPOCH))
            if e is None or (self.t_nc is not None and e >= self.t_nc):
                break
            if made is not None and e > made:
                break
            if num(r.get(T_NC_ESTIMATE)) is not None or num(r.get(P_ONSET)) is not None:
                chosen = r
        return None if chosen is None else protocol.Forecast.from_record(chosen)

    def value_at(self, key: str, epoch: float | None) -> float | None:
        if epoch is None:
            return None
        for r in self.rows:
            if num(r.get(EPOCH)) == epoch:
                return num(r.get(key))
        return None


# -- shared drawing helpers ---------------------------------------------------------------------
def _label_right(ax, y: float, text: str, colour: str, va: str = "bottom", left: bool = False) -> None:
    ax.annotate(text, (0 if left else 1, y), xycoords=("axes fraction", "data"),
                xytext=(3 if left else -3, 1 if va == "bottom" else -1), textcoords="offset points",
                ha="left" if left else "right", va=va, fontsize=7.5, color=colour)


def _vline(axes, x: float, colour: str, ls: str = "-", lw: float = 1.0, alpha: float = 1.0) -> None:
    for ax in axes:
        ax.axvline(x, color=colour, ls=ls, lw=lw, alpha=alpha, zorder=1)


def draw_band(ax, band: Band, colour: str = BAND_COLOUR) -> None:
    """fn* as a line and its spread as a shaded band (its numbers are the legend's: a label at the
    band ran into the lines that cross it)."""
    if band.low is not None and band.high is not None and band.high > band.low:
        ax.axhspan(band.low, band.high, color=colour, alpha=0.22, lw=0, zorder=0)
    ax.axhline(band.value, color=colour, ls="--", lw=1.2, zorder=1)


def draw_thresholds(ax, strict: float = STRICT_NC1, relaxed: float = RELAXED_NC1) -> None:
    ax.axhline(strict, color="0.25", ls=":", lw=1.0, zorder=1)
    ax.axhline(relaxed, color="0.55", ls=":", lw=1.0, zorder=1)
    _label_right(ax, strict, f"strict {text.value(strict)} (onset)", "0.25", va="top", left=True)
    _label_right(ax, relaxed, f"relaxed {text.value(relaxed)}", "0.45", left=True)


def _fn_limits(ax, ys: Iterable[float], band: Band | None) -> None:
    vals = [v for v in ys if v > 0]
    if band is not None:
        vals += [v for v in (band.value, band.low, band.high) if v is not None and v > 0]
    if vals:
        lo, hi = min(vals), max(vals)
        ax.set_ylim(lo / 1.25, hi * 1.25)


def _nc1_limits(ax, ys: Iterable[float], strict: float) -> None:
    vals = [v for v in ys if v > 0] + [strict]
    ax.set_ylim(min(vals) / 2, max(max(vals) * 1.5, 1.0))


# -- one trial ------------------------------------------------------------------------------------
def plot_trajectory(view: TrialView, path: str | Path, strict: float = STRICT_NC1, relaxed: float = RELAXED_NC1,
                    dpi: int = 100) -> Path:
    """One trial's story in two panels sharing the epoch axis (see the module docs)."""
    fig = new_figure(8, 6, dpi)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.09, top=0.93, hspace=0.08)
    ax_fn, ax_nc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ex, fn = view.series(FN)
    nx, nc1 = view.series(NC1)
    epochs = [num(r.get(EPOCH)) for r in view.rows if num(r.get(EPOCH)) is not None]
    x_hi = max(epochs) if epochs else 1.0

    sw = view.switch()
    if sw is not None:
        for ax in (ax_fn, ax_nc):
            ax.axvspan(0, sw, color="0.92", lw=0, zorder=0)
        _vline((ax_fn, ax_nc), sw, "0.5", lw=1.0)
        ax_fn.annotate("CE", (sw, 1), xycoords=("data", "axes fraction"), xytext=(-4, -4),
                       textcoords="offset points", ha="right", va="top", fontsize=8, color="0.35")
        ax_fn.annotate("MSE \u2192", (sw, 1), xycoords=("data", "axes fraction"), xytext=(4, -4),
                       textcoords="offset points", ha="left", va="top", fontsize=8, color="0.35")

    if view.band is not None:
        draw_band(ax_fn, view.band)
    ax_fn.plot(ex, fn, color=FN_COLOUR, marker=".", ms=4, lw=1.5, label="fn (mean feature norm)", zorder=3)
    log_axis(ax_fn)
    _fn_limits(ax_fn, fn, view.band)
    ax_fn.set_ylabel("fn (log)", color=FN_COLOUR)

    ax_nc.plot(nx, nc1, color=NC1_COLOUR, marker=".", ms=4, lw=1.5, label="NC1", zorder=3)
    log_axis(ax_nc)
    draw_thresholds(ax_nc, strict, relaxed)
    _nc1_limits(ax_nc, nc1, strict)
    ax_nc.set_ylabel("NC1 (log)", color=NC1_COLOUR)
    ax_nc.set_xlabel("epoch")

    fc = view.forecast()
    if fc is not None and math.isfinite(fc.onset):
        x_hi = max(x_hi, fc.high if math.isfinite(fc.high) else fc.onset)
    ax_nc.set_xlim(0, x_hi * 1.02)
    if fc is not None and math.isfinite(fc.onset):
        if fc.high > fc.low:  # False for NaN bounds
            for ax in (ax_fn, ax_nc):
                ax.axvspan(fc.low, fc.high, color=FORECAST_COLOUR, alpha=0.12, lw=0, zorder=0)
        _vline((ax_fn, ax_nc), fc.onset, FORECAST_COLOUR, ls="--", lw=1.2)
        ax_nc.plot([fc.made_at], [strict], marker="v", color=FORECAST_COLOUR, ms=7, zorder=4, clip_on=False)
    if view.crossing is not None:
        y = view.value_at(FN, view.crossing)
        _vline((ax_fn,), view.crossing, CROSS_COLOUR, ls="-.", lw=1.0)
        if y is not None:
            ax_fn.plot([view.crossing], [y], marker="o", ms=7, mfc="none", mec=CROSS_COLOUR, mew=1.8, zorder=4)
    if view.t_nc is not None:
        _vline((ax_fn, ax_nc), view.t_nc, ONSET_COLOUR, lw=1.3)
        y = view.value_at(NC1, view.t_nc)
        if y is not None:
            ax_nc.plot([view.t_nc], [y], marker="o", ms=6, color=ONSET_COLOUR, zorder=4)

    # One legend that says what every mark is, with its numbers.
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=FN_COLOUR, marker=".", label="fn (mean feature norm)")]
    if view.band is not None:
        handles.append(Patch(facecolor=BAND_COLOUR, alpha=0.4, edgecolor=BAND_COLOUR, ls="--",
                             label=view.band.label()))
    if view.crossing is not None:
        handles.append(Line2D([], [], color=CROSS_COLOUR, ls="-.", marker="o", mfc="none",
                              label=f"fn crosses fn* @ {text.value(view.crossing)}"))
    if fc is not None:
        handles.append(Patch(facecolor=FORECAST_COLOUR, alpha=0.3, edgecolor=FORECAST_COLOUR,
                             label=forecast_label(fc)))
    if view.t_nc is not None:
        lead = "" if view.crossing is None else f", {text.value(view.t_nc - view.crossing)} after the crossing"
        handles.append(Line2D([], [], color=ONSET_COLOUR,
                              label=f"onset T_NC {text.value(view.t_nc)} (NC1 < {text.value(strict)}{lead})"))
    if sw is not None:
        handles.append(Line2D([], [], color="0.5", label=f"CE \u2192 MSE @ {text.value(sw)}"))
    # Where it hides the fewest points (a trial's ~100 points: cheap); upper right hid a late forecast.
    ax_fn.legend(handles=handles, loc="best", fontsize=7.5, framealpha=0.85)

    heading(fig, _trial_title(view), 10)  # not an axes title: no title layout pass
    return save(fig, path)


def _trial_title(view: TrialView) -> str:
    keys = ", ".join(f"{k}={_text(v)}" for k, v in view.keys.items())
    what = {"onset": "stopped at onset", "forecast": "stopped at its forecast",
            "no_onset_forecast": "stopped: no onset expected", "budget": "ran its budget",
            "cannot_win": "stopped: cannot beat the best so far", "capped": "capped at the best so far",
            "diverged": "diverged", "error": "failed", "interrupted": "interrupted",
            "scheduler": "stopped by the scheduler"}.get(view.stop_reason or "", "")
    head = view.name + (f"  ({keys})" if keys else "")
    return head + (f" \u2014 {what}" if what else "")


def _text(v: Any) -> str:
    """A number as a picture shows it (a searched key's value, fn*): three significant digits."""
    return text.value(v, 3)


# -- the study --------------------------------------------------------------------------------------
def colour_key(trials: Sequence[TrialView]) -> str | None:
    """The searched key to colour by: the first that varies, seeds last."""
    keys: list[str] = []
    for t in trials:
        keys += [k for k in t.keys if k not in keys]
    varying = [k for k in keys if len({_text(t.keys.get(k)) for t in trials}) > 1]
    ordered = [k for k in varying if "seed" not in k] + [k for k in varying if "seed" in k]
    return ordered[0] if ordered else None


def _colours(trials: Sequence[TrialView], key: str | None) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Trial name -> colour, and the legend entries (value label, colour)."""
    from matplotlib import colormaps

    if key is None:
        cmap = colormaps["tab10"]
        cols = {t.name: cmap(i % 10) for i, t in enumerate(trials)}
        return cols, []
    values = sorted({_text(t.keys.get(key)) for t in trials},
                    key=lambda s: (num(s) is None, num(s) if num(s) is not None else 0.0, s))
    numeric = all(num(v) is not None for v in values)
    if numeric and len(values) > 1:
        cmap = colormaps["viridis"]
        pos = {v: 0.9 * i / (len(values) - 1) for i, v in enumerate(values)}
        per_value = {v: cmap(pos[v]) for v in values}
    else:
        cmap = colormaps["tab10"]
        per_value = {v: cmap(i % 10) for i, v in enumerate(values)}
    cols = {t.name: per_value[_text(t.keys.get(key))] for t in trials}
    return cols, [(v, per_value[v]) for v in values]


def _group_bands(trials: Sequence[TrialView]) -> dict[str, Band]:
    bands: dict[str, Band] = {}
    for t in trials:
        if t.band is not None:
            bands[t.group] = t.band  # the latest trial's band of each group
    return bands


def plot_overview(trials: Sequence[TrialView], path: str | Path, title: str = "", strict: float = STRICT_NC1,
                  relaxed: float = RELAXED_NC1, key: str | None = None, dpi: int = 100) -> Path:
    """Every trial's fn and NC1 against epoch (log axes), coloured by ``key`` (default: the first
    searched key that varies); each group's fn* band; onsets (black-edged dots) and forecasts
    (diamonds with their interval)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    trials = list(trials)
    key = key or colour_key(trials)
    cols, legend_vals = _colours(trials, key)
    fig = new_figure(11, 7.5, dpi)
    fig.subplots_adjust(left=0.07, right=0.8, bottom=0.07, top=0.93, hspace=0.08)
    ax_fn, ax_nc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    bands = _group_bands(trials)
    band_cols = ["tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    band_marks = []
    for i, (g, b) in enumerate(sorted(bands.items())):
        col = band_cols[i % len(band_cols)]
        draw_band(ax_fn, b, col)
        band_marks.append(Patch(facecolor=col, alpha=0.4, edgecolor=col,
                                label=(f"{g}: " if len(bands) > 1 else "") + b.label()))
    switches = sorted({s for s in (t.switch() for t in trials) if s is not None})
    for s in switches:
        _vline((ax_fn, ax_nc), s, "0.6", lw=0.8)
    if switches:
        ax_fn.annotate("CE \u2192 MSE", (switches[0], 1), xycoords=("data", "axes fraction"), xytext=(4, -4),
                       textcoords="offset points", ha="left", va="top", fontsize=8, color="0.35")
    all_fn, all_nc, x_hi = [], [], 1.0
    for t in trials:
        c = cols[t.name]
        ex, fn = t.series(FN)
        nx, nc1 = t.series(NC1)
        all_fn += fn
        all_nc += nc1
        x_hi = max([x_hi, *ex, *nx])
        ax_fn.plot(ex, fn, color=c, lw=1.2, alpha=0.9, zorder=3)
        ax_nc.plot(nx, nc1, color=c, lw=1.2, alpha=0.9, zorder=3)
        if t.t_nc is not None:
            for ax, k in ((ax_fn, FN), (ax_nc, NC1)):
                y = t.value_at(k, t.t_nc)
                if y is not None:
                    ax.plot([t.t_nc], [y], marker="o", ms=6.5, color=c, mec="black", mew=1.2, zorder=5)
        fc = t.forecast()
        if fc is not None and math.isfinite(fc.onset) and t.stop_reason == "forecast":
            y = t.band.value if t.band is not None else (fn[-1] if fn else None)
            lo = fc.onset - fc.low if math.isfinite(fc.low) else 0.0
            hi = fc.high - fc.onset if math.isfinite(fc.high) else 0.0
            if y is not None:
                ax_fn.errorbar([fc.onset], [y], xerr=[[max(lo, 0.0)], [max(hi, 0.0)]], fmt="D", ms=6, color=c,
                               mec="black", mew=0.8, capsize=3, lw=1.2, zorder=5)
            ax_nc.errorbar([fc.onset], [strict], xerr=[[max(lo, 0.0)], [max(hi, 0.0)]], fmt="D", ms=6, color=c,
                           mec="black", mew=0.8, capsize=3, lw=1.2, zorder=5)
            x_hi = max(x_hi, fc.high if math.isfinite(fc.high) else fc.onset)
        elif t.stop_reason in EARLY_STOPS and fn:  # stopped with no onset to show: no onset / cannot win
            ax_fn.plot([ex[-1]], [fn[-1]], marker="X", ms=7, color=c, mec="black", mew=0.8, zorder=5)
    log_axis(ax_fn)
    _fn_limits(ax_fn, all_fn, None if not bands else Band(
        min(b.value for b in bands.values()), min(b.low or b.value for b in bands.values()),
        max(b.high or b.value for b in bands.values())))
    log_axis(ax_nc)
    draw_thresholds(ax_nc, strict, relaxed)
    _nc1_limits(ax_nc, all_nc, strict)
    ax_nc.set_xlim(0, x_hi * 1.02)
    ax_fn.set_ylabel("fn (log)")
    ax_nc.set_ylabel("NC1 (log)")
    ax_nc.set_xlabel("epoch")
    n_on = sum(t.t_nc is not None for t in trials)
    n_fc = sum(t.stop_reason in EARLY_STOPS for t in trials)
    ax_fn.set_title(wrap(f"{title + ': ' if title else ''}{len(trials)} trial(s), {n_on} reached onset, "
                         f"{n_fc} stopped early by the stopper", 0.73 * 11, 11), fontsize=11)
    shown = legend_vals
    if len(legend_vals) > 12:  # many values (a continuous key): a dozen across the range, ends included
        step = (len(legend_vals) - 1) / 11
        shown = [legend_vals[round(i * step)] for i in range(12)]
    handles = [Line2D([], [], color=c, lw=2.5, label=v) for v, c in shown]
    if len(shown) < len(legend_vals):
        handles.append(Line2D([], [], color="white", label=f"({len(legend_vals)} values; {len(shown)} shown)"))
    marks = [*(band_marks or [Patch(facecolor=BAND_COLOUR, alpha=0.4, edgecolor=BAND_COLOUR,
                                    label="fn* of the group (spread)")]),
             Line2D([], [], ls="", marker="o", color="0.7", mec="black", label="onset T_NC (NC1 < strict)"),
             Line2D([], [], ls="-", marker="D", color="0.7", mec="black", label="forecast onset [interval]\n"
                    "(trial stopped by it)"),
             Line2D([], [], ls="", marker="X", color="0.7", mec="black", label="stopped early, no onset\n"
                    "(cannot win / capped / none expected)"),
             Line2D([], [], color="0.6", label="CE \u2192 MSE switch")]
    leg1 = ax_fn.legend(handles=handles, title=key or "trial", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                        fontsize=8, title_fontsize=8.5, frameon=False)
    ax_fn.add_artist(leg1)
    from textwrap import fill

    for h in marks:
        h.set_label(fill(h.get_label(), 34))
    ax_nc.legend(handles=marks, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, frameon=False)
    return save(fig, path)


def _axis_values(values: Sequence[Any]) -> tuple[list[float], list[str] | None, bool]:
    """Positions of a key's values on an axis, the tick labels of a categorical key, and whether a
    numeric key spans enough for a log axis."""
    nums = [num(v) for v in values]
    if all(n is not None for n in nums):
        pos = [float(n) for n in nums]  # type: ignore[arg-type]
        positive = [p for p in pos if p > 0]
        log = len(positive) == len(pos) and max(pos) / min(pos) >= 8
        return pos, None, log
    labels = sorted({_text(v) for v in values})
    return [float(labels.index(_text(v))) for v in values], labels, False


def plot_sweep(trials: Sequence[TrialView], path: str | Path, title: str = "", keys: Sequence[str] | None = None,
               dpi: int = 100) -> Path:
    """T_NC (top) and fn* (bottom) against each searched key, one column per key: observed onsets
    (dots), forecasts of trials stopped by one (open diamonds with their interval), trials without
    an onset (triangles at their last epoch); fn* of each group as a band."""
    from matplotlib.lines import Line2D

    trials = list(trials)
    if keys is None:
        keys = []
        for t in trials:
            keys += [k for k in t.keys if k not in keys]
    keys = list(keys)[:5] or ["trial"]
    n = len(keys)
    fig = new_figure(max(4.2 * n, 6.5), 6.2, dpi, fit=True)  # drawn once a study: laid out to fit its text
    axes = fig.subplots(2, n, sharex="col", squeeze=False)
    bands = _group_bands(trials)
    for j, k in enumerate(keys):
        ax_t, ax_f = axes[0][j], axes[1][j]
        vals = [t.keys.get(k, t.name) if k != "trial" else t.name for t in trials]
        pos, labels, log = _axis_values(vals)
        for t, x in zip(trials, pos):
            fc = t.forecast()
            if t.t_nc is not None:
                ax_t.plot([x], [t.t_nc], "o", color="tab:blue", ms=6, zorder=3)
            elif t.stop_reason == "forecast" and fc is not None and math.isfinite(fc.onset):
                lo = fc.onset - fc.low if math.isfinite(fc.low) else 0.0
                hi = fc.high - fc.onset if math.isfinite(fc.high) else 0.0
                ax_t.errorbar([x], [fc.onset], yerr=[[max(lo, 0.0)], [max(hi, 0.0)]], fmt="D", mfc="white",
                              color=FORECAST_COLOUR, ms=6, capsize=3, zorder=3)
            else:  # no onset observed: where the trial ended, cut (by the stopper or scheduler: X) or at its budget (^)
                last = max(t.series(NC1)[0] or [0.0])
                ax_t.plot([x], [last], "X" if t.stop_reason in CENSORED_STOPS else "^", color="0.5", ms=6, zorder=3)
            if t.fn_star is not None:
                ax_f.plot([x], [t.fn_star], "o", color="tab:blue", ms=6, zorder=3)
        for i, (g, b) in enumerate(sorted(bands.items())):
            draw_band(ax_f, b, ["tab:orange", "tab:brown", "tab:pink"][i % 3])
        if log:
            log_axis(ax_f, "x")
        if labels is not None:
            ax_f.tick_params(axis="x", labelsize=8)
            value_ticks(ax_f, range(len(labels)), labels)
        else:  # a grid: ticks at its values
            value_ticks(ax_f, pos, log=log)
        ax_f.set_xlabel(k)
        ax_t.grid(alpha=0.3)
        ax_f.grid(alpha=0.3)
        if j == 0:
            ax_t.set_ylabel("T_NC (epoch)")
            ax_f.set_ylabel("fn* (fn at T_NC)")
    handles = [Line2D([], [], ls="", marker="o", color="tab:blue", label="observed onset / fn*"),
               Line2D([], [], ls="-", marker="D", mfc="white", color=FORECAST_COLOUR,
                      label="forecast onset [interval] (stopped by it)"),
               Line2D([], [], ls="", marker="^", color="0.5", label="no onset: T_NC > last epoch run"),
               Line2D([], [], ls="", marker="X", color="0.5",
                      label="stopped early (stopper or scheduler):\nT_NC > last epoch run"),
               Line2D([], [], ls="--", color=BAND_COLOUR, label="fn* of the group (band: spread)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    heading(fig, f"{title + ': ' if title else ''}onset and fn* against the searched keys", 11)
    return save(fig, path)
