"""The pictures a study's MLflow runs carry, and the process that draws them.

* :func:`draw_trajectory` -- a trial's ``trajectory.png`` from its rows and what the callback
  worked out on the driver (``plot``: name, group and its fn* band, onset, forecast stop, ...);
* :func:`draw_overview` -- the study run's ``overview.png``, ``sweep.png``, ``summary.csv`` of the
  ended trials, and the study metrics (:func:`study_metrics`).

Drawing a trial's picture costs about 0.3 s of CPU in matplotlib, with the GIL held: on the driver
that would stall Tune's event loop and the stopper. :class:`PictureProcess` draws them in one
child process instead (``python -m ncstudy.adapters.mlflow.pictures``), fed over a pipe by the
MLflow writer thread, which waits for the answer without holding the GIL. The child ends when the
driver closes it, when the driver dies (its stdin reaches end of file) or after ``idle_s`` seconds
without work (a later picture starts a new one); it runs in a session of its own and ignores
SIGINT and SIGHUP, so Ctrl-C in the terminal or a signal to the driver's process group does not
kill it mid-picture (the driver decides). If no child can be started, pictures are drawn in the calling thread and a
warning says so once. No Ray import here: the child starts in about a second.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ncstudy.onset import TERMINAL_ACC
from ncstudy.records import EPOCH, FN, num

from .layout import OVERVIEW_PNG, STUDY_METRICS, SUMMARY_ARTIFACT, SWEEP_PNG

log = logging.getLogger("ncstudy.tracking")

__all__ = ["PictureProcess", "draw_overview", "draw_trajectory", "study_metrics", "trial_view"]


def trial_view(rows: list[dict[str, Any]], plot: dict[str, Any]):
    """The :class:`ncstudy.plots.TrialView` of an ended trial: its rows and what the callback worked
    out on the driver (``plot``); the crossing of its group's fn* is found here, by the one rule
    (:func:`ncstudy.forecast.protocol.first_crossing`, phase 2, terminal evaluations)."""
    from ncstudy.forecast.protocol import TerminalGate, first_crossing, phase_of
    from ncstudy.plots import Band, TrialView

    band = Band.from_dict(plot.get("band"))
    crossing = None
    if band is not None:
        gate = TerminalGate(float(plot.get("terminal_acc") or TERMINAL_ACC))
        pts = [(int(r[EPOCH]), phase_of(r), r.get(FN)) for r in rows if num(r.get(EPOCH)) is not None
               and gate.update(r)]
        c = first_crossing(pts, band.value)
        crossing = None if c is None else float(c[0])
    keys = plot.get("keys") or {}
    return TrialView(str(plot.get("title") or "trial"), rows, num(plot.get("t_nc")), band, crossing,
                     plot.get("stop_reason") or None, str(plot.get("group") or ""), dict(keys),
                     num(plot.get("fn_star")), num(plot.get("collapse_epoch")))


def _thresholds(plot: dict[str, Any]) -> dict[str, float]:
    return {k: float(plot[k]) for k in ("strict", "relaxed") if num(plot.get(k)) is not None}


def draw_trajectory(rows: list[dict[str, Any]], path: Path, plot: dict[str, Any]) -> Path:
    """A trial's ``trajectory.png`` (:func:`ncstudy.plots.plot_trajectory`)."""
    from ncstudy.plots import plot_trajectory

    return plot_trajectory(trial_view(rows, plot), path, **_thresholds(plot))


def study_metrics(plots: list[dict[str, Any]]) -> dict[str, float]:
    """The study run's metrics (:data:`~.layout.STUDY_METRICS`) from its ended trials' ``plot``."""
    from ncstudy.records import EARLY_STOPS, FORECAST_STOPS

    collapse = [v for v in (num(p.get("collapse_epoch")) for p in plots) if v is not None]
    early = [p for p in plots if p.get("stop_reason") in EARLY_STOPS]
    saved = sum(max(0.0, num(p.get("budget")) - num(p.get("epochs_run")))  # type: ignore[operator]
                for p in early if num(p.get("budget")) is not None and num(p.get("epochs_run")) is not None)
    values = {"trials_finished": float(len(plots)),
              "trials_collapsed": float(sum(num(p.get("t_nc")) is not None for p in plots)),
              "stopped_by_forecast": float(sum(p.get("stop_reason") in FORECAST_STOPS for p in plots)),
              "best_collapse_epoch": min(collapse) if collapse else math.nan,
              "epochs_saved": float(saved)}
    return {STUDY_METRICS[k]: v for k, v in values.items()}


