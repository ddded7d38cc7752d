"""cluster.yaml: validated offline against the schema shipped in the installed (pinned) Ray.

Ray's own ``prepare_config`` + ``validate_config`` are exercised directly (what ``ray up`` runs
before it contacts the cloud) with every socket blocked, then ncstudy's
``check_cluster_config`` which adds what the schema lets through (integral floats as resources,
typos in AWS provider keys). Negative tests mutate a copy of the real file. The head's MLflow
start command is run for real (slow tests) against a local MLflow server.
"""
from __future__ import annotations

import base64
import copy
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomllib
import yaml
from cluster_config import check_cluster_config

from ncstudy.cli import group_alive

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
HEAD = "ray.head.cpu"
GPU1 = "ray.worker.gpu1"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(package: str) -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([^;\s]+)", dep.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml has no '{package}==' pin")


def _raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def ray_validation():
    """Ray's (prepare_config, validate_config); skipped only if this Ray version lacks them."""
    import ray

    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as e:
        pytest.skip(f"ray {ray.__version__} has no ray.autoscaler._private.util."
                    f"prepare_config/validate_config ({e}); written against ray {_pin('ray')}")
    return prepare_config, validate_config


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection or resolve a name fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted during offline validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


# --------------------------------------------------------------------------- pins


def test_installed_ray_is_the_pyproject_pin():
    import ray

    assert ray.__version__ == _pin("ray"), (
        f"installed ray {ray.__version__} != pyproject pin {_pin('ray')}: the schema this test "
        "validates against is not the one the cluster will run")


def test_cluster_yaml_pins_match_pyproject():
    cfg = _raw()
    version = _pyproject()["project"]["version"]
    ray_pin = _pin("ray")
    assert cfg["metadata"]["ray_version"] == ray_pin
    assert cfg["metadata"]["ncstudy_version"] == version
    # Image's Ray = client's Ray = the pin (a mismatch breaks `ray up` / job submission).
    image = cfg["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray_pin}-"), image
    assert image.endswith("-gpu") or "-cu" in image, f"{image} is not a CUDA image"
    # ncstudy installed at the tag of this version, and the skip-guard checks that same version.
    setup = " ".join(cfg["setup_commands"])
    assert f".git@v{version}" in setup, setup
    assert f"Version: {version}" in setup, setup
    assert f"mlflow[auth]=={_pin('mlflow')}" in " ".join(cfg["head_setup_commands"])


# --------------------------------------------------------------------------- Ray's validation


def test_cluster_yaml_passes_rays_own_validation_offline(ray_validation, offline):
    prepare_config, validate_config = ray_validation
    prepared = prepare_config(_raw())
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError on failure

    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == HEAD
    assert prepared["provider"]["type"] == "aws"
    # prepare_config merged setup_commands into the per-role lists and filled worker bounds.
    assert prepared["head_setup_commands"][0] == prepared["setup_commands"][0]
    assert types[HEAD]["max_workers"] == 0
    gpu_types = [n for n in types if n != HEAD]
    assert len(gpu_types) >= 1
    for name in gpu_types:
        t = types[name]
        assert isinstance(t["resources"]["GPU"], int) and t["resources"]["GPU"] >= 1, name
        assert 0 <= t["min_workers"] <= t["max_workers"] <= prepared["max_workers"], name
    assert types[HEAD]["resources"] == {"CPU": 0, "GPU": 0}  # no trial ever lands on the head


def test_check_cluster_config_accepts_the_template_offline(offline):
    prepared = check_cluster_config(CLUSTER_YAML)
    assert set(prepared["available_node_types"]) == {HEAD, GPU1, "ray.worker.gpu4.spot"}
    # returned config is Ray's prepared one (defaults merged in)
    assert "cluster_synced_files" in prepared and "worker_setup_commands" in prepared


def _rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


# Each mutation must be rejected by Ray's schema itself (jsonschema.ValidationError) and by
# check_cluster_config (ValueError whose message names the offending key).
SCHEMA_REJECTS = {
    "misspelt top-level key": (
        lambda c: _rename(c, "idle_timeout_minutes", "idle_timeout_minute"), "idle_timeout_minute"),
    "misspelt node-type key": (
        lambda c: _rename(c["available_node_types"][GPU1], "max_workers", "max_worker"),
        "max_worker"),
    "fractional GPU resource": (
        lambda c: c["available_node_types"][GPU1]["resources"].update(GPU=0.5), "GPU"),
    "misspelt docker key": (
        lambda c: _rename(c["docker"], "head_run_options", "head_run_option"), "head_run_option"),
    "misspelt auth key": (lambda c: _rename(c["auth"], "ssh_user", "ssh_usr"), "ssh_usr"),
    "negative resource": (
        lambda c: c["available_node_types"][GPU1]["resources"].update(CPU=-4), "CPU"),
}


