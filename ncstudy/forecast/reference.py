"""What each file of the author's released logs (``../shared/reference/rupa2026_logs``) is.

The one place that maps a reference file name to its run (the reference README's table "Which
file is which experiment" and its "Definitions"): model, dataset, depth, width, activation,
weight decay, learning rate, seed, protocol and variant. Replay groups runs with it, and
``ncstudy analyze``'s ``rupa2026`` preset builds its runs from it, adding only analysis choices
(threshold, cell, experiments).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# README "Definitions": MLPs Adam lr 1e-3, weight decay 1e-4, width 512, depth 5, ReLU, MNIST;
# ResNet-20 SGD lr 0.1, weight decay 1e-3.
MLP5_MNIST: dict[str, Any] = {"model": "mlp", "dataset": "mnist", "depth": 5, "width": 512, "activation": "relu",
                              "weight_decay": 1e-4, "lr": 1e-3}
RESNET20: dict[str, Any] = {"model": "resnet20", "depth": None, "width": None, "activation": None,
                            "weight_decay": 1e-3, "lr": 0.1}
RUN_KEYS = ("model", "dataset", "depth", "width", "activation", "weight_decay", "lr", "seed")

# README: "ce_only_ablation.csv, baseline.csv, mnist_baseline.csv, wd0p001.csv, wd0p002.csv,
# wd0p0005.csv | single-phase and early exploratory runs".
_SINGLE_PHASE = {"baseline", "mnist_baseline", "wd0p0005", "wd0p001", "wd0p002", "ce_only_ablation"}


def _wd(token: str) -> float:
    return float(token.replace("p", "."))


def reference_meta(path: str | Path) -> dict[str, Any]:
    """Metadata of a reference log from its file name. Unknown names give model/dataset None.

    ``cell`` names the configuration the file belongs to; ``variant`` is ``ext`` for the
    extended depth-2/3 runs, ``no-stop`` for the 400-epoch depth-2/3 runs without early stop
    (README file table), else None.
    """
    name = Path(path).stem
    meta: dict[str, Any] = {"file": Path(path).name, "run_id": name, "model": None, "dataset": None,
                            "depth": None, "width": None, "activation": None, "weight_decay": None, "lr": None,
                            "seed": None, "protocol": "two-phase", "cell": None, "variant": None}
    m = re.search(r"_s(\d+)(?:_ext)?$", name)
    if m:
        meta["seed"] = int(m.group(1))
    if name in _SINGLE_PHASE:
        meta.update(MLP5_MNIST, protocol="single-phase", cell="exploratory")
        if name.startswith("wd"):
            meta["weight_decay"] = _wd(name[2:])
    elif name == "mnist_twophase" or re.fullmatch(r"depth5_s\d+", name):  # mnist_twophase = depth 5, seed 0
        meta.update(MLP5_MNIST, cell="baseline")
        meta["seed"] = 0 if name == "mnist_twophase" else meta["seed"]
    elif m2 := re.fullmatch(r"depth(\d+)_s\d+(_ext)?", name):
        depth = int(m2.group(1))
        variant = "ext" if m2.group(2) else ("no-stop" if depth in (2, 3) else None)
        meta.update(MLP5_MNIST, depth=depth, variant=variant, cell=f"depth{depth}{'_ext' if m2.group(2) else ''}")
    elif m2 := re.fullmatch(r"width(\d+)_s\d+", name):
        meta.update(MLP5_MNIST, width=int(m2.group(1)), cell=f"width{m2.group(1)}")
    elif m2 := re.fullmatch(r"wd([0-9pe.-]+)_s\d+", name):
        meta.update(MLP5_MNIST, weight_decay=_wd(m2.group(1)), cell=f"wd{m2.group(1)}")
    elif m2 := re.fullmatch(r"(?:act(GELU|Tanh)|(gelu))_s\d+", name):
        act = (m2.group(1) or m2.group(2)).lower()
        meta.update(MLP5_MNIST, activation=act, cell=f"act_{act}")
    elif re.fullmatch(r"mlp5_cifar10_s\d+", name):
        meta.update(MLP5_MNIST, dataset="cifar10", cell="mlp5_cifar10")
    elif re.fullmatch(r"cifar10_s\d+", name):
        meta.update(RESNET20, dataset="cifar10", cell="resnet20_cifar10")
    elif re.fullmatch(r"resnet20_mnist_s\d+", name):
        meta.update(RESNET20, dataset="mnist", cell="resnet20_mnist")
    return meta


def run_attrs(path: str | Path) -> dict[str, Any]:
    """A reference file's run attributes (``RUN_KEYS``, plus ``variant`` when it has one)."""
    meta = reference_meta(path)
    if meta["model"] is None:
        raise ValueError(f"{Path(path).name}: not a file of the reference logs")
    attrs = {k: meta[k] for k in RUN_KEYS}
    if meta["variant"]:
        attrs["variant"] = meta["variant"]
    return attrs


def is_mnist_mlp5(meta: dict[str, Any]) -> bool:
    """Two-phase MNIST MLP runs of depth 5 (any width, activation or weight decay)."""
    return (meta.get("model") == "mlp" and meta.get("dataset") == "mnist" and meta.get("depth") == 5
            and meta.get("protocol") == "two-phase")
