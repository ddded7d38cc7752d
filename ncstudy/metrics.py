"""Neural-collapse metrics from one streaming pass over penultimate features.

Why it is built this way
------------------------
* **Statistics apart from formulas.** :class:`NCAccumulator` only keeps sufficient statistics
  (:class:`NCStats`: per-class count and sum, the pooled within-class *centred* scatter, per-class
  within-class sums of squares, the sum of feature norms), so any loop -- ours or another
  project's -- can feed it batches. The metrics are pure functions of those statistics
  (:func:`metrics_from_stats` and the small functions it calls).
* **Exact at strong collapse.** Raw moments (Σhhᵀ − nμμᵀ) cancel: with a within-class spread of
  1e-4 of the class-mean scale on a common offset of 50 (the strong-collapse test) they miss nc1
  by 8e-6 relative even in float64; in float32 the rounding of ‖h‖² ≈ 2500 alone (~1e-4) dwarfs
  the variance (~1e-8). Here each chunk is centred on its
  own class means in float64 and chunks are combined with Chan et al.'s parallel update, whose
  correction ``n_a n_b / n (μ_a − μ_b)(μ_a − μ_b)ᵀ`` only adds positive terms: no cancellation,
  no negative variances, and batches of 1, 7 or N agree to 1e-10 relative.
* **O(d² + K·d) memory for the statistics.** None of the metrics needs a per-class covariance,
  only Σ_W = Σ_c S_c / N, so one pooled d×d scatter is merged (Chan's correction summed over
  classes) plus the K per-class traces; that is below the O(K·d²) budget of per-class scatters.
* **Definitions.** ``nc1``, ``nc2``, ``nc3``, ``fn`` are the reference paper's
  (``shared/reference/README.md``): Σ_W divided by N, Σ_B by K, class means centred on the
  sample-weighted global mean (the author's code: ``H.mean(0)``), ``fn`` the mean uncentred
  feature norm. The standard forms (Papyan, Han & Donoho 2020) use the same centred means M:
  ``nc1_papyan = tr(Σ_W Σ_B⁺)/K`` with Σ_B⁺ restricted to the top K−1 eigenpairs, obtained from the
  thin SVD of the K×d matrix M (never a d×d pinv, which is unstable when d ≫ K); the equinorm
  coefficients of variation use the sample SD (ddof = 1, as ``torch.std`` in the common code);
  ``etf_distance`` and ``self_duality`` are the Frobenius distances of the issue (not squared).
  Quantities undefined for degenerate input (all class means equal, a zero class mean) are NaN.
* **CPU GEMM.** On CPU the centred scatter ``ZᵀZ`` is handed to numpy, whose matmul recognises
  the ``Aᵀ·A`` pattern and calls BLAS ``syrk`` (half the flops). Measured on the 2-core dev box
  (N=60,000, d=512, float64, 2 threads): numpy ``ZᵀZ`` 0.25–0.33 s vs torch (MKL) 0.54–0.65 s.
  On CUDA the scatter stays in torch (cuBLAS).

nc4 (network vs nearest-class-mean disagreement)
------------------------------------------------
The NCC decision of a sample needs the *final* class means, which exist only after the pass, and
it depends on the sample through directions that later samples can still move -- so no
fixed-size statistic gives it exactly. Options measured with ``benchmarks/nc_metrics.py``
(N=60,000, d=512, K=10, float32 features, batches of 1,024, one thread, shared 2-core CPU under
load ~10; medians of 5; ``benchmarks/results/nc_metrics.json``):

* ``ncc="cached"`` (default): copy each batch's features in their own dtype, plus the logits'
  argmax, and run the NCC over the copies in :meth:`NCAccumulator.compute` (float64, one reused
  scratch block). Exact. Cost: 2.25 s vs 1.55 s for the same pass without nc4 (+0.70 s), and
  +135 MB (N·d float32; one float64 copy of H is 246 MB, the naive full-matrix version peaks at
  745 MB). ``cache_device="cpu"`` keeps it off the GPU.
* ``ncc="online"``: classify each batch against the running class means (this batch included,
  unseen classes excluded). O(K·d) memory, +0.20 s, and close on the benchmark's features (nc4
  0.03633 vs exact 0.03632 shuffled, 0.03645 with a class-sorted loader) -- but with no bound: on
  overlapping classes in batches of 30 the tests see it off by more than 0.005, and it could not
  pass the issue's exact comparisons. Kept for memory-bound runs (N ~ 10⁶ with d in the
  thousands).
* A second forward pass would be exact without the cache but repeats the evaluation's data
  loading and forward pass over the training set; the issue rules it out (not measured here).

Chosen: ``cached`` -- nc4 has to be exact like the other metrics, and the measured price is
0.7 s and 135 MB per evaluation at this size; ``online`` remains for when the memory is not there.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ncstudy.deprecation import RenamedKeys
from ncstudy.records import FN, NC_KEYS, TRAIN

__all__ = [
    "METRIC_KEYS",
    "NCMetrics",
    "NCStats",
    "NCAccumulator",
    "batch_stats",
    "merge_stats",
    "metrics_from_stats",
    "centred_means",
    "ncc_predict",
    "ncc_mismatch",
    "nc_metrics",
    "measure",
]

#: What :meth:`NCAccumulator.compute` returns: the NC part of a record (ncstudy.records.NC_KEYS).
METRIC_KEYS: tuple[str, ...] = NC_KEYS

NCCMode = Literal["cached", "online", "off"]


class NCMetrics(RenamedKeys):
    """The metrics :meth:`NCAccumulator.compute`, :func:`nc_metrics` and :func:`measure` return: a
    ``dict`` of floats in which the former key ``fn`` (now ``feat_norm``) still reads, with a
    :class:`DeprecationWarning`, for a release."""

    renamed = {"fn": FN}


_F64 = torch.float64
# Rows per internal chunk: bounds the float64 temporaries to ~32 MB whatever the caller's batch.
_CHUNK_ELEMENTS = 1 << 22
# Up to this many classes, per-class sums and centring run as one-hot GEMMs (cost ∝ K).
_ONE_HOT_MAX_CLASSES = 64


# --------------------------------------------------------------------------------------------
# Sufficient statistics
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NCStats:
    """Everything the formulas need; all float64 except ``counts`` (int64), on one device.

    ``scatter`` is Σ_c Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ (d×d, = N·Σ_W); ``class_ss[c]`` is its
    class-c trace contribution Σ_{i∈c} ‖h_i − μ_c‖²; ``norm_sum`` is Σ_i ‖h_i‖.
    """

    counts: Tensor  # (K,)
    sums: Tensor  # (K, d)
    scatter: Tensor  # (d, d)
    class_ss: Tensor  # (K,)
    norm_sum: Tensor  # ()

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum().item())


def _scatter(z: Tensor) -> Tensor:
    """ZᵀZ in float64; numpy's syrk path on CPU (2× faster than torch's MKL gemm here).

    numpy's BLAS ignores torch's thread setting and uses every core, so a process limited to fewer
    threads than the machine has (a one-CPU Ray trial) keeps to torch, which honours the limit.
    """
    if z.device.type == "cpu" and torch.get_num_threads() >= (os.cpu_count() or 1):
        zn = z.numpy()
        return torch.from_numpy(zn.T @ zn)
    return z.T @ z


def _centred_stats(x: Tensor, y: Tensor, num_classes: int) -> NCStats:
    """Statistics of the float64 rows ``x`` (centred in place on their class means)."""
    k, d = num_classes, x.shape[1]
    counts = torch.bincount(y, minlength=k)
    norm_sum = torch.linalg.vector_norm(x, dim=1).sum()
    inv_n = 1.0 / counts.clamp(min=1).to(_F64).unsqueeze(1)
    if k <= _ONE_HOT_MAX_CLASSES:
        # Class sums and centring as GEMMs with the one-hot matrix: the products are by exact
        # 0/1, so only the summation order differs from index_add/gather; faster for small K.
        p = torch.nn.functional.one_hot(y, k).to(_F64)
        sums = p.T @ x
        x.addmm_(p, sums * inv_n, alpha=-1.0)
        class_ss = p.T @ torch.linalg.vector_norm(x, dim=1).square()
    else:
        sums = torch.zeros(k, d, dtype=_F64, device=x.device).index_add_(0, y, x)
        x -= (sums * inv_n)[y]
        class_ss = torch.zeros(k, dtype=_F64, device=x.device).index_add_(
            0, y, torch.linalg.vector_norm(x, dim=1).square())
    return NCStats(counts, sums, _scatter(x), class_ss, norm_sum)


def batch_stats(features: Tensor, labels: Tensor, num_classes: int) -> NCStats:
    """Statistics of one batch, centred on its own class means (float64, features' device)."""
    x = features.detach().to(dtype=_F64, copy=True)
    return _centred_stats(x, labels.to(device=x.device, dtype=torch.long), num_classes)


def merge_stats(a: NCStats, b: NCStats, *, inplace: bool = False) -> NCStats:
    """Chan's parallel update: exact pooled scatter of the union of two sample sets.

    ``inplace=True`` overwrites ``a``'s tensors (the accumulator's own state), saving three d×d
    temporaries per merge.
    """
    na, nb = a.counts.to(_F64), b.counts.to(_F64)
    # Zero weight for a class missing on either side; the clamp only keeps 0/0 out.
    w = na * nb / (na + nb).clamp(min=1.0)
    delta = a.sums / na.clamp(min=1.0).unsqueeze(1) - b.sums / nb.clamp(min=1.0).unsqueeze(1)
    wdelta = delta * w.unsqueeze(1)
    corr_ss = (wdelta * delta).sum(1)
    if inplace:
        a.counts.add_(b.counts)
        a.sums.add_(b.sums)
        a.scatter.add_(b.scatter).addmm_(wdelta.T, delta)
        a.class_ss.add_(b.class_ss).add_(corr_ss)
        a.norm_sum.add_(b.norm_sum)
        return a
    return NCStats(
        counts=a.counts + b.counts,
        sums=a.sums + b.sums,
        scatter=torch.addmm(a.scatter + b.scatter, wdelta.T, delta),
        class_ss=a.class_ss + b.class_ss + corr_ss,
        norm_sum=a.norm_sum + b.norm_sum,
    )


# --------------------------------------------------------------------------------------------
# Formulas (pure functions of the statistics)
# --------------------------------------------------------------------------------------------
def _check_classes(counts: Tensor) -> None:
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        which = ", ".join(str(c) for c in empty)
        noun = f"class {which} has" if len(empty) == 1 else f"classes {which} have"
        raise ValueError(f"{noun} no sample in the accumulated set; NC metrics "
                         f"need every one of the {counts.numel()} classes")


def centred_means(stats: NCStats) -> tuple[Tensor, Tensor]:
    """(M, μ_G): class means minus the sample-weighted global mean, and that global mean."""
    _check_classes(stats.counts)
    mu = stats.sums / stats.counts.to(_F64).unsqueeze(1)
    mu_g = stats.sums.sum(0) / stats.counts.sum().to(_F64)
    return mu - mu_g, mu_g


def _ratio(num: Tensor, den: Tensor) -> float:
    den_f = float(den)
    return float(num) / den_f if den_f != 0.0 else math.nan


def _unit_rows(a: Tensor) -> Tensor:
    n = torch.linalg.vector_norm(a, dim=1, keepdim=True)
    return a / n  # a zero row gives NaN: its direction is undefined


def _cv(v: Tensor) -> float:
    """Coefficient of variation, sample SD (ddof = 1) as in the common reference code."""
    return _ratio(v.std(correction=1), v.mean())


def nc1_paper(trace_sw: Tensor, m: Tensor) -> float:
    """tr(Σ_W)/tr(Σ_B), Σ_B = MᵀM/K."""
    return _ratio(trace_sw, m.square().sum() / m.shape[0])


def nc2_paper(m: Tensor) -> float:
    """Mean over c≠c′ of |cos(m_c, m_c′) + 1/(K−1)|."""
    k = m.shape[0]
    u = _unit_rows(m)
    cos = u @ u.T
    off = ~torch.eye(k, dtype=torch.bool, device=m.device)
    return float((cos[off] + 1.0 / (k - 1)).abs().mean())


def nc3_paper(w: Tensor, m: Tensor) -> float:
    """1 − mean_c cos(w_c, m_c)."""
    return float(1.0 - (_unit_rows(w) * _unit_rows(m)).sum(1).mean())


def nc1_papyan(sigma_w: Tensor, m: Tensor) -> float:
    """tr(Σ_W Σ_B⁺)/K with Σ_B⁺ on the top K−1 eigenpairs of Σ_B = MᵀM/K.

    The eigenpairs come from the thin SVD of the K×d matrix M (Σ_B = V S²/K Vᵀ), so nothing d×d
    is inverted; directions below numerical rank are dropped as well.
    """
    k, d = m.shape
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    if float(s[0]) == 0.0:
        return math.nan
    tol = float(s[0]) * max(k, d) * torch.finfo(_F64).eps
    r = min(k - 1, int((s > tol).sum()))
    v = vh[:r]  # (r, d), orthonormal rows
    lam = s[:r].square() / k
    quad = ((v @ sigma_w) * v).sum(1)  # v_j Σ_W v_jᵀ
    return float((quad / lam).sum() / k)


def etf_distance(m: Tensor) -> float:
    """‖MMᵀ/‖MMᵀ‖_F − (I − 11ᵀ/K)/√(K−1)‖_F."""
    k = m.shape[0]
    g = m @ m.T
    ideal = (torch.eye(k, dtype=_F64, device=m.device) - 1.0 / k) / math.sqrt(k - 1)
    return float(torch.linalg.matrix_norm(g / torch.linalg.matrix_norm(g) - ideal))


def self_duality(w: Tensor, m: Tensor) -> float:
    """‖Wᵀ/‖W‖_F − Mᵀ/‖M‖_F‖_F."""
    return float(torch.linalg.matrix_norm(w / torch.linalg.matrix_norm(w)
                                          - m / torch.linalg.matrix_norm(m)))


def metrics_from_stats(stats: NCStats, w: Tensor, nc4: float = math.nan) -> dict[str, float]:
    """Every metric except nc4 (which needs per-sample data) from the statistics and W (K×d)."""
    m, _ = centred_means(stats)
    w = w.detach().to(device=m.device, dtype=_F64)
    if w.shape != m.shape:
        raise ValueError(f"W has shape {tuple(w.shape)}, expected (num_classes, dim) = "
                         f"{tuple(m.shape)}")
    n = stats.counts.sum().to(_F64)
    return {
        FN: float(stats.norm_sum / n),
        "nc1": nc1_paper(stats.class_ss.sum() / n, m),
        "nc2": nc2_paper(m),
        "nc3": nc3_paper(w, m),
        "nc1_papyan": nc1_papyan(stats.scatter / n, m),
        "equinorm_means": _cv(torch.linalg.vector_norm(m, dim=1)),
        "equinorm_weights": _cv(torch.linalg.vector_norm(w, dim=1)),
        "etf_distance": etf_distance(m),
        "self_duality": self_duality(w, m),
        "nc4": float(nc4),
    }


def ncc_predict(x: Tensor, m: Tensor, mu_g: Tensor, seen: Tensor | None = None) -> Tensor:
    """Nearest class mean, μ_c = μ_G + m_c, by Euclidean distance in float64.

    argmin_c ‖x − μ_c‖² = argmin_c ‖m_c‖² + 2μ_Gᵀm_c − 2xᵀm_c: ‖x‖² and ‖μ_G‖² drop out, and
    with the centred m_c no large common offset is squared, so the expansion keeps its digits
    without a centring pass over x. Classes with ``seen[c]`` False never win.
    """
    const = m.square().sum(1) + 2.0 * (m @ mu_g)
    if seen is not None:
        const = torch.where(seen, const, math.inf)
        m = torch.where(seen.unsqueeze(1), m, 0.0)
    return torch.addmm(const, x, m.T, alpha=-2.0).argmin(1)


def ncc_mismatch(features: Tensor, net_pred: Tensor, m: Tensor, mu_g: Tensor,
                 w: Tensor | None, scratch: Tensor | None = None) -> int:
    """Count samples whose network prediction differs from the NCC prediction.

    ``m`` are the centred class means, ``mu_g`` the global mean. ``net_pred[i] < 0`` means "no
    logits were given": the prediction is then argmax(W h) (no bias). ``scratch`` (rows×d
    float64) is reused for the float64 copies, sparing an allocation per chunk.
    """
    dev = m.device
    d = features.shape[1]
    if scratch is None:
        scratch = torch.empty(max(1, min(features.shape[0], _CHUNK_ELEMENTS // max(1, d))), d,
                              dtype=_F64, device=dev)
    rows = scratch.shape[0]
    mism = 0
    for i in range(0, features.shape[0], rows):
        chunk = features[i:i + rows]
        x = scratch[:chunk.shape[0]]
        x.copy_(chunk)
        pred = net_pred[i:i + rows].to(dev)
        missing = pred < 0
        if bool(missing.any()):
            if w is None:
                raise ValueError("no logits for some samples and no W to predict them")
            pred = torch.where(missing, (x @ w.T).argmax(1), pred)
        mism += int((ncc_predict(x, m, mu_g) != pred).sum())
    return mism


# --------------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------------
class _FeatureCache:
    """Copies of the fed features (own dtype) and network predictions, for the exact nc4.

    Rows are packed into blocks of ``rows`` rows so compute() runs a few large kernels instead of
    one small one per training batch; ``pred = -1`` marks rows fed without logits.
    """

    def __init__(self, device: torch.device | str | None) -> None:
        self.device = None if device is None else torch.device(device)
        self._blocks: list[tuple[Tensor, Tensor, int]] = []  # (features, preds, rows used)

    def append(self, x: Tensor, pred: Tensor | None, rows: int) -> None:
        dev = self.device or x.device
        b, i = x.shape[0], 0
        while i < b:
            if self._blocks:
                bx, bp, used = self._blocks[-1]
                if used == bx.shape[0] or bx.dtype != x.dtype:
                    self._blocks.append(self._new_block(x, dev, max(rows, b - i)))
            else:
                self._blocks.append(self._new_block(x, dev, max(rows, b - i)))
            bx, bp, used = self._blocks[-1]
            take = min(bx.shape[0] - used, b - i)
            bx[used:used + take].copy_(x[i:i + take])
            if pred is None:
                bp[used:used + take].fill_(-1)
            else:
                bp[used:used + take].copy_(pred[i:i + take])
            self._blocks[-1] = (bx, bp, used + take)
            i += take

    @staticmethod
    def _new_block(x: Tensor, dev: torch.device, rows: int) -> tuple[Tensor, Tensor, int]:
        return (torch.empty(rows, x.shape[1], dtype=x.dtype, device=dev),
                torch.empty(rows, dtype=torch.long, device=dev), 0)

    def extend(self, other: _FeatureCache) -> None:
        # Taken as full views: later appends here never write into the other cache's storage.
        self._blocks += [(bx[:used], bp[:used], used) for bx, bp, used in other._blocks]

    def blocks(self) -> list[tuple[Tensor, Tensor]]:
        return [(bx[:used], bp[:used]) for bx, bp, used in self._blocks]

    def nbytes(self) -> int:
        return sum(bx.numel() * bx.element_size() + bp.numel() * bp.element_size()
                   for bx, bp, _ in self._blocks)


class NCAccumulator:
    """Feed ``update(features, labels, logits=None)`` per batch, then ``compute(W)``.

    Statistics live in float64 on the device of the first batch. Rows are staged in a float64
    buffer of ``chunk_rows`` rows (default: about 4M elements, 8192 rows at d=512) and folded into
    the statistics a chunk at a time, so small batches do not each pay for a d×d merge.
    ``ncc`` picks how nc4 is obtained (module docstring): ``"cached"`` (exact, keeps the
    features), ``"online"`` (approximate, running means; needs logits) or ``"off"`` (NaN).
    ``cache_device`` stores the cached features elsewhere (e.g. ``"cpu"`` to spare the GPU).
    """

    def __init__(self, num_classes: int, *, ncc: NCCMode = "cached",
                 cache_device: str | torch.device | None = None,
                 chunk_rows: int | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if ncc not in ("cached", "online", "off"):
            raise ValueError(f"ncc must be 'cached', 'online' or 'off', got {ncc!r}")
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.num_classes = int(num_classes)
        self.ncc: NCCMode = ncc
        self.cache_device = None if cache_device is None else torch.device(cache_device)
        self._chunk_rows = chunk_rows
        self._stats: NCStats | None = None
        self._dim: int | None = None
        self._device: torch.device | None = None
        self._buf: Tensor | None = None  # (chunk_rows, d) float64 staging rows
        self._buf_y: Tensor | None = None
        self._buf_n = 0
        self._cache = _FeatureCache(cache_device)
        self._online_sums: Tensor | None = None
        self._online_counts: Tensor | None = None
        self._online_mismatch = 0
        self._online_complete = True  # False once a batch came without logits

    # -- state --------------------------------------------------------------------------------
    @property
    def stats(self) -> NCStats:
        """The accumulated statistics (staged rows folded in first)."""
        self._flush()
        if self._stats is None:
            raise ValueError("no sample accumulated yet")
        return self._stats

    @property
    def num_samples(self) -> int:
        done = 0 if self._stats is None else self._stats.num_samples
        return done + self._buf_n

    @property
    def device(self) -> torch.device | None:
        return self._device

    def state_bytes(self) -> dict[str, int]:
        """Memory held, in bytes: statistics, staging buffer, and the nc4 feature cache."""
        def nbytes(ts: list[Tensor | None]) -> int:
            return sum(t.numel() * t.element_size() for t in ts if t is not None)
        s = self._stats
        stat = 0 if s is None else nbytes([s.counts, s.sums, s.scatter, s.class_ss, s.norm_sum])
        return {"stats": stat + nbytes([self._online_sums, self._online_counts]),
                "buffer": nbytes([self._buf, self._buf_y]),
                "ncc_cache": self._cache.nbytes()}

    def _flush(self) -> None:
        if self._buf_n == 0:
            return
        assert self._buf is not None and self._buf_y is not None
        n, self._buf_n = self._buf_n, 0
        cs = _centred_stats(self._buf[:n], self._buf_y[:n], self.num_classes)
        self._stats = cs if self._stats is None else merge_stats(self._stats, cs, inplace=True)

    # -- feeding ------------------------------------------------------------------------------
    def update(self, features: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        """Add one batch: features (B×d), integer labels (B), optional logits (B×K)."""
        if features.dim() != 2:
            raise ValueError(f"features must be 2-D (batch, dim), got shape "
                             f"{tuple(features.shape)}")
        labels = labels.reshape(-1)
        b, d = features.shape
        if labels.numel() != b:
            raise ValueError(f"{labels.numel()} labels for {b} feature rows")
        if logits is not None and tuple(logits.shape) != (b, self.num_classes):
            raise ValueError(f"logits have shape {tuple(logits.shape)}, expected "
                             f"({b}, {self.num_classes})")
        if self._dim is not None and d != self._dim:
            raise ValueError(f"feature dim {d} differs from earlier batches ({self._dim})")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if b == 0:
            return
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"label {lo if lo < 0 else hi} out of range for "
                             f"num_classes={self.num_classes}")

        if self._device is None:
            self._device, self._dim = features.device, d
        dev = self._device
        features = features.detach().to(dev)
        labels = labels.to(device=dev, dtype=torch.long)
        pred = None if logits is None else logits.detach().to(dev).argmax(1)

        if self._buf is None:
            rows = self._chunk_rows or max(1, _CHUNK_ELEMENTS // d)
            self._buf = torch.empty(rows, d, dtype=_F64, device=dev)
            self._buf_y = torch.empty(rows, dtype=torch.long, device=dev)
        assert self._buf_y is not None
        cap = self._buf.shape[0]
        i = 0
        while i < b:
            take = min(cap - self._buf_n, b - i)
            self._buf[self._buf_n:self._buf_n + take].copy_(features[i:i + take])
            self._buf_y[self._buf_n:self._buf_n + take].copy_(labels[i:i + take])
            self._buf_n += take
            i += take
            if self._buf_n == cap:
                self._flush()

        if self.ncc == "cached":
            self._cache.append(features, pred, self._buf.shape[0])
        elif self.ncc == "online":
            self._online_update(features, labels, pred)

    def _online_update(self, features: Tensor, labels: Tensor, pred: Tensor | None) -> None:
        """Classify the batch against the running means (this batch included)."""
        x = features.to(_F64)
        if self._online_sums is None:
            self._online_sums = torch.zeros(self.num_classes, x.shape[1], dtype=_F64,
                                            device=x.device)
            self._online_counts = torch.zeros(self.num_classes, dtype=torch.long,
                                              device=x.device)
        assert self._online_counts is not None
        self._online_sums.index_add_(0, labels, x)
        self._online_counts += torch.bincount(labels, minlength=self.num_classes)
        if pred is None:
            self._online_complete = False
            return
        seen = self._online_counts > 0
        mu = self._online_sums / self._online_counts.clamp(min=1).to(_F64).unsqueeze(1)
        mu_g = self._online_sums.sum(0) / self._online_counts.sum().to(_F64)
        self._online_mismatch += int((ncc_predict(x, mu - mu_g, mu_g, seen) != pred).sum())

    def merge(self, other: NCAccumulator) -> NCAccumulator:
        """Fold another accumulator (e.g. another data shard or rank) into this one."""
        if other.num_classes != self.num_classes or other.ncc != self.ncc:
            raise ValueError("can only merge accumulators with the same num_classes and ncc mode")
        other._flush()
        if other._stats is None:
            return self
        self._flush()
        o = other._stats
        if self._stats is None:
            self._device, self._dim = other._device, other._dim
            self._stats = NCStats(*(t.clone() for t in
                                    (o.counts, o.sums, o.scatter, o.class_ss, o.norm_sum)))
        else:
            if other._dim != self._dim:
                raise ValueError(f"feature dims differ: {other._dim} vs {self._dim}")
            dev = self._stats.sums.device
            o = NCStats(*(t.to(dev) for t in (o.counts, o.sums, o.scatter, o.class_ss,
                                               o.norm_sum)))
            self._stats = merge_stats(self._stats, o, inplace=True)
        self._cache.extend(other._cache)
        if other._online_sums is not None:
            assert other._online_counts is not None
            if self._online_sums is None:
                self._online_sums = other._online_sums.clone()
                self._online_counts = other._online_counts.clone()
            else:
                assert self._online_counts is not None
                self._online_sums += other._online_sums.to(self._online_sums.device)
                self._online_counts += other._online_counts.to(self._online_counts.device)
        self._online_mismatch += other._online_mismatch
        self._online_complete &= other._online_complete
        return self

    # -- result -------------------------------------------------------------------------------
    def compute(self, W: Tensor) -> NCMetrics:
        """All metrics as plain floats (:data:`METRIC_KEYS`; the former key ``fn`` still reads, with a
        warning); ValueError naming any class without a sample."""
        s = self.stats
        n = s.num_samples
        w = torch.as_tensor(W).detach().to(device=s.sums.device, dtype=_F64)
        out = metrics_from_stats(s, w)
        if self.ncc == "cached":
            m, mu_g = centred_means(s)
            blocks = self._cache.blocks()
            rows = min(max((x.shape[0] for x, _ in blocks), default=1),
                       max(1, _CHUNK_ELEMENTS // m.shape[1]))
            scratch = torch.empty(rows, m.shape[1], dtype=_F64, device=m.device)
            mism = sum(ncc_mismatch(x, p, m, mu_g, w, scratch) for x, p in blocks)
            out["nc4"] = mism / n
        elif self.ncc == "online" and self._online_complete:
            out["nc4"] = self._online_mismatch / n
        return NCMetrics(out)


def nc_metrics(features: Tensor, labels: Tensor, W: Tensor,
               logits: Tensor | None = None) -> NCMetrics:
    """One-shot metrics of a full feature set (K = W.shape[0])."""
    acc = NCAccumulator(int(W.shape[0]))
    acc.update(features, labels, logits)
    return acc.compute(W)


@torch.no_grad()
def measure(model: nn.Module, loader, head: nn.Linear | None = None, num_classes: int | None = None,
            device: torch.device | str | None = None) -> NCMetrics:
    """The NC part of a record for any classifier: training accuracy (``train``), ``feat_norm`` and
    every NC metric (:data:`METRIC_KEYS`), over the batches ``(x, y)`` of ``loader`` (pass the
    training set).

    The penultimate features are the input of ``head``, the classifier layer (default: the model's
    last ``nn.Linear``), captured with a forward hook, so the model needs no change; its weight is
    the W of NC3. The model is put in eval mode for the pass and restored after.

        tune.report({"epoch": epoch, "phase": phase, **measure(model, train_loader)})
    """
    if head is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("measure: the model has no nn.Linear; pass head= (the classifier layer)")
        head = linears[-1]
    k = int(num_classes or head.out_features)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    captured: list[Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    was_training = model.training
    model.eval()
    acc = NCAccumulator(k)
    correct = seen = 0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            feats = captured.pop().reshape(len(y), -1)
            acc.update(feats, y, logits)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    finally:
        hook.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("measure: the loader gave no samples")
    return NCMetrics({TRAIN: correct / seen, **acc.compute(head.weight)})
