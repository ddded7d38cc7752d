"""The two-phase trainer: protocol, onset, resume, divergence, intervention."""
from __future__ import annotations

import math

import pytest
import torch

from ncstudy.config import TrainConfig, set_dotted
from ncstudy.logs import REFERENCE_COLUMNS, read_log
from ncstudy.train import Trainer, train


def synthetic_cfg(**over) -> TrainConfig:
    d = {
        "seed": 0, "device": "cpu", "threads": 1,
        # A recipe that collapses in ~100-150 epochs in a couple of seconds (measured: seeds 0-2,
        # widths 16-64 reach NC1 < 0.01 at epochs 100-145); SGD + strong weight decay drives it.
        "data": {"name": "synthetic", "num_classes": 4, "dim": 128, "n_train": 200, "n_test": 100, "separation": 8.0},
        "model": {"name": "mlp", "depth": 2, "width": 32},
        "optimizer": {"name": "sgd", "lr": 0.02, "weight_decay": 1e-2, "schedule": "constant"},
        "ce_epochs": 10, "mse_epochs": 190, "batch_size": 32,
        "eval": {"nc_every": 5, "stop_at_onset": True},
    }
    for k, v in over.items():
        set_dotted(d, k, v)
    return TrainConfig.model_validate(d)


def test_two_phase_reaches_onset_on_synthetic():
    cfg = synthetic_cfg()
    res = train(cfg)
    assert res.status == "completed" and res.stop_reason == "onset"
    o = res.onset
    assert o.t_nc is not None and o.t_nc < cfg.total_epochs and o.threshold == "strict"
    assert o.t_nc > cfg.ce_epochs  # onset counts phase-2 evaluations only (default)
    last = res.final
    assert last["epoch"] == o.t_nc and last["nc1"] < 0.01 and last["phase"] == 2
    assert math.isclose(o.fn_star, last["feat_norm"]) and o.fn_star > 0
    # evaluation cadence: every 5 epochs plus the phase-1 end, epochs numbered globally
    epochs = [r["epoch"] for r in res.records]
    assert epochs[:3] == [5, 10, 15] and all(b > a for a, b in zip(epochs, epochs[1:]))
    # NC metrics are NaN until terminal (train acc >= 0.99), then always present
    first_terminal = next(i for i, r in enumerate(res.records) if r["train"] >= 0.99)
    assert all(math.isnan(r["nc1"]) for r in res.records[:first_terminal])
    assert all(math.isfinite(r["nc1"]) for r in res.records[first_terminal:])
    assert [r["phase"] for r in res.records if r["epoch"] <= 10] == [1, 1]


def test_resume_from_state_is_exact():
    cfg = synthetic_cfg(**{"eval.stop_at_onset": False, "mse_epochs": 20})
    full = Trainer(cfg).run()
    first = Trainer(cfg)
    stop_at = {"epoch": 15}
    first.run(lambda rec, tr: "pause" if rec["epoch"] == stop_at["epoch"] else None)
    state = first.state_dict()
    second = Trainer(cfg)
    second.load_state_dict(state)
    evaluated: list[int] = []  # what the resumed trainer computes itself: only after the pause
    resumed = second.run(lambda rec, tr: evaluated.append(rec["epoch"]))
    assert evaluated == [20, 25, 30], evaluated  # not a retraining from epoch 0 (deterministic, so alike)
    assert resumed.epochs_run == full.epochs_run == 30
    for a, b in zip(full.records, resumed.records):
        for k in ("epoch", "train", "nc1", "feat_norm", "train_loss"):
            assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], rel=1e-6), k


def test_divergence_is_a_status_not_a_crash():
    cfg = synthetic_cfg(**{"optimizer.lr": 1e6, "optimizer.weight_decay": 0.0,
                           "eval.stop_at_onset": False})
    res = train(cfg)
    assert res.status == "diverged" and res.stop_reason == "diverged"
    assert not math.isfinite(res.final["train_loss"])


def test_intervention_scales_feature_norm_by_alpha():
    cfg = synthetic_cfg(**{"ce_epochs": 5, "mse_epochs": 1, "eval.stop_at_onset": False})
    t = Trainer(cfg)
    t.run(lambda rec, tr: "pause" if rec["epoch"] == 5 else None)
    x = t.data.x_train
    with torch.no_grad():
        before = t.model.features(x).norm(dim=1).mean().item()
    t._intervene(3.0)
    with torch.no_grad():
        after = t.model.features(x).norm(dim=1).mean().item()
    assert after == pytest.approx(3.0 * before, rel=1e-5)  # ReLU is positively homogeneous


def test_fresh_optimizer_and_schedule_at_switch():
    cfg = synthetic_cfg(**{"ce_epochs": 4, "mse_epochs": 4, "eval.nc_every": 1, "eval.stop_at_onset": False,
                           "optimizer.schedule": "cosine"})
    res = train(cfg)
    lrs = {r["epoch"]: r["lr"] for r in res.records}
    # cosine per phase: lr reaches ~0 at the end of phase 1 and restarts high in phase 2
    assert lrs[4] == pytest.approx(0.0, abs=1e-12)
    assert lrs[5] > 0.5 * cfg.optimizer.lr


def test_train_cli_writes_reference_log(tmp_path, capsys):
    import yaml

    from ncstudy.cli import main

    cfg = synthetic_cfg()
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump()))
    out = tmp_path / "run.csv"
    assert main(["train", str(p), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "T_NC =" in text and "fn* =" in text
    df = read_log(out)
    assert list(df.columns[:8]) == REFERENCE_COLUMNS
    assert df["nc1"].iloc[-1] < 0.01


@pytest.mark.slow
def test_mnist5k_scaled_down_paper_run():
    """The issue's scaled-down paper run: NC1 < 0.01 in phase 2, fn* in [0.8, 2.0]."""
    cfg = TrainConfig.model_validate({
        "seed": 0, "device": "cpu", "threads": 1,
        "data": {"name": "mnist5k"}, "model": {"name": "mlp", "depth": 5, "width": 256},
        "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine"},
        "ce_epochs": 30, "mse_epochs": 400, "batch_size": 64, "eval": {"nc_every": 10, "stop_at_onset": True},
    })
    res = train(cfg)
    assert res.stop_reason == "onset"
    assert res.onset.t_nc > 30 and res.final["phase"] == 2
    assert 0.8 <= res.onset.fn_star <= 2.0
