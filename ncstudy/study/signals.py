"""Stop signals: SIGINT, SIGTERM and SIGHUP stop a command cleanly at any moment, a second one at once.

``timeout``, Slurm at a job's time limit, Kubernetes, Docker and systemd stop a program with
SIGTERM; closing its terminal sends SIGHUP; Ctrl-C sends SIGINT. :class:`StopSignals` gives all
three the same treatment, in the phases of a study:

==========  =====================================================================================
phase       first signal
==========  =====================================================================================
start-up    stops at once: nothing has been started or written yet (:class:`Interrupted`)
deferred    only noted; acted on when the section ends (``ray.init``, writing the study's state,
            shutting Ray down: interrupting them half-way crashed the process or left it running)
Tune        Tune's own interrupt (its SIGUSR1 handler): the running trials stop at their last
            checkpoint, Tune saves its state, the MLflow runs end KILLED
shut-down   noted; the shut-down goes on (the exit status says what ended)
==========  =====================================================================================

A second signal raises ``Interrupted(forced=True)`` wherever the driver is (except in a deferred
section, which is short): the driver skips what is left of Tune's clean-up and the MLflow flush,
still stops every process it started, and leaves a study that ``--resume`` continues from Tune's
last saved state. The exit status is 128 + the first signal's number (130, 143, 129).

Also here: while ``ray.init`` runs, Ray's own SIGTERM handlers (which exit or abort at once) are
kept out, and the processes a private Ray instance consists of are started in sessions of their
own (:func:`ray_start`), so a signal sent to the driver's process group (``timeout``, Ctrl-C in a
terminal, ``kill -TERM -PGID``) reaches the driver alone, which then stops them in order;
:func:`descendants` / :func:`reap` make sure none of them outlives the driver.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ncstudy.errors import STOP_SIGNALS, Interrupted, signal_name

STARTUP, TUNE, SHUTDOWN = "start-up", "tune", "shut-down"


class StopSignals:
    """The stop-signal handler of one command (see the module docs). Use as a context manager in
    the main thread; elsewhere (a study run from a worker thread) it does nothing."""

    def __init__(self, stream: Any = None) -> None:
        self.received: list[int] = []
        self.phase = STARTUP
        self.stream = stream
        self._previous: dict[int, Any] = {}
        self._defer = 0
        self._forwarded = False
        self.active = False

    # -- installing ------------------------------------------------------------------------------
    def __enter__(self) -> "StopSignals":
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def install(self) -> None:
        """Handle the stop signals here (again: ``ray.init`` replaces the SIGTERM handler)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for s in STOP_SIGNALS:
            old = signal.signal(s, self._handle)
            if s not in self._previous:
                self._previous[s] = old
        self.active = True

    def restore(self) -> None:
        for s, h in self._previous.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous.clear()
        self.active = False

    # -- state -----------------------------------------------------------------------------------
    @property
    def first(self) -> int | None:
        """The first stop signal received, if any."""
        return self.received[0] if self.received else None

    @property
    def forced(self) -> bool:
        return len(self.received) >= 2

    def _say(self, text: str) -> None:
        stream = self.stream or sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError, RuntimeError):  # a closed stream, or one busy in this thread
            pass

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        name = signal_name(signum)
        if len(self.received) == 1:
            what = {STARTUP: "stopping before anything starts",
                    TUNE: "stopping the study cleanly (running trials keep their last checkpoint)",
                    SHUTDOWN: "the study is already shutting down"}[self.phase]
            self._say(f"\nncstudy: {name} received: {what}; send it again to stop at once")
        else:
            self._say(f"ncstudy: {name} received again: stopping at once")
        if self._defer:
            return
        self.act(frame)

    def act(self, frame: Any = None) -> None:
        """Act on the signals received so far, as the phase asks."""
        if not self.received:
            return
        if self.forced:
            raise Interrupted(self.received[0], forced=True)
        if self.phase == STARTUP:
            raise Interrupted(self.received[0])
        if self.phase == TUNE:
            self.forward(frame)

    # -- sections ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def deferred(self, act: bool = True) -> Iterator[None]:
        """A section that must not be interrupted half-way: signals are noted, and acted on at its
        end (``act``; not when the section is the last thing the command does)."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
        if act and not self._defer:
            self.act()

    @contextlib.contextmanager
    def tune_loop(self) -> Iterator[None]:
        """Tune's run: a first signal ends its loop the way Tune's own interrupt does."""
        self.phase, self._forwarded = TUNE, False
        if self.active:  # a handler left by an earlier Tune run of this process must not take the signal
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        try:
            yield
        finally:
            self.phase = SHUTDOWN

    def forward(self, frame: Any = None) -> bool:
        """Hand a received stop to Tune's loop through Tune's interrupt handler (which Tune installs
        on SIGUSR1 when its run starts; until then the signal waits, see
        :class:`~ncstudy.study.outcome.StopForwarder`). True once handed over."""
        if not self.received or self._forwarded:
            return self._forwarded
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler) and handler != self._handle:
            handler(signal.SIGUSR1, frame)
            self._forwarded = True
            if self.active:  # Tune's handler puts back the SIGINT handler it found: ours, but be sure
                signal.signal(signal.SIGINT, self._handle)
        return self._forwarded

    def __getstate__(self) -> dict[str, Any]:  # pickled with Tune's callbacks: the handlers stay here
        return {"received": list(self.received), "phase": self.phase}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
        self.received, self.phase = list(state.get("received", [])), state.get("phase", STARTUP)


# -- Ray in the driver -------------------------------------------------------------------------------
#: Set in the driver while ``ray.init`` runs: Ray's core worker then installs no failure-signal
#: handler of its own in the driver (it turned SIGTERM into an abort, status 134). The processes
#: Ray starts keep theirs.
NO_FAILURE_HANDLER = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


@contextlib.contextmanager
def ray_start(signals: "StopSignals | None" = None) -> Iterator[None]:
    """While ``ray.init`` runs in the driver: the stop signals stay with ncstudy (Ray's own SIGTERM
    handlers, which exit or abort at once, are not installed), and every process Ray starts gets a
    session of its own, so a signal sent to the driver's process group or terminal does not reach
    Ray's processes and their trial workers behind the driver's back (Ray only blocks SIGINT in
    them). Ray still ends them with the driver (kernel fate-sharing), and the driver stops them
    when it ends (:func:`descendants`, :func:`reap`)."""
    try:
        from ray._private import services, utils
    except ImportError:  # pragma: no cover - a Ray without these modules: its defaults apply
        yield
        return
    base, set_sigterm = services.ConsolePopen, utils.set_sigterm_handler

    class _OwnSession(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            env = kwargs.get("env")
            if env is not None and env.get(NO_FAILURE_HANDLER) == "1" and own_flag:
                kwargs["env"] = {k: v for k, v in env.items() if k != NO_FAILURE_HANDLER}
            super().__init__(*args, **kwargs)

    own_flag = NO_FAILURE_HANDLER not in os.environ  # the user's own setting is left alone
    if own_flag:
        os.environ[NO_FAILURE_HANDLER] = "1"
    services.ConsolePopen = _OwnSession
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        services.ConsolePopen, utils.set_sigterm_handler = base, set_sigterm
        if own_flag:
            os.environ.pop(NO_FAILURE_HANDLER, None)
        if signals is not None:
            signals.install()  # in case anything else replaced a handler


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process (Linux ``/proc``; empty elsewhere)."""
    out: dict[int, tuple[int, str]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        out[int(d.name)] = (int(fields[1]), fields[19])  # ppid, starttime
    return out


def descendants(pid: int | None = None) -> dict[int, str]:
    """Every process below ``pid`` (default: this one), as pid -> start time (which tells a process
    apart from a later one with the same pid)."""
    root = os.getpid() if pid is None else pid
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        p = todo.pop()
        if p in out or p == root:
            continue
        out[p] = table[p][1]
        todo.extend(children.get(p, []))
    return out


def children(pid: int | None = None) -> dict[int, str]:
    """The processes ``pid`` (default: this one) started itself, as pid -> start time."""
    root = os.getpid() if pid is None else pid
    return {p: start for p, (ppid, start) in _proc_table().items() if ppid == root}


def alive(procs: dict[int, str]) -> dict[int, str]:
    """The processes of ``procs`` (pid -> start time) still running (zombies count as gone)."""
    out = {}
    for pid, start in procs.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[19] == start and fields[0] != "Z":
            out[pid] = start
    return out


def reap(procs: dict[int, str], timeout_s: float = 10.0) -> dict[int, str]:
    """Wait up to ``timeout_s`` for ``procs`` to exit, then SIGKILL the ones left, by pid (and only
    if the pid is still the same process). Returns the ones that had to be killed."""
    end = time.monotonic() + timeout_s
    left = alive(procs)
    while left and time.monotonic() < end:
        time.sleep(0.1)
        left = alive(left)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 2.0  # SIGKILL is delivered, not waited for: see them gone
    while alive(left) and time.monotonic() < end:
        time.sleep(0.05)
    return left
