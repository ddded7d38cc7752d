"""Per-run trajectory figure (fn and NC1 against epoch, T_NC marked), shared by tracking and CLI."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping


def plot_trajectory(rows: Iterable[Mapping[str, Any]], path: str | Path, t_nc: float | None = None,
                    title: str | None = None, strict: float = 0.01) -> Path:
    # The object API, not pyplot: no global figure registry, so the tracking callback can draw on
    # its background thread, and no backend switch for the caller.
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter, NullLocator

    rows = list(rows)
    ep = [r["epoch"] for r in rows]
    fn = [r.get("feat_norm", math.nan) for r in rows]
    nc1 = [r.get("nc1", math.nan) for r in rows]
    fig = Figure(figsize=(7, 4), dpi=100)
    # Fixed margins: tight_layout cost as much as drawing the figure.
    fig.subplots_adjust(left=0.1, right=0.88, bottom=0.12, top=0.92)
    ax1 = fig.subplots()
    ax1.plot(ep, fn, color="tab:blue", marker=".", label="fn (mean feature norm)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("fn", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.semilogy(ep, nc1, color="tab:red", marker=".", label="NC1")
    # Plain "1e-02" labels on decades only: mathtext tick labels doubled the drawing time.
    ax2.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=True))
    ax2.yaxis.set_minor_locator(NullLocator())
    ax2.axhline(strict, color="tab:red", lw=0.8, ls=":")
    ax2.set_ylabel("NC1 (log)", color="tab:red")
    if t_nc is not None and math.isfinite(t_nc):
        ax1.axvline(t_nc, color="k", ls="--", lw=1)
        ax1.annotate(f"T_NC={t_nc:g}", (t_nc, 1), xycoords=("data", "axes fraction"), xytext=(-3, -3),
                     textcoords="offset points", ha="right", va="top", fontsize=8)
    ax1.set_title(title or "trajectory")
    out = Path(path)
    fig.savefig(out)
    return out
