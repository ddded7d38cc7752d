"""The reference log format (one row per evaluation), read and written in one place.

Columns follow ``../shared/reference/README.md``: ``epoch, phase, train, test, nc1, nc2, nc3,
feat_norm``; ncstudy adds its extra metrics after them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from ncstudy.errors import LogFormatError
from ncstudy.records import ALIASES, EPOCH, FN, NC1, REFERENCE_COLUMNS

REQUIRED_COLUMNS = [EPOCH, NC1, FN]

__all__ = ["REFERENCE_COLUMNS", "REQUIRED_COLUMNS", "LogFormatError", "read_log", "write_log", "infer_phase",
           "records_to_frame"]


def read_log(path: str | Path, required: Iterable[str] = REQUIRED_COLUMNS,
             phase1_epochs: int | None = None) -> pd.DataFrame:
    """Read one reference-format log, sorted by epoch.

    ``phase1_epochs``: for two-phase logs written without a ``phase`` column (e.g. the author's
    ``gelu_s3.csv``), label epochs ``<= phase1_epochs`` phase 1 and later ones phase 2 (see
    :func:`infer_phase`). Ignored when the file has a ``phase`` column; by default nothing is inferred.
    """
    p = Path(path)
    try:
        df = pd.read_csv(p)
    except FileNotFoundError:
        raise LogFormatError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise LogFormatError(f"{p}: is a folder, not a CSV log") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise LogFormatError(f"{p}: not a readable CSV ({type(e).__name__}: {e})") from None
    # Names other tools use for the same columns (train_acc, fn, loss): see ncstudy.records.ALIASES.
    df = df.rename(columns={a: k for a, k in ALIASES.items() if a in df.columns and k not in df.columns})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LogFormatError(
            f"{p}: missing required column(s) {', '.join(missing)}; "
            f"the reference format has {', '.join(REFERENCE_COLUMNS)}"
        )
    df = df.sort_values("epoch").reset_index(drop=True)
    if phase1_epochs is not None and "phase" not in df.columns:
        df = infer_phase(df, phase1_epochs)
    return df


def infer_phase(df: pd.DataFrame, phase1_epochs: int) -> pd.DataFrame:
    """A copy of a two-phase log with a ``phase`` column added after ``epoch``.

    The protocol runs ``phase1_epochs`` epochs of cross-entropy first and numbers phase-2 epochs on
    from there (201, 202, ... for 200), so epoch ``<= phase1_epochs`` is phase 1, later is phase 2.
    """
    out = df.copy()
    out.insert(1 if "epoch" in out.columns else 0, "phase",
               (pd.to_numeric(out["epoch"]) > phase1_epochs).astype(int) + 1)
    return out


def records_to_frame(records: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    df = pd.DataFrame(list(records))
    for c in REFERENCE_COLUMNS:
        if c not in df.columns:
            df[c] = float("nan")
    extra = [c for c in df.columns if c not in REFERENCE_COLUMNS]
    return df[REFERENCE_COLUMNS + extra]


def write_log(records: Iterable[Mapping[str, object]], path: str | Path) -> Path:
    """Write the log whole or not at all (a temp file renamed over it): a run stopped by a signal,
    or killed, mid-write keeps its previous log."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    records_to_frame(records).to_csv(tmp, index=False)
    tmp.replace(p)
    return p
