"""The ``rupa2026`` preset: how the author's released logs (``../shared/reference/rupa2026_logs``,
arXiv 2604.00230, repository Rupawheatly/NC) map to the paper's experiments.

What each file *is* (model, dataset, depth, width, activation, weight decay, lr, seed, protocol,
cell, variant) is the table ``rupa2026_runs.csv`` beside this file -- the reference README's "Which file is
which experiment" and "Definitions", one row per log; ``ncstudy replay --manifest`` reads the same
table. What follows adds the analysis choices: threshold rule, cell, experiments, the author's
summary tables to check against, and the headline table. Loaded by ``ncstudy analyze --preset
rupa2026`` (see :func:`ncstudy.analyze.presets.get_preset`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ncstudy.analyze.experiments import ExperimentSpec
from ncstudy.analyze.presets import Check, FileRun, LeadCheck, Preset, TableRow
from ncstudy.runs import read_manifest

RUNS = Path(__file__).with_name("rupa2026_runs.csv")
RUN_KEYS = ("model", "dataset", "depth", "width", "activation", "weight_decay", "lr", "seed")
_MANIFEST = read_manifest(RUNS)

# README "Definitions": MLPs Adam lr 1e-3, weight decay 1e-4, width 512, depth 5, ReLU, MNIST;
# ResNet-20 SGD lr 0.1, weight decay 1e-3.
MLP5_MNIST: dict[str, Any] = {"model": "mlp", "dataset": "mnist", "depth": 5, "width": 512, "activation": "relu",
                              "weight_decay": 1e-4, "lr": 1e-3}
RESNET20: dict[str, Any] = {"model": "resnet20", "depth": None, "width": None, "activation": None,
                            "weight_decay": 1e-3, "lr": 0.1}


def run_attrs(file: str) -> dict[str, Any]:
    """A reference file's run attributes (``RUN_KEYS``, plus ``variant`` when it has one)."""
    meta = _MANIFEST.get(Path(file).stem)
    if meta is None:
        raise ValueError(f"{Path(file).name}: not a file of the reference logs ({RUNS})")
    attrs = {k: _int(k, meta.get(k)) for k in RUN_KEYS}
    if meta.get("variant"):
        attrs["variant"] = meta["variant"]
    return attrs


def _int(key: str, v: Any) -> Any:
    return int(v) if key in ("depth", "width", "seed") and v is not None else v


def _run(file: str, cell: str, rule: str, experiments: tuple[str, ...], **kw: Any) -> FileRun:
    return FileRun(file, run_attrs(file), cell, rule, experiments, **kw)


