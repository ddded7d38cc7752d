"""Benchmark 1: ncstudy's Trainer against a paper-style loop and a bare loop, per epoch.

MLP-5 (width 512, ReLU), Adam lr 1e-3 with coupled weight decay 1e-4 (the paper's MLP setting),
cross-entropy, batch 256, on 10,000 MNIST-shaped synthetic samples (1 x 28 x 28, 10 classes;
2,000 test samples, the paper's 60k:10k train:test proportion). One torch thread and one BLAS
thread everywhere (numpy's OpenBLAS included, through threadpoolctl), so the implementations use
the same resources as a one-CPU trial.

Implementations:

* ``ncstudy``: :class:`ncstudy.train.Trainer`, timed through the two calls its ``run`` loop makes:
  ``_train_epoch()`` for an epoch and ``evaluate()`` for an evaluation (train accuracy, test
  accuracy and the full NC metrics in one pass over the training set; the trainer is terminal,
  so the metrics are computed).
* ``paper``: the loop as a paper's code writes it: ``DataLoader`` over a ``TensorDataset``
  (shuffled, batch 256), per-batch ``.to(device)``, running loss and accuracy by ``.item()``;
  every 10 epochs train accuracy, test accuracy, then a third pass that collects the penultimate
  features with a forward hook and computes nc1, nc2, nc3 and fn from full feature matrices
  (float32 torch, the d x d Sigma_W and Sigma_B). It computes four metrics where ncstudy computes
  ten, so the comparison favours it.
* ``bare``: a minimal loop over in-memory tensors (random permutation, index, step) with torch's
  default ``Adam``; no evaluation, no metrics.
* ``bare_same_opt``: the same bare loop with the optimiser the Trainer builds
  (``ncstudy.train.make_optimizer``), so ``ncstudy / bare_same_opt`` is the cost of everything the
  Trainer adds to a training step (evaluation, metrics, bookkeeping) and nothing else.

The paper's cadence is one evaluation per 10 epochs, so the amortised time per epoch is
``epoch + evaluation / 10``. Per repetition every piece runs once, in an order that rotates;
ratios are medians of per-repetition ratios.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import interleave, machine, median, paired_ratios, spread, write_json  # noqa: E402
from ncstudy.config import TrainConfig  # noqa: E402
from ncstudy.data import Dataset, make_synthetic  # noqa: E402
from ncstudy.models import build_model  # noqa: E402
from ncstudy.train import FUSED_OPTIMIZER_DEVICES, Trainer, make_optimizer  # noqa: E402

EVAL_EVERY = 10
TARGET_VS_PAPER = 2.0  # ncstudy at least this many times faster than the paper-style loop
TARGET_VS_BARE = 1.15  # ncstudy at most this many times the bare loop


def blas_one_thread():
    """Limit numpy's BLAS (used by the metrics engine on CPU) to one thread; a context manager."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def make_data(n_train: int, n_test: int, seed: int = 0) -> Dataset:
    x_tr, y_tr, x_te, y_te = make_synthetic(10, n_train, n_test, (1, 28, 28), separation=4.0, seed=seed)
    return Dataset(x_tr, y_tr, x_te, y_te, 10, "synthetic-mnist-shaped", (1, 28, 28))


def train_config(batch: int, seed: int = 0, device: str = "cpu") -> TrainConfig:
    return TrainConfig.model_validate({
        "seed": seed, "device": device, "threads": 1,
        "data": {"name": "synthetic", "shape": [1, 28, 28], "num_classes": 10},
        "model": {"name": "mlp", "depth": 5, "width": 512, "activation": "relu"},
        "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine"},
        "ce_epochs": 1000, "mse_epochs": 0, "batch_size": batch,
        # Terminal from the first evaluation: every timed evaluation computes the NC metrics.
        "eval": {"nc_every": EVAL_EVERY, "terminal_acc": 1e-9},
    })


# ---- ncstudy ------------------------------------------------------------------------------
class NcstudyImpl:
    def __init__(self, cfg: TrainConfig, data: Dataset) -> None:
        self.trainer = Trainer(cfg, data)
        self.loss = math.nan

    def warm(self) -> None:
        self.trainer.evaluate(self.loss)  # sets terminal (terminal_acc ~ 0), as run() would
        assert self.trainer.terminal

    def epoch(self) -> None:
        self.loss, _ = self.trainer._train_epoch()
        self.trainer.epoch += 1

    def evaluation(self) -> dict[str, Any]:
        return self.trainer.evaluate(self.loss)


