"""The reference log format (one row per evaluation), read and written in one place.

Columns follow ``../shared/reference/README.md``: ``epoch, phase, train, test, nc1, nc2, nc3,
feat_norm``; ncstudy adds its extra metrics after them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

REFERENCE_COLUMNS = ["epoch", "phase", "train", "test", "nc1", "nc2", "nc3", "feat_norm"]
REQUIRED_COLUMNS = ["epoch", "nc1", "feat_norm"]


class LogFormatError(ValueError):
    """A log file that lacks what is needed; the message names the file and the columns."""


def read_log(path: str | Path, required: Iterable[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    p = Path(path)
    try:
        df = pd.read_csv(p)
    except FileNotFoundError:
        raise LogFormatError(f"{p}: file not found") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise LogFormatError(f"{p}: not a readable CSV ({e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LogFormatError(
            f"{p}: missing required column(s) {', '.join(missing)}; "
            f"the reference format has {', '.join(REFERENCE_COLUMNS)}"
        )
    return df.sort_values("epoch").reset_index(drop=True)


def records_to_frame(records: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    df = pd.DataFrame(list(records))
    for c in REFERENCE_COLUMNS:
        if c not in df.columns:
            df[c] = float("nan")
    extra = [c for c in df.columns if c not in REFERENCE_COLUMNS]
    return df[REFERENCE_COLUMNS + extra]


def write_log(records: Iterable[Mapping[str, object]], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    records_to_frame(records).to_csv(p, index=False)
    return p
