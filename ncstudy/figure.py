"""The one figure stack: what every picture of ncstudy (a study's pictures, :mod:`ncstudy.plots`;
the figures of ``ncstudy analyze``, :mod:`ncstudy.analyze.figures`) is made with.

matplotlib's object API only: a :class:`~matplotlib.figure.Figure` of its own per picture, no
pyplot, no backend chosen at import, no global figure registry (nothing to close, safe on any
thread). Plain tick labels ("0.01", "20"; mathtext labels doubled the drawing time).

* :func:`new_figure` -- a figure of a size, in inches;
* :func:`log_axis` -- a log axis labelled on decades and, where a decade is long enough, on 2x and 5x;
* :func:`tick_label` -- a tick value as text (``0.01``, ``20``, ``1e-05``);
* :func:`save` -- the PNG (fast zlib level: the default one took a quarter of a picture's time).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["MIN_DECADE_INCHES", "log_axis", "new_figure", "save", "tick_label"]

#: The least length of a decade on a log axis, in inches, for labels on 2x and 5x as well.
MIN_DECADE_INCHES = 0.6


def new_figure(width: float, height: float, dpi: int = 100):
    """A :class:`matplotlib.figure.Figure` of ``width`` x ``height`` inches, not registered anywhere."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def tick_label(x: float, _pos: Any = None) -> str:
    """A tick's text: plain between 1e-3 and 1e4 (``0.01``, ``250``), else ``1e-05``."""
    return f"{x:g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.0e}"


def _minor_labels(axis):
    """The 2x and 5x labels of a log axis, blank where a decade is shorter than
    :data:`MIN_DECADE_INCHES` (the labels would run into each other)."""
    import math

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


def save(fig, path: str | Path, tight: bool = False) -> Path:
    """Write ``fig`` as a PNG at its own dpi (``tight``: lay it out with ``tight_layout`` first)."""
    if tight:
        fig.tight_layout()
    out = Path(path)
    fig.savefig(out, pil_kwargs={"compress_level": 1})  # zlib level 6 took a quarter of the time
    return out
