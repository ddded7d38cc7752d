"""ncstudy.models: shapes, parameter counts, initialisation, the feature interface."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ncstudy.config import DataConfig, ModelConfig
from ncstudy.data import load_dataset
from ncstudy.errors import ConfigError
from ncstudy.models import MLP, BasicBlock, ResNet20, build_model, count_parameters


def _linears(m: nn.Module) -> list[nn.Linear]:
    return [x for x in m.modules() if isinstance(x, nn.Linear)]


# ----------------------------------------------------------------------------- MLP


def test_mlp_shapes_and_feature_interface():
    torch.manual_seed(0)
    m = MLP(784, 10, depth=5, width=512, activation="relu")
    x = torch.randn(7, 1, 28, 28)
    h, logits = m.forward_with_features(x)
    assert h.shape == (7, 512) and logits.shape == (7, 10) and m.feature_dim == 512
    assert torch.equal(h, m.features(x)) and torch.equal(logits, m(x))
    assert torch.equal(logits, m.head(h))
    assert isinstance(m.head, nn.Linear) and m.head.in_features == 512 and m.head.out_features == 10
    assert (h >= 0).all()  # features are post-ReLU


def test_mlp_layout_and_parameter_count():
    m = MLP(784, 10, depth=5, width=512)
    lin = _linears(m)
    assert [(x.in_features, x.out_features) for x in lin] == [(784, 512)] + [(512, 512)] * 4 + [(512, 10)]
    assert isinstance(m.body[0], nn.Flatten) and len(m.body) == 1 + 2 * 5
    assert count_parameters(m) == 784 * 512 + 512 + 4 * (512 * 512 + 512) + 512 * 10 + 10 == 1_457_674
    assert len(m.hidden_layers) == 5 and m.last_hidden is lin[4] and m.last_hidden is not m.head
    small = MLP(32, 3, depth=1, width=8)
    assert [(x.in_features, x.out_features) for x in _linears(small)] == [(32, 8), (8, 3)]
    assert small.last_hidden is small.body[1]


def test_mlp_kaiming_normal_init_statistics_and_zero_bias():
    torch.manual_seed(0)
    m = MLP(784, 10, depth=5, width=512, activation="tanh")  # ReLU gain whatever the activation
    for lin in _linears(m):
        w = lin.weight.detach()
        expected = math.sqrt(2.0 / lin.in_features)
        n = w.numel()
        # sample std of n normals has relative SE 1/sqrt(2n): 0.3 % .. 2 % here, test at ~4 SE
        assert abs(w.std().item() / expected - 1) < 4 / math.sqrt(2 * n) + 1e-3, lin
        assert abs(w.mean().item()) < 4 * expected / math.sqrt(n)
        assert torch.count_nonzero(lin.bias) == 0
    # Gaussian, not uniform: excess kurtosis near 0 (uniform would give -1.2)
    w = m.body[1].weight.detach().flatten()
    z = (w - w.mean()) / w.std()
    assert abs((z**4).mean().item() - 3.0) < 0.05


@pytest.mark.parametrize(
    "name, cls",
    [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("gelu", nn.GELU), ("tanh", nn.Tanh), ("silu", nn.SiLU)]
)
def test_mlp_activations(name, cls):
    m = MLP(20, 4, depth=3, width=16, activation=name)
    acts = [x for x in m.body if not isinstance(x, (nn.Linear, nn.Flatten))]
    assert len(acts) == 3 and all(type(a) is cls for a in acts)
    if name == "leaky_relu":
        assert acts[0].negative_slope == 0.01
    v = torch.tensor([-2.0, 0.5])
    expected = {"relu": [0.0, 0.5], "leaky_relu": [-0.02, 0.5], "tanh": [math.tanh(-2), math.tanh(0.5)],
                "gelu": [-2 * 0.5 * (1 + math.erf(-2 / math.sqrt(2))), 0.5 * 0.5 * (1 + math.erf(0.5 / math.sqrt(2)))],
                "silu": [-2 / (1 + math.exp(2)), 0.5 / (1 + math.exp(-0.5))]}[name]
    assert torch.allclose(acts[0](v), torch.tensor(expected), atol=1e-6)


def test_unknown_activation_refused():
    with pytest.raises(ConfigError, match="model.activation: unknown activation 'swish'"):
        MLP(10, 2, depth=1, width=4, activation="swish")


def test_scaling_last_hidden_scales_relu_features_by_alpha():
    """What the trainer's intervention relies on: ReLU is positively homogeneous."""
    torch.manual_seed(0)
    m = MLP(32, 5, depth=4, width=64)
    x = torch.randn(50, 32)
    with torch.no_grad():
        m.last_hidden.bias.normal_()  # as after training: non-zero bias
        before = m.features(x)
        m.last_hidden.weight.mul_(0.5)
        m.last_hidden.bias.mul_(0.5)
        after = m.features(x)
    assert torch.allclose(after, 0.5 * before, atol=1e-6)
    assert after.norm(dim=1).mean().item() == pytest.approx(0.5 * before.norm(dim=1).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- ResNet-20


def test_resnet20_shapes_and_parameter_count():
    torch.manual_seed(0)
    m = ResNet20(num_classes=10).eval()
    assert count_parameters(m) == 272_474  # the paper's "params=0.272M"
    assert count_parameters(ResNet20(10, in_channels=1)) == 272_474 - 2 * 16 * 9
    x = torch.randn(4, 3, 32, 32)
    h, logits = m.forward_with_features(x)
    assert h.shape == (4, 64) and logits.shape == (4, 10) and m.feature_dim == 64
    with torch.no_grad():
        assert torch.equal(h, m.features(x)) and torch.equal(logits, m(x)) and torch.equal(logits, m.head(h))
    assert isinstance(m.head, nn.Linear) and (m.head.in_features, m.head.out_features) == (64, 10)
    assert (h >= 0).all()  # average of post-ReLU maps


def test_resnet20_structure():
    m = ResNet20(10)
    stages = [m.layer1, m.layer2, m.layer3]
    assert [len(s) for s in stages] == [3, 3, 3] and all(isinstance(b, BasicBlock) for s in stages for b in s)
    assert [s[0].conv2.out_channels for s in stages] == [16, 32, 64]
    assert [s[0].conv1.stride for s in stages] == [(1, 1), (2, 2), (2, 2)]
    projections = [(i, j) for i, s in enumerate(stages) for j, b in enumerate(s)
                   if not isinstance(b.shortcut, nn.Identity)]
    assert projections == [(1, 0), (2, 0)]
    conv, bn = m.layer2[0].shortcut
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)
    # 19 3x3 convs + head = 20 weighted layers
    assert sum(1 for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)) == 19
    # spatial sizes 32 -> 32 -> 16 -> 8
    sizes = []
    hooks = [s.register_forward_hook(lambda mod, i, o: sizes.append(tuple(o.shape[1:]))) for s in stages]
    m(torch.randn(2, 3, 32, 32))
    for hk in hooks:
        hk.remove()
    assert sizes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_resnet20_init():
    torch.manual_seed(0)
    m = ResNet20(10)
    for c in m.modules():
        if isinstance(c, nn.Conv2d) and c.weight.numel() >= 4096:
            fan_out = c.out_channels * c.kernel_size[0] * c.kernel_size[1]
            assert abs(c.weight.std().item() / math.sqrt(2.0 / fan_out) - 1) < 0.05
        if isinstance(c, nn.BatchNorm2d):
            assert torch.all(c.weight == 1) and torch.all(c.bias == 0)


