"""Your own PyTorch loop in a Ray Tune search, stopped by ncstudy's collapse-onset forecast and
tracked by Ray's own MLflow callback.

    .venv/bin/python examples/tune_own_loop.py      # about a minute on 2 cores

The lines that adopt the stopper are marked ``# ncstudy``: the helper that measures NC on your
model, and the stopper given to Tune. Every result then carries ``t_nc_estimate`` (the forecast
onset, or the observed one), ``t_nc_low``/``t_nc_high``, ``p_onset`` and the ``collapse_epoch``
objective. The stopper runs a *search* here (its default for the collapse-time objective): a trial
that cannot beat the earliest onset seen so far is stopped (``capped`` once it reaches that epoch,
``cannot_win`` earlier on the forecast) and reports a collapse time after the best one; one stopped
because no onset is expected within its budget reports the censored ``2 x budget``; with
``OnsetStopper(mode="sweep")`` every trial runs to its onset or a trusted forecast of it instead.
Ray's ``MLflowLoggerCallback``,
``result.json`` and ``ResultGrid.get_best_result`` see the same numbers, which the end of this
script checks.
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mnist import CE_EPOCHS, EPOCHS, EVAL_EVERY, mlp, mnist_1000, train_epoch  # noqa: E402

from ncstudy.adapters.ray_tune import OnsetStopper  # noqa: E402  # ncstudy
from ncstudy.metrics import measure  # noqa: E402  # ncstudy


def train_fn(config: dict) -> None:
    torch.manual_seed(config["seed"])
    torch.set_num_threads(1)
    data = mnist_1000()
    loader, full = DataLoader(data, batch_size=64, shuffle=True), DataLoader(data, batch_size=1000)
    model = mlp(config["width"])
    for epoch in range(1, EPOCHS + 1):
        phase = 1 if epoch <= CE_EPOCHS else 2
        if epoch in (1, CE_EPOCHS + 1):  # a fresh optimiser per phase
            opt = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=1e-4)
        loss = train_epoch(model, loader, opt, phase)
        if epoch % EVAL_EVERY == 0:
            tune.report({"epoch": epoch, "phase": phase, "train_loss": loss,
                         **measure(model, full)})  # ncstudy: train accuracy, feat_norm, NC1-NC4


def run(root: Path, name: str = "own_loop", scheduler=None):
    """The search: 2 learning rates x 2 widths, the stopper, Ray's MLflow callback (and a scheduler,
    in ``tune_asha.py``)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stopper = OnsetStopper(budget=EPOCHS)  # ncstudy
        tuner = tune.Tuner(
            train_fn,
            param_space={"lr": tune.grid_search([1e-3, 2e-3]), "width": tune.grid_search([64, 128]), "seed": 0},
            tune_config=tune.TuneConfig(scheduler=scheduler),
            run_config=tune.RunConfig(
                name=name, storage_path=str(root / "results"), verbose=0,
                stop=stopper, callbacks=[stopper,  # ncstudy
                                         MLflowLoggerCallback(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                                                              experiment_name=name)]))
        return tuner.fit()
    finally:
        ray.shutdown()


def show(grid) -> None:
    for r in grid:
        m = r.metrics
        print(f"lr {r.config['lr']:g} width {r.config['width']}: ran to epoch {m['epoch']}, "
              f"stop reason {m.get('stop_reason') or 'budget'}, t_nc_estimate {m['t_nc_estimate']:.1f} "
              f"[{m['t_nc_low']:.1f}, {m['t_nc_high']:.1f}], p_onset {m['p_onset']:.2f}, "
              f"collapse_epoch {m['collapse_epoch']:.1f}")
    best = grid.get_best_result(metric="collapse_epoch", mode="min")
    print(f"best: lr {best.config['lr']:g} width {best.config['width']}: collapse_epoch "
          f"{best.metrics['collapse_epoch']:.1f}")


def check(grid, tracking_uri: str, experiment: str) -> None:
    """The forecast is what every consumer of the results sees."""
    from mlflow.tracking import MlflowClient

    assert not grid.errors, grid.errors
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    best = grid.get_best_result(metric="collapse_epoch", mode="min")  # NaN objectives are left out
    assert best.metrics["collapse_epoch"] == min(r.metrics["collapse_epoch"] for r in grid
                                                 if math.isfinite(r.metrics["collapse_epoch"]))
    for r in grid:
        m = r.metrics
        if math.isnan(m["collapse_epoch"]):  # only a trial another scheduler (ASHA) cut: the stopper did not
            assert not m.get("stop_reason") and m["epoch"] < EPOCHS, m
            continue
        assert 0.0 <= m["p_onset"] <= 1.0
        last = json.loads(Path(r.path, "result.json").read_text().splitlines()[-1])
        logged = next(x for x in runs if x.data.tags["trial_name"].endswith(m["trial_id"])).data.metrics
        for key in ("collapse_epoch", "t_nc_estimate", "p_onset"):  # result.json = ResultGrid = MLflow
            assert last[key] == m[key] or math.isnan(last[key]) and math.isnan(m[key]), key
            assert logged[key] == m[key] or math.isnan(logged[key]) and math.isnan(m[key]), key
        if m.get("stop_reason") == "forecast":  # the objective of a forecast stop is the forecast
            assert m["collapse_epoch"] == m["t_nc_estimate"] > m["epoch"]
        elif m.get("stop_reason") == "no_onset_forecast":  # collapse not expected within the budget
            assert m["collapse_epoch"] >= 2 * EPOCHS and m["epoch"] < EPOCHS
        elif m.get("stop_reason") in ("cannot_win", "capped"):  # a search: it cannot beat the best so far
            assert m["collapse_epoch"] > best.metrics["collapse_epoch"], m
    print("checked: result.json, get_best_result and MLflow hold the same forecast and collapse_epoch")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="ncstudy-example-") as d:
        grid = run(Path(d))
        show(grid)
        check(grid, f"sqlite:///{Path(d) / 'mlflow.db'}", "own_loop")
