"""The committed trajectory corpus (analysis/corpus) and the prior shipped from it."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from ncstudy.forecast.calibration import default_prior
from ncstudy.onset import onset_of
from ncstudy.runs import load_corpus

CORPUS = Path(__file__).resolve().parents[1] / "analysis" / "corpus"


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return pd.read_csv(CORPUS / "manifest.csv")


def test_corpus_spans_the_regimes_it_promises(manifest):
    assert len(manifest) >= 150 and manifest["file"].is_unique and manifest["config"].notna().all()
    censored = manifest["t_nc"].isna()
    assert censored.sum() >= 15 and (~censored).sum() >= 30
    assert set(manifest["dataset"]) == {"mnist5k", "fashion_mnist"}
    assert set(manifest["activation"]) == {"relu", "tanh", "gelu", "silu", "leaky_relu"}
    assert set(manifest["optimizer"]) == {"adam", "sgd", "adamw"}
    assert set(manifest["schedule"]) == {"cosine", "constant"}
    assert manifest["depth"].between(3, 7).all() and manifest["width"].between(64, 512).all()
    assert manifest["weight_decay"].min() <= 1e-5 and manifest["weight_decay"].max() >= 1e-3
    assert manifest["budget"].min() <= 200 and manifest["budget"].max() >= 800  # MSE phases 170-770 epochs
    assert set(manifest["batch_size"]) == {32, 64, 128, 256} and manifest["n_train"].nunique() >= 4
    base, shift = manifest[manifest["part"] == "base"], manifest[manifest["part"] == "shift"]
    # base: 46 configurations, the two seeds of 34 of them (analysis/corpus/README.md says why not all 46)
    seeds = base.groupby("config")["seed"].apply(set)
    assert len(seeds) == 46 and all(s in ({0}, {0, 1}) for s in seeds) and (seeds == {0, 1}).sum() >= 30
    # shift: one run per configuration (75 of the 76 drawn: one diverged)
    assert shift["config"].is_unique and len(shift) == 75


def test_manifest_onsets_are_those_of_the_logs(manifest):
    runs = {t.run_id: t for t in load_corpus(CORPUS)}
    assert len(runs) == len(manifest)
    for row in manifest.itertuples():
        traj = runs[row.run]
        t = onset_of(traj.records, relaxed_fallback=False).t_strict
        assert (t is None and math.isnan(row.t_nc)) or t == row.t_nc
        assert traj.records[-1]["epoch"] <= row.budget
        assert {"train_loss", "grad_norm", "weight_norm"} <= set(traj.records[-1])


def test_shipped_prior_is_the_corpus(manifest):
    cal = default_prior()
    pooled = {r.run_id: r for _, r in cal.runs()}
    assert set(pooled) == set(manifest["run"])
    for row in manifest.itertuples():
        r = pooled[row.run]
        assert (r.t_nc is None and math.isnan(row.t_nc)) or r.t_nc == row.t_nc