@pytest.mark.parametrize("case", list(SCHEMA_REJECTS))
def test_rays_schema_rejects_mutation(case, ray_validation, offline):
    import jsonschema

    prepare_config, validate_config = ray_validation
    cfg = _raw()
    SCHEMA_REJECTS[case][0](cfg)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


@pytest.mark.parametrize("case", list(SCHEMA_REJECTS))
def test_check_cluster_config_rejects_mutation(case, tmp_path, offline):
    mutate, key = SCHEMA_REJECTS[case]
    cfg = _raw()
    mutate(cfg)
    with pytest.raises(ValueError, match=re.escape(key)):
        check_cluster_config(_write(tmp_path, cfg))


def test_fractional_resource_error_names_node_type_and_resource(tmp_path, offline):
    cfg = _raw()
    cfg["available_node_types"][GPU1]["resources"]["GPU"] = 0.5
    with pytest.raises(ValueError) as e:
        check_cluster_config(_write(tmp_path, cfg))
    msg = str(e.value)
    assert GPU1 in msg and "'GPU'" in msg and "0.5" in msg and "integer" in msg


@pytest.mark.parametrize("value", [1.0, 4.0])
def test_integral_float_resource_passes_ray_but_not_ncstudy(value, tmp_path, ray_validation,
                                                           offline):
    """jsonschema counts 1.0 as an integer, so Ray's schema alone would accept `GPU: 1.0`."""
    prepare_config, validate_config = ray_validation
    cfg = _raw()
    cfg["available_node_types"][GPU1]["resources"]["GPU"] = value
    validate_config(prepare_config(copy.deepcopy(cfg)))  # Ray: accepted
    with pytest.raises(ValueError, match=rf"node type '{re.escape(GPU1)}': resource 'GPU'"):
        check_cluster_config(_write(tmp_path, cfg))


def test_boolean_resource_is_rejected(tmp_path, offline):
    cfg = _raw()
    cfg["available_node_types"][HEAD]["resources"]["GPU"] = True
    with pytest.raises(ValueError, match=rf"'{re.escape(HEAD)}'.*'GPU'"):
        check_cluster_config(_write(tmp_path, cfg))


def test_misspelt_provider_key_passes_ray_but_not_ncstudy(tmp_path, ray_validation, offline):
    """The schema allows any provider key; a typo would silently fall back to Ray's default."""
    prepare_config, validate_config = ray_validation
    cfg = _raw()
    _rename(cfg["provider"], "cache_stopped_nodes", "cache_stoped_nodes")
    validate_config(prepare_config(copy.deepcopy(cfg)))  # Ray: accepted
    with pytest.raises(ValueError, match="cache_stoped_nodes"):
        check_cluster_config(_write(tmp_path, cfg))


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(head_node_type="ray.head.gpu"), "head_node_type"),
    (lambda c: c["available_node_types"][GPU1].update(min_workers=11), "max_workers"),
])
def test_rays_cross_field_checks(mutate, message, tmp_path, offline):
    cfg = _raw()
    mutate(cfg)
    with pytest.raises(ValueError, match=message):
        check_cluster_config(_write(tmp_path, cfg))


def test_mapping_input_is_not_modified(offline):
    cfg = _raw()
    before = copy.deepcopy(cfg)
    check_cluster_config(cfg)
    assert cfg == before


def test_non_mapping_yaml_is_rejected(tmp_path):
    p = tmp_path / "cluster.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        check_cluster_config(p)


# --------------------------------------------------------------------------- template policy


def _mlflow_command(cfg: dict) -> str:
    cmds = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert len(cmds) == 1, "exactly one head start command starts the MLflow server"
    return cmds[0]


def _postgres_command(cfg: dict) -> str:
    cmds = [c for c in cfg["head_start_ray_commands"] if "pg_ctl" in c]
    assert len(cmds) == 1, "exactly one head start command starts PostgreSQL"
    return cmds[0]


