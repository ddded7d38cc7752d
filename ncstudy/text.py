"""Values and tables as text: the one formatter of every number a table, report, label or terminal
line shows, and the one table renderer, with two outputs (aligned plain text for the terminal,
Markdown for reports).

* :func:`value` -- one value: a float to ``digits`` significant digits (whole numbers below 1e6
  whole), or to ``fixed`` decimals, or as a percentage (``percent``: a fraction shown x 100 with a
  ``%``), with its sign (``sign``); None, NaN and ``""`` as ``missing`` (``"-"`` unless the caller
  says otherwise, e.g. ``"never"`` for an onset, ``"none"`` for a group key, ``""`` on an axis);
  infinities as ``inf``; a mapping as ``k=v`` pairs; anything else as ``str``;
* :func:`mean_sd` -- ``mean ± sd`` (the mean alone when the SD is unknown);
* :func:`table` -- a header and rows of cells (strings as they are, anything else through
  :func:`value`) as aligned plain text or as a Markdown table; :func:`row` -- one line of a plain
  table printed as it grows, with fixed column widths.

Pure Python: no pandas or numpy import (their scalars and ``pd.NA`` are recognised by duck typing).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping, Sequence

MISSING = "-"

__all__ = ["MISSING", "mean_sd", "row", "table", "value"]


def _missing(v: Any) -> bool:
    if v is None or (isinstance(v, str) and v == ""):
        return True
    if type(v).__name__ == "NAType":  # pandas.NA, whose truth value raises
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and math.isnan(float(v))


def value(v: Any, digits: int = 4, *, fixed: int | None = None, percent: bool = False, sign: bool = False,
          unit: str = "", missing: str = MISSING) -> str:
    """``v`` as text (see the module docs).

    ``fixed`` decimals show a non-zero value that would round to zero in scientific notation
    (``1.20e-05``, not ``0.0000``); ``percent`` shows ``100 * v`` to ``fixed`` decimals (default 1)
    followed by `` %``; ``unit`` follows a number (``"x"``, ``" s"``, ``" %"`` for a value already
    in percent), never ``missing``.
    """
    if _missing(v):
        return missing
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, Mapping):
        return ",".join(f"{str(k).rsplit('.', 1)[-1]}={value(x, digits, fixed=fixed, missing=missing)}"
                        for k, x in v.items())
    if isinstance(v, numbers.Integral) and not fixed and not percent:
        return (f"{int(v):+d}" if sign else str(int(v))) + unit
    if not isinstance(v, numbers.Real):
        return str(v)
    x = float(v)
    plus = "+" if sign else ""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if percent:
        return f"{100 * x:{plus}.{1 if fixed is None else fixed}f} %"
    if fixed is not None:
        if x != 0 and abs(x) < 0.5 * 10 ** -fixed:
            return f"{x:{plus}.2e}{unit}"
        return f"{x:{plus}.{fixed}f}{unit}"
    if x.is_integer() and abs(x) < 1e6:
        return f"{int(x):{plus}d}{unit}"
    return f"{x:{plus}.{digits}g}{unit}"


def mean_sd(mean: Any, sd: Any, digits: int = 4, *, fixed: int | None = None, missing: str = MISSING) -> str:
    """``mean ± sd`` in the form :func:`value` gives both; the mean alone when ``sd`` is missing,
    ``missing`` when the mean is."""
    if _missing(mean):
        return missing
    m = value(mean, digits, fixed=fixed)
    return m if _missing(sd) else f"{m} ± {value(sd, digits, fixed=fixed)}"


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], markdown: bool = False, digits: int = 4,
          missing: str = MISSING) -> str:
    """A table of ``rows`` under ``head``: Markdown (``| a | b |`` lines; ``|`` in a cell escaped,
    line breaks made spaces) or plain text (columns left-aligned, two spaces apart, a rule of dashes
    under the header). Cells that are not strings go through :func:`value` (``digits``, ``missing``)."""
    cells = [_cells(r, digits, missing) for r in rows]
    if markdown:
        def md(c: str) -> str:
            return c.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(md(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(md(c) for c in r) + " |" for r in cells])
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(head)]
    return "\n".join([_line(head, widths), _line(["-" * w for w in widths])] + [_line(r, widths) for r in cells])


def row(cells: Sequence[Any], widths: Sequence[int], digits: int = 4, missing: str = MISSING) -> str:
    """One line of a plain-text table printed as it grows (a training run's evaluations, one at a
    time), laid out as :func:`table` lays out its lines: cells through :func:`value`, left-aligned
    to the given column ``widths`` (a wider cell pushes the rest), two spaces apart. The header is
    ``row(names, widths)``."""
    return _line(_cells(cells, digits, missing), widths)


def _cells(cells: Sequence[Any], digits: int, missing: str) -> list[str]:
    """A row's cells as text: strings as they are, anything else through :func:`value`."""
    return [c if isinstance(c, str) else value(c, digits, missing=missing) for c in cells]


def _line(parts: Sequence[str], widths: Sequence[int] | None = None) -> str:
    widths = widths if widths is not None else [len(p) for p in parts]
    return "  ".join(p.ljust(w) for p, w in zip(parts, widths)).rstrip()
