"""``ncstudy replay``: replay the forecast-driven stopper over logged trajectories.

    ncstudy replay LOGS... [--forecaster fn_star|nc1|train_loss|all] [--calibration prior|leave-one-out]
                   [--policy stop_at_forecast|stop_at_onset|record] [--prior paper|FILE.json] [--json]
    ncstudy replay --experiment NAME [--tracking-uri URI] ...

LOGS are reference-format CSV files or folders (folders: every CSV with the log columns).
MLflow input reads the ``trajectory.csv`` artifact of each trial run (tag
``ncstudy.role=trial``) of the experiment; its group comes from the ``model``/``dataset`` tags.
Bad input prints a message and returns 2. ``mlflow`` is imported only for ``--experiment``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from ncstudy.logs import LogFormatError, read_log

from .calibration import PAPER_PRIORS, Calibration, Prior
from .forecasters import FORECASTERS
from .replay import (CALIBRATION_MODES, GROUP_BY, Trajectory, calibration_from_trajectories, format_runs,
                     format_summaries, frame_records, load_reference_logs, replay)
from .stopper import POLICIES


class ReplayInputError(ValueError):
    pass


def load_mlflow_trajectories(experiment: str, tracking_uri: str | None = None,
                             ce_epochs: int | None = None) -> list[Trajectory]:
    """Trial runs of an MLflow experiment (CONTRACTS.md layout) as trajectories."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as e:  # pragma: no cover - mlflow is a dependency
        raise ReplayInputError(f"--experiment needs mlflow: {e}") from e
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
    except MlflowException as e:
        raise ReplayInputError(f"cannot reach MLflow at {tracking_uri or mlflow.get_tracking_uri()}: {e}") from e
    if exp is None:
        raise ReplayInputError(f"MLflow experiment {experiment!r} not found at "
                               f"{tracking_uri or mlflow.get_tracking_uri()}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`ncstudy.role` = 'trial'",
                              max_results=50000)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            tags = run.data.tags
            rid = tags.get("ncstudy.trial_id") or run.info.run_name or run.info.run_id
            try:
                local = client.download_artifacts(run.info.run_id, "trajectory.csv", tmp)
            except (MlflowException, OSError):
                continue  # a trial that logged no trajectory (e.g. failed early)
            df = read_log(local)
            meta = {"run_id": rid, "model": tags.get("model"), "dataset": tags.get("dataset"),
                    "mlflow_run_id": run.info.run_id, **{k: v for k, v in run.data.params.items()}}
            model, data = meta["model"], meta["dataset"]
            group = f"{model or '?'}/{data or '?'}" if (model or data) else "default"
            out.append(Trajectory(str(rid), group, frame_records(df, ce_epochs), meta, f"mlflow:{run.info.run_id}"))
            Path(local).unlink(missing_ok=True)
    if not out:
        raise ReplayInputError(f"MLflow experiment {experiment!r} has no trial runs with a trajectory.csv")
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ncstudy replay", description=(
        "Replay the forecast-driven stopper epoch by epoch over logged trajectories and score it "
        "(coverage, lead, MAE, epochs saved)."))
    p.add_argument("logs", nargs="*", help="reference-format CSV files or folders")
    p.add_argument("--experiment", help="MLflow experiment name (trial runs' trajectory.csv)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's)")
    p.add_argument("--forecaster", action="append", choices=[*FORECASTERS, "all"],
                   help="forecaster(s) to replay; repeatable; default fn_star")
    p.add_argument("--calibration", choices=CALIBRATION_MODES, default="leave-one-out")
    p.add_argument("--policy", choices=POLICIES, default="stop_at_forecast")
    p.add_argument("--prior", help="'paper' (the paper's fn*/lead) or a calibration JSON file")
    p.add_argument("--prior-fn-star", type=float, help="prior fn* for --group")
    p.add_argument("--prior-lead", type=float, help="prior lead (epochs) for --group")
    p.add_argument("--group", help="put every run in this group (and give it the --prior-* values)")
    p.add_argument("--group-by", choices=GROUP_BY, default="model-dataset",
                   help="grouping of reference logs by file name (default model-dataset)")
    p.add_argument("--min-observations", type=int, default=3)
    p.add_argument("--margin", type=float, default=0.0, help="fn_star: crossing at fn <= fn*(1+margin)")
    p.add_argument("--confirm", type=int, default=1, help="fn_star: evaluations in a row below threshold")
    p.add_argument("--any-phase", action="store_true", help="let crossings/fits use phase-1 evaluations")
    p.add_argument("--window", type=int, default=5, help="nc1/train_loss: fit window")
    p.add_argument("--r2-min", type=float, default=0.9, help="nc1/train_loss: minimum R^2 of the fit")
    p.add_argument("--max-horizon", type=float, help="nc1/train_loss: distrust forecasts further ahead")
    p.add_argument("--budget", type=int, help="full budget in epochs (default: each run's last epoch)")
    p.add_argument("--ce-epochs", type=int, help="infer phase for logs without a phase column")
    p.add_argument("--strict", type=float, default=0.01)
    p.add_argument("--relaxed", type=float, default=0.05)
    p.add_argument("--save-calibration", help="write a calibration JSON built from all replayed runs")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return p


