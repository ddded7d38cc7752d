"""Everything ``ncstudy run`` can check before it starts anything, and the resource check right
after it connects to a cluster.

Each check raises :class:`~ncstudy.errors.InputError` (exit 2) naming the flag or key and the fix,
or :class:`~ncstudy.errors.TrackingUnavailable` (exit 3) for a tracking server that
does not answer; nothing is written before all of them pass. Network probes use short timeouts, and
Ctrl-C interrupts any of them.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ncstudy.errors import ConfigError, InputError
from ncstudy.study.persist import STUDY_FILE, SavedStudy
from ncstudy.study.spec import StudySpec

PROBE_TIMEOUT_S = 5.0


@dataclass
class Target:
    """Where a study runs: its storage folder (local path or URI) and experiment path in it."""

    storage: str
    experiment_path: str

    @property
    def local_dir(self) -> Path | None:
        return None if "://" in self.storage else Path(self.experiment_path)


def target(storage: str, name: str) -> Target:
    s = storage if "://" in storage else str(Path(storage).resolve())
    return Target(s, f"{s.rstrip('/')}/{name}")


# -- paths the command will write -------------------------------------------------------------------
def check_writable(path: str | Path, what: str, folder: bool = True) -> None:
    """``what`` (a flag, e.g. ``--storage``) at ``path`` can be written: a probe file is created and
    removed in the folder (``folder``), or beside the file, that the command will write -- or, for
    one that does not exist yet, in its nearest existing ancestor. Permission bits are not trusted:
    ``os.access`` says yes to root in ``/proc``. Nothing is left behind."""
    import tempfile

    p = Path(path).expanduser()
    target = p if folder else p.parent
    if folder and p.exists() and not p.is_dir():
        raise InputError(f"{what} {path}: exists and is not a folder; give a folder")
    if not folder and p.is_dir():
        raise InputError(f"{what} {path}: is a folder; give a file name")
    probe_dir = target.resolve()
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InputError(f"{what} {path}: cannot be created ({probe_dir} is not a folder)")
    try:
        fd, name = tempfile.mkstemp(prefix=".ncstudy-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise InputError(f"{what} {path}: cannot write there ({probe_dir}: {e.strerror or type(e).__name__}); "
                         f"give a writable location") from None


def check_writable_uri(uri: str, what: str) -> None:
    """A storage URI (``s3://``, ``gs://``, ``file://`` ...): a probe object is written and deleted on
    its file system."""
    import uuid

    import pyarrow.fs as pafs

    try:
        fs, base = pafs.FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001 - an unknown scheme, a malformed URI, missing credentials
        raise InputError(f"{what} {uri}: not a storage URI this machine can use ({e})") from None
    if isinstance(fs, pafs.LocalFileSystem):
        check_writable(base, what)
        return
    probe = f"{base.rstrip('/')}/.ncstudy-probe-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(probe) as f:
            f.write(b"")
        fs.delete_file(probe)
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError subclasses and its own errors
        raise InputError(f"{what} {uri}: cannot write there ({type(e).__name__}: {e}); check the path and "
                         f"the credentials") from None


# -- storage and resume ----------------------------------------------------------------------------
def check_storage(storage: str) -> None:
    """``--storage`` must be a folder (or storage URI) this process can write in."""
    if "://" in storage:
        check_writable_uri(storage, "--storage")
    else:
        check_writable(storage, "--storage")


def experiment_exists(t: Target) -> bool:
    """Whether the study's folder holds anything of a launch (its study file or Tune's state)."""
    from ncstudy.study.persist import EXPERIMENT_STATE, names_in

    return any(n == STUDY_FILE or n.startswith(EXPERIMENT_STATE) for n in names_in(t.experiment_path))


def save_study(t: Target, spec: StudySpec, tracking_uri: str | None) -> None:
    """Keep the study as first launched (``--resume`` compares against it) and its tracking URI."""
    from ncstudy.study.persist import study_text, write_bytes

    write_bytes(f"{t.experiment_path}/{STUDY_FILE}", study_text(spec, tracking_uri).encode())


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON-like values differ, as ``key: old -> new``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {json.dumps(a)} -> {json.dumps(b)}"]


def resume_spec(t: Target, spec: StudySpec, allow_changed: bool) -> SavedStudy:
    """The study to resume: the one first launched, and where it was tracked. A study that changed
    since is refused (exit 2, listing the differences) unless ``allow_changed``; then the first
    launch's study continues."""
    from ncstudy.study.persist import EXPERIMENT_STATE, names_in, read_bytes, read_study

    where = f"{t.experiment_path}/{STUDY_FILE}"
    saved = read_bytes(where)
    if saved is None:
        if any(n.startswith(EXPERIMENT_STATE) for n in names_in(t.experiment_path)):
            return SavedStudy(spec, None)  # a study started before ncstudy kept its file
        raise InputError(f"--resume: nothing to resume: no study '{spec.name}' in {t.storage} "
                         f"(start it without --resume, or give the --storage it used)")
    first = read_study(saved.decode("utf-8", "replace"), where)
    diff = differences(first.spec.model_dump(mode="json"), spec.model_dump(mode="json"))
    if diff and not allow_changed:
        raise InputError("--resume: the study file changed since the first launch, and a resumed study "
                         "continues the first launch's trials:\n  " + "\n  ".join(diff[:20]) +
                         "\nUndo the change, start a new study under another name, or pass --allow-changed to "
                         "continue the first launch's study as it was")
    return first


