"""The paper's two classifiers: a plain MLP and the CIFAR ResNet-20.

Both expose the same interface, which is all the trainer and the metrics engine rely on:

- ``features(x)``: the penultimate feature (the input of the classifier head) used for fn and NC;
- ``head``: the classifier ``nn.Linear`` (its weight rows are the w_c of NC3);
- ``forward(x) == head(features(x))``;
- ``forward_with_features(x) -> (features, logits)`` in one pass;
- ``feature_dim``: the size of that feature.

The MLP also exposes ``last_hidden``, the last hidden ``nn.Linear``, which the alpha intervention
scales at the phase switch (for ReLU this scales the features, and so fn, by alpha).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ncstudy.config import ConfigError, ModelConfig

__all__ = ["ACTIVATIONS", "MLP", "BasicBlock", "ResNet20", "build_model", "count_parameters"]


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name == "silu":
        return nn.SiLU()
    raise ConfigError(f"model.activation: unknown activation '{name}' (known: {', '.join(ACTIVATIONS)})")


ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "silu")


class MLP(nn.Module):
    """Flatten -> [Linear -> activation] x depth -> head Linear.

    Every Linear, the head included, gets Kaiming-normal weights with the ReLU gain over fan-in
    (std = sqrt(2 / fan_in)) whatever the activation, and zero bias, as in the paper.
    """

    def __init__(self, in_features: int, num_classes: int, depth: int = 5, width: int = 512, activation: str = "relu"):
        super().__init__()
        if depth < 1 or width < 1 or in_features < 1 or num_classes < 2:
            raise ConfigError(
                f"MLP needs depth >= 1, width >= 1, in_features >= 1, num_classes >= 2; got "
                f"depth={depth}, width={width}, in_features={in_features}, num_classes={num_classes}"
            )
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.depth, self.width, self.activation = int(depth), int(width), activation
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = self.in_features
        for _ in range(self.depth):
            layers += [nn.Linear(fan_in, self.width), _activation(activation)]
            fan_in = self.width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(self.width, self.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def hidden_layers(self) -> list[nn.Linear]:
        return [m for m in self.body if isinstance(m, nn.Linear)]

    @property
    def last_hidden(self) -> nn.Linear:
        return self.hidden_layers[-1]

    @property
    def feature_dim(self) -> int:
        return self.width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return h, self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU-3x3 conv-BN plus shortcut (1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32 x 32 inputs (He et al. 2016, CIFAR variant), as in the paper's code.

    3x3 conv (16) -> 3 stages of 3 BasicBlocks with 16 / 32 / 64 channels (stride 2 at the start of
    stages 2 and 3) -> global average pool -> 64-d feature -> Linear head. Convolutions get
    Kaiming-normal init (fan_out, ReLU gain), BatchNorm weight 1 / bias 0, the head PyTorch's default
    Linear init, as in the author's notebooks. About 0.27 M parameters for 10 classes.
    """

    feature_dim = 64

    def __init__(self, num_classes: int = 10, in_channels: int = 3, blocks_per_stage: int = 3):
        super().__init__()
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.conv1 = nn.Conv2d(self.in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, self.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return h, self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_count(cfg: ModelConfig, input_shape: Sequence[int], num_classes: int) -> int:
    """The number of parameters ``build_model`` would create, without creating them."""
    if cfg.name == "mlp":
        d_in, w = math.prod(input_shape), cfg.width
        return d_in * w + w + (cfg.depth - 1) * (w * w + w) + w * num_classes + num_classes
    return count_parameters(build_model(cfg, input_shape, num_classes))


def build_model(cfg: ModelConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The model ``cfg.name`` for inputs of per-sample ``input_shape`` (``Dataset.input_shape``)."""
    input_shape = tuple(int(s) for s in input_shape)
    if cfg.name == "mlp":
        return MLP(math.prod(input_shape), num_classes, cfg.depth, cfg.width, cfg.activation)
    if cfg.name == "resnet20":
        if len(input_shape) != 3:
            raise ConfigError(
                f"model.name: resnet20 needs image inputs (C, H, W), got per-sample shape {input_shape}"
                " (for synthetic data set data.shape, e.g. [3, 32, 32])"
            )
        return ResNet20(num_classes, in_channels=input_shape[0])
    raise ConfigError(f"model.name: unknown model '{cfg.name}' (known: mlp, resnet20)")
