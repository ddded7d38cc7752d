"""NC metrics engine (issue 3): exactness, strong collapse, streaming, edge cases.

The reference here is an independent full-matrix float64 numpy implementation (two passes: means,
then centred deviations; d×d Σ_B with its rank-(K−1) pseudo-inverse from ``eigh``; NCC from the
explicit N×K×d distances), plus closed forms worked out by hand from the README's formulas.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncstudy.metrics import METRIC_KEYS, NCAccumulator, nc_metrics


# --------------------------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------------------------
def naive_reference(h: np.ndarray, y: np.ndarray, w: np.ndarray,
                    logits: np.ndarray | None = None) -> dict[str, float]:
    h = np.asarray(h, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, _ = h.shape
    k = w.shape[0]
    mu_g = h.mean(axis=0)
    mu = np.stack([h[y == c].mean(axis=0) for c in range(k)])
    m = mu - mu_g
    dev = h - mu[y]
    sigma_w = dev.T @ dev / n
    sigma_b = sum(np.outer(m[c], m[c]) for c in range(k)) / k
    lam, vec = np.linalg.eigh(sigma_b)
    lam, vec = lam[::-1][:k - 1], vec[:, ::-1][:, :k - 1]
    sb_pinv = vec @ np.diag(1.0 / lam) @ vec.T
    cos = np.array([[m[a] @ m[b] / (np.linalg.norm(m[a]) * np.linalg.norm(m[b]))
                     for b in range(k)] for a in range(k)])
    nc2_terms = [abs(cos[a, b] + 1.0 / (k - 1)) for a in range(k) for b in range(k) if a != b]
    cos_wm = [w[c] @ m[c] / (np.linalg.norm(w[c]) * np.linalg.norm(m[c])) for c in range(k)]
    mn = np.linalg.norm(m, axis=1)
    wn = np.linalg.norm(w, axis=1)
    g = m @ m.T
    ideal = (np.eye(k) - np.ones((k, k)) / k) / math.sqrt(k - 1)
    dist = np.linalg.norm(h[:, None, :] - mu[None, :, :], axis=2)
    net = (h @ w.T if logits is None else np.asarray(logits)).argmax(axis=1)
    return {
        "feat_norm": float(np.linalg.norm(h, axis=1).mean()),
        "nc1": float(np.trace(sigma_w) / np.trace(sigma_b)),
        "nc2": float(np.mean(nc2_terms)),
        "nc3": float(1.0 - np.mean(cos_wm)),
        "nc1_papyan": float(np.trace(sigma_w @ sb_pinv) / k),
        "equinorm_means": float(np.std(mn, ddof=1) / np.mean(mn)),
        "equinorm_weights": float(np.std(wn, ddof=1) / np.mean(wn)),
        "etf_distance": float(np.linalg.norm(g / np.linalg.norm(g) - ideal)),
        "self_duality": float(np.linalg.norm(w.T / np.linalg.norm(w) - m.T / np.linalg.norm(m))),
        "nc4": float(np.mean(dist.argmin(axis=1) != net)),
    }


def assert_metrics_close(got: dict[str, float], want: dict[str, float], rel: float,
                         atol: float = 0.0) -> None:
    assert set(got) == set(METRIC_KEYS)
    bad = {}
    for key in METRIC_KEYS:
        g, r = got[key], want[key]
        if key == "nc4":  # a fraction of integer counts: exact
            ok = g == r
        else:
            ok = math.isfinite(g) and abs(g - r) <= rel * abs(r) + atol
        if not ok:
            bad[key] = (g, r)
    assert not bad, f"metrics off by more than {rel:g} relative: {bad}"


def make_set(counts: list[int], d: int, *, sigma: float = 0.5, offset: float = 2.0,
             seed: int = 0, etf: bool = False, w_noise: float = 0.3,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (float64), shuffled labels and a classifier W for per-class ``counts``.

    Class means have norm ≈ 1 around a common offset of norm ``offset``; within-class noise has
    expected norm ``sigma`` (so ``sigma`` is the spread relative to the class-mean scale).
    """
    rng = np.random.default_rng(seed)
    k = len(counts)
    if etf:
        q = np.linalg.qr(rng.normal(size=(d, k)))[0].T  # (k, d) orthonormal rows
        means = (np.eye(k) - 1.0 / k) @ q * math.sqrt(k / (k - 1))  # unit-norm simplex ETF
    else:
        means = rng.normal(size=(k, d)) / math.sqrt(d)
    y = rng.permutation(np.repeat(np.arange(k), counts))
    off = rng.normal(size=d)
    off *= offset / np.linalg.norm(off)
    h = off + means[y] + rng.normal(size=(len(y), d)) * (sigma / math.sqrt(d))
    w = means + rng.normal(size=(k, d)) * (w_noise / math.sqrt(d))
    return h, y, w


