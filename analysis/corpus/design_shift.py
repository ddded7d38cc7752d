"""Write ``search_spaces/corpus_shift.yaml``: the corpus extension that varies what the first corpus
held fixed, so the forecaster can be judged (and calibrated) across the shifts a user's study brings.

The first corpus (``design.py``) trains every run under one protocol: Adam with coupled L2, a cosine
schedule, batch 64, 30 CE + 400 MSE epochs, 5,000 / 4,000 training images. This extension draws one
run per configuration (seed varies with the configuration), each factor balanced within its
optimiser family (a Latin-hypercube-like design, as ``design.py``):

* the **optimiser**: Adam (coupled L2, the paper's), SGD with Nesterov momentum 0.9, AdamW
  (decoupled weight decay), each over its own learning-rate and weight-decay ranges;
* the **schedule**: cosine per phase, or a constant learning rate;
* the **budget**: MSE phases of 170-770 epochs after CE phases of 20, 30 or 50 epochs (total 190-820);
* the **batch size**: 32, 64, 128, 256;
* the **activation**: ReLU, tanh, GELU, SiLU, leaky ReLU;
* the **training-set size**: 2,000 / 3,500 / 5,000 MNIST images, 2,000 / 4,000 / 8,000 Fashion-MNIST;
* depth 3-7 and width 64-512 as before.

A draw whose estimated cost (samples x parameters x epochs) is above ``MAX_COST`` is redrawn from the
same generator, so no single run takes more than about ten minutes on one core.

    .venv/bin/python analysis/corpus/design_shift.py      # rewrites search_spaces/corpus_shift.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from design import corpus_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "search_spaces" / "corpus_shift.yaml"

SEED = 2027
#: configurations per optimiser family
FAMILIES = {
    "adam": {"n": 44, "lr": (3e-4, 1e-3, 3e-3), "weight_decay": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)},
    "sgd": {"n": 16, "lr": (5e-3, 1e-2, 2e-2), "weight_decay": (1e-4, 5e-4, 1e-3)},
    "adamw": {"n": 16, "lr": (3e-4, 1e-3, 3e-3), "weight_decay": (1e-2, 5e-2, 2e-1)},
}
DATA = (("mnist5k", 2000), ("mnist5k", 3500), ("mnist5k", None),
        ("fashion_mnist", 2000), ("fashion_mnist", 4000), ("fashion_mnist", 8000))
MSE_EPOCHS = (170, 270, 370, 570, 770)
CE_EPOCHS = (20, 30, 50)
BATCHES = (32, 64, 128, 256)
ACTIVATIONS = ("silu", "leaky_relu", "relu", "tanh", "gelu", "silu", "leaky_relu")  # the new two twice
SCHEDULES = ("cosine", "cosine", "cosine", "constant")
DEPTHS = (3, 4, 5, 6, 7)
WIDTHS = (64, 128, 256, 512)
#: estimated CPU seconds of one run (see ``cost``) above which a draw is redrawn
MAX_COST = 600.0


def _balanced(levels, n: int, rng: np.random.Generator) -> list:
    reps = [levels[i % len(levels)] for i in range(n)]
    rng.shuffle(reps)
    return reps


def n_params(depth: int, width: int, inputs: int = 784, classes: int = 10) -> int:
    return inputs * width + (depth - 1) * width * width + width * classes


def cost(c: dict) -> float:
    """Estimated CPU seconds on one core: about 0.55 s per epoch for an MLP-5 w256 on 5,000 images at
    batch 64 (README, environment facts), scaled by samples x parameters, with small batches slower."""
    n = c.get("data.n_train") or (5000 if c["data.name"] == "mnist5k" else 4000)
    per_epoch = 0.55 * (n / 5000) * (n_params(c["model.depth"], c["model.width"]) / n_params(5, 256)) \
        * (64 / c["batch_size"]) ** 0.4
    return per_epoch * (c["ce_epochs"] + c["mse_epochs"]) + 0.02 * (c["ce_epochs"] + c["mse_epochs"])


def draw_configs(seed: int = SEED) -> list[dict]:
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for opt, fam in FAMILIES.items():
        n = fam["n"]
        while True:
            cols = {"data": _balanced(DATA, n, rng), "optimizer.lr": _balanced(fam["lr"], n, rng),
                    "optimizer.weight_decay": _balanced(fam["weight_decay"], n, rng),
                    "optimizer.schedule": _balanced(SCHEDULES, n, rng), "mse_epochs": _balanced(MSE_EPOCHS, n, rng),
                    "ce_epochs": _balanced(CE_EPOCHS, n, rng), "batch_size": _balanced(BATCHES, n, rng),
                    "model.activation": _balanced(ACTIVATIONS, n, rng), "model.depth": _balanced(DEPTHS, n, rng),
                    "model.width": _balanced(WIDTHS, n, rng)}
            fam_out = []
            for i in range(n):
                (ds, n_train) = cols["data"][i]
                c = {"data.name": ds, "data.n_train": n_train, "optimizer.name": opt,
                     **{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in cols.items() if k != "data"}}
                if ds == "fashion_mnist" and c["model.width"] == 64:
                    c["model.width"] = 128  # narrower nets do not reach the terminal phase on Fashion-MNIST
                fam_out.append(c)
            if max(cost(c) for c in fam_out) <= MAX_COST:
                break
        out += fam_out
    for i, c in enumerate(out):
        c["seed"] = i % 3
        c["label"] = label(c)
    labels = [c["label"] for c in out]
    assert len(set(labels)) == len(labels), "labels must be unique"
    return out


def label(c: dict) -> str:
    ds = "mnist" if c["data.name"] == "mnist5k" else "fashion"
    n = c["data.n_train"] or 5000
    sched = "" if c["optimizer.schedule"] == "cosine" else "-const"
    return (f"x{ds}{n // 100}-{c['optimizer.name']}{sched}-d{c['model.depth']}-w{c['model.width']}-"
            f"{c['model.activation']}-lr{c['optimizer.lr']:g}-wd{c['optimizer.weight_decay']:g}-"
            f"b{c['batch_size']}-e{c['ce_epochs']}+{c['mse_epochs']}")


def study(seed: int = SEED) -> dict:
    configs = []
    for c in draw_configs(seed):
        d = {k: v for k, v in c.items() if v is not None}
        if c["data.name"] == "fashion_mnist":
            d["data.n_test"] = 1000
        configs.append(d)
    return corpus_study(
        "corpus_shift", "ncstudy's trajectory corpus, second part: MLPs under the shifts a study brings (optimiser, "
        "schedule, budget, batch size, activation, training-set size); generated by analysis/corpus/design_shift.py",
        {"config": {"grid": configs}}, optimizer={"momentum": 0.9}, threads=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=SEED)
    a = ap.parse_args()
    s = study(a.seed)
    grid = s["space"]["config"]["grid"]
    total = sum(cost({**{"data.n_train": None}, **c}) for c in grid)
    head = ("# GENERATED by analysis/corpus/design_shift.py (seed %d): do not edit by hand.\n"
            "# %d configurations, one seed each; about %.1f CPU-hours at full budgets.\n"
            "# Run: ncstudy run search_spaces/corpus_shift.yaml (see analysis/corpus/README.md)\n"
            % (a.seed, len(grid), total / 3600))
    a.out.write_text(head + yaml.safe_dump(s, sort_keys=False, width=120))
    print(f"wrote {a.out}: {len(grid)} configurations, ~{total / 3600:.1f} CPU-hours at full budgets")


if __name__ == "__main__":
    main()
