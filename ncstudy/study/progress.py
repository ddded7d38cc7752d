"""Live trial table and final summary on the terminal (a Tune callback; Tune's own output is off)."""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, TextIO

from ray.tune import Callback

from ncstudy.adapters.trials import TrialSummary

COLUMNS = ("trial", "status", "epoch", "phase", "fn", "NC1", "forecast", "T_NC", "fn*", "stop")


def _f(v: Any, fmt: str = "{:.4g}") -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return str(int(v)) if v.is_integer() and abs(v) < 1e6 else fmt.format(v)
    return str(v)


def render_table(rows: list[dict[str, Any]], columns=COLUMNS) -> str:
    cells = [[_f(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


class ProgressTable(Callback):
    """``label``: ``trial -> name`` (:func:`ncstudy.study.runner.trial_namer`). The forecast column
    is the trial's ``t_nc_estimate`` (written into its results by the fn* stopper)."""

    def __init__(self, label: Callable[[Any], str], interval_s: float = 10.0, quiet: bool = False,
                 stream: TextIO | None = None, outcome: Any = None) -> None:
        self.label = label
        self.outcome = outcome  # ncstudy.study.outcome.StudyOutcome: the final status column
        self.interval_s = interval_s
        self.quiet = quiet
        self.stream = stream
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["stream"] = None
        return d

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def row(self, trial) -> dict[str, Any]:
        s = TrialSummary.of(trial, self.label(trial))
        return {"trial": s.trial, "status": s.status, "epoch": s.epochs_run, "phase": s.phase,
                "fn": s.final_feat_norm, "NC1": s.final_nc1, "forecast": s.t_nc_estimate, "T_NC": s.t_nc,
                "fn*": s.fn_star, "stop": s.stop_reason or ""}

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        now = time.monotonic()
        if not self.quiet and now - self._last >= self.interval_s:
            self._last = now
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            print(f"\n[{time.strftime('%H:%M:%S')}] {done}/{len(trials)} trials done", file=self._out())
            print(render_table([self.row(t) for t in trials]), file=self._out(), flush=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        rows = [self.row(t) for t in trials]
        if self.outcome is not None:  # what happened, not Tune's status (TERMINATED also when interrupted)
            for r, t in zip(rows, trials):
                r["status"] = self.outcome.outcome(t)
        cols = ("trial", "status", "epoch", "T_NC", "fn*", "forecast", "stop")
        print("\nStudy summary (epochs run = last evaluated epoch):", file=self._out())
        print(render_table(rows, cols), file=self._out(), flush=True)