def run(h: np.ndarray, y: np.ndarray, w: np.ndarray, logits: np.ndarray | None = None, *,
        batch: int | None = None, **kw) -> dict[str, float]:
    acc = NCAccumulator(w.shape[0], **kw)
    ht, yt = torch.from_numpy(h), torch.from_numpy(y)
    lt = None if logits is None else torch.from_numpy(logits)
    b = batch or len(y)
    for i in range(0, len(y), b):
        acc.update(ht[i:i + b], yt[i:i + b], None if lt is None else lt[i:i + b])
    return acc.compute(torch.from_numpy(w))


# --------------------------------------------------------------------------------------------
# Must show
# --------------------------------------------------------------------------------------------
def test_exact_simplex_etf_gives_zero_everywhere():
    k, d = 10, 64
    rng = np.random.default_rng(1)
    q = np.linalg.qr(rng.normal(size=(d, k + 1)))[0].T  # k+1 orthonormal directions
    etf = (np.eye(k) - 1.0 / k) @ q[:k] * math.sqrt(k / (k - 1))
    offset = 5.0 * q[k]  # orthogonal to the means, so W·offset = 0
    y = np.tile(np.arange(k), 6)
    h = offset + 3.0 * etf[y]
    out = run(h, y, 2.0 * etf, batch=7)
    for key in METRIC_KEYS:
        if key != "feat_norm":
            assert abs(out[key]) <= 1e-12, (key, out[key])
    assert out["nc4"] == 0.0
    assert out["feat_norm"] == pytest.approx(math.sqrt(25.0 + 9.0), rel=1e-12)