# -- tracking ----------------------------------------------------------------------------------------
def check_tracking(uri: str, study: str) -> None:
    """A usable tracking URI: a known scheme, a SQLite folder that exists, a server (or a database)
    that answers -- a server whose own database does not is as unreachable (exit 3 otherwise, within
    seconds) -- and no deleted experiment under the study's name."""
    from mlflow.exceptions import MlflowException

    from ncstudy.adapters.mlflow.reader import check_uri, connect, is_server, probe_server, sqlite_path
    from ncstudy.errors import TrackingUnavailable

    check_uri(uri)
    db = sqlite_path(uri)
    if db is not None:
        if not db.parent.is_dir():
            raise InputError(f"--tracking-uri {uri}: folder {db.parent} does not exist")
        check_writable(db.parent, f"--tracking-uri {uri}: the MLflow store's folder")
        if not db.exists():
            check_writable(Path.cwd() / "mlruns", f"--tracking-uri {uri}: MLflow's artifact folder")
            return  # a new store: nothing more to check
    elif is_server(uri):
        probe_server(uri)
    elif uri.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql"):
        # a database MLflow writes to directly (postgresql+psycopg2://...)
        probe_database(uri, "--tracking-uri", TrackingUnavailable)
    try:
        exp = connect(uri).get_experiment_by_name(study)
    except MlflowException as e:
        if not is_server(uri):
            raise
        reason = str(e).strip().splitlines()[0][:300]
        raise TrackingUnavailable(f"MLflow server at {uri} answers, but cannot read its backend store ({reason}); "
                                  f"its database is down or refuses the server: check that the database of the "
                                  f"server's --backend-store-uri (PostgreSQL on the head) runs, and the server's "
                                  f"log") from None
    if db is not None:  # a local store: its runs' artifacts go to the experiment's folder, else ./mlruns
        art = exp.artifact_location if exp is not None else str(Path.cwd() / "mlruns")
        local = art[len("file://"):] if art.startswith("file://") else art if "://" not in art else None
        if local is not None:
            check_writable(local, f"--tracking-uri {uri}: MLflow's artifact folder")
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise InputError(f"study '{study}': its MLflow experiment (id {exp.experiment_id}) was deleted at {uri}; "
                         f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`), "
                         f"remove it for good (`mlflow gc`), or give the study another name")


#: The Python package each database driver comes from (a missing driver: what to install).
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pymysql": "pymysql",
                   "mysqldb": "mysqlclient", "pyodbc": "pyodbc"}


def probe_database(url: str, what: str, unavailable: type[Exception] = InputError) -> None:
    """A database URL (SQLAlchemy's, as MLflow and Optuna take it): its driver is installed
    (:class:`InputError` naming the package otherwise) and the database answers within
    :data:`PROBE_TIMEOUT_S` (``unavailable`` otherwise, with the driver's reason). A SQLite file
    must be writable where it goes."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
        dialect = u.get_dialect()
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's ArgumentError / NoSuchModuleError, a bad port
        raise InputError(f"{what} {url}: not a database URL ({type(e).__name__}: {e})") from None
    shown = u.render_as_string(hide_password=True)
    try:
        dialect.import_dbapi()
    except ImportError as e:
        driver = getattr(dialect, "driver", "") or u.get_driver_name()
        hint = (" (SQLAlchemy 2.1 reads postgresql:// as psycopg 3; with psycopg2-binary installed write "
                "postgresql+psycopg2://)" if u.drivername == "postgresql" else "")
        raise InputError(f"{what} {shown}: its database driver '{driver}' is not installed ({e}); "
                         f"pip install {DRIVER_PACKAGES.get(driver, driver)}{hint}") from None
    if u.get_backend_name() == "sqlite":
        check_writable(u.database or "", f"{what} {shown}", folder=False)
        return
    engine = create_engine(u, connect_args={"connect_timeout": int(PROBE_TIMEOUT_S)})
    try:
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001 - the driver's own errors: refused, unknown host, bad password
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise unavailable(f"{what} {shown}: cannot connect to the database ({reason}); start it, or fix the host, "
                          f"port, user, password or database name in the URL") from None
    finally:
        engine.dispose()


# -- the cluster -------------------------------------------------------------------------------------
def check_address(address: str | None) -> None:
    """``--address``: something answers there (``auto``: this machine's running cluster)."""
    if not address or address == "local":
        return
    if address == "auto":
        from ray._private.utils import get_ray_address_file

        f = Path(get_ray_address_file(None))
        if not f.is_file() and not os.environ.get("RAY_ADDRESS"):
            raise InputError("--address auto: no running Ray cluster found on this machine (start one with "
                             "`ray start --head`, or give its address)")
        address = os.environ.get("RAY_ADDRESS") or f.read_text().strip()
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise InputError(f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise InputError(f"--address {address}: nothing answers at {host}:{port} within "
                         f"{PROBE_TIMEOUT_S:g} s ({e.strerror or type(e).__name__})") from None


def local_resources(num_cpus: int | None, num_gpus: int | None) -> dict[str, float]:
    """CPUs, GPUs and memory (bytes) of the local Ray instance ``ncstudy run`` would start."""
    from ncstudy.train import physical_memory

    if num_gpus is None:
        import torch

        num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(num_gpus),
            "memory": float(physical_memory() or 0)}


def check_resources(spec: StudySpec, largest_node: dict[str, float], where: str) -> None:
    """Every trial must fit on one node: CPUs, GPUs and memory for its model."""
    from ncstudy.train import check_fits_in_memory

    r = spec.resources
    for key, want in (("gpu", r.gpu), ("cpu", r.cpu)):
        have = largest_node.get(key.upper(), 0.0)
        if want > have:
            hint = ("set resources.gpu: 0, or run on a cluster with GPUs (--address)" if key == "gpu"
                    else f"set resources.cpu to at most {have:g}")
            raise ConfigError(f"resources.{key}: {want:g} per trial requested, but the largest node of {where} "
                              f"has {have:g}; {hint}")
    mem = largest_node.get("memory")
    if mem:
        for variant in spec.probe_configs():
            check_fits_in_memory(variant, where=f"{where}: ", limit=int(mem))


def cluster_largest_node() -> dict[str, float]:
    """The largest CPU, GPU and memory figures over the connected cluster's live nodes."""
    import ray

    out = {"CPU": 0.0, "GPU": 0.0, "memory": 0.0}
    for n in ray.nodes():
        if n.get("Alive"):
            res = n.get("Resources", {})
            for k in out:
                out[k] = max(out[k], float(res.get(k, 0.0)))
    return out
