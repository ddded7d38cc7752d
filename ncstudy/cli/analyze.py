"""``ncstudy analyze``: statistics, figures and a Markdown report from logs or an MLflow study.

Exit status (through :func:`ncstudy.cli.main`): 0 done; 2 bad input (unknown experiment, empty
folder, CSV without the required columns, unknown preset or grouping key, an ``--out`` that cannot
be written) with a message on stderr and nothing written; 3 the MLflow server does not answer; 1
an unexpected failure (the output folder is still left untouched), or the report was written but
could not be logged to the MLflow parent run.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from ncstudy import text
from ncstudy.analyze.experiments import AnalysisOptions, no_onset_text
from ncstudy.errors import InputError

PROG = "ncstudy analyze"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Collapse onset (T_NC), fn*, group statistics, tests, figures and a Markdown "
                               "report from a folder of reference-format CSV logs or an MLflow study.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--logs", metavar="DIR", help="folder of reference-format CSV logs (one run per file)")
    src.add_argument("--experiment", metavar="NAME", help="MLflow experiment (= study name) to analyse")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: MLflow's, e.g. "
                                                         "$MLFLOW_TRACKING_URI)")
    p.add_argument("--preset", metavar="NAME", help="file-to-experiment map of a known log folder (rupa2026)")
    p.add_argument("--group-by", metavar="KEYS", action="append",
                   help="comma-separated grouping keys (model, dataset, depth, width, activation, "
                        "weight_decay, lr, intervention_alpha, group); default: the keys that vary. "
                        "With --preset: an extra 'custom' experiment")
    p.add_argument("--threshold", choices=["strict", "relaxed-fallback"],
                   help="strict: nc1 < 0.01 only; relaxed-fallback: cells that never reach 0.01 use 0.05 "
                        "(default; with --preset, the preset's rule per cell)")
    ph = p.add_mutually_exclusive_group()
    ph.add_argument("--phase2-only", dest="phase2_only", action="store_const", const=True,
                    help="count only phase-2 (MSE) evaluations for T_NC (default)")
    ph.add_argument("--any-phase", dest="phase2_only", action="store_const", const=False,
                    help="count evaluations of any phase for T_NC")
    p.add_argument("--phase1-epochs", type=int, metavar="N",
                   help="--logs without a preset: label epochs <= N phase 1 in files without a phase column")
    p.add_argument("--out", metavar="DIR", default="analysis_report",
                   help="output folder for report.md, figures/, runs.csv, groups.csv, results.json "
                        "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print results.json to stdout instead of a summary")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--no-log-artifacts", action="store_true",
                   help="with --experiment: do not log the report to the study's parent run")
    return p


def _group_keys(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    keys = tuple(k.strip() for v in values for k in v.split(",") if k.strip())
    return keys or None


def _install(tmp: Path, out: Path) -> None:
    """Move the finished files from ``tmp`` into ``out`` (created if needed; our files replaced)."""
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(tmp.rglob("*")):
        if src.is_dir():
            continue
        dst = out / src.relative_to(tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.replace(dst)


def _summary(a) -> str:
    lines = []
    if a.headline:
        lines.append(text.table(["reproduced", "ours"], [[h["quantity"], h["ours"]] for h in a.headline]))
    else:
        for name, r in a.experiments.items():
            lines.append(f"[{name}] grouped by {', '.join(r.spec.group_by)}")
            for _, g in r.groups.iterrows():
                tn = text.value(g["t_nc_mean"], fixed=0, missing=no_onset_text(g))
                lines.append(f"  {g['group']}: N={g['N']} collapsed={g['n_collapsed']} T_NC {tn} "
                             f"fn* {text.value(g['fn_mean'], fixed=3)}")
    return "\n".join(lines)


def analyze_main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    if args.tracking_uri and not args.experiment:
        raise InputError("--tracking-uri needs --experiment")
    out = Path(args.out)
    from ncstudy.study.preflight import check_writable

    check_writable(out, "--out")  # before any work: a folder that cannot be written is bad input
    opts = AnalysisOptions(threshold=args.threshold, phase2_only=args.phase2_only,
                           group_by=_group_keys(args.group_by))
    from ncstudy.analyze.pipeline import analyze

    a = analyze(logs=args.logs, experiment=args.experiment, tracking_uri=args.tracking_uri,
                preset=args.preset, options=opts, phase1_epochs=args.phase1_epochs)
    command = "ncstudy analyze " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        figures = []
        if not args.no_figures:
            from ncstudy.analyze.figures import make_figures

            figures = make_figures(a, tmp / "figures")
        a.figures = [f"figures/{Path(f).name}" for f in figures]
        from ncstudy.analyze.report import write_outputs

        results = write_outputs(a, tmp, figures, command)
        written = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(_summary(a))
        print(f"report: {out / 'report.md'} ({len(figures)} figures)")
    for w in a.source.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    if a.source.kind == "mlflow" and a.source.parent_run_id and not args.no_log_artifacts:
        try:
            from ncstudy.adapters.mlflow.writer import log_analysis

            log_analysis(a.source.tracking_uri, a.source.parent_run_id, out, [out / p for p in written])
        except Exception as e:  # noqa: BLE001 - the local report exists; say what failed
            print(f"{PROG}: error: report written to {out}, but logging it to parent run "
                  f"{a.source.parent_run_id} failed: {e}", file=sys.stderr)
            return 1
        if not args.json:
            print(f"logged to MLflow run {a.source.parent_run_id} under analysis/")
    return 0