def _rupa_files() -> list[FileRun]:
    F: list[FileRun] = []
    # README file table: "mnist_twophase.csv (= depth 5, seed 0), depth5_s1/2 | baseline MLP-5, MNIST".
    # The baseline is the ReLU cell of the activation sweep, the depth-5 cell of the depth sweep and
    # the 1e-4 cell of the weight-decay sweep; strict threshold, phase 2.
    base_exps = ("grid", "depth", "activation", "weight_decay")
    F.append(_run("mnist_twophase.csv", "mlp5_mnist", "strict", base_exps))
    for s in (1, 2):
        F.append(_run(f"depth5_s{s}.csv", "mlp5_mnist", "strict", base_exps))
    # README numbers: "fn*, MNIST / MLP-5, 12 runs (depth 5 x3, depth 7 x3, wd 1e-5 x3, wd 5e-5 x3)":
    # depth-7 and the two lower weight decays join the baseline in the MNIST / MLP-5 cell of the grid.
    for s in range(3):
        F.append(_run(f"depth7_s{s}.csv", "mlp7_mnist", "strict", ("grid", "depth")))
    # README numbers: "depth 2 / 3 / 5 / 7 T_NC (2, 3 relaxed, ext runs)": the depth sweep uses the
    # *_ext runs of depths 2 and 3 with the relaxed threshold (nc1 never reaches 0.01 there).
    for d in (2, 3):
        for s in range(3):
            F.append(_run(f"depth{d}_s{s}_ext.csv", f"mlp{d}_mnist_ext", "relaxed", ("depth",)))
    # README file table: "depth2_s*, depth3_s* (400 epochs, no stop)": the no-stop runs, not used by
    # the README's depth numbers; analysed as a supplementary experiment.
    for d in (2, 3):
        for s in range(3):
            F.append(_run(f"depth{d}_s{s}.csv", f"mlp{d}_mnist_nostop", "relaxed", ("depth_nostop",)))
    # README numbers: "activation T_NC: ReLU / Tanh (relaxed) / GELU (relaxed, seeds 1-4)".
    for s in range(3):
        F.append(_run(f"actTanh_s{s}.csv", "tanh_mnist", "relaxed", ("activation",)))
    F.append(_run("actGELU_s0.csv", "gelu_mnist", "relaxed", (),
                  note="not in the activation sweep: README uses GELU seeds 1-4"))
    for s in (1, 2):
        F.append(_run(f"actGELU_s{s}.csv", "gelu_mnist", "relaxed", ("activation",)))
    # gelu_s3/4 have no phase column; they follow the 200-epoch CE + MSE protocol (README
    # "Definitions": "200 epochs cross-entropy, then MSE"), so epochs > 200 are phase 2.
    for s in (3, 4):
        F.append(_run(f"gelu_s{s}.csv", "gelu_mnist", "relaxed", ("activation",), phase1_epochs=200))
    # README numbers: "weight decay 1e-5 / 5e-5 / 1e-4 / 5e-4 | T_NC 380 / 290 / 297 / never (min nc1
    # about 0.03)": strict threshold in every cell, including 5e-4 -- which crosses 0.05 but never
    # 0.01, and the paper calls it "never". So no relaxed fallback in this sweep.
    for tag in ("1e-05", "5e-05"):
        for s in range(3):
            F.append(_run(f"wd{tag}_s{s}.csv", f"wd{tag}_mnist", "strict", ("grid", "weight_decay")))
    for s in range(3):
        F.append(_run(f"wd0p0005_s{s}.csv", "wd5e-04_mnist", "strict", ("weight_decay",)))
    # README file table: "width128_s*, width256_s*, width512_s0, sweep_width.csv | width sweep".
    for w, seeds in ((128, (0, 1, 2)), (256, (0, 1, 2)), (512, (0,))):
        for s in seeds:
            F.append(_run(f"width{w}_s{s}.csv", f"width{w}_mnist", "strict", ("width",)))
    # README file table: "cifar10_s* | ResNet-20 on CIFAR-10"; numbers: "(3 runs, T_NC 660 each)", strict.
    for s in range(3):
        F.append(_run(f"cifar10_s{s}.csv", "resnet20_cifar10", "strict", ("grid",)))
    # README: "mlp5_cifar10_s* | MLP-5 on CIFAR-10 (relaxed threshold)".
    for s in range(3):
        F.append(_run(f"mlp5_cifar10_s{s}.csv", "mlp5_cifar10", "relaxed", ("grid",)))
    # README: "resnet20_mnist_s1/2 ... | ResNet-20 on MNIST (collapse at epoch 110, inside phase 1)":
    # the onset counts phase-1 evaluations for this cell (any phase), strict.
    for s in (1, 2):
        F.append(_run(f"resnet20_mnist_s{s}.csv", "resnet20_mnist", "strict", ("grid",), phase2_only=False))
    # README: "ce_only_ablation.csv, baseline.csv, mnist_baseline.csv, wd0p001.csv, wd0p002.csv,
    # wd0p0005.csv | single-phase and early exploratory runs": listed in the run table, in no experiment.
    for f in ("ce_only_ablation.csv", "baseline.csv", "mnist_baseline.csv", "wd0p001.csv", "wd0p002.csv",
              "wd0p0005.csv"):
        F.append(_run(f, Path(f).stem, "relaxed-fallback", (), phase2_only=False, optional=True,
                      note="single-phase / exploratory run (README); not in the paper's numbers"))
    return F


