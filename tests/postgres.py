"""A real PostgreSQL server (the Debian ``postgresql`` package's binaries) in a temporary folder, for
the tests that track (or keep an Optuna search) on PostgreSQL.

``initdb`` refuses to run as root: when the tests run as root, the server's commands run as the
``postgres`` user (``runuser``) in a folder it owns. The server listens on a free loopback port and
keeps its unix socket in its own folder, with password (SCRAM) authentication; :meth:`Postgres.stop`
stops it by the PID in its own ``postmaster.pid`` (``pg_ctl stop``, then SIGKILL if that fails) and
removes the folder.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow_server import free_port

#: The fix a skip names (CI turns a skip that says ``apt-get install`` into a failure: tests/conftest.py).
INSTALL = "apt-get install postgresql"


def find_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with ``initdb`` and ``pg_ctl`` (or ``$NCSTUDY_PG_BIN``)."""
    given = os.environ.get("NCSTUDY_PG_BIN")
    candidates = [given] if given else sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                              key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                                              else 0, reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def missing_reason() -> str | None:
    """Why PostgreSQL cannot be started here (a skip reason), or None."""
    if find_bin() is None:
        return f"PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin; {INSTALL}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return f"running as root and there is no 'postgres' user to run PostgreSQL as; {INSTALL}"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing: PostgreSQL refuses to run as root"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[dev]')"
    return None


class Postgres:
    """One PostgreSQL server; ``user``/``password`` own every database it makes."""

    def __init__(self, user: str = "ncstudy", password: str = "ncstudy-pw") -> None:
        bin_dir = find_bin()
        assert bin_dir is not None, missing_reason()
        self.bin = bin_dir
        self.user, self.password = user, password
        self.port = free_port()
        # short path: a unix socket name must stay under ~100 characters
        self.root = Path(tempfile.mkdtemp(prefix="ncpg", dir="/tmp"))
        self.data = self.root / "data"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.running = False

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin / tool), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_root else cmd

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        p = subprocess.run(self._cmd(tool, *args), capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}{self.log_tail()}")

    def start(self) -> "Postgres":
        if not self.data.exists():
            pwfile = self.root / "pw"
            pwfile.write_text(self.password + "\n")
            if self._as_root:
                pw = pwd.getpwnam("postgres")
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
            pwfile.unlink()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "120",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
                  timeout=180)
        self.running = True
        return self

    def url(self, database: str, password: str | None = None, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new database (its URL)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname="postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def pid(self) -> int | None:
        f = self.data / "postmaster.pid"
        try:
            return int(f.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the server by its PID file (``pg_ctl stop -m fast``; SIGKILL to that PID if it fails)."""
        if not self.running:
            return
        pid = self.pid()
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", timeout=90)
        except (RuntimeError, subprocess.TimeoutExpired):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                time.sleep(1)
        self.running = False

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 2000) -> str:
        f = self.root / "server.log"
        return f"\nserver log: {f.read_text()[-n:]}" if f.exists() else ""
