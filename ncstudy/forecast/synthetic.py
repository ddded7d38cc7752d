"""Synthetic two-phase trajectories (no training) for examples, tests and demos.

Phase 1 (cross-entropy): fn large and slowly falling, NC1 around 0.1-0.3. Phase 2 (MSE):
``fn(t) = fn_end + (fn_start - fn_end) * exp(-(t - ce_epochs) / tau)``; NC1 falls log-linearly
from ``nc1_start`` and reaches 0.01 exactly at ``t_nc`` (or levels off at ``nc1_floor`` when
``collapse`` is False); the training loss falls log-linearly as well. Optional multiplicative
noise (lognormal, SD ``noise``) on fn, NC1 and loss.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def synthetic_trajectory(t_nc: int = 300, fn_start: float = 3.0, fn_end: float = 1.0, tau: float = 30.0,
                         ce_epochs: int = 200, epochs: int = 600, every: int = 10, nc1_start: float = 0.1,
                         collapse: bool = True, nc1_floor: float = 0.03, loss_at_onset: float = 1e-3,
                         noise: float = 0.0, seed: int = 0, terminal_epoch: int = 10) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    if collapse and t_nc <= ce_epochs:
        raise ValueError("t_nc must be in phase 2 (after ce_epochs)")
    k = math.log(nc1_start / 0.01) / (t_nc - ce_epochs) if collapse else 0.01
    k_loss = k
    out = []
    for e in range(every, epochs + 1, every):
        phase = 1 if e <= ce_epochs else 2
        eps = np.exp(rng.normal(0.0, noise, 3)) if noise > 0 else np.ones(3)
        terminal = e >= terminal_epoch
        if phase == 1:
            fn = 30.0 - 10.0 * e / ce_epochs
            nc1 = 0.3 * math.exp(-e / ce_epochs) + 0.1
            loss = 0.05 * math.exp(-3 * e / ce_epochs)
            nc1, fn = nc1 * eps[0], fn * eps[1]
        else:
            s = e - ce_epochs
            fn = (fn_end + (fn_start - fn_end) * math.exp(-s / tau)) * eps[1]
            if collapse:
                nc1 = nc1_start * math.exp(-k * s)
                # exact crossing at t_nc, noise must not move it
                nc1 = nc1 if e == t_nc else nc1 * eps[0]
                if e < t_nc:
                    nc1 = max(nc1, 0.0101)
                elif e > t_nc:
                    nc1 = min(nc1, 0.0099)
            else:
                nc1 = (nc1_floor + (nc1_start - nc1_floor) * math.exp(-s / 40.0)) * eps[0]
            loss = loss_at_onset * math.exp(-k_loss * (e - t_nc)) * eps[2] if collapse else \
                loss_at_onset * 10 * math.exp(-s / 100.0) * eps[2]
        out.append({"epoch": e, "phase": phase, "train": 1.0 if terminal else 0.95,
                    "nc1": nc1 if terminal else float("nan"), "feat_norm": fn if terminal else float("nan"),
                    "train_loss": loss})
    return out
