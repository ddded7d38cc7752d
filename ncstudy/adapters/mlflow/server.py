"""The MLflow server processes ncstudy starts (``ncstudy ui``; the tests' and benchmarks' ``mlflow
server``), started so that none outlives what started it.

:func:`spawn` starts the server in a session of its own (a terminal's Ctrl-C, or a signal sent to
the starter's process group, does not reach it half-way: the starter decides) and asks the kernel
to send it SIGTERM when the starter dies, however it dies (SIGKILL included; Linux). On SIGTERM
the ``mlflow`` command stops the workers it started. :func:`stop` stops the server's whole process
group, by its PID, and waits for it to be gone.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl: nothing will tell us
        os.kill(os.getpid(), signal.SIGTERM)


def spawn(cmd: Sequence[str], **popen: Any) -> subprocess.Popen:
    """Start ``cmd`` in its own session, ended by the kernel (SIGTERM) when this process dies."""
    parent = os.getpid()
    return subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=lambda: _die_with_parent(parent),
                            **popen)


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still alive."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop(proc: subprocess.Popen, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` and every process of its group (``sig``, then SIGKILL after ``timeout_s``), and
    wait until the group is empty."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)
    end = time.monotonic() + timeout_s
    while group_alive(proc.pid) and time.monotonic() < end:  # its workers may outlive it a moment
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