def _rupa_table_rows() -> list[TableRow]:
    rows = [
        # README numbers: "fn*, MNIST / ResNet-20 (3 runs)" but only resnet20_mnist_s1/2 have a per-epoch
        # log here; seed 0's T_NC and fn* are the author's, from resnet20_mnist_summary.csv.
        TableRow("resnet20_mnist_summary.csv", {"seed": 0}, {**RESNET20, "dataset": "mnist", "seed": 0},
                 "resnet20_mnist", "strict", ("grid",), test_col=None,
                 note="no per-epoch log for seed 0 in the folder: T_NC, fn* from resnet20_mnist_summary.csv"),
    ]
    # README file table: "width sweep (no per-run file for 512 s1/s2 and 1024)": those five runs come
    # from sweep_width.csv; the other seven are computed from their logs (and checked against it).
    for w, s in ((512, 1), (512, 2), (1024, 0), (1024, 1), (1024, 2)):
        rows.append(TableRow("sweep_width.csv", {"width": w, "seed": s}, {**MLP5_MNIST, "width": w, "seed": s},
                             f"width{w}_mnist", "strict", ("width",),
                             note="no per-epoch log in the folder: T_NC, fn* from sweep_width.csv"))
    return rows


_RUPA_EXPERIMENTS = [
    ExperimentSpec("grid", "fn* across (model, dataset) pairs", ("dataset", "model"), kind="grid",
                   description="README: MNIST / MLP-5 (12 runs), MNIST / ResNet-20, CIFAR-10 / MLP-5 (relaxed), "
                               "CIFAR-10 / ResNet-20; Kruskal-Wallis across the four pairs (n = 21)."),
    ExperimentSpec("depth", "Depth sweep (MLP, MNIST)", ("depth",), x="depth", order=(2, 3, 5, 7),
                   description="Depth 2 and 3: *_ext runs, relaxed threshold; depth 5 = baseline; depth 7 strict."),
    ExperimentSpec("activation", "Activation sweep (MLP-5, MNIST)", ("activation",), kind="activation",
                   order=("relu", "tanh", "gelu"),
                   description="ReLU = baseline (strict); Tanh and GELU (seeds 1-4) relaxed."),
    ExperimentSpec("weight_decay", "Weight-decay sweep (MLP-5, MNIST)", ("weight_decay",), x="weight_decay",
                   description="1e-4 = baseline; strict threshold in every cell (5e-4: never)."),
    ExperimentSpec("width", "Width sweep (MLP-5, MNIST)", ("width",), x="width", lead_fit="width",
                   description="Per-run logs for 128, 256 and 512 seed 0; 512 seeds 1-2 and 1024 from "
                               "sweep_width.csv."),
    ExperimentSpec("depth_nostop", "Depth 2 and 3, no-stop runs (supplementary)", ("depth",), x="depth",
                   description="The 600-epoch depth-2/3 runs without early stop; the README's depth numbers "
                               "use the *_ext runs instead."),
]

_RUPA_CHECKS = [
    Check("cifar10_summary.csv", {"seed": "seed"}, {"model": "resnet20", "dataset": "cifar10"}),
    Check("mlp5_cifar10_summary.csv", {"seed": "seed"}, {"model": "mlp", "dataset": "cifar10"}),
    Check("resnet20_mnist_summary.csv", {"seed": "seed"}, {"model": "resnet20", "dataset": "mnist"}),
    Check("gelu_summary.csv", {"seed": "seed"}, {"activation": "gelu"}),
    Check("sweep_depth.csv", {"depth": "depth", "seed": "seed"}, domain=("depth",), fn_col="feat_norm"),
    Check("sweep_remaining.csv", {"act": "activation", "depth": "depth", "seed": "seed"},
          domain=("depth", "activation"), fn_col="feat_norm"),
    Check("sweep_wd.csv", {"wd": "weight_decay", "seed": "seed"}, domain=("weight_decay",)),
    Check("sweep_width.csv", {"width": "width", "seed": "seed"}, domain=("width",)),
]


