"""A real ``mlflow server`` subprocess on a free loopback port, for the cluster and fault tests.

The server is its own process group (:func:`ncstudy.adapters.mlflow.server.spawn`: its own
session, ended by the kernel if this process dies) and is stopped by its PID;
:meth:`MlflowServer.stop` then :meth:`MlflowServer.start` brings it back on the same port and the
same store, which is how the tests simulate a tracking server outage. The store is a SQLite file in
``root`` unless ``backend_store_uri`` names another (a PostgreSQL database: tests/postgres.py).
"""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ncstudy.adapters.mlflow.server import spawn, stop


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None, backend_store_uri: str | None = None,
                 workers: int = 1) -> None:
        self.root = Path(root)
        self.workers = workers
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.chosen_port = port is None  # ours to change while the server never ran on it
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except (OSError, http.client.HTTPException):  # nothing there yet, or not an HTTP server
            return False

    def start(self, timeout: float = 90.0) -> "MlflowServer":
        """Start the server and wait until it answers its health check. A port :func:`free_port` chose
        can be taken by another process (a Ray worker of a concurrent test) before the server binds
        it: then, on its first start only, the server moves to another free port."""
        self.launch()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                if self.chosen_port and self.starts < 4 and _port_taken(self.log_tail()):
                    self.proc, self.port = None, free_port()
                    self.launch()
                    continue
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self.log_tail()}")
            if self.healthy():
                self.chosen_port = False  # its port from now on: a restart comes back on it
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"mlflow server not healthy after {timeout} s: {self.log_tail()}")

    def launch(self) -> "MlflowServer":
        """Start the server process, without waiting for it to answer."""
        assert self.proc is None, "already running"
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        cmd = [mlflow, "server", "--backend-store-uri", self.backend_store_uri,
               "--artifacts-destination", (self.root / "artifacts").as_uri(),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
        self.starts += 1
        # MLflow 3 also starts GenAI job runners: 8 more processes, unused here
        env = dict(os.environ, PYTHONUNBUFFERED="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with (self.root / f"server{self.starts}.log").open("w") as log:  # ends with us, however we end
            self.proc = spawn(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop the server (and the workers it forked) by its PID / process group; wait until the port is free."""
        p, self.proc = self.proc, None
        if p is None:
            return
        stop(p, timeout_s=timeout, sig=sig)
        end = time.monotonic() + timeout
        while port_open(self.port) and time.monotonic() < end:
            time.sleep(0.1)

    def log_tail(self, n: int = 3000) -> str:
        logs = sorted(self.root.glob("server*.log"))
        return logs[-1].read_text()[-n:] if logs else ""


def _port_taken(log: str) -> bool:
    """Whether a server's log says it could not bind its port (uvicorn's and gunicorn's words)."""
    low = log.lower()
    return "address already in use" in low or "connection in use" in low