# ---- paper-style --------------------------------------------------------------------------
class PaperImpl:
    """Written the way a paper's training script is usually written."""

    def __init__(self, cfg: TrainConfig, data: Dataset) -> None:
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        self.K = data.num_classes
        self.model = build_model(cfg.model, data.input_shape, data.num_classes).to(self.device)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optimizer.lr,
                                          weight_decay=cfg.optimizer.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.ce_epochs)
        train_ds = TensorDataset(data.x_train, data.y_train)
        self.train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True)
        self.train_eval_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=False)
        self.test_loader = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=cfg.batch_size,
                                      shuffle=False)
        self.history: list[dict[str, float]] = []

    def warm(self) -> None:
        self.model.train()
        for i, (x, y) in enumerate(self.train_loader):
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            self.criterion(self.model(x), y).backward()
            self.optimizer.step()
            if i == 2:
                break

    def epoch(self) -> None:
        self.model.train()
        running_loss, correct, total = 0.0, 0, 0
        for x, y in self.train_loader:
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            out = self.model(x)
            loss = self.criterion(out, y)
            loss.backward()
            self.optimizer.step()
            running_loss += loss.item() * x.size(0)
            correct += (out.argmax(1) == y).sum().item()
            total += y.size(0)
        self.scheduler.step()
        self.train_loss, self.running_acc = running_loss / total, correct / total

    def accuracy(self, loader) -> float:
        self.model.eval()
        correct, total = 0, 0
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(self.device), y.to(self.device)
                correct += (self.model(x).argmax(1) == y).sum().item()
                total += y.size(0)
        return correct / total

    def nc_metrics(self) -> dict[str, float]:
        """nc1, nc2, nc3, fn from the full feature matrix H (N x d), features by a forward hook."""
        self.model.eval()
        feats, labels = [], []
        hook = self.model.head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
        with torch.no_grad():
            for x, y in self.train_eval_loader:
                self.model(x.to(self.device))
                labels.append(y.to(self.device))
        hook.remove()
        H, Y = torch.cat(feats), torch.cat(labels)
        N, d = H.shape
        K = self.K
        mu_G = H.mean(0)
        means = torch.stack([H[Y == c].mean(0) for c in range(K)])
        Sw = torch.zeros(d, d, device=self.device)
        for c in range(K):
            Z = H[Y == c] - means[c]
            Sw += Z.T @ Z
        Sw /= N
        M = means - mu_G
        Sb = M.T @ M / K
        nc1 = (torch.trace(Sw) / torch.trace(Sb)).item()
        Mn = F.normalize(M, dim=1)
        cos = Mn @ Mn.T
        off = ~torch.eye(K, dtype=torch.bool, device=self.device)
        nc2 = (cos[off] + 1.0 / (K - 1)).abs().mean().item()
        W = self.model.head.weight.detach()
        nc3 = (1.0 - F.cosine_similarity(W, M, dim=1).mean()).item()
        fn = H.norm(dim=1).mean().item()
        return {"nc1": nc1, "nc2": nc2, "nc3": nc3, "feat_norm": fn}

    def evaluation(self) -> dict[str, float]:
        rec = {"train": self.accuracy(self.train_eval_loader), "test": self.accuracy(self.test_loader)}
        rec.update(self.nc_metrics())
        self.history.append(rec)
        return rec


# ---- bare ---------------------------------------------------------------------------------
class BareImpl:
    def __init__(self, cfg: TrainConfig, data: Dataset, same_optimizer: bool = False) -> None:
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        self.model = build_model(cfg.model, data.input_shape, data.num_classes).to(self.device)
        fused = self.device.type in FUSED_OPTIMIZER_DEVICES  # as the Trainer decides
        self.opt = (make_optimizer(self.model.parameters(), cfg.optimizer, fused=fused) if same_optimizer else
                    torch.optim.Adam(self.model.parameters(), lr=cfg.optimizer.lr,
                                     weight_decay=cfg.optimizer.weight_decay))
        self.x, self.y = data.x_train.to(self.device), data.y_train.to(self.device)
        self.bs = cfg.batch_size

    def warm(self) -> None:
        for _ in range(3):
            self.step(torch.arange(self.bs, device=self.device))

    def step(self, idx: torch.Tensor) -> None:
        loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def epoch(self) -> None:
        perm = torch.randperm(self.x.shape[0], device=self.device)
        for i in range(0, perm.numel(), self.bs):
            self.step(perm[i:i + self.bs])


