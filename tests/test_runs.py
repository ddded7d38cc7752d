"""ncstudy.runs: the one run type and the one loader of per-epoch logs (replay, analysis, corpus)."""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import pandas as pd
import pytest

from ncstudy.errors import InputError, LogFormatError
from ncstudy.runs import (
    Run,
    attrs_from_filename,
    attrs_from_params,
    group_of,
    load_corpus,
    load_runs,
    log_stem,
    read_manifest,
    read_run,
)

_ROOT = Path(__file__).resolve().parents[1]
REF = _ROOT.parent / "shared" / "reference" / "rupa2026_logs"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason="reference logs not available")
MANIFEST = _ROOT / "ncstudy" / "analyze" / "presets" / "rupa2026_runs.csv"
CORPUS = _ROOT / "analysis" / "corpus"


def _log(path: Path, rows: list[str], header: str = "epoch,phase,train,test,nc1,nc2,nc3,feat_norm") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@needs_ref
def test_a_reference_log_read_once_gives_records_and_frame_alike():
    run = read_run(REF / "width128_s0.csv")
    # what the file name spells out; no model/dataset, so the default group
    assert run.run_id == "width128_s0" and run.source == str(REF / "width128_s0.csv")
    assert run.attrs == {"width": 128, "seed": 0, "group": "width128"} and run.group == "default"
    assert run.has_log and run.origin == "log" and run.name is None
    # the file's first row (reference README: one row per 10 epochs), in both forms
    first = run.records[0]
    assert (first["epoch"], first["phase"]) == (10, 1)
    assert first["nc1"] == pytest.approx(0.4987231194972992) and first["feat_norm"] == pytest.approx(40.777774810791016)
    assert len(run.records) == len(run.frame) == 40
    assert run.frame["epoch"].tolist() == [r["epoch"] for r in run.records]
    assert run.frame["nc1"].iloc[0] == first["nc1"]


@needs_ref
def test_the_manifest_gives_attributes_group_and_phases():
    skipped: list[str] = []
    runs = {r.run_id: r for r in load_runs(REF, MANIFEST, skipped=skipped)}
    twophase = runs["mnist_twophase"]
    assert twophase.group == "mlp/mnist" and twophase.attrs["cell"] == "baseline" and twophase.attrs["seed"] == 0
    assert runs["cifar10_s0"].group == "resnet20/cifar10"
    # gelu_s3.csv has no phase column: the manifest's ce_epochs (200) labels the phases
    gelu = runs["gelu_s3"]
    assert "phase" in gelu.frame.columns
    assert {r["phase"] for r in gelu.records if r["epoch"] <= 200} == {1}
    assert {r["phase"] for r in gelu.records if r["epoch"] > 200} == {2}
    # summary tables are no logs: skipped, each with the reason naming the file
    assert "sweep_width" not in runs and any("sweep_width.csv: missing required column(s)" in s for s in skipped)
    # one group rule set for every consumer
    assert {r.group for r in load_runs(REF / "width128_s0.csv", MANIFEST, group_by="cell")} == {"mlp/mnist/width128"}
    assert {r.group for r in load_runs(REF / "width128_s0.csv", group="mine")} == {"mine"}


def test_attributes_from_a_flattened_config_one_name_per_quantity():
    params = {"model.name": "mlp", "data.name": "mnist", "model.width": "128", "model.depth": "3",
              "optimizer.lr": "0.001", "optimizer.weight_decay": "5e-4", "seed": "2", "intervention_alpha": "None",
              "ce_epochs": "200", "mse_epochs": "400", "optimizer.momentum": "0.9"}
    a = attrs_from_params(params)
    assert a == {"model": "mlp", "dataset": "mnist", "depth": 3, "width": 128, "weight_decay": 0.0005, "lr": 0.001,
                 "seed": 2, "intervention_alpha": None, "ce_epochs": 200, "mse_epochs": 400, "budget": 600,
                 "optimizer.momentum": "0.9"}
    # the same names and types a file name gives
    f = attrs_from_filename("depth3_width128_wd0p0005_lr0p001_s2")
    assert {k: f[k] for k in ("depth", "width", "weight_decay", "lr", "seed")} == \
        {k: a[k] for k in ("depth", "width", "weight_decay", "lr", "seed")}
    # model/dataset from the tags when the params lack them; MLP-only keys mean nothing for others
    b = attrs_from_params({"model.width": "64", "seed": "1"}, {"model": "resnet20", "dataset": "cifar10"})
    assert b == {"width": None, "seed": 1, "model": "resnet20", "dataset": "cifar10", "depth": None, "activation": None}
    # a dotted config key reads the attribute it names
    run = Run("r", attrs=a)
    assert run.attr("model.width") == run.attr("width") == 128 and run.attr("optimizer.momentum") == "0.9"
    assert run.attr("config") is None and run.budget == 600


