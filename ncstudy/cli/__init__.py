"""``ncstudy`` command line: train, run, slurm, ui, analyze, replay.

One exit-status contract for every command (:mod:`ncstudy.errors`): bad input (a config or study
file, a flag, a path that cannot be written) exits with status 2 and a message naming the file
and key, before any training, Ray or MLflow start; an MLflow server that does not answer, 3; a
stop signal (SIGINT, SIGTERM, SIGHUP), 128 + its number after a clean stop
(:mod:`ncstudy.study.signals`).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ncstudy import text
from ncstudy.adapters.mlflow.server import group_alive  # noqa: F401 - the name tests import from here
from ncstudy.errors import (
    EXIT_BAD_INPUT,
    EXIT_TRACKING_UNAVAILABLE,
    ConfigError,
    InputError,
    Interrupted,
    TrackingUnavailable,
    signal_name,
)


def cmd_train(args: argparse.Namespace) -> int:
    from ncstudy.config import load_train_config
    from ncstudy.logs import write_log
    from ncstudy.study.preflight import check_writable
    from ncstudy.train import Trainer, check_fits_in_memory

    cfg = load_train_config(args.config)
    if args.device:
        cfg = cfg.model_copy(update={"device": args.device})
    check_fits_in_memory(cfg, where=f"{args.config}: ")
    if args.out:
        check_writable(args.out, "--out", folder=False)
    trainer = Trainer(cfg)
    print(f"training {cfg.model.name} (depth {cfg.model.depth}, width {cfg.model.width}, {cfg.model.activation}) "
          f"on {cfg.data.name}: {cfg.ce_epochs} CE + {cfg.mse_epochs} MSE epochs, device {trainer.device}",
          flush=True)
    cols, widths = ("epoch", "phase", "train_loss", "train", "test", "feat_norm", "nc1"), (5, 5, 10, 7, 7, 9, 10)
    print(text.row(cols, widths), flush=True)

    def on_eval(rec, tr) -> None:
        print(text.row([rec.get(k) for k in cols], widths), flush=True)
        if args.out:
            write_log(tr.records, args.out)  # rewritten each evaluation: a killed run keeps its log

    result = trainer.run(on_eval)
    o = result.onset
    print(f"\nstatus {result.status}, stop reason {result.stop_reason}, epochs run {result.epochs_run}")
    if o.t_nc is not None:
        print(f"T_NC = {o.t_nc} ({o.threshold} threshold), fn* = {o.fn_star:.4f}")
    else:
        print(f"no collapse onset (min NC1 {text.value(o.min_nc1)})")
    if args.out:
        write_log(result.records, args.out)
        print(f"log written to {args.out}")
    return 0 if result.status == "completed" else 1


def _seconds(value: float, flag: str, positive: bool) -> None:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{flag} {value}: must be a finite number of seconds {'> 0' if positive else '>= 0'}")


def cmd_run(args: argparse.Namespace, signals=None) -> int:
    from ncstudy.study.runner import DEFAULT_TRACKING_URI, RunOptions, run_study, trial_plan
    from ncstudy.study.spec import load_study

    spec = load_study(args.space)
    if args.max_concurrent is not None and args.max_concurrent <= 0:
        raise ConfigError("--max-concurrent: must be a positive integer")
    _seconds(args.tracking_max_outage, "--tracking-max-outage", positive=True)
    _seconds(args.tracking_flush_interval, "--tracking-flush-interval", positive=False)
    if args.num_cpus is not None and args.num_cpus <= 0:
        raise ConfigError("--num-cpus: must be a positive integer")
    _seconds(args.progress_interval, "--progress-interval", positive=False)
    if args.allow_changed and not args.resume:
        raise ConfigError("--allow-changed goes with --resume")
    if args.dry_run:
        print("\n".join(trial_plan(spec)))
        return 0
    opts = RunOptions(address=args.address, tracking_uri=args.tracking_uri or DEFAULT_TRACKING_URI,
                      tracking_uri_given=args.tracking_uri is not None,
                      storage=args.storage, resume=args.resume, max_concurrent=args.max_concurrent,
                      num_cpus=args.num_cpus, progress_interval_s=args.progress_interval,
                      tracking_max_outage_s=args.tracking_max_outage,
                      tracking_flush_interval_s=args.tracking_flush_interval,
                      allow_changed=args.allow_changed, study_file=args.space)
    status = run_study(spec, opts, signals=signals)
    if status >= 128:  # stopped by a signal: the resume command was the last word
        return status
    _print_browse_hint(spec.name, opts.tracking_uri, opts.tracking_uri_given and
                       opts.tracking_uri != DEFAULT_TRACKING_URI)
    return status


def _print_browse_hint(study: str, uri: str, uri_given: bool) -> None:
    """Where to look at the study: the MLflow UI page of its training runs (a tracking server's own
    UI, else the one `ncstudy ui` serves on its default port)."""
    from ncstudy.adapters.mlflow.layout import runs_url
    from ncstudy.adapters.mlflow.reader import connect

    try:
        exp = connect(uri).get_experiment_by_name(study)
    except Exception:  # noqa: BLE001 - a hint is no reason to fail a finished study
        return
    if exp is None:
        return
    from ncstudy.adapters.mlflow.layout import VIEW_TAG

    view = VIEW_TAG in (exp.tags or {})
    if uri.startswith(("http://", "https://")):
        print(f"\nBrowse the study in MLflow: {runs_url(uri, exp.experiment_id, view)}", flush=True)
        return
    cmd = "ncstudy ui" + (f" --tracking-uri {uri}" if uri_given else "")
    print(f"\nBrowse the study in MLflow: `{cmd}`, then open\n  {runs_url(UI_BASE, exp.experiment_id, view)}",
          flush=True)


UI_BASE = "http://127.0.0.1:5000"  # `ncstudy ui`'s default address


def cmd_ui(args: argparse.Namespace) -> int:
    """The MLflow UI on 127.0.0.1 in its own session; SIGTERM, SIGHUP or Ctrl-C stop it and every
    process it started, and it ends with this process however this one ends
    (:mod:`ncstudy.adapters.mlflow.server`)."""
    import signal
    import socket

    from ncstudy.adapters.mlflow import server
    from ncstudy.adapters.mlflow.reader import check_uri, is_server, probe_server, sqlite_path
    from ncstudy.study.runner import DEFAULT_TRACKING_URI

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be a TCP port, 1 to 65535")
    uri = args.tracking_uri or DEFAULT_TRACKING_URI
    check_uri(uri)
    if is_server(uri):  # a tracking server serves its own UI
        probe_server(uri)
        raise ConfigError(f"--tracking-uri {uri}: an MLflow server serves its own UI; open {uri} in a browser "
                          f"(`ncstudy ui` serves a local store such as sqlite:///mlflow.db)")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"no MLflow store at {db} (tracking URI {uri}); run a study first, or pass --tracking-uri")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError:
            raise ConfigError(f"--port {args.port}: already in use on 127.0.0.1; pass another --port") from None
    from ncstudy.adapters.mlflow.layout import runs_url
    from ncstudy.adapters.mlflow.reader import StudyReader

    try:  # MLflow 3's UI opens GenAI pages: print the links that open each study's training runs
        studies = StudyReader(uri).studies()
    except Exception:  # noqa: BLE001 - the UI can still be browsed from its home page
        studies = []
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port),
           "--workers", "1"]
    # MLflow's job runner (GenAI jobs: ~7 extra processes) serves nothing a study logs.
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    stopping: list[int] = []
    procs: list[subprocess.Popen] = []

    def stop(signum: int, frame) -> None:
        stopping.append(signum)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)

    # the handlers first: a signal that lands while the server starts still stops it
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        procs.append(server.spawn(cmd, env=env))
        proc = procs[0]
        if stopping:
            stop(stopping[0], None)
        base = f"http://127.0.0.1:{args.port}"
        print(f"MLflow UI for {uri} at {base}  (Ctrl-C to stop)", flush=True)
        if studies:
            print("Training runs of each study: the study run and every trial (latest study first):",
                  flush=True)
            for name, exp_id, view in studies[:10]:
                print(f"  {name}: {runs_url(base, exp_id, view)}", flush=True)
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        return 0 if stopping else rc
    finally:
        for p in procs:  # the server and every worker it started, gone
            server.stop(p, timeout_s=10.0)
        for s, h in old.items():
            signal.signal(s, h)


def cmd_analyze(args: argparse.Namespace, rest: list[str]) -> int:
    from ncstudy.cli.analyze import analyze_main

    return analyze_main(rest)


def cmd_replay(args: argparse.Namespace, rest: list[str]) -> int:
    from ncstudy.cli.replay import replay_main

    return replay_main(rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ncstudy", description="Neural-collapse studies on Ray Tune + MLflow")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="one training run without Ray (reference log format)")
    t.add_argument("config", help="trainer config YAML (the `base` section of a study file)")
    t.add_argument("--out", help="write the per-evaluation log as CSV")
    t.add_argument("--device", help="override the config's device (auto, cpu, cuda)")

    r = sub.add_parser("run", help="run a study file on Ray Tune, tracked in MLflow")
    r.add_argument("space", help="study file, e.g. search_spaces/quickstart.yaml")
    r.add_argument("--address", help="existing Ray cluster (e.g. 'auto'); default: a local instance")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    r.add_argument("--storage", default=os.environ.get("NCSTUDY_STORAGE", "ncstudy_results"),
                   help="Tune storage path (shared storage on clusters)")
    r.add_argument("--tracking-max-outage", type=float, default=600.0, metavar="SECONDS",
                   help="how long the MLflow server may stay unreachable before the study stops "
                        "(unwritten metrics are kept in a local JSONL file); default 600")
    r.add_argument("--tracking-flush-interval", type=float, default=5.0, metavar="SECONDS",
                   help="how often queued metrics are sent to MLflow (and how fresh the UI is); default 5")
    r.add_argument("--resume", action="store_true", help="continue an interrupted study")
    r.add_argument("--allow-changed", action="store_true",
                   help="with --resume: continue although the study file changed since the first launch "
                        "(the first launch's study goes on as it was)")
    r.add_argument("--max-concurrent", type=int, help="cap on trials running at once")
    r.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    r.add_argument("--progress-interval", type=float, default=10.0, help="seconds between progress tables")
    r.add_argument("--dry-run", action="store_true", help="validate and print the trial plan")

    u = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1")
    u.add_argument("--tracking-uri", help="default sqlite:///mlflow.db")
    u.add_argument("--port", type=int, default=5000)

    from ncstudy.cli.slurm import add_parser as add_slurm_parser

    add_slurm_parser(sub)
    sub.add_parser("analyze", help="paper tables and figures from runs (see `ncstudy analyze -h`)", add_help=False)
    sub.add_parser("replay", help="replay the onset forecaster over logs (see `ncstudy replay -h`)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input of any command (:class:`~ncstudy.errors.InputError`) is reported
    here, once, with exit status 2."""
    from ncstudy.study.signals import StopSignals

    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "ncstudy" + (f" {argv[0]}" if argv and not argv[0].startswith("-") else "")
    signals = StopSignals()
    if not (argv and argv[0] == "ui"):  # `ncstudy ui` stops its server itself
        signals.install()  # SIGINT, SIGTERM, SIGHUP: a clean stop, 128 + n (a study: see run_study)
    try:
        if argv and argv[0] in ("analyze", "replay"):  # these parse their own flags
            cmd, rest = argv[0], argv[1:]
            return {"analyze": cmd_analyze, "replay": cmd_replay}[cmd](argparse.Namespace(), rest)
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # argparse: --help (0) or a usage error (2)
            return int(e.code or 0)
        if args.command == "run":
            return cmd_run(args, signals)
        if args.command == "slurm":
            from ncstudy.cli.slurm import cmd_slurm

            return cmd_slurm(args)
        return {"train": cmd_train, "ui": cmd_ui}[args.command](args)
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrackingUnavailable as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_TRACKING_UNAVAILABLE
    except Interrupted as e:  # a stop signal outside a study (a study returns its own status)
        print(f"{prog}: stopped by {signal_name(e.signum)}", file=sys.stderr)
        return e.exit_status
    finally:
        signals.restore()


if __name__ == "__main__":
    sys.exit(main())
