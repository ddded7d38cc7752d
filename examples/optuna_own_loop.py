"""Your own PyTorch loop in an Optuna study, stopped by ncstudy's collapse-onset forecast.

    .venv/bin/python examples/optuna_own_loop.py      # about a minute on 2 cores

Three lines adopt the pruner (marked ``# ncstudy``): create it, ask it each evaluation, return its
value. The study minimises that value, so the pruner runs a *search* for the fastest collapse: a
trial that cannot beat the earliest onset seen so far is stopped (``capped`` at that epoch,
``cannot_win`` earlier on the forecast). ``pruner.value(trial)`` is the collapse-time objective --
the observed onset, a search stop's censored value (after the best one), the censored ``2 x budget``
when no onset is expected -- and the forecast is left on the trial as user attributes
(``t_nc_estimate``, ``t_nc_low``, ``t_nc_high``, ``p_onset``, ``stop_reason``, ``t_nc``), where the
study, its dataframe and optuna-dashboard show it.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mnist import CE_EPOCHS, EPOCHS, EVAL_EVERY, mlp, mnist_1000, train_epoch  # noqa: E402

from ncstudy.adapters.optuna_pruner import OnsetPruner  # noqa: E402
from ncstudy.metrics import measure  # noqa: E402

pruner = OnsetPruner(budget=EPOCHS)  # ncstudy


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 5e-4, 3e-3, log=True)
    width = trial.suggest_categorical("width", [64, 128])
    torch.manual_seed(trial.number)
    torch.set_num_threads(1)
    data = mnist_1000()
    loader, full = DataLoader(data, batch_size=64, shuffle=True), DataLoader(data, batch_size=1000)
    model = mlp(width)
    for epoch in range(1, EPOCHS + 1):
        phase = 1 if epoch <= CE_EPOCHS else 2
        if epoch in (1, CE_EPOCHS + 1):
            opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
        loss = train_epoch(model, loader, opt, phase)
        if epoch % EVAL_EVERY == 0 and pruner.should_stop(  # ncstudy
                trial, {"epoch": epoch, "phase": phase, "train_loss": loss, **measure(model, full)}):
            break
    return pruner.value(trial)  # ncstudy


def check(study: optuna.Study) -> None:
    """The forecast reached the study: every value is the collapse-time objective of its trial."""
    best = study.best_value
    for t in study.trials:
        a = t.user_attrs
        assert t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)
        assert 0.0 <= a["p_onset"] <= 1.0
        assert a["stop_reason"] in ("onset", "cannot_win", "capped", "no_onset_forecast", "budget"), a
        if a["stop_reason"] == "onset":
            assert t.value == a["t_nc"] >= best
        elif a["stop_reason"] in ("cannot_win", "capped"):  # ranks after the incumbent
            assert t.value > best and t.value >= a["t_nc_low"]
        else:
            assert t.value >= 2 * EPOCHS
    print("checked: each trial's value is its observed onset, or a censored value after the best one")


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=pruner, sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=3)
    for t in study.trials:
        a = t.user_attrs
        print(f"trial {t.number} lr {t.params['lr']:.2g} width {t.params['width']}: {a['stop_reason']}, "
              f"t_nc_estimate {a.get('t_nc_estimate', math.nan):.1f}, p_onset {a['p_onset']:.2f}, value {t.value:.1f}")
    check(study)