# The README's table "Numbers these logs must reproduce", verbatim, for the side-by-side column of
# the report (the values are never used to compute anything).
RUPA2026_PAPER = {
    "fn_mnist_mlp": "1.052 +- 0.066, CV 6.2 %, 95 % CI [1.010, 1.093]",
    "fn_mnist_resnet": "5.867 +- 0.034, CV 0.6 %",
    "fn_cifar_mlp": "0.900 +- 0.065, CV 7.3 %",
    "fn_cifar_resnet": "1.515 +- 0.008, CV 0.5 % (T_NC 660 each)",
    "arch_effect": "MNIST +458 %, CIFAR-10 +68 %",
    "kruskal": "H = 15.75, df 3, p = 0.0013, epsilon^2 = 0.75",
    "depth": "273 / 250 / 297 / 340 epochs",
    "activation": "297 / 220 / 265",
    "weight_decay": "T_NC 380 / 290 / 297 / never (min nc1 about 0.03)",
    "width": "T_NC 383 / 327 / 310 / 257; fn* 1.241 / 1.125 / 1.096 / 1.080",
    "width_lead": "8 of 12 runs cross; gap mean 62.5 +- 37.3 epochs; MAE 24 for T_NC = T_cross + 62",
}


def _g(res: dict, exp: str, **key: Any) -> dict[str, Any] | None:
    g = res["experiments"][exp].groups
    sel = g
    for k, v in key.items():
        sel = sel[sel[k] == v]
    return sel.iloc[0].to_dict() if len(sel) == 1 else None


def _tnc(g: dict | None) -> str:
    if g is None:
        return "n/a"
    if not g["n_collapsed"]:
        return f"never (min nc1 {g['min_nc1_mean']:.3f})" if g.get("min_nc1_mean") is not None else "never"
    return f"{g['t_nc_mean']:.0f}"


def _fn(g: dict | None, ci: bool = False) -> str:
    if g is None or g["fn_mean"] is None:
        return "n/a"
    s = f"{g['fn_mean']:.3f} +- {g['fn_sd']:.3f}, CV {100 * g['fn_cv']:.1f} %"
    if ci:
        s += f", 95 % CI [{g['fn_ci_low']:.3f}, {g['fn_ci_high']:.3f}]"
    return s + f" (N = {g['n_collapsed']})"


