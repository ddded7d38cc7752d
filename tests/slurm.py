"""A real Slurm on this machine for tests: munged, slurmctld and slurmd (Debian's ``slurm-wlm`` and
``munge``), run as root without systemd, everything (config, keys, sockets, state, logs) in one
temporary folder, stopped by PID. One node, or ``nodes=N`` nodes sharing this host (a slurmd each).

    with LocalSlurm(folder) as slurm:    # or LocalSlurm(folder, nodes=2)
        job = slurm.sbatch(script)           # job id
        state = slurm.wait(job, timeout=120) # JobState, ExitCode

The node has this machine's CPUs (N nodes: a share each) and no GPU. Configuration (what works in a container without
cgroups or systemd): ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``,
``JobAcctGatherType=jobacct_gather/none``, ``SelectType=select/cons_tres`` and a ``cgroup.conf``
with ``CgroupPlugin=cgroup/v1`` and ``IgnoreSystemd=yes`` beside ``slurm.conf``.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
INSTALL = "apt-get install -y slurm-wlm munge"


def missing() -> str | None:
    """Why a real Slurm cannot run here (a reason naming the install command), or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if absent:
        return f"Slurm/munge not installed ({', '.join(absent)} missing): {INSTALL}"
    if os.geteuid() != 0:
        return f"a single-node Slurm runs its daemons as root; this user is uid {os.geteuid()}"
    return None


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """munged + slurmctld + a slurmd per node in ``folder``; client commands get ``env`` (``SLURM_CONF``)."""

    def __init__(self, folder: Path, kill_wait_s: int = 30, nodes: int = 1) -> None:
        self.folder = Path(folder)
        self.nodes = nodes
        self.kill_wait_s = kill_wait_s
        self.procs: list[subprocess.Popen] = []
        self.node = socket.gethostname()
        self.cpus = os.cpu_count() or 1
        # several nodes share this host (one slurmd each, `slurmd -N NAME`), the CPUs split between them
        self.names = [self.node] if nodes == 1 else [f"n{i + 1}" for i in range(nodes)]
        self.conf = self.folder / "slurm.conf"
        # sockets live in a short folder of their own: a unix socket path holds at most 108 bytes, and
        # slurmstepd's (spool/<node>/<node>_<job>.<step>) outgrows a pytest temp path (xdist's popen-gwN)
        self.short = Path(tempfile.mkdtemp(prefix="ncsl-"))
        self.munge_socket = self.short / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.start_s: float | None = None

    # ------------------------------------------------------------------ start / stop
    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_config(self) -> None:
        f = self.folder
        for sub in ("state", "log", "munge"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        (self.short / "spool").mkdir(exist_ok=True)
        (f / "munge").chmod(0o700)
        self.conf.write_text(f"""\
ClusterName=ncstudy-test
FirstJobId={random.randint(1000, 900000)}
SlurmctldHost={self.node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CryptoType=crypto/munge
StateSaveLocation={f / "state"}
SlurmdSpoolDir={self.short / "spool"}/%n
SlurmctldPidFile={f / "slurmctld.pid"}
SlurmdPidFile={f}/slurmd-%n.pid
SlurmctldLogFile={f / "log" / "slurmctld.log"}
SlurmdLogFile={f}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait={self.kill_wait_s}
MinJobAge=3600
SchedulerType=sched/builtin
{self._nodes_conf()}
PartitionName=test Nodes={",".join(self.names)} Default=YES MaxTime=INFINITE State=UP
""")
        (f / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n")

    def _nodes_conf(self) -> str:
        if self.nodes == 1:
            return f"NodeName={self.node} CPUs={self.cpus} State=UNKNOWN"
        cpus = max(1, self.cpus // self.nodes)
        return "\n".join(f"NodeName={n} NodeHostname={self.node} NodeAddr=127.0.0.1 Port={_free_port()} "
                         f"CPUs={cpus} State=UNKNOWN" for n in self.names)

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = (self.folder / "log" / f"{name}.out").open("w")
        p = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def _wait(self, what: str, ok, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited {p.returncode} while waiting for {what}:\n"
                                       + self.logs())
            if ok():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s:\n" + self.logs())

    def start(self, timeout: float = 60) -> None:
        t0 = time.monotonic()
        self._write_config()
        m = self.folder / "munge"
        key = m / "munge.key"
        subprocess.run([_exe("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True,
                       capture_output=True)
        key.chmod(0o600)
        self._spawn([_exe("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                     f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                     f"--seed-file={m / 'munged.seed'}"], "munged")
        self._wait("munged", self.munge_socket.exists, timeout)
        self._spawn([_exe("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0, timeout)
        for name in self.names:
            self._spawn([_exe("slurmd"), "-D", "-f", str(self.conf), "-N", name], f"slurmd-{name}")
        self._wait("the nodes", lambda: self.node_states() == ["IDLE"] * self.nodes, timeout)
        self.start_s = time.monotonic() - t0

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (reverse order), each by its PID."""
        if any(p.poll() is None for p in self.procs[1:]):
            self.run("scancel", "--full", "--user=root", check=False)
            self._wait_jobs_gone(timeout=self.kill_wait_s + 30)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.short, ignore_errors=True)

    def _wait_jobs_gone(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                return
            time.sleep(0.5)

    # ------------------------------------------------------------------ client side
    def run(self, cmd: str, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([_exe(cmd), *args], env=self.env, capture_output=True, text=True, check=check,
                              cwd=cwd, timeout=60)

    def node_states(self) -> list[str]:
        r = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return r.stdout.upper().split()

    def sbatch(self, script: Path, cwd: Path, env: dict[str, str] | None = None) -> str:
        """Submit ``script`` from ``cwd`` (the job gets this environment, plus ``env``); its job id."""
        r = subprocess.run([_exe("sbatch"), "--parsable", str(script)], env={**self.env, **(env or {})},
                           capture_output=True, text=True, check=True, cwd=cwd, timeout=60)
        return r.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, ...); jobs stay listed for MinJobAge."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        info = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
        if "launch_failed" in info.get("Reason", "").lower().replace(" ", "_"):  # requeued and held: never runs
            raise RuntimeError(f"job {job_id} failed to launch ({info['Reason']}):\n" + self.logs())
        return info

    def wait(self, job_id: str, timeout: float, states: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED",
                                                                            "TIMEOUT", "NODE_FAIL")) -> dict[str, str]:
        """The job's fields once its state is one of ``states`` (default: it ended)."""
        end = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > end:
                raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout}s:\n" + self.logs())
            time.sleep(0.5)

    def logs(self) -> str:
        parts = []
        for p in sorted((self.folder / "log").glob("*")) + [self.folder / "munge" / "munged.log"]:
            if p.is_file():
                parts.append(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)
