"""One definition of the stopper's settings: the adapters, the study file and ``ncstudy replay`` run
the same stopper as :mod:`ncstudy.forecast.settings` defines -- same defaults, same choices, same
forecaster options (a replay used to score ``confirm 1`` where a study ran the conformal default 2)."""
from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path

import pytest

from ncstudy.adapters.optuna_pruner import OnsetPruner
from ncstudy.adapters.ray_tune import OnsetStopper
from ncstudy.cli import main
from ncstudy.config import EvalConfig
from ncstudy.forecast.settings import (
    FORECASTER_SETTINGS,
    MODES,
    OPTION_OWNERS,
    POLICIES,
    ConformalSettings,
    StopperSettings,
    default_mode,
    forecaster_settings,
)
from ncstudy.onset import RELAXED_NC1, STRICT_NC1, TERMINAL_ACC, OnsetRule
from ncstudy.study.runner import build_stopper
from ncstudy.study.spec import FnStarConfig, StudySpec

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "rupa2026_logs"
SHARED = ("policy", "forecaster", "prior", "min_observations", "learn", "terminal_acc")


def _default(cls, name):
    return inspect.signature(cls.__init__).parameters[name].default


@pytest.mark.parametrize("adapter", [OnsetStopper, OnsetPruner])
def test_the_adapters_defaults_are_the_settings(adapter):
    s = StopperSettings()
    for name in SHARED:
        assert _default(adapter, name) == getattr(s, name), name
    assert _default(adapter, "mode") is None  # derived: default_mode
    assert _default(adapter, "rule") == OnsetRule(s.strict, s.relaxed, s.phase2_only)
    assert _default(OnsetStopper, "objective") == s.objective


def test_the_study_file_section_is_the_settings():
    s, f = StopperSettings(), FnStarConfig()
    for name in ("policy", "mode", "forecaster", "prior", "min_observations", "learn"):
        assert getattr(f, name) == getattr(s, name), name
        assert FnStarConfig.model_fields[name].description == StopperSettings.model_fields[name].description
    assert typing.get_args(FnStarConfig.model_fields["policy"].annotation) == POLICIES
    assert set(typing.get_args(typing.get_args(FnStarConfig.model_fields["mode"].annotation)[0])) == set(MODES)
    # every forecaster option is a study-file key, absent unless given
    assert set(OPTION_OWNERS) <= set(FnStarConfig.model_fields) and f.options() == {}
    e = EvalConfig()
    assert (e.strict_threshold, e.relaxed_threshold, e.terminal_acc) == (s.strict, s.relaxed, s.terminal_acc)
    # the paper's thresholds are defined once (ncstudy.onset) and every default is them
    assert (s.strict, s.relaxed, s.terminal_acc) == (STRICT_NC1, RELAXED_NC1, TERMINAL_ACC) == (0.01, 0.05, 0.99)
    assert OnsetRule() == OnsetRule(STRICT_NC1, RELAXED_NC1, True)


def test_the_study_file_refuses_options_of_another_forecaster():
    with pytest.raises(ValueError, match="margin: not option"):
        FnStarConfig(forecaster="conformal", margin=0.1)
    assert FnStarConfig(forecaster="fn_star", margin=0.1).forecaster_settings().margin == 0.1


def test_a_study_saved_by_an_older_ncstudy_reads_back_with_the_same_options():
    old = {"policy": "stop_at_forecast", "forecaster": "conformal", "alpha": 0.05, "coverage": 0.9, "tolerance": 40.0,
           "margin": 0.0, "confirm": 1, "phases": [2], "window": 5, "min_points": 3, "r2_min": 0.9, "max_horizon": None}
    c = FnStarConfig.model_validate(old)  # the old stopper passed the conformal forecaster four, all defaults
    assert c.options() == {} and c == FnStarConfig()  # so a study saved then resumes as the same study
    assert c.forecaster_settings().confirm == ConformalSettings().confirm == 2
    assert FnStarConfig.model_validate({**old, "alpha": 0.1, "margin": 0.2}).options() == {"alpha": 0.1}
    spec = StudySpec.model_validate({"name": "s", "scheduler": {"name": "fnstar", "fnstar": {"confirm": 3}}})
    assert StudySpec.model_validate_json(spec.model_dump_json()).scheduler.fnstar.options() == {"confirm": 3}