CASES = {
    # counts per class, d, logits?
    "balanced_K3_d5_logits": ([20, 20, 20], 5, True),
    "imbalanced_K10_d64": ([300, 5, 1, 50, 120, 7, 2, 64, 33, 90], 64, False),
    "d_much_larger_than_N_K4_d256": ([30, 40, 50, 20], 256, True),
    "K2_d8": ([15, 40], 8, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_non_collapsed_matches_naive_full_matrix(case):
    counts, d, with_logits = CASES[case]
    h, y, w = make_set(counts, d, sigma=0.8, seed=len(case))
    logits = None
    if with_logits:  # a network that disagrees with the NCC on some samples
        logits = h @ w.T + np.random.default_rng(5).normal(size=(len(y), len(counts))) * 0.3
    ref = naive_reference(h, y, w, logits)
    assert 0.0 < ref["nc4"] < 1.0 or not with_logits  # the case exercises nc4
    # atol: with K = 2 the centred means are exactly opposite, nc2 = 0 up to rounding
    assert_metrics_close(run(h, y, w, logits, batch=37), ref, rel=1e-8, atol=1e-15)


@pytest.mark.parametrize("sigma", [1e-3, 1e-4])
def test_strong_collapse_matches_two_pass_float64(sigma):
    k, d = 10, 512
    h, y, w = make_set([120] * k, d, sigma=sigma, offset=50.0, etf=True, w_noise=0.05, seed=3)
    ref = naive_reference(h, y, w)
    assert ref["nc1"] < 10 * sigma**2  # it is strongly collapsed
    for kw in ({}, {"chunk_rows": 250}):  # one chunk; Chan merges of chunks
        acc = NCAccumulator(k, **kw)
        for i in range(0, len(y), 128):
            acc.update(torch.from_numpy(h[i:i + 128]), torch.from_numpy(y[i:i + 128]))
        out = acc.compute(torch.from_numpy(w))
        assert_metrics_close(out, ref, rel=1e-6)
        s = acc.stats
        assert bool((s.class_ss > 0).all())  # no negative (or vanished) variances
        assert bool((torch.diagonal(s.scatter) >= 0).all())
        per_class_var = (s.class_ss / s.counts).numpy()
        truth = np.array([((h[y == c] - h[y == c].mean(0)) ** 2).sum(1).mean() for c in range(k)])
        np.testing.assert_allclose(per_class_var, truth, rtol=1e-6)
        assert out["nc1"] > 0 and out["nc1_papyan"] > 0


def test_streaming_batches_1_7_N_agree():
    counts = [80, 3, 1, 60, 67]
    h, y, w = make_set(counts, 16, sigma=0.6, seed=11)
    logits = h @ w.T + np.random.default_rng(2).normal(size=(len(y), len(counts))) * 0.2
    full = run(h, y, w, logits)
    assert_metrics_close(full, naive_reference(h, y, w, logits), rel=1e-8)
    for batch, chunk in ((1, 1), (1, None), (7, 7), (7, 5), (len(y), 13)):
        out = run(h, y, w, logits, batch=batch, chunk_rows=chunk)
        assert_metrics_close(out, full, rel=1e-10)


def test_class_imbalance_and_one_sample_class():
    counts = [500, 1, 40, 2, 250]
    h, y, w = make_set(counts, 24, sigma=0.7, seed=4)
    acc = NCAccumulator(len(counts), chunk_rows=64)
    for i in range(0, len(y), 50):
        acc.update(torch.from_numpy(h[i:i + 50]), torch.from_numpy(y[i:i + 50]))
    out = acc.compute(torch.from_numpy(w))
    assert_metrics_close(out, naive_reference(h, y, w), rel=1e-8)
    assert acc.stats.class_ss[1].item() == 0.0  # one sample: no spread, not NaN
    # the global mean is sample-weighted (README/author's code), not the mean of class means
    mu_g = acc.stats.sums.sum(0) / len(y)
    np.testing.assert_allclose(mu_g.numpy(), h.mean(0), rtol=1e-12)


def test_empty_class_is_an_error_naming_it():
    h, y, w = make_set([10, 10, 10, 10], 6)
    keep = y != 2
    with pytest.raises(ValueError, match=r"^class 2 has no sample"):
        run(h[keep], y[keep], w)
    keep = (y != 1) & (y != 3)
    with pytest.raises(ValueError, match=r"^classes 1, 3 have no sample"):
        run(h[keep], y[keep], w)


def test_readme_formulas_on_a_small_fixed_set():
    """K = 3, d = 2, worked by hand from the README (Σ_W/N, Σ_B/K, global-mean centring).

    Class means (3,0), (0,2), (−3,−2) (global mean 0); every sample is ±1 off its mean along one
    axis, so tr Σ_W = 6/6 = 1 and tr Σ_B = (9 + 4 + 13)/3.
    """
    h = np.array([[2, 0], [4, 0], [0, 1], [0, 3], [-3, -1], [-3, -3]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    w = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    s13 = math.sqrt(13)
    want = {
        "nc1": 1.0 / (26.0 / 3.0),
        # cos pairs: 0, −3/√13, −2/√13; |cos + 1/2| averaged over the 3 (= 6 ordered) pairs
        "nc2": (0.5 + (3 / s13 - 0.5) + (2 / s13 - 0.5)) / 3,
        # cos(w_c, m_c) = 1, 1, 3/√13
        "nc3": 1.0 - (2.0 + 3 / s13) / 3,
        "feat_norm": (2 + 4 + 1 + 3 + math.sqrt(10) + math.sqrt(18)) / 6,
        # Σ_W = diag(1/3, 2/3), Σ_B = [[6, 2], [2, 8/3]] (full rank K−1 = 2): tr(Σ_W Σ_B⁻¹) = 11/27
        "nc1_papyan": 11 / 27 / 3,
    }
    for batch in (1, 4, 6):
        acc = NCAccumulator(3)
        for i in range(0, 6, batch):
            acc.update(torch.from_numpy(h[i:i + batch]), torch.from_numpy(y[i:i + batch]))
        out = acc.compute(torch.from_numpy(w))
        for key, value in want.items():
            assert out[key] == pytest.approx(value, rel=1e-12), key
        assert out["nc4"] == 0.0  # W and the NCC agree on all six points
    # a network that calls sample (0, 1) class 2: one disagreement in six
    logits = h @ w.T
    logits[2] = [0.0, 0.0, 5.0]
    out = nc_metrics(torch.from_numpy(h), torch.from_numpy(y), torch.from_numpy(w),
                     torch.from_numpy(logits))
    assert out["nc4"] == pytest.approx(1 / 6, rel=1e-15)


# --------------------------------------------------------------------------------------------
# API behaviour
# --------------------------------------------------------------------------------------------
def test_merge_of_shards_equals_one_pass():
    counts = [40, 25, 1, 30]
    h, y, w = make_set(counts, 12, seed=8)
    logits = h @ w.T + np.random.default_rng(3).normal(size=(len(y), 4)) * 0.3
    whole = run(h, y, w, logits)
    ht, yt, lt = torch.from_numpy(h), torch.from_numpy(y), torch.from_numpy(logits)
    shards = [NCAccumulator(4, chunk_rows=16) for _ in range(3)]
    for j, idx in enumerate(np.array_split(np.arange(len(y)), 3)):
        shards[j].update(ht[idx], yt[idx], lt[idx])  # class 2 (one sample) is in one shard only
    merged = NCAccumulator(4).merge(NCAccumulator(4)).merge(shards[0])
    merged.merge(shards[1]).merge(shards[2])
    assert merged.num_samples == len(y)
    assert_metrics_close(merged.compute(torch.from_numpy(w)), whole, rel=1e-10)


def test_logits_absent_uses_w_and_matches_logits_path():
    h, y, w = make_set([30, 30, 30], 10, sigma=1.5, seed=9)
    with_w = run(h, y, w)
    with_logits = run(h, y, w, h @ w.T)
    assert_metrics_close(with_w, with_logits, rel=0.0)
    assert with_w["nc4"] > 0  # the case has disagreements to count
    one_shot = nc_metrics(torch.from_numpy(h.astype(np.float32)), torch.from_numpy(y),
                          torch.from_numpy(w))
    assert one_shot["nc1"] == pytest.approx(with_w["nc1"], rel=1e-6)  # float32 input


def test_ncc_modes():
    h, y, w = make_set([100] * 4, 16, sigma=0.2, seed=12)
    logits = h @ w.T + np.random.default_rng(4).normal(size=(len(y), 4)) * 0.5
    exact = run(h, y, w, logits, batch=50)
    assert exact["nc4"] > 0
    online = run(h, y, w, logits, batch=50, ncc="online")
    # separated classes: running means already classify like the final ones
    assert online["nc4"] == exact["nc4"]
    assert {k: v for k, v in online.items() if k != "nc4"} == pytest.approx(
        {k: v for k, v in exact.items() if k != "nc4"}, rel=1e-12)
    # overlapping classes in a class-sorted stream: the online rule (running means including the
    # batch, unseen classes excluded) simulated by hand
    h2, y2, w2 = make_set([100] * 4, 16, sigma=1.5, seed=14)
    order = np.argsort(y2, kind="stable")
    hs, ys, ls = h2[order], y2[order], h2[order] @ w2.T
    sums, cnt, mism = np.zeros((4, 16)), np.zeros(4), 0
    for i in range(0, len(ys), 30):
        hb, yb = hs[i:i + 30], ys[i:i + 30]
        np.add.at(sums, yb, hb)
        cnt += np.bincount(yb, minlength=4)
        dist = np.linalg.norm(hb[:, None, :] - (sums / np.maximum(cnt, 1)[:, None])[None], axis=2)
        dist[:, cnt == 0] = np.inf
        mism += int((dist.argmin(1) != ls[i:i + 30].argmax(1)).sum())
    assert run(hs, ys, w2, ls, batch=30, ncc="online")["nc4"] == mism / len(ys)
    # and it is an approximation: shuffled order, same data
    online2 = run(h2, y2, w2, h2 @ w2.T, batch=30, ncc="online")["nc4"]
    assert abs(online2 - run(h2, y2, w2, h2 @ w2.T)["nc4"]) > 0.005
    assert math.isnan(run(h, y, w, batch=50, ncc="online")["nc4"])  # no logits: undefined
    assert math.isnan(run(h, y, w, logits, ncc="off")["nc4"])
    acc = NCAccumulator(4, ncc="off")
    acc.update(torch.from_numpy(h), torch.from_numpy(y))
    assert acc.state_bytes()["ncc_cache"] == 0
    cached = NCAccumulator(4)
    cached.update(torch.from_numpy(h), torch.from_numpy(y))
    assert cached.state_bytes()["ncc_cache"] >= h.nbytes  # the features are kept


def test_invalid_inputs():
    acc = NCAccumulator(3)
    with pytest.raises(ValueError, match="label 3 out of range"):
        acc.update(torch.zeros(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="label -1 out of range"):
        acc.update(torch.zeros(2, 4), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integers"):
        acc.update(torch.zeros(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="2 labels for 3"):
        acc.update(torch.zeros(3, 4), torch.tensor([0, 1]))
    acc.update(torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match="feature dim 5"):
        acc.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="W has shape"):
        acc.compute(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="no sample accumulated"):
        NCAccumulator(3).compute(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="num_classes"):
        NCAccumulator(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    h, y, w = make_set([200, 150, 90, 120], 256, sigma=0.5, seed=13)
    logits = h @ w.T + np.random.default_rng(6).normal(size=(len(y), 4)) * 0.3
    cpu = run(h, y, w, logits, batch=64)
    acc = NCAccumulator(4, cache_device="cpu")
    ht = torch.from_numpy(h).float().cuda()
    for i in range(0, len(y), 64):
        acc.update(ht[i:i + 64], torch.from_numpy(y[i:i + 64]).cuda(),
                   torch.from_numpy(logits[i:i + 64]).cuda())
    assert acc.stats.scatter.device.type == "cuda"
    gpu = acc.compute(torch.from_numpy(w).cuda())
    ref32 = naive_reference(h.astype(np.float32), y, w, logits)
    assert_metrics_close(gpu, ref32, rel=1e-8)
    assert gpu["nc1"] == pytest.approx(cpu["nc1"], rel=1e-5)  # float32 vs float64 input
