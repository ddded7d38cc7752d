"""ncstudy.figure: the one figure stack of the study pictures and the analysis figures."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ncstudy.figure import log_axis, new_figure, save, tick_label


@pytest.mark.parametrize("x, out", [(0.01, "0.01"), (20.0, "20"), (0.0, "0"), (1e-5, "1e-05"), (2e4, "2e+04")])
def test_tick_label(x, out):
    assert tick_label(x) == out


def _labels(ax, which: str) -> list[str]:
    ticks = ax.yaxis.get_minorticklabels() if which == "minor" else ax.yaxis.get_majorticklabels()
    return [t.get_text() for t in ticks if t.get_text()]


def test_log_axis_labels_2x_and_5x_only_where_a_decade_is_long_enough(tmp_path):
    fig = new_figure(4, 4)
    few, many = fig.subplots(1, 2)
    for ax, lo in ((few, 0.01), (many, 1e-7)):
        ax.plot([1, 2], [lo, 1.0])
        log_axis(ax)
        ax.set_ylim(lo, 1.0)
    out = save(fig, tmp_path / "axes.png")  # draws: the labels are set
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"0.01", "0.1", "1"} <= set(_labels(few, "major"))
    assert {"0.02", "0.05", "0.2", "0.5"} <= set(_labels(few, "minor"))
    assert _labels(many, "minor") == []  # 7 decades in 3 inches: decades only


def test_no_pyplot_and_no_backend_chosen_by_the_figure_modules():
    code = ("import sys, matplotlib; b = matplotlib.rcParams._get_backend_or_none(); "
            "import ncstudy.analyze.figures, ncstudy.plots, ncstudy.figure; "
            "assert 'matplotlib.pyplot' not in sys.modules; "
            "assert matplotlib.rcParams._get_backend_or_none() == b, matplotlib.rcParams._get_backend_or_none()")
    subprocess.run([sys.executable, "-c", code], check=True)