def draw_overview(title: str, trials: list[tuple[list[dict[str, Any]], dict[str, Any]]],
                  folder: Path) -> tuple[list[Path], dict[str, float]]:
    """The study run's overview: :data:`OVERVIEW_PNG`, :data:`SWEEP_PNG`, ``summary.csv`` of the
    ended trials, and the study metrics."""
    import pandas as pd

    from ncstudy.plots import plot_overview, plot_sweep

    views = [trial_view(rows, plot) for rows, plot in trials]
    plots = [plot for _, plot in trials]
    th = _thresholds(plots[0]) if plots else {}
    paths = [plot_overview(views, folder / OVERVIEW_PNG, title, **th), plot_sweep(views, folder / SWEEP_PNG, title)]
    summary = [p["summary"] for p in plots if isinstance(p.get("summary"), dict)]
    if summary:
        pd.DataFrame(summary).to_csv(folder / SUMMARY_ARTIFACT, index=False)
        paths.append(folder / SUMMARY_ARTIFACT)
    return paths, study_metrics(plots)


# -- the drawing process ------------------------------------------------------------------------------
_HEADER = struct.Struct("!Q")  # every message: its length, then a pickle


def _message(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _send(f, message: bytes) -> None:
    f.write(message)
    f.flush()


def _recv(f) -> Any:
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("the picture process closed its pipe")
    n = _HEADER.unpack(head)[0]
    data = f.read(n)
    if len(data) < n:
        raise EOFError("the picture process closed its pipe mid-answer")
    return pickle.loads(data)


class PictureError(RuntimeError):
    """A drawing function raised in the picture process (its traceback is the message)."""


class PictureProcess:
    """Runs drawing functions (module-level, picklable) in one child process; see the module docs.

    ``run(fn, *args)`` returns ``(fn(*args), CPU seconds it took)``. One call at a time (a lock);
    the MLflow writer thread is the one caller.
    """

    def __init__(self, idle_s: float = 600.0) -> None:
        self.idle_s = float(idle_s)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._in_process = False  # no child could be started: draw in the caller
        self.started = 0  # children started (tests, benchmarks)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # its own session: a signal to the driver's process group is the driver's to act on
        proc = subprocess.Popen([sys.executable, "-m", __name__, str(self.idle_s)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, close_fds=True, start_new_session=True)
        self.started += 1
        return proc

    def _close_proc(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def run(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        try:
            message = _message((fn, args))
        except (pickle.PicklingError, AttributeError, TypeError):  # a lambda, a local function: draw here
            message = None
        with self._lock:
            if message is not None and not self._in_process:
                for attempt in range(2):  # an idle child may have just ended: one fresh start
                    try:
                        if self._proc is None or self._proc.poll() is not None:
                            self._close_proc()
                            self._proc = self._start()
                        _send(self._proc.stdin, message)
                        ok, value, cpu = _recv(self._proc.stdout)
                    except (OSError, EOFError, pickle.PickleError) as e:
                        self._close_proc()
                        if attempt == 1:
                            log.warning("pictures are drawn on the driver: the picture process failed (%s)", e)
                            self._in_process = True
                        continue
                    if not ok:
                        raise PictureError(value)
                    return value, cpu
        t0 = time.thread_time()
        return fn(*args), time.thread_time() - t0

    def close(self) -> None:
        with self._lock:
            self._close_proc()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self._close_proc()
        except Exception:
            pass


def _serve(idle_s: float) -> None:
    """The child: answer ``(fn, args)`` messages on stdin until end of file or ``idle_s`` idle."""
    for s in (signal.SIGINT, signal.SIGHUP):  # the driver ends this process, not a terminal's Ctrl-C or hang-up
        signal.signal(s, signal.SIG_IGN)
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() and warnings from drawing code go to stderr, not into the answers
    while True:
        ready, _, _ = select.select([inp], [], [], idle_s)
        if not ready:
            return  # idle: the driver starts a new one when it needs it
        try:
            fn, args = _recv(inp)
        except EOFError:
            return
        t0 = time.process_time()
        try:
            value, ok = fn(*args), True
        except Exception:
            import traceback

            value, ok = traceback.format_exc(), False
        _send(out, _message((ok, value, time.process_time() - t0)))


if __name__ == "__main__":
    _serve(float(sys.argv[1]) if len(sys.argv) > 1 else 600.0)
