"""Live trial table and final summary on the terminal (a Tune callback; Tune's own output is off)."""
from __future__ import annotations

import math
import sys
import time
from collections import deque
from typing import Any, Callable, Sequence, TextIO

from ray.tune import Callback

from ncstudy.adapters.trials import TrialSummary
from ncstudy.deprecation import renamed_function
from ncstudy.records import EARLY_STOPS, STOP_REASON, end_reason
from ncstudy.text import table, value

COLUMNS = ("trial", "status", "epoch", "phase", "fn", "NC1", "forecast", "T_NC", "fn*", "stop")


def _table(rows: list[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    return table(list(columns), [[r.get(c) for c in columns] for r in rows])


render_table = renamed_function("ncstudy.study.progress.render_table", "ncstudy.text.table", _table)


class ProgressTable(Callback):
    """``label``: ``trial -> name`` (:func:`ncstudy.study.runner.trial_namer`). The forecast column
    is the trial's ``t_nc_estimate`` (written into its results by the fn* stopper).

    A study of up to ``max_rows`` trials is shown whole at every interval. A larger one shows its
    running trials and the ``recent`` trials that ended last in full, the rest as counts (by status
    and stop reason) and the best ``metric`` so far -- the same few lines at trial 50 and trial
    5,000 (as Tune's own reporter does). The end-of-study summary follows the same rule, with the
    ``best`` best trials in full; ``summary_note`` says where the whole table is (``summary.csv``).
    ``budget_of`` (``trial -> its last epoch``) tells a trial a scheduler ended before its budget;
    with ``stopper`` the summary ends with what the stopper saved.
    """

    def __init__(self, label: Callable[[Any], str], interval_s: float = 10.0, quiet: bool = False,
                 stream: TextIO | None = None, outcome: Any = None, metric: str | None = None,
                 mode: str = "min", max_rows: int = 30, recent: int = 5, best: int = 10,
                 summary_note: str | None = None, budget_of: Callable[[Any], int | None] | None = None,
                 stopper: bool = False) -> None:
        self.label = label
        self.outcome = outcome  # ncstudy.study.outcome.StudyOutcome: the final status column
        self.interval_s = interval_s
        self.quiet = quiet
        self.stream = stream
        self.metric, self.mode = metric, mode
        self.max_rows, self.best, self.summary_note = max_rows, best, summary_note
        self.budget_of, self.stopper = budget_of, stopper
        self._recent: deque[str] = deque(maxlen=recent)  # trials that ended, newest last
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
                "fn": s.final_feat_norm, "NC1": s.final_nc1, "forecast": s.forecast, "T_NC": s.t_nc,
                "fn*": s.fn_star, "stop": s.stop_reason or ""}

    # -- hooks -----------------------------------------------------------------------------------
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        now = time.monotonic()
        if not self.quiet and now - self._last >= self.interval_s:
            self._last = now
            print("\n" + self.view(trials), file=self._out(), flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._ended(trial)

    def _ended(self, trial) -> None:
        if trial.trial_id in self._recent:
            self._recent.remove(trial.trial_id)
        self._recent.append(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        print("\n" + self.summary(trials), file=self._out(), flush=True)

    # -- what is printed -------------------------------------------------------------------------
    def view(self, trials: list) -> str:
        """The live view: a header line, then every trial (small studies) or the running and
        recently ended ones, the counts and the best so far."""
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        head = f"[{time.strftime('%H:%M:%S')}] {done}/{len(trials)} trials done"
        if len(trials) <= self.max_rows:
            return head + "\n" + _table([self.row(t) for t in trials])
        running = [t for t in trials if t.status == "RUNNING"]
        by_id = {t.trial_id: t for t in trials} if self._recent else {}
        recent = [by_id[i] for i in reversed(self._recent) if i in by_id and by_id[i].status != "RUNNING"]
        shown = running[:self.max_rows] + recent
        lines = [head + f" ({self.counts(trials)})"]
        lines.append(_table([self.row(t) for t in shown]))
        if len(running) > self.max_rows:
            lines.append(f"... and {len(running) - self.max_rows} more running")
        if len(trials) > len(shown):
            lines.append(f"{len(trials) - len(shown)} more trial(s) not shown")
        best = self.best_so_far(trials)
        if best:
            lines.append(best)
        return "\n".join(lines)

    def counts(self, trials: list) -> str:
        """``"3 running, 40 pending, 950 terminated (forecast 500, onset 400, ...), 7 error"``."""
        status: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for t in trials:
            status[t.status] = status.get(t.status, 0) + 1
            if t.status in ("TERMINATED", "ERROR"):
                given, failed = (t.last_result or {}).get(STOP_REASON), t.status == "ERROR"
                if given or failed or self.budget_of is None:  # no epochs or budget needed (most trials)
                    r = end_reason(given, failed)
                else:  # a trial ended with no reason of its own: before its budget, by the scheduler?
                    r = end_reason(None, False, TrialSummary.of(t, "").epochs_run, self.budget_of(t))
                reasons[r] = reasons.get(r, 0) + 1
        parts = []
        for st in ("RUNNING", "PENDING", "PAUSED", "TERMINATED", "ERROR"):
            if status.get(st):
                part = f"{status[st]} {st.lower()}"
                if st == "TERMINATED" and reasons:
                    part += " (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda x: -x[1])) + ")"
                parts.append(part)
        return ", ".join(parts)

    def _ranked(self, trials: list) -> list:
        """Ended trials with a finite objective, best first."""
        if not self.metric:
            return []
        vals = []
        for t in trials:
            v = (t.last_result or {}).get(self.metric) if t.status in ("TERMINATED", "ERROR") else None
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                vals.append((float(v), t))
        vals.sort(key=lambda x: x[0], reverse=self.mode == "max")
        return [t for _, t in vals]

    def best_so_far(self, trials: list) -> str:
        ranked = self._ranked(trials)
        if not ranked:
            return ""
        t = ranked[0]
        stop = (t.last_result or {}).get(STOP_REASON) or ""
        return (f"best {self.metric} so far: {value(float(t.last_result[self.metric]))} ({self.label(t)}"
                + (f", stop {stop}" if stop else "") + ")")

    def summary(self, trials: list) -> str:
        """The end-of-study table (every trial, or the counts and the best ones of a large study)."""
        cols = ("trial", "status", "epoch", "T_NC", "fn*", "forecast", "stop")

        def rows(ts: list) -> list[dict[str, Any]]:
            out = [self.row(t) for t in ts]
            if self.outcome is not None:  # what happened, not Tune's status (TERMINATED also when interrupted)
                for r, t in zip(out, ts):
                    r["status"] = self.outcome.outcome(t)
            return out

        head = "Study summary (epochs run = last evaluated epoch):"
        saved = self.saved(trials)
        if len(trials) <= self.max_rows:
            return head + "\n" + _table(rows(trials), cols) + (f"\n{saved}" if saved else "")
        lines = [head, f"{len(trials)} trials: {self.counts(trials)}"]
        if self.outcome is not None:
            outcomes: dict[str, int] = {}
            for t in trials:
                o = self.outcome.outcome(t)
                outcomes[o] = outcomes.get(o, 0) + 1
            lines.append("outcomes: " + ", ".join(f"{v} {k}" for k, v in outcomes.items()))
        ranked = self._ranked(trials)[:self.best]
        if ranked:
            lines.append(f"best {len(ranked)} by {self.metric} ({self.mode}):")
            lines.append(_table([dict(r, **{self.metric: (t.last_result or {}).get(self.metric)})
                                       for r, t in zip(rows(ranked), ranked)],
                                      cols + ((self.metric,) if self.metric not in cols else ())))
        if saved:
            lines.append(saved)
        if self.summary_note:
            lines.append(self.summary_note)
        return "\n".join(lines)

    def saved(self, trials: list) -> str:
        """What the stopper saved: the epochs its early stops left of the stopped trials' budgets,
        against the epochs the study ran (an upper bound of the saving against stop-at-onset-or-budget:
        a stopped trial might have collapsed before its budget)."""
        if self.budget_of is None or not self.stopper:
            return ""
        run, left, reasons = 0, 0, {}
        for t in trials:
            s = TrialSummary.of(t, "")
            run += s.epochs_run or 0
            budget = self.budget_of(t)
            if s.stop_reason in EARLY_STOPS and budget is not None and s.epochs_run is not None:
                left += max(0, budget - s.epochs_run)
                reasons[s.stop_reason] = reasons.get(s.stop_reason, 0) + 1
        if not reasons:
            return "stopper: no trial stopped before its onset or budget"
        why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda x: -x[1]))
        return (f"stopper: {sum(reasons.values())} of {len(trials)} trials stopped early ({why}); the study ran "
                f"{run:,} epochs, and saved up to {left:,} more ({left / (run + left):.0%}) that those trials "
                "had left of their budgets")
