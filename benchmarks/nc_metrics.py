"""NC metrics engine vs a naive full-matrix numpy version vs a per-sample Python loop.

N = 60,000, d = 512, K = 10 (MNIST-sized penultimate features, float32 like a network's output).

* engine: ``ncstudy.metrics.NCAccumulator`` fed in batches of 1,024 (an evaluation loader), then
  ``compute(W)``; once per nc4 mode (``cached`` = exact, the default; ``online``; ``off``).
* naive: everything as full float64 matrices in numpy (H, H − μ_y, Σ_W, d×d Σ_B and its
  rank-(K−1) pseudo-inverse from ``eigh``, an N×K distance matrix for the NCC).
* loop: per-sample Python loop like the common reference code (Papyan et al.'s notebook: a means
  pass, then per-sample outer products for Σ_W and a per-sample list of distances for the NCC).
  Timed on a stratified subset of ``loop_samples`` and scaled linearly to N (its per-sample cost is
  constant); the O(d³) finalisation is timed each repeat and added unscaled. The output says so.

Timing: the implementations run interleaved, ``repeats`` times each, so a shared machine's load
hits all of them alike; ratios are the medians of the per-repeat ratios. By default every
implementation gets one thread (torch and numpy's BLAS): the loop is single-threaded anyway, and on
a shared 2-core box two-thread kernels spend their time waiting for a descheduled partner at
OpenMP barriers (measured: the engine took ~9 s with 2 threads vs ~2.6 s with 1 under load ~10).
``--threads 0`` keeps the library defaults. Memory: the engine's own
accounting (``state_bytes``), the naive version's array allocations (tracemalloc sees numpy).
``main()`` returns the result dict (``benchmarks/run_all.py`` calls it) and writes
``benchmarks/results/nc_metrics.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ncstudy import text  # noqa: E402
from ncstudy.metrics import METRIC_KEYS, NCAccumulator  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "nc_metrics.json"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def make_data(n: int, d: int, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Start-of-terminal-phase-like features (nc1 ≈ 0.5, NCC and network disagree on ~4 %).

    Non-negative common offset, class means of norm ≈ 1, isotropic within-class noise plus noise
    inside the span of the means (where it moves NCC decisions); logits from a classifier that is
    not the class-mean one, plus noise.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    means = rng.normal(size=(k, d)) / math.sqrt(d)
    basis = np.linalg.qr(means.T)[0].T  # (k, d) orthonormal rows spanning the means
    offset = np.abs(rng.normal(size=d)) * 2.0 / math.sqrt(d)
    h = (offset + means[y] + rng.normal(size=(n, d)) * (0.3 / math.sqrt(d))
         + rng.normal(size=(n, k)) * 0.2 @ basis)
    w = means + rng.normal(size=(k, d)) * (0.6 / math.sqrt(d))
    logits = h @ w.T + rng.normal(size=(n, k)) * 0.15
    return {"h": h.astype(np.float32), "y": y.astype(np.int64), "w": w.astype(np.float32),
            "logits": logits.astype(np.float32)}


# --------------------------------------------------------------------------------------------
# Competitors
# --------------------------------------------------------------------------------------------
def _finish(fn: float, sw: np.ndarray, mu: np.ndarray, mu_g: np.ndarray, w: np.ndarray,
            nc4: float) -> dict[str, float]:
    """Shared formulas with full d×d matrices (naive and loop versions)."""
    k = mu.shape[0]
    m = mu - mu_g
    sb = m.T @ m / k
    lam, vec = np.linalg.eigh(sb)
    lam, vec = lam[-(k - 1):], vec[:, -(k - 1):]
    sb_pinv = (vec / lam) @ vec.T
    mn = m / np.linalg.norm(m, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = mn @ mn.T
    off = ~np.eye(k, dtype=bool)
    g = m @ m.T
    ideal = (np.eye(k) - 1.0 / k) / math.sqrt(k - 1)
    mnorm, wnorm = np.linalg.norm(m, axis=1), np.linalg.norm(w, axis=1)
    return {
        "feat_norm": fn,
        "nc1": float(np.trace(sw) / np.trace(sb)),
        "nc2": float(np.abs(cos[off] + 1.0 / (k - 1)).mean()),
        "nc3": float(1.0 - (mn * wn).sum(1).mean()),
        "nc1_papyan": float(np.trace(sw @ sb_pinv) / k),
        "equinorm_means": float(mnorm.std(ddof=1) / mnorm.mean()),
        "equinorm_weights": float(wnorm.std(ddof=1) / wnorm.mean()),
        "etf_distance": float(np.linalg.norm(g / np.linalg.norm(g) - ideal)),
        "self_duality": float(np.linalg.norm(w / np.linalg.norm(w) - m / np.linalg.norm(m))),
        "nc4": nc4,
    }


def naive_numpy(h32: np.ndarray, y: np.ndarray, w32: np.ndarray,
                logits: np.ndarray) -> dict[str, float]:
    """Full-matrix float64 numpy: O(N·d) memory."""
    h = h32.astype(np.float64)
    w = w32.astype(np.float64)
    n, k = h.shape[0], w.shape[0]
    mu_g = h.mean(0)
    mu = np.stack([h[y == c].mean(0) for c in range(k)])
    hc = h - mu[y]
    sw = hc.T @ hc / n
    dist = (h * h).sum(1)[:, None] - 2.0 * h @ mu.T + (mu * mu).sum(1)[None, :]
    nc4 = float((dist.argmin(1) != logits.argmax(1)).mean())
    return _finish(float(np.linalg.norm(h, axis=1).mean()), sw, mu, mu_g, w, nc4)


def loop_reference(h32: np.ndarray, y: np.ndarray, w32: np.ndarray, logits: np.ndarray,
                   ) -> tuple[dict[str, float], float, float]:
    """Per-sample loop; returns (metrics, seconds of the per-sample passes, seconds to finish)."""
    n, d = h32.shape
    k = w32.shape[0]
    t0 = time.perf_counter()
    sums = [np.zeros(d) for _ in range(k)]
    counts = [0] * k
    fn_sum = 0.0
    for i in range(n):  # pass 1: class means and feature norms
        hi = h32[i].astype(np.float64)
        c = int(y[i])
        sums[c] += hi
        counts[c] += 1
        fn_sum += float(np.linalg.norm(hi))
    mu = np.stack([sums[c] / counts[c] for c in range(k)])
    sw = np.zeros((d, d))
    mism = 0
    for i in range(n):  # pass 2: within-class scatter and NCC, one sample at a time
        hi = h32[i].astype(np.float64)
        z = hi - mu[int(y[i])]
        sw += np.outer(z, z)
        ncc = int(np.argmin([np.linalg.norm(hi - mu[c]) for c in range(k)]))
        mism += int(ncc != int(np.argmax(logits[i])))
    t1 = time.perf_counter()
    mu_g = sum(sums) / n
    out = _finish(fn_sum / n, sw / n, mu, mu_g, w32.astype(np.float64), mism / n)
    return out, t1 - t0, time.perf_counter() - t1


def run_engine(data: dict[str, np.ndarray], ncc: str, batch: int) -> tuple[dict[str, float],
                                                                          NCAccumulator]:
    h, y = torch.from_numpy(data["h"]), torch.from_numpy(data["y"])
    logits, w = torch.from_numpy(data["logits"]), torch.from_numpy(data["w"])
    acc = NCAccumulator(w.shape[0], ncc=ncc)  # type: ignore[arg-type]
    for i in range(0, h.shape[0], batch):
        acc.update(h[i:i + batch], y[i:i + batch], logits[i:i + batch])
    return acc.compute(w), acc


def _stratified(y: np.ndarray, k: int, m: int) -> np.ndarray:
    per = max(1, m // k)
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per] for c in range(k)]))


def _rel(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[key] - b[key]) / max(abs(b[key]), 1e-300) if a[key] != b[key] else 0.0
               for key in METRIC_KEYS)


def _timed(f):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    r = f()
    return r, time.perf_counter() - t


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; ``argv=None`` means defaults (no sys.argv parsing)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loop-samples", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads for every implementation (0: library defaults)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args([] if argv is None else argv)
    torch_threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        with _blas_threads(args.threads):
            return _run(args)
    finally:
        torch.set_num_threads(torch_threads)


@contextlib.contextmanager
def _blas_threads(n: int):  # type: ignore[no-untyped-def]
    """Limit numpy's BLAS pool too (threadpoolctl, present via scikit-learn) when n > 0."""
    if n <= 0:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - then only torch is limited
        yield
        return
    with threadpool_limits(n):
        yield


