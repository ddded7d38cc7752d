"""``ncstudy replay``: replay the forecast-driven stopper over logged trajectories.

    ncstudy replay LOGS... [--forecaster fn_star|nc1|train_loss|all] [--calibration prior|leave-one-out]
                   [--policy stop_at_forecast|stop_at_onset|record] [--prior paper|FILE.json] [--json]
    ncstudy replay --experiment NAME [--tracking-uri URI] ...

LOGS are reference-format CSV files or folders (folders: every CSV with the log columns).
MLflow input reads the ``trajectory.csv`` artifact of each trial run (tag
``ncstudy.role=trial``) of the experiment; its group comes from the ``model``/``dataset`` tags.
Bad input raises :class:`~ncstudy.errors.InputError` (exit status 2 through :func:`ncstudy.cli.main`).
``mlflow`` is imported only for ``--experiment``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ncstudy.errors import InputError
from ncstudy.forecast.calibration import PAPER_PRIORS, Calibration, Prior
from ncstudy.forecast.forecasters import FORECASTERS
from ncstudy.forecast.replay import (
    CALIBRATION_MODES,
    calibration_from_trajectories,
    format_runs,
    format_summaries,
    replay,
)
from ncstudy.forecast.stopper import POLICIES
from ncstudy.forecast.trajectories import GROUP_BY, Trajectory, load_logs, read_manifest


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
    p.add_argument("--manifest", help="CSV with a 'file' column and run attributes (model, dataset, ...), e.g. "
                                      "analysis/rupa2026/runs.csv for the author's logs; groups come from it")
    p.add_argument("--group-by", choices=GROUP_BY, default="model-dataset",
                   help="grouping of logs with a manifest (default model-dataset)")
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
            raise InputError(f"{p}: prior file not found") from None
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{p}: not a calibration JSON ({e})") from None
    if args.prior_fn_star is not None or args.prior_lead is not None:
        if not args.group:
            raise InputError("--prior-fn-star/--prior-lead need --group")
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
            raise InputError("give log files/folders or --experiment NAME")
        if args.min_observations < 1 or args.confirm < 1 or args.window < 3:
            raise InputError("--min-observations and --confirm must be >= 1, --window >= 3")
        if not 0 < args.strict <= args.relaxed < 1:
            raise InputError("need 0 < --strict <= --relaxed < 1")
        skipped: list[str] = []
        trajs: list[Trajectory] = []
        manifest = read_manifest(args.manifest) if args.manifest else None
        if args.logs:
            trajs += load_logs(args.logs, manifest, args.group, args.group_by, args.ce_epochs, skipped)
        if args.experiment:
            from ncstudy.adapters.mlflow.reader import mlflow_trajectories

            trajs += mlflow_trajectories(args.experiment, args.tracking_uri, args.ce_epochs)
        if not trajs:
            raise InputError("no trajectory logs found in " + ", ".join(args.logs))
        if args.group:
            for t in trajs:
                t.group = args.group
        priors = _priors(args)
        names = args.forecaster or ["fn_star"]
        names = list(FORECASTERS) if "all" in names else list(dict.fromkeys(names))
        if args.calibration == "prior" and not priors and any(n != "nc1" for n in names):
            raise InputError("--calibration prior needs --prior paper|FILE or --prior-fn-star/--prior-lead")
        rule = OnsetRule(args.strict, args.relaxed)
        opts = {"margin": args.margin, "confirm": args.confirm, "window": args.window, "r2_min": args.r2_min,
                "max_horizon": args.max_horizon, "phases": None if args.any_phase else (2,)}
        results = [replay(trajs, n, args.calibration, args.policy, priors, args.min_observations, rule,
                          args.budget, forecaster_options=opts) for n in names]
        if args.save_calibration:
            calibration_from_trajectories(trajs, args.min_observations, rule, priors=priors).save(args.save_calibration)
    except InputError:
        raise
    except ValueError as e:  # an option a forecaster or the replay engine refuses
        raise InputError(str(e)) from None
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
