"""GPU check: ncstudy's Trainer on one NVIDIA GPU, with only torch and numpy installed.

Run through ``benchmarks/gpu_check.sh`` (which caps it at 8 minutes). Sections, in order of
importance, each skipped when the time budget (``GPU_CHECK_BUDGET_S``, default 440 s) is short:

1. ResNet-20 on CIFAR-10-size synthetic data (50,000 train / 10,000 test, 3 x 32 x 32, batch 128,
   SGD + Nesterov as the paper): eager fp32, + ``cudnn.benchmark``, bf16 autocast, bf16 +
   channels-last. Target: <= 2 s per epoch (amortised with the evaluation) on an H200.
2. MLP-5 (width 512) on MNIST-size data (60,000 / 10,000, 1 x 28 x 28, batch 128, Adam): eager
   fp32 and bf16.
3. Benchmark 1 on the GPU: the Trainer against the paper-style ``DataLoader`` loop and the bare
   loop (10,000 samples, batch 256, as ``benchmarks/trainer_epoch.py``), alternated.
4. Concurrent MLP trials: N = 1, 2, 4, 8 processes training MLP-5/MNIST-size on the one GPU at
   once; per-trial and total epochs/s, and the largest N that keeps >= 90 % of the single-trial
   throughput.
5. ``torch.compile`` (training forward and backward; evaluation stays eager) for both models,
   fp32 and bf16, and ``mode="reduce-overhead"`` (CUDA graphs) for ResNet-20; compile time is
   reported apart (it is paid once per trial process).

Every figure uses the real ``ncstudy.train.Trainer`` (its ``_train_epoch`` and ``evaluate``, the
two calls of its ``run`` loop), the real models and metrics. Epoch time is "amortised" at the
paper's cadence: median training epoch + one evaluation (terminal, so the NC metrics are
computed) / 10. Data are synthetic tensors of the real sizes (``ncstudy.data.make_synthetic``):
timing does not depend on pixel values.

Environment: ``GPU_CHECK_SMOKE=1`` runs tiny sizes on whatever device there is (CPU here) to
prove the script works before GPU time is spent; ``GPU_CHECK_TORCH_ONLY=1`` blocks pydantic,
PyYAML, Ray, MLflow, ... to prove it needs only torch and numpy; ``OUT`` (a folder) receives
``gpu_check.json`` (default ``benchmarks/results/gpu_check[_smoke].json``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMOKE = os.environ.get("GPU_CHECK_SMOKE") == "1"
TORCH_ONLY = os.environ.get("GPU_CHECK_TORCH_ONLY") == "1"
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "240" if SMOKE else "440"))
EVAL_EVERY = 10
RESNET_TARGET_S = 2.0


def setup_imports(torch_only: bool) -> bool:
    """Block the non-torch stack if asked, then make ncstudy importable; True if the shim is used."""
    from benchmarks._torchonly import BlockImports, install_config_shim

    if torch_only:
        BlockImports().install()
    return install_config_shim()


# ---- workloads ----------------------------------------------------------------------------
def sizes() -> dict[str, dict[str, Any]]:
    if SMOKE:
        # Tiny: every code path, seconds on a CPU (ResNet-20 on 8 x 8 inputs: the global pool
        # takes any size; bf16 convolutions are emulated on CPUs without bf16 units, hence slow).
        return {"resnet": {"n_train": 128, "n_test": 32, "batch": 32, "eval_batch": 64, "shape": (3, 8, 8)},
                "mlp": {"n_train": 512, "n_test": 128, "batch": 128, "eval_batch": 256, "width": 64},
                "bench1": {"n_train": 512, "n_test": 128, "batch": 256, "width": 64, "reps": 2},
                "concurrency": {"levels": [1, 2], "window_s": 2.0}, "epochs": 1}
    return {"resnet": {"n_train": 50_000, "n_test": 10_000, "batch": 128, "eval_batch": 4096, "shape": (3, 32, 32)},
            "mlp": {"n_train": 60_000, "n_test": 10_000, "batch": 128, "eval_batch": 4096, "width": 512},
            "bench1": {"n_train": 10_000, "n_test": 2_000, "batch": 256, "width": 512, "reps": 5},
            "concurrency": {"levels": [1, 2, 4, 8], "window_s": 12.0}, "epochs": 2}


def config_dict(model: str, device: str, batch: int, eval_batch: int, width: int = 512) -> dict[str, Any]:
    common = {"seed": 0, "device": device, "threads": 2, "batch_size": batch, "ce_epochs": 1000, "mse_epochs": 0,
              # terminal from the first evaluation: every timed evaluation computes the NC metrics
              "eval": {"nc_every": EVAL_EVERY, "terminal_acc": 1e-9, "batch_size": eval_batch}}
    if model == "resnet":
        return {**common, "data": {"name": "synthetic", "shape": [3, 32, 32], "num_classes": 10},
                "model": {"name": "resnet20"},
                "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
                              "schedule": "multistep", "milestones_ce": [100, 150], "gamma": 0.1}}
    return {**common, "data": {"name": "synthetic", "shape": [1, 28, 28], "num_classes": 10},
            "model": {"name": "mlp", "depth": 5, "width": width, "activation": "relu"},
            "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine"}}


def make_data(model: str, n_train: int, n_test: int, seed: int = 0, shape: tuple[int, ...] | None = None):
    from ncstudy.data import Dataset, make_synthetic

    shape = shape or ((3, 32, 32) if model == "resnet" else (1, 28, 28))
    x_tr, y_tr, x_te, y_te = make_synthetic(10, n_train, n_test, shape, separation=4.0, seed=seed)
    return Dataset(x_tr, y_tr, x_te, y_te, 10, f"synthetic-{model}", shape)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn) -> tuple[Any, float]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


# ---- one Trainer configuration ------------------------------------------------------------
def measure_variant(model: str, variant: dict[str, Any], data, device: str, sz: dict[str, Any]) -> dict[str, Any]:
    import torch

    from benchmarks._torchonly import train_config
    from ncstudy.train import Trainer

    w = sz[model]
    cfg = train_config(config_dict(model, device, w["batch"], w["eval_batch"], w.get("width", 512)))
    prev_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(variant.get("cudnn_benchmark"))
    try:
        tr = Trainer(cfg, data)
        if variant.get("channels_last"):
            tr.model.to(memory_format=torch.channels_last)
            tr.data.x_train = tr.data.x_train.contiguous(memory_format=torch.channels_last)
            tr.data.x_test = tr.data.x_test.contiguous(memory_format=torch.channels_last)
        if variant.get("compile"):
            backend = os.environ.get("GPU_CHECK_COMPILE_BACKEND", "eager" if SMOKE else "inductor")
            kw: dict[str, Any] = {"backend": backend, "dynamic": False}
            if backend == "inductor" and variant.get("mode"):
                kw["mode"] = variant["mode"]
            tr.model.compile(**kw)  # training forward/backward; evaluate() calls forward_with_features (eager)
        amp = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
               if variant.get("amp") else contextlib.nullcontext())
        loss = {"v": math.nan}

        def epoch() -> None:
            loss["v"], _ = tr._train_epoch()
            tr.epoch += 1

        with amp:
            _, first = timed(device, epoch)  # includes compilation for compiled variants
            timed(device, lambda: tr.evaluate(loss["v"]))  # becomes terminal (a double pass, once)
            epochs = [timed(device, epoch)[1] for _ in range(sz["epochs"])]
            rec, ev = timed(device, lambda: tr.evaluate(loss["v"]))
        e = statistics.median(epochs)
        amort = e + ev / EVAL_EVERY
        out = {"epoch_s": epochs, "eval_s": ev, "amortised_epoch_s": amort, "epochs_per_s": 1.0 / amort,
               "first_epoch_s": first, "compile_overhead_s": max(0.0, first - e) if variant.get("compile") else None,
               "nc1": rec["nc1"], "train_acc": rec["train"], "loss_finite": math.isfinite(loss["v"])}
        if device.startswith("cuda"):
            out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        return out
    finally:
        torch.backends.cudnn.benchmark = prev_bench
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


# ---- benchmark 1 on this device -----------------------------------------------------------
def bench1(device: str, sz: dict[str, Any]) -> dict[str, Any]:
    import torch

    from benchmarks._torchonly import train_config
    from benchmarks.common import interleave, median, paired_ratios, spread
    from benchmarks.trainer_epoch import BareImpl, NcstudyImpl, PaperImpl

    b = sz["bench1"]
    data = make_data("mlp", b["n_train"], b["n_test"])
    d = config_dict("mlp", device, b["batch"], 4096, b["width"])
    cfg = train_config(d)
    impls = {"ncstudy": NcstudyImpl(cfg, data), "paper": PaperImpl(cfg, data), "bare": BareImpl(cfg, data)}
    for i in impls.values():
        i.warm()

    def synced(fn):
        def run() -> None:
            fn()
            sync(device)
        return run

    fns = {"ncstudy_epoch": synced(impls["ncstudy"].epoch), "ncstudy_eval": synced(impls["ncstudy"].evaluation),
           "paper_epoch": synced(impls["paper"].epoch), "paper_eval": synced(impls["paper"].evaluation),
           "bare_epoch": synced(impls["bare"].epoch)}
    for f in fns.values():  # one untimed round: cuBLAS handles, allocator, DataLoader
        f()
    t = interleave(fns, b["reps"])["wall"]
    am_n = [e + v / EVAL_EVERY for e, v in zip(t["ncstudy_epoch"], t["ncstudy_eval"])]
    am_p = [e + v / EVAL_EVERY for e, v in zip(t["paper_epoch"], t["paper_eval"])]
    rp, rb = paired_ratios(am_p, am_n), paired_ratios(am_n, t["bare_epoch"])
    del impls
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"config": {**b, "model": f"mlp depth 5 width {b['width']}"}, "seconds": t,
            "paper_over_ncstudy": median(rp), "paper_over_ncstudy_spread": spread(rp),
            "ncstudy_over_bare": median(rb), "ncstudy_over_bare_spread": spread(rb),
            "amortised_epoch_s": {"ncstudy": median(am_n), "paper": median(am_p), "bare": median(t["bare_epoch"])}}


# ---- concurrent trials --------------------------------------------------------------------
def _worker(rank: int, barrier, queue, window_s: float, device: str, torch_only: bool) -> None:
    try:
        setup_imports(torch_only)
        import torch

        from benchmarks._torchonly import train_config
        from ncstudy.train import Trainer

        w = sizes()["mlp"]  # the child re-imports this module: SMOKE comes from the same environment
        cfg = train_config(config_dict("mlp", device, w["batch"], w["eval_batch"], w["width"]))
        tr = Trainer(cfg, make_data("mlp", w["n_train"], w["n_test"], seed=rank))
        loss, _ = tr._train_epoch()
        tr.evaluate(loss)  # warm-up and terminal
        sync(device)
        barrier.wait(timeout=300)
        t0, n, evals = time.perf_counter(), 0, 0
        while time.perf_counter() - t0 < window_s:
            loss, _ = tr._train_epoch()
            tr.epoch += 1
            n += 1
            if n % EVAL_EVERY == 0:
                tr.evaluate(loss)
                evals += 1
        sync(device)
        el = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        queue.put({"rank": rank, "epochs": n, "evals": evals, "seconds": el, "epochs_per_s": n / el,
                   "max_memory_gib": mem})
    except Exception as e:  # reported by the parent
        queue.put({"rank": rank, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        with contextlib.suppress(Exception):
            barrier.abort()


def concurrency(device: str, sz: dict[str, Any], deadline: float) -> dict[str, Any]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    c = sz["concurrency"]
    levels: dict[str, Any] = {}
    for n in c["levels"]:
        if time.monotonic() + c["window_s"] + 45 > deadline:
            levels[str(n)] = {"skipped": "time budget"}
            continue
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(r, barrier, queue, c["window_s"], device, TORCH_ONLY), daemon=True)
                 for r in range(n)]
        t = time.perf_counter()
        for p in procs:
            p.start()
        got = []
        for _ in range(n):
            try:
                got.append(queue.get(timeout=max(10.0, deadline - time.monotonic())))
            except Exception:
                break
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        errors = [g for g in got if "error" in g]
        ok = [g for g in got if "error" not in g]
        per = [g["epochs_per_s"] for g in ok]
        levels[str(n)] = {"processes": n, "per_trial_epochs_per_s": per,
                          "mean_per_trial_epochs_per_s": statistics.mean(per) if per else None,
                          "total_epochs_per_s": sum(per) if per else None, "errors": errors,
                          "wall_s": time.perf_counter() - t,
                          "max_memory_gib": max((g["max_memory_gib"] or 0) for g in ok) if ok else None}
    base = (levels.get("1") or {}).get("mean_per_trial_epochs_per_s")
    fits = None
    for n in c["levels"]:
        lv = levels[str(n)]
        m = lv.get("mean_per_trial_epochs_per_s")
        if base and m:
            lv["per_trial_vs_single"] = m / base
            if m / base >= 0.9 and (fits is None or fits == _prev(c["levels"], n)):
                fits = n
    return {"window_s": c["window_s"], "levels": levels, "fits_at_90pct_per_trial": fits}


def _prev(levels: list[int], n: int) -> int | None:
    i = levels.index(n)
    return levels[i - 1] if i else None


# ---- main -------------------------------------------------------------------------------------
RESNET_EAGER = [
    ("fp32", {}),
    ("fp32 cudnn.benchmark", {"cudnn_benchmark": True}),
    ("bf16 cudnn.benchmark", {"amp": True, "cudnn_benchmark": True}),
    ("bf16 cudnn.benchmark channels_last", {"amp": True, "cudnn_benchmark": True, "channels_last": True}),
]
MLP_EAGER = [("fp32", {}), ("bf16", {"amp": True})]
COMPILED = [
    ("mlp", "fp32 compile", {"compile": True}),
    ("mlp", "bf16 compile", {"amp": True, "compile": True}),
    ("resnet", "fp32 cudnn.benchmark compile", {"compile": True, "cudnn_benchmark": True}),
    ("resnet", "bf16 cudnn.benchmark compile", {"amp": True, "compile": True, "cudnn_benchmark": True}),
    ("resnet", "bf16 cudnn.benchmark compile reduce-overhead",
     {"amp": True, "compile": True, "cudnn_benchmark": True, "mode": "reduce-overhead"}),
]


def out_path() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return ROOT / "benchmarks" / "results" / ("gpu_check_smoke.json" if SMOKE else "gpu_check.json")


class _Terminated(BaseException):  # not caught by the per-section "except Exception"
    pass


def _on_term(signum: int, frame: Any) -> None:
    raise _Terminated()


def main() -> int:
    import signal

    signal.signal(signal.SIGTERM, _on_term)  # gpu_check.sh's timeout: print what was measured
    t_start = time.monotonic()
    deadline = t_start + BUDGET_S
    shim = setup_imports(TORCH_ONLY)
    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not SMOKE:
        print("gpu_check: no CUDA device visible; for the CPU smoke test set GPU_CHECK_SMOKE=1", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    if SMOKE and not cuda:
        torch.set_num_threads(2)
    sz = sizes()
    res: dict[str, Any] = {
        "smoke": SMOKE, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__,
        "config_shim": shim, "torch_only_simulated": TORCH_ONLY, "budget_s": BUDGET_S,
        "sizes": sz, "resnet20": {}, "mlp5": {}, "bench1": None, "concurrency": None, "errors": {},
    }
    if SMOKE and not shim:  # the shim's defaults must match the real config (where pydantic exists)
        from benchmarks._torchonly import check_namespace_matches

        for m in ("resnet", "mlp"):
            check_namespace_matches(config_dict(m, device, 64, 128))
        res["namespace_config_checked"] = True
    path = out_path()

    def save() -> None:
        res["elapsed_s"] = time.monotonic() - t_start
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2, default=float) + "\n")

    def attempt(label: str, need_s: float, fn) -> dict[str, Any]:
        if time.monotonic() + need_s > deadline:
            print(f"[gpu_check] {label}: skipped (time budget)", flush=True)
            return {"skipped": "time budget"}
        print(f"[gpu_check] {label} ...", flush=True)
        try:
            return fn()
        except Exception as e:
            res["errors"][label] = traceback.format_exc()
            print(res["errors"][label], file=sys.stderr)
            return {"error": f"{type(e).__name__}: {e}"}

    try:
        data = {"resnet": make_data("resnet", sz["resnet"]["n_train"], sz["resnet"]["n_test"],
                                    shape=sz["resnet"]["shape"]).to(device),
                "mlp": make_data("mlp", sz["mlp"]["n_train"], sz["mlp"]["n_test"]).to(device)}
        for label, v in RESNET_EAGER:
            res["resnet20"][label] = attempt(f"ResNet-20 {label}", 25,
                                             lambda v=v: measure_variant("resnet", v, data["resnet"], device, sz))
            save()
        for label, v in MLP_EAGER:
            res["mlp5"][label] = attempt(f"MLP-5 {label}", 15,
                                         lambda v=v: measure_variant("mlp", v, data["mlp"], device, sz))
            save()
        res["bench1"] = attempt("benchmark 1 on this device", 30, lambda: bench1(device, sz))
        save()
        res["concurrency"] = attempt("concurrent MLP trials", 60, lambda: concurrency(device, sz, deadline - 5))
        save()
        for model, label, v in COMPILED:
            key = "resnet20" if model == "resnet" else "mlp5"
            res[key][label] = attempt(f"{key} {label}", 100 if model == "resnet" and not SMOKE else 40,
                                      lambda model=model, v=v: measure_variant(model, v, data[model], device, sz))
            save()
    except _Terminated:
        res["errors"]["terminated"] = "stopped by gpu_check.sh's time cap; the sections above are complete"
        print("[gpu_check] time cap reached: stopping", file=sys.stderr, flush=True)
    res["elapsed_s"] = time.monotonic() - t_start
    save()
    print_table(res)
    print(f"wrote {path}")
    failed = [k for k in res["errors"]]
    return 1 if failed else 0


def print_table(res: dict[str, Any]) -> None:
    from ncstudy import text  # pure Python: importable on a torch-only machine

    print()
    print(f"GPU check on {res['device']} (torch {res['torch']}, CUDA {res['cuda']}){' SMOKE' if res['smoke'] else ''}; "
          f"epoch = training epoch + evaluation/{EVAL_EVERY} (NC metrics at each evaluation)")
    rows = []
    for key, name in (("resnet20", "ResNet-20"), ("mlp5", "MLP-5")):
        for label, r in res[key].items():
            if "amortised_epoch_s" not in r:  # a variant that did not run: why, in the s/epoch column
                rows.append([name, label, text.value(next(iter(r.values())) if r else None), "", "", ""])
                continue
            rows.append([name, label, text.value(r["amortised_epoch_s"], fixed=3),
                         text.value(r["epochs_per_s"], fixed=2), text.value(r.get("compile_overhead_s"), fixed=1),
                         text.value(r.get("max_memory_gib") or None, fixed=1)])
    print(text.table(["model", "variant", "s/epoch", "epochs/s", "compile s", "GiB"], rows))
    base = res["resnet20"].get("fp32", {})
    if "amortised_epoch_s" in base:
        best = min((r["amortised_epoch_s"], k) for k, r in res["resnet20"].items() if "amortised_epoch_s" in r)
        verdict = "smoke sizes: no verdict" if res["smoke"] else (
            "met" if base["amortised_epoch_s"] <= RESNET_TARGET_S else "missed")
        print(f"ResNet-20 target <= {RESNET_TARGET_S} s/epoch: eager fp32 {base['amortised_epoch_s']:.2f} s "
              f"({verdict}); best {best[0]:.2f} s ({best[1]})")
    b = res.get("bench1")
    if b and "paper_over_ncstudy" in b:
        print(f"benchmark 1 on this device: paper-style loop / Trainer {b['paper_over_ncstudy']:.2f}x (target >= 2), "
              f"Trainer / bare loop {b['ncstudy_over_bare']:.3f}x (target <= 1.15)")
    c = res.get("concurrency")
    if c and "levels" in c:
        for n, lv in c["levels"].items():
            if lv.get("mean_per_trial_epochs_per_s"):
                print(f"concurrent MLP trials N={n}: per trial {lv['mean_per_trial_epochs_per_s']:.2f} epochs/s "
                      f"({lv.get('per_trial_vs_single', float('nan')):.0%} of N=1), "
                      f"total {lv['total_epochs_per_s']:.2f}"
                      f"{', errors ' + str(len(lv['errors'])) if lv['errors'] else ''}")
            else:
                print(f"concurrent MLP trials N={n}: {lv.get('skipped') or lv.get('errors')}")
        print(f"trials that fit with >= 90% per-trial throughput: {c['fits_at_90pct_per_trial']}")
    if res["errors"]:
        print(f"errors in: {', '.join(res['errors'])}")


if __name__ == "__main__":
    sys.exit(main())
