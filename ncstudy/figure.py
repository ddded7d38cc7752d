"""The one figure stack: what every picture of ncstudy (a study's pictures, :mod:`ncstudy.plots`;
the figures of ``ncstudy analyze``, :mod:`ncstudy.analyze.figures`) is made with.

matplotlib's object API only: a :class:`~matplotlib.figure.Figure` of its own per picture, no
pyplot, no backend chosen at import, no global figure registry (nothing to close, safe on any
thread). Plain tick labels ("0.01", "20"; mathtext labels doubled the drawing time).

* :func:`new_figure` -- a figure of a size, in inches, with fixed margins (cheap: a picture drawn
  per trial) or laid out to fit its text (``fit``: a picture drawn once);
* :func:`heading` -- the figure's title, wrapped to the figure's width (:func:`wrap`) and, with
  fixed margins, given the room its lines take;
* :func:`log_axis` -- a log axis labelled on decades and, where a decade is long enough, on 2x and 5x;
* :func:`value_ticks` -- ticks at the values a sweep ran (or at categories), turned where they
  would touch, limits padded so that a mark at either end and its note stay inside;
* :func:`tick_label` -- a tick value as text (``0.01``, ``20``, ``1e-05``); :func:`value_labels` --
  a sweep's values, in one notation;
* :func:`save` -- the PNG (fast zlib level: the default one took a quarter of a picture's time).

No text of a picture is cut at the figure's edge: titles wrap, ``fit`` figures make room for every
label and legend, notes at the axes' ends stay inside padded limits.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

__all__ = ["CHAR_EM", "MIN_DECADE_INCHES", "heading", "log_axis", "new_figure", "save", "tick_label",
           "value_labels", "value_ticks", "wrap"]

#: The least length of a decade on a log axis, in inches, for labels on 2x and 5x as well.
MIN_DECADE_INCHES = 0.6
#: The mean width of a character of matplotlib's default font (DejaVu Sans), in ems: what text is
#: wrapped and ticks are spaced by without drawing anything.
CHAR_EM = 0.6


def new_figure(width: float, height: float, dpi: int = 100, fit: bool = False):
    """A :class:`matplotlib.figure.Figure` of ``width`` x ``height`` inches, not registered anywhere.
    ``fit``: laid out when drawn (matplotlib's constrained layout) so that titles, axis labels, tick
    labels and legends placed ``"outside ..."`` fit in the figure; without it, the caller's fixed
    margins (no layout pass: cheaper)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained" if fit else None)


def _inches(text: str, fontsize: float) -> float:
    return len(text) * CHAR_EM * fontsize / 72


def wrap(text: str, inches: float, fontsize: float) -> str:
    """``text`` broken into lines no wider than ``inches`` at ``fontsize`` points (its own line
    breaks kept)."""
    chars = max(12, int(inches * 72 / (CHAR_EM * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def heading(fig, text: str, fontsize: float = 10) -> int:
    """``text`` as ``fig``'s title, wrapped to the figure's width; a figure of fixed margins has its
    top margin lowered, if need be, to the room the lines take. Returns the number of lines."""
    w, h = fig.get_size_inches()
    lines = wrap(text, 0.96 * w, fontsize)
    n = lines.count("\n") + 1
    if fig.get_layout_engine() is None:
        edge = 0.08  # inches above the title
        fig.suptitle(lines, fontsize=fontsize, y=1 - edge / h, va="top")
        room = edge + n * 1.3 * fontsize / 72 + 0.12  # the lines and a gap to the axes
        fig.subplots_adjust(top=min(fig.subplotpars.top, 1 - room / h))
    else:
        fig.suptitle(lines, fontsize=fontsize)
    return n


def tick_label(x: float, _pos: Any = None) -> str:
    """A tick's text: plain between 1e-3 and 1e4 (``0.01``, ``250``), else ``1e-05``."""
    return f"{x:g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.0e}"


def value_labels(values: Sequence[float]) -> list[str]:
    """Tick texts of a set of values, one notation for all: :func:`tick_label`'s plain numbers, or,
    when any of them needs scientific notation, all in it with the fewest digits that give the value
    (``3e-05, 1e-04, 3e-04, 1e-03``, not ``... 3e-04, 0.001``)."""
    plain = [tick_label(v) for v in values]
    if not any("e" in t for t in plain):
        return plain

    def sci(v: float) -> str:
        for d in range(3):
            t = f"{v:.{d}e}"
            if math.isclose(float(t), v, rel_tol=1e-9):
                return t
        return f"{v:.2e}"

    return ["0" if v == 0 else sci(v) for v in values]


def _minor_labels(axis):
    """The 2x and 5x labels of a log axis, blank where a decade is shorter than
    :data:`MIN_DECADE_INCHES` (the labels would run into each other)."""
    from matplotlib.ticker import Formatter

    class MinorLabels(Formatter):
        def __call__(self, x: float, pos: Any = None) -> str:
            lo, hi = sorted(axis.get_view_interval())
            ax = axis.axes
            box = ax.get_position()
            w, h = ax.figure.get_size_inches()
            inches = box.height * h if axis is ax.yaxis else box.width * w
            if lo > 0 and hi > lo and inches / math.log10(hi / lo) < MIN_DECADE_INCHES:
                return ""
            return tick_label(x)

    return MinorLabels()


def log_axis(ax, axis: str = "y", minor_labels: bool = True, labelsize: float | None = None) -> None:
    """Make ``axis`` ("x" or "y") of ``ax`` logarithmic: ticks and plain labels on decades and (with
    ``minor_labels``, where a decade is long enough) smaller ones on 2x and 5x, to read values
    between decades. ``labelsize``: the decades' label size (default: matplotlib's)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    a = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    a.set_major_locator(LogLocator(base=10))
    a.set_major_formatter(FuncFormatter(tick_label))
    a.set_minor_locator(LogLocator(base=10, subs=(2, 5)))  # few ticks: tick objects are most of the cost
    a.set_minor_formatter(_minor_labels(a) if minor_labels else NullFormatter())
    minor = 7.5 if labelsize is None else min(7.5, labelsize)
    a.set_tick_params(which="minor", labelsize=minor)
    if labelsize is not None:
        a.set_tick_params(which="major", labelsize=labelsize)


def value_ticks(ax, values: Sequence[float], labels: Sequence[str] | None = None, axis: str = "x",
                log: bool = False, most: int = 8, pad: float = 0.08) -> None:
    """Ticks of ``axis`` at the distinct ``values`` (a sweep's grid; with ``labels``: categories at
    those positions), labelled by :func:`value_labels` unless ``labels`` are given; more than ``most``
    distinct numbers keep matplotlib's ticks. Labels closer than their own width are turned 30
    degrees. The limits are padded by ``pad`` of the span (of its decades, ``log``; categories:
    half a step) so that a mark at either end, and a note centred on it, stay inside the axes."""
    from matplotlib.ticker import NullLocator

    pos = sorted({float(v) for v in values})
    if not pos:
        return
    lo, hi = pos[0], pos[-1]
    if labels is not None:
        lims = (lo - 0.5, hi + 0.5)
    elif log:
        f = max((hi / lo) ** pad, 1.3)
        lims = (lo / f, hi * f)
    else:
        d = (hi - lo) * pad or max(abs(lo) * 0.1, 0.5)
        lims = (lo - d, hi + d)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(*lims)
    if labels is None and len(pos) > most:
        return
    texts = list(labels) if labels is not None else value_labels(pos)
    a = ax.xaxis if axis == "x" else ax.yaxis
    a.set_minor_locator(NullLocator())
    size = a.get_majorticklabels()[0].get_fontsize() if a.get_majorticklabels() else 10
    kw = {}
    if axis == "x" and len(pos) > 1:
        box = ax.get_position()
        inches = box.width * ax.figure.get_size_inches()[0]
        f = (lambda v: math.log10(v)) if log else (lambda v: v)
        span = f(lims[1]) - f(lims[0])
        widest = [max(_inches(t, size) for t in s.split("\n")) for s in texts]
        if any((f(b) - f(a_)) / span * inches < (wa + wb) / 2 + 0.08
               for a_, b, wa, wb in zip(pos, pos[1:], widest, widest[1:])):
            kw = {"rotation": 30, "ha": "right", "rotation_mode": "anchor"}
    (ax.set_xticks if axis == "x" else ax.set_yticks)(pos, texts, **kw)


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at its own dpi."""
    out = Path(path)
    fig.savefig(out, pil_kwargs={"compress_level": 1})  # zlib level 6 took a quarter of the time
    return out
