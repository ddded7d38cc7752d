"""ASHA and ncstudy's collapse-onset stopper in one Ray Tune search: ASHA cuts the trials whose NC1
lags at each rung, the stopper ends the others once their onset is forecast (or not expected within
the budget). Same trainable, search and checks as ``tune_own_loop.py``; only the scheduler is added.

    .venv/bin/python examples/tune_asha.py      # about a minute on 2 cores

The stopper is a ``ray.tune.Stopper``: it composes with any scheduler and searcher. ASHA ranks on
what the trial reports (here ``nc1``); the stopper writes its forecast into the same results.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mnist import EPOCHS, EVAL_EVERY  # noqa: E402
from tune_own_loop import check, run, show  # noqa: E402

if __name__ == "__main__":
    asha = ASHAScheduler(metric="nc1", mode="min", time_attr="epoch", max_t=EPOCHS,
                         grace_period=4 * EVAL_EVERY, reduction_factor=2)
    with tempfile.TemporaryDirectory(prefix="ncstudy-example-") as d:
        grid = run(Path(d), name="asha", scheduler=asha)  # OnsetStopper + ASHA (see tune_own_loop.run)
        show(grid)
        check(grid, f"sqlite:///{Path(d) / 'mlflow.db'}", "asha")
        cut = [r for r in grid if r.metrics["epoch"] < EPOCHS and not r.metrics.get("stop_reason")]
        ended = sum(bool(r.metrics.get("stop_reason")) for r in grid)
        print(f"ASHA cut {len(cut)} trial(s); the stopper ended {ended}")
