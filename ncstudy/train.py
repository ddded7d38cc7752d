"""The paper's two-phase trainer: cross-entropy, then MSE on one-hot targets, NC metrics as it goes.

The trainer knows nothing of Ray or MLflow: it calls ``on_eval(record, trainer)`` after each
evaluation, and whoever runs it (the CLI, a Tune trainable, a user's script) decides what to do
with the record — report it, checkpoint ``trainer.state_dict()``, or ask to stop.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncstudy.config import OptimizerConfig, TrainConfig
from ncstudy.data import Dataset, load_dataset
from ncstudy.metrics import NCAccumulator
from ncstudy.models import build_model
from ncstudy.onset import Onset, OnsetRule, OnsetTracker
from ncstudy.records import CLASSIFIER_WEIGHT_NORM, GRAD_NORM, NC_KEYS, WEIGHT_NORM

NAN = float("nan")
# Optimisation signals of every evaluation (forecasters and the literature use them): the mean over
# the epoch's steps of the total gradient L2 norm, and the L2 norm of all parameters and of the
# classifier's weight matrix at the evaluation.
OPT_KEYS = (GRAD_NORM, WEIGHT_NORM, CLASSIFIER_WEIGHT_NORM)

# A run has diverged when its training loss is not finite, exceeds DIVERGENCE_CEILING, or exceeds
# both DIVERGENCE_FACTOR times the loss of the phase's first epoch and DIVERGENCE_FLOOR (a loss of
# 3e20 at lr 1e3 is finite but no run comes back from it; cross-entropy starts near log K, MSE on
# one-hot targets below 1).
DIVERGENCE_FACTOR, DIVERGENCE_FLOOR, DIVERGENCE_CEILING = 1e4, 1e3, 1e6

# Callback: returns a stop reason (e.g. "forecast") to end the run after this evaluation.
EvalCallback = Callable[[dict[str, Any], "Trainer"], "str | None"]


@dataclass
class TrainResult:
    status: str  # "completed" | "diverged"
    stop_reason: str  # "onset" | "budget" | "diverged" | a callback's reason
    epochs_run: int
    onset: Onset
    records: list[dict[str, Any]] = field(repr=False)

    @property
    def final(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: '{name}' requested but CUDA is not available (use 'auto' or 'cpu')")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# Devices with fused optimizer kernels in torch: one kernel per step over all parameters instead of
# several passes over each. Same update rule (float64 runs agree to 1e-15); float32 runs differ in
# rounding only. Measured: the MLP-5 CPU epoch of benchmarks/trainer_epoch.py is 1.12x faster
# with it (docs/performance.md).
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def make_optimizer(params, cfg: OptimizerConfig, fused: bool = False) -> torch.optim.Optimizer:
    kw: dict[str, Any] = {"fused": True} if fused else {}
    if cfg.name == "adam":  # weight_decay here is coupled L2, the paper's MLP setting
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, **kw)


def make_schedule(opt: torch.optim.Optimizer, cfg: OptimizerConfig, phase: int, phase_epochs: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(phase_epochs, 1))
    if cfg.schedule == "multistep":
        ms = cfg.milestones_ce if phase == 1 else cfg.milestones_mse
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


class Trainer:
    """One run of the protocol; resumable through ``state_dict``/``load_state_dict``."""

    def __init__(self, cfg: TrainConfig, data: Dataset | None = None) -> None:
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        data = data if data is not None else load_dataset(cfg.data, model=cfg.model.name)
        self.data = data.to(self.device)
        self.model: nn.Module = build_model(cfg.model, data.input_shape, data.num_classes).to(self.device)
        self.num_classes = data.num_classes
        self.onehot = F.one_hot(self.data.y_train, self.num_classes).to(torch.float32)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        self.rule = OnsetRule(cfg.eval.strict_threshold, cfg.eval.relaxed_threshold,
                              cfg.eval.onset_phase2_only)
        self.onset = OnsetTracker(self.rule)
        self.epoch = 0  # last completed epoch
        self.terminal = False
        self.records: list[dict[str, Any]] = []
        self.elapsed = 0.0
        self.status, self.stop_reason = "running", ""
        self.pending_stop: str | None = None
        self._start_phase(1 if cfg.ce_epochs > 0 else 2)

    # ---- protocol -------------------------------------------------------------------------
    def phase_of(self, epoch: int) -> int:
        return 1 if epoch <= self.cfg.ce_epochs else 2

    def _start_phase(self, phase: int) -> None:
        """Fresh optimiser and schedule at each phase, as the paper does."""
        self.phase = phase
        self.phase_first_loss: float | None = None
        n = self.cfg.ce_epochs if phase == 1 else self.cfg.mse_epochs
        self.optimizer = make_optimizer(self.model.parameters(), self.cfg.optimizer,
                                        fused=self.device.type in FUSED_OPTIMIZER_DEVICES)
        self.schedule = make_schedule(self.optimizer, self.cfg.optimizer, phase, n)

    def _intervene(self, alpha: float) -> None:
        layer = getattr(self.model, "last_hidden", None)
        if layer is None:
            raise ValueError("intervention_alpha: the model has no last hidden Linear (MLP only)")
        with torch.no_grad():
            layer.weight.mul_(alpha)
            if layer.bias is not None:
                layer.bias.mul_(alpha)

    def _is_eval_epoch(self, epoch: int) -> bool:
        c = self.cfg
        return epoch % c.eval.nc_every == 0 or epoch == c.ce_epochs or epoch == c.total_epochs

    def _train_epoch(self) -> tuple[float, float]:
        """One epoch; returns the mean training loss and the mean total gradient norm per step."""
        model, opt, d = self.model, self.optimizer, self.data
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        n = d.x_train.shape[0]
        bs = self.cfg.batch_size
        perm = torch.randperm(n, generator=self.shuffle_gen).to(self.device, non_blocking=True)
        total = torch.zeros((), device=self.device)
        grad_total = torch.zeros((), device=self.device)
        steps = 0
        mse = self.phase == 2
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            x = d.x_train[idx]
            logits = model(x)
            if mse:
                loss = F.mse_loss(logits, self.onehot[idx])
            else:
                loss = F.cross_entropy(logits, d.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_total += torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            opt.step()
            total += loss.detach() * idx.numel()
            steps += 1
        self.schedule.step()
        return float(total) / n, float(grad_total) / max(steps, 1)  # one host sync each per epoch

    @torch.inference_mode()
    def _accuracy_pass(self, x: torch.Tensor, y: torch.Tensor, acc: NCAccumulator | None) -> float:
        fwd = self.model.forward_with_features
        bs = self.cfg.eval.batch_size
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for i in range(0, x.shape[0], bs):
            feats, logits = fwd(x[i:i + bs])
            yb = y[i:i + bs]
            correct += (logits.argmax(1) == yb).sum()
            if acc is not None:
                acc.update(feats, yb, logits)
        return int(correct) / x.shape[0]

    @torch.no_grad()
    def _weight_norms(self) -> dict[str, float]:
        params = [p.detach() for p in self.model.parameters()]
        return {"weight_norm": float(torch.nn.utils.get_total_norm(params)),
                "classifier_weight_norm": float(torch.linalg.vector_norm(self.model.head.weight.detach()))}

    def evaluate(self, train_loss: float, grad_norm: float = NAN) -> dict[str, Any]:
        """One pass over the training set gives accuracy and, once terminal, fn and NC metrics."""
        self.model.eval()
        d = self.data
        acc = NCAccumulator(self.num_classes) if self.terminal else None
        train_acc = self._accuracy_pass(d.x_train, d.y_train, acc)
        if not self.terminal and train_acc >= self.cfg.eval.terminal_acc:
            self.terminal = True  # never unset: NC metrics logged from here on
            acc = NCAccumulator(self.num_classes)
            self._accuracy_pass(d.x_train, d.y_train, acc)
        test_acc = self._accuracy_pass(d.x_test, d.y_test, None) if d.x_test.shape[0] else NAN
        rec: dict[str, Any] = {"epoch": self.epoch, "phase": self.phase, "train": train_acc, "test": test_acc}
        if acc is not None:
            with torch.inference_mode():
                m = acc.compute(self.model.head.weight.detach())
            rec.update({k: float(m[k]) for k in NC_KEYS})
        else:
            rec.update({k: NAN for k in NC_KEYS})
        self.onset.update(self.epoch, rec["nc1"], rec["feat_norm"], self.phase)
        rec.update(train_loss=train_loss, grad_norm=grad_norm, **self._weight_norms(),
                   lr=self.optimizer.param_groups[0]["lr"],
                   elapsed_s=self.elapsed, terminal=int(self.terminal),
                   t_nc=float(self.onset.t_strict) if self.onset.t_strict is not None else NAN,
                   fn_star=float(self.onset.fn_strict) if self.onset.fn_strict is not None else NAN)
        self.records.append(rec)
        return rec

    def run(self, on_eval: EvalCallback | None = None) -> TrainResult:
        """Train from the current state to the end of the budget or an earlier stop."""
        cfg = self.cfg
        while self.epoch < cfg.total_epochs:
            t0 = time.perf_counter()
            next_epoch = self.epoch + 1
            if self.phase_of(next_epoch) != self.phase:
                self._start_phase(2)
                if cfg.intervention_alpha is not None:
                    self._intervene(cfg.intervention_alpha)
            loss, grad_norm = self._train_epoch()
            self.epoch = next_epoch
            self.elapsed += time.perf_counter() - t0
            if self.phase_first_loss is None:
                self.phase_first_loss = loss
            if self.diverged(loss):
                self.status, self.stop_reason = "diverged", "diverged"
                rec = {"epoch": self.epoch, "phase": self.phase, "train_loss": loss, "grad_norm": grad_norm,
                       "elapsed_s": self.elapsed}
                self.records.append({**{k: NAN for k in ("train", "test", *NC_KEYS, *OPT_KEYS)}, **rec})
                self.pending_stop = "diverged"
                if on_eval:
                    on_eval(self.records[-1], self)
                break
            if not self._is_eval_epoch(self.epoch):
                continue
            t1 = time.perf_counter()
            rec = self.evaluate(loss, grad_norm)
            self.elapsed += time.perf_counter() - t1
            rec["elapsed_s"] = self.elapsed
            # Known before the callback, so a reporter can mark the final record as final.
            self.pending_stop = self._stop_reason()
            reason = (on_eval(rec, self) if on_eval is not None else None) or self.pending_stop
            if reason:
                self.status, self.stop_reason = "completed", reason
                break
        else:
            self.status, self.stop_reason = "completed", "budget"
        return self.result()

    def diverged(self, loss: float) -> bool:
        """Not finite, or exploded (see :data:`DIVERGENCE_FACTOR`)."""
        if not math.isfinite(loss) or loss > DIVERGENCE_CEILING:
            return True
        first = self.phase_first_loss if self.phase_first_loss is not None else loss
        return loss > DIVERGENCE_FLOOR and loss > DIVERGENCE_FACTOR * first

    def _stop_reason(self) -> str | None:
        if self.cfg.eval.stop_at_onset and self.onset.collapsed:
            return "onset"
        if self.epoch >= self.cfg.total_epochs:
            return "budget"
        return None

    def result(self) -> TrainResult:
        return TrainResult(self.status, self.stop_reason, self.epoch, self.onset.result(), self.records)

    # ---- checkpointing --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "phase": self.phase, "terminal": self.terminal, "elapsed": self.elapsed,
            "phase_first_loss": self.phase_first_loss,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "shuffle_gen": self.shuffle_gen.get_state(),
            "torch_rng": torch.get_rng_state(), "records": list(self.records),
            "onset": {k: getattr(self.onset, k) for k in ("t_strict", "t_relaxed", "fn_strict",
                                                           "fn_relaxed", "min_nc1")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self._start_phase(state["phase"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.shuffle_gen.set_state(state["shuffle_gen"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.terminal, self.elapsed = state["epoch"], state["terminal"], state["elapsed"]
        self.phase_first_loss = state.get("phase_first_loss")
        self.records = list(state["records"])
        for k, v in state["onset"].items():
            setattr(self.onset, k, v)


def memory_estimate(cfg: TrainConfig) -> tuple[int, int]:
    """``(parameters, bytes)`` a run of ``cfg`` needs at least: weights, gradients and two optimiser
    moments in float32, the float64 NC scatter of the penultimate features, and the activations of a
    training and an evaluation batch."""
    from ncstudy.data import input_spec
    from ncstudy.models import parameter_count

    shape, k = input_spec(cfg.data, cfg.model.name)
    n = parameter_count(cfg.model, shape, k)
    width = cfg.model.width if cfg.model.name == "mlp" else 64
    depth = cfg.model.depth if cfg.model.name == "mlp" else 20
    activations = 4 * 3 * max(cfg.batch_size, cfg.eval.batch_size) * (width * depth + math.prod(shape))
    return n, 16 * n + 8 * width * width + activations


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(cfg: TrainConfig, where: str = "", limit: int | None = None) -> None:
    """:class:`~ncstudy.errors.ConfigError` when ``cfg``'s model cannot be trained in this machine's
    memory (``limit`` bytes; default its RAM): a width of 10**9 fails here, not in the allocator."""
    limit = limit if limit is not None else physical_memory()
    if limit is None:
        return
    n, need = memory_estimate(cfg)
    if need > limit:
        from ncstudy.errors import ConfigError

        raise ConfigError(
            f"{where}model {cfg.model.name} (depth {cfg.model.depth}, width {cfg.model.width}) on {cfg.data.name} has "
            f"{n:.3g} parameters and needs at least {need / 2**30:.3g} GiB to train; this machine has "
            f"{limit / 2**30:.3g} GiB. Use a smaller model.width / model.depth or batch_size")


def train(cfg: TrainConfig, data: Dataset | None = None, on_eval: EvalCallback | None = None) -> TrainResult:
    return Trainer(cfg, data).run(on_eval)