# ----------------------------------------------------------------------------- build_model


def test_build_model_from_dataset_shapes():
    mlp = build_model(ModelConfig(name="mlp", depth=3, width=64, activation="gelu"), (1, 28, 28), 10)
    assert isinstance(mlp, MLP) and mlp.in_features == 784 and mlp.depth == 3 and mlp.width == 64
    assert isinstance(mlp.body[2], nn.GELU)
    res = build_model(ModelConfig(name="resnet20"), (3, 32, 32), 7)
    assert isinstance(res, ResNet20) and res.head.out_features == 7 and res.conv1.in_channels == 3
    with pytest.raises(ConfigError, match="resnet20 needs image inputs"):
        build_model(ModelConfig(name="resnet20"), (32,), 10)


def test_models_run_on_real_mnist5k_inputs():
    cfg = DataConfig(name="mnist5k", n_train=20, n_test=10)
    for name in ("mlp", "resnet20"):
        d = load_dataset(cfg, model=name)
        m = build_model(ModelConfig(name=name, depth=2, width=32), d.input_shape, d.num_classes).eval()
        with torch.no_grad():
            h, logits = m.forward_with_features(d.x_train)
        assert logits.shape == (20, 10) and h.shape == (20, m.feature_dim)
        assert torch.isfinite(logits).all() and h.norm(dim=1).mean() > 0