def test_no_inbound_port_besides_ssh():
    cfg = _raw()
    rules = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        assert rule.get("FromPort") == rule.get("ToPort") == 22, f"extra inbound rule {rule}"
    all_commands = "\n".join(
        cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
        + cfg["setup_commands"] + cfg["head_setup_commands"])
    assert "0.0.0.0" not in all_commands, "nothing may listen on all interfaces"
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reached via `ray dashboard` (SSH)


def test_mlflow_server_binds_private_ip_with_shared_artifacts():
    cfg = _raw()
    cmd = _mlflow_command(cfg)
    args = shlex.split(cmd.split("mlflow server", 1)[1].split(">", 1)[0].replace("\\\n", " "))
    opts = dict(zip(args[::2], args[1::2]))
    assert opts["--host"] == "$HEAD_IP" and "ray.util.get_node_ip_address()" in cmd
    assert opts["--port"] == str(cfg["metadata"]["mlflow_port"])
    # the backend store: the URI the head's PostgreSQL command writes, else SQLite on the host directory
    assert opts["--backend-store-uri"] == "$BACKEND"
    assert 'BACKEND="sqlite:///$M/mlflow.db"' in cmd and 'BACKEND="$(cat "$M/backend_store_uri")"' in cmd
    pg = _postgres_command(cfg)
    assert cfg["head_start_ray_commands"].index(pg) < cfg["head_start_ray_commands"].index(cmd)
    assert 'echo "postgresql+psycopg2://ncstudy:$PGPASSWORD@127.0.0.1:5432/mlflow" > "$M/backend_store_uri"' in pg
    assert "listen_addresses=127.0.0.1" in pg and "--auth=scram-sha-256" in pg  # loopback, password
    assert "psycopg2-binary" in " ".join(cfg["head_setup_commands"])
    assert "apt-get install -yq postgresql" in " ".join(cfg["head_setup_commands"])
    assert opts["--artifacts-destination"] == cfg["metadata"]["mlflow_artifacts"]
    assert cfg["metadata"]["mlflow_artifacts"].startswith("s3://")
    assert cfg["metadata"]["tune_storage"].startswith(("s3://", "/mnt/"))
    assert "--disable-security-middleware" not in cmd and "--cors-allowed-origins" not in cmd
    allowed = opts["--allowed-hosts"].split(",")
    assert "*" not in allowed and "$HEAD_IP" in allowed and "localhost:*" in allowed
    # the SQLite file lives on the bind-mounted host directory, not in the container layer...
    assert "-v /home/ubuntu/ncstudy-mlflow:/home/ray/mlflow" in cfg["docker"]["head_run_options"]
    # ...which must exist, owned by the SSH user, before `docker run` (else root owns it). Ray
    # runs only the *global* initialization_commands on the head, not the head node type's.
    assert "mkdir -p /home/ubuntu/ncstudy-mlflow" in cfg["initialization_commands"]
    assert "initialization_commands" not in cfg["available_node_types"][HEAD]


