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


def test_heading_wraps_to_the_figure_and_makes_room_under_fixed_margins():
    from ncstudy.figure import heading, wrap

    assert wrap("a b c", 5, 10) == "a b c"
    long = "trial w256-wd5e-05-s1 (model.width=256, optim.weight_decay=5e-05, seed=1) stopped at its forecast"
    assert all(len(line) * 0.6 * 10 / 72 <= 4 for line in wrap(long, 4, 10).split("\n"))
    fig = new_figure(4, 3)
    fig.subplots_adjust(top=0.95)
    assert heading(fig, long, 10) > 1
    assert fig.subplotpars.top < 0.95 and "\n" in fig._suptitle.get_text()


def test_value_ticks_at_the_values_run_turned_where_they_would_touch_limits_padded(tmp_path):
    from ncstudy.figure import value_ticks

    fig = new_figure(3, 3, fit=True)
    crowded, roomy, cats = fig.subplots(1, 3)
    log_axis(crowded, "x")
    value_ticks(crowded, [1e-5, 5e-5, 1e-4, 5e-4, 1e-3], log=True)
    value_ticks(roomy, [2, 3, 5, 7])
    value_ticks(cats, [0, 1], ["relu", "gelu"])
    save(fig, tmp_path / "ticks.png")
    assert [t.get_text() for t in crowded.get_xticklabels()] == ["1e-05", "5e-05", "1e-04", "5e-04", "1e-03"]
    assert crowded.get_xticklabels()[0].get_rotation() == 30
    assert [t.get_text() for t in roomy.get_xticklabels()] == ["2", "3", "5", "7"]
    lo, hi = roomy.get_xlim()
    assert lo < 2 and hi > 7 and cats.get_xlim() == (-0.5, 1.5)


def test_the_values_of_one_axis_are_labelled_in_one_notation():
    from ncstudy.figure import value_labels

    assert value_labels([3e-05, 1e-04, 3e-04, 0.001]) == ["3e-05", "1e-04", "3e-04", "1e-03"]  # was ..., "0.001"
    assert value_labels([2.5e-05, 0.0]) == ["2.5e-05", "0"]
    assert value_labels([128, 256, 0.5]) == ["128", "256", "0.5"]  # plain when none needs more