def _priors(args) -> dict[str, Prior] | None:
    priors: dict[str, Prior] = {}
    if args.prior == "paper":
        priors.update(PAPER_PRIORS)
    elif args.prior:
        p = Path(args.prior)
        try:
            priors.update(Calibration.load(p).priors)
        except FileNotFoundError:
            raise ReplayInputError(f"{p}: prior file not found") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ReplayInputError(f"{p}: not a calibration JSON ({e})") from None
    if args.prior_fn_star is not None or args.prior_lead is not None:
        if not args.group:
            raise ReplayInputError("--prior-fn-star/--prior-lead need --group")
        priors[args.group] = Prior(args.prior_fn_star, args.prior_lead, source="command line")
    return priors or None


def replay_main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    from ncstudy.onset import OnsetRule

    try:
        if not args.logs and not args.experiment:
            raise ReplayInputError("give log files/folders or --experiment NAME")
        if args.min_observations < 1 or args.confirm < 1 or args.window < 3:
            raise ReplayInputError("--min-observations and --confirm must be >= 1, --window >= 3")
        if not 0 < args.strict <= args.relaxed < 1:
            raise ReplayInputError("need 0 < --strict <= --relaxed < 1")
        skipped: list[str] = []
        trajs: list[Trajectory] = []
        for p in args.logs:
            if not Path(p).exists():
                raise ReplayInputError(f"{p}: no such file or folder")
        if args.logs:
            trajs += load_reference_logs(args.logs, args.group_by, args.ce_epochs, skipped)
        if args.experiment:
            trajs += load_mlflow_trajectories(args.experiment, args.tracking_uri, args.ce_epochs)
        if not trajs:
            raise ReplayInputError("no trajectory logs found in " + ", ".join(args.logs))
        if args.group:
            for t in trajs:
                t.group = args.group
        priors = _priors(args)
        names = args.forecaster or ["fn_star"]
        names = list(FORECASTERS) if "all" in names else list(dict.fromkeys(names))
        if args.calibration == "prior" and not priors and any(n != "nc1" for n in names):
            raise ReplayInputError("--calibration prior needs --prior paper|FILE or --prior-fn-star/--prior-lead")
        rule = OnsetRule(args.strict, args.relaxed)
        opts = {"margin": args.margin, "confirm": args.confirm, "window": args.window, "r2_min": args.r2_min,
                "max_horizon": args.max_horizon, "phases": None if args.any_phase else (2,)}
        results = [replay(trajs, n, args.calibration, args.policy, priors, args.min_observations, rule,
                          args.budget, forecaster_options=opts) for n in names]
        if args.save_calibration:
            calibration_from_trajectories(trajs, args.min_observations, rule, priors=priors).save(args.save_calibration)
    except (ReplayInputError, LogFormatError, ValueError) as e:
        print(f"ncstudy replay: error: {e}", file=sys.stderr)
        return 2
    if skipped:
        print(f"ncstudy replay: skipped {len(skipped)} CSV file(s) that are not trajectory logs", file=sys.stderr)
    if args.json:
        json.dump({"results": [r.to_dict() for r in results], "options": {
            "calibration": args.calibration, "policy": args.policy, "budget": args.budget,
            "min_observations": args.min_observations, **{k: v for k, v in opts.items() if k != "phases"},
            "phases": opts["phases"], "n_runs": len(trajs)}}, sys.stdout, indent=1)
        print()
    else:
        for r in results:
            print(f"== {r.summary.forecaster} ({args.calibration} calibration, policy {args.policy})")
            print(format_runs(r))
            print()
        print(format_summaries([r.summary for r in results]))
    return 0


def main() -> None:  # pragma: no cover
    sys.exit(replay_main())


if __name__ == "__main__":  # pragma: no cover
    main()
