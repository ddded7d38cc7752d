"""``ncstudy replay --search``: searches for the fastest collapse replayed over logged runs -- the
simulation itself (orders, concurrency, the incumbent, the stoppers' rules), the figures it reports
on real trajectories, and the command's output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ncstudy.cli import main
from ncstudy.forecast import synthetic_trajectory
from ncstudy.forecast.search import SEARCH_STOPPERS, _Asha, prepare, replay_search
from ncstudy.runs import Run, load_corpus

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "analysis" / "corpus"
REF = ROOT.parent / "shared" / "reference" / "rupa2026_logs"


def _runs() -> list[Run]:
    """Six synthetic runs of known onsets (one never collapses), budget 600."""
    onsets = [330, 300, 420, None, 350, 390]
    out = []
    for i, t in enumerate(onsets):
        recs = synthetic_trajectory(t_nc=t or 300, collapse=t is not None, nc1_floor=0.03, seed=i)
        out.append(Run(f"r{i}", "g", recs, {"budget": 600}))
    return out


def test_the_baseline_and_capping_are_exact():
    runs = _runs()
    res = {s.stopper: s for s in replay_search(runs, ["none", "capping"], concurrent=1, repeats=30, seed=1)}
    base = 330 + 300 + 420 + 600 + 350 + 390  # stop-at-onset-or-budget
    assert res["none"].epochs_baseline == base and res["none"].epochs_mean == base
    assert res["none"].speedup == 1.0 and res["none"].found_best == 1.0
    cap = res["capping"]
    assert cap.true_best == 300 and cap.found_best == 1.0  # capping can never lose the best run
    assert 1.0 < cap.speedup and cap.epochs_mean < base
    # one at a time, a run is capped at the incumbent of the moment: never beyond the best onset seen
    assert cap.stops["capped"] + cap.stops["onset"] + cap.stops.get("budget", 0) == 6
    assert cap.stops.get("budget", 0) <= 1  # only if the never-collapsing run comes first


def test_a_single_order_by_hand():
    """Concurrency 1 and the runs in the order given: the incumbent after r0 is 330, r1 collapses at
    300 (< 330, never capped), then everything is capped at 300."""
    runs = _runs()
    prepared = prepare(runs)
    from ncstudy.forecast.search import _policy, _search_once
    from ncstudy.onset import OnsetRule

    policy = _policy("capping", "conformal", {}, OnsetRule(), 0.99, {}, 10.0, 600)
    used, reasons, answer = _search_once(prepared, list(range(6)), 1, policy)
    assert used == 330 + 300 + 300 * 4 and reasons == {"onset": 2, "capped": 4} and answer == "r1"


def test_asha_is_rays_bracket():
    asha = _Asha(grace=1, reduction=2, max_t=4)  # rungs at 1, 2 (and 4)
    run = prepare(_runs()[:1])[0]
    assert asha.observe(run, {"epoch": 1, "nc1": 0.5}) is None  # the first at a rung: nothing to compare
    other = prepare(_runs()[1:2])[0]
    assert asha.observe(other, {"epoch": 1, "nc1": 0.9}) == "asha"  # worse than the median of the rung


@pytest.fixture(scope="module")
def corpus_search():
    """The corpus searched with every forecast made without the run's whole dataset (MNIST runs judged
    by Fashion-MNIST ones and the reverse): a shift, and two pool builds instead of one per configuration."""
    return {s.stopper: s for s in replay_search(load_corpus(CORPUS), calibration="leave-one-group-out",
                                                holdout_by="dataset", repeats=40, seed=0)}


def test_on_the_corpus_search_mode_beats_capping_and_keeps_the_best(corpus_search):
    s = corpus_search
    assert set(s) == set(SEARCH_STOPPERS)
    assert s["capping"].found_best == 1.0 and s["capping"].speedup > 2.0
    # the corpus's fastest run collapses at epoch 80, 50-60 epochs into its MSE phase: capping alone
    # already cuts most runs there, and forecasts can only act before it (analysis/forecast/README.md)
    assert s["search"].found_best >= 0.95 and s["search"].speedup > 1.05 * s["capping"].speedup
    assert s["search"].stops["cannot_win"] > 10 and s["search"].speedup >= 3.0
    assert s["median"].found_best < 0.95  # the median rule on NC1 saves more, and loses the best run


def test_the_command_reports_speedup_and_found_best(capsys):
    logs = [str(REF / f"{name}.csv") for name in ("width128_s0", "width128_s1", "width256_s0", "width256_s1",
                                                    "depth5_s1", "actTanh_s0", "actGELU_s0", "wd0p0005_s0")]
    rc = main(["replay", *logs, "--group", "mlp/mnist", "--budget", "600", "--search", "--repeats", "20",
               "--stopper", "none", "--stopper", "capping", "--stopper", "search", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    sums = {r["summary"]["stopper"]: r["summary"] for r in out["results"]}
    assert set(sums) == {"none", "capping", "search"}
    for s in sums.values():
        assert {"speedup", "found_best", "epochs_mean", "epochs_baseline", "stops"} <= set(s)
    assert sums["none"]["speedup"] == 1.0 and sums["capping"]["found_best"] == 1.0
    assert sums["capping"]["speedup"] > 1.0 and out["options"]["repeats"] == 20
    assert main(["replay", *logs, "--search", "--concurrent", "0"]) == 2
    assert main(["replay", *logs, "--search", "--forecaster", "nc1", "--forecaster", "fn_star"]) == 2
