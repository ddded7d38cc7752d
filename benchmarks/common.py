"""Shared helpers of the benchmarks: interleaved timing, paired ratios, machine facts, JSON.

Every figure of ``make bench`` is a ratio of two implementations timed alternately in the same
process, the median over repetitions of the per-repetition ratio: a shared machine's load moves
both sides of a pair alike, so it cancels out of the ratio (it does not cancel out of the
absolute seconds, which are reported too, for scale only).

Single-threaded compute benchmarks (1 and 2) record the process CPU time beside the wall time.
On a machine shared with other jobs the wall time of a one-thread loop includes the time it waited
for a core; its CPU time does not, and with one thread it equals the wall time of an idle machine.
Their ratios are taken on CPU time; the wall-time ratios are in the JSON too.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def interleave(fns: dict[str, Callable[[], Any]], reps: int,
               start: int = 0) -> dict[str, dict[str, list[float]]]:
    """Time each callable once per repetition, rotating the order every repetition.

    Rotation keeps any "first after a pause" or "right after the heavy one" effect from always
    landing on the same implementation. Returns ``{"wall": {name: [s, ...]}, "cpu": {...}}``.
    """
    names = list(fns)
    out: dict[str, dict[str, list[float]]] = {"wall": {n: [] for n in names}, "cpu": {n: [] for n in names}}
    for r in range(reps):
        k = (r + start) % len(names)
        for n in names[k:] + names[:k]:
            c, t = time.process_time(), time.perf_counter()
            fns[n]()
            out["wall"][n].append(time.perf_counter() - t)
            out["cpu"][n].append(time.process_time() - c)
    return out


def paired_ratios(num: list[float], den: list[float]) -> list[float]:
    return [a / b for a, b in zip(num, den)]


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: list[float]) -> list[float]:
    """[min, max] of a list of ratios: how much the repetitions disagreed."""
    return [float(min(xs)), float(max(xs))] if xs else []


def machine() -> dict[str, Any]:
    import torch

    return {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_avg_1min": os.getloadavg()[0]}


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Deadline:
    """A wall-clock budget shared by the benchmarks of one ``make bench`` run."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


# ---- Ray / MLflow helpers (benchmarks 3 and 4) ------------------------------------------------
def start_local_ray(num_cpus: int = 2) -> bool:
    """A private local Ray instance for the study benchmarks; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    import logging

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level=logging.WARNING)
    return True


def quiet_tune() -> None:
    from ncstudy.study.runner import QUIET_TUNE_ENV

    for k, v in QUIET_TUNE_ENV.items():
        os.environ.setdefault(k, v)


class HookTimer:
    """Wall time spent inside a Tune callback class's own hooks, in the driver.

    Tune calls callbacks synchronously in its control loop, and a function trainable waits for
    the driver to take each result, so this time is time the whole study waits. The class is
    patched (its hooks wrapped) while the ``with`` block runs.
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.names = [n for n, v in vars(cls).items()
                      if callable(v) and (n.startswith("on_") or n in ("setup", "get_state"))]
        self.seconds: dict[str, float] = {n: 0.0 for n in self.names}
        self.calls: dict[str, int] = {n: 0 for n in self.names}
        self._orig: dict[str, Any] = {}

    def __enter__(self) -> "HookTimer":
        import functools

        for n in self.names:
            orig = vars(self.cls)[n]
            self._orig[n] = orig

            @functools.wraps(orig)
            def wrapper(*a: Any, _orig: Any = orig, _n: str = n, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    self.seconds[_n] += time.perf_counter() - t
                    self.calls[_n] += 1

            setattr(self.cls, n, wrapper)
        return self

    def __exit__(self, *exc: Any) -> None:
        for n, orig in self._orig.items():
            setattr(self.cls, n, orig)

    def reset(self) -> None:
        for n in self.names:
            self.seconds[n], self.calls[n] = 0.0, 0

    @property
    def total(self) -> float:
        return sum(self.seconds.values())