def rupa2026_headline(res: dict) -> list[dict[str, Any]]:
    """The README's table, recomputed: one row per quantity, ours next to the paper's."""
    rows = []
    P = RUPA2026_PAPER
    mm, mr = _g(res, "grid", dataset="mnist", model="mlp"), _g(res, "grid", dataset="mnist", model="resnet20")
    cm, cr = _g(res, "grid", dataset="cifar10", model="mlp"), _g(res, "grid", dataset="cifar10", model="resnet20")
    rows.append(("fn*, MNIST / MLP-5, 12 runs", _fn(mm, ci=True), P["fn_mnist_mlp"]))
    rows.append(("fn*, MNIST / ResNet-20 (3 runs)", _fn(mr), P["fn_mnist_resnet"]))
    rows.append(("fn*, CIFAR-10 / MLP-5 (relaxed, 3 runs)", _fn(cm) + f", threshold {cm['threshold'] if cm else ''}",
                 P["fn_cifar_mlp"]))
    tn = res["experiments"]["grid"].runs
    tn = tn[(tn["dataset"] == "cifar10") & (tn["model"] == "resnet20")]["t_nc"]
    tns = " / ".join(str(int(t)) for t in tn.dropna())
    rows.append(("fn*, CIFAR-10 / ResNet-20 (3 runs)", _fn(cr) + f" (T_NC {tns})", P["fn_cifar_resnet"]))
    eff = res["experiments"]["grid"].effects.get("architecture", [])
    e = {x["dataset"]: x["effect_pct"] for x in eff}
    rows.append(("architecture effect on fn* (MLP-5 -> ResNet-20)",
                 f"MNIST {e.get('mnist', float('nan')):+.0f} %, CIFAR-10 {e.get('cifar10', float('nan')):+.0f} %",
                 P["arch_effect"]))
    kw = res["experiments"]["grid"].across.get("kruskal_fn", {})
    if kw.get("H") is not None:
        rows.append((f"Kruskal-Wallis across the four pairs (n = {kw['n']})",
                     f"H = {kw['H']:.2f}, df {kw['df']}, p = {kw['p']:.4f}, eta^2_H = {kw['eta2_H']:.2f} "
                     f"(the paper's 'epsilon^2'; H/(n-1) = {kw['epsilon2']:.2f})", P["kruskal"]))
    d = [_tnc(_g(res, "depth", depth=x)) for x in (2, 3, 5, 7)]
    rows.append(("depth 2 / 3 / 5 / 7 T_NC (2, 3 relaxed, ext runs)", " / ".join(d) + " epochs", P["depth"]))
    a = [_tnc(_g(res, "activation", activation=x)) for x in ("relu", "tanh", "gelu")]
    gl = _g(res, "activation", activation="gelu")
    rows.append(("activation T_NC: ReLU / Tanh (relaxed) / GELU (relaxed, seeds 1-4)",
                 " / ".join(a) + (f" (GELU seeds {gl['seeds']})" if gl else ""), P["activation"]))
    w = [_tnc(_g(res, "weight_decay", weight_decay=x)) for x in (1e-5, 5e-5, 1e-4, 5e-4)]
    rows.append(("weight decay 1e-5 / 5e-5 / 1e-4 / 5e-4", "T_NC " + " / ".join(w), P["weight_decay"]))
    ws = [_g(res, "width", width=x) for x in (128, 256, 512, 1024)]
    rows.append(("width 128 / 256 / 512 / 1024",
                 "T_NC " + " / ".join(_tnc(g) for g in ws) + "; fn* " +
                 " / ".join(f"{g['fn_mean']:.3f}" if g else "n/a" for g in ws), P["width"]))
    lead = res["experiments"]["width"].lead.get("summary", {})
    if lead:
        rows.append(("width-sweep lead (forecaster's; in-sample, from the logs present)",
                     f"{lead['n_cross']} of {lead['n_with_trajectory']} runs with a per-epoch log cross "
                     f"({lead['n_collapsed'] - lead['n_with_trajectory']} of {lead['n_collapsed']} have none "
                     f"here); gap mean {_opt(lead['lead_mean'])} +- {_opt(lead['lead_sd'])} epochs",
                     P["width_lead"]))
    return [{"quantity": q, "ours": o, "paper": p} for q, o, p in rows]


def _opt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


RUPA2026 = Preset(
    name="rupa2026",
    description="Rupa 2026 (arXiv 2604.00230) released logs, ../shared/reference/rupa2026_logs",
    files=_rupa_files(),
    table_rows=_rupa_table_rows(),
    experiments=_RUPA_EXPERIMENTS,
    checks=_RUPA_CHECKS,
    headline=rupa2026_headline,
    # prediction_analysis.csv: the width-sweep fn crossings (README "Format"); the lead numbers belong
    # to the forecaster, but the crossing epochs check this analysis's in-sample lead computation.
    lead_checks=[LeadCheck("prediction_analysis.csv", "width", {"width": "width", "seed": "seed"})],
)

PRESET = RUPA2026
