"""Per-run trajectory figure (fn and NC1 against epoch, T_NC marked), shared by tracking and CLI."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping


def plot_trajectory(rows: Iterable[Mapping[str, Any]], path: str | Path, t_nc: float | None = None,
                    title: str | None = None, strict: float = 0.01) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    ep = [r["epoch"] for r in rows]
    fn = [r.get("feat_norm", math.nan) for r in rows]
    nc1 = [r.get("nc1", math.nan) for r in rows]
    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=100)
    ax1.plot(ep, fn, color="tab:blue", marker=".", label="fn (mean feature norm)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("fn", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.semilogy(ep, nc1, color="tab:red", marker=".", label="NC1")
    ax2.axhline(strict, color="tab:red", lw=0.8, ls=":")
    ax2.set_ylabel("NC1 (log)", color="tab:red")
    if t_nc is not None and math.isfinite(t_nc):
        ax1.axvline(t_nc, color="k", ls="--", lw=1)
        ax1.annotate(f"T_NC={t_nc:g}", (t_nc, ax1.get_ylim()[1]), ha="right", va="top", fontsize=8)
    ax1.set_title(title or "trajectory")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