# ---- main ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=2_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=4)
    args = ap.parse_args([] if argv is None else argv)

    torch.set_num_threads(1)
    data = make_data(args.n_train, args.n_test)
    cfg = train_config(args.batch)
    with blas_one_thread():
        impls = {"ncstudy": NcstudyImpl(cfg, data), "paper": PaperImpl(cfg, data),
                 "bare": BareImpl(cfg, data), "bare_same_opt": BareImpl(cfg, data, same_optimizer=True)}
        for impl in impls.values():
            impl.warm()
        fns = {"ncstudy_epoch": impls["ncstudy"].epoch, "ncstudy_eval": impls["ncstudy"].evaluation,
               "paper_epoch": impls["paper"].epoch, "paper_eval": impls["paper"].evaluation,
               "bare_epoch": impls["bare"].epoch, "bare_same_opt_epoch": impls["bare_same_opt"].epoch}
        t = interleave(fns, args.reps)

    figures = {clock: _figures(t[clock]) for clock in ("cpu", "wall")}
    rec = impls["ncstudy"].trainer.records[-1]
    out: dict[str, Any] = {
        "benchmark": "trainer_epoch",
        "config": {"model": "mlp depth 5 width 512 relu", "n_train": args.n_train, "n_test": args.n_test,
                   "batch": args.batch, "eval_every": EVAL_EVERY, "reps": args.reps,
                   "eval_batch_ncstudy": cfg.eval.batch_size, "threads": 1, "device": "cpu",
                   **machine()},
        "clock": "cpu (process CPU time; wall-clock figures under 'wall')",
        "seconds": t,
        "amortised_epoch_s_median": figures["cpu"]["amortised_median"],
        "ratios": figures["cpu"]["ratios"],
        "ratio_spread": figures["cpu"]["spread"],
        "wall": {k: figures["wall"][k] for k in ("amortised_median", "ratios", "spread")},
        "targets": {"paper_over_ncstudy_ge": TARGET_VS_PAPER, "ncstudy_over_bare_le": TARGET_VS_BARE},
        "met": {"vs_paper": figures["cpu"]["ratios"]["paper_over_ncstudy"] >= TARGET_VS_PAPER,
                "vs_bare": figures["cpu"]["ratios"]["ncstudy_over_bare"] <= TARGET_VS_BARE},
        "sanity": {"ncstudy_metrics_computed": math.isfinite(rec["nc1"]),
                   "paper_metrics_computed": math.isfinite(impls["paper"].history[-1]["nc1"]),
                   "ncstudy_nc1_last": rec["nc1"], "paper_nc1_last": impls["paper"].history[-1]["nc1"]},
    }
    write_json("trainer_epoch", out)
    if argv is not None:
        print_summary(out)
    return out


def _figures(t: dict[str, list[float]]) -> dict[str, Any]:
    amort = {
        "ncstudy": [e + v / EVAL_EVERY for e, v in zip(t["ncstudy_epoch"], t["ncstudy_eval"])],
        "paper": [e + v / EVAL_EVERY for e, v in zip(t["paper_epoch"], t["paper_eval"])],
        "bare": t["bare_epoch"],
        "bare_same_opt": t["bare_same_opt_epoch"],
    }
    pairs = {
        "paper_over_ncstudy": paired_ratios(amort["paper"], amort["ncstudy"]),
        "ncstudy_over_bare": paired_ratios(amort["ncstudy"], amort["bare"]),
        "ncstudy_over_bare_same_opt": paired_ratios(amort["ncstudy"], amort["bare_same_opt"]),
        "ncstudy_train_epoch_over_bare_epoch": paired_ratios(t["ncstudy_epoch"], t["bare_epoch"]),
        "paper_train_epoch_over_ncstudy_train_epoch": paired_ratios(t["paper_epoch"], t["ncstudy_epoch"]),
        "paper_eval_over_ncstudy_eval": paired_ratios(t["paper_eval"], t["ncstudy_eval"]),
        "ncstudy_eval_share_of_amortised_epoch": paired_ratios(
            [v / EVAL_EVERY for v in t["ncstudy_eval"]], amort["ncstudy"]),
    }
    return {"amortised": amort, "amortised_median": {k: median(v) for k, v in amort.items()},
            "ratios": {k: median(v) for k, v in pairs.items()},
            "spread": {k: spread(v) for k, v in pairs.items()}}


def print_summary(r: dict[str, Any]) -> None:
    m, q = r["amortised_epoch_s_median"], r["ratios"]
    print(f"trainer epoch (amortised, eval every {EVAL_EVERY}): ncstudy {m['ncstudy']:.3f}s, paper "
          f"{m['paper']:.3f}s, bare {m['bare']:.3f}s, bare+same optimiser {m['bare_same_opt']:.3f}s")
    print(f"  paper/ncstudy {q['paper_over_ncstudy']:.2f}x (target >= {TARGET_VS_PAPER}), ncstudy/bare "
          f"{q['ncstudy_over_bare']:.3f}x (target <= {TARGET_VS_BARE}), ncstudy/bare+same optimiser "
          f"{q['ncstudy_over_bare_same_opt']:.3f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
