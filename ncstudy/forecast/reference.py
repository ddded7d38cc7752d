"""Run metadata of the reference logs (``../shared/reference/rupa2026_logs``) from file names,
for grouping in replay. Mirrors the table "Which file is which experiment" of the reference
README; only what the forecaster needs (model family, dataset, depth/width/activation/wd cell,
seed, protocol)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_SINGLE_PHASE = {"baseline", "mnist_baseline", "wd0p0005", "wd0p001", "wd0p002", "ce_only_ablation"}


def _wd(token: str) -> float:
    return float(token.replace("p", "."))


def reference_meta(path: str | Path) -> dict[str, Any]:
    """Metadata of a reference log from its file name. Unknown names give model/dataset None."""
    name = Path(path).stem
    meta: dict[str, Any] = {"file": Path(path).name, "run_id": name, "model": None, "dataset": None,
                            "depth": None, "width": None, "activation": None, "weight_decay": None,
                            "seed": None, "protocol": "two-phase", "cell": None}
    m = re.search(r"_s(\d+)(?:_ext)?$", name)
    if m:
        meta["seed"] = int(m.group(1))
    mlp5 = {"model": "mlp", "dataset": "mnist", "depth": 5, "width": 512, "activation": "relu",
            "weight_decay": 1e-4}
    if name in _SINGLE_PHASE:
        meta.update(mlp5, protocol="single-phase", cell="exploratory")
        if name.startswith("wd"):
            meta["weight_decay"] = _wd(name[2:])
    elif name == "mnist_twophase" or re.fullmatch(r"depth5_s\d+", name):
        meta.update(mlp5, cell="baseline")
        meta["seed"] = 0 if name == "mnist_twophase" else meta["seed"]
    elif m2 := re.fullmatch(r"depth(\d+)_s\d+(_ext)?", name):
        meta.update(mlp5, depth=int(m2.group(1)), cell=f"depth{m2.group(1)}{'_ext' if m2.group(2) else ''}")
    elif m2 := re.fullmatch(r"width(\d+)_s\d+", name):
        meta.update(mlp5, width=int(m2.group(1)), cell=f"width{m2.group(1)}")
    elif m2 := re.fullmatch(r"wd([0-9pe.-]+)_s\d+", name):
        meta.update(mlp5, weight_decay=_wd(m2.group(1)), cell=f"wd{m2.group(1)}")
    elif m2 := re.fullmatch(r"(?:act(GELU|Tanh)|(gelu))_s\d+", name):
        act = (m2.group(1) or m2.group(2)).lower()
        meta.update(mlp5, activation=act, cell=f"act_{act}")
    elif re.fullmatch(r"mlp5_cifar10_s\d+", name):
        meta.update(mlp5, dataset="cifar10", cell="mlp5_cifar10")
    elif re.fullmatch(r"cifar10_s\d+", name):
        meta.update(model="resnet20", dataset="cifar10", cell="resnet20_cifar10")
    elif re.fullmatch(r"resnet20_mnist_s\d+", name):
        meta.update(model="resnet20", dataset="mnist", cell="resnet20_mnist")
    return meta


def is_mnist_mlp5(meta: dict[str, Any]) -> bool:
    """Two-phase MNIST MLP runs of depth 5 (any width, activation or weight decay)."""
    return (meta.get("model") == "mlp" and meta.get("dataset") == "mnist" and meta.get("depth") == 5
            and meta.get("protocol") == "two-phase")
