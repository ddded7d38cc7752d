"""The committed trajectory corpus (analysis/corpus) and the prior shipped from it."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from ncstudy.forecast.calibration import default_prior
from ncstudy.forecast.trajectories import load_corpus
from ncstudy.onset import onset_of

CORPUS = Path(__file__).resolve().parents[1] / "analysis" / "corpus"


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return pd.read_csv(CORPUS / "manifest.csv")


def test_corpus_spans_the_regimes_it_promises(manifest):
    assert len(manifest) >= 80 and manifest["file"].is_unique
    censored = manifest["t_nc"].isna()
    assert censored.sum() >= 15 and (~censored).sum() >= 15
    assert set(manifest["dataset"]) == {"mnist5k", "fashion_mnist"}
    assert set(manifest["activation"]) == {"relu", "tanh", "gelu"}
    assert manifest["depth"].between(3, 7).all() and manifest["width"].between(64, 512).all()
    assert manifest["weight_decay"].min() <= 1e-5 and manifest["weight_decay"].max() >= 1e-3
    # 46 configurations; the two seeds of 34 of them (analysis/corpus/README.md says why not all 46)
    seeds = manifest.groupby("config")["seed"].apply(set)
    assert len(seeds) == 46 and all(s in ({0}, {0, 1}) for s in seeds) and (seeds == {0, 1}).sum() >= 30


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