def test_the_mode_follows_the_objective():
    assert default_mode("collapse_epoch") == default_mode("t_nc") == "search"
    assert default_mode("collapse_epoch", "max") == default_mode("nc1") == default_mode(None) == "sweep"
    study = {"name": "s", "scheduler": {"name": "fnstar"}}
    assert build_stopper(StudySpec.model_validate(study)).core.mode == "search"
    assert build_stopper(StudySpec.model_validate({**study, "objective": {"metric": "nc1"}})).core.mode == "sweep"
    explicit = {"name": "s", "scheduler": {"name": "fnstar", "fnstar": {"mode": "sweep"}}}
    assert build_stopper(StudySpec.model_validate(explicit)).core.mode == "sweep"


def test_study_adapters_and_replay_build_the_same_forecaster(capsys):
    spec = StudySpec.model_validate({"name": "s", "scheduler": {"name": "fnstar"}})
    stopper = build_stopper(spec)
    stopper("a", {"epoch": 10, "nc1": 0.5, "feat_norm": 3.0, "config": {}})
    study_settings = stopper.core.stopper.monitors["a"].forecaster.settings
    pruner_settings = forecaster_settings("conformal")
    assert study_settings == pruner_settings == ConformalSettings()
    assert main(["replay", str(REF / "width256_s1.csv"), str(REF / "width256_s2.csv"), "--group", "mlp/mnist",
                 "--budget", "600", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["options"]["forecasters"]["conformal"] == ConformalSettings().model_dump()
    assert out["options"]["forecasters"]["conformal"]["confirm"] == 2


def test_replay_flags_are_the_forecaster_options_and_are_checked(capsys):
    f = REF / "width256_s1.csv"
    for flag, value, says in [("--alpha", "0.7", "--alpha 0.7"), ("--confirm", "0", "--confirm 0"),
                              ("--margin", "nan", "--margin nan"), ("--coverage", "inf", "--coverage inf")]:
        assert main(["replay", str(f), flag, value]) == 2
        assert says in capsys.readouterr().err
    for name, cls in FORECASTER_SETTINGS.items():
        for opt in cls.model_fields:
            assert name in OPTION_OWNERS[opt]


def test_an_adapter_takes_a_whole_settings_object_and_refuses_it_beside_its_arguments():
    st = StopperSettings(policy="stop_at_onset", forecaster="fn_star", mode="sweep", strict=0.02, min_observations=5,
                         prior="none", options={"margin": 0.1})
    stopper, pruner = OnsetStopper(settings=st), OnsetPruner(settings=st)
    assert stopper.core.settings == st and stopper.core.mode == "sweep"
    assert pruner.core.settings == st.model_copy(update={"objective": None})  # the pruner's value is the objective
    assert stopper.core.stopper.rule == pruner.core.stopper.rule == OnsetRule(0.02, 0.05, True)
    assert stopper.calibration.min_observations == 5
    # the same stopper from its arguments
    args = OnsetStopper("stop_at_onset", "fn_star", mode="sweep", rule=OnsetRule(strict=0.02), min_observations=5,
                        forecaster_options={"margin": 0.1}, prior="none")
    assert args.core.settings == st
    with pytest.raises(ValueError, match=r"^OnsetPruner: give either settings= or policy, forecaster, not both$"):
        OnsetPruner("record", "nc1", settings=st)
    with pytest.raises(ValueError, match=r"^OnsetStopper: terminal_acc 2\.0: Input should be less than or equal to 1"):
        OnsetStopper(terminal_acc=2.0)
    # options of another forecaster are dropped by the adapters, refused by the settings
    assert OnsetStopper(forecaster_options={"alpha": 0.1, "margin": 0.2}).core.settings.options == {"alpha": 0.1}
    with pytest.raises(ValueError, match="takes no option"):
        StopperSettings(options={"margin": 0.2})