def test_file_name_tokens_and_group_rules():
    assert attrs_from_filename("depth3_wd0p0005_actGELU_s2") == {
        "depth": 3, "weight_decay": 0.0005, "activation": "gelu", "seed": 2, "group": "depth3_wd0p0005_actGELU"}
    assert attrs_from_filename("baseline") == {"group": "baseline"}
    attrs = {"model": "mlp", "dataset": "mnist", "cell": "c1"}
    assert [group_of(attrs, g, "r0") for g in ("model-dataset", "cell", "file", "all")] == [
        "mlp/mnist", "mlp/mnist/c1", "r0", "all"]
    assert group_of({}, run_id="r0") == "default" and group_of({"model": "mlp"}, "cell", "r0") == "mlp/?/r0"
    with pytest.raises(InputError, match="group_by must be one of"):
        group_of(attrs, "seed")
    assert log_stem("a/b.csv.gz") == log_stem("b.csv") == "b"


def test_folders_read_csv_and_gzip_logs_with_unique_ids(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _log(a / "width64_s1.csv", ["20,2,1.0,0.9,0.02,0.1,0.1,5.0", "10,1,0.99,0.9,,,,"])
    with gzip.open(a / "width64_s2.csv.gz", "wt") as f:
        f.write("epoch,nc1,feat_norm\n10,0.5,7.5\n")
    _log(b / "width64_s1.csv", ["10,1,0.99,0.9,0.5,0.1,0.1,6.0"])
    runs = load_runs([a, b])
    assert [r.run_id for r in runs] == [str(a / "width64_s1.csv"), "width64_s2", str(b / "width64_s1.csv")]
    first = runs[0]
    # sorted by epoch; NaN read as None in records, NaN in the frame
    assert [r["epoch"] for r in first.records] == [10, 20] and first.records[0]["nc1"] is None
    assert math.isnan(first.frame["nc1"].iloc[0]) and first.attrs["seed"] == 1
    assert runs[1].records == [{"epoch": 10, "nc1": 0.5, "feat_norm": 7.5}]


def test_what_is_not_a_log_is_named(tmp_path):
    _log(tmp_path / "summary.csv", ["x"], header="T_NC")
    _log(tmp_path / "empty.csv", [])
    _log(tmp_path / "bad_epoch.csv", ["ten,1,1,1,0.1,0.1,0.1,1.0"])
    skipped: list[str] = []
    assert load_runs(tmp_path, skipped=skipped) == []
    assert sorted(s.split(": ", 1)[1] for s in skipped) == [
        "column epoch has missing or non-numeric values", "missing required column(s) epoch, nc1, feat_norm; "
        "the reference format has epoch, phase, train, test, nc1, nc2, nc3, feat_norm",
        "no rows (a log needs one row per evaluation)"]
    with pytest.raises(LogFormatError, match=r"empty\.csv: no rows"):
        load_runs(tmp_path / "empty.csv")
    with pytest.raises(InputError, match=r"nope: no such file or folder"):
        load_runs(tmp_path / "nope")
    with pytest.raises(InputError, match="a manifest needs a 'file' column"):
        read_manifest(tmp_path / "summary.csv")


def test_a_run_built_from_records_or_a_frame_derives_the_other():
    from_records = Run("r", "g", [{"epoch": 10, "nc1": 0.5, "feat_norm": None}], {"budget": "600"})
    assert from_records.budget == 600 and from_records.frame["epoch"].tolist() == [10]
    assert math.isnan(from_records.frame["feat_norm"].iloc[0])
    from_frame = Run("f", frame=pd.DataFrame({"epoch": [10.0, 20.0], "nc1": [float("nan"), 0.1]}))
    assert from_frame.records == [{"epoch": 10, "nc1": None}, {"epoch": 20, "nc1": 0.1}]
    no_log = Run("t", origin="table", given={"t_nc": 300})
    assert not no_log.has_log and no_log.records == [] and no_log.frame is None and no_log.budget is None
    with pytest.raises(ValueError, match="records or as frame, not both"):
        Run("x", records=[], frame=pd.DataFrame())


def test_the_corpus_is_runs_with_its_manifest():
    runs = load_corpus(CORPUS)
    manifest = read_manifest(CORPUS / "manifest.csv")
    assert len(runs) == len(manifest) and all(r.attrs == manifest[r.run_id] for r in runs)
    assert {r.group for r in runs} == {r.attrs["group"] for r in runs}  # the manifest's group column agrees
    assert all(r.budget == int(manifest[r.run_id]["budget"]) for r in runs)
