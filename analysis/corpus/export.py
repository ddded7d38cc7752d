"""Export the corpus study from MLflow into ``analysis/corpus/``: one gzip CSV per run + a manifest.

    .venv/bin/python analysis/corpus/export.py [--tracking-uri sqlite:///analysis/corpus/build/mlflow.db]

``runs/<run>.csv.gz`` holds the run's evaluations in the reference log format (``epoch, phase,
train, test, nc1, nc2, nc3, feat_norm``, then ``train_loss, grad_norm, weight_norm,
classifier_weight_norm, lr`` and the standard NC forms); ``manifest.csv`` has one row per run:
``file, run, config`` (the configuration without its seed: the holdout unit of the forecaster
evaluation), ``group`` (model/dataset), the searched and fixed hyperparameters, ``ce_epochs``,
``budget``, ``t_nc`` (strict onset, empty when none), ``fn_star``, ``stop_reason``. Only trials
that finished (onset or budget) are exported; the script refuses a study with failed trials. It then
rewrites the packaged prior ``ncstudy/forecast/data/corpus_calibration.json`` from the exported runs.
"""
from __future__ import annotations

import argparse
import gzip
import io
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from ncstudy.adapters.mlflow.reader import StudyReader  # noqa: E402
from ncstudy.forecast.calibration import DEFAULT_PRIOR  # noqa: E402
from ncstudy.forecast.replay import calibration_from_trajectories  # noqa: E402
from ncstudy.onset import onset_of  # noqa: E402
from ncstudy.records import num  # noqa: E402
from ncstudy.runs import load_corpus  # noqa: E402

PARAMS = {"data.name": "dataset", "model.name": "model", "model.depth": "depth", "model.width": "width",
          "model.activation": "activation", "optimizer.name": "optimizer", "optimizer.schedule": "schedule",
          "optimizer.lr": "lr", "optimizer.weight_decay": "weight_decay", "seed": "seed", "ce_epochs": "ce_epochs",
          "mse_epochs": "mse_epochs", "data.n_train": "n_train", "batch_size": "batch_size"}
#: what the first corpus held fixed (its MLflow params predate some of these columns)
DEFAULTS = {"optimizer": "adam", "schedule": "cosine"}
NUMERIC = ("depth", "width", "lr", "weight_decay", "seed", "ce_epochs", "mse_epochs", "n_train", "batch_size", "budget")
#: the corpus's studies (``search_spaces/<name>.yaml``) and the part of the corpus each made
PARTS = {"corpus": "base", "corpus_shift": "shift"}
KEEP = ["epoch", "phase", "train", "test", "nc1", "nc2", "nc3", "feat_norm", "train_loss", "grad_norm",
        "weight_norm", "classifier_weight_norm", "lr", "nc1_papyan", "equinorm_means", "equinorm_weights",
        "etf_distance", "self_duality", "nc4"]


def export(uri: str, experiment: str, out: Path, partial: bool = False) -> pd.DataFrame:
    reader = StudyReader(uri)
    exp = reader.experiment(experiment)
    trials = reader.trials(exp.experiment_id)
    diverged = [t for t in trials if t.tags.get("stop_reason") == "diverged"]
    if diverged:  # training broke down (loss not finite): no trajectory to learn from; said, not hidden
        print(f"left out {len(diverged)} diverged run(s): {', '.join(t.name for t in diverged)}")
        trials = [t for t in trials if t not in diverged]
    bad = [t.name for t in trials if t.status != "FINISHED"]
    if partial:  # a study still running: its finished trials only (for development, not for the corpus)
        trials, bad = [t for t in trials if t.status == "FINISHED"], []
    if bad:
        raise SystemExit(f"{len(bad)} trial run(s) not FINISHED (running or failed): {', '.join(bad[:5])} ...")
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in sorted(trials, key=lambda t: t.name):
        df = t.trajectory
        if df is None:
            raise SystemExit(f"{t.name}: no trajectory")
        df = df[[c for c in KEEP if c in df.columns]]
        name = t.name
        buf = io.StringIO()
        df.to_csv(buf, index=False, float_format="%.6g")
        with gzip.GzipFile(runs_dir / f"{name}.csv.gz", "wb", mtime=0) as fh:  # mtime 0: reproducible bytes
            fh.write(buf.getvalue().encode())
        p = {a: t.params.get(k, DEFAULTS.get(a)) for k, a in PARAMS.items()}
        if p["n_train"] in (None, "None", ""):  # the whole set: mnist5k's 5,000 images
            p["n_train"] = 5000 if p["dataset"] == "mnist5k" else None
        onset = onset_of(df.to_dict("records"), relaxed_fallback=False)
        ce = int(float(p["ce_epochs"]))
        budget = ce + int(float(t.params["mse_epochs"]))
        rows.append({"file": f"{name}.csv.gz", "run": name, "config": name.rsplit("-s", 1)[0] if
                     PARTS.get(experiment) == "base" else name, "part": PARTS.get(experiment, experiment),
                     "group": f"{p['model']}/{p['dataset']}", **p, "budget": budget,
                     "t_nc": onset.t_strict, "fn_star": num(onset.fn_strict),
                     "min_nc1": num(onset.min_nc1), "stop_reason": t.tags.get("stop_reason", "")})
    manifest = pd.DataFrame(rows)
    path = out / "manifest.csv"
    if path.exists():  # the other part of the corpus stays; this experiment's rows are replaced
        old = pd.read_csv(path)
        if "part" not in old.columns:
            old["part"] = "base"
        old = old[old["part"] != PARTS.get(experiment, experiment)]
        manifest = pd.concat([old, manifest], ignore_index=True)
    for col in NUMERIC:
        manifest[col] = pd.to_numeric(manifest[col].replace({"None": None}), errors="coerce")
    for col, v in DEFAULTS.items():
        manifest[col] = manifest[col].fillna(v)
    manifest["mse_epochs"] = manifest["mse_epochs"].fillna(manifest["budget"] - manifest["ce_epochs"]).astype(int)
    manifest.loc[manifest["dataset"] == "mnist5k", "n_train"] = manifest["n_train"].fillna(5000)
    for col in ("n_train", "t_nc"):
        manifest[col] = manifest[col].astype("Int64")
    manifest = manifest.sort_values(["part", "run"], kind="stable")
    manifest.to_csv(path, index=False)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default=f"sqlite:///{(HERE / 'build' / 'mlflow.db').relative_to(ROOT)}")
    ap.add_argument("--experiment", default="corpus")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--partial", action="store_true", help="export the finished trials of a study still running")
    ap.add_argument("--no-prior", action="store_true", help="do not rewrite the packaged prior")
    a = ap.parse_args()
    m = export(a.tracking_uri, a.experiment, a.out, a.partial)
    n_c = int(m["t_nc"].notna().sum())
    print(f"exported {len(m)} runs to {a.out} ({n_c} reach NC1 < 0.01, {len(m) - n_c} censored)")
    if not (a.partial or a.no_prior):
        write_prior(a.out)


def write_prior(corpus: Path, dest: Path = DEFAULT_PRIOR) -> None:
    """The packaged prior (``prior="corpus"``): every corpus run as a pooled calibration run
    (``tests/test_corpus.py`` checks that it matches the corpus)."""
    cal = calibration_from_trajectories(load_corpus(corpus))
    cal.save(dest)
    print(f"wrote {dest.relative_to(ROOT)} ({cal.n_runs()} runs)")


if __name__ == "__main__":
    main()
