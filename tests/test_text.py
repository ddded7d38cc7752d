"""ncstudy.text: the one value formatter and the one table renderer (plain text and Markdown)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ncstudy.text import mean_sd, row, table, value


@pytest.mark.parametrize("v, kw, out", [
    (0.0123456, {}, "0.01235"),
    (1234.5678, {}, "1235"),
    (250.0, {}, "250"),  # whole numbers whole
    (2e6, {}, "2e+06"),
    (7, {}, "7"),
    (np.float64(5e-05), {"digits": 6}, "5e-05"),
    (np.int64(3), {}, "3"),
    (0.9811, {"fixed": 3}, "0.981"),
    (1.2e-05, {"fixed": 4}, "1.20e-05"),  # not "0.0000"
    (0.0, {"fixed": 2}, "0.00"),
    (0.125, {"percent": True}, "12.5 %"),
    (-3.21, {"fixed": 1, "sign": True, "unit": " %"}, "-3.2 %"),
    (3.21, {"fixed": 1, "sign": True, "unit": " %"}, "+3.2 %"),
    (1.5, {"fixed": 2, "unit": "x"}, "1.50x"),
    (math.inf, {}, "inf"),
    (True, {}, "True"),
    ("relaxed", {}, "relaxed"),
    ({"model.width": 64, "lr": 0.00123456}, {"digits": 3}, "width=64,lr=0.00123"),
])
def test_value(v, kw, out):
    assert value(v, **kw) == out


@pytest.mark.parametrize("missing", [None, math.nan, np.nan, pd.NA, ""])
def test_missing_values_are_what_the_caller_says(missing):
    assert value(missing) == "-"
    assert value(missing, missing="never") == "never"
    assert value(missing, fixed=3, unit=" s", missing="") == ""


def test_mean_sd():
    assert mean_sd(256.66, 11.5, fixed=1) == "256.7 ± 11.5"
    assert mean_sd(1.08, None, fixed=3) == "1.080"
    assert mean_sd(math.nan, 1.0) == "-"


def test_table_plain_text_is_aligned_and_markdown_escapes():
    rows = [["a", 1.23456, None], ["longer name", 12, "x|y"]]
    assert table(["run", "fn", "note"], rows).splitlines() == [
        "run          fn     note",
        "-----------  -----  ----",
        "a            1.235  -",
        "longer name  12     x|y"]
    assert table(["run", "fn", "note"], rows, markdown=True).splitlines() == [
        "| run | fn | note |", "|---|---|---|", "| a | 1.235 | - |", "| longer name | 12 | x\\|y |"]
    assert table(["a", "b"], []) == "a  b\n-  -"


def test_a_growing_table_prints_its_rows_as_table_lays_them_out():
    widths = (5, 10, 6)
    lines = [row(("epoch", "nc1", "note"), widths), row((10, 0.012345, None), widths), row((20, 1e-05, "x"), widths)]
    assert lines == ["epoch  nc1         note", "10     0.01235     -", "20     1e-05       x"]
    # the same layout as a whole table whose columns are that wide
    assert table(("epoch", "nc1", "note"), [(10, 0.012345, None)]).splitlines()[2] == "10     0.01235  -"
    assert row(("a-much-wider-cell", 1), (3, 3)) == "a-much-wider-cell  1"
