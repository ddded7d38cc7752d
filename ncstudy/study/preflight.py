"""Everything ``ncstudy run`` can check before it starts anything, and the resource check right
after it connects to a cluster.

Each check raises :class:`~ncstudy.errors.InputError` (exit 2) naming the flag or key and the fix,
or :class:`~ncstudy.adapters.mlflow.writer.TrackingUnavailable` (exit 3) for a tracking server that
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
from ncstudy.study.spec import StudySpec

STUDY_FILE = "ncstudy_study.json"  # the study as first launched, beside Tune's experiment state
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


# -- storage and resume ----------------------------------------------------------------------------
def check_storage(storage: str) -> None:
    """A local ``--storage`` must be a folder that exists or can be created."""
    if "://" in storage:
        return
    p = Path(storage)
    if p.exists() and not p.is_dir():
        raise InputError(f"--storage {storage}: exists and is not a folder; give a folder for the study results")
    ancestor = p.resolve()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"--storage {storage}: cannot create it ({ancestor} is not a writable folder)")


def _read_text(path: str) -> str | None:
    if "://" not in path:
        p = Path(path)
        return p.read_text() if p.is_file() else None
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def save_study(t: Target, spec: StudySpec) -> None:
    """Keep the study as first launched (``--resume`` compares against it)."""
    text = spec.model_dump_json(indent=1)
    path = f"{t.experiment_path}/{STUDY_FILE}"
    if "://" not in path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        return
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON-like values differ, as ``key: old -> new``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {json.dumps(a)} -> {json.dumps(b)}"]


def resume_spec(t: Target, spec: StudySpec, allow_changed: bool) -> StudySpec:
    """The study to resume: the one first launched. A study that changed since is refused (exit 2,
    listing the differences) unless ``allow_changed``; then the first launch's study continues."""
    from ray import tune

    saved = _read_text(f"{t.experiment_path}/{STUDY_FILE}")
    if saved is None:
        if tune.Tuner.can_restore(t.experiment_path):  # a study started before ncstudy kept its file
            return spec
        raise InputError(f"--resume: nothing to resume: no study '{spec.name}' in {t.storage} "
                         f"(start it without --resume, or give the --storage it used)")
    first = StudySpec.model_validate_json(saved)
    diff = differences(first.model_dump(mode="json"), spec.model_dump(mode="json"))
    if diff and not allow_changed:
        raise InputError("--resume: the study file changed since the first launch, and a resumed study "
                         "continues the first launch's trials:\n  " + "\n  ".join(diff[:20]) +
                         "\nUndo the change, start a new study under another name, or pass --allow-changed to "
                         "continue the first launch's study as it was")
    return first


# -- tracking ----------------------------------------------------------------------------------------
def check_tracking(uri: str, study: str) -> None:
    """A usable tracking URI: a known scheme, a SQLite folder that exists, a server that answers
    (exit 3 otherwise, within seconds), and no deleted experiment under the study's name."""
    from ncstudy.adapters.mlflow.reader import check_uri, connect, sqlite_path
    from ncstudy.adapters.mlflow.writer import TrackingUnavailable

    check_uri(uri)
    db = sqlite_path(uri)
    if db is not None:
        if not db.parent.is_dir():
            raise InputError(f"--tracking-uri {uri}: folder {db.parent} does not exist")
        if not db.exists():
            return  # a new store: nothing more to check
    elif uri.startswith(("http://", "https://")):
        _probe_http(uri, TrackingUnavailable)
    exp = connect(uri).get_experiment_by_name(study)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise InputError(f"study '{study}': its MLflow experiment (id {exp.experiment_id}) was deleted at {uri}; "
                         f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`), "
                         f"remove it for good (`mlflow gc`), or give the study another name")


def _probe_http(uri: str, unavailable: type[Exception]) -> None:
    import requests

    try:
        r = requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S)
    except requests.exceptions.RequestException as e:
        raise unavailable(f"MLflow server at {uri} does not answer ({type(e).__name__}); start it "
                          f"(`mlflow server --host ... --port ...`) or check --tracking-uri") from None
    if r.status_code >= 500:
        raise unavailable(f"MLflow server at {uri} answered {r.status_code} to a health check")


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
