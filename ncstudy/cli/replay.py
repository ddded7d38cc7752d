"""``ncstudy replay``: replay the forecast-driven stopper over logged trajectories and score it.

    ncstudy replay LOGS... [--manifest CSV | --group G] [--forecaster NAME|all ...]
                   [--calibration leave-one-out|prior|leave-one-group-out|FILE] [--prior corpus|none|paper|FILE]
                   [--policy stop_at_forecast|stop_at_onset|record] [--alpha A] [--coverage C] [--tolerance E]
                   [--budget N] [--save-calibration FILE] [--json]
    ncstudy replay LOGS... --search [--concurrent 4] [--repeats 200] [--seed 0] [--stopper NAME ...] [--json]
    ncstudy replay --experiment NAME [--tracking-uri URI] ...

LOGS are reference-format CSV files (``.csv`` or ``.csv.gz``) or folders of them. Every run starts
from the **prior** calibration -- by default ncstudy's trajectory corpus (``--prior corpus``) --
plus, under ``leave-one-out`` (the default), every other replayed run. Scores are against the
strict onset; see :mod:`ncstudy.forecast.replay` (a sweep, run by run) and
:mod:`ncstudy.forecast.search` (``--search``: searches for the fastest collapse replayed over the
runs, one stopper against another). The forecaster options and their defaults are the stopper's
own (:mod:`ncstudy.forecast.settings`): a flag left out is the forecaster's default, as in a
study. Bad input raises :class:`~ncstudy.errors.InputError` (exit status 2 through
:func:`ncstudy.cli.main`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from ncstudy.errors import InputError
from ncstudy.forecast.calibration import PAPER_PRIORS, Calibration, Prior, default_prior
from ncstudy.forecast.replay import (
    CALIBRATION_MODES,
    calibration_from_trajectories,
    format_runs,
    format_summaries,
    infer_budgets,
    replay,
)
from ncstudy.forecast.search import SEARCH_STOPPERS, format_search, replay_search
from ncstudy.forecast.settings import (
    DEFAULT_FORECASTER,
    DEFAULT_POLICY,
    FORECASTER_NAMES,
    FORECASTER_SETTINGS,
    OPTION_OWNERS,
    POLICIES,
    StopperSettings,
    field_default,
    field_help,
    forecaster_settings,
    option_help,
)
from ncstudy.onset import OnsetRule
from ncstudy.runs import GROUP_BY, Run, load_runs, read_manifest

#: Forecaster options a flag sets (``phases`` is ``--any-phase``; ``weights`` only from Python).
_OPTION_FLAGS = tuple(k for k in OPTION_OWNERS if k not in ("phases", "weights"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ncstudy replay", description=(
        "Replay the forecast-driven stopper epoch by epoch over logged trajectories and score it against "
        "the strict onset: forecast stops, MAE and interval coverage on runs that collapse, false stops "
        "and no-onset stops on runs that do not, epochs saved, rank correlation."))
    p.add_argument("logs", nargs="*", help="reference-format CSV (.csv, .csv.gz) files or folders")
    p.add_argument("--experiment", help="MLflow experiment name (its trial runs' trajectories)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's)")
    p.add_argument("--manifest", help="CSV with a 'file' column and run attributes (model, dataset, budget, ...), "
                                      "e.g. ncstudy/analyze/presets/rupa2026_runs.csv for the author's logs; groups "
                                      "come from it")
    p.add_argument("--group", help="put every run in this calibration group (e.g. mlp/mnist)")
    p.add_argument("--group-by", choices=GROUP_BY, default="model-dataset",
                   help="grouping of logs with a manifest (default model-dataset)")
    p.add_argument("--forecaster", action="append", choices=[*FORECASTER_NAMES, "all"],
                   help=f"forecaster(s) to replay; repeatable; default {DEFAULT_FORECASTER}")
    p.add_argument("--calibration", default="leave-one-out", metavar="MODE|FILE",
                   help=f"{', '.join(CALIBRATION_MODES)} (default leave-one-out), or a calibration JSON file "
                        "(= --calibration prior --prior FILE)")
    p.add_argument("--holdout-by", metavar="KEY", help="leave-one-group-out: run attribute of the holdout unit "
                                                       "(a manifest column, e.g. config; with --experiment an "
                                                       "attribute such as width or seed, or a param such as "
                                                       "model.width)")
    p.add_argument("--prior", default="corpus",
                   help="calibration every run starts from: 'corpus' (ncstudy's trajectory corpus, default), "
                        "'none', 'paper' (the paper's fn*/lead, for fn_star) or a calibration JSON file")
    p.add_argument("--prior-fn-star", type=float, help="prior fn* for --group")
    p.add_argument("--prior-lead", type=float, help="prior lead (epochs) for --group (fn_star)")
    p.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                   help=field_help(StopperSettings, "policy"))
    for name in _OPTION_FLAGS:  # the forecasters' own options: left out = the forecaster's default
        f = FORECASTER_SETTINGS[OPTION_OWNERS[name][0]].model_fields[name]
        kind = int if f.annotation in (int, int | None) else float
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, metavar=kind.__name__.upper(),
                       help=option_help(name))
    p.add_argument("--min-observations", type=int, default=field_default(StopperSettings, "min_observations"),
                   help=field_help(StopperSettings, "min_observations"))
    p.add_argument("--any-phase", action="store_true", help="fn_star/nc1/train_loss: use phase-1 evaluations too")
    p.add_argument("--budget", type=int, help="every run's full budget in epochs (default: the manifest's, "
                                              "else inferred per group from the runs that never collapse)")
    p.add_argument("--ce-epochs", type=int, help="phase for logs without a phase column: <= N is phase 1")
    p.add_argument("--strict", type=float, default=field_default(StopperSettings, "strict"),
                   help=field_help(StopperSettings, "strict"))
    p.add_argument("--relaxed", type=float, default=field_default(StopperSettings, "relaxed"),
                   help=field_help(StopperSettings, "relaxed"))
    s = p.add_argument_group("search (--search): searches for the fastest collapse replayed over the runs")
    s.add_argument("--search", action="store_true",
                   help="replay searches (each run = one configuration, random orders) and compare stoppers by "
                        "speedup against stop-at-onset-or-budget and by how often the search still finds the best")
    s.add_argument("--concurrent", type=int, default=4, help="trials at a time (default 4)")
    s.add_argument("--repeats", type=int, default=200, help="random orders (default 200)")
    s.add_argument("--seed", type=int, default=0, help="seed of the orders (default 0)")
    s.add_argument("--stopper", action="append", choices=SEARCH_STOPPERS,
                   help=f"stopper(s) to compare; repeatable; default all: {', '.join(SEARCH_STOPPERS)}")
    p.add_argument("--save-calibration", metavar="FILE", help="write the prior plus every replayed run as a "
                                                              "calibration JSON (read it back with --prior FILE)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout (the same fields)")
    return p


def _finite(name: str, v: float | None, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> None:
    if v is None:
        return
    bad = not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or \
        (hi is not None and (v >= hi if hi_open else v > hi))
    if bad:
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}" \
              f"{')' if hi_open or hi is None else ']'}"
        raise InputError(f"--{name.replace('_', '-')} {v}: must be a finite number in {rng}")


def _options(args) -> dict[str, Any]:
    """The forecaster options given on the command line (the rest stay each forecaster's defaults),
    each checked against every forecaster that takes it (exit 2 naming the flag)."""
    opts = {k: getattr(args, k) for k in _OPTION_FLAGS if getattr(args, k) is not None}
    if args.any_phase:
        opts["phases"] = None
    for k, v in opts.items():
        for owner in OPTION_OWNERS[k]:
            try:
                forecaster_settings(owner, {k: v})
            except ValueError as e:
                why = str(e).split(": ", 2)[-1]
                raise InputError(f"--{k.replace('_', '-')} {v}: {why}") from None
    return opts


def _check(args) -> None:
    _finite("prior_fn_star", args.prior_fn_star, 0, None, True)
    _finite("prior_lead", args.prior_lead)
    if args.budget is not None and args.budget <= 0:
        raise InputError(f"--budget {args.budget}: must be a positive number of epochs")
    if args.ce_epochs is not None and args.ce_epochs < 0:
        raise InputError(f"--ce-epochs {args.ce_epochs}: must be >= 0")
    if args.min_observations < 1:
        raise InputError("--min-observations must be >= 1")
    if not (math.isfinite(args.strict) and math.isfinite(args.relaxed) and 0 < args.strict <= args.relaxed < 1):
        raise InputError("need 0 < --strict <= --relaxed < 1")
    if args.concurrent < 1 or args.repeats < 1:
        raise InputError("--concurrent and --repeats must be >= 1")


def _load_calibration(path: str) -> Calibration:
    p = Path(path)
    try:
        return Calibration.load(p)
    except FileNotFoundError:
        raise InputError(f"{p}: calibration file not found") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a calibration JSON ({type(e).__name__}: {e})") from None


def _prior(args) -> Calibration | None:
    if args.prior == "none":
        cal = None
    elif args.prior == "corpus":
        cal = default_prior()
    elif args.prior == "paper":
        cal = Calibration(PAPER_PRIORS)
    else:
        cal = _load_calibration(args.prior)
    if args.prior_fn_star is not None or args.prior_lead is not None:
        if not args.group:
            raise InputError("--prior-fn-star/--prior-lead need --group (the group they describe)")
        cal = cal if cal is not None else Calibration()
        cal.set_prior(args.group, Prior(args.prior_fn_star, args.prior_lead, source="command line"))
    return cal


def calibration_report(trajs: Sequence[Run], prior: Calibration | None, mode: str) -> dict[str, Any]:
    """Per replayed group, what its calibration rests on; priors that match no replayed group."""
    groups = sorted({t.group for t in trajs})
    prior_groups = set(prior.groups()) if prior is not None else set()
    out: dict[str, Any] = {"mode": mode, "groups": {}, "unmatched_priors": sorted(
        g for g in prior_groups if prior is not None and g in prior.priors and g not in groups)}
    for g in groups:
        own = sum(t.group == g for t in trajs)
        pooled_same = prior.n_runs(g) if prior is not None else 0
        pooled_other = (prior.n_runs() - pooled_same) if prior is not None else 0
        p = prior.priors.get(g) if prior is not None else None
        out["groups"][g] = {
            "replayed_runs": own,
            "pooled_from_replay": (own - 1) if mode == "leave-one-out" else (0 if mode == "prior" else None),
            "prior_runs_same_group": pooled_same, "prior_runs_other_groups": pooled_other,
            "prior_fn_star": None if p is None else p.fn_star, "prior_source": None if p is None else p.source}
    return out


def _describe(rep: dict[str, Any]) -> list[str]:
    lines = []
    for g, d in rep["groups"].items():
        own = d["pooled_from_replay"]
        own_txt = "its other replayed runs" if own is None else f"{own} other replayed run(s)"
        fn = f", prior fn* {d['prior_fn_star']:.4g} ({d['prior_source']})" if d["prior_fn_star"] else ""
        own_txt = own_txt if rep["mode"] != "prior" else "none"
        lines.append(f"group {g}: {d['replayed_runs']} run(s); calibration = {own_txt} + prior runs: "
                     f"{d['prior_runs_same_group']} of this group, {d['prior_runs_other_groups']} of "
                     f"other groups{fn}")
    for g in rep["unmatched_priors"]:
        lines.append(f"WARNING: the prior for group {g} matches no replayed group "
                     f"({', '.join(rep['groups'])}); pass --group {g} to replay the logs as that group")
    return lines


def replay_main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    _check(args)
    opts = _options(args)
    if args.calibration not in CALIBRATION_MODES:
        if not Path(args.calibration).is_file():
            raise InputError(f"--calibration {args.calibration}: not one of {', '.join(CALIBRATION_MODES)} "
                             f"and not a calibration file")
        args.prior, args.calibration = args.calibration, "prior"
    if args.calibration == "leave-one-group-out" and not args.holdout_by:
        raise InputError("--calibration leave-one-group-out needs --holdout-by KEY (a manifest column, e.g. config)")
    if not args.logs and not args.experiment:
        raise InputError("give log files/folders or --experiment NAME")
    prior = _prior(args)
    skipped: list[str] = []
    trajs: list[Run] = []
    manifest = read_manifest(args.manifest) if args.manifest else None
    if args.logs:
        trajs += load_runs(args.logs, manifest, group=args.group, group_by=args.group_by, ce_epochs=args.ce_epochs,
                           skipped=skipped)
    if args.experiment:
        from ncstudy.adapters.mlflow.reader import mlflow_trajectories

        mt = mlflow_trajectories(args.experiment, args.tracking_uri, args.ce_epochs)
        if args.group:
            for t in mt:
                t.group = args.group
        trajs += mt
    if not trajs:
        detail = f" ({len(skipped)} CSV file(s) skipped: {'; '.join(skipped[:3])})" if skipped else ""
        raise InputError("no trajectory logs found in " + ", ".join(args.logs) + detail)
    for t in trajs:
        if not t.records:
            raise InputError(f"{t.source}: no evaluations (an empty log)")
        epochs = [r["epoch"] for r in t.records]
        if len(set(epochs)) != len(epochs):
            dup = sorted({e for e in epochs if epochs.count(e) > 1})
            raise InputError(f"{t.source}: duplicate epoch(s) {', '.join(map(str, dup[:5]))}; one row per evaluation")
    names = args.forecaster or [DEFAULT_FORECASTER]
    names = list(FORECASTER_NAMES) if "all" in names else list(dict.fromkeys(names))
    if args.search and len(names) > 1:
        raise InputError("--search compares stoppers with one forecaster behind ncstudy's: give one --forecaster")
    if args.calibration == "prior" and prior is None and any(n != "nc1" for n in names):
        raise InputError("--calibration prior needs a prior: --prior corpus|paper|FILE or --prior-fn-star/--prior-lead")
    rule = OnsetRule(args.strict, args.relaxed)
    report = calibration_report(trajs, prior, args.calibration)
    if args.search:
        return _search(args, trajs, names[0], prior, rule, opts, report)
    try:
        results = [replay(trajs, n, args.calibration, args.policy, prior, args.min_observations, rule, args.budget,
                          forecaster_options=opts, holdout_by=args.holdout_by) for n in names]
    except ValueError as e:  # an option a forecaster or the engine refuses
        raise InputError(str(e)) from None
    if args.save_calibration:
        calibration_from_trajectories(trajs, args.min_observations, rule, budget=args.budget,
                                      prior=prior).save(args.save_calibration)
    for line in _describe(report):
        print(f"ncstudy replay: {line}", file=sys.stderr)
    if skipped:
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        print(f"ncstudy replay: skipped {len(skipped)} CSV file(s) that are not trajectory logs: "
              f"{'; '.join(skipped[:5])}{more}", file=sys.stderr)
    budgets = infer_budgets(trajs, args.budget, rule)
    if args.json:
        json.dump({"results": [r.to_dict() for r in results], "calibration": report,
                   "options": {"calibration": args.calibration, "policy": args.policy, "prior": args.prior,
                               "budget": args.budget, "min_observations": args.min_observations,
                               "forecasters": {n: forecaster_settings(n, opts, lenient=True).model_dump()
                                               for n in names},
                               "n_runs": len(trajs), "budgets": budgets}}, sys.stdout, indent=1)
        print()
    else:
        for r in results:
            print(f"== {r.summary.forecaster} ({args.calibration} calibration, policy {args.policy})")
            print(format_runs(r))
            print()
        print(format_summaries([r.summary for r in results]))
    return 0


def _search(args, trajs: Sequence[Run], forecaster: str, prior: Calibration | None, rule: OnsetRule,
            opts: dict[str, Any], report: dict[str, Any]) -> int:
    """``--search``: replayed searches, one row (``summary``) per stopper."""
    stoppers = list(dict.fromkeys(args.stopper or SEARCH_STOPPERS))
    try:
        results = replay_search(trajs, stoppers, concurrent=args.concurrent, repeats=args.repeats, seed=args.seed,
                                forecaster=forecaster, calibration=args.calibration, prior=prior,
                                min_observations=args.min_observations, rule=rule, budget=args.budget,
                                forecaster_options=opts, holdout_by=args.holdout_by)
    except ValueError as e:
        raise InputError(str(e)) from None
    for line in _describe(report):
        print(f"ncstudy replay: {line}", file=sys.stderr)
    if args.json:
        json.dump({"results": [{"summary": r.to_dict()} for r in results], "calibration": report,
                   "options": {"search": True, "concurrent": args.concurrent, "repeats": args.repeats,
                               "seed": args.seed, "calibration": args.calibration, "prior": args.prior,
                               "forecaster": forecaster, "min_observations": args.min_observations,
                               "forecasters": {forecaster: forecaster_settings(forecaster, opts, lenient=True)
                                               .model_dump()},
                               "n_runs": len(trajs)}}, sys.stdout, indent=1)
        print()
    else:
        print(f"== {len(trajs)} runs, {args.repeats} random orders, {args.concurrent} at a time "
              f"({args.calibration} calibration, forecaster {forecaster})")
        print(format_search(results))
    return 0