# --------------------------------------------------------------------------- head MLflow command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _run_head_mlflow_command(home: Path, port: int, timeout: float = 240):
    """Run the head's MLflow start command from cluster.yaml with HOME=home and the port swapped."""
    cmd = _mlflow_command(_raw())
    assert cmd.count("5000") >= 2  # --port and the readiness probe
    env = dict(os.environ, HOME=str(home),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", "-c", cmd.replace("5000", str(port))], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _stop_group(pgid: int, timeout: float = 30) -> None:
    if not group_alive(pgid):
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and group_alive(pgid):
        time.sleep(0.2)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def mlflow_home(tmp_path):
    """HOME for the head command; every server group it recorded is stopped at the end."""
    started: list[int] = []
    pgid_file = tmp_path / "mlflow" / "server.pgid"

    def record():
        if pgid_file.exists() and pgid_file.read_text().strip():
            started.append(int(pgid_file.read_text()))
            return started[-1]
        return None

    yield tmp_path, record
    record()
    for pgid in started:
        _stop_group(pgid)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_head_mlflow_command_starts_restarts_and_binds_private_ip(mlflow_home):
    home, record = mlflow_home
    port = _free_port()
    r = _run_head_mlflow_command(home, port)
    first = record()
    assert r.returncode == 0, r.stdout + r.stderr
    ip = (home / "mlflow" / "head_private_ip").read_text().strip()
    assert f"MLflow tracking server: http://{ip}:{port}" in r.stdout
    assert _get(f"http://{ip}:{port}/health") == 200
    assert _get(f"http://{ip}:{port}/api/2.0/mlflow/experiments/search?max_results=1") == 200
    assert (home / "mlflow" / "mlflow.db").exists()
    if ip not in ("127.0.0.1", "::1"):  # bound to the private address only, not all interfaces
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

    # A second `ray up` reruns the command: the old server group is stopped, a new one serves.
    r = _run_head_mlflow_command(home, port)
    second = record()
    assert r.returncode == 0, r.stdout + r.stderr
    assert second != first and not group_alive(first)
    assert group_alive(second)
    assert _get(f"http://{ip}:{port}/health") == 200


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_head_mlflow_command_fails_fast_with_the_server_log(mlflow_home):
    """A server that dies at start-up makes the command (hence `ray up`) fail with its log."""
    home, record = mlflow_home
    (home / "mlflow").mkdir()
    (home / "mlflow" / "auth.env").write_text("MLFLOW_FLASK_SERVER_SECRET_KEY=k\n")  # no password
    t = time.time()
    r = _run_head_mlflow_command(home, _free_port())
    record()
    assert r.returncode == 1
    assert "MLflow server did not start" in r.stdout
    # basic-auth was selected: MLflow refuses to start without an admin password (or, where the
    # mlflow[auth] extra is missing, without Flask-WTF) -- either way the log says why.
    assert re.search(r"password|Flask-WTF", r.stdout), r.stdout
    assert time.time() - t < 120, "did not notice the dead server before the readiness timeout"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_head_mlflow_command_basic_auth(mlflow_home):
    pytest.importorskip("flask_wtf", reason="mlflow[auth] extra (Flask-WTF) not installed here; "
                        "cluster.yaml installs it on the head")
    home, record = mlflow_home
    (home / "mlflow").mkdir()
    (home / "mlflow" / "auth.env").write_text(
        "MLFLOW_AUTH_ADMIN_PASSWORD=ncstudy-Test-pw-1\nMLFLOW_FLASK_SERVER_SECRET_KEY=k3y\n")
    port = _free_port()
    r = _run_head_mlflow_command(home, port)
    record()
    assert r.returncode == 0, r.stdout + r.stderr
    ip = (home / "mlflow" / "head_private_ip").read_text().strip()
    url = f"http://{ip}:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(url) == 401
    assert _get(url, ("admin", "ncstudy-Test-pw-1")) == 200



@pytest.mark.slow
@pytest.mark.timeout(600)
def test_head_postgres_then_mlflow_commands(tmp_path):
    """The head's PostgreSQL command (as a non-root user, as in the container) and then its MLflow
    command: the server's store is PostgreSQL (no SQLite file), an experiment is kept across a
    second `ray up` (both commands rerun: PostgreSQL kept, MLflow restarted), and the Optuna
    database answers. Every server started is stopped by its PID (file) at the end."""
    import pwd
    import shutil

    from mlflow.tracking import MlflowClient
    from postgres import find_bin, missing_reason

    from ncstudy.study.preflight import probe_database

    why = missing_reason()
    if why:
        pytest.skip(why)
    as_root = os.geteuid() == 0
    home = tmp_path
    if as_root:  # initdb refuses root: the command runs as `postgres`, in a HOME it owns
        home = Path(tempfile.mkdtemp(prefix="nchead", dir="/tmp"))
        pw = pwd.getpwnam("postgres")
        os.chown(home, pw.pw_uid, pw.pw_gid)
    pg_port, port = _free_port(), _free_port()
    cmd = _postgres_command(_raw()).replace("5432", str(pg_port))
    env = dict(os.environ, HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run_pg = ["runuser", "-u", "postgres", "--", "env", f"HOME={home}", "bash", "-c", cmd] if as_root \
        else ["bash", "-c", cmd]
    m = home / "mlflow"
    groups: list[int] = []

    def mlflow_command() -> None:
        r = _run_head_mlflow_command(home, port)
        if (m / "server.pgid").exists() and (m / "server.pgid").read_text().strip():
            groups.append(int((m / "server.pgid").read_text()))
        assert r.returncode == 0, r.stdout + r.stderr

    try:
        r = subprocess.run(run_pg, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"PostgreSQL: 127.0.0.1:{pg_port} on the head" in r.stdout
        uri = (m / "backend_store_uri").read_text().strip()
        assert uri.startswith("postgresql+psycopg2://ncstudy:") and uri.endswith(f"@127.0.0.1:{pg_port}/mlflow")
        assert (m / "backend_store_uri").stat().st_mode & 0o777 == 0o600
        mlflow_command()
        ip = (m / "head_private_ip").read_text().strip()
        exp = MlflowClient(f"http://{ip}:{port}").create_experiment("head_pg")
        assert not (m / "mlflow.db").exists()  # the store is PostgreSQL
        # a second `ray up`: both commands again
        r = subprocess.run(run_pg, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (m / "backend_store_uri").read_text().strip() == uri
        mlflow_command()
        assert len(groups) == 2 and not group_alive(groups[0]) and group_alive(groups[1])
        assert MlflowClient(f"http://{ip}:{port}").get_experiment(exp).name == "head_pg"
        # a driver on the head reaches the optuna database with no password in its URL (~/.pgpass)
        assert (home / ".pgpass").stat().st_mode & 0o777 == 0o600
        os.environ["PGPASSFILE"] = str(home / ".pgpass")
        try:
            probe_database(f"postgresql+psycopg2://ncstudy@127.0.0.1:{pg_port}/optuna", "searcher_storage")
        finally:
            del os.environ["PGPASSFILE"]
    finally:
        for g in groups:
            _stop_group(g)
        if (m / "pgdata" / "postmaster.pid").exists():
            stop = [str(find_bin() / "pg_ctl"), "-D", str(m / "pgdata"), "-m", "fast", "-w", "stop"]
            subprocess.run(["runuser", "-u", "postgres", "--", *stop] if as_root else stop,
                           capture_output=True, timeout=120)
        if as_root:
            shutil.rmtree(home, ignore_errors=True)

# --------------------------------------------------------------------------- on-premise variant

ONPREM_YAML = ROOT / "cluster_onprem.yaml"


def _onprem() -> dict:
    return yaml.safe_load(ONPREM_YAML.read_text())


def test_onprem_yaml_passes_rays_own_validation_offline(ray_validation, offline):
    prepare_config, validate_config = ray_validation
    raw = _onprem()
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    # Ray makes the single on-premise node type; every listed worker joins at `ray up`
    n = len(raw["provider"]["worker_ips"])
    assert n >= 1 and prepared["head_node_type"] == "local.cluster.node"
    assert prepared["available_node_types"]["local.cluster.node"]["min_workers"] == n
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == n
    assert set(raw["auth"]) == {"ssh_user", "ssh_private_key"}
    assert check_cluster_config(ONPREM_YAML)["provider"]["head_ip"] == raw["provider"]["head_ip"]


@pytest.mark.parametrize("mutate, key", [
    (lambda c: _rename(c, "idle_timeout_minutes", "idle_timeout_minute"), "idle_timeout_minute"),
    (lambda c: _rename(c["auth"], "ssh_private_key", "ssh_private_keys"), "ssh_private_keys"),
    (lambda c: c["auth"].update(ssh_user=1000), "auth/ssh_user"),
])
def test_onprem_yaml_mutations_are_rejected(mutate, key, tmp_path, offline):
    cfg = _onprem()
    mutate(cfg)
    with pytest.raises(ValueError, match=re.escape(key)):
        check_cluster_config(_write(tmp_path, cfg))


def test_onprem_yaml_pins_and_mlflow_command_match_cluster_yaml():
    """Same pins, and the head's MLflow command is cluster.yaml's, with artifacts on the head's disk
    and the machines' venv on PATH: a change to one that is not made to the other fails here."""
    onprem, aws = _onprem(), _raw()
    assert onprem["metadata"]["ray_version"] == aws["metadata"]["ray_version"] == _pin("ray")
    assert onprem["metadata"]["ncstudy_version"] == _pyproject()["project"]["version"]
    assert f".git@v{onprem['metadata']['ncstudy_version']}" in " ".join(onprem["setup_commands"])
    assert f"mlflow[auth]=={_pin('mlflow')}" in " ".join(onprem["head_setup_commands"])
    expected = _mlflow_command(aws).replace(
        f"--artifacts-destination {aws['metadata']['mlflow_artifacts']}",
        '--artifacts-destination "$M/artifacts"')
    assert _mlflow_command(onprem) == 'export PATH="$HOME/ncstudy-venv/bin:$PATH"\n' + expected
    assert _postgres_command(onprem) == _postgres_command(aws)  # the same PostgreSQL store on the head
    commands = "\n".join(onprem["head_start_ray_commands"] + onprem["worker_start_ray_commands"])
    assert "0.0.0.0" not in commands and "--dashboard-host=127.0.0.1" in commands
