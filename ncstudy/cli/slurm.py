"""``ncstudy slurm``: a study as one Slurm batch job, written from the shipped template
(``ncstudy/cli/templates/slurm.sbatch``, package data).

    ncstudy slurm SPACE.yaml --nodes N --gpus-per-node G --time HH:MM:SS [--cpus-per-node C]
                  [--partition P] [--account A] [--tracking-uri URI] [--storage DIR] [--resume]
                  [--out job.sbatch]

Every flag is checked (a :class:`SlurmJob`) and the study file loaded before anything is written;
bad input exits 2 naming the flag. The script starts Ray across the allocation, MLflow on the first
node (unless ``--tracking-uri``), runs the study there and exits with its status (docs/cluster.md).
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from importlib.resources import files
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ncstudy.errors import ConfigError

SIGNAL_LEAD_S = 120  # default: SIGTERM this long before the time limit, so the clean stop fits
_TIME = re.compile(r"(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)")
_NAME = re.compile(r"[A-Za-z0-9_.@+-]+")


class SlurmJob(BaseModel):
    """What the batch script is written from; field names are the flags without ``--``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: Path
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=0)
    cpus_per_node: int | None = Field(default=None, ge=1)
    time: str
    partition: str | None = None
    account: str | None = None
    tracking_uri: str | None = None
    storage: str | None = None  # default: ncstudy_results in the folder sbatch is run from
    resume: bool = False
    stop_before: int = Field(default=SIGNAL_LEAD_S, ge=1, le=65535)

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        if not _TIME.fullmatch(v):
            raise ValueError(f"{v!r} is not HH:MM:SS or D-HH:MM:SS (e.g. 12:00:00, 1-00:00:00)")
        return v

    @model_validator(mode="after")
    def _time_left(self) -> SlurmJob:
        m = _TIME.fullmatch(self.time)
        assert m is not None
        seconds = int(m[1] or 0) * 86400 + int(m[2]) * 3600 + int(m[3]) * 60 + int(m[4])
        if seconds <= self.stop_before:
            raise ValueError(f"--time {self.time} leaves no time: the study is asked to stop {self.stop_before} s "
                             "before the limit (--stop-before); give more than that")
        return self

    @field_validator("partition", "account")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError(f"{v!r}: letters, digits and _.@+- only")
        return v

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and ("://" not in v or v.startswith("file:")):
            raise ValueError(f"{v!r}: a URI every node reaches: http(s)://host:port, postgresql://..., or "
                             "sqlite:////absolute/path/on/the/shared/filesystem")
        return v


    def command(self, out: Path, resume: bool | None = None) -> str:
        """The ``ncstudy slurm`` command line that writes this script (with ``--resume`` if asked)."""
        words = ["ncstudy", "slurm", str(self.space), "--nodes", str(self.nodes), "--gpus-per-node",
                 str(self.gpus_per_node), "--time", self.time]
        for flag in ("cpus_per_node", "partition", "account", "tracking_uri", "storage"):
            if getattr(self, flag) is not None:
                words += ["--" + flag.replace("_", "-"), str(getattr(self, flag))]
        words += ["--stop-before", str(self.stop_before)] if self.stop_before != SIGNAL_LEAD_S else []
        words += ["--resume"] if (self.resume if resume is None else resume) else []
        return shlex.join([*words, "--out", str(out)])


def job_from_args(args: argparse.Namespace) -> SlurmJob:
    """The flags as a :class:`SlurmJob`; ConfigError (exit 2) naming the first bad flag."""
    data = {k: getattr(args, k) for k in SlurmJob.model_fields if getattr(args, k, None) is not None}
    try:
        return SlurmJob.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a check across flags: its message names them
            raise ConfigError(msg) from None
        field = str(err["loc"][0])
        raise ConfigError(f"--{field.replace('_', '-')} {data.get(field, '')!s}: {msg}") from None


def render(job: SlurmJob, out: Path, study_name: str) -> str:
    """The batch script's text (the template with every ``{{NAME}}`` filled, shell-quoted)."""
    from ncstudy import __version__

    resources = [f"#SBATCH --gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []
    resources.append(f"#SBATCH --cpus-per-task={job.cpus_per_node}" if job.cpus_per_node
                     else "#SBATCH --exclusive                # whole nodes: Ray gets all their CPUs")
    resources += [f"#SBATCH --{k}={v}" for k, v in (("partition", job.partition), ("account", job.account)) if v]
    storage = shlex.quote(job.storage) if job.storage else '"$SLURM_SUBMIT_DIR/ncstudy_results"'
    values = {
        "VERSION": f"ncstudy {__version__}", "COMMAND": job.command(out), "OUT": shlex.quote(str(out)),
        "JOB_NAME": f"ncstudy-{study_name}", "NODES": str(job.nodes), "TIME": job.time,
        "SIGNAL_LEAD": str(job.stop_before), "RESOURCES": "\n".join(resources),
        "BIN": shlex.quote(str(Path(sys.executable).parent)), "STUDY": shlex.quote(str(job.space.resolve())),
        "STORAGE": storage, "TRACKING_URI": shlex.quote(job.tracking_uri or ""),
        "RESUME": "--resume" if job.resume else '""', "GPUS_PER_NODE": str(job.gpus_per_node),
        "RESUME_COMMAND": shlex.quote(f"{job.command(out, resume=True)} && sbatch {shlex.quote(str(out))}"),
    }
    text = files("ncstudy.cli").joinpath("templates/slurm.sbatch").read_text()
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m[1]], text)


def cmd_slurm(args: argparse.Namespace) -> int:
    from ncstudy.study.preflight import check_writable
    from ncstudy.study.spec import load_study

    job = job_from_args(args)
    spec = load_study(job.space)  # a bad study file: exit 2 now, not in the queue hours later
    out = Path(args.out or f"{spec.name}.sbatch")
    check_writable(out, "--out", folder=False)
    out.write_text(render(job, out, spec.name))
    out.chmod(0o755)
    print(f"wrote {out}: {job.nodes} node(s) x {job.gpus_per_node} GPU(s), {job.time}"
          f"{', resuming' if job.resume else ''}. Submit it from the shared folder the results belong in:\n"
          f"  sbatch {shlex.quote(str(out))}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("slurm", help="write a Slurm batch script that runs a study across an allocation")
    s.add_argument("space", help="study file (read from the shared filesystem by the job)")
    s.add_argument("--nodes", type=int, required=True, help="nodes in the allocation (Ray head + workers)")
    s.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node (0: CPU only)")
    s.add_argument("--time", required=True, help="time limit, HH:MM:SS or D-HH:MM:SS")
    s.add_argument("--cpus-per-node", type=int, help="CPUs per node (default: whole nodes, --exclusive)")
    s.add_argument("--partition", help="Slurm partition")
    s.add_argument("--account", help="Slurm account")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: an MLflow server on the first node, "
                   "its database under the storage folder)")
    s.add_argument("--storage", help="Tune storage on the shared filesystem (default: ncstudy_results in "
                   "the folder sbatch is run from)")
    s.add_argument("--stop-before", type=int, metavar="SECONDS",
                   help=f"SIGTERM this long before the time limit: the study's clean stop (trials at their last "
                        f"checkpoint) must fit in it plus Slurm's KillWait; default {SIGNAL_LEAD_S}")
    s.add_argument("--resume", action="store_true", help="continue the study (after a timeout or scancel)")
    s.add_argument("--out", help="where to write the script (default: STUDY_NAME.sbatch)")