def _run(args: argparse.Namespace) -> dict[str, Any]:
    n, d, k = args.n, args.d, args.k
    load_start = os.getloadavg()[0]

    data = make_data(n, d, k)
    modes = ("cached", "online", "off")
    times: dict[str, list[float]] = {f"engine_{m}": [] for m in modes}
    times["naive"] = []
    results: dict[str, dict[str, float]] = {}
    engines: dict[str, NCAccumulator] = {}
    run_engine(data, "cached", args.batch)  # warm-up (thread pools, allocator)
    naive_numpy(data["h"][:2000], data["y"][:2000], data["w"], data["logits"][:2000])
    sub = _stratified(data["y"], k, args.loop_samples)
    data_sub = {key: (v[sub] if key != "w" else v) for key, v in data.items()}
    loop_pass: list[float] = []
    loop_fin: list[float] = []
    for _ in range(args.repeats):  # interleaved so background load hits all alike
        for m in modes:
            (res, acc), t = _timed(lambda m=m: run_engine(data, m, args.batch))
            times[f"engine_{m}"].append(t)
            results[f"engine_{m}"], engines[m] = res, acc
        res, t = _timed(lambda: naive_numpy(data["h"], data["y"], data["w"], data["logits"]))
        times["naive"].append(t)
        results["naive"] = res
        loop_res, tp, tf = loop_reference(data_sub["h"], data_sub["y"], data["w"],
                                          data_sub["logits"])
        loop_pass.append(tp)
        loop_fin.append(tf)
    loop_est = [tp * n / len(sub) + tf for tp, tf in zip(loop_pass, loop_fin)]
    times["loop_estimated"] = loop_est

    # Peak numpy allocation of the naive version (tracemalloc sees numpy's buffers).
    tracemalloc.start()
    naive_numpy(data["h"], data["y"], data["w"], data["logits"])
    naive_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    # Online NCC when the loader is not shuffled and the set is stored by class (ImageFolder).
    order = np.argsort(data["y"], kind="stable")
    sorted_online, _ = run_engine({key: (v[order] if key != "w" else v)
                                   for key, v in data.items()}, "online", args.batch)
    sub_engine, _ = run_engine(data_sub, "cached", args.batch)

    med = {key: statistics.median(v) for key, v in times.items()}
    eng = times["engine_cached"]
    ratio_naive = statistics.median(nv / e for nv, e in zip(times["naive"], eng))
    ratio_loop = statistics.median(lp / e for lp, e in zip(loop_est, eng))
    exact_nc4 = results["engine_cached"]["nc4"]
    online_nc4 = results["engine_online"]["nc4"]
    sb = engines["cached"].state_bytes()
    out: dict[str, Any] = {
        "config": {"n": n, "d": d, "k": k, "batch": args.batch, "repeats": args.repeats,
                   "loop_samples": int(len(sub)),
                   "features_dtype": "float32", "torch": torch.__version__,
                   "numpy": np.__version__, "cpu_count": os.cpu_count(),
                   "threads": args.threads or "library defaults",
                   "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                   "load_avg_1min_at_start": load_start,
                   "load_avg_1min_at_end": os.getloadavg()[0]},
        "seconds_median": med,
        "seconds_all": times,
        "loop": {"per_sample_passes_s_on_subset": loop_pass, "finalise_s": loop_fin,
                 "estimated_full_s": loop_est, "median_estimated_full_s":
                 statistics.median(loop_est),
                 "note": f"per-sample passes timed on {len(sub)} of {n} samples and scaled "
                         f"x{n / len(sub):.1f}; O(d^3) finalisation added unscaled"},
        "speedup": {"vs_naive_median_of_paired_ratios": ratio_naive,
                    "vs_loop_median_of_paired_ratios": ratio_loop},
        "memory_bytes": {"engine_stats": sb["stats"], "engine_staging_buffer": sb["buffer"],
                         "engine_ncc_cache": sb["ncc_cache"],
                         "engine_online_extra": engines["online"].state_bytes()["stats"]
                         - sb["stats"],
                         "naive_numpy_peak": naive_peak,
                         "one_float64_copy_of_H": n * d * 8},
        "agreement_max_rel": {"engine_vs_naive": _rel(results["engine_cached"],
                                                      results["naive"]),
                              "loop_vs_engine_on_subset": _rel(loop_res, sub_engine)},
        "nc4_options": {
            "exact_nc4": exact_nc4, "online_nc4": online_nc4,
            "online_abs_error": abs(online_nc4 - exact_nc4),
            "online_wrong_decisions_net": round(abs(online_nc4 - exact_nc4) * n),
            "online_nc4_class_sorted_order": sorted_online["nc4"],
            "online_abs_error_class_sorted_order": abs(sorted_online["nc4"] - exact_nc4),
            "cached_extra_s_vs_off": med["engine_cached"] - med["engine_off"],
            "online_extra_s_vs_off": med["engine_online"] - med["engine_off"],
            "cached_extra_bytes": sb["ncc_cache"],
            "chosen": "cached"},
        "metrics": results["engine_cached"],
        "targets": {"ge_10x_loop": ratio_loop >= 10.0, "no_slower_than_naive": ratio_naive >= 1.0},
    }
    _print(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return out


def _print(r: dict[str, Any]) -> None:
    c, s, mem = r["config"], r["seconds_median"], r["memory_bytes"]
    mb = 1e-6  # decimal MB
    print(f"NC metrics, N={c['n']:,} d={c['d']} K={c['k']}, float32 features, "
          f"{c['cpu_count']} CPUs, threads per implementation: {c['threads']} (torch and BLAS), "
          f"median of {c['repeats']} interleaved repeats, load avg "
          f"{c['load_avg_1min_at_start']:.1f} -> {c['load_avg_1min_at_end']:.1f}")
    rows = [
        ("engine, nc4 cached (default)", s["engine_cached"],
         (mem["engine_stats"] + mem["engine_staging_buffer"] + mem["engine_ncc_cache"]) * mb),
        ("engine, nc4 online", s["engine_online"],
         (mem["engine_stats"] + mem["engine_staging_buffer"] + mem["engine_online_extra"]) * mb),
        ("engine, nc4 off", s["engine_off"],
         (mem["engine_stats"] + mem["engine_staging_buffer"]) * mb),
        ("naive full-matrix numpy", s["naive"], mem["naive_numpy_peak"] * mb),
        ("per-sample Python loop (scaled)", r["loop"]["median_estimated_full_s"],
         float("nan")),
    ]
    print(text.table(["implementation", "seconds", "x engine", "memory MB"],
                     [[name, text.value(sec, fixed=3), text.value(sec / s["engine_cached"], fixed=2),
                       text.value(m, fixed=1)] for name, sec, m in rows]))
    print(f"loop: {r['loop']['note']}")
    print(f"speed-up vs naive (median of paired ratios): "
          f"{r['speedup']['vs_naive_median_of_paired_ratios']:.2f}x; vs loop: "
          f"{r['speedup']['vs_loop_median_of_paired_ratios']:.1f}x")
    print(f"engine memory: statistics {mem['engine_stats'] * mb:.1f} MB (O(K·d + d²)), staging "
          f"{mem['engine_staging_buffer'] * mb:.1f} MB, nc4 cache "
          f"{mem['engine_ncc_cache'] * mb:.1f} MB (O(N·d) float32, cached mode only)")
    a, o = r["agreement_max_rel"], r["nc4_options"]
    print(f"agreement: engine vs naive max rel {a['engine_vs_naive']:.1e}; loop vs engine "
          f"(subset) {a['loop_vs_engine_on_subset']:.1e}")
    print(f"nc4: exact {o['exact_nc4']:.5f}, online {o['online_nc4']:.5f} (abs err "
          f"{o['online_abs_error']:.5f}; class-sorted loader: "
          f"{o['online_nc4_class_sorted_order']:.5f}); extra s vs off: cached "
          f"{o['cached_extra_s_vs_off']:.3f}, "
          f"online {o['online_extra_s_vs_off']:.3f}")
    print(f"targets: {r['targets']}")


if __name__ == "__main__":
    main(sys.argv[1:])
